//! `cargo xtask bench`: overhead of `nodeprof record` on a CPU-bound Node
//! process, next to a baseline and `perf record -g`; with `--workload gc`,
//! overhead of `nodeprof gc` on a GC-heavy one (`xtask/bench/gc-heavy.js`).
//!
//! One fixed workload (`xtask/bench/cpu-bound.js`, single thread; its work is
//! calibrated once to take about `--seconds` alone, then kept fixed) runs under
//! every variant in each round; the order rotates from round to round so
//! machine noise hits all variants alike. Each run:
//!
//! 1. start `node cpu-bound.js --units U --wait-stdin`; it prints `ready` and
//!    waits for a line on stdin;
//! 2. start the profiler on its pid (`nodeprof record -p PID -F HZ -o … --quiet`
//!    or `perf record -e cpu-clock -g -F HZ -p PID -o …`) and wait until it has
//!    attached: it holds perf-event or BPF-link file descriptors and their
//!    number has stopped changing;
//! 3. send `go`: the workload does its fixed work and prints its own elapsed
//!    milliseconds (only the work, not node's start-up) as its last line, then
//!    exits; the profiler sees the target exit, writes its output and exits;
//! 4. `wait4` the profiler: CPU time (user + system) over its wall time from
//!    spawn to exit, and peak RSS (`ru_maxrss`).
//!
//! Reported per variant: median target time, slowdown against the baseline
//! median, median profiler CPU % of one core, highest peak RSS.
//!
//! Whole runs differ by a few % on a shared VM, too much to resolve a 1 %
//! goal in a few rounds; `--paired` measures finer (see [`paired`]).

mod paired;

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::util::median;
use crate::{bootstrap, util};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// How long one workload run should take alone, in seconds (its amount of
    /// work is calibrated once to this, then fixed for every run).
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    /// Rounds; each round runs every variant once.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Variants to run, comma-separated, from: nodeprof-HZ, perf-HZ (with
    /// stacks, `-g`), perf-nostack-HZ (the sampling interrupt alone: the floor
    /// any sampler pays), nodeprof-gc, nodeprof-watch (`watch` reading every
    /// second, never capturing) (the baseline always runs). Default:
    /// nodeprof and perf at 99 and 999 Hz and perf-nostack-999, or nodeprof-gc
    /// with `--workload gc`.
    #[arg(long, value_delimiter = ',')]
    variants: Vec<String>,
    /// Instead of whole runs: one long run of the workload, each profiler
    /// attached for `--window` seconds between windows without one; the
    /// slowdown of each attached window is against the windows beside it.
    #[arg(long)]
    paired: bool,
    /// With --paired: windows per variant.
    #[arg(long, default_value_t = 30)]
    cycles: usize,
    /// With --paired: seconds per window.
    #[arg(long, default_value_t = 2.0)]
    window: f64,
    /// The workload: cpu (xtask/bench/cpu-bound.js), gc (xtask/bench/gc-heavy.js)
    /// switch (xtask/bench/switchy.js: thousands of context switches a second)
    /// or syscall (xtask/bench/syscally.js: hundreds of thousands of system calls a second).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "gc", "switch", "syscall"])]
    workload: String,
    /// The nodeprof binary (default: target/release/nodeprof, built first).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Another nodeprof build, run by the variants nodeprof-base-HZ: two
    /// builds measured side by side in one run.
    #[arg(long)]
    base_bin: Option<PathBuf>,
}

impl BenchArgs {
    fn gc(&self) -> bool {
        self.workload == "gc"
    }

    /// The workload's file name under `xtask/bench/`.
    fn workload_file(&self) -> &'static str {
        match self.workload.as_str() {
            "gc" => "gc-heavy.js",
            "switch" => "switchy.js",
            "syscall" => "syscally.js",
            _ => "cpu-bound.js",
        }
    }

    /// The report's file name under `target/bench/`, without extension.
    fn report_name(&self) -> &'static str {
        match self.workload.as_str() {
            "gc" => "gc",
            "switch" => "switch",
            "syscall" => "syscall",
            _ => "record",
        }
    }

    /// What the report is about: the nodeprof command measured.
    fn subject(&self) -> &'static str {
        match self.workload.as_str() {
            "gc" => "gc",
            "switch" => "record --off-cpu",
            _ => "record",
        }
    }
}

/// Where a report was measured: date, kernel, CPUs, node, nodeprof's commit.
fn machine_line(cx: &Setup) -> String {
    format!(
        "{} — kernel {}, {} CPUs, node {}, nodeprof at {}",
        command_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
        command_line(Command::new("uname").arg("-r")),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        command_line(Command::new(&cx.node).arg("--version")),
        command_line(
            Command::new("git")
                .args(["-C"])
                .arg(util::root())
                .args(["describe", "--always", "--dirty"])
        ),
    )
}

