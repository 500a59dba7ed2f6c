//! `cargo xtask bench-fidelity`: does nodeprof put JS time in the same
//! functions as node's own profiler, on third-party code nobody here wrote?
//! (issue 14, "Proof"). Report: target/bench/fidelity.md.
//!
//! Workloads (installed from npm at pinned versions, xtask/bench/thirdparty/,
//! into target/bench/thirdparty/ once; reruns are offline):
//! - `tsc`: the TypeScript compiler type-checks rxjs's sources
//!   (xtask/bench/fidelity-tsc.js): fixed work, one full check;
//! - `express`, `fastify`: a JSON route under a fixed number of requests
//!   from autocannon in another process, over loopback
//!   (xtask/bench/fidelity-server.js).
//!
//! Each round runs each workload under `node --cpu-prof`: once per nodeprof
//! mode (`cpu`: `record`; `wall`: `record --wall`) with `nodeprof record -p
//! PID --format cpuprofile` attached to the same process for the same
//! window, then twice alone. Each run: start node, wait for `ready`; attach
//! nodeprof (paired runs) and wait until it samples;
//! the window opens (CLOCK_MONOTONIC, the clock of both profiles), the work
//! runs (`go` → `done`, or autocannon to completion), the window closes;
//! nodeprof gets SIGINT; node is told to exit and writes its profile.
//!
//! Both profiles are cut to the window and reduced to JS self time per
//! function ([`selftime`]: innermost JS frame, native leaves counted for
//! their JS caller, GC and idle left out), and compared by overlap
//! (Σ min(share_a, share_b)): nodeprof against `--cpu-prof` on the same
//! process, beside the two lone `--cpu-prof` runs (the noise floor: same
//! work, another process). Goal: nodeprof within 5 points of the floor.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use anyhow::{bail, ensure, Context, Result};
use selftime::{largest_differences, mean_shares, overlap, Attribution, Profile, Shares};

use crate::bench::wait_attached;
use crate::{bootstrap, util};

/// Points nodeprof's overlap may lie under the floor's.
const GOAL_POINTS: f64 = 5.0;
/// Fewer JS samples in a window than this and the shares are too coarse.
const MIN_JS_SAMPLES: u64 = 500;
/// Functions listed per workload where nodeprof and `--cpu-prof` differ.
const DIFFERENCES_LISTED: usize = 12;

#[derive(clap::Args)]
pub struct BenchFidelityArgs {
    /// Rounds; each runs every workload three times (one with nodeprof
    /// attached, two alone for the floor).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// nodeprof's sampling rate: 999 Hz is close to --cpu-prof's 1 ms
    /// interval, so both sides have as many samples.
    #[arg(long, default_value_t = 999)]
    hz: u64,
    /// Workloads, comma separated: tsc, express, fastify.
    #[arg(long, value_delimiter = ',', default_value = "tsc,express,fastify")]
    workloads: Vec<String>,
    /// Requests per run of an HTTP workload (default: 30,000 for express,
    /// 80,000 for fastify, about as many JS samples).
    #[arg(long)]
    requests: Option<u64>,
    /// Node major to run (an official binary `cargo xtask bootstrap`
    /// installed); default: `node` on PATH.
    #[arg(long)]
    node: Option<u32>,
    /// nodeprof's modes, each in a run of its own: `cpu` (the default
    /// `record`, CPU time) and `wall` (`record --wall`, on- and off-CPU
    /// time, as --cpu-prof's wall-clock ticks count a thread that waits
    /// for a CPU).
    #[arg(long, value_delimiter = ',', default_value = "cpu,wall")]
    modes: Vec<String>,
    /// The nodeprof binary (default: target/release/nodeprof, built first).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// V8 flags for the workload's node, in every run (e.g.
    /// `--no-sparkplug`: no baseline code, which `--cpu-prof` charges in
    /// part to the caller, see docs/benchmarks.md).
    #[arg(long, allow_hyphen_values = true, value_delimiter = ' ')]
    node_flags: Vec<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Tsc,
    Express,
    Fastify,
}

