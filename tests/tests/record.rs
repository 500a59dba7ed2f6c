//! `nodeprof record` against real node processes, as root.
//!
//! Every test takes the crate-wide lock first ([`serial`]): they share the
//! kernel and the machine's CPUs, and several measure sample counts or check
//! that no sampler is left loaded.

use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nodeprof_tests::*;

/// Generous bound for one nodeprof run (loading the sampler, symbolizing and
/// writing take well under a second here; recordings are ≤ 3 s).
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
const READY_TIMEOUT: Duration = Duration::from_secs(15);

fn s(x: impl ToString) -> String {
    x.to_string()
}

fn is_node_start(frame: &str) -> bool {
    frame.starts_with("node::Start(")
}

/// Samples (µs of CLOCK_MONOTONIC) lie in [startTime, endTime], in
/// non-decreasing order, and cover the recording; the recording lies within
/// `[before, after]` (CLOCK_MONOTONIC µs read by the test around the run).
fn check_timestamps(out: &Outputs, hz: u64, before: u64, after: u64) {
    let (start, end) = (out.start_us(), out.end_us());
    assert!(
        before <= start && end <= after,
        "[startTime {start}, endTime {end}] is not within the nodeprof run [{before}, {after}] (CLOCK_MONOTONIC µs)"
    );
    let times = out.sample_times();
    assert!(!times.is_empty(), "no samples");
    for (i, w) in times.windows(2).enumerate() {
        assert!(
            w[0] <= w[1],
            "sample {} at {} is after sample {} at {}",
            i,
            w[0],
            i + 1,
            w[1]
        );
    }
    for &t in &times {
        assert!(
            t >= start && t <= end,
            "sample at {t} outside [{start}, {end}]"
        );
    }
    // The target is busy from the first moment of the recording: the first
    // sample comes within a couple of periods of startTime (nodeprof moves
    // startTime back to a sample taken while it was still starting up, so
    // the first delta may be 0), the last one shortly before endTime.
    let first = out.time_deltas()[0];
    let period_us = 1_000_000 / hz;
    assert!(
        // 150 ms of slack: on a loaded machine a busy thread can wait that long for a CPU.
        first <= 2 * period_us + 150_000,
        "first sample {first} µs after startTime: the start of the recording was not sampled"
    );
    let last = *times.last().unwrap();
    assert!(
        end - last <= 2 * period_us + 250_000,
        "last sample {} µs before endTime: the end of the recording was not sampled",
        end - last
    );
}

/// The tolerance of "samples ≈ CPU time × HZ": ±15% when the target had its
/// CPUs (≥ 90% of `busy_threads`), ±35% when other work on a shared machine
/// took a good part of them: under heavy contention (load average ≫ CPUs,
/// seen while other sessions build and benchmark on this machine) the
/// per-CPU ticks and the scheduler's accounting were seen to differ by up to
/// ~25%.
fn rate_tolerance(cpus: f64, busy_threads: u32) -> f64 {
    if cpus >= 0.9 * busy_threads as f64 {
        0.15
    } else {
        eprintln!("note: the target got only {cpus:.2} of its {busy_threads} CPUs (machine busy): tolerance ±35%");
        0.35
    }
}

/// Asserts the sample count of a busy target fits CPU time × frequency.
///
/// Tolerance ±15% (see [`rate_tolerance`] for a contended machine):
/// `cpu-clock` fires on each CPU every 1/HZ s (the machine has 2 CPUs) and
/// the sampler keeps the tick when a target thread is running on that CPU,
/// so a target keeping N threads busy collects ≈ N × HZ samples per second.
/// Timer jitter, the recording's edges and (with 2 busy threads on 2 CPUs)
/// the time nodeprof and the kernel take from the target account for the
/// rest.
///
/// `cpus` is the target's CPU time during the recording divided by its wall
/// time, from the scheduler's own accounting — the quantity the samples
/// estimate — and is always checked. The nominal duration × HZ × busy
/// threads is checked as well when the machine let the target have ≥ 90% of
/// its CPUs (other work on a shared machine lowers the target's share; it
/// cannot raise the sample count, so the upper bound is always checked).
fn check_sample_rate(
    out: &Outputs,
    cpus: f64,
    hz: u64,
    seconds: f64,
    busy_threads: u32,
) -> Result<(), String> {
    let n = out.sample_count() as f64;
    let measured = cpus * out.duration_s() * hz as f64;
    let nominal = seconds * hz as f64 * busy_threads as f64;
    eprintln!(
        "{n} samples; from measured CPU {measured:.0} ({cpus:.2} CPUs); nominal {nominal:.0}"
    );
    let tolerance = rate_tolerance(cpus, busy_threads);
    if (n - measured).abs() > tolerance * measured {
        return Err(format!(
            "{n} samples are not within ±{:.0}% of the target's measured CPU time × HZ \
             ({cpus:.2} CPUs × {:.2} s × {hz} Hz = {measured:.0}); samples per 100 ms: {:?}",
            tolerance * 100.0,
            out.duration_s(),
            out.histogram(100_000),
        ));
    }
    if n > nominal * 1.15 {
        return Err(format!(
            "{n} samples exceed {seconds} s × {hz} Hz × {busy_threads} threads = {nominal} by more than 15%"
        ));
    }
    if cpus >= 0.9 * busy_threads as f64 && n < nominal * 0.85 {
        return Err(format!(
            "{n} samples are more than 15% below {seconds} s × {hz} Hz × {busy_threads} busy threads = {nominal}"
        ));
    }
    Ok(())
}