fn parse_variant(tag: &str) -> Result<Variant> {
    if tag == "nodeprof-gc" {
        return Ok(Variant::NodeprofGc);
    }
    if tag == "nodeprof-watch" {
        return Ok(Variant::NodeprofWatch);
    }
    if let Some(hz) = tag.strip_prefix("nodeprof-offcpu-") {
        let hz = hz
            .parse()
            .with_context(|| format!("bad rate in variant {tag:?}"))?;
        return Ok(Variant::NodeprofOffCpu(hz));
    }
    let (tool, hz) = tag
        .rsplit_once('-')
        .with_context(|| format!("bad variant {tag:?}"))?;
    let hz: u32 = hz
        .parse()
        .with_context(|| format!("bad rate in variant {tag:?}"))?;
    match tool {
        "nodeprof" => Ok(Variant::Nodeprof(hz)),
        "nodeprof-base" => Ok(Variant::NodeprofBase(hz)),
        "perf" => Ok(Variant::Perf(hz)),
        "perf-nostack" => Ok(Variant::PerfNoStack(hz)),
        _ => {
            bail!("unknown variant {tag:?} (nodeprof-HZ, nodeprof-base-HZ, nodeprof-offcpu-HZ, perf-HZ, perf-nostack-HZ, nodeprof-gc or nodeprof-watch)")
        }
    }
}

/// Goals from the design card.
const GOAL_SLOWDOWN_99: f64 = 1.0;
const GOAL_SLOWDOWN_999: f64 = 2.0;
const GOAL_SLOWDOWN_GC: f64 = 2.0;
const GOAL_SLOWDOWN_OFF_CPU: f64 = 2.0;
/// "No measurable slowdown": under what the paired method resolves.
const GOAL_SLOWDOWN_WATCH: f64 = 1.0;
const GOAL_CPU_99: f64 = 1.0;
const GOAL_RSS_MIB: f64 = 64.0;

/// How long a profiler may take to attach, and to exit after its target did.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(120);
/// `/proc/PID/fd` link targets that show a profiler has attached.
const ATTACH_MARKERS: [&str; 2] = ["anon_inode:[perf_event]", "anon_inode:bpf_link"];

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Baseline,
    Nodeprof(u32),
    /// `record` by the `--base-bin` build.
    NodeprofBase(u32),
    Perf(u32),
    /// perf sampling without stacks: what the timer interrupt alone costs.
    PerfNoStack(u32),
    NodeprofGc,
    /// `record --off-cpu`: a sched_switch hit per context switch.
    NodeprofOffCpu(u32),
    /// `watch` with no capture: its loop tracepoints, GC uprobes and `/proc` reads.
    NodeprofWatch,
}

impl Variant {
    /// The design card's slowdown goal, for nodeprof's variants.
    fn slowdown_goal(self) -> Option<f64> {
        match self {
            Variant::Nodeprof(hz) | Variant::NodeprofBase(hz) if hz <= 99 => Some(GOAL_SLOWDOWN_99),
            Variant::Nodeprof(_) | Variant::NodeprofBase(_) => Some(GOAL_SLOWDOWN_999),
            Variant::NodeprofGc => Some(GOAL_SLOWDOWN_GC),
            Variant::NodeprofOffCpu(_) => Some(GOAL_SLOWDOWN_OFF_CPU),
            Variant::NodeprofWatch => Some(GOAL_SLOWDOWN_WATCH),
            Variant::Baseline | Variant::Perf(_) | Variant::PerfNoStack(_) => None,
        }
    }

    fn is_perf(self) -> bool {
        matches!(self, Variant::Perf(_) | Variant::PerfNoStack(_))
    }

    fn is_nodeprof(self) -> bool {
        matches!(
            self,
            Variant::Nodeprof(_)
                | Variant::NodeprofBase(_)
                | Variant::NodeprofGc
                | Variant::NodeprofOffCpu(_)
                | Variant::NodeprofWatch
        )
    }

    fn label(self) -> String {
        match self {
            Variant::Baseline => "baseline (no profiler)".into(),
            Variant::Nodeprof(hz) => format!("nodeprof record -F {hz}"),
            Variant::NodeprofBase(hz) => format!("nodeprof record -F {hz} (--base-bin)"),
            Variant::Perf(hz) => format!("perf record -g -F {hz}"),
            Variant::PerfNoStack(hz) => format!("perf record -F {hz}, no stacks"),
            Variant::NodeprofGc => "nodeprof gc".into(),
            Variant::NodeprofOffCpu(hz) => format!("nodeprof record --off-cpu -F {hz}"),
            Variant::NodeprofWatch => "nodeprof watch (no capture)".into(),
        }
    }

