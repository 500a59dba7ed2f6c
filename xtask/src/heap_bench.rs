//! `cargo xtask bench-heap`: `nodeprof heap summary` against memlab on the
//! same 200 MB+ snapshot, alternately in one run.
//!
//! 1. `xtask/bench/heap-big.js` (node 20) writes a snapshot of a few million
//!    objects into `target/bench/` (kept between runs; remade when missing);
//! 2. every round runs both tools, in alternating order: `nodeprof heap
//!    summary FILE --json --quiet` (release build) and memlab's full analysis
//!    (`tests/fixtures/heap/memlab-classes.js`: `getFullHeapFromFile`, which
//!    parses, computes dominators and retained sizes, then the same per-class
//!    Summary), under node 20 with a 16 GB heap limit so memlab does not run
//!    out of V8 heap;
//! 3. wall time from spawn to exit and peak RSS (`ru_maxrss` from `wait4`)
//!    of each; the medians go to `target/bench/heap.md`, with how many
//!    classes the two Summaries agree on.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{bootstrap, util};

#[derive(clap::Args)]
pub struct BenchHeapArgs {
    /// Rounds (each runs both tools once).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Size of the generated heap (1.0 ≈ 480 MB snapshot; 0.5 ≈ 240 MB).
    #[arg(long, default_value_t = 0.5)]
    scale: f64,
}

struct Sample {
    wall_s: f64,
    rss_mib: f64,
}

/// Runs a command to completion; its wall time and peak RSS.
fn measure(cmd: &mut Command, stdout: &Path) -> Result<Sample> {
    let what = util::display(cmd);
    eprintln!("+ {what}");
    let out = fs::File::create(stdout).with_context(|| format!("create {}", stdout.display()))?;
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {what}"))?;
    let mut status = 0;
    // SAFETY: rusage is plain old data that wait4 fills; the pid is our child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let wall_s = start.elapsed().as_secs_f64();
    if r < 0 {
        bail!("wait4 on {what}: {}", std::io::Error::last_os_error());
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("{what} failed (wait status {status})");
    }
    Ok(Sample {
        wall_s,
        rss_mib: usage.ru_maxrss as f64 / 1024.0,
    })
}

/// (name, count, shallow size) of every class of a Summary JSON.
fn classes(path: &Path) -> Result<Vec<(String, u64, u64)>> {
    let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    // A tiny scan instead of a JSON dependency in xtask: both files list
    // classes as {"name":"…","count":N,"shallow_size":N,…}.
    let mut out = Vec::new();
    for part in text.split("\"name\":").skip(1) {
        let name = part.split('"').nth(1).unwrap_or_default().to_string();
        let num = |key: &str| -> u64 {
            part.split(&format!("\"{key}\":"))
                .nth(1)
                .and_then(|r| r.trim_start().split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|d| d.parse().ok())
                .unwrap_or(u64::MAX)
        };
        out.push((name, num("count"), num("shallow_size")));
    }
    Ok(out)
}