/// One recording of a busy fixture for the sample-count tests: checks what
/// must always hold (by assertion) and returns the sample-count verdict.
fn sample_rate_attempt(busy_threads: u32, hz: u64, seconds: u64) -> Result<(), String> {
    let dir = scratch_dir();
    let fixture_secs = s(seconds + 3);
    let threads = s(busy_threads);
    let target = Proc::node(
        &node20(),
        &[],
        "busy.js",
        &[&fixture_secs, &threads],
        dir.path(),
    );
    target.wait_for_line("ready", READY_TIMEOUT);
    let prefix = dir.path().join("rate");
    let before = monotonic_us();
    let np = spawn_nodeprof(
        &record_args(
            target.pid,
            &prefix,
            &["-F", &hz.to_string(), "-d", &seconds.to_string()],
        ),
        dir.path(),
    );
    let cpus = np.measure_sampled_cpus(target.pid, RUN_TIMEOUT);
    let run = np.finish(RUN_TIMEOUT);
    let after = monotonic_us();
    run.assert_success();
    assert!(
        run.summary_field("Samples")
            .ends_with(&format!("(at {hz} Hz per CPU)")),
        "{}",
        run.summary_field("Samples")
    );
    let out = Outputs::load(&prefix);
    assert_eq!(
        run.summary_samples(),
        out.sample_count() as u64,
        "summary and cpuprofile sample counts differ"
    );
    assert_near(
        out.duration_s(),
        seconds as f64,
        0.1,
        &format!("recorded duration (endTime - startTime) for -d {seconds}"),
    );
    check_timestamps(&out, hz, before, after);
    assert_eq!(run.summary_field("Lost samples"), "0");
    check_sample_rate(&out, cpus, hz, seconds as f64, busy_threads)
}

/// The sample-count tests get a second attempt: on this shared VM the
/// per-CPU timer ticks were seen (rarely, ~1 run in 10) to fall short of the
/// scheduler's CPU accounting for a while, as if a vCPU lost ticks. A nodeprof
/// that loses samples fails both attempts.
fn check_sample_rate_twice(busy_threads: u32, hz: u64, seconds: u64) {
    if let Err(first) = sample_rate_attempt(busy_threads, hz, seconds) {
        eprintln!("note: first attempt failed ({first}); trying once more");
        if let Err(second) = sample_rate_attempt(busy_threads, hz, seconds) {
            panic!("sample count off in two attempts:\n1: {first}\n2: {second}");
        }
    }
}

/// Test 1: attach by pid; named native frames; the three outputs agree.
#[test]
fn attach_by_pid_names_native_frames_and_outputs_agree() {
    let _lock = serial();
    let dir = scratch_dir();
    let target = Proc::node(&node20(), &[], "busy.js", &["5"], dir.path());
    target.wait_for_line("ready", READY_TIMEOUT);
    let prefix = dir.path().join("attach");
    let run = run_nodeprof(
        &record_args(target.pid, &prefix, &["-d", "2"]),
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_success();
    assert_eq!(run.stop_reason(), "duration elapsed");
    assert!(
        run.stdout.contains(&format!("recorded pid {}", target.pid)),
        "stdout:\n{}",
        run.stdout
    );

    let out = Outputs::load(&prefix);
    let n = out.sample_count() as u64;
    assert_eq!(
        run.summary_samples(),
        n,
        "summary Samples vs. cpuprofile samples"
    );
    assert_eq!(
        out.folded_total(),
        n,
        "sum of folded counts vs. cpuprofile samples"
    );
    // ≈ 198 on an idle machine; the floor only needs enough samples to judge
    // the stacks (the counts are the sample-count tests' business).
    assert!(n >= 40, "only {n} samples of a busy thread in 2 s at 99 Hz");
    assert_eq!(run.summary_field("Lost samples"), "0");
    let mut written = run.written();
    written.sort();
    let mut expected: Vec<_> = ["cpuprofile", "folded", "svg"]
        .iter()
        .map(|e| dir.path().join(format!("attach.{e}")))
        .collect();
    expected.sort();
    assert_eq!(written, expected, "wrote lines");

    // The main thread spins in JS called from node::Start: nearly every sample
    // goes through node::Start and a V8 builtin (JSEntry, the interpreter…).
    let with_start = out.samples_with_frame(is_node_start);
    let with_builtin = out.samples_with_frame(|f| f.starts_with("Builtins_"));
    assert!(
        with_start * 10 >= n * 8,
        "only {with_start}/{n} samples under node::Start:\n{}",
        out.folded_excerpt()
    );
    assert!(
        with_builtin * 10 >= n * 8,
        "only {with_builtin}/{n} samples with a Builtins_ frame:\n{}",
        out.folded_excerpt()
    );
    assert!(
        out.function_names().iter().any(|f| is_node_start(f)),
        "no node::Start node in the cpuprofile"
    );
    // node 20 names every thread `node`: nodeprof names the main thread by its role.
    let main = out.samples_per_thread().get("main").copied().unwrap_or(0);
    assert!(
        main * 10 >= n * 9,
        "only {main}/{n} samples on the thread named main: {:?}",
        out.samples_per_thread()
    );
}

/// Without -o, outputs go to the current directory as nodeprof-PID-DATE-TIME.*;
/// --format limits what is written.
#[test]
fn default_output_names_and_format_selection() {
    let _lock = serial();
    let dir = scratch_dir();
    let work = dir.path().join("cwd");
    fs::create_dir(&work).unwrap();
    let target = Proc::node(&node20(), &[], "busy.js", &["4"], dir.path());
    target.wait_for_line("ready", READY_TIMEOUT);
    let mut cmd = Command::new(nodeprof_bin());
    cmd.current_dir(&work);
    let run = spawn_nodeprof_with(
        cmd,
        &[
            s("record"),
            s("-q"),
            s("-p"),
            s(target.pid),
            s("-d"),
            s("1"),
            s("--format"),
            s("folded,cpuprofile"),
        ],
        dir.path(),
    )
    .finish(RUN_TIMEOUT);
    run.assert_success();
    let mut names: Vec<String> = fs::read_dir(&work)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "files written: {names:?}");
    let stem = names[0]
        .strip_suffix(".cpuprofile")
        .unwrap_or_else(|| panic!("files written: {names:?}"));
    assert_eq!(names[1], format!("{stem}.folded"));
    // nodeprof-PID-YYYYMMDD-HHMMSS
    let rest = stem
        .strip_prefix(&format!("nodeprof-{}-", target.pid))
        .unwrap_or_else(|| panic!("name {stem} does not start with nodeprof-PID-"));
    let (date, time) = rest
        .split_once('-')
        .unwrap_or_else(|| panic!("no date-time in {stem}"));
    assert!(
        date.len() == 8
            && time.len() == 6
            && (date.to_string() + time)
                .bytes()
                .all(|b| b.is_ascii_digit()),
        "date-time {rest}"
    );
    let mut written: Vec<String> = run
        .written()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(
        written, names,
        "`wrote` lines vs. the files in the directory"
    );
    let _ = Outputs::load_formats(&work.join(stem), &["cpuprofile", "folded"]);
}