impl Workload {
    fn parse(name: &str) -> Result<Workload> {
        Ok(match name {
            "tsc" => Workload::Tsc,
            "express" => Workload::Express,
            "fastify" => Workload::Fastify,
            _ => bail!("unknown workload {name:?} (tsc, express, fastify)"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Workload::Tsc => "tsc",
            Workload::Express => "express",
            Workload::Fastify => "fastify",
        }
    }

    fn requests(self, cx: &Setup) -> u64 {
        cx.requests.unwrap_or(if self == Workload::Fastify {
            80_000
        } else {
            30_000
        })
    }

    fn describe(self) -> &'static str {
        match self {
            Workload::Tsc => "TypeScript 5.9.3 type-checks rxjs 7.8.2's sources (`tsc --noEmit -p src/tsconfig.esm.json`, in-process)",
            Workload::Express => "express 5.1.0, JSON route, autocannon 9.0.0 (10 connections) over loopback",
            Workload::Fastify => "fastify 5.12.8, JSON route, autocannon 9.0.0 (10 connections) over loopback",
        }
    }
}

struct Setup {
    node: PathBuf,
    nodeprof: PathBuf,
    thirdparty: PathBuf,
    out: PathBuf,
    hz: u64,
    requests: Option<u64>,
    node_flags: Vec<String>,
}

/// One profile cut to the run's window.
struct Window {
    shares: Shares,
    js_samples: u64,
    /// Main-thread samples, and those whose stack does not reach
    /// `node::Start` (cut short by a frame the walk could not pass).
    main_samples: u64,
    cut_samples: u64,
}

/// nodeprof's mode in a paired run.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Cpu,
    Wall,
}

impl Mode {
    fn parse(name: &str) -> Result<Mode> {
        Ok(match name {
            "cpu" => Mode::Cpu,
            "wall" => Mode::Wall,
            _ => bail!("unknown mode {name:?} (cpu, wall)"),
        })
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Cpu => "nodeprof",
            Mode::Wall => "nodeprof --wall",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Mode::Cpu => &[],
            Mode::Wall => &["--wall"],
        }
    }
}

/// One run under --cpu-prof: node's profile, nodeprof's of the same
/// process if one was attached, the load average at its end.
struct Run {
    cpu_prof: Window,
    nodeprof: Option<Window>,
    load: f64,
}

impl Run {
    /// nodeprof's window of a run it was attached to.
    fn paired(&self) -> &Window {
        self.nodeprof.as_ref().expect("nodeprof ran in this run")
    }
}

/// One round of a workload: a paired run per mode, two runs alone.
struct Round {
    paired: Vec<(Mode, Run)>,
    alone: [Run; 2],
}

impl Round {
    fn paired(&self, mode: Mode) -> &Run {
        &self
            .paired
            .iter()
            .find(|(m, _)| *m == mode)
            .expect("mode ran")
            .1
    }

    fn floor(&self) -> f64 {
        overlap(
            &self.alone[0].cpu_prof.shares,
            &self.alone[1].cpu_prof.shares,
        )
    }
}

