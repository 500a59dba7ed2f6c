//! `nodeprof snapshot` against real node processes started with no flag:
//! busy-looping and idle targets on node 18–26 (the inspector defers
//! snapshots to the event loop from node 22 on), class counts against the
//! snapshot the target writes of itself, the inspector closed afterwards,
//! a target in its own network namespace, and every failure as one line with
//! the target running and no file left.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nodeprof_tests::*;
use serde_json::Value;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const SCRIPT: &str = "capture/target.js";

/// A fixture started and ready: its pid and HTTP port.
struct Target {
    proc: Proc,
    port: u16,
}

fn start(node: &Path, args: &[&str], dir: &Path) -> Target {
    let proc = Proc::node(node, &[], SCRIPT, args, dir);
    let port = proc.wait_for_line("listening ", READY_TIMEOUT)["listening ".len()..]
        .parse()
        .unwrap();
    proc.wait_for_line("ready", READY_TIMEOUT);
    Target { proc, port }
}

fn snapshot(pid: u32, out: &Path, extra: &[&str], dir: &Path) -> Run {
    let mut args = vec![
        "snapshot".to_string(),
        "-q".into(),
        "-p".into(),
        pid.to_string(),
        "-o".into(),
        out.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    run_nodeprof(&args, dir, RUN_TIMEOUT)
}

/// Objects per class, as `nodeprof heap summary --json` counts them.
fn class_counts(file: &Path, dir: &Path) -> BTreeMap<String, u64> {
    let run = run_nodeprof(
        &[
            "heap",
            "summary",
            file.to_str().unwrap(),
            "--top",
            "0",
            "--json",
            "-q",
        ],
        dir,
        RUN_TIMEOUT,
    );
    run.assert_success();
    let v: Value = serde_json::from_str(&run.stdout).expect("summary JSON");
    v["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["count"].as_f64().unwrap() as u64,
            )
        })
        .collect()
}

/// The inspector nodeprof opened is gone: the target listens on its HTTP
/// port only (the close may take a moment after nodeprof returns).
fn assert_only_http_listening(target: &Target) {
    let ok = wait_until(Duration::from_secs(5), || {
        listening_ports(target.proc.pid) == [target.port]
    });
    assert!(
        ok,
        "target listens on {:?}, expected only its HTTP port {}",
        listening_ports(target.proc.pid),
        target.port
    );
}

fn assert_running(pid: u32) {
    let state = proc_state(pid);
    assert!(
        matches!(state, Some('R' | 'S')),
        "target {pid} is {state:?}, expected running or sleeping"
    );
}

/// Still spinning: CPU time keeps growing (the machine's CPUs are shared,
/// so only a little is required).
fn assert_busy(pid: u32) {
    let before = cpu_time_ns(pid);
    std::thread::sleep(Duration::from_secs(1));
    let spun = cpu_time_ns(pid) - before;
    assert!(
        spun > 50_000_000,
        "the busy target stopped spinning: {spun} ns of CPU in 1 s"
    );
}

/// A snapshot of an idle server and of a target stuck in `while (true)`, on
/// one node major: the file parses, the classes match the target's own
/// `v8.writeHeapSnapshot()`, the inspector is closed again, the targets keep
/// running (and the server serving).
fn snapshots_of_idle_and_busy_targets(major: u32) {
    let _lock = serial();
    let node = node_major(major);
    let dir = scratch_dir();
    let own = dir.path().join("own.heapsnapshot");
    let idle = start(
        &node,
        &["idle", "--self-snapshot", own.to_str().unwrap()],
        dir.path(),
    );
    let out = dir.path().join("idle.heapsnapshot");
    let run = snapshot(idle.proc.pid, &out, &[], dir.path());
    run.assert_success();
    assert!(
        run.stdout.contains("started with SIGUSR1") && run.stdout.contains("closed again"),
        "node {major}: {}",
        run.stdout
    );
    let mode = std::fs::metadata(&out).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let ours = class_counts(&out, dir.path());
    let theirs = class_counts(&own, dir.path());
    assert_eq!(ours.get("CaptureLeak"), Some(&3000), "node {major}");
    assert_eq!(ours.get("CaptureOther"), Some(&1200), "node {major}");
    // Every JS class of some size: within 10 % (+10) of the target's own count;
    // the inspector session itself adds a few objects.
    for (name, &count) in theirs
        .iter()
        .filter(|(n, &c)| c >= 100 && !n.starts_with('(') && !n.starts_with("system /"))
    {
        let got = ours.get(name).copied().unwrap_or(0);
        assert!(
            got.abs_diff(count) <= count / 10 + 10,
            "node {major}: {name}: {got} objects in nodeprof's snapshot, {count} in the target's own"
        );
    }
    assert_only_http_listening(&idle);
    assert_eq!(http_get(idle.port).as_deref(), Some("ok\n"), "node {major}");

    let busy = start(&node, &["busy"], dir.path());
    std::thread::sleep(Duration::from_millis(300));
    let out = dir.path().join("busy.heapsnapshot");
    let run = snapshot(busy.proc.pid, &out, &[], dir.path());
    run.assert_success();
    let ours = class_counts(&out, dir.path());
    assert_eq!(ours.get("CaptureLeak"), Some(&3000), "node {major}");
    assert_only_http_listening(&busy);
    assert_running(busy.proc.pid);
    assert_busy(busy.proc.pid);
}