/// Test 2a: 2 busy threads (main + Worker), 3 s at 99 Hz → ≈ 3 × 99 × 2 samples.
#[test]
fn sample_count_fits_two_busy_threads_at_99_hz() {
    let _lock = serial();
    check_sample_rate_twice(2, 99, 3);
}

/// Test 2b: 1 busy thread, 2 s at 999 Hz → ≈ 1998 samples.
#[test]
fn sample_count_fits_one_busy_thread_at_999_hz() {
    let _lock = serial();
    check_sample_rate_twice(1, 999, 2);
}

/// The thread ids of `pid` whose kernel name is `comm`.
fn tids_named(pid: u32, comm: &str) -> Vec<u32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter(|t| fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == comm))
        .filter_map(|t| t.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect()
}

/// The samples of one thread fit its own CPU time × HZ: samples are
/// attributed to the thread that was running. ±35% + 10 samples: this is
/// about attribution (a thread's samples landing on another), not precision.
fn check_thread_samples(samples: u64, cpus: f64, out: &Outputs, hz: u64, what: &str) {
    let expected = cpus * out.duration_s() * hz as f64;
    assert!(
        (samples as f64 - expected).abs() <= 0.35 * expected + 10.0,
        "{what}: {samples} samples, but it ran {cpus:.2} CPUs × {:.2} s × {hz} Hz = {expected:.0}",
        out.duration_s()
    );
}

/// The non-main thread that used the most CPU during the recording (the busy Worker).
fn busiest_other_thread(pid: u32, cpus: &std::collections::BTreeMap<u32, f64>) -> u32 {
    cpus.iter()
        .filter(|(&tid, _)| tid != pid)
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(&tid, _)| tid)
        .expect("the target has threads besides the main one")
}

/// Test 3a: node 24 names its threads: the Worker `{name: 'hot-worker'}` is
/// its own tower in the folded file and its own `[hot-worker TID]` subtree.
#[test]
fn worker_thread_appears_with_its_name_on_node_24() {
    let _lock = serial();
    let dir = scratch_dir();
    let target = Proc::node(
        &node24(),
        &[],
        "busy.js",
        &["4", "2", "hot-worker"],
        dir.path(),
    );
    target.wait_for_line("ready", READY_TIMEOUT);
    let worker_tids = tids_named(target.pid, "hot-worker");
    assert_eq!(
        worker_tids.len(),
        1,
        "node 24 should name the Worker's thread hot-worker (threads named so: {worker_tids:?})"
    );
    let tid = worker_tids[0];
    let prefix = dir.path().join("worker24");
    let np = spawn_nodeprof(&record_args(target.pid, &prefix, &["-d", "2"]), dir.path());
    let cpus = np.measure_sampled_thread_cpus(target.pid, RUN_TIMEOUT);
    let run = np.finish(RUN_TIMEOUT);
    run.assert_success();
    let out = Outputs::load(&prefix);
    let per_thread = out.samples_per_thread();
    let worker = per_thread.get("hot-worker").copied().unwrap_or(0);
    let main = per_thread.get("MainThread").copied().unwrap_or(0);
    // Both threads spin; each thread's samples fit its own CPU time.
    assert!(
        worker >= 20,
        "hot-worker has {worker} samples; per thread: {per_thread:?}"
    );
    assert!(
        main >= 10,
        "MainThread has {main} samples; per thread: {per_thread:?}"
    );
    check_thread_samples(worker, cpus[&tid], &out, 99, "hot-worker");
    check_thread_samples(main, cpus[&target.pid], &out, 99, "MainThread");
    let thread_node = format!("[hot-worker {tid}]");
    assert!(
        out.root_children().contains(&thread_node),
        "no {thread_node} under (root): {:?}",
        out.root_children()
    );
    assert_eq!(
        out.samples_under_root_child(&thread_node),
        worker,
        "samples under {thread_node} vs. folded hot-worker lines"
    );
    assert!(
        out.folded.iter().any(|st| st.thread == "hot-worker"
            && st
                .frames
                .iter()
                .any(|f| f.starts_with("node::worker::Worker::"))),
        "no hot-worker stack through node::worker::Worker:\n{}",
        out.folded_excerpt()
    );
    assert!(
        run.summary_field("Threads sampled").contains("hot-worker"),
        "{}",
        run.summary_field("Threads sampled")
    );
}

