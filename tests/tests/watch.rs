//! `nodeprof watch` against node processes that cross thresholds on a
//! schedule (`fixtures/watch/schedule.js`): exactly the expected captures
//! (profiles, dumps, snapshots, cores, commands), none for a flapping
//! process, the limit and the disk budget hold, a loop blocked for good is
//! caught, processes started later are picked up, SIGTERM never leaves a
//! target stopped.
//!
//! Thresholds are low (CPU 15 % of a core) because the test machine is
//! shared: a spinning fixture may get well under a whole core, and an idle
//! one stays near 0 %.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nodeprof_tests::*;
use serde_json::Value;

fn node() -> PathBuf {
    node_major(22)
}

fn schedule(mode: &str, seconds: u32, extra: &[&str], dir: &Path) -> Proc {
    let mut args = vec![mode.to_string(), seconds.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = Proc::node(&node(), &[], "watch/schedule.js", &args, dir);
    p.wait_for_line("ready", Duration::from_secs(20));
    p
}

/// `nodeprof watch --json --out DIR ARGS…`.
fn watch_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["watch", "--json", "--out"].map(String::from).to_vec();
    args.push(out.display().to_string());
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// The JSON lines of a run, checked to be JSON.
fn lines(run: &Run) -> Vec<Value> {
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn of_type<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["type"] == kind).collect()
}

fn files_of(capture: &Value) -> Vec<PathBuf> {
    capture["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| PathBuf::from(f.as_str().unwrap()))
        .collect()
}

/// The prefix of a profile capture's files (`…/cpu-PID-TIME`).
fn profile_prefix(capture: &Value) -> PathBuf {
    let cpuprofile = files_of(capture)
        .into_iter()
        .find(|f| f.extension().is_some_and(|e| e == "cpuprofile"))
        .expect("a .cpuprofile");
    cpuprofile.with_extension("")
}

fn crossing_readings(lines: &[Value], pid: u32, over: f64) -> (usize, usize) {
    let cpus: Vec<f64> = of_type(lines, "reading")
        .iter()
        .filter(|l| l["reading"]["pid"] == pid)
        .filter_map(|l| l["reading"]["cpu_percent"].as_f64())
        .collect();
    let crossing = cpus.iter().filter(|&&c| c >= over).count();
    (crossing, cpus.len() - crossing)
}

#[test]
fn cpu_over_threshold_is_profiled_once_naming_the_hot_function() {
    let _serial = serial();
    let dir = scratch_dir();
    // Long enough for the capture, its cool-down and two more checks on a
    // loaded machine.
    let hot = schedule("hot", 20, &[], dir.path());
    let idle = schedule("idle", 20, &[], dir.path());
    let (hot_pid, idle_pid) = (hot.pid.to_string(), idle.pid.to_string());
    let args = watch_args(
        dir.path(),
        &[
            "-p",
            &hot_pid,
            "-p",
            &idle_pid,
            "--cpu",
            "15",
            "--cpu-count",
            "2",
            "--interval",
            "300ms",
            "--profile-duration",
            "2s",
            "--limit",
            "1/hour",
            "--cooldown",
            "300ms",
            "--readings",
        ],
    );
    let run = run_nodeprof(&args, dir.path(), Duration::from_secs(60));
    run.assert_success();
    let lines = lines(&run);
    let captures = of_type(&lines, "capture");
    assert_eq!(captures.len(), 1, "{}", run.stdout);
    let c = captures[0];
    assert_eq!(c["pid"], hot.pid, "{c}");
    assert_eq!(c["trigger"], "cpu");
    assert_eq!(c["action"], "profile");
    assert!(
        c["why"]
            .as_str()
            .unwrap()
            .contains("on 2 consecutive checks"),
        "{c}"
    );
    assert!(c["bytes"].as_u64().unwrap() > 0);
    let files = files_of(c);
    assert_eq!(files.len(), 3, "{c}");
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with(&format!("cpu-{}-", hot.pid)), "{name}");
        assert!(f.exists(), "{}", f.display());
    }
    let outputs = Outputs::load(&profile_prefix(c));
    let total = outputs.sample_count() as u64;
    let hot_samples = outputs.samples_with_frame(|f| f.contains("burnCpu"));
    assert!(
        total > 0 && hot_samples * 2 > total,
        "burnCpu in {hot_samples} of {total} samples:\n{}",
        outputs.folded_excerpt()
    );
    assert!(c["detail"].as_str().unwrap().contains("burnCpu"), "{c}");
    // The idle process was read, never over the threshold.
    let (over, under) = crossing_readings(&lines, idle.pid, 15.0);
    assert!(over == 0 && under >= 5, "idle: {over} over, {under} under");
    // Once its limit (1/hour) is reached, the hot process is said to be over it once.
    assert_eq!(of_type(&lines, "limited").len(), 1, "{}", run.stdout);
    assert_eq!(of_type(&lines, "end").len(), 1);
}