#[test]
fn snapshots_of_idle_and_busy_targets_node18() {
    snapshots_of_idle_and_busy_targets(18);
}

#[test]
fn snapshots_of_idle_and_busy_targets_node20() {
    snapshots_of_idle_and_busy_targets(20);
}

#[test]
fn snapshots_of_idle_and_busy_targets_node22() {
    snapshots_of_idle_and_busy_targets(22);
}

#[test]
fn snapshots_of_idle_and_busy_targets_node24() {
    snapshots_of_idle_and_busy_targets(24);
}

#[test]
fn snapshots_of_idle_and_busy_targets_node26() {
    snapshots_of_idle_and_busy_targets(26);
}

/// A target started with --inspect: nodeprof uses that inspector and leaves it open.
#[test]
fn an_inspector_already_listening_is_used_and_left_open() {
    let _lock = serial();
    let dir = scratch_dir();
    let proc = Proc::node(
        &node_major(24),
        &["--inspect=127.0.0.1:0"],
        SCRIPT,
        &["idle"],
        dir.path(),
    );
    let port: u16 = proc.wait_for_line("listening ", READY_TIMEOUT)["listening ".len()..]
        .parse()
        .unwrap();
    proc.wait_for_line("ready", READY_TIMEOUT);
    let before = listening_ports(proc.pid);
    assert_eq!(before.len(), 2, "HTTP and inspector ports: {before:?}");
    let out = dir.path().join("s.heapsnapshot");
    let run = snapshot(proc.pid, &out, &[], dir.path());
    run.assert_success();
    assert!(run.stdout.contains("already listening"), "{}", run.stdout);
    assert_eq!(listening_ports(proc.pid), before);
    assert_eq!(http_get(port).as_deref(), Some("ok\n"));
    assert_eq!(
        class_counts(&out, dir.path()).get("CaptureLeak"),
        Some(&3000)
    );
}

/// A target in its own network, pid and mount namespaces (a container): its
/// inspector listens on the namespace's loopback only; the file lands on the
/// host path given.
#[test]
fn a_target_in_its_own_network_namespace() {
    let _lock = serial();
    let dir = scratch_dir();
    let script = format!(
        "ip link set lo up && exec {} {} idle",
        node_major(20).display(),
        fixture(SCRIPT).display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--net",
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
    let port: u16 = ns.wait_for_line("listening ", READY_TIMEOUT)["listening ".len()..]
        .parse()
        .unwrap();
    ns.wait_for_line("ready", READY_TIMEOUT);
    let node: Vec<u32> = descendants(ns.pid)
        .into_iter()
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim_end() == "node")
        })
        .collect();
    assert_eq!(node.len(), 1, "node under unshare: {node:?}");
    let pid = node[0];
    // The setup is right: the port is not reachable from the host's namespace.
    assert_eq!(http_get(port), None, "port {port} reachable from the host");
    let out = dir.path().join("ns.heapsnapshot");
    let run = snapshot(pid, &out, &[], dir.path());
    run.assert_success();
    assert!(run.stdout.contains("closed again"), "{}", run.stdout);
    assert_eq!(
        class_counts(&out, dir.path()).get("CaptureLeak"),
        Some(&3000)
    );
    assert!(wait_until(Duration::from_secs(5), || listening_ports(pid) == [port]));
}

