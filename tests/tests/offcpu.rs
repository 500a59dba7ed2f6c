//! `record --off-cpu` / `--wall` and the event-loop report, against real
//! node processes (as root).

use std::time::Duration;

use nodeprof_tests::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const READY: Duration = Duration::from_secs(20);

/// Samples of `thread` whose stack has a frame containing any of `needles`.
fn samples_with(out: &Outputs, thread: &str, needles: &[&str]) -> u64 {
    out.folded
        .iter()
        .filter(|s| s.thread == thread)
        .filter(|s| {
            s.frames
                .iter()
                .any(|f| needles.iter().any(|n| f.contains(n)))
        })
        .map(|s| s.count)
        .sum()
}

/// The system call a process's main thread is in (`/proc/PID/syscall`).
fn fs_syscall(pid: u32) -> Option<i64> {
    std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn thread_samples(out: &Outputs, thread: &str) -> u64 {
    out.folded
        .iter()
        .filter(|s| s.thread == thread)
        .map(|s| s.count)
        .sum()
}

/// Records the node 24 fixture whose main thread alternates CPU and
/// blocking, with `args`: the fixture (still running), the run, the files.
fn record_alternating(args: &[&str]) -> (Proc, Run, Outputs) {
    let dir = scratch_dir();
    let target = Proc::node(
        &node_major(24),
        &[],
        "offcpu/alternate.js",
        &[dir.path().to_str().unwrap()],
        dir.path(),
    );
    target.wait_for_line("ready", READY);
    let prefix = dir.path().join("alternating");
    let run = run_nodeprof(
        &record_args(target.pid, &prefix, args),
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_success();
    let out = Outputs::load(&prefix);
    (target, run, out)
}

/// The main thread alternates 50 ms of CPU with 150 ms in `readFileSync` on
/// a FIFO. With `--wall` its samples add up to the wall-clock time, and the
/// time blocked opening the FIFO is three quarters of it.
#[test]
fn wall_time_of_a_thread_that_blocks_adds_up() {
    let _serial = serial();
    let (target, run, out) = record_alternating(&["-d", "4", "--wall"]);
    let main = thread_samples(&out, "MainThread") as f64;
    let expected = 4.0 * 99.0;
    assert!(
        (main - expected).abs() <= expected * 0.1,
        "main thread: {main} samples in 4 s at 99 Hz (wall time adds up to ~{expected})\n{}",
        out.folded_excerpt()
    );
    // Blocked in open(2) of the FIFO until the worker opens it for writing.
    let blocked = samples_with(&out, "MainThread", &["fifo_open", "wait_for_partner"]) as f64;
    let share = blocked / main;
    assert!(
        (share - 0.75).abs() <= 0.05,
        "blocked share {share:.3} (expected 0.75 ± 0.05)\n{}",
        out.folded_excerpt()
    );
    // The blocking stack is named through libuv's synchronous open: the JS
    // function that called readFileSync is on it.
    let named = out
        .folded
        .iter()
        .filter(|s| s.thread == "MainThread")
        .filter(|s| {
            s.frames
                .iter()
                .any(|f| f.contains("wait_for_partner") || f.contains("fifo_open"))
        })
        .filter(|s| s.frames.iter().any(|f| f.starts_with("readSlowPipe")))
        .map(|s| s.count)
        .sum::<u64>() as f64;
    assert!(
        named >= 0.9 * blocked,
        "{named} of {blocked} blocked samples show readSlowPipe\n{}",
        out.folded_excerpt()
    );
    let spinning = samples_with(&out, "MainThread", &["spinFor"]);
    assert!(
        spinning > 0,
        "no sample in spinFor\n{}",
        out.folded_excerpt()
    );
    assert!(
        run.stdout.contains("Off-CPU samples:") && run.stdout.contains("% on CPU"),
        "{}",
        run.stdout
    );
    assert!(target.is_running(), "the target died");
}

/// `--off-cpu` alone: only the time off CPU, none of the spinning.
#[test]
fn off_cpu_shows_only_the_waiting() {
    let _serial = serial();
    let (_target, run, out) = record_alternating(&["-d", "3", "--off-cpu"]);
    let main = thread_samples(&out, "MainThread") as f64;
    let blocked = samples_with(&out, "MainThread", &["fifo_open", "wait_for_partner"]) as f64;
    // 75 % of 3 s blocked, plus whatever time the spinning waited for a CPU.
    assert!(
        blocked >= 0.7 * 3.0 * 99.0 && main <= 3.0 * 99.0 * 1.05,
        "{blocked} blocked of {main} off-CPU samples\n{}",
        out.folded_excerpt()
    );
    // The spinning shows only while it waited for a CPU (preempted): far
    // less than its quarter of the time.
    let spinning = samples_with(&out, "MainThread", &["spinFor"]) as f64;
    assert!(
        spinning < 0.15 * main,
        "{spinning} of {main} off-CPU samples in spinFor"
    );
    // Every sample is off CPU.
    let threads = run.summary_field("Threads sampled");
    assert!(
        threads.contains(&format!(
            "MainThread {}: 0 % on CPU, 100 % off",
            main as u64
        )),
        "{threads}"
    );
}

/// A main thread blocked in `readFileSync` on a FIFO since before the
/// recording started, for all of it: its whole duration is off CPU, at the
/// blocking stack (no switch-out ever reports it: it is seeded).
#[test]
fn a_thread_blocked_for_the_whole_recording_shows_the_whole_duration() {
    let _serial = serial();
    let dir = scratch_dir();
    let fifo = dir.path().join("never-written");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let node = node_major(20);
    let target = Proc::node(
        &node,
        &[],
        "dump/hang.js",
        &["fifo", fifo.to_str().unwrap()],
        dir.path(),
    );
    target.wait_for_line("ready", READY);
    // It blocks in open(2) of the FIFO right after printing `ready`.
    assert!(
        wait_until(Duration::from_secs(10), || {
            fs_syscall(target.pid).is_some_and(|nr| nr == 257)
        }),
        "the fixture did not block in openat"
    );
    let prefix = dir.path().join("hung");
    let run = run_nodeprof(
        &record_args(target.pid, &prefix, &["-d", "2", "--off-cpu"]),
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_success();
    let out = Outputs::load(&prefix);
    // The main thread is the one in loadConfig.
    let main: u64 = out
        .folded
        .iter()
        .filter(|s| s.frames.iter().any(|f| f.starts_with("loadConfig")))
        .map(|s| s.count)
        .sum();
    let expected = 2.0 * 99.0;
    assert!(
        (main as f64 - expected).abs() <= expected * 0.1,
        "{main} samples in loadConfig for 2 s blocked (expected ~{expected})\n{}",
        out.folded_excerpt()
    );
    let in_read: u64 = out
        .folded
        .iter()
        .filter(|s| s.frames.iter().any(|f| f.starts_with("loadConfig")))
        .filter(|s| s.frames.iter().any(|f| f.starts_with("readFileSync")))
        .map(|s| s.count)
        .sum();
    assert_eq!(
        in_read,
        main,
        "readFileSync missing\n{}",
        out.folded_excerpt()
    );
}

fn record_loop(fixture_arg: &str, extra: &[&str]) -> Run {
    let dir = scratch_dir();
    let node = node_major(22);
    let target = Proc::node(&node, &[], "offcpu/loop.js", &[fixture_arg], dir.path());
    target.wait_for_line("ready", READY);
    let prefix = dir.path().join("loop");
    let mut args = vec!["-d", "3.5"];
    args.extend(extra);
    let run = run_nodeprof(
        &record_args(target.pid, &prefix, &args),
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_success();
    assert!(target.is_running());
    run
}

/// Once a second a timer spins 300 ms: each such turn is found, measured
/// within 10 %, and named.
#[test]
fn event_loop_turns_that_block_are_found_and_named() {
    let _serial = serial();
    check_long_turns("blocking", &[], "blockTheLoop");
}

/// A loopback HTTP server whose handler blocks 300 ms on one request a
/// second: the turns that ran the handler are found, measured and named.
#[test]
fn a_server_handler_that_blocks_is_found_and_named() {
    let _serial = serial();
    check_long_turns("server", &[], "handleSlowRequest");
}

/// `execSync` blocks the loop while waiting in a loop of its own (its own
/// epoll instance on the same thread): still one long turn, named, with
/// `--wall` showing where it waited.
#[test]
fn an_exec_sync_wait_is_a_long_turn() {
    let _serial = serial();
    check_long_turns("exec", &["--wall"], "runChild");
}

fn check_long_turns(mode: &str, extra: &[&str], function: &str) {
    let run = record_loop(mode, extra);
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("event loop (main thread)")),
        "no event-loop line:\n{}",
        run.stdout
    );
    let turns: Vec<ListedTurn> = run
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("event loop (main thread)"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            assert!(l.contains(function), "turn not named: {l}");
            ListedTurn::parse(l)
        })
        .collect();
    // 3.5 s holds three or four of the once-a-second turns: three or four
    // whole ones, and at most one the window's start or end cut, which is
    // marked as such (or under the threshold, and not listed).
    assert!(
        (3..=4).contains(&turns.len()),
        "{} long turns:\n{}",
        turns.len(),
        run.stdout
    );
    let (cut, whole): (Vec<&ListedTurn>, Vec<&ListedTurn>) =
        turns.iter().partition(|t| t.began_before || t.ongoing);
    assert!((3..=4).contains(&whole.len()), "{}", run.stdout);
    // execSync adds the child's start and exit to its 300 ms.
    let slack = if mode == "exec" { 60.0 } else { 30.0 };
    for t in &whole {
        assert!(
            t.ms >= 270.0 && t.ms <= 300.0 + slack,
            "a 300 ms turn measured {} ms:\n{}",
            t.ms,
            run.stdout
        );
    }
    for t in &cut {
        // Cut by the start: it is the first and began when the recording
        // did; by the end: it ran to the end of the 3.5 s.
        let at_an_edge = if t.began_before {
            t.at_s < 0.001 && !t.ongoing
        } else {
            (t.at_s + t.ms / 1e3 - 3.5).abs() < 0.2
        };
        assert!(
            at_an_edge && t.ms <= 300.0 + slack,
            "a cut turn not at the window's edge: {t:?}\n{}",
            run.stdout
        );
    }
}

/// A line of the event loop's long turns: `   1.234s     300 ms in f`.
#[derive(Debug)]
struct ListedTurn {
    at_s: f64,
    ms: f64,
    began_before: bool,
    ongoing: bool,
}

impl ListedTurn {
    fn parse(line: &str) -> ListedTurn {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at_s = words[0].trim_end_matches('s').parse::<f64>().unwrap();
        let value = words[1].parse::<f64>().unwrap();
        let ms = match words[2] {
            "ms" => value,
            "s" => value * 1e3,
            unit => panic!("unit {unit} in {line}"),
        };
        ListedTurn {
            at_s,
            ms,
            began_before: line.contains("(already running at the start)"),
            ongoing: line.contains("(still running at the end)"),
        }
    }
}

/// A process that is not node has no event-loop line: nothing is invented
/// for a thread that never waited in `epoll_wait`.
#[test]
fn a_non_node_target_has_no_event_loop_line() {
    let _serial = serial();
    let dir = scratch_dir();
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "while :; do :; done"]);
    let target = Proc::spawn(cmd);
    let prefix = dir.path().join("sh");
    let run = run_nodeprof(
        &record_args(target.pid, &prefix, &["-d", "1"]),
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_success();
    assert!(!run.stdout.contains("event loop"), "{}", run.stdout);
}

