//! JS frame naming with no flag on the target (issue 3, "Proof"), on every
//! node major nodeprof supports (18, 20, 22, 24, 26), as root.
//!
//! Ground truth is node itself: each fixture runs once under
//! `node --cpu-prof --cpu-prof-dir DIR` and once under nodeprof, and the two
//! `.cpuprofile` files are compared — function names, script URLs and the
//! 0-based line/column V8 reports for each function, and per-function shares
//! of the samples.
//!
//! Fixtures live in `tests/fixtures/js/`. A missing node major is a failure
//! (`node_major`), never a skip. Every test takes the crate-wide lock first
//! ([`serial`]) and only ever kills processes it started.
//!
//! How a sample is attributed to a function, the same way for both profiles,
//! is [`selftime`]'s: the innermost JS frame, native frames folded into it,
//! GC and idle samples left out.
//!
//! Tests:
//! - `names_node{18,20,22,24,26}`: names.js (named function, class method,
//!   getter, anonymous closure from a factory, async function, exported
//!   function of an ES module, worker thread, catastrophic regex under
//!   `checkInput`), nodeprof attached: names, URLs, exact line/column as
//!   `node --cpu-prof` reports them.
//! - `infinite_loop_node*`: a function stuck in `while (true)`, attached,
//!   recorded, then killed.
//! - `self_time_shares_node{20,26}`: per-function self-time shares against
//!   `node --cpu-prof`, launch mode, within 5 percentage points.
//! - `perf_map_names_agree_node*`: a `--perf-basic-prof` target: nodeprof's
//!   names equal V8's perf map names at the same script/line/column.
//! - `info_node*`, `info_non_node_says_naming_unavailable`: `nodeprof info`.
//! - `non_node_busy_process_has_no_js_frames`,
//!   `shell_named_node_has_no_js_frames`: hostile targets.
//! - `launch_mode_names_survive_exit_right_after_new_code`,
//!   `launch_mode_names_js_from_the_start`: guard the fixes of two
//!   launch-mode bugs (see their docs).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nodeprof_tests::*;
use selftime::{is_js, js_fn, Attribution, JsFn, Profile};

const RUN_TIMEOUT: Duration = Duration::from_secs(30);
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a GO-file fixture may work after its `go` file appears (tiny_callees.js
/// runs about 20 s under two profilers on a quiet machine).
const WORK_TIMEOUT: Duration = Duration::from_secs(90);
/// Work units per phase of names.js (a unit is ≈ 1.6 ms of one CPU here:
/// a phase ≈ 100 ms).
const PHASE_UNITS: &str = "60";
/// Samples a hot function of names.js must get at 999 Hz: a phase is
/// ≈ 100 ms of CPU, so ≈ 100 samples (the phases are measured in work, not
/// wall time, so a busy machine does not lower this much).
const MIN_HOT_SAMPLES: u64 = 15;

fn s(x: impl ToString) -> String {
    x.to_string()
}

// ---------------------------------------------------------------------------
// Fixtures and runs

/// The canonical path and `file://` URL of a fixture (node resolves symlinks
/// of the main module and of imported ES modules).
fn fixture_url(name: &str) -> (PathBuf, String) {
    let path = fs::canonicalize(fixture(name)).expect("canonicalize fixture path");
    let url = format!("file://{}", path.display());
    (path, url)
}

/// A hot function of a fixture: its name as V8 gives it, the fixture, and a
/// string found on exactly one line of the fixture, the line V8 reports for it.
struct Expect {
    name: &'static str,
    file: &'static str,
    marker: &'static str,
}

/// The hot functions of names.js (and names_esm.mjs).
const NAMES: &[Expect] = &[
    Expect {
        name: "namedHot",
        file: "js/names.js",
        marker: "function namedHot(",
    },
    Expect {
        name: "area",
        file: "js/names.js",
        marker: "  area(units) {",
    },
    Expect {
        name: "get perimeter",
        file: "js/names.js",
        marker: "  get perimeter() {",
    },
    Expect {
        name: "(anonymous)",
        file: "js/names.js",
        marker: "  return (units) => {",
    },
    Expect {
        name: "asyncHot",
        file: "js/names.js",
        marker: "async function asyncHot(",
    },
    Expect {
        name: "esmHot",
        file: "js/names_esm.mjs",
        marker: "export function esmHot(",
    },
    Expect {
        name: "checkInput",
        file: "js/names.js",
        marker: "function checkInput(",
    },
    Expect {
        name: "workerHot",
        file: "js/names.js",
        marker: "function workerHot(",
    },
];

const SPIN_FOREVER: Expect = Expect {
    name: "spinForever",
    file: "js/forever.js",
    marker: "function spinForever(",
};

const SHARES: &[Expect] = &[
    Expect {
        name: "heavy",
        file: "js/shares.js",
        marker: "function heavy(",
    },
    Expect {
        name: "medium",
        file: "js/shares.js",
        marker: "function medium(",
    },
    Expect {
        name: "light",
        file: "js/shares.js",
        marker: "function light(",
    },
];

impl Expect {
    /// The URL and 0-based line of the function, from the fixture's source.
    fn url_line(&self) -> (String, i64) {
        let (path, url) = fixture_url(self.file);
        let source = fs::read_to_string(&path).expect("read fixture");
        let lines: Vec<usize> = source
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains(self.marker))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "marker {:?} must be on exactly one line of {}",
            self.marker,
            self.file
        );
        (url, lines[0] as i64)
    }

    /// The function as node's own profiler reports it: name, URL and line
    /// must match; the column comes from node.
    fn in_ground_truth(&self, major: u32, gt: &[Profile]) -> JsFn {
        let (url, line) = self.url_line();
        let found: BTreeSet<JsFn> = gt
            .iter()
            .flat_map(Profile::functions)
            .filter(|f| f.name == self.name && f.url == url && f.line == line)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "node {major}: `node --cpu-prof` does not report exactly one `{}` at {url} line {line} \
             (0-based) — the fixture or its marker is off. Its functions of that script:\n{}",
            self.name,
            gt.iter()
                .flat_map(Profile::functions)
                .filter(|f| f.url == url)
                .map(|f| format!("  {f}"))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join("\n")
        );
        found.into_iter().next().unwrap()
    }
}

/// Runs `node --cpu-prof --cpu-prof-dir DIR/cpu-prof FIXTURE ARGS` to
/// completion in `dir` and returns its profiles (one per thread).
fn ground_truth(major: u32, node: &Path, script: &str, args: &[&str], dir: &Path) -> Vec<Profile> {
    let out = dir.join(format!("cpu-prof-{}", script.replace('/', "-")));
    let mut cmd = Command::new(node);
    cmd.arg("--cpu-prof")
        .arg("--cpu-prof-dir")
        .arg(&out)
        .arg(fixture(script))
        .args(args)
        .current_dir(dir);
    let mut proc = Proc::spawn(cmd);
    let status = proc.wait(RUN_TIMEOUT);
    assert!(
        status.success(),
        "node {major} --cpu-prof {script} failed: {status}"
    );
    let mut files: Vec<PathBuf> = fs::read_dir(&out)
        .unwrap_or_else(|e| panic!("node {major} --cpu-prof wrote no {}: {e}", out.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cpuprofile"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "node {major} --cpu-prof wrote no profile"
    );
    files
        .iter()
        .map(|f| {
            let text = fs::read_to_string(f).expect("read node's cpuprofile");
            Profile::new(&serde_json::from_str(&text).expect("node's cpuprofile is JSON"))
        })
        .collect()
}

/// `nodeprof record -q -F 999 --format cpuprofile,folded -o DIR/NAME ARGS...`,
/// which must succeed; returns the run and its outputs.
fn record(dir: &Path, name: &str, args: &[String]) -> (Run, Outputs, Profile) {
    let prefix = dir.join(name);
    let mut all = vec![
        s("record"),
        s("-q"),
        s("-F"),
        s(999),
        s("--format"),
        s("cpuprofile,folded"),
        s("-o"),
        s(prefix.display()),
    ];
    all.extend(args.iter().cloned());
    let run = run_nodeprof(&all, dir, RUN_TIMEOUT);
    run.assert_success();
    let out = Outputs::load_formats(&prefix, &["cpuprofile", "folded"]);
    let profile = Profile::new(&out.cpuprofile);
    (run, out, profile)
}

/// Launch mode: `nodeprof record ... -- NODE NODE_OPTIONS FIXTURE ARGS`.
fn record_launch(
    dir: &Path,
    name: &str,
    node: &Path,
    node_options: &[&str],
    script: &str,
    args: &[&str],
) -> (Run, Outputs, Profile) {
    let mut all = vec![s("--"), s(node.display())];
    all.extend(node_options.iter().map(s));
    all.push(s(fixture(script).display()));
    all.extend(args.iter().map(s));
    let (run, out, profile) = record(dir, name, &all);
    assert_eq!(run.stop_reason(), "target exited");
    // The fixtures print `done ...` as their last act: they ran to the end.
    // (nodeprof's own `command exited with status N` line is checked by
    // record.rs; here it is only checked when present, see the report of
    // the launch-mode reaping race.)
    assert!(
        run.stdout.lines().any(|l| l.starts_with("done ")),
        "{script} did not finish under nodeprof:\n{}",
        run.stdout
    );
    // Every main-thread stack of node runs under node::Start: none at all
    // means the target's mappings were lost (the bug that
    // `launch_mode_names_survive_exit_right_after_new_code` reproduces).
    assert!(
        out.samples_with_frame(|f| f.starts_with("node::Start(")) > 0,
        "{script}: no sample has a node::Start frame: nodeprof lost the target's mappings when it \
         exited (see launch_mode_names_survive_exit_right_after_new_code)\nfolded:\n{}",
        out.folded_excerpt()
    );
    if let Some(status) = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("nodeprof: command exited with "))
    {
        assert_eq!(
            status, "status 0",
            "{script} under nodeprof:\n{}",
            run.stdout
        );
    } else {
        eprintln!(
            "note: nodeprof printed no `command exited with` line for {script} (launch-mode reaping race)"
        );
    }
    (run, out, profile)
}