#[test]
fn bad_targets_are_one_line_errors() {
    let _lock = serial();
    let dir = scratch_dir();
    let out = dir.path().join("x.heapsnapshot");
    // A dead pid.
    let mut dead = Proc::spawn(Command::new("true"));
    dead.wait(Duration::from_secs(5));
    snapshot(dead.pid, &out, &[], dir.path()).assert_error("no such process");
    // Not node: nodeprof must not send it SIGUSR1 (it would die of it).
    let mut sleep = Command::new("sleep");
    sleep.arg("60");
    let sleep = Proc::spawn(sleep);
    snapshot(sleep.pid, &out, &[], dir.path()).assert_error("not Node.js");
    assert!(sleep.is_running());
    // node --disable-sigusr1: SIGUSR1 would kill it; nodeprof says so and leaves it alone.
    let proc = Proc::node(
        &node_major(24),
        &["--disable-sigusr1"],
        SCRIPT,
        &["idle"],
        dir.path(),
    );
    let port: u16 = proc.wait_for_line("listening ", READY_TIMEOUT)["listening ".len()..]
        .parse()
        .unwrap();
    proc.wait_for_line("ready", READY_TIMEOUT);
    snapshot(proc.pid, &out, &[], dir.path()).assert_error("--disable-sigusr1");
    assert_eq!(http_get(port).as_deref(), Some("ok\n"));
    let left: Vec<String> = dir_entries(dir.path())
        .into_iter()
        .filter(|n| n.contains("heapsnapshot"))
        .collect();
    assert_eq!(left, Vec::<String>::new());
}

#[test]
fn bad_output_paths_are_one_line_errors() {
    let _lock = serial();
    let dir = scratch_dir();
    let target = start(&node_major(20), &["idle"], dir.path());
    let pid = target.proc.pid;
    snapshot(pid, Path::new("/proc/x.heapsnapshot"), &[], dir.path()).assert_error("cannot create");
    let existing = dir.path().join("exists.heapsnapshot");
    std::fs::write(&existing, "keep").unwrap();
    snapshot(pid, &existing, &[], dir.path()).assert_error("already exists");
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep");
    // A series: the second name taken is refused before the first snapshot.
    let series = dir.path().join("series.heapsnapshot");
    let second = dir.path().join("series-2.heapsnapshot");
    std::fs::write(&second, "keep").unwrap();
    snapshot(
        pid,
        &series,
        &["--count", "2", "--interval", "1s"],
        dir.path(),
    )
    .assert_error(&format!("{} already exists", second.display()));
    assert!(!dir.path().join("series-1.heapsnapshot").exists());
    assert_eq!(std::fs::read_to_string(&second).unwrap(), "keep");
    // No inspector was started for a path that fails at once.
    assert_eq!(listening_ports(pid), [target.port]);
    // --interval means nothing without --count.
    let lone = snapshot(pid, &series, &["--interval", "1s"], dir.path());
    assert_eq!(lone.status.code(), Some(2), "{}", lone.stderr);
    assert!(lone.stderr.contains("--count"), "{}", lone.stderr);
}

/// A 1 MiB file system: refused up front with the heap size; with --force
/// the write fails when the disk fills, and no partial file remains.
#[test]
fn a_full_disk_leaves_no_partial_file() {
    let _lock = serial();
    let dir = scratch_dir();
    let target = start(&node_major(24), &["idle"], dir.path());
    let small = SmallTmpfs::mount(&dir.path().join("small"), "1m");
    let out = small.dir.join("s.heapsnapshot");
    let run = snapshot(target.proc.pid, &out, &[], dir.path());
    run.assert_error("disk");
    assert!(run.stderr.contains("heap of process"), "{}", run.stderr);
    assert_eq!(dir_entries(&small.dir), Vec::<String>::new());
    assert_only_http_listening(&target);

    let run = snapshot(target.proc.pid, &out, &["--force"], dir.path());
    run.assert_error("disk is full");
    assert_eq!(dir_entries(&small.dir), Vec::<String>::new());
    assert_only_http_listening(&target);
    assert_eq!(http_get(target.port).as_deref(), Some("ok\n"));
}