#[test]
fn a_flapping_process_triggers_nothing() {
    let _serial = serial();
    let dir = scratch_dir();
    // 500 ms busy, 700 ms idle; checks every 300 ms: a busy spell touches at
    // most 3 checks in a row, and each idle spell holds a whole check.
    let flap = schedule("flap", 10, &[], dir.path());
    let pid = flap.pid.to_string();
    let args = watch_args(
        dir.path(),
        &[
            "-p",
            &pid,
            "--cpu",
            "15",
            "--cpu-count",
            "4",
            "--interval",
            "300ms",
            "--cpu-action",
            "command",
            "--command",
            "true",
            "--readings",
        ],
    );
    let run = run_nodeprof(&args, dir.path(), Duration::from_secs(60));
    run.assert_success();
    let lines = lines(&run);
    assert!(of_type(&lines, "capture").is_empty(), "{}", run.stdout);
    // It did cross, often: only the resets kept it from counting to 4.
    let (over, under) = crossing_readings(&lines, flap.pid, 15.0);
    assert!(
        over >= 6 && under >= 6,
        "{over} checks over, {under} under:\n{}",
        run.stdout
    );
}

#[test]
fn a_blocked_turn_is_dumped_and_profiled_naming_the_blocking_function() {
    let _serial = serial();
    let dir = scratch_dir();
    // Every 2 s, one 600 ms turn in blockFor; otherwise idle.
    let blocks = schedule("blocks", 14, &[], dir.path());
    let pid = blocks.pid.to_string();
    let args = watch_args(
        dir.path(),
        &[
            "-p",
            &pid,
            "--loop-blocked",
            "300ms",
            "--profile-duration",
            "3s",
            "--limit",
            "1/hour",
            "--readings",
        ],
    );
    let run = run_nodeprof(&args, dir.path(), Duration::from_secs(90));
    run.assert_success();
    let lines = lines(&run);
    let captures = of_type(&lines, "capture");
    // The default for a blocked loop: dump, then profile.
    let actions: Vec<&str> = captures
        .iter()
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["dump", "profile"], "{}", run.stdout);
    for c in &captures {
        assert_eq!(c["trigger"], "loop-blocked");
        let turn = c["reading"]["longest_turn_ms"].as_f64().unwrap();
        assert!((300.0..2000.0).contains(&turn), "longest turn {turn} ms");
    }
    // The dump of every thread is written. A 600 ms turn is usually over by
    // the time it is taken (so it shows the loop idle again); a loop blocked
    // for good is named in it (a_loop_blocked_for_good_before_watching_is_caught).
    let dump = captures[0];
    let text = std::fs::read_to_string(&files_of(dump)[0]).unwrap();
    assert!(text.contains("main thread"), "{text}");
    assert!(dump["detail"]
        .as_str()
        .unwrap()
        .starts_with("main thread: "));
    // The turns in the profile name the function that blocked.
    let profile = captures[1];
    let detail = profile["detail"].as_str().unwrap();
    assert!(detail.contains("in blockFor"), "{detail}");
    let outputs = Outputs::load(&profile_prefix(profile));
    assert!(
        outputs.samples_with_frame(|f| f.contains("blockFor")) > 0,
        "{}",
        outputs.folded_excerpt()
    );
    // Idle between blocks: utilization well under 1 on some checks.
    let low = of_type(&lines, "reading")
        .iter()
        .filter(|l| {
            l["reading"]["loop_utilization"]
                .as_f64()
                .is_some_and(|u| u < 0.3)
        })
        .count();
    assert!(low >= 3, "{}", run.stdout);
}

#[test]
fn a_loop_blocked_for_good_before_watching_is_caught() {
    let _serial = serial();
    let dir = scratch_dir();
    let stuck = schedule("stuck", 15, &[], dir.path());
    // Its own lag monitor printed until the loop blocked; from then on an
    // in-process monitor never runs again.
    stuck.wait_for_line("blocking", Duration::from_secs(10));
    let pid = stuck.pid.to_string();
    let args = watch_args(
        dir.path(),
        &[
            "-p",
            &pid,
            "--loop-blocked",
            "500ms",
            "--profile-duration",
            "2s",
            "--limit",
            "1/hour",
        ],
    );
    let mut watch = spawn_nodeprof(&args, dir.path());
    assert!(
        wait_until(Duration::from_secs(40), || watch
            .stdout_so_far()
            .contains("\"type\":\"capture\"")),
        "no capture: {}",
        watch.stdout_so_far()
    );
    watch.proc.signal(libc::SIGTERM);
    let _ = watch.proc.wait(Duration::from_secs(30));
    let run = watch.finish(Duration::from_secs(1));
    run.assert_success();
    let lines = lines(&run);
    let captures = of_type(&lines, "capture");
    assert_eq!(captures.len(), 2, "dump and profile: {}", run.stdout);
    let (dump, c) = (captures[0], captures[1]);
    assert_eq!(dump["action"], "dump");
    let verdict = dump["detail"].as_str().unwrap();
    assert!(verdict.contains("blockForever"), "{verdict}");
    assert_eq!(c["action"], "profile");
    assert_eq!(c["trigger"], "loop-blocked");
    assert!(c["reading"]["longest_turn_ms"].as_f64().unwrap() >= 500.0);
    assert_eq!(c["reading"]["loop_utilization"], 1.0);
    // The profile's window lies inside the one turn: cut at both ends.
    let detail = c["detail"].as_str().unwrap();
    assert!(
        detail.contains("(already running at the start) (still running at the end)"),
        "{detail}"
    );
    let outputs = Outputs::load(&profile_prefix(c));
    assert!(
        outputs.samples_with_frame(|f| f.contains("blockForever")) * 2
            > outputs.sample_count() as u64,
        "{}",
        outputs.folded_excerpt()
    );
}

