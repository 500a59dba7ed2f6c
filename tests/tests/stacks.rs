//! Stacks cut at a libc leaf (issue 14, item 3): a sample taken in a libc
//! function built without frame pointers (`memmove`, `malloc`, the `stat`
//! wrapper) must still reach the thread's start, with every JS frame above.
//!
//! - `libc_leaves_keep_their_callers`: libc_paths.js (fs.statSync,
//!   JSON.stringify, Buffer copies) launched on node 22 at 999 Hz for 6 s:
//!   the share of main-thread samples taken while the script runs whose
//!   stack stops before `node::Start`/`main`. The process's own start
//!   (ld.so, static initializers) and exit (`exit`'s handlers, `_Exit`) are
//!   left out: there the stack is short because the process is, not cut.
//!   The sampler unwinds libc frames with their `.eh_frame` rows before the
//!   frame-pointer walk: 0–1 of about 6,000 samples (0.00–0.02 %) in three
//!   runs; with the frame-pointer walk alone 11 of 5,998 (0.18 %: unnamed
//!   libc code, `malloc`, `_IO_default_xsputn`). The goal is under
//!   0.2 %; the test asks under 0.1 % so that it fails without the rows.
//!   Counted over the whole process, start and exit included, the rows give
//!   0.12–0.21 % and the walk alone 0.45 %.
//! - `an_exec_drops_the_unwind_table`: a node 24 process that execs the same
//!   node binary into libc_paths.js. The old table describes mappings the
//!   exec replaced: the kernel drops it at the exec (before the new program
//!   runs), which nodeprof's log reports, and the new table's stacks reach
//!   `node::Start` as above. Without the kernel's part, the old table lived
//!   until a stack ended in a mapping it did not know (up to 250 ms, or for
//!   ever where the new mappings fall where the old ones were).
//! - `an_unmap_replaces_the_unwind_table`: a perl process (no node: the
//!   tables serve any target) maps libuuid, is recorded, and unloads it
//!   (`dlclose`): nodeprof sees the covered library gone (it checks every
//!   250 ms; the only tracepoint of an unmap is the system call's, which
//!   would slow every system call of the machine) and builds a table that
//!   no longer covers it.
//! - `a_deep_recursion_keeps_its_outermost_frames`: deep_recursion.js spins
//!   under 160 levels of JS recursion (about 183 user-space frames with
//!   node's own, under the sampler's 256 with room for a GC or a compile
//!   below): every main-thread sample of the spin keeps all its levels, and
//!   under 0.1 % stop before `node::Start`. With 128 frames, all were cut.

use std::fs;
use std::path::Path;
use std::time::Duration;

use nodeprof_tests::*;

/// Under the goal (0.2 %), and under what the frame-pointer walk
/// alone gives (0.18 %).
const MAX_TRUNCATED_PERCENT: f64 = 0.1;

/// Launches a fixture under `nodeprof record -F 999` and returns the outputs.
fn record_script(dir: &std::path::Path, major: u32, script: &str, script_args: &[&str]) -> Outputs {
    let prefix = dir.join("out");
    let node = node_major(major);
    let args: Vec<String> = [
        "record",
        "-q",
        "-F",
        "999",
        "--format",
        "cpuprofile,folded",
        "-o",
        &prefix.display().to_string(),
        "--",
        &node.display().to_string(),
        &fixture(script).display().to_string(),
    ]
    .iter()
    .chain(script_args)
    .map(|a| a.to_string())
    .collect();
    let run = run_nodeprof(&args, dir, Duration::from_secs(60));
    run.assert_success();
    assert!(
        run.stdout.lines().any(|l| l.starts_with("done ")),
        "{script} did not finish:\n{}",
        run.stdout
    );
    Outputs::load_formats(&prefix, &["cpuprofile", "folded"])
}

/// Of the main-thread samples taken while libc_paths.js runs (more than
/// 1,000), under [`MAX_TRUNCATED_PERCENT`] stop before `node::Start`/`main`.
fn assert_few_truncated(out: &Outputs, what: &str) {
    assert_few_truncated_while(out, what, "libc_paths.js");
}

/// [`assert_few_truncated`] while `script` runs.
fn assert_few_truncated_while(out: &Outputs, what: &str, script: &str) {
    let (truncated, counted, leaves) = out.truncated_main_stacks_while(script);
    assert!(
        counted > 1000,
        "{what}: too few main-thread samples to measure 0.1 %: {counted}\n{}",
        out.folded_excerpt()
    );
    let percent = 100.0 * truncated as f64 / counted as f64;
    let mut worst: Vec<(u64, String)> = leaves.into_iter().map(|(l, n)| (n, l)).collect();
    worst.sort_by(|a, b| b.cmp(a));
    let worst: Vec<String> = worst
        .iter()
        .take(10)
        .map(|(n, l)| format!("  {n:>6}  {l}"))
        .collect();
    eprintln!(
        "{what}: {truncated} of {counted} main-thread samples truncated ({percent:.2} %); by leaf:\n{}",
        worst.join("\n")
    );
    assert!(
        percent < MAX_TRUNCATED_PERCENT,
        "{what}: {percent:.2} % of main-thread samples stop before node::Start/main (goal < {MAX_TRUNCATED_PERCENT} %); by leaf:\n{}",
        worst.join("\n")
    );
}