/// Kills our own child (by pid) unless it was reaped.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn bench_fidelity(args: &BenchFidelityArgs) -> Result<()> {
    util::require_root("bench-fidelity")?;
    let workloads: Vec<Workload> = args
        .workloads
        .iter()
        .map(|w| Workload::parse(w))
        .collect::<Result<_>>()?;
    let modes: Vec<Mode> = args
        .modes
        .iter()
        .map(|m| Mode::parse(m))
        .collect::<Result<_>>()?;
    ensure!(args.rounds >= 1, "--rounds must be at least 1");
    let nodeprof = match &args.bin {
        Some(bin) => bin.clone(),
        None => {
            util::run(util::cargo().args(["build", "--release", "-p", "nodeprof"]))?;
            util::target_dir().join("release/nodeprof")
        }
    };
    let node = match args.node {
        Some(major) => bootstrap::node_binary(major)?,
        None => util::which("node").context("no `node` on PATH")?,
    };
    let cx = Setup {
        node,
        nodeprof,
        thirdparty: install_thirdparty()?,
        out: util::target_dir().join("bench/fidelity"),
        hz: args.hz,
        requests: args.requests,
        node_flags: args.node_flags.clone(),
    };
    let version = util::output_ok(Command::new(&cx.node).arg("--version"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "?".into());
    if cx.out.exists() {
        fs::remove_dir_all(&cx.out)?;
    }
    let path = util::target_dir().join("bench/fidelity.md");
    // A failed run must not leave an earlier run's figures looking current.
    let _ = fs::remove_file(&path);
    let mut results = Vec::new();
    for &workload in &workloads {
        let mut rounds = Vec::new();
        for round in 0..args.rounds {
            let mut paired = Vec::new();
            for &mode in &modes {
                let tag = format!("r{round}-{}", mode.label().replace([' ', '-'], ""));
                paired.push((mode, run_once(&cx, workload, &tag, Some(mode))?));
            }
            let alone = [
                run_once(&cx, workload, &format!("r{round}-alone-a"), None)?,
                run_once(&cx, workload, &format!("r{round}-alone-b"), None)?,
            ];
            let round = Round { paired, alone };
            let overlaps: Vec<String> = round
                .paired
                .iter()
                .map(|(m, r)| {
                    format!(
                        "{} {:.1} % ({} / {} JS samples)",
                        m.label(),
                        overlap(&r.paired().shares, &r.cpu_prof.shares),
                        r.paired().js_samples,
                        r.cpu_prof.js_samples
                    )
                })
                .collect();
            eprintln!(
                "{} round {}: {}; floor {:.1} %",
                workload.name(),
                rounds.len(),
                overlaps.join(", "),
                round.floor()
            );
            rounds.push(round);
        }
        results.push((workload, rounds));
        // Written after each workload: a later failure keeps what was measured.
        fs::write(&path, report(args, &version, &results))?;
    }
    print!("{}", fs::read_to_string(&path)?);
    println!("report: {}", path.display());
    Ok(())
}

/// The pinned packages in target/bench/thirdparty/node_modules: `npm ci`
/// unless the lock file there already equals xtask/bench/thirdparty's.
fn install_thirdparty() -> Result<PathBuf> {
    let src = util::root().join("xtask/bench/thirdparty");
    let dir = util::target_dir().join("bench/thirdparty");
    let lock = fs::read(src.join("package-lock.json"))?;
    let installed = fs::read(dir.join("node_modules/.package-lock.json")).is_ok()
        && fs::read(dir.join("package-lock.json")).is_ok_and(|l| l == lock);
    if !installed {
        fs::create_dir_all(&dir)?;
        fs::copy(src.join("package.json"), dir.join("package.json"))?;
        fs::write(dir.join("package-lock.json"), &lock)?;
        util::run(
            Command::new("npm")
                .args([
                    "ci",
                    "--no-audit",
                    "--no-fund",
                    "--ignore-scripts",
                    "--loglevel=error",
                ])
                .arg("--cache")
                .arg(util::target_dir().join("bench/npm-cache"))
                .current_dir(&dir),
        )?;
    }
    Ok(dir)
}