    fn tag(self) -> String {
        match self {
            Variant::Baseline => "baseline".into(),
            Variant::Nodeprof(hz) => format!("nodeprof-{hz}"),
            Variant::NodeprofBase(hz) => format!("nodeprof-base-{hz}"),
            Variant::Perf(hz) => format!("perf-{hz}"),
            Variant::PerfNoStack(hz) => format!("perf-nostack-{hz}"),
            Variant::NodeprofGc => "nodeprof-gc".into(),
            Variant::NodeprofOffCpu(hz) => format!("nodeprof-offcpu-{hz}"),
            Variant::NodeprofWatch => "nodeprof-watch".into(),
        }
    }

    /// What the profiler prints once fully attached, when its descriptors
    /// alone do not tell (`watch` attaches the GC uprobes only after its
    /// first look at the process, which may come after a 0.5 s pause).
    fn attached_says(&self) -> Option<&'static str> {
        matches!(self, Variant::NodeprofWatch).then_some("\"type\":\"watch\"")
    }
}

/// One run of the workload under one variant.
struct Run {
    round: usize,
    variant: Variant,
    target_ms: f64,
    profiler: Option<ProfilerUsage>,
}

#[derive(Clone, Copy)]
struct ProfilerUsage {
    cpu_s: f64,
    wall_s: f64,
    max_rss_kib: i64,
    /// CPU % of one core between `go` and the workload's end: the steady cost
    /// of sampling, without start-up (loading) and shut-down (symbolizing, writing).
    recording_cpu_pct: f64,
}

impl ProfilerUsage {
    fn cpu_percent(&self) -> f64 {
        if self.wall_s > 0.0 {
            100.0 * self.cpu_s / self.wall_s
        } else {
            f64::NAN
        }
    }
    fn rss_mib(&self) -> f64 {
        self.max_rss_kib as f64 / 1024.0
    }
}

struct Setup {
    node: PathBuf,
    /// Flags of the workload's node (the GC workload fixes the young
    /// generation's size: left to V8, it flips between two sizes from run
    /// to run and the run time with it, by 50 %).
    node_flags: Vec<&'static str>,
    workload: PathBuf,
    nodeprof: PathBuf,
    /// `--base-bin`.
    base_nodeprof: Option<PathBuf>,
    perf: Option<PathBuf>,
    tmp: PathBuf,
    units: u64,
    /// `ru_maxrss` (MiB) of a child that does nothing: what every child of
    /// this process reports at least (see [`rss_floor`]).
    rss_floor_mib: f64,
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    ensure!(args.rounds >= 1, "--rounds must be at least 1");
    ensure!(args.seconds > 0.0, "--seconds must be positive");
    ensure!(args.cycles >= 2, "--cycles must be at least 2");
    ensure!(args.window >= 0.5, "--window must be at least 0.5 s");
    let mut variants = vec![Variant::Baseline];
    let default_variants: Vec<String> = if args.gc() {
        vec!["nodeprof-gc".into()]
    } else if args.workload == "switch" {
        vec!["nodeprof-offcpu-99".into(), "nodeprof-99".into()]
    } else if args.workload == "syscall" {
        vec!["nodeprof-99".into()]
    } else {
        [
            "nodeprof-99",
            "nodeprof-999",
            "perf-99",
            "perf-999",
            "perf-nostack-999",
        ]
        .map(String::from)
        .to_vec()
    };
    let tags = if args.variants.is_empty() {
        &default_variants
    } else {
        &args.variants
    };
    for tag in tags
        .iter()
        .filter(|t| !t.is_empty() && t.as_str() != "baseline")
    {
        let v = parse_variant(tag.trim())?;
        if !variants.contains(&v) {
            variants.push(v);
        }
    }
    let with_nodeprof = variants.iter().any(|v| v.is_nodeprof());
    util::require_root("bench")?;
    bootstrap::bootstrap()?;
    if with_nodeprof && args.bin.is_none() {
        util::run(util::cargo().args(["build", "--release", "-p", "nodeprof"]))?;
    }

