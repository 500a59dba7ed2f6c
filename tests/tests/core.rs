//! `nodeprof core` against real processes: gdb loads the core of a node
//! process with worker threads (every thread, a sane main-thread backtrace),
//! the target keeps serving, the stop time is reported; a process that is not
//! node; and every failure (dead pid, bad path, full disk, Ctrl-C midway) as
//! one line with the target resumed and no file left.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nodeprof_tests::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const SCRIPT: &str = "capture/target.js";

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

fn core_args(pid: u32, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "core".to_string(),
        "-q".into(),
        "-p".into(),
        pid.to_string(),
        "-o".into(),
        out.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn core(pid: u32, out: &Path, extra: &[&str], dir: &Path) -> Run {
    run_nodeprof(&core_args(pid, out, extra), dir, RUN_TIMEOUT)
}

fn gdb(exe: &Path, core: &Path) -> String {
    let out = Command::new("gdb")
        .args([
            "-batch",
            "-nx",
            "-ex",
            "info threads",
            "-ex",
            "thread apply all bt",
        ])
        .arg(exe)
        .arg(core)
        .output()
        .expect("run gdb (cargo xtask bootstrap installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Not stopped: neither traced nor job-control stopped.
fn stopped_ms(stdout: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("target stopped for "))
        .unwrap_or_else(|| panic!("no stop time in:\n{stdout}"));
    line["target stopped for ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn core_files(dir: &Path) -> Vec<String> {
    dir_entries(dir)
        .into_iter()
        .filter(|n| n.contains(".core"))
        .collect()
}

/// gdb reads the core of node with two workers: every thread, the main
/// thread in node's event loop; the target serves before and after.
fn gdb_loads_a_core_of_node_with_workers(major: u32) {
    let _lock = serial();
    let dir = scratch_dir();
    let node = node_major(major);
    let target = start(&node, &["idle", "--workers", "2"], dir.path());
    let pid = target.proc.pid;
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    let out = dir.path().join("node.core");
    let run = core(pid, &out, &[], dir.path());
    run.assert_success();
    assert!(
        run.stdout.contains(&format!("{threads} threads")),
        "node {major}: {threads} threads expected:\n{}",
        run.stdout
    );
    let ms = stopped_ms(&run.stdout);
    eprintln!("node {major}: stopped {ms} ms for the core");
    assert!(ms > 0.0 && ms < 60_000.0, "stop time {ms} ms");
    assert_not_stopped(pid);
    assert_eq!(http_get(target.port).as_deref(), Some("ok\n"));
    let mode = std::fs::metadata(&out).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    assert_gdb_reads(&node, &out, pid, threads, major);
}

/// gdb loads `core` of node `major` with `threads` threads, two of them
/// workers: every thread listed, no missing memory, the main thread in the
/// event loop.
fn assert_gdb_reads(node: &Path, core: &Path, pid: u32, threads: usize, major: u32) {
    let text = gdb(node, core);
    let listed = text
        .lines()
        .map(|l| l.trim_start().trim_start_matches('*').trim_start())
        .filter(|l| l.starts_with(char::is_numeric) && l.contains("LWP "))
        .count();
    assert_eq!(
        listed, threads,
        "node {major}: gdb lists {listed} threads:\n{text}"
    );
    assert!(
        text.contains(&format!("(LWP {pid})")),
        "node {major}: main thread missing:\n{text}"
    );
    assert!(!text.contains("Unexpected size"), "node {major}:\n{text}");
    assert!(
        !text.contains("Cannot access memory"),
        "node {major}:\n{text}"
    );
    // The main thread (gdb's thread 1, the first NT_PRSTATUS) waits in its event loop.
    let main_bt = text
        .split("\nThread 1 ")
        .nth(1)
        .unwrap_or_else(|| panic!("node {major}: no backtrace of thread 1:\n{text}"));
    for frame in ["uv_run", "node::Start", "main"] {
        assert!(
            main_bt.contains(frame),
            "node {major}: main thread's backtrace lacks {frame}:\n{main_bt}"
        );
    }
    // Worker threads run their own event loops.
    assert!(
        text.matches("node::worker::Worker::Run").count() >= 2,
        "node {major}: worker threads' backtraces:\n{text}"
    );
}

/// `--compress zstd`: a `.core.zst` file, 0600, that `zstd -d` turns into a
/// core gdb reads like an uncompressed one.
#[test]
fn a_zstd_core_decompresses_into_a_core_gdb_reads() {
    let _lock = serial();
    let dir = scratch_dir();
    let node = node_major(24);
    let target = start(&node, &["idle", "--workers", "2"], dir.path());
    let pid = target.proc.pid;
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    let run = core(pid, dir.path(), &["--compress", "zstd"], dir.path());
    run.assert_success();
    assert_not_stopped(pid);
    assert_eq!(http_get(target.port).as_deref(), Some("ok\n"));
    let written = core_files(dir.path());
    assert_eq!(written.len(), 1, "{written:?}");
    assert!(written[0].ends_with(".core.zst"), "{written:?}");
    let zst = dir.path().join(&written[0]);
    let mode = std::fs::metadata(&zst).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    assert!(
        run.stdout.contains("(zstd)") && run.stdout.contains("zstd -d"),
        "{}",
        run.stdout
    );
    let status = Command::new("zstd")
        .args(["-d", "-q"])
        .arg(&zst)
        .status()
        .expect("run zstd (cargo xtask bootstrap installs it)");
    assert!(status.success(), "zstd -d failed");
    let plain = zst.with_extension("");
    let (packed, unpacked) = (
        std::fs::metadata(&zst).unwrap().len(),
        std::fs::metadata(&plain).unwrap().len(),
    );
    eprintln!("zstd core: {packed} bytes, {unpacked} decompressed");
    assert!(packed < unpacked / 2, "{packed} of {unpacked} bytes");
    assert_gdb_reads(&node, &plain, pid, threads, 24);
}

#[test]
fn gdb_loads_a_core_of_node_with_workers_node20() {
    gdb_loads_a_core_of_node_with_workers(20);
}

#[test]
fn gdb_loads_a_core_of_node_with_workers_node24() {
    gdb_loads_a_core_of_node_with_workers(24);
}

/// Any process, not only node: a sleeping `sleep`.
#[test]
fn a_core_of_a_process_that_is_not_node() {
    let _lock = serial();
    let dir = scratch_dir();
    let mut cmd = Command::new("sleep");
    cmd.arg("300");
    let sleep = Proc::spawn(cmd);
    std::thread::sleep(Duration::from_millis(200));
    let out = dir.path().join("sleep.core");
    core(sleep.pid, &out, &[], dir.path()).assert_success();
    assert_not_stopped(sleep.pid);
    let exe = std::fs::read_link(format!("/proc/{}/exe", sleep.pid)).unwrap();
    let text = gdb(&exe, &out);
    assert!(text.contains("nanosleep"), "{text}");
}

#[test]
fn bad_input_is_one_line_errors() {
    let _lock = serial();
    let dir = scratch_dir();
    let out = dir.path().join("x.core");
    let mut dead = Proc::spawn(Command::new("true"));
    dead.wait(Duration::from_secs(5));
    core(dead.pid, &out, &[], dir.path()).assert_error("no such process");

    let target = start(&node_major(20), &["idle"], dir.path());
    let pid = target.proc.pid;
    core(pid, Path::new("/proc/x.core"), &[], dir.path()).assert_error("cannot create");
    let existing = dir.path().join("exists.core");
    std::fs::write(&existing, "keep").unwrap();
    core(pid, &existing, &[], dir.path()).assert_error("already exists");
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep");
    assert_not_stopped(pid);
    assert_eq!(core_files(dir.path()), ["exists.core"]);
}

/// A 1 MiB file system: refused before the target is touched; with --force
/// the write fails midway, the target is resumed and nothing is left.
#[test]
fn a_full_disk_resumes_the_target_and_leaves_no_file() {
    let _lock = serial();
    let dir = scratch_dir();
    let target = start(&node_major(24), &["idle"], dir.path());
    let small = SmallTmpfs::mount(&dir.path().join("small"), "1m");
    let out = small.dir.join("n.core");
    core(target.proc.pid, &out, &[], dir.path()).assert_error("free");
    assert_eq!(dir_entries(&small.dir), Vec::<String>::new());
    core(target.proc.pid, &out, &["--force"], dir.path()).assert_error("disk is full");
    assert_eq!(dir_entries(&small.dir), Vec::<String>::new());
    assert_not_stopped(target.proc.pid);
    assert_eq!(http_get(target.port).as_deref(), Some("ok\n"));
}

/// Ctrl-C while the target is stopped and its memory copied: one line, the
/// target resumed at once, no file.
#[test]
fn sigint_during_a_core_resumes_the_target() {
    let _lock = serial();
    let dir = scratch_dir();
    let target = start(&node_major(24), &["idle", "--heap-mb", "400"], dir.path());
    let pid = target.proc.pid;
    let out = dir.path().join("int.core");
    let np = spawn_nodeprof(&core_args(pid, &out, &[]), dir.path());
    // Interrupt once the target is stopped and the file is being written.
    let stopped = wait_until(Duration::from_secs(60), || {
        proc_state(pid) == Some('t')
            && bytes_being_written(np.proc.pid, dir.path()).is_some_and(|n| n > 8 << 20)
    });
    assert!(
        stopped,
        "the core never started: {:?}",
        dir_entries(dir.path())
    );
    let t0 = Instant::now();
    send_signal(np.proc.pid, libc::SIGINT);
    let run = np.finish(RUN_TIMEOUT);
    let took = t0.elapsed();
    run.assert_error("interrupted");
    assert!(
        took < Duration::from_secs(5),
        "nodeprof took {took:?} to stop"
    );
    assert_not_stopped(pid);
    assert_eq!(core_files(dir.path()), Vec::<String>::new());
    assert_eq!(http_get(target.port).as_deref(), Some("ok\n"));
}

// `nodeprof dump --core FILE --exe NODE`: the JS a core was stuck in, named
// as the live `dump` names it.

const HANG: &str = "dump/hang.js";
const SYS_OPENAT: &str = "257";

/// The frame lines of the main thread's block of a dump.
fn main_thread_frames(dump: &str) -> Vec<String> {
    dump.lines()
        .skip_while(|l| !l.ends_with("main thread"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| l.trim().to_string())
        .collect()
}

fn verdict_of(dump: &str) -> String {
    dump.lines()
        .find_map(|l| l.trim_start().strip_prefix("=> "))
        .unwrap_or_else(|| panic!("no verdict in:\n{dump}"))
        .to_string()
}

/// The line of JS function `name` at hang.js in the main thread's stack.
fn js_line(dump: &str, name: &str) -> String {
    main_thread_frames(dump)
        .into_iter()
        .find(|l| l.starts_with(&format!("{name} (file://")) && l.contains("hang.js:"))
        .unwrap_or_else(|| panic!("no JS frame {name} (…hang.js:…) in:\n{dump}"))
}

fn dump_core(core: &Path, exe: &Path, dir: &Path) -> Run {
    let run = run_nodeprof(
        &[
            "dump".as_ref(),
            "--core".as_ref(),
            core.as_os_str(),
            "--exe".as_ref(),
            exe.as_os_str(),
        ],
        dir,
        RUN_TIMEOUT,
    );
    run.assert_success();
    eprintln!("{}", run.stdout);
    run
}

/// A core written by gdb's gcore; the target is resumed when gcore ends.
fn gcore(pid: u32, prefix: &Path) -> std::path::PathBuf {
    let out = Command::new("gcore")
        .arg("-o")
        .arg(prefix)
        .arg(pid.to_string())
        .output()
        .expect("run gcore (cargo xtask bootstrap installs gdb)");
    assert!(
        out.status.success(),
        "gcore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    prefix.with_extension(pid.to_string())
}

/// hang.js's main thread blocked in `readFileSync` on a FIFO inside
/// `loadConfig`: the live dump, then a core by nodeprof and one by gcore;
/// both name the same call and JS frames, at the same positions.
fn dump_core_of_a_blocked_main_thread(major: u32) {
    let _lock = serial();
    let dir = scratch_dir();
    let node = node_major(major);
    let fifo = dir.path().join("config.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let proc = Proc::node(
        &node,
        &[],
        HANG,
        &["fifo", fifo.to_str().unwrap()],
        dir.path(),
    );
    proc.wait_for_line("ready", READY_TIMEOUT);
    wait_in_syscall(proc.pid, proc.pid, &[SYS_OPENAT], READY_TIMEOUT);

    let live = run_nodeprof(
        &["dump", "-p", &proc.pid.to_string()],
        dir.path(),
        RUN_TIMEOUT,
    );
    live.assert_success();
    let ours = dir.path().join("hang.core");
    core(proc.pid, &ours, &[], dir.path()).assert_success();
    let theirs = gcore(proc.pid, &dir.path().join("gcore"));
    assert_not_stopped(proc.pid);

    for file in [&ours, &theirs] {
        let dump = dump_core(file, &node, dir.path());
        let verdict = verdict_of(&dump.stdout);
        assert!(
            verdict.starts_with(&format!(
                "blocked in a synchronous call: openat {}",
                fifo.display()
            )) && verdict.contains("← readFileSync ← loadConfig ← handleRequest"),
            "{}: verdict {verdict:?}",
            file.display()
        );
        assert!(
            dump.stdout
                .contains(&format!("read from the core file {}", file.display())),
            "{}",
            dump.stdout
        );
        for name in ["loadConfig", "handleRequest"] {
            assert_eq!(
                js_line(&dump.stdout, name),
                js_line(&live.stdout, name),
                "{name} in the core of {} and in the live dump",
                file.display()
            );
        }
        // libc's openat wrapper, under node's own fs binding: the native
        // frames too.
        let frames = main_thread_frames(&dump.stdout);
        assert!(
            frames.iter().any(|l| l.contains("(node)")),
            "no frame of node itself: {frames:#?}"
        );
    }
    // The target was resumed: it reads the FIFO once written.
    std::fs::write(&fifo, b"hello").unwrap();
    proc.wait_for_line("done", READY_TIMEOUT);
}

#[test]
fn dump_core_of_a_blocked_main_thread_node18() {
    dump_core_of_a_blocked_main_thread(18);
}

#[test]
fn dump_core_of_a_blocked_main_thread_node20() {
    dump_core_of_a_blocked_main_thread(20);
}

#[test]
fn dump_core_of_a_blocked_main_thread_node22() {
    dump_core_of_a_blocked_main_thread(22);
}

#[test]
fn dump_core_of_a_blocked_main_thread_node24() {
    dump_core_of_a_blocked_main_thread(24);
}

#[test]
fn dump_core_of_a_blocked_main_thread_node26() {
    dump_core_of_a_blocked_main_thread(26);
}

/// A core the kernel writes when hang.js, blocked as above, is killed by
/// SIGABRT (`core_pattern` is `core` here: the file lands in its working
/// directory; `ulimit -c unlimited` for it alone).
fn dump_core_written_by_the_kernel(major: u32) {
    let _lock = serial();
    let dir = scratch_dir();
    let node = node_major(major);
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    assert_eq!(
        pattern.trim(),
        "core",
        "this test needs the kernel to write cores as ./core"
    );
    let fifo = dir.path().join("config.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"ulimit -c unlimited; exec "$0" "$1" fifo "$2""#)
        .arg(&node)
        .arg(fixture(HANG))
        .arg(&fifo)
        .current_dir(dir.path());
    let mut proc = Proc::spawn(cmd);
    proc.wait_for_line("ready", READY_TIMEOUT);
    wait_in_syscall(proc.pid, proc.pid, &[SYS_OPENAT], READY_TIMEOUT);
    let live = run_nodeprof(
        &["dump", "-p", &proc.pid.to_string()],
        dir.path(),
        RUN_TIMEOUT,
    );
    live.assert_success();
    send_signal(proc.pid, libc::SIGABRT);
    let status = proc.wait(Duration::from_secs(60));
    assert!(
        std::os::unix::process::ExitStatusExt::core_dumped(&status),
        "no core dumped: {status:?}"
    );
    let file = dir.path().join("core");
    let dump = dump_core(&file, &node, dir.path());
    let verdict = verdict_of(&dump.stdout);
    assert!(
        verdict.starts_with(&format!(
            "blocked in a synchronous call: openat {}",
            fifo.display()
        )) && verdict.contains("← readFileSync ← loadConfig ← handleRequest"),
        "verdict {verdict:?}"
    );
    for name in ["loadConfig", "handleRequest"] {
        assert_eq!(js_line(&dump.stdout, name), js_line(&live.stdout, name));
    }
}

#[test]
fn dump_core_written_by_the_kernel_node20() {
    dump_core_written_by_the_kernel(20);
}

#[test]
fn dump_core_written_by_the_kernel_node24() {
    dump_core_written_by_the_kernel(24);
}

/// hang.js spinning in a catastrophic regex inside `checkInput`: the core's
/// verdict is the running JS function, at the live dump's position.
fn dump_core_of_a_spinning_main_thread(major: u32) {
    let _lock = serial();
    let dir = scratch_dir();
    let node = node_major(major);
    let proc = Proc::node(&node, &[], HANG, &["regex", "-"], dir.path());
    proc.wait_for_line("ready", READY_TIMEOUT);
    wait_in_syscall(proc.pid, proc.pid, &["running"], READY_TIMEOUT);
    let live = run_nodeprof(
        &["dump", "-p", &proc.pid.to_string()],
        dir.path(),
        RUN_TIMEOUT,
    );
    live.assert_success();
    let ours = dir.path().join("spin.core");
    core(proc.pid, &ours, &[], dir.path()).assert_success();
    assert_not_stopped(proc.pid);
    let dump = dump_core(&ours, &node, dir.path());
    let verdict = verdict_of(&dump.stdout);
    assert!(
        verdict.starts_with("running JavaScript: checkInput ← start"),
        "verdict {verdict:?}"
    );
    assert_eq!(
        js_line(&dump.stdout, "checkInput"),
        js_line(&live.stdout, "checkInput")
    );
}

#[test]
fn dump_core_of_a_spinning_main_thread_node20() {
    dump_core_of_a_spinning_main_thread(20);
}

#[test]
fn dump_core_of_a_spinning_main_thread_node24() {
    dump_core_of_a_spinning_main_thread(24);
}

/// Not a core, a core of another node, no --exe: one line each.
#[test]
fn dump_core_bad_input_is_one_line_errors() {
    let _lock = serial();
    let dir = scratch_dir();
    let (node20, node24) = (node_major(20), node_major(24));
    let target = start(&node24, &["idle"], dir.path());
    let file = dir.path().join("idle.core");
    core(target.proc.pid, &file, &[], dir.path()).assert_success();
    let dump = |args: &[&std::ffi::OsStr]| {
        let mut all: Vec<&std::ffi::OsStr> = vec!["dump".as_ref()];
        all.extend_from_slice(args);
        run_nodeprof(&all, dir.path(), RUN_TIMEOUT)
    };
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a core\n").unwrap();
    dump(&[
        "--core".as_ref(),
        text.as_os_str(),
        "--exe".as_ref(),
        node24.as_os_str(),
    ])
    .assert_error("not an ELF file");
    dump(&[
        "--core".as_ref(),
        node24.as_os_str(),
        "--exe".as_ref(),
        node24.as_os_str(),
    ])
    .assert_error("is not a core file");
    dump(&[
        "--core".as_ref(),
        file.as_os_str(),
        "--exe".as_ref(),
        node20.as_os_str(),
    ])
    .assert_error("was not taken from");
    dump(&["--core".as_ref(), file.as_os_str()]).assert_error("needs --exe");
    let missing = dir.path().join("missing.core");
    dump(&[
        "--core".as_ref(),
        missing.as_os_str(),
        "--exe".as_ref(),
        node24.as_os_str(),
    ])
    .assert_error("cannot read");
}