/// Node 24+ names every Worker's thread `WorkerThread`: two workers are
/// still two threads of their own in the folded file, `worker 1` and
/// `worker 2`, each with about its share of the samples.
#[test]
fn two_workers_are_two_threads_on_node_26() {
    let _lock = serial();
    let dir = scratch_dir();
    let target = Proc::node(
        &node_major(26),
        &[],
        "busy.js",
        &["4", "3", "-"],
        dir.path(),
    );
    target.wait_for_line("ready", READY_TIMEOUT);
    let prefix = dir.path().join("workers26");
    let run = run_nodeprof(
        &record_args(target.pid, &prefix, &["-d", "2", "--wall"]),
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_success();
    let out = Outputs::load(&prefix);
    let per = out.samples_per_thread();
    assert!(!per.contains_key("WorkerThread"), "{per:?}");
    // --wall: every thread has a sample each period, spinning or not.
    let (one, two) = (per.get("worker 1").copied(), per.get("worker 2").copied());
    assert!(
        one.zip(two)
            .is_some_and(|(a, b)| a.min(b) * 10 >= a.max(b) * 8 && a.min(b) >= 100),
        "{per:?}"
    );
}

/// Test 3b: node 20 calls every thread `node`; the Worker still appears as a
/// thread of its own, named by its role (`[worker 1 TID]` under the root,
/// TID ≠ pid).
#[test]
fn worker_thread_appears_as_second_thread_on_node_20() {
    let _lock = serial();
    let dir = scratch_dir();
    let target = Proc::node(&node20(), &[], "busy.js", &["4", "2"], dir.path());
    target.wait_for_line("ready", READY_TIMEOUT);
    let prefix = dir.path().join("worker20");
    let np = spawn_nodeprof(&record_args(target.pid, &prefix, &["-d", "2"]), dir.path());
    let cpus = np.measure_sampled_thread_cpus(target.pid, RUN_TIMEOUT);
    let run = np.finish(RUN_TIMEOUT);
    run.assert_success();
    let worker_tid = busiest_other_thread(target.pid, &cpus);
    let out = Outputs::load(&prefix);
    let thread_node = format!("[worker 1 {worker_tid}]");
    let worker = out.samples_under_root_child(&thread_node);
    assert!(
        worker >= 20,
        "{thread_node} has {worker} samples; root children: {:?}",
        out.root_children()
    );
    check_thread_samples(worker, cpus[&worker_tid], &out, 99, &thread_node);
    // The main thread's samples hang directly under the root, through node::Start.
    let main: u64 = out
        .root_children()
        .iter()
        .filter(|c| !Outputs::is_thread_node(c))
        .map(|c| out.samples_under_root_child(c))
        .sum();
    assert!(
        main >= 10,
        "main thread has {main} samples: {:?}",
        out.root_children()
    );
    check_thread_samples(main, cpus[&target.pid], &out, 99, "main thread");
    assert!(
        !out.root_children()
            .iter()
            .any(|c| Outputs::is_thread_node(c) && c.ends_with(&format!(" {}]", target.pid))),
        "the main thread got a thread node: {:?}",
        out.root_children()
    );
    assert!(
        out.samples_per_thread().contains_key("worker 1")
            && out.samples_per_thread().contains_key("main"),
        "threads not named by role in the folded file: {:?}",
        out.samples_per_thread()
    );
    let threads = run.summary_field("Threads sampled");
    let count: u32 = threads
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(count >= 2, "Threads sampled: {threads}");
}

/// Test 4a: launch mode records from the first instruction until the command exits.
#[test]
fn launch_mode_records_until_the_command_exits() {
    let _lock = serial();
    let dir = scratch_dir();
    let prefix = dir.path().join("launch");
    let started = Instant::now();
    let before = monotonic_us();
    let run = run_nodeprof(
        &[
            s("record"),
            s("-q"),
            s("-o"),
            s(prefix.display()),
            s("--"),
            s(node20().display()),
            s(fixture("busy.js").display()),
            s("1"),
        ],
        dir.path(),
        RUN_TIMEOUT,
    );
    let wall = started.elapsed();
    let after = monotonic_us();
    run.assert_success();
    assert_eq!(run.stop_reason(), "target exited");
    assert!(
        run.stdout
            .lines()
            .any(|l| l == "nodeprof: command exited with status 0"),
        "stdout:\n{}",
        run.stdout
    );
    assert!(
        run.stdout.lines().any(|l| l.starts_with("ready ")),
        "the command's own output is missing:\n{}",
        run.stdout
    );
    assert!(
        wall < Duration::from_secs(10),
        "launch of a 1 s command took {wall:?}"
    );
    let out = Outputs::load(&prefix);
    let n = out.sample_count() as u64;
    assert!(
        out.duration_s() >= 1.0,
        "recorded {} s of a command that runs > 1 s",
        out.duration_s()
    );
    assert!(n >= 30, "only {n} samples of a 1 s busy command");
    assert!(
        out.samples_with_frame(is_node_start) * 10 >= n * 8,
        "node::Start missing:\n{}",
        out.folded_excerpt()
    );
    // Recording starts before the command's first instruction, and node is
    // busy from its start: the first sample comes within ~50 ms.
    let first_ms = out.time_deltas()[0] as f64 / 1000.0;
    assert!(
        first_ms <= 50.0,
        "first sample {first_ms} ms after startTime: startup was not recorded"
    );
    check_timestamps(&out, 99, before, after);
}

/// Test 4b: a launched command's exit status is reported.
#[test]
fn launch_mode_reports_a_failing_command_status() {
    let _lock = serial();
    let dir = scratch_dir();
    let prefix = dir.path().join("status");
    let run = run_nodeprof(
        &[
            s("record"),
            s("-q"),
            s("-o"),
            s(prefix.display()),
            s("--"),
            s("sh"),
            s("-c"),
            s("exit 3"),
        ],
        dir.path(),
        RUN_TIMEOUT,
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l == "nodeprof: command exited with status 3"),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(run.stop_reason(), "target exited");
}

/// Test 4c: a command that does not exist: exit 1, one line, no output files.
#[test]
fn launch_mode_rejects_a_missing_command() {
    let _lock = serial();
    let dir = scratch_dir();
    for cmd in ["no-such-command-nodeprof-test", "/nonexistent/bin/node"] {
        let prefix = dir.path().join("missing");
        let run = run_nodeprof(
            &[
                s("record"),
                s("-q"),
                s("-o"),
                s(prefix.display()),
                s("--"),
                s(cmd),
                s("x.js"),
            ],
            dir.path(),
            RUN_TIMEOUT,
        );
        run.assert_error(cmd);
        for ext in ["cpuprofile", "folded", "svg"] {
            assert!(
                !dir.path().join(format!("missing.{ext}")).exists(),
                "missing.{ext} was left behind"
            );
        }
    }
}

/// Test 5: SIGINT (Ctrl-C) and SIGTERM end the recording, write everything,
/// and leave the target running untouched.
fn stop_by_signal(signal: libc::c_int, reason: &str) {
    let dir = scratch_dir();
    let mut target = Proc::node(&node20(), &[], "busy.js", &["6"], dir.path());
    target.wait_for_line("ready", READY_TIMEOUT);
    let prefix = dir.path().join("signal");
    // No -q: the default (progress line) path.
    let before = monotonic_us();
    let np = spawn_nodeprof(
        &[
            s("record"),
            s("-p"),
            s(target.pid),
            s("-o"),
            s(prefix.display()),
        ],
        dir.path(),
    );
    np.wait_sampling(Duration::from_secs(10));
    let c0 = cpu_time_ns(target.pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    np.proc.signal(signal);
    let cpus = cpu_time_ns(target.pid).saturating_sub(c0) as f64 / 1e9 / t0.elapsed().as_secs_f64();
    let run = np.finish(RUN_TIMEOUT);
    let after = monotonic_us();
    run.assert_success();
    assert_eq!(run.stop_reason(), reason);
    let out = Outputs::load(&prefix);
    assert_near(
        out.duration_s(),
        2.0,
        0.2,
        "recorded duration for a stop after ~2 s",
    );
    let n = out.sample_count() as f64;
    assert_eq!(run.summary_samples(), n as u64);
    // ≈ 2 s worth of samples: the precise count is the business of the
    // sample-count tests; ±35% here keeps this test about the signal path.
    assert_near(
        n,
        cpus * out.duration_s() * 99.0,
        0.35,
        &format!(
            "samples vs. measured CPU ({cpus:.2} CPUs); samples per 100 ms: {:?}",
            out.histogram(100_000)
        ),
    );
    assert!(n >= 20.0, "only {n} samples in ~2 s of a busy thread");
    check_timestamps(&out, 99, before, after);

    // The target was neither stopped nor signalled: it runs on and exits by itself with 0.
    let state = proc_state(target.pid);
    assert!(
        matches!(state, Some('R') | Some('S')),
        "target state after nodeprof exited: {state:?}"
    );
    assert!(target.is_running());
    let status = target.wait(Duration::from_secs(10));
    assert!(status.success(), "target exited with {status}");
}

#[test]
fn sigint_writes_everything_and_leaves_the_target_running() {
    let _lock = serial();
    stop_by_signal(libc::SIGINT, "interrupted");
}

#[test]
fn sigterm_writes_everything_and_leaves_the_target_running() {
    let _lock = serial();
    stop_by_signal(libc::SIGTERM, "terminated");
}

/// An SSH session that drops sends SIGHUP: the recording ends as with Ctrl-C.
#[test]
fn sighup_writes_everything_and_leaves_the_target_running() {
    let _lock = serial();
    stop_by_signal(libc::SIGHUP, "hung up");
}

/// Test 6: the target exits by itself → nodeprof stops and writes. The test
/// (the target's parent) does not reap it until nodeprof is done, so nodeprof
/// must also treat an unreaped zombie as exited.
#[test]
fn target_exit_ends_the_recording() {
    let _lock = serial();
    let dir = scratch_dir();
    let mut target = Proc::node(&node20(), &[], "busy.js", &["2"], dir.path());
    target.wait_for_line("ready", READY_TIMEOUT);
    let prefix = dir.path().join("exit");
    let started = Instant::now();
    let run = run_nodeprof(
        &record_args(target.pid, &prefix, &[]),
        dir.path(),
        RUN_TIMEOUT,
    );
    let wall = started.elapsed();
    run.assert_success();
    assert_eq!(run.stop_reason(), "target exited");
    assert!(
        wall < Duration::from_secs(6),
        "nodeprof took {wall:?} to notice a 2 s target exit"
    );
    assert!(target.wait(Duration::from_secs(5)).success());
    let out = Outputs::load(&prefix);
    let n = out.sample_count() as f64;
    assert!(
        out.duration_s() <= 2.5,
        "recorded {} s of a target that lived 2 s",
        out.duration_s()
    );
    assert!(
        n >= 20.0,
        "only {n} samples in {} s of a busy target",
        out.duration_s()
    );
    assert!(out.samples_with_frame(is_node_start) > 0);
}

/// Test 7: SIGKILL leaves no probe behind; the target keeps running.
#[test]
fn sigkill_leaves_no_sampler_loaded() {
    let _lock = serial();
    use nodeprof::sampler_loaded;
    assert!(
        wait_until(Duration::from_secs(10), || !sampler_loaded()),
        "a nodeprof sampler is loaded before the test started: another nodeprof is running on this machine"
    );
    let dir = scratch_dir();
    let target = Proc::node(&node20(), &[], "busy.js", &["10"], dir.path());
    target.wait_for_line("ready", READY_TIMEOUT);
    let prefix = dir.path().join("killed");
    let np = spawn_nodeprof(&record_args(target.pid, &prefix, &[]), dir.path());
    np.wait_sampling(Duration::from_secs(10));
    assert!(
        sampler_loaded(),
        "nodeprof samples but sampler_loaded() is false"
    );
    let prog_ids = bpf_prog_ids(np.proc.pid);
    assert!(prog_ids.iter().all(|&id| bpf_prog_loaded(id)));
    std::thread::sleep(Duration::from_millis(300));

    np.proc.signal(libc::SIGKILL);
    let run = np.finish(RUN_TIMEOUT);
    assert_eq!(
        run.status.signal(),
        Some(libc::SIGKILL),
        "nodeprof: {}",
        run.status
    );
    let gone = wait_until(Duration::from_secs(2), || {
        prog_ids.iter().all(|&id| !bpf_prog_loaded(id))
    });
    assert!(
        gone,
        "nodeprof's eBPF programs {prog_ids:?} are still loaded 2 s after SIGKILL"
    );
    assert!(
        wait_until(Duration::from_secs(2), || !sampler_loaded()),
        "sampler_loaded() is still true 2 s after SIGKILL (nodeprof's own programs {prog_ids:?} are gone: another nodeprof?)"
    );
    assert!(
        target.is_running(),
        "target state after nodeprof was killed: {:?}",
        proc_state(target.pid)
    );
}

/// JS frames of busy.js named (`spinUntil`, into which V8 may inline
/// `hotLoop`) in a good share of samples. V8 introspection names them; where
/// it cannot, the perf map does (`_[j]` frames): either source counts.
fn check_perf_map_names(out: &Outputs) {
    let n = out.sample_count() as u64;
    let named = out.samples_with_frame(|f| {
        f.contains("busy.js") && (f.contains("spinUntil") || f.contains("hotLoop"))
    });
    assert!(
        named * 4 >= n,
        "only {named}/{n} samples with a named busy.js JS frame:\n{}",
        out.folded_excerpt()
    );
    assert!(
        out.samples_with_frame(is_node_start) * 10 >= n * 8,
        "native frames not named:\n{}",
        out.folded_excerpt()
    );
}

/// Test 8a: a target in its own pid and mount namespace, its perf map in a
/// /tmp that only exists inside the namespace.
#[test]
fn target_in_pid_and_mount_namespace_is_profiled_with_its_perf_map() {
    let _lock = serial();
    let dir = scratch_dir();
    // The fixtures are bound to /mnt first: the checkout itself may live
    // under /tmp, which the tmpfs hides.
    let fixtures = fixture("busy.js").parent().unwrap().to_path_buf();
    let script = format!(
        "mount --bind '{}' /mnt && mount -t tmpfs tmpfs /tmp && exec {} --perf-basic-prof /mnt/busy.js 5",
        fixtures.display(),
        node20().display(),
    );
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--mount",
        "--fork",
        "--kill-child",
        "sh",
        "-c",
        &script,
    ])
    .current_dir(dir.path());
    let ns = Proc::spawn(cmd);
    // Inside its pid namespace node is pid 1.
    ns.wait_for_line("ready 1", READY_TIMEOUT);
    let node: Vec<u32> = descendants(ns.pid)
        .into_iter()
        .filter(|&p| {
            fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim_end() == "node")
        })
        .collect();
    assert_eq!(
        node.len(),
        1,
        "node processes under unshare {}: {node:?}",
        ns.pid
    );
    let host_pid = node[0];
    let status = fs::read_to_string(format!("/proc/{host_pid}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert_eq!(
        nspid.split_whitespace().collect::<Vec<_>>(),
        ["NSpid:", &host_pid.to_string(), "1"]
    );
    // The setup is right: the map exists only in the namespace's /tmp.
    assert!(
        Path::new(&format!("/proc/{host_pid}/root/tmp/perf-1.map")).exists(),
        "no perf map in the namespace"
    );
    assert!(!Path::new(&format!("/tmp/perf-{host_pid}.map")).exists());

    let prefix = dir.path().join("ns");
    let run = run_nodeprof(
        &record_args(host_pid, &prefix, &["-d", "2"]),
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_success();
    assert!(
        !run.stderr.contains("does not look like Node.js"),
        "stderr:\n{}",
        run.stderr
    );
    let out = Outputs::load(&prefix);
    assert!(
        out.sample_count() >= 40,
        "only {} samples",
        out.sample_count()
    );
    check_perf_map_names(&out);
    // nodeprof finds the perf map inside the target's mount namespace.
    let info = run_nodeprof(&[s("info"), s("-p"), s(host_pid)], dir.path(), RUN_TIMEOUT);
    info.assert_success();
    assert!(
        info.stdout.contains("perf map: present"),
        "nodeprof info:\n{}",
        info.stdout
    );
    assert!(
        info.stdout.contains("JS frame naming: available"),
        "nodeprof info:\n{}",
        info.stdout
    );
}

/// Test 8b: a plain `node --perf-basic-prof` target: JS names from /tmp/perf-PID.map.
#[test]
fn perf_map_names_jit_frames() {
    let _lock = serial();
    let dir = scratch_dir();
    let target = Proc::node(
        &node20(),
        &["--perf-basic-prof"],
        "busy.js",
        &["4"],
        dir.path(),
    );
    let _map = PerfMapCleanup(target.pid);
    target.wait_for_line("ready", READY_TIMEOUT);
    let prefix = dir.path().join("perfmap");
    let run = run_nodeprof(
        &record_args(target.pid, &prefix, &["-d", "2"]),
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_success();
    assert!(
        Path::new(&format!("/tmp/perf-{}.map", target.pid)).exists(),
        "node wrote no perf map"
    );
    let out = Outputs::load(&prefix);
    check_perf_map_names(&out);
    // The cpuprofile carries the same names.
    assert!(
        out.function_names()
            .iter()
            .any(|f| f.contains("spinUntil") || f.contains("hotLoop")),
        "no JS name in the cpuprofile"
    );
}

/// Test 9: kernel stacks of a syscall-heavy target.
#[test]
fn kernel_frames_of_syscalls_are_recorded() {
    let _lock = serial();
    let dir = scratch_dir();
    let target = Proc::node(&node20(), &[], "syscalls.js", &["4"], dir.path());
    target.wait_for_line("ready", READY_TIMEOUT);
    let prefix = dir.path().join("kernel");
    let run = run_nodeprof(
        &record_args(target.pid, &prefix, &["-d", "2"]),
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_success();
    let out = Outputs::load(&prefix);
    let n = out.sample_count() as u64;
    let kernel = out.samples_with_frame(|f| f.ends_with("_[k]"));
    assert!(
        kernel * 5 >= n,
        "only {kernel}/{n} samples with kernel frames:\n{}",
        out.folded_excerpt()
    );
    assert!(
        out.samples_with_frame(|f| f == "do_syscall_64_[k]") > 0,
        "no do_syscall_64 frame:\n{}",
        out.folded_excerpt()
    );
    assert!(
        out.samples_with_frame(|f| f.starts_with("__x64_sys_") && f.ends_with("_[k]")) > 0,
        "no __x64_sys_* frame:\n{}",
        out.folded_excerpt()
    );
    // Kernel frames are the leaf end of a stack: user frames never follow them.
    for st in &out.folded {
        if let Some(first_k) = st.frames.iter().position(|f| f.ends_with("_[k]")) {
            assert!(
                st.frames[first_k..].iter().all(|f| f.ends_with("_[k]")),
                "user frame after a kernel frame: {}",
                st.frames.join(";")
            );
        }
    }
}

/// Test 10a: bad pids.
#[test]
fn missing_pids_are_one_line_errors() {
    let _lock = serial();
    let dir = scratch_dir();
    let run = run_nodeprof(
        &[
            "record",
            "-q",
            "-p",
            "999999999",
            "-d",
            "1",
            "-o",
            &dir.path().join("a").display().to_string(),
        ],
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_error("no such process");

    // A pid that existed a moment ago: a child we started and reaped.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    assert!(!Path::new(&format!("/proc/{dead}")).exists());
    let run = run_nodeprof(
        &record_args(dead, &dir.path().join("b"), &["-d", "1"]),
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_error("no such process");
    assert!(
        run.stderr.contains(&dead.to_string()),
        "the error does not name the pid: {}",
        run.stderr
    );
    for name in ["a", "b"] {
        for ext in ["cpuprofile", "folded", "svg"] {
            assert!(
                !dir.path().join(format!("{name}.{ext}")).exists(),
                "{name}.{ext} left behind"
            );
        }
    }
}

/// Test 10b: output paths: existing files are never overwritten (nor reached
/// through a symlink), an unwritable path fails at once.
#[test]
fn bad_output_paths_are_one_line_errors_and_nothing_is_overwritten() {
    let _lock = serial();
    let dir = scratch_dir();
    let target = Proc::node(&node20(), &[], "busy.js", &["5"], dir.path());
    target.wait_for_line("ready", READY_TIMEOUT);

    let existing = dir.path().join("existing.folded");
    fs::write(&existing, "keep me\n").unwrap();
    let prefix = dir.path().join("existing");
    let run = run_nodeprof(
        &record_args(target.pid, &prefix, &["-d", "1"]),
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_error("already exists");
    assert_eq!(
        fs::read_to_string(&existing).unwrap(),
        "keep me\n",
        "an existing file was modified"
    );
    for ext in ["cpuprofile", "svg"] {
        assert!(
            !dir.path().join(format!("existing.{ext}")).exists(),
            "existing.{ext} was left behind after the error"
        );
    }

    // A dangling symlink where an output goes: not followed, its target not created.
    let victim = dir.path().join("victim");
    symlink(&victim, dir.path().join("link.cpuprofile")).unwrap();
    let run = run_nodeprof(
        &record_args(target.pid, &dir.path().join("link"), &["-d", "1"]),
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_error("link.cpuprofile");
    assert!(
        !victim.exists(),
        "nodeprof followed a symlink and created its target"
    );

    let started = Instant::now();
    let run = run_nodeprof(
        &[
            s("record"),
            s("-q"),
            s("-p"),
            s(target.pid),
            s("-d"),
            s("5"),
            s("-o"),
            s("/nonexistent-dir/x"),
        ],
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_error("/nonexistent-dir/x");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a bad output path must fail before recording, not after -d 5"
    );
    assert!(target.is_running());
}

/// Test 10c: not root → exit 1, one line saying how to fix it.
#[test]
fn not_root_is_a_one_line_error_mentioning_sudo() {
    let _lock = serial();
    let dir = scratch_dir();
    let target = Proc::node(&node20(), &[], "busy.js", &["4"], dir.path());
    target.wait_for_line("ready", READY_TIMEOUT);
    // A directory nobody can write to, so the only problem is privilege.
    let out_dir = dir.path().join("nobody");
    fs::create_dir(&out_dir).unwrap();
    fs::set_permissions(
        &out_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(nodeprof_bin());
    let np = spawn_nodeprof_with(
        cmd,
        &record_args(target.pid, &out_dir.join("x"), &["-d", "1"]),
        dir.path(),
    );
    let run = np.finish(RUN_TIMEOUT);
    run.assert_error("sudo");
    assert!(
        fs::read_dir(&out_dir).unwrap().next().is_none(),
        "files left in the output dir"
    );
    assert!(target.is_running());
}

/// Test 10d: a process that is not node is profiled natively, with a warning.
#[test]
fn non_node_target_is_profiled_natively_with_a_warning() {
    let _lock = serial();
    let dir = scratch_dir();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "while :; do :; done"]);
    let target = Proc::spawn(cmd);
    let prefix = dir.path().join("sh");
    let run = run_nodeprof(
        &record_args(target.pid, &prefix, &["-d", "1"]),
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_success();
    assert!(
        run.stderr.contains("does not look like Node.js"),
        "no warning on stderr:\n{}",
        run.stderr
    );
    let out = Outputs::load(&prefix);
    let n = out.sample_count() as u64;
    assert!(n >= 20, "only {n} samples of a busy shell in 1 s");
    assert_eq!(
        out.samples_per_thread().keys().collect::<Vec<_>>(),
        ["sh"],
        "threads"
    );
    // Native frames are attributed to the shell binary or libc (dash is stripped: `[dash]`).
    let native =
        out.samples_with_frame(|f| f != "[unknown]" && f != "(program)" && !f.ends_with("_[k]"));
    assert!(
        native * 10 >= n * 9,
        "only {native}/{n} samples with a native frame:\n{}",
        out.folded_excerpt()
    );
    assert!(
        out.samples_with_frame(|f| f.contains("dash") || f.contains("libc")) * 2 >= n,
        "{}",
        out.folded_excerpt()
    );
}

/// Warnings and errors are plain text when stderr is not a terminal (a log
/// file, a pipe): no ANSI colour escapes.
#[test]
fn warnings_are_plain_text_when_stderr_is_not_a_terminal() {
    let _lock = serial();
    let dir = scratch_dir();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "while :; do :; done"]);
    let target = Proc::spawn(cmd);
    let prefix = dir.path().join("plain");
    let run = run_nodeprof(
        &record_args(target.pid, &prefix, &["-d", "0.5"]),
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_success();
    assert!(
        run.stderr.contains("does not look like Node.js"),
        "stderr:\n{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains('\x1b'),
        "ANSI escape codes in stderr redirected to a file: {:?}",
        run.stderr
    );
}

/// `nodeprof record ... | head -3`: stdout closed early must not panic; the
/// profile files are still written.
#[test]
fn closed_stdout_does_not_panic() {
    let _lock = serial();
    let dir = scratch_dir();
    let target = Proc::node(&node20(), &[], "busy.js", &["4"], dir.path());
    target.wait_for_line("ready", READY_TIMEOUT);
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills two fds we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds from pipe2, owned once each.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read_end); // like `| head` having exited
    let stderr_path = dir.path().join("closed.stderr");
    let prefix = dir.path().join("closed");
    let mut child = Command::new(nodeprof_bin())
        .args([
            s("record"),
            s("-q"),
            s("-p"),
            s(target.pid),
            s("-d"),
            s("1"),
            s("-o"),
            s(prefix.display()),
        ])
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("nodeprof (pid {pid}) did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = fs::read_to_string(&stderr_path).unwrap();
    assert!(
        !stderr.contains("panicked"),
        "nodeprof panicked on a closed stdout ({status}):\n{stderr}"
    );
    let _ = Outputs::load(&prefix);
}