/// Ctrl-C while the snapshot streams: one line, no file, the inspector
/// closed, the target serving.
#[test]
fn sigint_during_a_snapshot_leaves_no_file() {
    let _lock = serial();
    let dir = scratch_dir();
    let target = start(&node_major(24), &["idle", "--heap-mb", "150"], dir.path());
    let out = dir.path().join("int.heapsnapshot");
    let args: Vec<String> = ["snapshot", "-q", "-p", &target.proc.pid.to_string(), "-o"]
        .iter()
        .map(|s| s.to_string())
        .chain([out.display().to_string()])
        .collect();
    let np = spawn_nodeprof(&args, dir.path());
    // Interrupt once chunks are being written: to a file nodeprof holds
    // open in the directory, unnamed (O_TMPFILE) until complete.
    let started = wait_until(Duration::from_secs(60), || {
        bytes_being_written(np.proc.pid, dir.path()).is_some_and(|n| n > 1 << 20)
    });
    assert!(
        started,
        "the snapshot never started: {:?}",
        dir_entries(dir.path())
    );
    let t0 = Instant::now();
    send_signal(np.proc.pid, libc::SIGINT);
    let run = np.finish(RUN_TIMEOUT);
    run.assert_error("interrupted");
    eprintln!("nodeprof exited {:?} after SIGINT", t0.elapsed());
    let left: Vec<String> = dir_entries(dir.path())
        .into_iter()
        .filter(|n| n.contains("heapsnapshot"))
        .collect();
    assert_eq!(left, Vec::<String>::new());
    assert_only_http_listening(&target);
    assert_eq!(http_get(target.port).as_deref(), Some("ok\n"));
}

/// SIGINT while the inspector nodeprof asked for is still starting: nodeprof
/// waits for it (within its usual 5 s) and closes it, instead of leaving it
/// to open after nodeprof has gone. The fixture's own SIGUSR1 listener opens
/// the inspector 1.5 s late, which makes the window wide enough to hit.
#[test]
fn sigint_while_the_inspector_starts_leaves_it_closed() {
    let _lock = serial();
    let dir = scratch_dir();
    let target = start(
        &node_major(24),
        &["idle", "--slow-inspector", "1500"],
        dir.path(),
    );
    let out = dir.path().join("early.heapsnapshot");
    let args: Vec<String> = ["snapshot", "-q", "-p", &target.proc.pid.to_string(), "-o"]
        .iter()
        .map(|s| s.to_string())
        .chain([out.display().to_string()])
        .collect();
    let np = spawn_nodeprof(&args, dir.path());
    target.proc.wait_for_line("sigusr1", READY_TIMEOUT);
    send_signal(np.proc.pid, libc::SIGINT);
    let run = np.finish(RUN_TIMEOUT);
    run.assert_error("interrupted");
    assert!(!out.exists());
    // Past the moment the inspector opened: it must be closed again.
    target.proc.wait_for_line("inspector-open", READY_TIMEOUT);
    std::thread::sleep(Duration::from_millis(500));
    assert_only_http_listening(&target);
    assert_eq!(http_get(target.port).as_deref(), Some("ok\n"));
}

/// `--count 2 --interval 3s` of a leaking server: two numbered files, and
/// the diff printed after them names the growing class first.
#[test]
fn two_snapshots_and_what_grew_between_them() {
    let _lock = serial();
    let dir = scratch_dir();
    let target = start(
        &node_major(24),
        &["idle", "--leak-per-s", "20000"],
        dir.path(),
    );
    let out = dir.path().join("leak.heapsnapshot");
    let run = snapshot(
        target.proc.pid,
        &out,
        &["--count", "2", "--interval", "3s"],
        dir.path(),
    );
    run.assert_success();
    for n in [1, 2] {
        let file = dir.path().join(format!("leak-{n}.heapsnapshot"));
        assert!(file.exists(), "{} missing:\n{}", file.display(), run.stdout);
    }
    assert!(!out.exists(), "an unnumbered file was written");
    let grew = run
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("What grew"))
        .nth(1)
        .unwrap_or_else(|| panic!("no diff in:\n{}", run.stdout));
    assert!(
        grew.starts_with("CaptureGrowth +"),
        "the growing class does not top the diff: {grew}\n{}",
        run.stdout
    );
    assert_running(target.proc.pid);
    assert_only_http_listening(&target);
}

