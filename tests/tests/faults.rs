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
    // kthreadd: a kernel thread has no executable.
    let run = run_nodeprof(&["info", "-p", "2"], dir.path(), RUN_TIMEOUT);
    run.assert_error("process 2");
    assert_eq!(run.stderr.matches("(os error").count(), 1, "{}", run.stderr);
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

/// SIGKILL mid-recording: no file under the output names, and the same `-o`
/// works for the next run.
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
        names_in(&out).iter().all(|n| n.starts_with('.')),
        "{:?}",
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
