//! `cargo xtask bench-capture`: what a heap snapshot and a core of a large
//! heap cost the target and nodeprof, beside `gcore` (Debian gdb) for the core.
//!
//! 1. `tests/fixtures/capture/target.js idle --heap-mb N` (node 20) serves
//!    HTTP with a heap of small objects and strings;
//! 2. one after the other: `nodeprof core`, `gcore`, `nodeprof snapshot`
//!    (release build of nodeprof; the snapshot last, as it leaves the target's
//!    RSS grown), each writing into `target/bench/capture/`;
//! 3. meanwhile a client sends `GET /` every 5 ms: the longest time without
//!    an answer is how long the target was stopped or stalled;
//! 4. wall time and peak RSS (`ru_maxrss` from `wait4`, descendants
//!    included: gdb under gcore's shell) of each tool, file size, bytes/s,
//!    the target's peak RSS meanwhile (VmHWM, reset through `clear_refs`),
//!    and nodeprof's own stop time for the core; the table goes to
//!    `target/bench/capture.md`.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{bootstrap, util};

#[derive(clap::Args)]
pub struct BenchCaptureArgs {
    /// Fixture heap size parameter (`--heap-mb`; 2200 ≈ 1 GB of V8 heap).
    #[arg(long, default_value_t = 2200)]
    heap_mb: u32,
}

struct Sample {
    wall_s: f64,
    rss_mib: f64,
    /// The target's peak RSS while the tool ran.
    target_peak_mib: f64,
    bytes: u64,
    /// Longest interval without an HTTP answer while the tool ran.
    stall_s: f64,
    stdout: String,
}