pub fn bench_heap(args: &BenchHeapArgs) -> Result<()> {
    bootstrap::bootstrap()?;
    util::run(util::cargo().args(["build", "--release", "-p", "nodeprof"]))?;
    let bin = util::target_dir().join("release/nodeprof");
    let node = bootstrap::node_binary(20)?;
    let memlab = bootstrap::memlab_dir()?;
    let dir = util::target_dir().join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let snapshot = dir.join(format!("heap-big-{}.heapsnapshot", args.scale));
    if !snapshot.is_file() {
        let partial = dir.join("heap-big.partial.heapsnapshot");
        util::run(
            Command::new(&node)
                .arg(util::root().join("xtask/bench/heap-big.js"))
                .arg(&partial)
                .arg(args.scale.to_string()),
        )?;
        fs::rename(&partial, &snapshot).context("rename the snapshot")?;
    }
    let size_mb = fs::metadata(&snapshot)?.len() as f64 / 1e6;
    println!("bench-heap: {} ({size_mb:.0} MB)", snapshot.display());
    let script = util::root().join("tests/fixtures/heap/memlab-classes.js");
    let ours_json = dir.join("heap-nodeprof.json");
    let theirs_json = dir.join("heap-memlab.json");
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for round in 0..args.rounds.max(1) {
        for tool in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
            if tool == 0 {
                let mut cmd = Command::new(&bin);
                cmd.args(["heap", "summary", "--json", "--quiet", "--top", "0"])
                    .arg(&snapshot);
                ours.push(measure(&mut cmd, &ours_json)?);
            } else {
                let mut cmd = Command::new(&node);
                cmd.arg("--max-old-space-size=16000")
                    .arg(&script)
                    .arg(&memlab)
                    .arg(&snapshot)
                    .arg(&theirs_json);
                theirs.push(measure(&mut cmd, &dir.join("heap-memlab.stdout"))?);
            }
            let last = if tool == 0 {
                ours.last()
            } else {
                theirs.last()
            };
            if let Some(s) = last {
                println!(
                    "bench-heap: round {} {:<8} {:>7.2} s {:>8.1} MiB",
                    round + 1,
                    if tool == 0 { "nodeprof" } else { "memlab" },
                    s.wall_s,
                    s.rss_mib
                );
            }
        }
    }
    let theirs_classes = classes(&theirs_json)?;
    let agree = |ours: &[(String, u64, u64)]| {
        theirs_classes
            .iter()
            .filter(|t| ours.iter().any(|o| o == *t))
            .count()
    };
    let ours_classes = classes(&ours_json)?;
    let agree_devtools = agree(&ours_classes);
    // Untimed: memlab's rules name detached native objects as memlab does.
    let memlab_rules_json = dir.join("heap-nodeprof-memlab-rules.json");
    let mut cmd = Command::new(&bin);
    cmd.args([
        "heap", "summary", "--json", "--quiet", "--top", "0", "--rules", "memlab",
    ])
    .arg(&snapshot);
    measure(&mut cmd, &memlab_rules_json)?;
    let memlab_rules_classes = classes(&memlab_rules_json)?;
    let agree_memlab = agree(&memlab_rules_classes);
    let stats = |v: &[Sample]| {
        let mut w: Vec<f64> = v.iter().map(|s| s.wall_s).collect();
        let mut r: Vec<f64> = v.iter().map(|s| s.rss_mib).collect();
        (util::median(&mut w), util::median(&mut r))
    };
    let (ow, or) = stats(&ours);
    let (tw, tr) = stats(&theirs);
    let mut md = String::new();
    let _ = writeln!(md, "# `cargo xtask bench-heap`\n");
    let _ = writeln!(
        md,
        "Snapshot: `{}` ({size_mb:.0} MB, written by node 20 from `xtask/bench/heap-big.js --scale {}`). \
         {} rounds, tools alternating. Wall time from spawn to exit, peak RSS = `ru_maxrss`; medians.\n",
        snapshot.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        args.scale,
        args.rounds.max(1)
    );
    let _ = writeln!(md, "| tool | wall s | peak RSS MiB |\n|---|---:|---:|");
    let _ = writeln!(md, "| `nodeprof heap summary` | {ow:.2} | {or:.0} |");
    let _ = writeln!(
        md,
        "| memlab `getFullHeapFromFile` + per-class Summary | {tw:.2} | {tr:.0} |"
    );
    let _ = writeln!(
        md,
        "\nnodeprof is **{:.1}× faster** and uses **{:.2}×** memlab's peak memory (goals: ≥ 10×, ≤ 0.5×).",
        tw / ow,
        or / tr
    );
    let _ = writeln!(
        md,
        "Agreement: {agree_memlab} of memlab's {} classes have the same object count and shallow size in \
         `nodeprof heap summary --rules memlab` ({} classes); {agree_devtools} with DevTools' rules (the timed \
         runs: {} classes; DevTools also calls `Detached` the native objects that detached ones reach).",
        theirs_classes.len(),
        memlab_rules_classes.len(),
        ours_classes.len()
    );
    let report: PathBuf = dir.join("heap.md");
    fs::write(&report, &md).with_context(|| format!("write {}", report.display()))?;
    println!("\n{md}\nbench-heap: wrote {}", report.display());
    Ok(())
}