/// One run of `workload` under `--cpu-prof`, nodeprof attached in `mode` if given.
fn run_once(cx: &Setup, workload: Workload, tag: &str, mode: Option<Mode>) -> Result<Run> {
    let dir = cx.out.join(workload.name()).join(tag);
    fs::create_dir_all(&dir)?;
    let script = util::root().join(match workload {
        Workload::Tsc => "xtask/bench/fidelity-tsc.js",
        _ => "xtask/bench/fidelity-server.js",
    });
    let mut cmd = Command::new(&cx.node);
    cmd.args(&cx.node_flags)
        .arg("--cpu-prof")
        .arg("--cpu-prof-dir")
        .arg(dir.join("cpu-prof"))
        .arg(&script)
        .arg(&cx.thirdparty);
    if workload != Workload::Tsc {
        cmd.arg(workload.name());
    }
    let mut target = Guard(Some(
        cmd.current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(dir.join("node.stderr"))?)
            .spawn()
            .with_context(|| format!("cannot start `{}`", util::display(&cmd)))?,
    ));
    let child = target.0.as_mut().expect("just spawned");
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let ready = read_line(&mut stdout, &dir)?;
    ensure!(
        ready.starts_with("ready"),
        "{tag}: the workload did not start: {ready:?}"
    );

    let mut nodeprof = None;
    let prefix = dir.join("nodeprof");
    if let Some(mode) = mode {
        let mut np = Command::new(&cx.nodeprof);
        np.args([
            "record",
            "-q",
            "-p",
            &pid.to_string(),
            "-F",
            &cx.hz.to_string(),
        ])
        .args(["--format", "cpuprofile", "-o"])
        .arg(&prefix)
        .args(mode.args())
        .stdin(Stdio::null())
        .stdout(File::create(dir.join("nodeprof.stdout"))?)
        .stderr(File::create(dir.join("nodeprof.stderr"))?);
        let mut guard = Guard(Some(np.spawn().context("cannot start nodeprof")?));
        let np_pid = guard.0.as_ref().expect("just spawned").id() as libc::pid_t;
        wait_attached(np_pid, || {
            match guard.0.as_mut().expect("running").try_wait()? {
                Some(status) => bail!(
                    "nodeprof exited before attaching ({status}): {}",
                    fs::read_to_string(dir.join("nodeprof.stderr")).unwrap_or_default()
                ),
                None => Ok(()),
            }
        })?;
        nodeprof = Some(guard);
    }

    let start_us = util::monotonic_us();
    match workload {
        Workload::Tsc => {
            writeln!(stdin, "go")?;
            let done = read_line(&mut stdout, &dir)?;
            ensure!(
                done.starts_with("done"),
                "{tag}: tsc did not finish: {done:?}"
            );
        }
        Workload::Express | Workload::Fastify => {
            let port = ready
                .split_whitespace()
                .nth(1)
                .context("no port in `ready`")?;
            let url = format!("http://127.0.0.1:{port}/users/14?fields=name,total,roles");
            util::run(
                Command::new(&cx.node)
                    .arg(cx.thirdparty.join("node_modules/autocannon/autocannon.js"))
                    .args(["-c", "10", "-a", &workload.requests(cx).to_string(), &url])
                    .stdout(Stdio::null())
                    .stderr(File::create(dir.join("autocannon.log"))?),
            )?;
        }
    }
    let end_us = util::monotonic_us();
    let load = fs::read_to_string("/proc/loadavg")?
        .split_whitespace()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(f64::NAN);

    if let Some(mut guard) = nodeprof {
        let mut np = guard.0.take().expect("running");
        // SAFETY: plain syscall on our own child, not yet reaped.
        unsafe { libc::kill(np.id() as libc::pid_t, libc::SIGINT) };
        let status = np.wait()?;
        ensure!(
            status.success(),
            "{tag}: nodeprof failed ({status}): {}",
            fs::read_to_string(dir.join("nodeprof.stderr")).unwrap_or_default()
        );
    }
    writeln!(stdin, "exit")?;
    let status = target.0.take().expect("running").wait()?;
    ensure!(status.success(), "{tag}: node failed ({status})");

    let window = |p: &Profile, what: &str| -> Result<Window> {
        let a = Attribution::of_window(p, start_us as i64, end_us as i64);
        ensure!(
            a.js_total >= MIN_JS_SAMPLES,
            "{tag}: {what} has only {} JS samples in the window (of {} in the profile): \
             too few to compare shares",
            a.js_total,
            p.samples.len()
        );
        let (main_samples, cut_samples) = cut_stacks(p, start_us as i64, end_us as i64);
        Ok(Window {
            shares: a.shares(),
            js_samples: a.js_total,
            main_samples,
            cut_samples,
        })
    };
    let cpu_prof = window(
        &load_profile(&one_cpuprofile(&dir.join("cpu-prof"))?)?,
        "--cpu-prof",
    )?;
    let nodeprof = match mode {
        Some(_) => Some(window(
            &load_profile(&prefix.with_extension("cpuprofile"))?,
            "nodeprof",
        )?),
        None => None,
    };
    Ok(Run {
        cpu_prof,
        nodeprof,
        load,
    })
}