    let bench_dir = util::target_dir().join("bench");
    let tmp = bench_dir.join("tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("cannot clear {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;

    let perf = util::which("perf");
    if perf.is_none() && variants.iter().any(|v| v.is_perf()) {
        eprintln!("bench: perf not found: the perf variants are skipped");
        variants.retain(|v| !v.is_perf());
    }
    let mut cx = Setup {
        node: util::which("node").context("node is not on PATH")?,
        node_flags: if args.gc() {
            vec!["--max-semi-space-size=2"]
        } else {
            Vec::new()
        },
        workload: util::root().join("xtask/bench").join(args.workload_file()),
        nodeprof: match &args.bin {
            Some(bin) => {
                fs::canonicalize(bin).with_context(|| format!("--bin {}", bin.display()))?
            }
            None => util::target_dir().join("release/nodeprof"),
        },
        base_nodeprof: args
            .base_bin
            .as_ref()
            .map(|bin| {
                fs::canonicalize(bin).with_context(|| format!("--base-bin {}", bin.display()))
            })
            .transpose()?,
        perf,
        tmp,
        units: 0,
        rss_floor_mib: 0.0,
    };
    ensure!(
        cx.base_nodeprof.is_some()
            || !variants
                .iter()
                .any(|v| matches!(v, Variant::NodeprofBase(_))),
        "the nodeprof-base-HZ variants need --base-bin"
    );
    ensure!(
        !with_nodeprof || cx.nodeprof.is_file(),
        "{} was not built",
        cx.nodeprof.display()
    );
    if args.paired {
        let report = paired::run(args, &cx, &variants[1..])?;
        let _ = fs::remove_dir_all(&cx.tmp);
        println!();
        println!("{report}");
        let out = bench_dir.join(format!("{}-paired.md", args.report_name()));
        fs::write(&out, &report).with_context(|| format!("cannot write {}", out.display()))?;
        println!("bench: written to {}", out.display());
        return Ok(());
    }
    cx.units = calibrate(&cx, args.seconds)?;
    cx.rss_floor_mib = rss_floor()?;
    println!(
        "bench: RSS floor (ru_maxrss of `true` spawned from here): {:.1} MiB",
        cx.rss_floor_mib
    );

    let started = Instant::now();
    let mut runs = Vec::new();
    for round in 0..args.rounds {
        // Rotate the order so no variant always runs first (or right after another).
        let mut order = variants.clone();
        order.rotate_left(round % variants.len());
        for variant in order {
            let run = run_once(&cx, variant, round)
                .with_context(|| format!("round {} {}", round + 1, variant.label()))?;
            let prof = match run.profiler {
                Some(p) => format!(
                    "profiler {:.2} s CPU / {:.1} s = {:.2} % of a core ({:.2} % while recording), peak RSS {:.1} MiB",
                    p.cpu_s,
                    p.wall_s,
                    p.cpu_percent(),
                    p.recording_cpu_pct,
                    p.rss_mib()
                ),
                None => String::new(),
            };
            println!(
                "bench: round {}/{} {:<26} target {:>9.1} ms  {prof}",
                round + 1,
                args.rounds,
                variant.label(),
                run.target_ms
            );
            runs.push(run);
        }
    }
    let _ = fs::remove_dir_all(&cx.tmp);

    let report = report(args, &cx, &variants, &runs, started.elapsed())?;
    println!();
    println!("{report}");
    let out = bench_dir.join(format!("{}.md", args.report_name()));
    fs::write(&out, &report).with_context(|| format!("cannot write {}", out.display()))?;
    println!("bench: written to {}", out.display());
    Ok(())
}

/// Finds the number of work units that takes about `seconds` alone.
fn calibrate(cx: &Setup, seconds: f64) -> Result<u64> {
    let mut units: u64 = 4;
    // Warm the page cache and grow the probe until it takes long enough to time.
    loop {
        let ms = run_plain(cx, units)?;
        if ms >= 1500.0 || units >= 1 << 32 {
            let per_unit = ms / units as f64;
            let target = ((seconds * 1000.0) / per_unit).round().max(1.0) as u64;
            println!(
                "bench: calibrated: {units} units took {ms:.0} ms → {target} units ≈ {seconds} s per run"
            );
            return Ok(target);
        }
        let factor = if ms < 100.0 {
            10.0
        } else {
            (1800.0 / ms).max(1.5)
        };
        units = ((units as f64) * factor).ceil() as u64;
    }
}

/// Linux charges a child, in `ru_maxrss`, at least its parent's RSS high-water
/// mark at fork/exec (`exec_mmap` records the old mm's high-water mark). This
/// measures that floor with `true`, so small profiler figures can be judged.
fn rss_floor() -> Result<f64> {
    let child = Command::new("true")
        .stdin(Stdio::null())
        .spawn()
        .context("cannot run `true`")?;
    let pid = child.id() as libc::pid_t;
    drop(child);
    let (tx, _reaped) = mpsc::channel();
    let done = waiter(pid, tx).recv().context("wait4 thread vanished")??;
    Ok(done.usage.ru_maxrss as f64 / 1024.0)
}

/// Runs the workload alone, starting at once; returns its own elapsed ms.
fn run_plain(cx: &Setup, units: u64) -> Result<f64> {
    let out = Command::new(&cx.node)
        .args(&cx.node_flags)
        .arg(&cx.workload)
        .args(["--units", &units.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run the workload")?;
    ensure!(out.status.success(), "workload failed ({})", out.status);
    parse_elapsed(&String::from_utf8_lossy(&out.stdout))
}

/// The workload's last non-empty stdout line: elapsed milliseconds.
fn parse_elapsed(stdout: &str) -> Result<f64> {
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let ms: f64 = last
        .trim()
        .parse()
        .with_context(|| format!("workload's last line is not its elapsed ms: {last:?}"))?;
    ensure!(ms.is_finite() && ms > 0.0, "workload reported {ms} ms");
    Ok(ms)
}

/// Kills the children of a run that did not finish (error paths).
struct Reaper {
    pids: Vec<(libc::pid_t, mpsc::Receiver<()>)>,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for (pid, reaped) in &self.pids {
            if reaped.try_recv().is_err() {
                // SAFETY: plain syscall; the pid is our child and has not been reaped.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
        }
    }
}

/// Result of `wait4` on the profiler, with the time it returned.
struct Exited {
    status: libc::c_int,
    usage: libc::rusage,
    at: Instant,
}

/// Reaps `pid` with `wait4` on a thread, so the caller can time out.
fn waiter(pid: libc::pid_t, reaped: mpsc::Sender<()>) -> mpsc::Receiver<std::io::Result<Exited>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || loop {
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is plain old data; wait4 fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: plain syscall on our own child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            let _ = reaped.send(());
            let _ = tx.send(Ok(Exited {
                status,
                usage,
                at: Instant::now(),
            }));
            return;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            let _ = tx.send(Err(err));
            return;
        }
    });
    rx
}

fn run_once(cx: &Setup, variant: Variant, round: usize) -> Result<Run> {
    let tag = format!("{}-r{}", variant.tag(), round + 1);
    let mut reaper = Reaper { pids: Vec::new() };

    let (mut node, node_reaped_tx) = spawn_workload(
        cx,
        &["--units", &cx.units.to_string(), "--wait-stdin"],
        &mut reaper,
    )?;
    let node_pid = node.id() as libc::pid_t;
    let mut stdout = BufReader::new(node.stdout.take().expect("piped"));
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .context("reading the workload's ready line")?;
    ensure!(line.trim() == "ready", "workload did not start: {line:?}");

    let running = match profiler_command(cx, variant, node_pid, &tag) {
        Some(cmd) => Some(start_profiler(cx, cmd, variant, &tag, &mut reaper)?),
        None => None,
    };

    // Go: the workload starts its timed work.
    let profiler_pid = running.as_ref().map(|p| p.pid);
    let cpu_at_go = profiler_pid.and_then(process_cpu_s);
    let go_at = Instant::now();
    {
        let mut stdin = node.stdin.take().expect("piped");
        stdin
            .write_all(b"go\n")
            .context("cannot start the workload")?;
    }
    let mut rest = String::new();
    stdout
        .read_to_string(&mut rest)
        .context("reading the workload's output")?;
    let cpu_at_end = profiler_pid.and_then(process_cpu_s);
    let recording_cpu_pct = match (cpu_at_go, cpu_at_end) {
        (Some(a), Some(b)) => 100.0 * (b - a) / go_at.elapsed().as_secs_f64(),
        _ => f64::NAN,
    };
    let status = node.wait()?;
    let _ = node_reaped_tx.send(());
    ensure!(status.success(), "workload failed ({status})");
    let target_ms = parse_elapsed(&rest)?;

    let profiler = match running {
        None => None,
        Some(running) => {
            let spawned = running.spawned;
            let done = running.finish()?;
            let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            Some(ProfilerUsage {
                cpu_s: tv(done.usage.ru_utime) + tv(done.usage.ru_stime),
                wall_s: done.at.duration_since(spawned).as_secs_f64(),
                max_rss_kib: done.usage.ru_maxrss,
                recording_cpu_pct,
            })
        }
    };
    // Outputs can be large (perf.data at 999 Hz): drop them once measured.
    remove_outputs(&cx.tmp, &tag);
    Ok(Run {
        round,
        variant,
        target_ms,
        profiler,
    })
}

/// Starts the workload with `args` (stdin and stdout piped), registered with
/// `reaper`; send on the returned channel once it is reaped.
fn spawn_workload(
    cx: &Setup,
    args: &[&str],
    reaper: &mut Reaper,
) -> Result<(Child, mpsc::Sender<()>)> {
    let node = Command::new(&cx.node)
        .args(&cx.node_flags)
        .arg(&cx.workload)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the workload")?;
    let (reaped_tx, reaped) = mpsc::channel();
    reaper.pids.push((node.id() as libc::pid_t, reaped));
    Ok((node, reaped_tx))
}

/// The profiler command of `variant` on `pid`, writing under `cx.tmp` with
/// names starting with `tag`; None for the baseline.
fn profiler_command(cx: &Setup, variant: Variant, pid: libc::pid_t, tag: &str) -> Option<Command> {
    let pid = pid.to_string();
    match variant {
        Variant::Baseline => None,
        Variant::Nodeprof(hz) | Variant::NodeprofBase(hz) => {
            let bin = match variant {
                Variant::NodeprofBase(_) => cx
                    .base_nodeprof
                    .as_ref()
                    .expect("checked with the variants"),
                _ => &cx.nodeprof,
            };
            let mut cmd = Command::new(bin);
            cmd.args(["record", "-p", &pid, "-F", &hz.to_string(), "-o"])
                .arg(cx.tmp.join(tag))
                .arg("--quiet");
            Some(cmd)
        }
        Variant::NodeprofGc => {
            let mut cmd = Command::new(&cx.nodeprof);
            cmd.args(["gc", "-p", &pid, "--json"]);
            Some(cmd)
        }
        Variant::NodeprofWatch => {
            // A threshold no process reaches: every check, never a capture.
            let mut cmd = Command::new(&cx.nodeprof);
            cmd.args(["watch", "-p", &pid, "--json", "--cpu", "100000", "--out"])
                .arg(&cx.tmp);
            Some(cmd)
        }
        Variant::NodeprofOffCpu(hz) => {
            let mut cmd = Command::new(&cx.nodeprof);
            cmd.args([
                "record",
                "--off-cpu",
                "-p",
                &pid,
                "-F",
                &hz.to_string(),
                "-o",
            ])
            .arg(cx.tmp.join(tag))
            .arg("--quiet");
            Some(cmd)
        }
        Variant::Perf(hz) | Variant::PerfNoStack(hz) => {
            let mut cmd = Command::new(cx.perf.as_ref().expect("perf variants only with perf"));
            cmd.args([
                "record",
                "-e",
                "cpu-clock",
                "-F",
                &hz.to_string(),
                "-p",
                &pid,
            ]);
            if matches!(variant, Variant::Perf(_)) {
                cmd.arg("-g");
            }
            cmd.arg("-o").arg(cx.tmp.join(format!("{tag}.perf.data")));
            Some(cmd)
        }
    }
}

/// A profiler that has attached and is recording.
struct Running {
    pid: libc::pid_t,
    /// Signals go through a pidfd: once the waiter thread has reaped the
    /// profiler, its pid may be another process's.
    pidfd: OwnedFd,
    spawned: Instant,
    exited: mpsc::Receiver<std::io::Result<Exited>>,
    err_log: PathBuf,
}

impl Running {
    /// Waits for the profiler's exit (it stops by itself when its target
    /// exits) and checks that it succeeded.
    fn finish(self) -> Result<Exited> {
        let done = self.wait()?;
        self.check(done, false)
    }