#[test]
fn libc_leaves_keep_their_callers() {
    let _lock = serial();
    let dir = scratch_dir();
    let out = record_script(dir.path(), 22, "js/libc_paths.js", &["6"]);
    assert_few_truncated(&out, "libc_paths.js");
}

/// Levels of deep_recursion.js: its JS stack alone is deeper than 128 frames.
const DEEP_LEVELS: usize = 160;

#[test]
fn a_deep_recursion_keeps_its_outermost_frames() {
    let _lock = serial();
    let dir = scratch_dir();
    let levels = DEEP_LEVELS.to_string();
    let out = record_script(dir.path(), 22, "js/deep_recursion.js", &[&levels, "3"]);
    assert_few_truncated_while(&out, "deep_recursion.js", "deep_recursion.js");
    let spinning: Vec<&FoldedStack> = out
        .folded
        .iter()
        .filter(|s| s.frames.iter().any(|f| f.starts_with("spin ")))
        .collect();
    let samples: u64 = spinning.iter().map(|s| s.count).sum();
    assert!(
        samples > 1000,
        "too few samples in spin: {samples}\n{}",
        out.folded_excerpt()
    );
    for stack in spinning {
        let levels = stack
            .frames
            .iter()
            .filter(|f| f.starts_with("descend "))
            .count();
        assert_eq!(
            levels,
            DEEP_LEVELS + 1,
            "{} samples in spin under {levels} calls of descend (of {} frames)",
            stack.count,
            stack.frames.len()
        );
    }
}

/// `nodeprof record -p PID -F 999 -d SECONDS` with its debug log on stderr;
/// once nodeprof has given the target its unwind table, creates `go` (the
/// target then changes its mappings).
fn record_then_go(pid: u32, seconds: &str, prefix: &Path, dir: &Path, go: &Path) -> Run {
    // `env` sets the log level: the test harness clears NODEPROF_LOG.
    let mut cmd = std::process::Command::new("env");
    cmd.arg("NODEPROF_LOG=nodeprof=debug").arg(nodeprof_bin());
    let args = record_args(
        pid,
        prefix,
        &["-F", "999", "-d", seconds, "--format", "cpuprofile,folded"],
    );
    let recording = spawn_nodeprof_with(cmd, &args, dir);
    let table = format!("unwind rows of {pid}:");
    let has_libc_table = |log: &str| {
        log.lines()
            .any(|l| l.contains(&table) && l.contains("/libc.so"))
    };
    wait_until(Duration::from_secs(30), || {
        has_libc_table(&recording.stderr_so_far()) || !recording.proc.is_running()
    });
    assert!(
        has_libc_table(&recording.stderr_so_far()),
        "no unwind table covering libc built for {pid}:\n{}",
        recording.stderr_so_far()
    );
    fs::write(go, b"go").expect("create the go file");
    let run = recording.finish(Duration::from_secs(60));
    run.assert_success();
    run
}

#[test]
fn an_exec_drops_the_unwind_table() {
    let _lock = serial();
    let dir = scratch_dir();
    let node = node_major(24);
    let libc_paths = fixture("js/libc_paths.js");
    let go = dir.path().join("exec.go");
    let target = Proc::node(
        &node,
        &[],
        "exec/execve.js",
        &[
            node.to_str().unwrap(),
            "3",
            &format!("script={}", libc_paths.display()),
            &format!("go={}", go.display()),
        ],
        dir.path(),
    );
    target.wait_for_line("ready", Duration::from_secs(20));
    let prefix = dir.path().join("exec");
    let run = record_then_go(target.pid, "3", &prefix, dir.path(), &go);
    let dropped = format!("unwind table of {} dropped at an exec", target.pid);
    assert!(
        run.stderr.contains(&dropped),
        "the exec did not drop the unwind table ({dropped:?} not logged):\n{}",
        run.stderr
    );
    let out = Outputs::load_formats(&prefix, &["cpuprofile", "folded"]);
    assert_few_truncated(&out, "libc_paths.js after the exec");
}

#[test]
fn an_unmap_replaces_the_unwind_table() {
    let _lock = serial();
    let dir = scratch_dir();
    let go = dir.path().join("unload.go");
    let mut cmd = std::process::Command::new("perl");
    cmd.arg(fixture("native/unload.pl")).arg(&go).arg("2");
    let target = Proc::spawn(cmd);
    target.wait_for_line("ready", Duration::from_secs(20));
    let run = record_then_go(target.pid, "2", &dir.path().join("unload"), dir.path(), &go);
    target.wait_for_line("done", Duration::from_secs(20));
    let tables: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains(&format!("unwind rows of {}:", target.pid)))
        .collect();
    assert!(
        tables.first().is_some_and(|t| t.contains("libuuid")),
        "the first unwind table does not cover libuuid:\n{}",
        run.stderr
    );
    let stale = format!(
        "unwind table of {} stale: a library it covers was unmapped",
        target.pid
    );
    assert!(
        run.stderr.contains(&stale),
        "the unmap was not seen ({stale:?} not logged):\n{}",
        run.stderr
    );
    assert!(
        tables.last().is_some_and(|t| !t.contains("libuuid")),
        "the table built after the unload still covers libuuid:\n{}",
        run.stderr
    );
}