/// Starts `node NODE_OPTIONS names.js PHASE_UNITS GO_FILE [noworker]` (see
/// names.js): it prints `ready` and waits for GO_FILE before it starts its
/// worker and phases. Returns the target and GO_FILE.
fn start_names(node: &Path, node_options: &[&str], dir: &Path, worker: bool) -> (Proc, PathBuf) {
    let go = dir.join("names.go");
    let go_arg = s(go.display());
    let mut args = vec![PHASE_UNITS, go_arg.as_str()];
    if !worker {
        args.push("noworker");
    }
    let target = Proc::node(node, node_options, "js/names.js", &args, dir);
    (target, go)
}

/// Records names.js (or another fixture with the same GO_FILE protocol)
/// attached (`nodeprof record -p`, no flag on node beyond what the target
/// was started with): waits for `ready`, starts nodeprof,
/// and only once sampling is attached (attach mode loads the V8 layout
/// before it starts sampling) creates GO_FILE; after `done` stops nodeprof
/// with SIGINT. The target stays alive until [`finish_names`] or until it
/// is dropped (killed).
fn record_attached(target: &Proc, go: &Path, dir: &Path, name: &str) -> (Run, Outputs, Profile) {
    record_attached_at(target, go, dir, name, "999")
}

/// [`record_attached`] at `hz` samples per second.
fn record_attached_at(
    target: &Proc,
    go: &Path,
    dir: &Path,
    name: &str,
    hz: &str,
) -> (Run, Outputs, Profile) {
    target.wait_for_line("ready", READY_TIMEOUT);
    let prefix = dir.join(name);
    let np = spawn_nodeprof(
        &record_args(
            target.pid,
            &prefix,
            &["-F", hz, "--format", "cpuprofile,folded"],
        ),
        dir,
    );
    np.wait_sampling(RUN_TIMEOUT);
    fs::write(go, b"go").expect("create the go file");
    target.wait_for_line("done", WORK_TIMEOUT);
    send_signal(np.proc.pid, libc::SIGINT);
    let run = np.finish(RUN_TIMEOUT);
    run.assert_success();
    assert_eq!(run.stop_reason(), "interrupted");
    assert!(
        target.is_running(),
        "the target exited before it was told to"
    );
    let out = Outputs::load_formats(&prefix, &["cpuprofile", "folded"]);
    let profile = Profile::new(&out.cpuprofile);
    (run, out, profile)
}

/// Lets a GO_FILE fixture exit normally (names.js flushes its perf map
/// then) and reaps it.
fn finish_names(mut target: Proc, go: &Path) {
    fs::write(format!("{}.exit", go.display()), b"exit").expect("create the exit file");
    let status = target.wait(RUN_TIMEOUT);
    assert!(status.success(), "the target failed: {status}");
}