#[test]
fn the_limit_holds_over_minutes_of_crossing() {
    let _serial = serial();
    let dir = scratch_dir();
    let hot = schedule("hot", 14, &[], dir.path());
    let pid = hot.pid.to_string();
    // Time compressed: checks every 200 ms, a cool-down of 300 ms, at most 2
    // captures per 4 s (3/hour at a 900× pace).
    let args = watch_args(
        dir.path(),
        &[
            "-p",
            &pid,
            "--cpu",
            "15",
            "--cpu-count",
            "2",
            "--interval",
            "200ms",
            "--cooldown",
            "300ms",
            "--limit",
            "2/4s",
            "--cpu-action",
            "command",
            "--command",
            "echo $NODEPROF_PID $NODEPROF_TRIGGER",
        ],
    );
    let run = run_nodeprof(&args, dir.path(), Duration::from_secs(60));
    run.assert_success();
    let lines = lines(&run);
    let times: Vec<f64> = of_type(&lines, "capture")
        .iter()
        .map(|c| c["at_s"].as_f64().unwrap())
        .collect();
    for (i, &t) in times.iter().enumerate() {
        let within = times[i..].iter().filter(|&&u| u < t + 4.0).count();
        assert!(
            within <= 2,
            "{within} captures within 4 s of {t}: {times:?}"
        );
    }
    // Without the limit it would capture every ~0.7 s; with it, it resumes
    // each time the limit lifts.
    assert!(times.len() >= 4, "{times:?}\n{}", run.stdout);
    assert!(!of_type(&lines, "limited").is_empty(), "{}", run.stdout);
    let log = files_of(of_type(&lines, "capture")[0])[0].clone();
    assert_eq!(
        std::fs::read_to_string(&log).unwrap().trim(),
        format!("{} cpu", hot.pid)
    );
}

#[test]
fn nothing_is_written_once_the_disk_budget_is_spent() {
    let _serial = serial();
    let dir = scratch_dir();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let hot = schedule("hot", 12, &[], dir.path());
    let pid = hot.pid.to_string();
    let args = watch_args(
        &out,
        &[
            "-p",
            &pid,
            "--cpu",
            "15",
            "--cpu-count",
            "2",
            "--interval",
            "200ms",
            "--cooldown",
            "200ms",
            "--limit",
            "100/hour",
            "--profile-duration",
            "1s",
            "--max-disk",
            "10K",
        ],
    );
    let run = run_nodeprof(&args, dir.path(), Duration::from_secs(60));
    run.assert_success();
    let lines = lines(&run);
    // The first profile (a flame graph alone is over 10 KiB) spends the budget.
    let captures = of_type(&lines, "capture");
    assert_eq!(captures.len(), 1, "{}", run.stdout);
    let disk = of_type(&lines, "disk");
    assert_eq!(disk.len(), 1, "said once: {}", run.stdout);
    assert_eq!(disk[0]["state"], "budget-spent");
    let mut written: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    written.sort();
    let mut expected = files_of(captures[0]);
    expected.sort();
    assert_eq!(written, expected);
}

