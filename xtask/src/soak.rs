//! `cargo xtask soak`: nodeprof on a long recording of a server with
//! thousands of JS functions (xtask/bench/server.js under loopback load from
//! xtask/bench/client.js). Reports nodeprof's peak RSS, its CPU while
//! recording, how long it takes after Ctrl-C to symbolize and write (the
//! cost of naming every frame), and how many distinct JS functions it named.

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util;

#[derive(clap::Args)]
pub struct SoakArgs {
    /// Recording length in seconds.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Sampling rate.
    #[arg(long, default_value_t = 99)]
    hz: u32,
    /// JS functions in the server.
    #[arg(long, default_value_t = 3000)]
    functions: u32,
}

pub fn soak(args: &SoakArgs) -> Result<()> {
    util::require_root("soak")?;
    util::run(util::cargo().args(["build", "--release", "-p", "nodeprof"]))?;
    let nodeprof = util::target_dir().join("release/nodeprof");
    let bench = util::root().join("xtask/bench");
    let out_dir = util::target_dir().join("bench/soak");
    let _ = fs::remove_dir_all(&out_dir);
    fs::create_dir_all(&out_dir)?;

    let mut server = Command::new("node")
        .arg(bench.join("server.js"))
        .args(["--functions", &args.functions.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting node server.js")?;
    let server_pid = server.id();
    let mut lines = BufReader::new(server.stdout.take().expect("piped")).lines();
    let port: u16 = loop {
        let line = lines.next().context("server exited")??;
        if let Some(port) = line.strip_prefix("listening ") {
            break port.trim().parse()?;
        }
    };
    let result = measure(args, &nodeprof, &bench, &out_dir, server_pid, port);
    // Only the server we started, by pid.
    let _ = server.kill();
    let _ = server.wait();
    let report = result?;
    println!("{report}");
    fs::write(util::target_dir().join("bench/soak.md"), &report)?;
    Ok(())
}

fn measure(
    args: &SoakArgs,
    nodeprof: &std::path::Path,
    bench: &std::path::Path,
    out_dir: &std::path::Path,
    server_pid: u32,
    port: u16,
) -> Result<String> {
    let client = Command::new("node")
        .arg(bench.join("client.js"))
        .args([port.to_string(), (args.seconds + 3).to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting node client.js")?;
    let prefix = out_dir.join("soak");
    let started = Instant::now();
    let recorder = Command::new(nodeprof)
        .args([
            "record",
            "-q",
            "-p",
            &server_pid.to_string(),
            "-F",
            &args.hz.to_string(),
            "-o",
        ])
        .arg(&prefix)
        .stdout(Stdio::piped())
        .spawn()?;
    let pid = recorder.id() as libc::pid_t;
    std::thread::sleep(Duration::from_secs(args.seconds));
    let cpu_recording = crate::bench::process_cpu_s(pid);
    let recorded = started.elapsed();
    // SAFETY: our own child, by pid.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let stopped = Instant::now();
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 on our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let finish = stopped.elapsed();
    // The client stops by itself shortly after the recording.
    let requests = client
        .wait_with_output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if reaped != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("nodeprof failed (wait status {status:#x})");
    }
    let folded = fs::read_to_string(prefix.with_extension("folded"))?;
    let mut functions: Vec<&str> = folded
        .lines()
        .flat_map(|l| {
            l.rsplit_once(' ')
                .map(|(stack, _)| stack)
                .unwrap_or(l)
                .split(';')
        })
        .filter(|f| f.starts_with("handler_"))
        .collect();
    functions.sort_unstable();
    functions.dedup();
    let samples: u64 = folded
        .lines()
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum();
    let max_rss_mib = usage.ru_maxrss as f64 / 1024.0;
    let cpu_pct = cpu_recording
        .map(|c| 100.0 * c / recorded.as_secs_f64())
        .unwrap_or(f64::NAN);
    Ok(format!(
        "# nodeprof soak\n\n`cargo xtask soak --seconds {} --hz {} --functions {}`: a loopback HTTP server with {} JS \
         functions under load from a second node process ({}).\n\n\
         | recorded | samples | distinct handler_* functions named | peak RSS MiB | CPU % of a core while recording | Ctrl-C to exit (symbolize + write) |\n\
         |---:|---:|---:|---:|---:|---:|\n\
         | {:.0} s | {samples} | {} | {max_rss_mib:.1} | {cpu_pct:.2} | {:.2} s |\n\n\
         Goals: RSS < 64 MiB on a 10-minute recording; symbolizing a 60 s recording adds < 1 s.\n",
        args.seconds,
        args.hz,
        args.functions,
        args.functions,
        requests.trim(),
        recorded.as_secs_f64(),
        functions.len(),
        finish.as_secs_f64(),
    ))
}
