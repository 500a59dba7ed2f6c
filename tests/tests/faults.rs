//! Faults and bad input (as root): nothing lost, nothing misleading. Full
//! disks, standard output on a full device, a killed recording, errors that
//! name their cause once.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nodeprof_tests::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const READY: Duration = Duration::from_secs(20);

/// Runs nodeprof with standard output on `/dev/full`; returns (status, stderr).
fn run_to_full_device(args: &[&str], dir: &Path) -> (std::process::ExitStatus, String) {
    let out = Command::new(nodeprof_bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(
            fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        )
        .stderr(Stdio::piped())
        .output()
        .expect("run nodeprof");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_write_error(args: &[&str], dir: &Path) {
    let (status, stderr) = run_to_full_device(args, dir);
    assert_eq!(
        status.code(),
        Some(1),
        "{args:?} on /dev/full: {status}\n{stderr}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("nodeprof: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
    assert!(
        lines[0].contains("No space left on device"),
        "{args:?}: {stderr}"
    );
}

/// A mounted tmpfs of `size` in `dir/name`, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, name: &str, size: &str) -> Tmpfs {
        let path = dir.join(name);
        fs::create_dir(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a tmpfs on {}", path.display());
        Tmpfs(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn an_os_error_is_named_once() {
    let _serial = serial();
    let dir = scratch_dir();
    let run = run_nodeprof(
        &["heap", "summary", "/nonexistent.heapsnapshot"],
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_error("No such file or directory");
    assert_eq!(
        run.stderr.matches("No such file or directory").count(),
        1,
        "{}",
        run.stderr
    );
    // kthreadd: a kernel thread has no executable, and is named as what it is.
    let run = run_nodeprof(&["info", "-p", "2"], dir.path(), RUN_TIMEOUT);
    run.assert_error("process 2 (kthreadd) is a kernel thread");
    assert!(
        run.stderr.matches("(os error").count() <= 1,
        "{}",
        run.stderr
    );
}

#[test]
fn standard_output_on_a_full_device_is_an_error() {
    let _serial = serial();
    let dir = scratch_dir();
    let snapshot = dir.path().join("s.heapsnapshot");
    let status = Command::new(node_major(22))
        .args([
            "-e",
            &format!(
                "require('v8').writeHeapSnapshot({:?})",
                snapshot.display().to_string()
            ),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let snapshot = snapshot.to_str().unwrap();
    assert_write_error(&["heap", "summary", snapshot], dir.path());
    assert_write_error(&["heap", "summary", "--json", snapshot], dir.path());
    assert_write_error(&["heap", "diff", snapshot, snapshot], dir.path());

    let target = Proc::node(&node_major(22), &[], "busy.js", &["30"], dir.path());
    target.wait_for_line("ready", READY);
    let pid = target.pid.to_string();
    assert_write_error(&["info", "-p", &pid], dir.path());
    assert_write_error(&["gc", "-p", &pid, "-d", "1"], dir.path());
    assert_write_error(&["gc", "--json", "-p", &pid, "-d", "1"], dir.path());
    let prefix = dir.path().join("r");
    let prefix = prefix.to_str().unwrap();
    assert_write_error(
        &["record", "-q", "-p", &pid, "-d", "1", "-o", prefix],
        dir.path(),
    );
    // The profile itself was written before the report failed.
    assert!(Path::new(&format!("{prefix}.cpuprofile")).is_file());
}

/// A disk too small for the profile: exit 1, the message says which files
/// are complete, and no file under a final name is partial.
#[test]
fn a_full_disk_leaves_only_complete_files() {
    let _serial = serial();
    let dir = scratch_dir();
    let small = Tmpfs::mount(dir.path(), "small", "16k");
    let target = Proc::node(&node_major(22), &[], "busy.js", &["30"], dir.path());
    target.wait_for_line("ready", READY);
    let prefix = small.0.join("p");
    let run = run_nodeprof(
        &record_args(target.pid, &prefix, &["-d", "2"]),
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_error("No space left on device");
    // What was sampled is summarised all the same.
    assert!(
        run.stdout.contains("nodeprof: recorded pid") && run.stdout.contains("Samples"),
        "no summary:\n{}",
        run.stdout
    );
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("nodeprof: error:"))
        .unwrap();
    assert!(
        line.contains("no file was written") || line.contains("complete and kept:"),
        "{line}"
    );
    for name in names_in(&small.0) {
        assert!(!name.starts_with('.'), "a temporary file stayed: {name}");
        // Whatever stands under a final name is complete and said so.
        assert!(
            line.contains(&name),
            "{name} exists but the message does not say so: {line}"
        );
        if name.ends_with(".cpuprofile") {
            let text = fs::read_to_string(small.0.join(&name)).unwrap();
            let json: serde_json::Value = serde_json::from_str(&text).expect("complete JSON");
            nodeprof::output::validate_cpuprofile(&json).unwrap();
        }
    }
    assert!(target.is_running());
}

/// An output name taken while recording (another process wrote it): that
/// file is refused, nothing overwrites it, the other formats are still
/// written, and the summary is shown before the one error line.
#[test]
fn an_output_taken_while_recording_loses_only_itself() {
    let _serial = serial();
    let dir = scratch_dir();
    let target = Proc::node(&node_major(22), &[], "busy.js", &["30"], dir.path());
    target.wait_for_line("ready", READY);
    let prefix = dir.path().join("t");
    let np = spawn_nodeprof(&record_args(target.pid, &prefix, &["-d", "3"]), dir.path());
    std::thread::sleep(Duration::from_secs(1));
    let taken = dir.path().join("t.folded");
    fs::write(&taken, "someone else's\n").unwrap();
    let run = np.finish(RUN_TIMEOUT);
    run.assert_error("File exists");
    assert_eq!(fs::read_to_string(&taken).unwrap(), "someone else's\n");
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("nodeprof: error:"))
        .unwrap();
    assert!(line.contains("t.folded"), "{line}");
    for kept in ["t.cpuprofile", "t.svg"] {
        assert!(dir.path().join(kept).is_file(), "{kept} not written");
        assert!(line.contains(kept), "{kept} not named: {line}");
    }
    assert!(
        run.stdout.contains("nodeprof: recorded pid") && run.stdout.contains("Samples"),
        "no summary:\n{}",
        run.stdout
    );
}

/// SIGKILL mid-recording: no file is left at all (the outputs are written
/// to unnamed files until complete), and the same `-o` works for the next run.
#[test]
fn a_killed_recording_leaves_no_file_under_its_names() {
    let _serial = serial();
    let dir = scratch_dir();
    let target = Proc::node(&node_major(22), &[], "busy.js", &["30"], dir.path());
    target.wait_for_line("ready", READY);
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    let prefix = out.join("k");
    let np = spawn_nodeprof(&record_args(target.pid, &prefix, &[]), dir.path());
    np.wait_sampling(Duration::from_secs(10));
    np.proc.signal(libc::SIGKILL);
    let _ = np.finish(RUN_TIMEOUT);
    assert!(
        names_in(&out).is_empty(),
        "left behind: {:?}",
        names_in(&out)
    );
    let run = run_nodeprof(
        &record_args(target.pid, &prefix, &["-d", "1"]),
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_success();
    Outputs::load(&prefix);
}

/// `-o DIR/` puts the default names in the directory; a format listed twice
/// is written once.
#[test]
fn output_into_a_directory_and_formats_once() {
    let _serial = serial();
    let dir = scratch_dir();
    let target = Proc::node(&node_major(22), &[], "busy.js", &["30"], dir.path());
    target.wait_for_line("ready", READY);
    let out = dir.path().join("profiles");
    fs::create_dir(&out).unwrap();
    let run = run_nodeprof(
        &[
            "record",
            "-q",
            "-p",
            &target.pid.to_string(),
            "-d",
            "1",
            "-o",
            &format!("{}/", out.display()),
            "--format",
            "cpuprofile,cpuprofile",
        ],
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_success();
    let names = names_in(&out);
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(
        names[0].starts_with(&format!("nodeprof-{}-", target.pid))
            && names[0].ends_with(".cpuprofile"),
        "{names:?}"
    );
}

/// Node is told by its binary's contents, not its name: a renamed copy, and
/// the same copy deleted while it runs, are profiled as node (JS frames
/// named, GC traced) without the "does not look like Node.js" warning.
#[test]
fn a_renamed_or_deleted_node_binary_is_still_node() {
    let _serial = serial();
    let dir = scratch_dir();
    let copy = dir.path().join("api-server");
    fs::copy(node_major(22), &copy).unwrap();
    let target = Proc::node(&copy, &[], "busy.js", &["30"], dir.path());
    target.wait_for_line("ready", READY);
    for round in ["renamed", "deleted"] {
        if round == "deleted" {
            fs::remove_file(&copy).unwrap();
        }
        let prefix = dir.path().join(round);
        let run = run_nodeprof(
            &record_args(target.pid, &prefix, &["-d", "1"]),
            dir.path(),
            RUN_TIMEOUT,
        );
        run.assert_success();
        assert!(
            !run.stderr.contains("does not look like Node.js"),
            "{round}: {}",
            run.stderr
        );
        assert!(
            run.stdout.contains("GC: "),
            "{round}: no GC table\n{}",
            run.stdout
        );
        let out = Outputs::load(&prefix);
        assert!(
            out.function_names().iter().any(|f| f == "spinUntil"),
            "{round}: spinUntil not named\n{}",
            out.folded_excerpt()
        );
        let info = run_nodeprof(
            &["info", "-p", &target.pid.to_string()],
            dir.path(),
            RUN_TIMEOUT,
        );
        info.assert_success();
        assert!(
            info.stdout.contains("Node.js: v22."),
            "{round}: {}",
            info.stdout
        );
    }
}

/// A node 24 process that execs node 20 while recorded: nodeprof says so,
/// names the new program's JS functions, keeps tracing its GCs, and the
/// report names the binary it runs now.
#[test]
fn an_exec_of_the_target_is_followed() {
    let _serial = serial();
    let dir = scratch_dir();
    let next = node_major(20);
    let target = Proc::node(
        &node_major(24),
        &[],
        "exec/execve.js",
        &[next.to_str().unwrap(), "4"],
        dir.path(),
    );
    target.wait_for_line("ready", READY);
    let prefix = dir.path().join("exec");
    let run = run_nodeprof(
        &record_args(target.pid, &prefix, &["-d", "3.5"]),
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_success();
    assert!(
        run.stderr
            .contains(&format!("process {} exec'd {}", target.pid, next.display())),
        "the exec is not reported:\n{}",
        run.stderr
    );
    assert!(
        run.stdout
            .contains(&format!("recorded pid {} ({})", target.pid, next.display())),
        "{}",
        run.stdout
    );
    let out = Outputs::load(&prefix);
    let total = out.sample_count() as u64;
    let unknown = out.samples_with_frame(|f| f == "[unknown JS]");
    assert!(
        unknown * 20 <= total,
        "{unknown} of {total} samples [unknown JS]\n{}",
        out.folded_excerpt()
    );
    assert!(
        out.samples_with_frame(|f| f.starts_with("churnAfterExec")) * 2 >= total,
        "the new program's function is not named\n{}",
        out.folded_excerpt()
    );
    // GCs of the new program, traced through the new binary's probes (the
    // spinning before the exec allocates next to nothing).
    let table = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("GC: "))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    let count: u64 = table.split_whitespace().next().unwrap().parse().unwrap();
    assert!(count >= 20, "{count} GCs: {table}");
}

/// Without root, every command says how to fix it, and following that hint
/// (a setcap'd copy of nodeprof run as `nobody`) makes each command work in
/// full: GC tracing and event-loop turns included.
#[test]
fn following_the_capability_hint_makes_every_command_work() {
    use std::os::unix::fs::PermissionsExt;
    let _serial = serial();
    let dir = scratch_dir();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("nodeprof");
    fs::copy(nodeprof_bin(), &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o777)).unwrap();
    let target = Proc::node(&node_major(22), &[], "gc/churn.js", &["30000"], dir.path());
    // churn.js waits for SIGUSR2 before its GC-heavy run.
    target.wait_for_line("ready", READY);
    send_signal(target.pid, libc::SIGUSR2);
    target.wait_for_line("go", READY);
    let pid = target.pid.to_string();
    let as_nobody = |args: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&copy);
        spawn_nodeprof_with(cmd, args, &out).finish(RUN_TIMEOUT)
    };
    let prefix = out.join("p");
    let prefix = prefix.to_str().unwrap();
    let commands: [Vec<&str>; 3] = [
        vec![
            "record", "-q", "-p", &pid, "-d", "1", "--wall", "-o", prefix,
        ],
        vec!["gc", "-p", &pid, "-d", "1"],
        vec!["info", "-p", &pid],
    ];
    let mut hint = None;
    for args in &commands {
        let run = as_nobody(args);
        run.assert_error("setcap");
        let line = run.stderr.lines().next().unwrap().to_string();
        let caps = line
            .split("sudo setcap ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no setcap command in: {line}"))
            .to_string();
        if let Some(first) = &hint {
            assert_eq!(first, &caps, "two commands give two different hints");
        }
        hint = Some(caps);
    }
    let caps = hint.unwrap();
    let status = Command::new("setcap")
        .arg(&caps)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success(), "setcap {caps}");
    for args in &commands {
        let run = as_nobody(args);
        run.assert_success();
        assert!(
            !run.stderr.contains("WARN") && !run.stderr.contains("not traced"),
            "{args:?} with {caps}: {}",
            run.stderr
        );
        if args[0] == "record" {
            for needle in ["GC: ", "event loop (main thread)", "Off-CPU samples:"] {
                assert!(
                    run.stdout.contains(needle),
                    "no {needle:?}:\n{}",
                    run.stdout
                );
            }
        }
    }
}

/// A command line nodeprof cannot parse: one line, as every error, naming
/// the value and what would do, exit 2 (a usage error); help still prints.
#[test]
fn a_usage_error_is_one_line() {
    let dir = scratch_dir();
    for (args, needle) in [
        (&["record", "-p", "1", "-d", "5x"][..], "'5x'"),
        (
            &["record", "-p", "1", "--format", "pdf"][..],
            "possible values: cpuprofile",
        ),
        (&["snapshot", "-p", "1", "--interval", "1s"][..], "--count"),
        (&["bogus"][..], "'bogus'"),
    ] {
        let run = run_nodeprof(args, dir.path(), RUN_TIMEOUT);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {}", run.stderr);
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {}", run.stderr);
        assert!(
            lines[0].starts_with("nodeprof: error: ") && lines[0].contains(needle),
            "{args:?}: {}",
            lines[0]
        );
    }
    let help = run_nodeprof(&["record", "--help"], dir.path(), RUN_TIMEOUT);
    help.assert_success();
    assert!(help.stdout.contains("Usage:"), "{}", help.stdout);
}

/// Bad input says what is wrong: a duration shorter than a sampling period,
/// a thread id for a process id, a file that is not executable.
#[test]
fn bad_input_is_named_for_what_it_is() {
    use std::os::unix::fs::PermissionsExt;
    let _serial = serial();
    let dir = scratch_dir();
    let target = Proc::node(&node_major(24), &[], "busy.js", &["30", "2"], dir.path());
    target.wait_for_line("ready", READY);
    let pid = target.pid.to_string();
    let run = run_nodeprof(
        &["record", "-p", &pid, "-d", "1ms"],
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_error("shorter than one sampling period");
    // A worker thread's id.
    let tid = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|t| *t != pid)
        .unwrap();
    for cmd in ["record", "gc", "info"] {
        let run = run_nodeprof(
            &[cmd, "-p", &tid, "-d", "1"][..if cmd == "info" { 3 } else { 5 }],
            dir.path(),
            RUN_TIMEOUT,
        );
        run.assert_error(&format!("{tid} is a thread of process {pid}"));
    }
    let script = dir.path().join("not-executable.js");
    fs::write(&script, "console.log(1)").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    let run = run_nodeprof(
        &["record", "-q", "--", script.to_str().unwrap()],
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_error("permission denied");
}

/// `--top 0` lists every function, as `heap --top 0` does (the native
/// view: every frame, so many more than 15).
#[test]
fn top_zero_lists_everything() {
    let _serial = serial();
    let dir = scratch_dir();
    let target = Proc::node(&node_major(22), &[], "busy.js", &["30"], dir.path());
    target.wait_for_line("ready", READY);
    let prefix = dir.path().join("t");
    let run = run_nodeprof(
        &record_args(
            target.pid,
            &prefix,
            &["-d", "1", "--top", "0", "--summary", "native"],
        ),
        dir.path(),
        RUN_TIMEOUT,
    );
    run.assert_success();
    assert!(!run.stdout.contains("(no samples)"), "{}", run.stdout);
    let rows = run
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("Top functions by total time"))
        .skip(2)
        .take_while(|l| l.starts_with("  "))
        .count();
    assert!(rows > 15, "{rows} rows with --top 0:\n{}", run.stdout);
}

/// A launched command ends with its recording (SIGTERM, reported), unless
/// `--keep-running`: then it runs on after nodeprof exits.
#[test]
fn a_launched_command_ends_with_its_recording() {
    let _serial = serial();
    let dir = scratch_dir();
    let node = node_major(22);
    let busy = fixture("busy.js");
    for keep in [false, true] {
        let prefix = dir.path().join(format!("keep-{keep}"));
        let mut args = vec!["record", "-q", "-d", "1", "-o", prefix.to_str().unwrap()];
        if keep {
            args.push("--keep-running");
        }
        args.extend(["--", node.to_str().unwrap(), busy.to_str().unwrap(), "30"]);
        let run = run_nodeprof(&args, dir.path(), RUN_TIMEOUT);
        run.assert_success();
        let pid: u32 = run
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("nodeprof: recorded pid "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{}", run.stdout));
        if keep {
            // Reparented, still running: end it here.
            assert!(
                proc_state(pid).is_some_and(|s| s != 'Z'),
                "--keep-running: {pid} is gone"
            );
            send_signal(pid, libc::SIGKILL);
        } else {
            assert!(
                run.stdout
                    .contains("nodeprof: command exited with signal 15"),
                "{}",
                run.stdout
            );
            assert!(
                proc_state(pid).is_none(),
                "the launched command {pid} still runs"
            );
        }
    }
}

/// A target that dies while `gc` attaches its probes is named as exited,
/// never as a failed `perf_event_open`. The target is killed the moment
/// nodeprof holds its first eBPF program, while it reads node's GC symbols
/// and attaches the uprobes. A run whose attach finished first ends as a
/// trace whose target exited; the kill is retried until one lands in the
/// attach.
#[test]
fn a_target_dying_during_attach_is_named_as_exited() {
    let _serial = serial();
    let dir = scratch_dir();
    let mut named_exited = 0;
    let mut tries = 0;
    while named_exited == 0 && tries < 10 {
        tries += 1;
        let mut target = Proc::node(&node_major(24), &[], "busy.js", &["30"], dir.path());
        target.wait_for_line("ready", READY);
        let pid = target.pid.to_string();
        let gc = spawn_nodeprof(&["gc", "-p", &pid, "-d", "20"], dir.path());
        // Polled without sleeping: the attach lasts milliseconds.
        let deadline = std::time::Instant::now() + RUN_TIMEOUT;
        while bpf_prog_ids(gc.proc.pid).is_empty() && gc.proc.is_running() {
            assert!(std::time::Instant::now() < deadline, "gc loaded no program");
        }
        target.signal(libc::SIGKILL);
        let run = gc.finish(RUN_TIMEOUT);
        target.wait(READY);
        assert!(
            !run.stderr.contains("perf_event_open"),
            "the kernel's call is named instead of the exit:\n{}",
            run.stderr
        );
        if run.status.success() {
            assert!(
                run.stdout.contains("stopped: target exited"),
                "{}",
                run.stdout
            );
        } else {
            run.assert_error(&format!("process {pid} exited while nodeprof attached"));
            named_exited += 1;
        }
    }
    assert!(
        named_exited > 0,
        "no kill landed in the attach in {tries} tries: the test did not check the message"
    );
    eprintln!("the kill landed in the attach after {tries} tries");
}