/// Main-thread samples of nodeprof's profile in the window, and how many
/// of them have a stack cut short: the outermost frame is not `node::Start`
/// (node's samples of other threads sit under a `[NAME TID]` node).
/// Samples in `--cpu-prof`'s own signal handler are left out.
fn cut_stacks(p: &Profile, start_us: i64, end_us: i64) -> (u64, u64) {
    let (mut main, mut cut) = (0, 0);
    let mut memo = std::collections::HashMap::new();
    for (&id, &t) in p.samples.iter().zip(&p.times_us) {
        if !(start_us..=end_us).contains(&t) {
            continue;
        }
        let (outermost, in_handler) = memo.entry(id).or_insert_with(|| {
            let stack = p.stack(id);
            let in_handler = stack
                .iter()
                .any(|(name, _)| name.starts_with(selftime::V8_PROFILER_SIGNAL_HANDLER));
            let outermost = stack
                .last()
                .map(|(name, _)| name.clone())
                .unwrap_or_default();
            (outermost, in_handler)
        });
        // Samples in `--cpu-prof`'s own signal handler are the bench's, not
        // the program's (the shares leave them out too): its signal frame
        // has no row to unwind through.
        if selftime::is_thread_node(outermost) || outermost.starts_with('(') || *in_handler {
            continue;
        }
        main += 1;
        if !outermost.starts_with("node::Start(") {
            cut += 1;
        }
    }
    (main, cut)
}

fn read_line(from: &mut BufReader<ChildStdout>, dir: &Path) -> Result<String> {
    let mut line = String::new();
    if from.read_line(&mut line)? == 0 {
        bail!(
            "the workload ended early; its stderr:\n{}",
            fs::read_to_string(dir.join("node.stderr")).unwrap_or_default()
        );
    }
    Ok(line.trim().to_string())
}

/// The single profile node wrote into `dir` (the main thread's).
fn one_cpuprofile(dir: &Path) -> Result<PathBuf> {
    let files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("node wrote no {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cpuprofile"))
        .collect();
    match files.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("{} .cpuprofile files in {}", files.len(), dir.display()),
    }
}

fn load_profile(path: &Path) -> Result<Profile> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Profile::new(&serde_json::from_str(&text).with_context(
        || format!("{} is not JSON", path.display()),
    )?))
}

/// Median and range of `values`, as "M (lo–hi)".
fn spread(values: &[f64]) -> (f64, String) {
    let mut v = values.to_vec();
    let med = util::median(&mut v);
    (med, format!("{med:.1} ({:.1}–{:.1})", v[0], v[v.len() - 1]))
}