#[test]
fn processes_started_after_watch_are_picked_up() {
    let _serial = serial();
    let dir = scratch_dir();
    let marker = format!("watch-test-{}", std::process::id());
    let args = watch_args(
        dir.path(),
        &[
            "--name",
            &marker,
            "--cpu",
            "15",
            "--cpu-count",
            "2",
            "--interval",
            "300ms",
            "--cpu-action",
            "command",
            "--command",
            "true",
            "--limit",
            "1/hour",
        ],
    );
    let watch = spawn_nodeprof(&args, dir.path());
    // Attached: its eBPF programs are loaded, and its first scan (right
    // after) found nothing; the processes below start after it.
    assert!(wait_until(Duration::from_secs(20), || !bpf_prog_ids(
        watch.proc.pid
    )
    .is_empty()));
    std::thread::sleep(Duration::from_millis(500));
    // Not matching the name: never watched.
    let other = schedule("hot", 8, &[], dir.path());
    // A master that forks a hot worker 1.5 s later, both with the marker.
    let master = schedule("cluster", 8, &[&marker], dir.path());
    let worker: u32 = master
        .wait_for_line("worker", Duration::from_secs(10))
        .trim_start_matches("worker ")
        .parse()
        .unwrap();
    let run = watch.finish(Duration::from_secs(60));
    run.assert_success();
    let lines = lines(&run);
    let watched: Vec<u64> = of_type(&lines, "watch")
        .iter()
        .map(|l| l["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(
        watched,
        [master.pid as u64, worker as u64],
        "{}",
        run.stdout
    );
    let captures = of_type(&lines, "capture");
    assert_eq!(captures.len(), 1, "{}", run.stdout);
    assert_eq!(captures[0]["pid"], worker);
    assert!(!run.stdout.contains(&format!("\"pid\":{}", other.pid)));
    // Both gone: watch ends by itself.
    assert_eq!(of_type(&lines, "exit").len(), 2, "{}", run.stdout);
    assert_eq!(
        of_type(&lines, "end")[0]["reason"],
        "no process left to watch"
    );
}

#[test]
fn heap_over_threshold_runs_the_command_with_pid_and_reason() {
    let _serial = serial();
    let dir = scratch_dir();
    let grow = schedule("grow", 12, &[], dir.path());
    let pid = grow.pid.to_string();
    let args = watch_args(
        dir.path(),
        &[
            "-p",
            &pid,
            "--mem",
            "40M",
            "--mem-of",
            "heap",
            "--mem-count",
            "2",
            "--interval",
            "300ms",
            "--mem-action",
            "command",
            "--limit",
            "1/hour",
            "--command",
            "echo pid=$NODEPROF_PID trigger=$NODEPROF_TRIGGER; echo $NODEPROF_REASON",
        ],
    );
    let run = run_nodeprof(&args, dir.path(), Duration::from_secs(60));
    run.assert_success();
    let lines = lines(&run);
    let captures = of_type(&lines, "capture");
    assert_eq!(captures.len(), 1, "{}", run.stdout);
    let c = captures[0];
    assert_eq!(c["trigger"], "memory");
    assert!(
        c["reading"]["heap_used_bytes"].as_u64().unwrap() >= 40 << 20,
        "{c}"
    );
    let log = std::fs::read_to_string(&files_of(c)[0]).unwrap();
    assert!(
        log.contains(&format!("pid={} trigger=memory", grow.pid)),
        "{log}"
    );
    assert!(
        log.contains("heap ≥ 40.0 MiB on 2 consecutive checks"),
        "{log}"
    );
}

#[test]
fn an_unknown_action_is_one_error_line() {
    let _serial = serial();
    let dir = scratch_dir();
    let idle = schedule("idle", 5, &[], dir.path());
    let pid = idle.pid.to_string();
    let run = run_nodeprof(
        &[
            "watch",
            "-p",
            &pid,
            "--mem",
            "1G",
            "--mem-action",
            "snapshot,heapdump",
        ],
        dir.path(),
        Duration::from_secs(20),
    );
    run.assert_error("--mem-action: unknown action \"heapdump\"");
}

#[test]
fn sigterm_during_a_capture_ends_it_and_writes_it() {
    let _serial = serial();
    let dir = scratch_dir();
    let hot = schedule("hot", 30, &[], dir.path());
    let pid = hot.pid.to_string();
    let args = watch_args(
        dir.path(),
        &[
            "-p",
            &pid,
            "--cpu",
            "15",
            "--cpu-count",
            "2",
            "--interval",
            "300ms",
            "--profile-duration",
            "60s",
        ],
    );
    let mut watch = spawn_nodeprof(&args, dir.path());
    assert!(wait_until(Duration::from_secs(20), || watch
        .stdout_so_far()
        .contains("\"type\":\"watch\"")));
    let monitor = perf_attachments(watch.proc.pid);
    // The capture's sampler: one perf event per CPU more.
    assert!(
        wait_until(Duration::from_secs(30), || perf_attachments(watch.proc.pid)
            >= monitor + online_cpus()),
        "no capture started: {}",
        watch.stdout_so_far()
    );
    std::thread::sleep(Duration::from_secs(1));
    watch.proc.signal(libc::SIGTERM);
    let _ = watch.proc.wait(Duration::from_secs(30));
    let run = watch.finish(Duration::from_secs(1));
    run.assert_success();
    let lines = lines(&run);
    let captures = of_type(&lines, "capture");
    assert_eq!(captures.len(), 1, "{}", run.stdout);
    assert!(
        captures[0]["detail"]
            .as_str()
            .unwrap()
            .contains("stopped early: terminated"),
        "{}",
        run.stdout
    );
    Outputs::load(&profile_prefix(captures[0]));
    assert_eq!(of_type(&lines, "end")[0]["reason"], "terminated");
    assert!(hot.is_running(), "the target runs on");
}

#[test]
fn one_capture_at_a_time_on_the_host() {
    let _serial = serial();
    let dir = scratch_dir();
    // Another watch instance capturing: it holds the host's capture lock.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/nodeprof-capture.lock")
        .expect("open /run/nodeprof-capture.lock");
    // SAFETY: flock on an fd we own; released when it is closed.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&lock),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    assert_eq!(rc, 0, "the capture lock is held by someone else");
    let hot = schedule("hot", 6, &[], dir.path());
    let pid = hot.pid.to_string();
    let args = watch_args(
        dir.path(),
        &[
            "-p",
            &pid,
            "--cpu",
            "15",
            "--cpu-count",
            "2",
            "--interval",
            "300ms",
            "--limit",
            "1/hour",
        ],
    );
    let run = run_nodeprof(&args, dir.path(), Duration::from_secs(60));
    drop(lock);
    run.assert_success();
    let lines = lines(&run);
    assert!(of_type(&lines, "capture").is_empty(), "{}", run.stdout);
    let failed = of_type(&lines, "capture-failed");
    assert_eq!(failed.len(), 1, "{}", run.stdout);
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("another nodeprof is capturing on this host"),
        "{}",
        failed[0]
    );
    let written: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("cpu-"))
        .collect();
    assert!(written.is_empty());
}

