//! `nodeprof doctor` (as root): each feature is made unavailable where that
//! is possible here — capabilities dropped, perf_event_paranoid raised, a
//! pid namespace without the host's processes — and doctor's verdict and
//! hint must follow; the commands themselves fail with the same words.

use std::fs;
use std::process::Command;
use std::time::Duration;

use nodeprof_tests::*;
use serde_json::Value;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const READY: Duration = Duration::from_secs(20);

/// `nodeprof doctor --json` run through `wrapper` (e.g. `setpriv …`), parsed.
fn doctor_json(wrapper: &[&str], bin: &std::path::Path, dir: &std::path::Path) -> Value {
    let run = run_wrapped(wrapper, bin, &["doctor", "--json"], dir);
    run.assert_success();
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("doctor --json is not JSON ({e}):\n{}", run.stdout))
}

fn run_wrapped(
    wrapper: &[&str],
    bin: &std::path::Path,
    args: &[&str],
    dir: &std::path::Path,
) -> Run {
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut cmd = Command::new(program);
            cmd.args(rest).arg(bin);
            cmd
        }
        None => Command::new(bin),
    };
    cmd.current_dir(dir);
    spawn_nodeprof_with(cmd, args, dir).finish(RUN_TIMEOUT)
}

/// The verdict of `command`: ("works" | "works_without" | "cannot", why).
fn verdict(doctor: &Value, command: &str) -> (String, String) {
    let entry = doctor["commands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["command"] == command)
        .unwrap_or_else(|| panic!("no verdict for {command}: {doctor:#}"));
    let why = match &entry["why"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::new(),
    };
    (entry["verdict"].as_str().unwrap().to_string(), why)
}

fn feature(doctor: &Value, name: &str) -> (String, String) {
    let entry = doctor["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["feature"] == name)
        .unwrap_or_else(|| panic!("no feature {name}: {doctor:#}"));
    (
        entry["outcome"].as_str().unwrap().to_string(),
        entry["detail"].as_str().unwrap_or("").to_string(),
    )
}

const COMMANDS: [&str; 9] = [
    "record",
    "record --off-cpu",
    "gc",
    "dump",
    "snapshot",
    "core",
    "watch",
    "heap",
    "info",
];

/// As root on the host, every feature is tried and works, every command
/// works, and doctor leaves nothing loaded.
#[test]
fn as_root_everything_works() {
    let _serial = serial();
    let dir = scratch_dir();
    let doctor = doctor_json(&[], &nodeprof_bin(), dir.path());
    for feature in doctor["features"].as_array().unwrap() {
        assert_eq!(feature["outcome"], "works", "{feature:#}");
    }
    for command in COMMANDS {
        assert_eq!(
            verdict(&doctor, command).0,
            "works",
            "{command}: {doctor:#}"
        );
    }
    assert!(doctor["fixes"].as_array().unwrap().is_empty(), "{doctor:#}");
    assert!(!nodeprof::sampler_loaded() && !nodeprof::call_tracer_loaded());
    let text = run_nodeprof(&["doctor"], dir.path(), RUN_TIMEOUT);
    text.assert_success();
    for line in [
        "  record            works",
        "  heap              works",
        "kernel features, each tried:",
    ] {
        assert!(text.stdout.contains(line), "no {line:?}:\n{}", text.stdout);
    }
}

/// Without any capability (root with an empty bounding set): the eBPF
/// commands cannot, in the words `record` and `gc` fail with; heap works.
#[test]
fn without_capabilities_the_verdict_is_the_commands_own_error() {
    let _serial = serial();
    let dir = scratch_dir();
    let target = Proc::node(&node20(), &[], "busy.js", &["30"], dir.path());
    target.wait_for_line("ready", READY);
    let no_caps = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"];
    let doctor = doctor_json(&no_caps, &nodeprof_bin(), dir.path());
    for cap in doctor["capabilities"].as_array().unwrap() {
        assert_eq!(cap["held"], false, "{cap}");
    }
    assert_eq!(feature(&doctor, "bpf_syscall").0, "denied");
    assert_eq!(verdict(&doctor, "heap").0, "works");
    let pid = target.pid.to_string();
    for (command, args) in [
        ("record", vec!["record", "-q", "-p", &pid, "-d", "1"]),
        ("gc", vec!["gc", "-p", &pid, "-d", "1"]),
        ("dump", vec!["dump", "-p", &pid]),
    ] {
        let (kind, why) = verdict(&doctor, command);
        assert_eq!(kind, "cannot", "{command}: {why}");
        assert!(
            why.contains("lacks CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE")
                && why.contains("sudo setcap"),
            "{command}: {why}"
        );
        let run = run_wrapped(&no_caps, &nodeprof_bin(), &args, dir.path());
        run.assert_error("permission denied");
        assert_eq!(
            run.stderr.trim(),
            format!("nodeprof: error: {why}"),
            "`{command}` and doctor say different things"
        );
    }
    let text = run_wrapped(&no_caps, &nodeprof_bin(), &["doctor"], dir.path());
    assert!(
        text.stdout.contains("fix: nodeprof lacks CAP_BPF"),
        "{}",
        text.stdout
    );
}

/// Restores kernel.perf_event_paranoid when dropped, also when the test panics.
struct Paranoid(String);

impl Paranoid {
    const PATH: &str = "/proc/sys/kernel/perf_event_paranoid";

    fn set(level: i32) -> Paranoid {
        let before = fs::read_to_string(Self::PATH).unwrap().trim().to_string();
        let guard = Paranoid(before);
        fs::write(Self::PATH, level.to_string()).unwrap();
        guard
    }
}

impl Drop for Paranoid {
    fn drop(&mut self) {
        let _ = fs::write(Self::PATH, &self.0);
    }
}

/// As an unprivileged user, opening perf events of every process follows
/// kernel.perf_event_paranoid: allowed at 0, refused at 2 with the setting
/// and the missing capability named.
#[test]
fn perf_event_paranoid_decides_for_an_unprivileged_user() {
    use std::os::unix::fs::PermissionsExt;
    let _serial = serial();
    let dir = scratch_dir();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("nodeprof");
    fs::copy(nodeprof_bin(), &copy).unwrap();
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let original = fs::read_to_string(Paranoid::PATH).unwrap();
    let lowered = {
        let _paranoid = Paranoid::set(0);
        doctor_json(&nobody, &copy, dir.path())
    };
    let raised = {
        let _paranoid = Paranoid::set(2);
        doctor_json(&nobody, &copy, dir.path())
    };
    assert_eq!(
        fs::read_to_string(Paranoid::PATH).unwrap(),
        original,
        "not restored"
    );
    assert_eq!(feature(&lowered, "perf_events").0, "works", "{lowered:#}");
    let (outcome, detail) = feature(&raised, "perf_events");
    assert_eq!(outcome, "denied");
    assert!(
        detail.contains("kernel.perf_event_paranoid is 2") && detail.contains("CAP_PERFMON"),
        "{detail}"
    );
    // Neither is enough for recording: BPF needs CAP_BPF whatever the setting.
    assert_eq!(verdict(&lowered, "record").0, "cannot");
    assert_eq!(verdict(&lowered, "heap").0, "works");
}

/// In a pid namespace of its own (a container without --pid=host) the
/// eBPF commands cannot, with the docker and Kubernetes fix; `record`
/// fails with the same sentence instead of recording nothing.
#[test]
fn in_a_pid_namespace_of_its_own_the_fix_is_host_pid() {
    let _serial = serial();
    let dir = scratch_dir();
    let unshare = ["unshare", "--pid", "--fork", "--mount-proc"];
    let doctor = doctor_json(&unshare, &nodeprof_bin(), dir.path());
    let (kind, why) = verdict(&doctor, "record");
    assert_eq!(kind, "cannot", "{why}");
    for needle in ["pid namespace of its own", "--pid=host", "hostPID: true"] {
        assert!(why.contains(needle), "no {needle:?} in: {why}");
    }
    for command in ["gc", "dump", "watch", "record --off-cpu"] {
        assert_eq!(
            verdict(&doctor, command),
            (kind.clone(), why.clone()),
            "{command}"
        );
    }
    let (kind, parts) = verdict(&doctor, "core");
    assert_eq!(kind, "works_without", "{parts}");
    assert!(parts.contains("outside this container"), "{parts}");
    assert!(doctor["fixes"][0].as_str().unwrap().contains("--pid=host"));
    // The kernel features themselves work in the namespace.
    assert_eq!(feature(&doctor, "perf_event_programs").0, "works");
    let run = run_wrapped(
        &unshare,
        &nodeprof_bin(),
        &["record", "-q", "-p", "1", "-d", "1"],
        dir.path(),
    );
    run.assert_error("--pid=host");
    assert_eq!(run.stderr.trim(), format!("nodeprof: error: {why}"));
}