    /// Stops the profiler with SIGINT, as Ctrl-C would, and checks that it
    /// succeeded; `dies_of_sigint`: perf, once it has written its data,
    /// re-raises the signal.
    fn interrupt(self, dies_of_sigint: bool) -> Result<Exited> {
        // SAFETY: plain syscall on a pidfd we own; a null siginfo is allowed.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGINT,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        let done = self.wait()?;
        self.check(done, dies_of_sigint)
    }

    fn wait(&self) -> Result<Exited> {
        match self.exited.recv_timeout(EXIT_TIMEOUT) {
            Ok(r) => Ok(r?),
            Err(_) => {
                // SAFETY: as in `interrupt`.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        self.pidfd.as_raw_fd(),
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
                bail!(
                    "the profiler did not exit within {} s{}",
                    EXIT_TIMEOUT.as_secs(),
                    tail(&self.err_log)
                );
            }
        }
    }

    fn check(&self, done: Exited, dies_of_sigint: bool) -> Result<Exited> {
        let succeeded = (libc::WIFEXITED(done.status) && libc::WEXITSTATUS(done.status) == 0)
            || (dies_of_sigint
                && libc::WIFSIGNALED(done.status)
                && libc::WTERMSIG(done.status) == libc::SIGINT);
        ensure!(
            succeeded,
            "the profiler failed (wait status {:#x}){}",
            done.status,
            tail(&self.err_log)
        );
        Ok(done)
    }
}

/// Starts `cmd`, the profiler of `variant` (output logs under `cx.tmp`), and
/// waits until it has attached.
fn start_profiler(
    cx: &Setup,
    mut cmd: Command,
    variant: Variant,
    tag: &str,
    reaper: &mut Reaper,
) -> Result<Running> {
    let out_log = cx.tmp.join(format!("{tag}.stdout"));
    let err_log = cx.tmp.join(format!("{tag}.stderr"));
    cmd.stdin(Stdio::null())
        .stdout(File::create(&out_log)?)
        .stderr(File::create(&err_log)?)
        .current_dir(&cx.tmp);
    let spawned = Instant::now();
    let child: Child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{}`", util::display(&cmd)))?;
    let pid = child.id() as libc::pid_t;
    // The child is reaped by `waiter` (wait4), never by `Child::wait`; until
    // then its pid is ours, so the pidfd names it.
    drop(child);
    // SAFETY: plain syscall; a returned descriptor is ours to own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    ensure!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let (reaped_tx, reaped_rx) = mpsc::channel();
    reaper.pids.push((pid, reaped_rx));
    let exited = waiter(pid, reaped_tx);
    let alive = || match exited.try_recv() {
        Ok(Ok(e)) => bail!(
            "the profiler exited before attaching (wait status {:#x})",
            e.status
        ),
        Ok(Err(e)) => bail!("wait4 on the profiler failed: {e}"),
        Err(_) => Ok(()),
    };
    wait_attached(pid, alive).map_err(|e| anyhow!("{e:#}{}", tail(&err_log)))?;
    if let Some(text) = variant.attached_says() {
        wait_for_text(&out_log, text, &exited).map_err(|e| anyhow!("{e:#}{}", tail(&err_log)))?;
    }
    Ok(Running {
        pid,
        pidfd,
        spawned,
        exited,
        err_log,
    })
}

/// User + system CPU seconds of a live process, from `/proc/PID/stat`.
pub(crate) fn process_cpu_s(pid: libc::pid_t) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// Waits until the profiler `pid` has attached: at least one descriptor of an
/// open perf event (`anon_inode:[perf_event]`, as perf holds them) or of a BPF
/// link (`anon_inode:bpf_link`: aya attaches perf-event programs through links
/// and keeps only those), and their number unchanged for 0.5 s.
/// `alive` fails when the profiler has exited meanwhile.
pub(crate) fn wait_attached(pid: libc::pid_t, mut alive: impl FnMut() -> Result<()>) -> Result<()> {
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    let fd_dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let mut last = 0usize;
    let mut stable_since = Instant::now();
    loop {
        alive()?;
        let count = fs::read_dir(&fd_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| {
                        fs::read_link(e.path())
                            .is_ok_and(|t| ATTACH_MARKERS.iter().any(|m| t.as_os_str() == *m))
                    })
                    .count()
            })
            .unwrap_or(0);
        if count != last {
            last = count;
            stable_since = Instant::now();
        } else if count > 0 && stable_since.elapsed() >= Duration::from_millis(500) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the profiler did not attach (no perf event or BPF link open) within {} s",
                ATTACH_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the profiler's output `log` contains `text`.
fn wait_for_text(
    log: &Path,
    text: &str,
    exited: &mpsc::Receiver<std::io::Result<Exited>>,
) -> Result<()> {
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    while !fs::read_to_string(log).is_ok_and(|out| out.contains(text)) {
        ensure!(
            exited.try_recv().is_err(),
            "the profiler exited before printing {text:?}"
        );
        ensure!(
            Instant::now() < deadline,
            "the profiler did not print {text:?} within {} s",
            ATTACH_TIMEOUT.as_secs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn remove_outputs(dir: &Path, tag: &str) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == tag || name.starts_with(&format!("{tag}.")) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// The end of a profiler's stderr log, for error messages.
fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(20);
    if lines.is_empty() {
        String::new()
    } else {
        format!(
            "\n--- {} (tail) ---\n{}",
            log.display(),
            lines[start..].join("\n")
        )
    }
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "✅"
    } else {
        "❌"
    }
}

fn command_line(cmd: &mut Command) -> String {
    util::output_ok(cmd)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "?".into())
}

fn report(
    args: &BenchArgs,
    cx: &Setup,
    variants: &[Variant],
    runs: &[Run],
    took: Duration,
) -> Result<String> {
    let base_ms: Vec<f64> = runs
        .iter()
        .filter(|r| r.variant == Variant::Baseline)
        .map(|r| r.target_ms)
        .collect();
    let base_median = median(&mut base_ms.clone());
    let base_spread = if base_ms.is_empty() {
        f64::NAN
    } else {
        let (lo, hi) = base_ms
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        100.0 * (hi - lo) / base_median
    };

    let mut md = String::new();
    let workload = args.workload_file();
    writeln!(md, "# nodeprof {} overhead", args.subject())?;
    writeln!(md)?;
    writeln!(
        md,
        "`cargo xtask bench --workload {} --seconds {} --rounds {} --variants {}` — {} — took {:.0} s.",
        args.workload,
        args.seconds,
        args.rounds,
        variants.iter().skip(1).map(|v| v.tag()).collect::<Vec<_>>().join(","),
        machine_line(cx),
        took.as_secs_f64()
    )?;
    writeln!(md)?;
    writeln!(
        md,
        "Workload: `node {}xtask/bench/{workload} --units {}` (single thread, fixed work, times itself; \
         the profiler attaches before the timed work starts). Every round runs every variant, in rotating order. \
         Slowdown: median target time / baseline median − 1. Profiler CPU: (user + system) / wall time from \
         its start to its exit, median over rounds; \"while recording\": the same between `go` and the workload's end \
         (from /proc/PID/stat, 10 ms resolution), i.e. without start-up and the final symbolization. RSS: highest `ru_maxrss`; every child of the bench reports at least {:.1} MiB \
         there (its parent's high-water mark), so a figure at that floor means \"this much or less\". \
         perf uses `-e cpu-clock` like nodeprof.",
        cx.node_flags.iter().map(|f| format!("{f} ")).collect::<String>(),
        cx.units, cx.rss_floor_mib
    )?;
    writeln!(md)?;
    writeln!(md, "| variant | target median ms | slowdown % | profiler CPU % of one core, whole run | CPU % while recording | profiler peak RSS MiB | goals |")?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---|")?;
    for &variant in variants {
        let mut ms: Vec<f64> = runs
            .iter()
            .filter(|r| r.variant == variant)
            .map(|r| r.target_ms)
            .collect();
        let med = median(&mut ms);
        let slowdown = 100.0 * (med / base_median - 1.0);
        let usage: Vec<ProfilerUsage> = runs
            .iter()
            .filter(|r| r.variant == variant)
            .filter_map(|r| r.profiler)
            .collect();
        let cpu = median(&mut usage.iter().map(|u| u.cpu_percent()).collect::<Vec<_>>());
        let recording_cpu = median(
            &mut usage
                .iter()
                .map(|u| u.recording_cpu_pct)
                .collect::<Vec<_>>(),
        );
        let rss = usage.iter().map(|u| u.rss_mib()).fold(f64::NAN, f64::max);
        let goals = match variant {
            Variant::Baseline => format!("run-to-run spread {base_spread:.1} %"),
            Variant::Nodeprof(hz) | Variant::NodeprofBase(hz) => {
                let slowdown_goal = variant.slowdown_goal().expect("nodeprof has goals");
                let mut g = format!(
                    "slowdown ≤ {slowdown_goal} % {}",
                    mark(slowdown <= slowdown_goal)
                );
                if hz <= 99 {
                    write!(
                        g,
                        "; CPU while recording < {GOAL_CPU_99} % {}",
                        mark(recording_cpu < GOAL_CPU_99)
                    )?;
                }
                write!(g, "; RSS < {GOAL_RSS_MIB} MiB {}", mark(rss < GOAL_RSS_MIB))?;
                g
            }
            Variant::Perf(_) => "reference".into(),
            Variant::PerfNoStack(_) => "floor: the sampling interrupt alone".into(),
            Variant::NodeprofGc | Variant::NodeprofOffCpu(_) | Variant::NodeprofWatch => {
                let goal = variant.slowdown_goal().expect("nodeprof has goals");
                format!("slowdown ≤ {goal} % {}", mark(slowdown <= goal))
            }
        };
        let (slowdown, cpu, recording_cpu, rss) = if variant == Variant::Baseline {
            (
                "—".to_string(),
                "—".to_string(),
                "—".to_string(),
                "—".to_string(),
            )
        } else {
            (
                format!("{slowdown:+.2}"),
                format!("{cpu:.2}"),
                format!("{recording_cpu:.2}"),
                if rss <= cx.rss_floor_mib * 1.02 {
                    format!("≤ {rss:.1} (floor)")
                } else {
                    format!("{rss:.1}")
                },
            )
        };
        writeln!(
            md,
            "| {} | {med:.0} | {slowdown} | {cpu} | {recording_cpu} | {rss} | {goals} |",
            variant.label()
        )?;
    }
    writeln!(md)?;
    if args.gc() {
        writeln!(
            md,
            "Goal: slowdown ≤ {GOAL_SLOWDOWN_GC} % under `nodeprof gc`. A slowdown within the baseline's run-to-run spread is noise."
        )?;
    } else {
        writeln!(
            md,
            "Goals: slowdown ≤ {GOAL_SLOWDOWN_99} % at 99 Hz and ≤ {GOAL_SLOWDOWN_999} % at 999 Hz; nodeprof < {GOAL_CPU_99} % \
             of one core at 99 Hz and < {GOAL_RSS_MIB} MiB RSS. A slowdown within the baseline's run-to-run spread is noise."
        )?;
    }
    writeln!(md)?;
    writeln!(md, "<details><summary>Every run</summary>")?;
    writeln!(md)?;
    writeln!(md, "| round | variant | target ms | profiler CPU s | profiler wall s | profiler CPU % | peak RSS MiB |")?;
    writeln!(md, "|---:|---|---:|---:|---:|---:|---:|")?;
    for r in runs {
        match r.profiler {
            Some(p) => writeln!(
                md,
                "| {} | {} | {:.1} | {:.3} | {:.2} | {:.2} | {:.1} |",
                r.round + 1,
                r.variant.label(),
                r.target_ms,
                p.cpu_s,
                p.wall_s,
                p.cpu_percent(),
                p.rss_mib()
            )?,
            None => writeln!(
                md,
                "| {} | {} | {:.1} | | | | |",
                r.round + 1,
                r.variant.label(),
                r.target_ms
            )?,
        }
    }
    writeln!(md)?;
    writeln!(md, "</details>")?;
    Ok(md)
}