fn report(
    args: &BenchFidelityArgs,
    node_version: &str,
    results: &[(Workload, Vec<Round>)],
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# JS self time: nodeprof against node's --cpu-prof on third-party code\n\n\
         `cargo xtask bench-fidelity --rounds {} --hz {}{}{} --modes {}` (workloads {}), \
         node {node_version}. Each round: per mode one run under `--cpu-prof` (1 ms interval) with \
         `nodeprof record -p PID -F {}` attached to the same process, then two runs under `--cpu-prof` \
         alone (the floor). Overlap = Σ over functions of min(share a, share b) of the JS self time in the \
         same window; median (min–max) over the rounds. Goal: nodeprof's overlap at most {GOAL_POINTS} \
         points under the floor.\n",
        args.rounds,
        args.hz,
        args.requests.map(|r| format!(" --requests {r}")).unwrap_or_default(),
        if args.node_flags.is_empty() {
            String::new()
        } else {
            format!(" --node-flags='{}'", args.node_flags.join(" "))
        },
        args.modes.join(","),
        args.workloads.join(","),
        args.hz
    );
    let _ = writeln!(
        md,
        "| workload | profiler | overlap with --cpu-prof, same process | two --cpu-prof runs (floor) | \
         under the floor, points | goal met | JS samples per run, nodeprof / --cpu-prof | \
         nodeprof's main-thread stacks cut short | load average |\n\
         |---|---|---:|---:|---:|---|---:|---:|---:|"
    );
    for (workload, rounds) in results {
        let floor: Vec<f64> = rounds.iter().map(Round::floor).collect();
        let (floor_med, floor_text) = spread(&floor);
        for (mode, _) in &rounds[0].paired {
            let runs: Vec<&Run> = rounds.iter().map(|r| r.paired(*mode)).collect();
            let np: Vec<f64> = runs
                .iter()
                .map(|r| overlap(&r.paired().shares, &r.cpu_prof.shares))
                .collect();
            let (np_med, np_text) = spread(&np);
            let gap = floor_med - np_med;
            let mut np_n: Vec<f64> = runs.iter().map(|r| r.paired().js_samples as f64).collect();
            let mut cpu_n: Vec<f64> = runs.iter().map(|r| r.cpu_prof.js_samples as f64).collect();
            let mut load: Vec<f64> = runs.iter().map(|r| r.load).collect();
            let (main, cut) = runs.iter().fold((0, 0), |(m, c), r| {
                (m + r.paired().main_samples, c + r.paired().cut_samples)
            });
            let _ = writeln!(
                md,
                "| {} | {} | {np_text} | {floor_text} | {gap:.1} | {} | {:.0} / {:.0} | {:.2} % | {:.1} |",
                workload.name(),
                mode.label(),
                if gap <= GOAL_POINTS { "yes" } else { "**no**" },
                util::median(&mut np_n),
                util::median(&mut cpu_n),
                100.0 * cut as f64 / main.max(1) as f64,
                util::median(&mut load),
            );
        }
    }
    let _ = writeln!(md);
    for (workload, rounds) in results {
        let _ = writeln!(
            md,
            "## {}: where the shares differ\n\n{}.\n\n\
             Each function's share of the JS self time, %, averaged over the rounds (line:column 1-based): \
             the {DIFFERENCES_LISTED} largest differences between --cpu-prof and nodeprof on the same \
             process, per mode, then between two --cpu-prof runs for scale.\n",
            workload.name(),
            workload.describe()
        );
        let mean = |side: &dyn Fn(&Round) -> &Window| -> Shares {
            mean_shares(
                &rounds
                    .iter()
                    .map(|r| side(r).shares.clone())
                    .collect::<Vec<_>>(),
            )
        };
        for (mode, _) in &rounds[0].paired {
            differences_table(
                &mut md,
                ("--cpu-prof", &mean(&|r| &r.paired(*mode).cpu_prof)),
                (mode.label(), &mean(&|r| r.paired(*mode).paired())),
            );
        }
        differences_table(
            &mut md,
            ("--cpu-prof run a", &mean(&|r| &r.alone[0].cpu_prof)),
            ("--cpu-prof run b", &mean(&|r| &r.alone[1].cpu_prof)),
        );
    }
    md
}

/// The functions whose shares differ most between `a` and `b`, as a table.
fn differences_table(md: &mut String, (a_name, a): (&str, &Shares), (b_name, b): (&str, &Shares)) {
    let _ = writeln!(
        md,
        "| function | {a_name} % | {b_name} % | difference |\n|---|---:|---:|---:|"
    );
    for (f, sa, sb) in largest_differences(a, b, DIFFERENCES_LISTED) {
        let _ = writeln!(
            md,
            "| `{}` {}:{}:{} | {sa:.2} | {sb:.2} | {:+.2} |",
            f.name,
            short_url(&f.url),
            f.line + 1,
            f.column + 1,
            sb - sa
        );
    }
    let _ = writeln!(md);
}
/// A script URL from the package on: `…/node_modules/typescript/lib/typescript.js`
/// → `typescript/lib/typescript.js`.
fn short_url(url: &str) -> &str {
    url.rsplit_once("/node_modules/")
        .map(|(_, rest)| rest)
        .or_else(|| url.rsplit_once('/').map(|(_, file)| file))
        .unwrap_or(url)
}
