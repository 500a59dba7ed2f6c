//! Stacks cut at a libc leaf (issue 14, item 3): a sample taken in a libc
//! function built without frame pointers (`memmove`, `malloc`, the `stat`
//! wrapper) must still reach the thread's start, with every JS frame above.
//!
//! - `libc_leaves_keep_their_callers`: libc_paths.js (fs.statSync,
//!   JSON.stringify, Buffer copies) launched on node 22 at 999 Hz: the share
//!   of main-thread samples whose stack stops before `node::Start`/`main`.
//!   The sampler unwinds libc frames with their `.eh_frame` rows before the
//!   frame-pointer walk; without them it measured 0.44–0.45 % (18 of 4,041:
//!   mostly unnamed libc code, `open64`, `__libc_free`). With them
//!   0.12–0.21 % (5–8 of ~3,500–4,000 samples) over about ten runs, so it is
//!   still ignored: about one run in three ends at or just above 0.2 %.
//!   What is left is mostly not a libc leaf: start-up before `main` (ld.so,
//!   static initializers), the exit (atexit handlers such as
//!   `OPENSSL_cleanup` run under libc's `exit`, `_Exit` while the kernel
//!   unmaps the stack), a libc frame in the middle of a stack
//!   (`pthread_once`), which the frame-pointer walk cannot cross, and 2–3
//!   single unnamed libc frames a run whose rows stop at once (not yet
//!   explained). Run it with
//!   `cargo test -p nodeprof-tests --test stacks -- --ignored --nocapture`.

use std::time::Duration;

use nodeprof_tests::*;

/// The goal: fewer than this share of main-thread samples truncated.
const MAX_TRUNCATED_PERCENT: f64 = 0.2;

/// Records libc_paths.js for `seconds` and returns the outputs.
fn record_libc_paths(dir: &std::path::Path, major: u32, seconds: &str) -> Outputs {
    let prefix = dir.join("libc");
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
        &fixture("js/libc_paths.js").display().to_string(),
        seconds,
    ]
    .map(String::from)
    .to_vec();
    let run = run_nodeprof(&args, dir, Duration::from_secs(60));
    run.assert_success();
    assert!(
        run.stdout.lines().any(|l| l.starts_with("done ")),
        "libc_paths.js did not finish:\n{}",
        run.stdout
    );
    Outputs::load_formats(&prefix, &["cpuprofile", "folded"])
}

#[test]
#[ignore = "issue 14 item 3: 0.12-0.21 % truncated with .eh_frame rows (0.45 % without): flaky at the 0.2 % goal"]
fn libc_leaves_keep_their_callers() {
    let _lock = serial();
    let dir = scratch_dir();
    let out = record_libc_paths(dir.path(), 22, "4");
    let (truncated, counted, leaves) = out.truncated_stacks("main");
    assert!(
        counted > 1000,
        "too few main-thread samples to measure 0.2 %: {counted}\n{}",
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
        "libc_paths.js: {truncated} of {counted} main-thread samples truncated ({percent:.2} %); by leaf:\n{}",
        worst.join("\n")
    );
    assert!(
        percent < MAX_TRUNCATED_PERCENT,
        "{percent:.2} % of main-thread samples stop before node::Start/main (goal < {MAX_TRUNCATED_PERCENT} %); by leaf:\n{}",
        worst.join("\n")
    );
}