/// The port a `grow` fixture serves on.
fn port_of(p: &Proc) -> u16 {
    p.wait_for_line("port", Duration::from_secs(10))
        .trim_start_matches("port ")
        .parse()
        .unwrap()
}

fn mode_of(path: &Path) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions()) & 0o777
}

#[test]
fn heap_growth_is_snapshotted_and_the_diff_of_two_names_the_growing_class() {
    let _serial = serial();
    let dir = scratch_dir();
    // Long-lived: a snapshot stalls it for seconds on a loaded machine, and
    // its own timer would end it meanwhile.
    let grow = schedule("grow", 90, &[], dir.path());
    let port = port_of(&grow);
    let pid = grow.pid.to_string();
    // Memory's default action: a heap snapshot. Two allowed, a short
    // cool-down: the second one comes a few seconds of growth later.
    let args = watch_args(
        dir.path(),
        &[
            "-p",
            &pid,
            "--mem",
            "12M",
            "--mem-of",
            "heap",
            "--mem-count",
            "2",
            "--interval",
            "300ms",
            "--cooldown",
            "1s",
            "--limit",
            "2/hour",
        ],
    );
    let mut watch = spawn_nodeprof(&args, dir.path());
    assert!(
        wait_until(Duration::from_secs(120), || watch
            .stdout_so_far()
            .matches("\"type\":\"capture")
            .count()
            >= 2),
        "not two captures: {}",
        watch.stdout_so_far()
    );
    // The target went on serving.
    assert_eq!(
        http_get(port).as_deref(),
        Some("ok\n"),
        "{}",
        watch.stdout_so_far()
    );
    watch.proc.signal(libc::SIGTERM);
    let _ = watch.proc.wait(Duration::from_secs(30));
    let run = watch.finish(Duration::from_secs(1));
    run.assert_success();
    let lines = lines(&run);
    let captures = of_type(&lines, "capture");
    assert_eq!(captures.len(), 2, "{}", run.stdout);
    let mut snapshots = Vec::new();
    for c in &captures {
        assert_eq!(c["action"], "snapshot", "{c}");
        assert_eq!(c["trigger"], "memory");
        assert!(
            c["reading"]["heap_used_bytes"].as_u64().unwrap() >= 12 << 20,
            "{c}"
        );
        let files = files_of(c);
        assert_eq!(files.len(), 1, "{c}");
        let file = &files[0];
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with(&format!("snapshot-{}-", grow.pid)) && name.ends_with(".heapsnapshot"),
            "{name}"
        );
        assert_eq!(mode_of(file), 0o600, "{name}");
        assert_eq!(
            c["bytes"].as_u64().unwrap(),
            std::fs::metadata(file).unwrap().len()
        );
        assert!(
            c["detail"].as_str().unwrap().contains("closed again"),
            "{c}"
        );
        snapshots.push(file.clone());
    }
    // The second came after the first's cool-down, with more heap.
    let at = |c: &Value| c["at_s"].as_f64().unwrap();
    assert!(at(captures[1]) >= at(captures[0]) + 1.0, "{}", run.stdout);
    let heap = |c: &Value| c["reading"]["heap_used_bytes"].as_u64().unwrap();
    assert!(heap(captures[1]) > heap(captures[0]), "{}", run.stdout);
    let (a, b) = (
        snapshots[0].display().to_string(),
        snapshots[1].display().to_string(),
    );
    let diff = run_nodeprof(
        &["heap", "diff", &a, &b, "--json"],
        dir.path(),
        Duration::from_secs(120),
    );
    diff.assert_success();
    let diff: Value = serde_json::from_str(&diff.stdout).unwrap();
    let first = &diff["classes"][0];
    assert_eq!(first["name"], "Growing", "{diff}");
    assert!(first["count_delta"].as_i64().unwrap() >= 25_000, "{first}");
    // Its inspector closed again; it runs on.
    assert!(!listening_ports(grow.pid)
        .iter()
        .any(|p| (9229..9240).contains(p)));
    assert!(grow.is_running());
}