/// A series whose target dies after the first snapshot: one line saying
/// which snapshot failed and which file is kept (and it is).
#[test]
fn a_failed_series_names_the_files_kept() {
    let _lock = serial();
    let dir = scratch_dir();
    let target = start(&node_major(24), &["idle"], dir.path());
    let out = dir.path().join("dies.heapsnapshot");
    let first = dir.path().join("dies-1.heapsnapshot");
    let args: Vec<String> = ["snapshot", "-q", "-p", &target.proc.pid.to_string(), "-o"]
        .iter()
        .map(|s| s.to_string())
        .chain([
            out.display().to_string(),
            "--count".into(),
            "2".into(),
            "--interval".into(),
            "20s".into(),
        ])
        .collect();
    let nodeprof = spawn_nodeprof(&args, dir.path());
    assert!(
        wait_until(RUN_TIMEOUT, || first.exists()),
        "no first snapshot"
    );
    target.proc.signal(libc::SIGKILL);
    let run = nodeprof.finish(RUN_TIMEOUT);
    run.assert_error("snapshot 2 of 2: ");
    assert!(
        run.stderr
            .contains(&format!("written and kept: {}", first.display())),
        "{}",
        run.stderr
    );
    assert!(first.exists());
}

/// `--worker 2` of a process whose worker 1 exited before: worker 2's heap
/// (its own class, neither worker 1's nor the main thread's), though the
/// inspector numbers it 1; a worker that does not exist is one line naming
/// the thread ids that do.
fn snapshot_of_a_worker(major: u32) {
    let _lock = serial();
    let dir = scratch_dir();
    let target = start(
        &node_major(major),
        &["idle", "--workers", "2", "--exit-first-worker"],
        dir.path(),
    );
    let out = dir.path().join("worker.heapsnapshot");
    let run = snapshot(target.proc.pid, &out, &["--worker", "2"], dir.path());
    run.assert_success();
    let counts = class_counts(&out, dir.path());
    assert_eq!(
        counts.get("CaptureWorker2"),
        Some(&700),
        "node {major}: worker 2's class in its snapshot: {counts:?}"
    );
    assert_eq!(counts.get("CaptureWorkerOnly"), Some(&2500), "node {major}");
    assert!(
        !counts.contains_key("CaptureWorker1") && !counts.contains_key("CaptureLeak"),
        "node {major}: another thread's class in worker 2's snapshot: {counts:?}"
    );
    for missing in ["1", "7"] {
        let none = dir.path().join(format!("none-{missing}.heapsnapshot"));
        snapshot(target.proc.pid, &none, &["--worker", missing], dir.path()).assert_error(
            &format!("no worker thread {missing} (its threadId); the process has worker threads 2"),
        );
        assert!(!none.exists());
    }
    assert_running(target.proc.pid);
    assert_only_http_listening(&target);
}

/// A worker spinning in `while (true)`: its snapshot still comes (node 22+
/// defers it to the worker's event loop, which a pause of its JS runs), and
/// the worker spins on afterwards.
fn snapshot_of_a_busy_worker(major: u32) {
    let _lock = serial();
    let dir = scratch_dir();
    let target = start(
        &node_major(major),
        &["idle", "--workers", "1", "--busy-workers"],
        dir.path(),
    );
    let out = dir.path().join("busy-worker.heapsnapshot");
    let run = snapshot(target.proc.pid, &out, &["--worker", "1"], dir.path());
    run.assert_success();
    let counts = class_counts(&out, dir.path());
    assert_eq!(
        counts.get("CaptureWorker1"),
        Some(&700),
        "node {major}: the busy worker's class in its snapshot: {counts:?}"
    );
    assert_running(target.proc.pid);
    assert_only_http_listening(&target);
    // A worker left paused would leave the process idle.
    assert_busy(target.proc.pid);
}

#[test]
fn snapshot_of_a_busy_worker_node20() {
    snapshot_of_a_busy_worker(20);
}

#[test]
fn snapshot_of_a_busy_worker_node24() {
    snapshot_of_a_busy_worker(24);
}

#[test]
fn snapshot_of_a_worker_node18() {
    snapshot_of_a_worker(18);
}

#[test]
fn snapshot_of_a_worker_node20() {
    snapshot_of_a_worker(20);
}

#[test]
fn snapshot_of_a_worker_node22() {
    snapshot_of_a_worker(22);
}

#[test]
fn snapshot_of_a_worker_node24() {
    snapshot_of_a_worker(24);
}

#[test]
fn snapshot_of_a_worker_node26() {
    snapshot_of_a_worker(26);
}