#[test]
fn a_steady_event_loop_reports_no_long_turn() {
    let _serial = serial();
    let run = record_loop("steady", &[]);
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("event loop (main thread)"))
        .unwrap_or_else(|| panic!("no event-loop line:\n{}", run.stdout));
    assert!(line.contains("none over 100 ms"), "{line}");
    // 10 ms timers: about 350 turns in 3.5 s.
    let turns: u64 = line
        .split(", ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no turn count: {line}"));
    assert!(turns >= 200, "{line}");
}

/// `--no-loop`: no event-loop section, and no syscall tracepoint attached
/// (they slow every system call of the machine): with `--no-gc` too, the
/// only attachments are the sampler's, one per CPU, and the
/// `sched_process_exec` tracepoint that drops the unwind table at an exec
/// (it runs only when a process execs).
#[test]
fn no_loop_attaches_no_syscall_tracepoint() {
    let _serial = serial();
    let dir = scratch_dir();
    let target = Proc::node(
        &node_major(22),
        &[],
        "offcpu/loop.js",
        &["steady"],
        dir.path(),
    );
    target.wait_for_line("ready", READY);
    let attachments = |extra: &[&str]| -> (usize, Run) {
        let prefix = dir.path().join(format!("loop{}", extra.len()));
        let mut args = vec!["-d", "2", "--no-gc"];
        args.extend(extra);
        let recording = spawn_nodeprof(&record_args(target.pid, &prefix, &args), dir.path());
        recording.wait_sampling(RUN_TIMEOUT);
        // The sampler's, one per CPU, then the exec guard (with the unwind
        // table), then the loop's tracepoints.
        let cpus = online_cpus();
        let expected = if extra.is_empty() { cpus + 1 } else { cpus };
        wait_until(Duration::from_secs(10), || {
            perf_attachments(recording.proc.pid) > expected
        });
        if !extra.is_empty() {
            // Time for anything that should not be attached to show up.
            std::thread::sleep(Duration::from_millis(500));
        }
        let attached = perf_attachments(recording.proc.pid);
        let run = recording.finish(RUN_TIMEOUT);
        run.assert_success();
        (attached, run)
    };
    let (with_loop, run) = attachments(&[]);
    assert!(
        run.stdout.contains("event loop (main thread)"),
        "{}",
        run.stdout
    );
    let (without, run) = attachments(&["--no-loop"]);
    assert!(!run.stdout.contains("event loop"), "{}", run.stdout);
    assert_eq!(
        without,
        online_cpus() + 1,
        "attachments with --no-loop --no-gc: the sampler's and the exec guard"
    );
    assert!(
        with_loop > without,
        "{with_loop} attachments with the loop traced, {without} without"
    );
}