#[test]
fn memory_with_the_core_action_writes_a_core_gdb_loads_and_the_target_runs_on() {
    let _serial = serial();
    let dir = scratch_dir();
    let grow = schedule("grow", 30, &[], dir.path());
    let port = port_of(&grow);
    let pid = grow.pid.to_string();
    let args = watch_args(
        dir.path(),
        &[
            "-p",
            &pid,
            "--mem",
            "20M",
            "--mem-of",
            "heap",
            "--mem-count",
            "2",
            "--interval",
            "300ms",
            "--mem-action",
            "core",
            "--limit",
            "1/hour",
        ],
    );
    let mut watch = spawn_nodeprof(&args, dir.path());
    assert!(
        wait_until(Duration::from_secs(60), || watch
            .stdout_so_far()
            .contains("\"type\":\"capture")),
        "no capture: {}",
        watch.stdout_so_far()
    );
    assert_not_stopped(grow.pid);
    assert_eq!(http_get(port).as_deref(), Some("ok\n"));
    watch.proc.signal(libc::SIGTERM);
    let _ = watch.proc.wait(Duration::from_secs(30));
    let run = watch.finish(Duration::from_secs(1));
    run.assert_success();
    let lines = lines(&run);
    let captures = of_type(&lines, "capture");
    assert_eq!(captures.len(), 1, "{}", run.stdout);
    let c = captures[0];
    assert_eq!(c["action"], "core");
    assert_eq!(c["trigger"], "memory");
    let core = files_of(c)[0].clone();
    let name = core.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with(&format!("core-{}-", grow.pid)) && name.ends_with(".core"),
        "{name}"
    );
    assert_eq!(mode_of(&core), 0o600);
    // Counted as what it takes on disk: never more than its length.
    let bytes = c["bytes"].as_u64().unwrap();
    assert!(
        bytes > 0 && bytes <= std::fs::metadata(&core).unwrap().len(),
        "{c}"
    );
    assert!(
        c["detail"].as_str().unwrap().contains("then resumed"),
        "{c}"
    );
    let gdb = std::process::Command::new("gdb")
        .args(["-batch", "-nx", "-ex", "info threads"])
        .arg(node())
        .arg(&core)
        .output()
        .expect("run gdb (cargo xtask bootstrap installs it)");
    let text =
        String::from_utf8_lossy(&gdb.stdout).into_owned() + &String::from_utf8_lossy(&gdb.stderr);
    assert!(
        text.contains(&format!("(LWP {})", grow.pid)),
        "main thread missing:\n{text}"
    );
    let listed = text.lines().filter(|l| l.contains("LWP ")).count();
    assert!(listed >= 5, "gdb lists {listed} threads:\n{text}");
    assert!(!text.contains("Cannot access memory"), "{text}");
    assert!(!text.contains("not in executable format"), "{text}");
    assert_not_stopped(grow.pid);
    assert_eq!(http_get(port).as_deref(), Some("ok\n"));
}

#[test]
fn sigterm_while_a_core_is_written_resumes_the_target_and_leaves_no_file() {
    let _serial = serial();
    let dir = scratch_dir();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // 512 MiB of non-zero memory: the core takes long enough to be caught
    // while the target is stopped.
    let big = schedule("big", 60, &[], dir.path());
    big.wait_for_line("held", Duration::from_secs(30));
    let pid = big.pid.to_string();
    let args = watch_args(
        &out,
        &[
            "-p",
            &pid,
            "--mem",
            "256M",
            "--mem-count",
            "1",
            "--interval",
            "300ms",
            "--mem-action",
            "core",
        ],
    );
    let mut watch = spawn_nodeprof(&args, dir.path());
    let traced = || {
        std::fs::read_to_string(format!("/proc/{}/status", big.pid))
            .is_ok_and(|s| !s.contains("TracerPid:\t0"))
    };
    assert!(
        wait_until(Duration::from_secs(30), traced),
        "the core never stopped the target: {}",
        watch.stdout_so_far()
    );
    watch.proc.signal(libc::SIGTERM);
    let _ = watch.proc.wait(Duration::from_secs(30));
    let run = watch.finish(Duration::from_secs(1));
    run.assert_success();
    let lines = lines(&run);
    assert!(of_type(&lines, "capture").is_empty(), "{}", run.stdout);
    let failed = of_type(&lines, "capture-failed");
    assert_eq!(failed.len(), 1, "{}", run.stdout);
    let error = failed[0]["error"].as_str().unwrap();
    assert!(
        error.contains("terminated (SIGTERM): the target was resumed and no file written"),
        "{error}"
    );
    assert_eq!(of_type(&lines, "end")[0]["reason"], "terminated");
    assert_not_stopped(big.pid);
    assert!(big.is_running());
    assert_eq!(
        dir_entries(&out),
        Vec::<String>::new(),
        "no file, no partial file"
    );
}

/// Whether a running watch has printed a line of `kind` about `pid`.
fn said(watch: &NodeprofProc, kind: &str, pid: u32) -> bool {
    watch.stdout_so_far().lines().any(|l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| v["type"] == kind && v["pid"] == pid)
    })
}

