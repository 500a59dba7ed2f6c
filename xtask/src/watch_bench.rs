//! `cargo xtask bench-watch`: what `nodeprof watch` costs while it only
//! watches (no capture). N node processes each do a unit of work every
//! 20 ms (xtask/bench/watch-target.js); windows without and with watch
//! alternate (ABBA). Per window: the targets' CPU time (their work is paced
//! by the clock, so overhead is the only thing that can raise it) and, with
//! watch, nodeprof's CPU and memory.

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bench::process_cpu_s;
use crate::util;

#[derive(clap::Args)]
pub struct BenchWatchArgs {
    /// Node processes watched.
    #[arg(long, default_value_t = 20)]
    processes: usize,
    /// Seconds per window.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Pairs of windows (each pair: one without watch, one with).
    #[arg(long, default_value_t = 4)]
    rounds: usize,
}

/// Kills our own children (by pid) when dropped.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn bench_watch(args: &BenchWatchArgs) -> Result<()> {
    util::require_root("bench-watch")?;
    util::run(util::cargo().args(["build", "--release", "-p", "nodeprof"]))?;
    let nodeprof = util::target_dir().join("release/nodeprof");
    let script = util::root().join("xtask/bench/watch-target.js");
    let marker = format!("bench-watch-{}", std::process::id());
    let mut targets = Children(Vec::new());
    for _ in 0..args.processes {
        let mut child = Command::new("node")
            .arg(&script)
            .arg(&marker)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting node watch-target.js")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        if !line.starts_with("ready") {
            bail!("watch-target.js did not start: {line:?}");
        }
        targets.0.push(child);
    }
    let pids: Vec<libc::pid_t> = targets.0.iter().map(|c| c.id() as libc::pid_t).collect();
    let targets_cpu = || -> f64 { pids.iter().filter_map(|&p| process_cpu_s(p)).sum() };
    std::thread::sleep(Duration::from_secs(3));
    let window = Duration::from_secs(args.seconds);
    let mut rows = Vec::new();
    for round in 0..args.rounds {
        // ABBA: drift over the run weighs on both sides alike.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with_watch in order {
            let mut watch = None;
            if with_watch {
                let mut child = Command::new(&nodeprof)
                    .args(["watch", "--json", "--name", &marker, "--cpu", "100000"])
                    .args(["--out", "/tmp"])
                    .stdout(Stdio::piped())
                    .spawn()
                    .context("starting nodeprof watch")?;
                let mut reader = BufReader::new(child.stdout.take().expect("piped"));
                let mut watched = 0;
                let mut line = String::new();
                // Measured once every target is attached.
                while watched < args.processes {
                    line.clear();
                    if reader.read_line(&mut line)? == 0 {
                        bail!("nodeprof watch ended early");
                    }
                    if line.contains("\"type\":\"watch\"") {
                        watched += 1;
                    }
                }
                std::thread::sleep(Duration::from_secs(2));
                watch = Some((child, reader));
            }
            let watch_pid = watch.as_ref().map(|(c, _)| c.id() as libc::pid_t);
            let (t0, w0, start) = (
                targets_cpu(),
                watch_pid.and_then(process_cpu_s),
                Instant::now(),
            );
            std::thread::sleep(window);
            let (t1, w1, wall) = (
                targets_cpu(),
                watch_pid.and_then(process_cpu_s),
                start.elapsed(),
            );
            let wall = wall.as_secs_f64();
            let rss = watch_pid.map(|p| status_kib(p, "VmRSS:")).unwrap_or(0.0) / 1024.0;
            let hwm = watch_pid.map(|p| status_kib(p, "VmHWM:")).unwrap_or(0.0) / 1024.0;
            if let Some((mut child, _reader)) = watch {
                // Our own child, by pid.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                let _ = child.wait();
            }
            let watch_pct = match (w0, w1) {
                (Some(a), Some(b)) => Some(100.0 * (b - a) / wall),
                _ => None,
            };
            let row = (with_watch, 100.0 * (t1 - t0) / wall, watch_pct, rss, hwm);
            eprintln!(
                "round {round}: watch {}: targets {:.2} % of a core{}",
                if with_watch { "on " } else { "off" },
                row.1,
                watch_pct
                    .map(|w| format!(", nodeprof {w:.3} %, RSS {rss:.1} MiB"))
                    .unwrap_or_default()
            );
            rows.push(row);
        }
    }
    drop(targets);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let off: Vec<f64> = rows.iter().filter(|r| !r.0).map(|r| r.1).collect();
    let on: Vec<f64> = rows.iter().filter(|r| r.0).map(|r| r.1).collect();
    // Per round: with / without - 1 (the pair of one round ran back to back).
    let slowdowns: Vec<f64> = off
        .iter()
        .zip(&on)
        .map(|(a, b)| 100.0 * (b / a - 1.0))
        .collect();
    let watch_cpu: Vec<f64> = rows.iter().filter_map(|r| r.2).collect();
    let max_hwm = rows.iter().map(|r| r.4).fold(0.0, f64::max);
    let sd = |v: &[f64]| {
        let m = mean(v);
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len().max(2) - 1) as f64).sqrt()
    };
    let report = format!(
        "# nodeprof watch overhead\n\n`cargo xtask bench-watch --processes {} --seconds {} --rounds {}`: {} node processes \
         (xtask/bench/watch-target.js, a unit of work every 20 ms), watched with `nodeprof watch --name … --cpu 100000` \
         (every check, no capture), windows without and with watch alternating (ABBA).\n\n\
         | | mean | per window |\n|---|---:|---|\n\
         | nodeprof CPU, % of one core | {:.3} | {} |\n\
         | nodeprof peak RSS, MiB | {:.1} | |\n\
         | targets' CPU without watch, % of a core | {:.2} | {} |\n\
         | targets' CPU with watch, % of a core | {:.2} | {} |\n\
         | targets' slowdown (CPU for the same work), % | {:+.2} ± {:.2} (sd) | {} |\n",
        args.processes,
        args.seconds,
        args.rounds,
        args.processes,
        mean(&watch_cpu),
        list(&watch_cpu),
        max_hwm,
        mean(&off),
        list(&off),
        mean(&on),
        list(&on),
        mean(&slowdowns),
        sd(&slowdowns),
        list(&slowdowns),
    );
    println!("{report}");
    fs::create_dir_all(util::target_dir().join("bench"))?;
    fs::write(util::target_dir().join("bench/watch.md"), &report)?;
    Ok(())
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn status_kib(pid: libc::pid_t, key: &str) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0.0)
}