/// nodeprof's functions of the given URLs, with their samples, for failure messages.
fn functions_of(profile: &Profile, attribution: &Attribution, urls: &[String]) -> String {
    profile
        .functions()
        .into_iter()
        .filter(|f| urls.contains(&f.url))
        .map(|f| format!("  {:5} samples  {f}", attribution.samples(&f)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn fail_if_any(major: u32, what: &str, failures: Vec<String>, context: String) {
    if !failures.is_empty() {
        panic!(
            "node {major}: {what}: {} failure(s):\n- {}\n\n{context}",
            failures.len(),
            failures.join("\n- ")
        );
    }
}

// ---------------------------------------------------------------------------
// 1. Named hot functions at node's positions, every major

/// names.js under `node --cpu-prof` and under nodeprof (attached to a node
/// started without any flag): every hot function appears in nodeprof's
/// .cpuprofile with node's name, URL, line and column, in the folded file
/// as `name url:LINE` (1-based), with samples; the worker's function on a
/// worker thread; the regex's time under `checkInput`.
fn check_names(major: u32) {
    let _lock = serial();
    let started = Instant::now();
    let node = node_major(major);
    let dir = scratch_dir();
    let gt = ground_truth(major, &node, "js/names.js", &[PHASE_UNITS], dir.path());
    let expected: Vec<JsFn> = NAMES
        .iter()
        .map(|e| e.in_ground_truth(major, &gt))
        .collect();

    let (target, go) = start_names(&node, &[], dir.path(), true);
    let (_run, out, np) = record_attached(&target, &go, dir.path(), "names");
    let attr = Attribution::of(&[&np]);
    let urls = vec![
        fixture_url("js/names.js").1,
        fixture_url("js/names_esm.mjs").1,
    ];
    let mut failures = Vec::new();

    for f in &expected {
        let n = attr.samples(f);
        if np.nodes_of(f).is_empty() {
            failures.push(format!("{f} is missing from nodeprof's .cpuprofile"));
            continue;
        }
        if n < MIN_HOT_SAMPLES {
            failures.push(format!(
                "{f}: only {n} samples (innermost JS frame), expected ≥ {MIN_HOT_SAMPLES}"
            ));
        }
        let label = format!("{} {}:{}", f.name, f.url, f.line + 1);
        if out.samples_with_frame(|fr| fr == label) == 0 {
            failures.push(format!("no folded stack has the frame `{label}`"));
        }
    }

    // The worker's function runs on a worker thread (a `[NAME TID]` node
    // under the root), the main thread's functions do not.
    let worker = &expected[NAMES.iter().position(|e| e.name == "workerHot").unwrap()];
    let named = &expected[NAMES.iter().position(|e| e.name == "namedHot").unwrap()];
    for (f, on_worker) in [(worker, true), (named, false)] {
        for id in np.nodes_of(f) {
            let top = np.root_child_name(id);
            if Outputs::is_thread_node(&top) != on_worker {
                failures.push(format!(
                    "{f} is under the root child `{top}`: expected {}",
                    if on_worker {
                        "a worker thread node `[NAME TID]`"
                    } else {
                        "the main thread"
                    }
                ));
            }
        }
    }

    // The catastrophic regex: its samples are in native code (the regex
    // engine, JIT code) whose nearest JS frame is checkInput.
    let check = &expected[NAMES.iter().position(|e| e.name == "checkInput").unwrap()];
    let mut below_check = 0;
    let mut regex_samples = 0;
    let mut regex_elsewhere = BTreeMap::<String, u64>::new();
    for &id in &np.samples {
        let stack = np.stack(id);
        let nearest = stack.iter().position(|(_, f)| f.is_some());
        let regex = stack
            .iter()
            .any(|(name, _)| name.to_lowercase().contains("regexp"));
        if let Some(i) = nearest {
            if stack[i].1.as_ref() == Some(check) && i > 0 {
                below_check += 1;
            }
        }
        if regex {
            regex_samples += 1;
            let owner = nearest
                .map(|i| s(stack[i].1.as_ref().unwrap()))
                .unwrap_or(s("no JS frame"));
            if nearest.is_none_or(|i| stack[i].1.as_ref() != Some(check)) {
                *regex_elsewhere.entry(owner).or_default() += 1;
            }
        }
    }
    if below_check < MIN_HOT_SAMPLES {
        failures.push(format!(
            "only {below_check} samples in native/regex code under {check}: the regex's time is not shown under checkInput"
        ));
    }
    let elsewhere: u64 = regex_elsewhere.values().sum();
    if elsewhere * 20 > regex_samples {
        failures.push(format!(
            "{elsewhere} of {regex_samples} samples in RegExp frames are not attributed to checkInput: {regex_elsewhere:?}"
        ));
    }

    fail_if_any(
        major,
        "JS names of names.js",
        failures,
        format!(
            "nodeprof's functions of the fixture:\n{}\n\nbusiest:\n{}\n\nfolded:\n{}",
            functions_of(&np, &attr, &urls),
            attr.top(12),
            out.folded_excerpt()
        ),
    );
    eprintln!(
        "node {major}: {} samples, {} hot functions named at node's positions ({:.1} s)",
        out.sample_count(),
        expected.len(),
        started.elapsed().as_secs_f64()
    );
}

/// A function stuck in `while (true)`: attach, record 1 s, the target is
/// still spinning, the loop is named at node's position and has the samples.
fn check_infinite_loop(major: u32) {
    let _lock = serial();
    let started = Instant::now();
    let node = node_major(major);
    let dir = scratch_dir();
    // With a limit the loop ends and node writes its profile at exit.
    let gt = ground_truth(major, &node, SPIN_FOREVER.file, &["300000000"], dir.path());
    let spin = SPIN_FOREVER.in_ground_truth(major, &gt);

    let target = Proc::node(&node, &[], SPIN_FOREVER.file, &[], dir.path());
    target.wait_for_line("ready", READY_TIMEOUT);
    let (run, out, np) = record(
        dir.path(),
        "forever",
        &[s("-p"), s(target.pid), s("-d"), s(1)],
    );
    assert_eq!(run.stop_reason(), "duration elapsed");
    assert!(
        target.is_running(),
        "node {major}: the spinning target is gone after the recording"
    );
    let attr = Attribution::of(&[&np]);
    let n = attr.samples(&spin);
    let url = fixture_url(SPIN_FOREVER.file).1;
    let context = format!(
        "nodeprof's functions of forever.js:\n{}\n\nbusiest:\n{}\n\nfolded:\n{}",
        functions_of(&np, &attr, &[url]),
        attr.top(8),
        out.folded_excerpt()
    );
    let mut failures = Vec::new();
    if np.nodes_of(&spin).is_empty() {
        failures.push(format!("{spin} is missing from nodeprof's .cpuprofile"));
    }
    // 1 s at 999 Hz of one busy thread: ≈ 1000 samples on an idle machine.
    if n < 200 || n * 10 < attr.js_total * 9 {
        failures.push(format!(
            "{spin} has {n} of {} JS samples ({} in all): expected ≥ 200 and ≥ 90%",
            attr.js_total, attr.total
        ));
    }
    fail_if_any(major, "infinite loop", failures, context);
    eprintln!(
        "node {major}: spinForever {n}/{} samples ({:.1} s)",
        attr.total,
        started.elapsed().as_secs_f64()
    );
    // `target` is killed (SIGKILL, by pid) when dropped.
}

macro_rules! per_major {
    ($($major:literal: $names:ident, $forever:ident, $perf_map:ident, $info:ident;)*) => {$(
        #[test]
        fn $names() {
            check_names($major);
        }

        #[test]
        fn $forever() {
            check_infinite_loop($major);
        }

        #[test]
        fn $perf_map() {
            check_perf_map_agreement($major);
        }

        #[test]
        fn $info() {
            check_info($major);
        }
    )*};
}

per_major! {
    18: names_node18, infinite_loop_node18, perf_map_names_agree_node18, info_node18;
    20: names_node20, infinite_loop_node20, perf_map_names_agree_node20, info_node20;
    22: names_node22, infinite_loop_node22, perf_map_names_agree_node22, info_node22;
    24: names_node24, infinite_loop_node24, perf_map_names_agree_node24, info_node24;
    26: names_node26, infinite_loop_node26, perf_map_names_agree_node26, info_node26;
}

// Self-time shares on two majors (the oldest and newest V8 tiers differ
// most between them; all five would add ~15 s to the 120 s budget).
#[test]
fn self_time_shares_node20() {
    check_accuracy(20);
}

#[test]
fn self_time_shares_node26() {
    check_accuracy(26);
}

// ---------------------------------------------------------------------------
// 2. Self-time shares against node --cpu-prof

/// Tolerance on a function's share of the JS samples, percentage points.
const SHARE_TOLERANCE_PP: f64 = 5.0;

/// One function's (or group's) share in `--cpu-prof` (`gt`) and nodeprof
/// (`np`): a table row, and a failure when they differ by more than
/// `tolerance` points.
fn compare_share(
    what: &str,
    gt: f64,
    np: f64,
    tolerance: f64,
    table: &mut Vec<String>,
    failures: &mut Vec<String>,
) {
    let ok = (gt - np).abs() <= tolerance;
    table.push(format!(
        "  {what}: node --cpu-prof {gt:.1}%, nodeprof {np:.1}% {}",
        if ok { "ok" } else { "DIFFERS" }
    ));
    if !ok {
        failures.push(format!(
            "{what}: nodeprof {np:.1}% vs node --cpu-prof {gt:.1}% of JS samples (> {tolerance} pp)"
        ));
    }
}

/// shares.js (heavy/medium/light ≈ 50/30/20 of the work, 2 s) under
/// `node --cpu-prof` and under nodeprof (launch mode, 999 Hz): every
/// function above 5% of the JS samples in either profile has the same share
/// in both within 5 percentage points (shares as defined in the module doc).
fn check_accuracy(major: u32) {
    let _lock = serial();
    let started = Instant::now();
    let node = node_major(major);
    let dir = scratch_dir();
    let gt = ground_truth(major, &node, "js/shares.js", &["2"], dir.path());
    let gt_attr = Attribution::of(&gt.iter().collect::<Vec<_>>());
    let expected: Vec<JsFn> = SHARES
        .iter()
        .map(|e| e.in_ground_truth(major, &gt))
        .collect();
    // The fixture does what it says: the three functions hold nearly all JS
    // samples under node's own profiler.
    let three: f64 = expected.iter().map(|f| gt_attr.share(f)).sum();
    assert!(
        three >= 85.0 && gt_attr.js_total >= 500,
        "node {major}: shares.js under --cpu-prof: heavy+medium+light hold {three:.1}% of {} JS samples:\n{}",
        gt_attr.js_total,
        gt_attr.top(8)
    );

    let (_run, out, np) = record_launch(dir.path(), "shares", &node, &[], "js/shares.js", &["2"]);
    let np_attr = Attribution::of(&[&np]);
    let mut failures = Vec::new();
    if np_attr.js_total < 500 {
        failures.push(format!("only {} samples with a JS frame", np_attr.js_total));
    }
    let candidates: BTreeSet<&JsFn> = gt_attr.per_fn.keys().chain(np_attr.per_fn.keys()).collect();
    let mut table = Vec::new();
    for f in candidates {
        let (a, b) = (gt_attr.share(f), np_attr.share(f));
        if a.max(b) <= 5.0 {
            continue;
        }
        compare_share(
            &f.to_string(),
            a,
            b,
            SHARE_TOLERANCE_PP,
            &mut table,
            &mut failures,
        );
    }
    for f in &expected {
        if np.nodes_of(f).is_empty() {
            failures.push(format!("{f} is missing from nodeprof's .cpuprofile"));
        }
    }
    let context = format!(
        "shares:\n{}\n\nnode --cpu-prof ({} JS of {} samples):\n{}\n\nnodeprof ({} JS of {} samples):\n{}\n\nfolded:\n{}",
        table.join("\n"),
        gt_attr.js_total,
        gt_attr.total,
        gt_attr.top(8),
        np_attr.js_total,
        np_attr.total,
        np_attr.top(8),
        out.folded_excerpt()
    );
    fail_if_any(major, "self-time shares", failures, context.clone());
    eprintln!(
        "node {major}: {}\n({:.1} s)",
        table.join("\n"),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// 3. Perf map agreement

/// One JS entry of a perf map: function name, script (path or URL), 1-based
/// line, 1-based column (node 18 writes no column).
#[derive(Debug, Clone)]
struct PerfMapEntry {
    name: String,
    script: String,
    line: i64,
    column: Option<i64>,
}

/// The JS entries of a V8 perf map (`--perf-basic-prof`): lines
/// `ADDR SIZE KIND:MARKERname SCRIPT:LINE[:COL]`, KIND `JS` (V8 ≥ 11),
/// `LazyCompile`/`Function` (older), `Script`/`Eval` for top-level code;
/// the tier marker is `~` (interpreted), `^` (Sparkplug), `+` (Maglev),
/// `*` (TurboFan), prefixed `o` for OSR code (V8 14) and followed by `'`
/// for context-specialized code. The name may contain spaces (`get x`):
/// the location is the last space-separated field.
fn parse_perf_map(text: &str) -> Vec<PerfMapEntry> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let mut fields = line.splitn(3, ' ');
        let (Some(_addr), Some(_size), Some(label)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Some((kind, rest)) = label.split_once(':') else {
            continue;
        };
        if !["JS", "LazyCompile", "Function", "Script", "Eval"].contains(&kind) {
            continue;
        }
        let Some((name, location)) = rest.rsplit_once(' ') else {
            continue;
        };
        // Several isolates (main thread, workers) append to one map, and
        // node 18 was seen to interleave two records on one line
        // (`...~highWaterMarkFrom node:internal/streams2d4b62c70dc8 9c
        // LazyCompile:~exports.emitMessage node:...:19`): skip such lines.
        let tokens: Vec<&str> = name.split(' ').collect();
        let interleaved = tokens.windows(2).any(|w| {
            !w[0].is_empty()
                && w[0].bytes().all(|b| b.is_ascii_hexdigit())
                && w[1].split_once(':').is_some_and(|(k, _)| {
                    !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphabetic())
                })
        });
        if interleaved {
            continue;
        }
        let mut name = name;
        if let Some(r) = name.strip_prefix('o') {
            if r.starts_with(['~', '^', '+', '*']) {
                name = r;
            }
        }
        if let Some(r) = name.strip_prefix(['~', '^', '+', '*']) {
            name = r.strip_prefix('\'').unwrap_or(r);
        }
        // SCRIPT:LINE[:COL], SCRIPT may itself be a URL with a colon.
        let mut parts: Vec<&str> = location.split(':').collect();
        let mut numbers = Vec::new();
        while numbers.len() < 2 && parts.len() > 1 {
            match parts.last().unwrap().parse::<i64>() {
                Ok(n) => {
                    numbers.insert(0, n);
                    parts.pop();
                }
                Err(_) => break,
            }
        }
        if numbers.is_empty() {
            continue;
        }
        entries.push(PerfMapEntry {
            name: if name.is_empty() {
                s("(anonymous)")
            } else {
                s(name)
            },
            script: parts.join(":"),
            line: numbers[0],
            column: numbers.get(1).copied(),
        });
    }
    entries
}

/// names.js run as `node --perf-basic-prof`, nodeprof attached: V8 writes
/// /tmp/perf-PID.map with its names for compiled code, nodeprof names JS
/// frames from the heap. For every JS function nodeprof shows that the map
/// has at the same script, line (and column where the map has one), the
/// names are the same; the hot functions of the fixture must be among them
/// (all but the worker's on node 18, run without the worker: see names.js).
fn check_perf_map_agreement(major: u32) {
    let _lock = serial();
    let started = Instant::now();
    let node = node_major(major);
    let dir = scratch_dir();
    // No worker on node 18: there a worker isolate's perf map stream
    // clobbers the main thread's entries (see names.js).
    let (target, go) = start_names(&node, &["--perf-basic-prof"], dir.path(), major != 18);
    let pid = target.pid;
    let _cleanup = PerfMapCleanup(pid);
    let (_run, out, np) = record_attached(&target, &go, dir.path(), "perfmap");
    finish_names(target, &go);
    let map_path = format!("/tmp/perf-{pid}.map");
    let text = fs::read(&map_path).unwrap_or_else(|e| panic!("node {major}: read {map_path}: {e}"));
    let entries = parse_perf_map(&String::from_utf8_lossy(&text));
    assert!(
        entries.len() > 20,
        "node {major}: only {} JS entries in {map_path}",
        entries.len()
    );

    let attr = Attribution::of(&[&np]);
    let urls = vec![
        fixture_url("js/names.js").1,
        fixture_url("js/names_esm.mjs").1,
    ];
    let mut failures = Vec::new();
    let mut notes = Vec::new();
    let mut agreed = BTreeSet::new();
    for f in np.functions() {
        let script = f.url.strip_prefix("file://").unwrap_or(&f.url).to_string();
        let same_place: Vec<&PerfMapEntry> = entries
            .iter()
            .filter(|e| {
                (e.script == script || e.script == f.url)
                    && e.line == f.line + 1
                    && e.column.is_none_or(|c| c == f.column + 1)
            })
            .collect();
        if same_place.is_empty() {
            continue;
        }
        let names: BTreeSet<&str> = same_place.iter().map(|e| e.name.as_str()).collect();
        // Without columns (node 18's perf map) two functions on one line are
        // indistinguishable: nodeprof's name must be one of theirs.
        let columnless = same_place.iter().all(|e| e.column.is_none());
        if names.contains(f.name.as_str()) && (names.len() == 1 || columnless) {
            agreed.insert(f);
            continue;
        }
        let msg = format!(
            "nodeprof names {f} ({} samples); the perf map at that place says {names:?}",
            attr.samples(&f)
        );
        // The fixture's functions must agree. Node's own functions only
        // give a note: V8's debug name of a function with only an inferred
        // name (`Module._load = function (...) {...}`) changes over its life
        // (kept while uncompiled, gone once compiled from some paths), so
        // the perf map, written at compile time, and a later heap read can
        // legitimately differ there (node 24 seen; `node --cpu-prof` itself
        // says `(anonymous)` for Module._load on node 24).
        if urls.contains(&f.url) {
            failures.push(msg);
        } else {
            notes.push(msg);
        }
    }
    for note in &notes {
        eprintln!("note: node {major}, node-internal function: {note}");
    }
    for e in NAMES {
        if major == 18 && e.name == "workerHot" {
            continue;
        }
        let (url, line) = e.url_line();
        if !agreed
            .iter()
            .any(|f| f.name == e.name && f.url == url && f.line == line)
        {
            failures.push(format!(
                "hot function `{}` ({url} line {line}) is not among the functions both sources name",
                e.name
            ));
        }
    }
    let (names_path, esm_path) = (
        fixture_url("js/names.js").0.display().to_string(),
        fixture_url("js/names_esm.mjs").0.display().to_string(),
    );
    let map_excerpt: Vec<String> = entries
        .iter()
        .filter(|e| e.script.ends_with(&names_path) || e.script.ends_with(&esm_path))
        .map(|e| format!("  {:?} {}:{}:{:?}", e.name, e.script, e.line, e.column))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    fail_if_any(
        major,
        "perf map vs. V8 introspection",
        failures,
        format!(
            "nodeprof's functions of the fixture:\n{}\n\nperf map entries of the fixture:\n{}\n\nfolded:\n{}",
            functions_of(&np, &attr, &urls),
            map_excerpt.join("\n"),
            out.folded_excerpt()
        ),
    );
    eprintln!(
        "node {major}: {} JS functions named alike by nodeprof and the perf map ({:.1} s)",
        agreed.len(),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// 4. nodeprof info

fn info(pid: u32, dir: &Path) -> Run {
    let run = run_nodeprof(&[s("info"), s("-p"), s(pid)], dir, RUN_TIMEOUT);
    run.assert_success();
    run
}

/// The value of a `key: value` line of `nodeprof info`.
fn info_field<'a>(run: &'a Run, key: &str) -> Option<&'a str> {
    run.stdout.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

/// `nodeprof info -p PID` on an idle node of each major: exit 0, node's own
/// version, V8's version (node's `process.versions.v8` without the
/// `-node.N` suffix), where the layout came from, naming available.
fn check_info(major: u32) {
    let _lock = serial();
    let node = node_major(major);
    let dir = scratch_dir();
    let mut cmd = Command::new(&node);
    cmd.args([
        "-e",
        "console.log(`ready ${process.pid} ${process.version} ${process.versions.v8}`); setInterval(() => {}, 1000);",
    ])
    .current_dir(dir.path());
    let target = Proc::spawn(cmd);
    let ready = target.wait_for_line("ready", READY_TIMEOUT);
    let fields: Vec<&str> = ready.split_whitespace().collect();
    let (version, v8) = (fields[2], fields[3]);
    let v8_plain = v8.split("-node").next().unwrap();

    let run = info(target.pid, dir.path());
    let all = format!("stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert_eq!(
        info_field(&run, "Node.js"),
        Some(version),
        "node {major}: Node.js version\n{all}"
    );
    let v8_line = info_field(&run, "V8").unwrap_or_default();
    assert!(
        v8_line == v8_plain || v8_line == v8,
        "node {major}: V8 line `{v8_line}`, process.versions.v8 is {v8}\n{all}"
    );
    assert_eq!(
        info_field(&run, "JS frame naming"),
        Some("available"),
        "node {major}\n{all}"
    );
    let layout = info_field(&run, "layout fields").unwrap_or_default();
    assert!(
        layout.contains("from symbols") && layout.contains("from fallbacks"),
        "node {major}: no `layout fields: N from symbols, M from fallbacks` line\n{all}"
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.contains("symbol v8dbg_class_JSFunction__shared__SharedFunctionInfo")),
        "node {major}: the JSFunction.shared field does not name its v8dbg symbol\n{all}"
    );
    let gc = info_field(&run, "GC tracing").unwrap_or_default();
    assert!(
        gc.starts_with("available, V8's own pause record"),
        "node {major}: GC tracing line `{gc}`\n{all}"
    );
}

/// A busy shell: a target that is not node (or only calls itself `node`).
fn busy_shell(exe: &Path) -> Proc {
    let mut cmd = Command::new(exe);
    cmd.args(["-c", "while :; do :; done"]);
    Proc::spawn(cmd)
}

/// `nodeprof info` on a shell: exit 0, JS naming NOT available.
#[test]
fn info_non_node_says_naming_unavailable() {
    let _lock = serial();
    let dir = scratch_dir();
    let target = busy_shell(Path::new("sh"));
    let run = info(target.pid, dir.path());
    let all = format!("stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert_eq!(
        info_field(&run, "JS frame naming"),
        Some("NOT available"),
        "{all}"
    );
    assert!(!run.stdout.contains("naming: available"), "{all}");
    let gc = info_field(&run, "GC tracing").unwrap_or_default();
    assert!(gc.starts_with("NOT available"), "{all}");
}

// ---------------------------------------------------------------------------
// 5. Hostile targets

/// No JS frame, no `[unknown JS]`, in a recording of a process without V8.
fn assert_no_js(out: &Outputs, np: &Profile, what: &str) {
    let js: Vec<String> = np.functions().iter().map(s).collect();
    assert!(
        js.is_empty(),
        "{what}: JS frames in the .cpuprofile: {js:?}"
    );
    let names = out.function_names();
    assert!(
        !names.iter().any(|n| n.contains("unknown JS")),
        "{what}: `[unknown JS]` frames: {names:?}"
    );
    let bad = out.samples_with_frame(|f| {
        f.contains("file://") || f.contains("node:internal") || f.contains("unknown JS")
    });
    assert_eq!(
        bad,
        0,
        "{what}: JS-looking folded frames:\n{}",
        out.folded_excerpt()
    );
}

fn record_busy_shell(exe: &Path, what: &str) {
    let dir = scratch_dir();
    let target = busy_shell(exe);
    let (run, out, np) = record(
        dir.path(),
        "shell",
        &[s("-p"), s(target.pid), s("-d"), s(1)],
    );
    assert_eq!(run.stop_reason(), "duration elapsed");
    assert!(target.is_running(), "{what}: the target died");
    let n = out.sample_count() as u64;
    assert!(
        n >= 100,
        "{what}: only {n} samples of a busy shell in 1 s at 999 Hz"
    );
    assert_no_js(&out, &np, what);
    // JS naming was not attempted or reported unavailable, never a crash.
    let info = info(target.pid, dir.path());
    assert_eq!(
        info_field(&info, "JS frame naming"),
        Some("NOT available"),
        "{what}:\n{}",
        info.stdout
    );
}

/// A busy non-node process: recorded natively, no JS frames, no crash.
#[test]
fn non_node_busy_process_has_no_js_frames() {
    let _lock = serial();
    record_busy_shell(Path::new("sh"), "sh -c 'while :; do :; done'");
}

/// A shell binary copied to a file named `node` (it looks like node by name
/// but carries no V8): nodeprof must not crash or invent JS frames.
#[test]
fn shell_named_node_has_no_js_frames() {
    let _lock = serial();
    let dir = scratch_dir();
    let sh = fs::canonicalize("/bin/sh").expect("/bin/sh");
    let fake = dir.path().join("node");
    fs::copy(&sh, &fake).expect("copy the shell");
    record_busy_shell(&fake, "a shell named node");
}

// ---------------------------------------------------------------------------
// Regression: mappings lost when the target exits right after new code

/// A launched node that runs freshly compiled code (new executable pages)
/// in its last ~20 ms and exits: every frame of the recording must still be
/// named — node's own functions, `steadySpin`, `node::Start`.
///
/// Up to 6 attempts, since the bug it guards against showed in about half
/// of the runs: when the final drain after the target's exit brings a
/// stack with a pc no mapping snapshot covers, `Symbolizer::observe`
/// re-reads `/proc/PID/maps` of the exited target — still a zombie
/// (launch mode reaps it only later), whose maps file reads fine and is
/// empty — and replaced the good snapshot with nothing: every user frame of
/// the whole recording became `[unknown]`, JS frames included. Fixed: an
/// empty maps file keeps the snapshot (`Symbolizer::refresh`).
#[test]
fn launch_mode_names_survive_exit_right_after_new_code() {
    let _lock = serial();
    let node = node_major(20);
    let url = fixture_url("js/fresh_code_exit.js").1;
    for attempt in 1..=6 {
        let dir = scratch_dir();
        let (run, out, np) = record(
            dir.path(),
            "fresh",
            &[
                s("--"),
                s(node.display()),
                s(fixture("js/fresh_code_exit.js").display()),
            ],
        );
        assert_eq!(run.stop_reason(), "target exited");
        assert!(
            run.stdout.lines().any(|l| l.starts_with("done ")),
            "the fixture did not finish:\n{}",
            run.stdout
        );
        let n = out.sample_count() as u64;
        let with_start = out.samples_with_frame(|f| f.starts_with("node::Start("));
        let attr = Attribution::of(&[&np]);
        let spin: u64 = attr
            .per_fn
            .iter()
            .filter(|(f, _)| f.name == "steadySpin" && f.url == url)
            .map(|(_, &c)| c)
            .sum();
        assert!(
            with_start * 10 >= n * 8 && spin * 2 >= n,
            "attempt {attempt}: of {n} samples only {with_start} have node::Start and {spin} are in \
             steadySpin: the target's mappings were lost at its exit (see this test's doc).\nfolded:\n{}",
            out.folded_excerpt()
        );
    }
}

// ---------------------------------------------------------------------------
// Regression: launch mode named JS frames only some time after the exec

/// `nodeprof record -- node startup_hot.js`: the script spins in `earlyHot`
/// from its start for 180 units of work (≈ 300 ms). Launch mode records from the first
/// instruction, so JS frames must be named from the first instruction too:
/// at most 2% (or 3 samples) of the main thread's samples with JS may show
/// unnamed JS (`[unknown JIT]`, `Builtins_InterpreterEntryTrampoline`,
/// `[unknown JS]`), and `earlyHot` must have most of its ≈ 300 samples.
///
/// Guards against a bug now fixed (launch mode loads the layout of the
/// resolved executable before releasing the child): in attach mode the V8
/// layout reached the sampler before sampling started; in launch mode it
/// did not: sampling starts, the child is released, and the layout
/// is only loaded by the first `Symbolizer::refresh` that sees node as the
/// target's executable (`check_executable`, run from the first drain), which
/// parses node's symbol tables (~0.1 s and more with the debug build) while
/// node already runs. Until `set_v8_config` the sampler records no
/// SharedFunctionInfo, so every JS frame sampled meanwhile is
/// `Builtins_InterpreterEntryTrampoline` / `[unknown JIT]` for good. (Should
/// the first refresh run before the exec, the layout waits further for
/// MAPS_REFRESH_INTERVAL and new uncovered stacks.) Node 18 and 20 spend
/// their first ~80–90 ms in OpenSSL and snapshot set-up before any JS runs,
/// which hides the delay on an idle machine; node 22, 24 and 26 run JS
/// sooner: on node 26 every run here had 29–35 unnamed samples (node 22:
/// 34–37, node 24: 22–24), the first named JS frame 96–107 ms after the
/// start (up to 500 ms seen on a busy machine).
#[test]
fn launch_mode_names_js_from_the_start() {
    let _lock = serial();
    let node = node_major(26);
    let dir = scratch_dir();
    let (_run, out, np) = record_launch(
        dir.path(),
        "startup",
        &node,
        &[],
        "js/startup_hot.js",
        &["180"],
    );
    let url = fixture_url("js/startup_hot.js").1;
    let unnamed_frame = |name: &str| {
        name == "[unknown JIT]"
            || name == "Builtins_InterpreterEntryTrampoline"
            || name == "[unknown JS]"
    };
    let (mut named, mut unnamed, mut hot) = (0u64, 0u64, 0u64);
    for &id in &np.samples {
        let stack = np.stack(id);
        if Outputs::is_thread_node(&np.root_child_name(id)) {
            continue; // not the main thread
        }
        if stack.iter().any(|(n, _)| unnamed_frame(n)) {
            unnamed += 1;
        } else if let Some(f) = stack.iter().find_map(|(_, f)| f.as_ref()) {
            named += 1;
            if f.name == "earlyHot" && f.url == url {
                hot += 1;
            }
        }
    }
    let first_named_ms = {
        let times = out.sample_times();
        np.samples
            .iter()
            .zip(&times)
            .find(|(&id, _)| np.stack(id).iter().any(|(_, f)| f.is_some()))
            .map(|(_, &t)| (t - out.start_us()) as f64 / 1000.0)
    };
    eprintln!("launch mode: {unnamed} unnamed, {named} named ({hot} earlyHot); first named at {first_named_ms:?} ms");
    assert!(
        unnamed <= 3.max((named + unnamed) / 50) && hot >= 150,
        "launch mode: {unnamed} main-thread samples with unnamed JS frames vs {named} named \
         ({hot} in earlyHot, ≈ 300 ms of CPU at 999 Hz ≈ 300); first named JS frame {first_named_ms:?} ms \
         after the start: JS frames are named only once the V8 layout arrives (see this test's doc)\nfolded:\n{}",
        out.folded_excerpt()
    );
}

// ---------------------------------------------------------------------------
// Regression: JIT frames of code unmapped during the recording lost their names

/// worker_exit.js on node 20, attached: a worker spins in `workerSpin` for
/// 180 units of work (≈ 300 ms) and exits; afterwards the main thread runs fresh code. The
/// worker's ≈ 300 samples must still name `workerSpin`.
///
/// Guards against a bug now fixed (it showed in every run on node 20; node
/// 24 keeps the pages): `Symbolizer::refresh` replaced its snapshot of the target's
/// executable mappings with the latest `/proc/PID/maps`. The worker's
/// isolate unmaps its JIT code pages when it exits; the main thread's fresh
/// code triggers a refresh; at the end `is_v8_code(pc)` finds no mapping for
/// the worker's JIT pcs, so their frames — whose SharedFunctionInfo the
/// sampler recorded and nodeprof resolved while the worker ran — become
/// native `[unknown]` frames (or perf-map names). Earlier mappings that the
/// new snapshot does not overlap are now kept.
#[test]
fn worker_frames_keep_names_after_the_worker_exits() {
    let _lock = serial();
    let node = node_major(20);
    let dir = scratch_dir();
    let go = dir.path().join("worker_exit.go");
    let go_arg = s(go.display());
    let target = Proc::node(&node, &[], "js/worker_exit.js", &[&go_arg], dir.path());
    let (_run, out, np) = record_attached(&target, &go, dir.path(), "worker_exit");
    finish_names(target, &go);
    let url = fixture_url("js/worker_exit.js").1;
    let attr = Attribution::of(&[&np]);
    let spin: u64 = attr
        .per_fn
        .iter()
        .filter(|(f, _)| f.name == "workerSpin" && f.url == url)
        .map(|(_, &c)| c)
        .sum();
    let per_thread = out.samples_per_thread();
    // ≈ 300 (≈ 300 ms of CPU of one thread at 999 Hz).
    assert!(
        spin >= 150,
        "only {spin} samples in workerSpin (≈ 300 ms of CPU of a worker at 999 Hz): the worker's JIT frames \
         lost their names once its code was unmapped (see this test's doc); samples per thread \
         {per_thread:?}\nfolded:\n{}",
        out.folded_excerpt()
    );
}

// ---------------------------------------------------------------------------
// 4. Inlined functions and code without a URL, on the very process that
//    `node --cpu-prof` profiles

/// Tolerance on a function's share of the JS samples when both profilers
/// watch the same process, percentage points.
const SAME_PROCESS_TOLERANCE_PP: f64 = 2.0;
/// Rounds of inlined.js (≈ 4 ms of CPU each).
const INLINED_ROUNDS: &str = "1000";
/// Both profilers sample at 4 kHz: with ≈ 18,000 samples each, the share of
/// a function that holds 30 % differs between two independent samplers by
/// 0.5 points (one standard deviation), well inside the tolerance.
const INLINED_NODE_INTERVAL_US: &str = "250";
const INLINED_HZ: &str = "3999";

/// The functions of inlined.js: the helpers TurboFan inlines into
/// `driveInlined` (see the fixture), and the two functions compiled from
/// strings (no URL; `new Function` names its function `anonymous`).
const INLINED: &[Expect] = &[
    Expect {
        name: "driveInlined",
        file: "js/inlined.js",
        marker: "function driveInlined(",
    },
    Expect {
        name: "outerMix",
        file: "js/inlined.js",
        marker: "function outerMix(",
    },
    Expect {
        name: "midFind",
        file: "js/inlined.js",
        marker: "function midFind(",
    },
    Expect {
        name: "leafSin",
        file: "js/inlined.js",
        marker: "function leafSin(",
    },
];

/// `scriptId` per JS function of a profile's call frames.
fn script_ids(p: &Profile) -> BTreeMap<JsFn, String> {
    p.nodes
        .values()
        .filter(|(cf, _)| is_js(cf))
        .map(|(cf, _)| {
            (
                js_fn(cf),
                cf["scriptId"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

/// Both profiles of one run of a GO_FILE fixture under `node --cpu-prof`
/// with nodeprof attached, and every function's share of the JS samples
/// compared (failures: functions more than 2 points apart, too few samples).
struct SameProcess {
    gt: Vec<Profile>,
    np: Profile,
    out: Outputs,
    gt_attr: Attribution,
    np_attr: Attribution,
    table: Vec<String>,
    failures: Vec<String>,
}

impl SameProcess {
    /// Prints the shares and fails with both profiles' tops on any failure.
    fn finish(self, major: u32, fixture: &str) {
        let context = format!(
            "shares:\n{}\n\nnode --cpu-prof ({} JS of {} samples):\n{}\n\nnodeprof ({} JS of {} samples):\n{}\n\nfolded:\n{}",
            self.table.join("\n"),
            self.gt_attr.js_total,
            self.gt_attr.total,
            self.gt_attr.top(10),
            self.np_attr.js_total,
            self.np_attr.total,
            self.np_attr.top(10),
            self.out.folded_excerpt()
        );
        eprintln!(
            "node {major}: {fixture}, same process:\n{}",
            self.table.join("\n")
        );
        fail_if_any(
            major,
            &format!("{fixture}, same process"),
            self.failures,
            context,
        );
    }
}

/// `pooled`: functions of the fixture compared by the sum of their shares
/// (where V8's own profiler is known to split their time wrongly).
fn same_process(major: u32, script: &str, rounds: &str, pooled: &[&str]) -> SameProcess {
    let node = node_major(major);
    let dir = scratch_dir();
    let prof_dir = dir.path().join("cpu-prof");
    let go = dir.path().join("fixture.go");
    let prof_arg = s(prof_dir.display());
    let go_arg = s(go.display());
    let target = Proc::node(
        &node,
        &[
            "--cpu-prof",
            "--cpu-prof-interval",
            INLINED_NODE_INTERVAL_US,
            "--cpu-prof-dir",
            &prof_arg,
        ],
        script,
        &[rounds, &go_arg],
        dir.path(),
    );
    let (_run, out, np) = record_attached_at(&target, &go, dir.path(), "same", INLINED_HZ);
    finish_names(target, &go);
    let gt: Vec<Profile> = fs::read_dir(&prof_dir)
        .expect("node --cpu-prof wrote its directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cpuprofile"))
        .map(|f| {
            let text = fs::read_to_string(f).expect("read node's cpuprofile");
            Profile::new(&serde_json::from_str(&text).expect("node's cpuprofile is JSON"))
        })
        .collect();
    assert_eq!(
        gt.len(),
        1,
        "node {major}: one thread, one --cpu-prof profile"
    );
    let gt_attr = Attribution::of(&[&gt[0]]);
    let np_attr = Attribution::of(&[&np]);
    let mut failures = Vec::new();
    if np_attr.js_total < 5000 || gt_attr.js_total < 5000 {
        failures.push(format!(
            "too few JS samples for 2 points: nodeprof {}, node --cpu-prof {}",
            np_attr.js_total, gt_attr.js_total
        ));
    }
    let candidates: BTreeSet<&JsFn> = gt_attr.per_fn.keys().chain(np_attr.per_fn.keys()).collect();
    let mut table = Vec::new();
    let fixture_url = fixture_url(script).1;
    let is_pooled = |f: &JsFn| f.url == fixture_url && pooled.contains(&f.name.as_str());
    let (mut pooled_gt, mut pooled_np) = (0.0, 0.0);
    for f in candidates {
        let (a, b) = (gt_attr.share(f), np_attr.share(f));
        if is_pooled(f) {
            pooled_gt += a;
            pooled_np += b;
            continue;
        }
        if a.max(b) < 0.5 {
            continue;
        }
        compare_share(
            &f.to_string(),
            a,
            b,
            SAME_PROCESS_TOLERANCE_PP,
            &mut table,
            &mut failures,
        );
    }
    if !pooled.is_empty() {
        compare_share(
            &pooled.join(" + "),
            pooled_gt,
            pooled_np,
            SAME_PROCESS_TOLERANCE_PP,
            &mut table,
            &mut failures,
        );
    }
    SameProcess {
        gt,
        np,
        out,
        gt_attr,
        np_attr,
        table,
        failures,
    }
}

/// inlined.js runs under `node --cpu-prof`, and nodeprof attaches to that
/// same process for the phases: every function's share of the JS samples
/// (innermost JS frame, native leaves counted for their JS caller) agrees
/// within 2 points — the inlined helpers included, which `--cpu-prof`
/// expands and which hold most of the time; each inlined helper appears
/// under its caller chain (driveInlined → outerMix → midFind → leafSin); and every
/// JS function has node's script id, `new Function` and eval code included
/// (no URL, but a script of their own, not "0").
fn check_inlined(major: u32) {
    let _lock = serial();
    let started = Instant::now();
    let SameProcess {
        gt,
        np,
        out,
        gt_attr,
        np_attr,
        table,
        mut failures,
    } = same_process(major, "js/inlined.js", INLINED_ROUNDS, &[]);
    let expected: Vec<JsFn> = INLINED
        .iter()
        .map(|e| e.in_ground_truth(major, &gt))
        .collect();

    // The fixture does what it says: node itself charges the helpers.
    let helpers: f64 = expected[1..].iter().map(|f| gt_attr.share(f)).sum();
    if helpers < 10.0 {
        failures.push(format!(
            "node --cpu-prof gives the inlined helpers only {helpers:.1}% of the JS samples: \
             the fixture no longer exercises inlining"
        ));
    }

    // leafSin, inlined, sits under midFind, outerMix and driveInlined.
    let chain: Vec<&JsFn> = expected.iter().rev().collect();
    let nested = np.samples.iter().any(|&id| {
        let js: Vec<JsFn> = np.stack(id).into_iter().filter_map(|(_, f)| f).collect();
        js.len() >= 4 && js[..4].iter().zip(&chain).all(|(a, b)| a == *b)
    });
    if !nested {
        failures.push(
            "no nodeprof sample has leafSin ← midFind ← outerMix ← driveInlined as its innermost JS frames"
                .to_string(),
        );
    }

    // Script ids: node's, for every function both profiles name.
    let (gt_ids, np_ids) = (script_ids(&gt[0]), script_ids(&np));
    let mut without_url = 0;
    for (f, id) in &np_ids {
        if let Some(want) = gt_ids.get(f) {
            if id != want {
                failures.push(format!("{f}: scriptId {id}, node --cpu-prof says {want}"));
            }
        }
        if f.url.is_empty() && np_attr.share(f) > 5.0 {
            without_url += 1;
            if id == "0" || !gt_ids.contains_key(f) {
                failures.push(format!(
                    "{f} (no URL): scriptId {id}; node --cpu-prof: {:?}",
                    gt_ids.get(f)
                ));
            }
        }
    }
    if without_url != 2 {
        failures.push(format!(
            "expected the `new Function` and eval functions among nodeprof's hot JS functions \
             without URL, found {without_url}"
        ));
    }
    let context = format!(
        "shares:\n{}\n\nnode --cpu-prof ({} JS of {} samples):\n{}\n\nnodeprof ({} JS of {} samples):\n{}\n\nfolded:\n{}",
        table.join("\n"),
        gt_attr.js_total,
        gt_attr.total,
        gt_attr.top(10),
        np_attr.js_total,
        np_attr.total,
        np_attr.top(10),
        out.folded_excerpt()
    );
    fail_if_any(major, "inlined.js, same process", failures, context);
    eprintln!(
        "node {major}: same process as --cpu-prof ({} / {} JS samples):\n{}\n({:.1} s)",
        gt_attr.js_total,
        np_attr.js_total,
        table.join("\n"),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn inlined_and_eval_same_process_node18() {
    check_inlined(18);
}

#[test]
fn inlined_and_eval_same_process_node20() {
    check_inlined(20);
}

#[test]
fn inlined_and_eval_same_process_node22() {
    check_inlined(22);
}

#[test]
fn inlined_and_eval_same_process_node24() {
    check_inlined(24);
}

#[test]
fn inlined_and_eval_same_process_node26() {
    check_inlined(26);
}

/// Rounds of caller_self.js (20,000 calls each).
const CALLER_SELF_ROUNDS: &str = "2000";

/// caller_self.js runs under `node --cpu-prof` with nodeprof attached: a
/// caller with work of its own in optimized code (`nextTokenLike`, inlined
/// into `driveTokens`) that calls a callee too large to inline (`scanLike`),
/// the shape of TypeScript's `nextTokenWithoutCheck` → `scan`. Every
/// function's share of the JS samples agrees within 2 points. Named by the
/// frame pointer in the callee's prologue and epilogue, `scanLike` was 2.6
/// points short of `--cpu-prof` in runs of 1,500 and 3,000 rounds, but only
/// 1.3 in this test's: `check_tiny_callees` is the one that fails on that.
/// The TypeScript workload's `nextTokenWithoutCheck` → `scan` difference is
/// another one (see there).
fn check_caller_self(major: u32) {
    let _lock = serial();
    let run = same_process(major, "js/caller_self.js", CALLER_SELF_ROUNDS, &[]);
    run.finish(major, "caller_self.js");
}

#[test]
fn caller_self_time_same_process_node20() {
    check_caller_self(20);
}

#[test]
fn caller_self_time_same_process_node26() {
    check_caller_self(26);
}

/// The functions tiny_callees.js calls through its megamorphic site.
const TINY_CALLEES: [&str; 6] = [
    "addOne", "addTwo", "xorThree", "xorFour", "mulFive", "mulSix",
];

/// Rounds of tiny_callees.js (60,000 calls each): about 45,000 JS samples
/// for each profiler; the callees' sum then varies by a few tenths of a
/// point between runs (with 10,000 rounds, by about ±1).
const TINY_CALLEES_ROUNDS: &str = "30000";

/// tiny_callees.js runs under `node --cpu-prof` with nodeprof attached: six
/// tiny functions called through one megamorphic site (TurboFan inlines
/// none), so a good part of their time is in their prologues and epilogues,
/// where the frame pointer is the caller's (`callAround`). V8's profiler
/// names the sampled pc by the code it is in; nodeprof must too: each
/// callee's share agrees within 2 points (named by the frame pointer, each
/// had half of it: 1.4–3.8 % against 4.6–7.4 %). V8 encodes `mov rsp,rbp`
/// as `48 8b e5` (node 18 to 26); while only `48 89 ec` was matched, the
/// samples between a callee's `pop rbp` and `ret` went to the caller: on
/// node 20 the callees' sum was 1.3 points low on average (6 runs), and the
/// callers' 2.1 points over in one full run; on node 26 this hid
/// `--cpu-prof`'s own loss (below).
///
/// `--cpu-prof` drops the samples whose pc is at a callee's `push rbp` or
/// `mov rbp,rsp` (V8's `IsNoFrameRegion`): 0.7 % of the samples on node 20,
/// 1.3 % on node 26 and 2.6 % on node 18 (counted at the pcs nodeprof
/// sampled). nodeprof keeps them for the callee, where the time is spent, so
/// the callees' sum is about that much over `--cpu-prof`'s: about 1 point
/// on node 24 and 26, 1.5–2.3 points on node 18 (ad-hoc runs), too close
/// to 2 for a test there.
///
/// `callAround` and its callers (`runRounds`, `main`) are compared by their
/// sum: `--cpu-prof` gives `runRounds`, which only calls `callAround` once a
/// round, about 30 % self time at that call's line on node 20 (with or
/// without OSR or Sparkplug), and `main` about 20 % on node 26. V8's
/// sampler skips the frame the frame pointer holds and names the sampled pc
/// by the code map, which has no entry for the embedded builtins
/// (`callAround`'s call trampolines); when the word at the stack top is no
/// return address into JS code either, the sample goes to the caller's
/// caller. nodeprof names the frame's function (`callAround`), where the
/// time is spent. The same pattern (a callee's time charged to its caller by
/// `--cpu-prof`: `scan` → `nextTokenWithoutCheck`, `bindWorker` → `bind`)
/// is most of `cargo xtask bench-fidelity`'s TypeScript gap.
fn check_tiny_callees(major: u32) {
    let _lock = serial();
    let mut run = same_process(
        major,
        "js/tiny_callees.js",
        TINY_CALLEES_ROUNDS,
        &["callAround", "runRounds", "main"],
    );
    // Not inlined, the callees run their own code, prologues included.
    let callees: f64 = run
        .gt_attr
        .per_fn
        .keys()
        .filter(|f| f.url.ends_with("tiny_callees.js") && TINY_CALLEES.contains(&f.name.as_str()))
        .map(|f| run.gt_attr.share(f))
        .sum();
    if callees < 20.0 {
        run.failures.push(format!(
            "node --cpu-prof gives the six callees only {callees:.1}% of the JS samples: \
             the fixture no longer exercises calls"
        ));
    }
    run.finish(major, "tiny_callees.js");
}

#[test]
fn tiny_callees_same_process_node20() {
    check_tiny_callees(20);
}

#[test]
fn tiny_callees_same_process_node22() {
    check_tiny_callees(22);
}

/// Node 24 runs the callees as Maglev code too, whose epilogue is longer.
#[test]
fn tiny_callees_same_process_node24() {
    check_tiny_callees(24);
}

#[test]
fn tiny_callees_same_process_node26() {
    check_tiny_callees(26);
}

/// baseline_callee.js with optimization off, so that both functions run as
/// baseline (Sparkplug) code: `callee` does about 200 loop iterations for
/// each one of `caller`'s, so at least 95 % of their samples are the
/// callee's. nodeprof names baseline frames by their function slot, like
/// any JS frame, and must give the callee that share. `--cpu-prof`, on the
/// same process, gives the callee about half (node 20 and 26): it charges
/// the rest to `caller`, at the line of the call (printed for
/// docs/benchmarks.md, not asserted: it is V8's, not ours).
fn check_baseline_callee(major: u32, optimization_off: &[&str]) {
    let _lock = serial();
    let dir = scratch_dir();
    let prof_dir = dir.path().join("cpu-prof");
    let prof_arg = s(prof_dir.display());
    let mut options = optimization_off.to_vec();
    options.extend(["--cpu-prof", "--cpu-prof-dir", &prof_arg]);
    let (_run, _out, np) = record_launch(
        dir.path(),
        "baseline",
        &node_major(major),
        &options,
        "js/baseline_callee.js",
        &["4"],
    );
    let (_, url) = fixture_url("js/baseline_callee.js");
    let callee_share = |p: &Profile| {
        let a = Attribution::of(&[p]);
        let count = |name: &str| -> u64 {
            a.per_fn
                .iter()
                .filter(|(f, _)| f.url == url && f.name == name)
                .map(|(_, &n)| n)
                .sum()
        };
        let (callee, caller) = (count("callee"), count("caller"));
        (
            100.0 * callee as f64 / (callee + caller).max(1) as f64,
            callee + caller,
        )
    };
    let (np_share, np_samples) = callee_share(&np);
    let gt = fs::read_dir(&prof_dir)
        .expect("node --cpu-prof wrote its directory")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "cpuprofile"))
        .expect("node's cpuprofile");
    let gt = Profile::new(&serde_json::from_str(&fs::read_to_string(gt).unwrap()).unwrap());
    let (gt_share, gt_samples) = callee_share(&gt);
    eprintln!(
        "node {major} baseline code: callee's share of callee + caller: nodeprof {np_share:.1} % \
         ({np_samples} samples), --cpu-prof on the same process {gt_share:.1} % ({gt_samples})"
    );
    assert!(
        np_samples >= 1000,
        "node {major}: only {np_samples} samples in callee and caller"
    );
    assert!(
        np_share >= 95.0,
        "node {major}: nodeprof gives the callee {np_share:.1} % of callee + caller in baseline \
         code, where it runs at least 95 % of the instructions"
    );
}

#[test]
fn baseline_callee_node20() {
    check_baseline_callee(20, &["--sparkplug", "--no-opt"]);
}

#[test]
fn baseline_callee_node26() {
    check_baseline_callee(26, &["--no-maglev", "--no-turbofan"]);
}

/// libc_paths.js (fs.statSync, JSON.stringify, Buffer copies: time in libc
/// functions built without frame pointers and in the kernel) runs under
/// `node --cpu-prof` with nodeprof attached: each function's share, native
/// leaves counted for the JS function that called them, agrees within 2
/// points. A stack cut at a libc leaf would lose its JS frame, and its
/// sample would count for no function.
fn check_libc_paths(major: u32) {
    let _lock = serial();
    same_process(major, "js/libc_paths.js", "4", &[]).finish(major, "libc_paths.js");
}

#[test]
fn libc_paths_same_process_node18() {
    check_libc_paths(18);
}

#[test]
fn libc_paths_same_process_node20() {
    check_libc_paths(20);
}

#[test]
fn libc_paths_same_process_node22() {
    check_libc_paths(22);
}

#[test]
fn libc_paths_same_process_node24() {
    check_libc_paths(24);
}

#[test]
fn libc_paths_same_process_node26() {
    check_libc_paths(26);
}