#[test]
fn all_picks_up_node_processes_started_after_watch() {
    let _serial = serial();
    let dir = scratch_dir();
    let marker = format!("watch-all-test-{}", std::process::id());
    // Other node processes on the machine are watched too: the threshold is
    // one no process reaches, and only our own pids are looked at.
    let args = watch_args(
        dir.path(),
        &[
            "--all",
            "--keep-waiting",
            "--cpu",
            "100000",
            "--interval",
            "300ms",
            "--cpu-action",
            "command",
            "--command",
            "true",
        ],
    );
    let mut watch = spawn_nodeprof(&args, dir.path());
    assert!(wait_until(Duration::from_secs(20), || !bpf_prog_ids(
        watch.proc.pid
    )
    .is_empty()));
    std::thread::sleep(Duration::from_millis(500));
    let master = schedule("cluster", 5, &[&marker], dir.path());
    let worker: u32 = master
        .wait_for_line("worker", Duration::from_secs(10))
        .trim_start_matches("worker ")
        .parse()
        .unwrap();
    for pid in [master.pid, worker] {
        assert!(
            wait_until(Duration::from_secs(20), || said(&watch, "watch", pid)),
            "{pid} not watched: {}",
            watch.stdout_so_far()
        );
    }
    // Both end with the fixture's 5 s; watch says so and keeps waiting.
    for pid in [master.pid, worker] {
        assert!(
            wait_until(Duration::from_secs(20), || said(&watch, "exit", pid)),
            "{pid}'s exit not seen: {}",
            watch.stdout_so_far()
        );
    }
    assert!(watch.proc.is_running(), "--keep-waiting");
    watch.proc.signal(libc::SIGTERM);
    let _ = watch.proc.wait(Duration::from_secs(30));
    let run = watch.finish(Duration::from_secs(1));
    run.assert_success();
    let lines = lines(&run);
    let ours = |l: &&Value| l["pid"] == master.pid || l["pid"] == worker;
    let watched: Vec<u64> = of_type(&lines, "watch")
        .into_iter()
        .filter(ours)
        .map(|l| l["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(
        watched,
        [master.pid as u64, worker as u64],
        "{}",
        run.stdout
    );
    assert!(of_type(&lines, "capture").is_empty(), "{}", run.stdout);
    assert_eq!(of_type(&lines, "end")[0]["reason"], "terminated");
}

/// A watched node 24 process that execs node 20 (`fixtures/exec/execve.js`):
/// watch says so and its heap readings come from the new program's GCs (the
/// probes on the old image never fire again).
#[test]
fn a_process_that_execs_keeps_its_heap_readings() {
    let _serial = serial();
    let dir = scratch_dir();
    let marker = format!("watch-exec-test-{}", std::process::id());
    let args = watch_args(
        dir.path(),
        &[
            "--name",
            &marker,
            "--cpu",
            "100000",
            "--interval",
            "300ms",
            "--readings",
        ],
    );
    let watch = spawn_nodeprof(&args, dir.path());
    assert!(wait_until(Duration::from_secs(20), || !bpf_prog_ids(
        watch.proc.pid
    )
    .is_empty()));
    // It spins for a second (watch finds it by the marker meanwhile), then
    // execs node 20 running after.js, which churns for 5 s.
    let next = node_major(20);
    let target = Proc::node(
        &node_major(24),
        &[],
        "exec/execve.js",
        &[next.to_str().unwrap(), "5", &marker],
        dir.path(),
    );
    target.wait_for_line("ready", Duration::from_secs(20));
    let run = watch.finish(Duration::from_secs(60));
    run.assert_success();
    let lines = lines(&run);
    let exec = lines
        .iter()
        .position(|l| l["type"] == "exec" && l["pid"] == target.pid)
        .unwrap_or_else(|| panic!("no exec line: {}", run.stdout));
    assert_eq!(
        lines[exec]["exe"].as_str().unwrap(),
        std::fs::canonicalize(&next).unwrap().to_str().unwrap(),
        "{}",
        lines[exec]
    );
    // The heap figures of the old program went with it at the exec: a heap
    // reading after it comes from a GC the new probes traced.
    let heaps: Vec<u64> = lines[exec..]
        .iter()
        .filter(|l| l["type"] == "reading" && l["reading"]["pid"] == target.pid)
        .filter_map(|l| l["reading"]["heap_used_bytes"].as_u64())
        .collect();
    assert!(
        !heaps.is_empty(),
        "no heap reading after the exec:\n{}",
        run.stdout
    );
}

/// SIGTERM while a snapshot is being written: it is abandoned as `nodeprof
/// snapshot` abandons one (no file, not even a partial one; the inspector
/// watch opened closed again), and the target serves on.
#[test]
fn sigterm_while_a_snapshot_is_written_leaves_no_file_and_closes_the_inspector() {
    let _serial = serial();
    let dir = scratch_dir();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let grow = schedule("grow", 120, &[], dir.path());
    let port = port_of(&grow);
    let pid = grow.pid.to_string();
    // Crossed once the heap is large enough for a snapshot of seconds.
    let args = watch_args(
        &out,
        &[
            "-p",
            &pid,
            "--mem",
            "60M",
            "--mem-of",
            "heap",
            "--mem-count",
            "1",
            "--interval",
            "300ms",
        ],
    );
    let mut watch = spawn_nodeprof(&args, dir.path());
    // The snapshot's file, not named yet, is being written.
    let writing = || bytes_being_written(watch.proc.pid, &out).is_some_and(|n| n > 0);
    assert!(
        wait_until(Duration::from_secs(60), writing),
        "no snapshot written: {}",
        watch.stdout_so_far()
    );
    watch.proc.signal(libc::SIGTERM);
    let _ = watch.proc.wait(Duration::from_secs(150));
    let run = watch.finish(Duration::from_secs(1));
    run.assert_success();
    let lines = lines(&run);
    assert!(of_type(&lines, "capture").is_empty(), "{}", run.stdout);
    let failed = of_type(&lines, "capture-failed");
    assert_eq!(failed.len(), 1, "{}", run.stdout);
    assert_eq!(failed[0]["action"], "snapshot");
    let error = failed[0]["error"].as_str().unwrap();
    assert!(
        error.contains("terminated (SIGTERM); no file written"),
        "{error}"
    );
    assert_eq!(
        dir_entries(&out),
        Vec::<String>::new(),
        "no file, no partial file"
    );
    assert!(
        !listening_ports(grow.pid)
            .iter()
            .any(|p| (9229..9240).contains(p)),
        "the inspector is still listening"
    );
    assert_not_stopped(grow.pid);
    assert_eq!(http_get(port).as_deref(), Some("ok\n"));
}

/// `--no-loop`: the event loop is not measured (its readings are absent,
/// not an idle 0 %), and no system-call tracepoint is attached, while CPU
/// and heap readings go on; `--loop-blocked` with it is refused.
#[test]
fn no_loop_reads_no_loop_and_attaches_no_tracepoint() {
    let _serial = serial();
    let dir = scratch_dir();
    // Long enough for both runs on a loaded machine; killed when dropped.
    let hot = schedule("hot", 120, &[], dir.path());
    let pid = hot.pid.to_string();
    let attachments_of = |extra: &[&str]| -> (usize, Vec<Value>) {
        let mut args = vec!["-p", &pid, "--cpu", "100000", "--interval", "300ms"];
        args.extend(extra);
        args.push("--readings");
        let watch = spawn_nodeprof(&watch_args(dir.path(), &args), dir.path());
        assert!(
            wait_until(Duration::from_secs(20), || said(&watch, "watch", hot.pid)),
            "watch did not start: {}",
            watch.stdout_so_far()
        );
        assert!(
            wait_until(Duration::from_secs(20), || {
                watch
                    .stdout_so_far()
                    .matches("\"type\":\"reading\"")
                    .count()
                    >= 3
            }),
            "no readings: {}",
            watch.stdout_so_far()
        );
        let attached = perf_attachments(watch.proc.pid);
        watch.proc.signal(libc::SIGINT);
        let run = watch.finish(Duration::from_secs(30));
        run.assert_success();
        (attached, lines(&run))
    };
    let (with_loop, measured) = attachments_of(&[]);
    let (without, unmeasured) = attachments_of(&["--no-loop"]);
    let loop_readings = |lines: &[Value]| -> Vec<Value> {
        of_type(lines, "reading")
            .iter()
            .map(|l| l["reading"]["loop_utilization"].clone())
            .collect()
    };
    let cpu_readings = |lines: &[Value]| {
        of_type(lines, "reading")
            .iter()
            .filter(|l| l["reading"]["cpu_percent"].as_f64().is_some())
            .count()
    };
    // The loop turns all the time here: measured, it is busy, not idle.
    assert!(
        loop_readings(&measured)
            .iter()
            .any(|u| u.as_f64().is_some_and(|u| u > 0.3)),
        "{:?}",
        loop_readings(&measured)
    );
    let unmeasured_loops = loop_readings(&unmeasured);
    assert!(
        !unmeasured_loops.is_empty() && unmeasured_loops.iter().all(Value::is_null),
        "--no-loop read the loop: {unmeasured_loops:?}"
    );
    assert!(cpu_readings(&unmeasured) >= 2, "{unmeasured:?}");
    assert!(
        with_loop > without,
        "{with_loop} attachments with the loop measured, {without} with --no-loop"
    );
    let refused = run_nodeprof(
        &watch_args(
            dir.path(),
            &["-p", &pid, "--loop-blocked", "500ms", "--no-loop"],
        ),
        dir.path(),
        Duration::from_secs(30),
    );
    assert!(
        !refused.status.success() && refused.stderr.contains("--no-loop"),
        "{}\n{}",
        refused.stdout,
        refused.stderr
    );
}
