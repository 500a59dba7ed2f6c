//! `cargo xtask bench-startup`: the release binary's size, and the time from
//! starting `nodeprof record -p PID` to its first sample of a busy node
//! process (as root). The first sample's time comes from the profile itself
//! (`startTime + timeDeltas[0]`, µs of CLOCK_MONOTONIC), compared with
//! CLOCK_MONOTONIC read just before the spawn: no polling, no log parsing.
//! Report: target/bench/startup.md.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::util;

#[derive(clap::Args)]
pub struct BenchStartupArgs {
    /// Recordings to time.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// The binary to time (default: target/dist/nodeprof, built by `cargo xtask dist`).
    #[arg(long)]
    bin: Option<std::path::PathBuf>,
}

pub fn bench_startup(args: &BenchStartupArgs) -> Result<()> {
    util::require_root("bench-startup")?;
    let bin = match &args.bin {
        Some(bin) => bin.clone(),
        None => util::target_dir().join("dist/nodeprof"),
    };
    if !bin.is_file() {
        bail!("{} is missing: run `cargo xtask dist` first", bin.display());
    }
    let size = fs::metadata(&bin)?.len();
    let out = util::target_dir().join("bench/startup");
    if out.exists() {
        fs::remove_dir_all(&out)?;
    }
    fs::create_dir_all(&out)?;

    let mut target = Command::new("node")
        .arg(util::root().join("tests/fixtures/busy.js"))
        .arg("600")
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start node")?;
    let mut ready = String::new();
    BufReader::new(target.stdout.take().expect("piped")).read_line(&mut ready)?;
    let pid = target.id().to_string();
    let mut delays_ms = Vec::new();
    for run in 0..args.runs {
        let prefix = out.join(format!("run{run}"));
        let start = util::monotonic_us();
        let status = Command::new(&bin)
            .args([
                "record",
                "-q",
                "-p",
                &pid,
                "-d",
                "1",
                "--format",
                "cpuprofile",
                "-o",
            ])
            .arg(&prefix)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            let _ = target.kill();
            bail!("nodeprof record failed ({status})");
        }
        let first = first_sample_us(&prefix.with_extension("cpuprofile"))?;
        delays_ms.push(first.saturating_sub(start) as f64 / 1000.0);
    }
    let _ = target.kill();
    let _ = target.wait();

    let mut sorted = delays_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let max = sorted[sorted.len() - 1];
    let runs: Vec<String> = delays_ms.iter().map(|d| format!("{d:.0}")).collect();
    let report = format!(
        "# Start-up of `nodeprof record` ({})\n\n\
         - binary: {:.1} MB\n\
         - spawn to first sample of a busy node process (`record -q -p PID -d 1`, GC tracing on, 99 Hz), {} runs: \
         median {median:.0} ms, max {max:.0} ms\n\
         - every run, ms: {}\n",
        bin.display(),
        size as f64 / 1e6,
        args.runs,
        runs.join(", ")
    );
    let path = util::target_dir().join("bench/startup.md");
    fs::write(&path, &report)?;
    print!("{report}");
    println!("report: {}", path.display());
    Ok(())
}

/// The first sample's time in a .cpuprofile: `startTime + timeDeltas[0]`.
fn first_sample_us(path: &Path) -> Result<u64> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let profile: serde_json::Value = serde_json::from_str(&text)?;
    let start = profile["startTime"].as_u64().context("no startTime")?;
    let delta = profile["timeDeltas"][0]
        .as_i64()
        .context("no sample in the profile")?;
    Ok(start.saturating_add_signed(delta))
}