/// `GET /` every 5 ms until stopped; the longest gap between answers.
fn prober(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<f64> {
    std::thread::spawn(move || {
        let mut last = Instant::now();
        let mut worst = 0f64;
        while !stop.load(Ordering::Relaxed) {
            let ok = (|| -> std::io::Result<()> {
                let mut s = TcpStream::connect(("127.0.0.1", port))?;
                s.set_read_timeout(Some(Duration::from_secs(600)))?;
                s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                let mut body = String::new();
                s.read_to_string(&mut body)?;
                Ok(())
            })()
            .is_ok();
            if ok {
                worst = worst.max(last.elapsed().as_secs_f64());
                last = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        worst.max(last.elapsed().as_secs_f64())
    })
}

/// A `kB` field of /proc/PID/status, in MiB.
fn status_mib(pid: u32, field: &str) -> Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    Ok(kb / 1024.0)
}

fn measure(cmd: &mut Command, pid: u32, port: u16, out_file: &Path) -> Result<Sample> {
    let what = util::display(cmd);
    eprintln!("+ {what}");
    // "5" resets the target's peak RSS (VmHWM) to its current RSS.
    fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
    let stop = Arc::new(AtomicBool::new(false));
    let probe = prober(port, stop.clone());
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run {what}"))?;
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut stdout)?;
    let mut status = 0;
    // SAFETY: rusage is plain old data that wait4 fills; the pid is our child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let wall_s = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let stall_s = probe.join().expect("prober");
    let target_peak_mib = status_mib(pid, "VmHWM:")?;
    if r < 0 {
        bail!("wait4 on {what}: {}", std::io::Error::last_os_error());
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("{what} failed (wait status {status}):\n{stdout}");
    }
    let bytes = fs::metadata(out_file)
        .with_context(|| format!("{} was not written", out_file.display()))?
        .len();
    Ok(Sample {
        wall_s,
        rss_mib: usage.ru_maxrss as f64 / 1024.0,
        target_peak_mib,
        bytes,
        stall_s,
        stdout,
    })
}

pub fn bench_capture(args: &BenchCaptureArgs) -> Result<()> {
    util::require_root("bench-capture")?;
    bootstrap::bootstrap()?;
    util::run(util::cargo().args(["build", "--release", "-p", "nodeprof"]))?;
    let nodeprof = util::target_dir().join("release/nodeprof");
    let node = bootstrap::node_binary(20)?;
    let dir = util::target_dir().join("bench/capture");
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    let fixture = util::root().join("tests/fixtures/capture/target.js");

    let mut target = Command::new(&node)
        .args(["--max-old-space-size=8192"])
        .arg(&fixture)
        .args(["idle", "--heap-mb", &args.heap_mb.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start the fixture")?;
    let pid = target.id();
    let mut lines = BufReader::new(target.stdout.take().expect("piped")).lines();
    let mut port = 0u16;
    for line in lines.by_ref() {
        let line = line?;
        if let Some(p) = line.strip_prefix("listening ") {
            port = p.parse()?;
        }
        if line == "ready" {
            break;
        }
    }
    // Keep draining the fixture's stdout so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let result = (|| -> Result<String> {
        let rss = status_mib(pid, "VmRSS:")?;
        let core = dir.join("n.core");
        let c = measure(
            Command::new(&nodeprof)
                .args(["core", "-q", "-p", &pid.to_string(), "-o"])
                .arg(&core),
            pid,
            port,
            &core,
        )?;
        let core_used = disk_usage(&core)?;
        fs::remove_file(&core)?;
        let gprefix = dir.join("g");
        let gfile = dir.join(format!("g.{pid}"));
        let g = measure(
            Command::new("gcore")
                .arg("-o")
                .arg(&gprefix)
                .arg(pid.to_string()),
            pid,
            port,
            &gfile,
        )?;
        let gcore_used = disk_usage(&gfile)?;
        fs::remove_file(&gfile)?;

        let snap = dir.join("s.heapsnapshot");
        let s = measure(
            Command::new(&nodeprof)
                .args(["snapshot", "-q", "-p", &pid.to_string(), "-o"])
                .arg(&snap),
            pid,
            port,
            &snap,
        )?;
        fs::remove_file(&snap)?;
        let heap = s
            .stdout
            .lines()
            .next()
            .and_then(|l| l.split_once("): heap "))
            .map(|(_, h)| h.to_string())
            .unwrap_or_default();
        let stopped = c
            .stdout
            .lines()
            .find(|l| l.starts_with("target stopped for"))
            .unwrap_or("")
            .to_string();
        let mut md = String::new();
        writeln!(
            md,
            "Target: node 20, `target.js idle --heap-mb {}`: RSS {rss:.0} MiB, V8 heap {heap}.\n",
            args.heap_mb
        )?;
        writeln!(md, "| capture | wall s | longest HTTP stall s | tool peak RSS MiB | target peak RSS MiB | file MiB (on disk) | MiB/s |")?;
        writeln!(md, "|---|---:|---:|---:|---:|---:|---:|")?;
        let row = |md: &mut String, name: &str, x: &Sample, used: Option<u64>| {
            let mib = x.bytes as f64 / 1048576.0;
            let on_disk = used
                .map(|u| format!(" ({:.0})", u as f64 / 1048576.0))
                .unwrap_or_default();
            writeln!(
                md,
                "| {name} | {:.1} | {:.2} | {:.0} | {:.0} | {mib:.0}{on_disk} | {:.0} |",
                x.wall_s,
                x.stall_s,
                x.rss_mib,
                x.target_peak_mib,
                mib / x.wall_s
            )
        };
        row(&mut md, "nodeprof core", &c, Some(core_used))?;
        row(&mut md, "gcore", &g, Some(gcore_used))?;
        row(&mut md, "nodeprof snapshot", &s, None)?;
        writeln!(md, "\nnodeprof core: {stopped}")?;
        Ok(md)
    })();
    // SAFETY: kill our own child by pid.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let _ = target.wait();
    let md = result?;
    let report = util::target_dir().join("bench/capture.md");
    fs::write(&report, &md)?;
    println!("{md}\nwritten to {}", report.display());
    Ok(())
}

/// Bytes a (sparse) file takes on disk.
fn disk_usage(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(fs::metadata(path)?.blocks() * 512)
}
