//! The release artifacts of `cargo xtask dist` (as root): the static binary
//! records from a clean directory with a minimal environment; the npm
//! packages install offline and run through `npx`; the .deb installs a
//! working /usr/bin/nodeprof (removed again); the man page renders.
//!
//! The first test to need the artifacts runs `cargo xtask dist` once (a
//! release build for musl: minutes the first time, seconds after).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use nodeprof_tests::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const READY: Duration = Duration::from_secs(20);

/// target/dist, made by `cargo xtask dist` once per test run.
fn dist() -> PathBuf {
    static DIST: OnceLock<PathBuf> = OnceLock::new();
    DIST.get_or_init(|| {
        let root = workspace_root();
        let out = Command::new(env!("CARGO"))
            .args(["xtask", "dist"])
            .current_dir(&root)
            .stdin(Stdio::null())
            .output()
            .expect("run cargo xtask dist");
        assert!(
            out.status.success(),
            "cargo xtask dist failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        target.join("dist")
    })
    .clone()
}

fn artifact(suffix: &str) -> PathBuf {
    let dist = dist();
    fs::read_dir(&dist)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().unwrap().to_string_lossy().ends_with(suffix))
        .unwrap_or_else(|| panic!("no *{suffix} in {}", dist.display()))
}

/// Runs `cmd` to completion; its stdout, or a panic with everything it said.
fn output(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `nodeprof --version` says what a bug report needs.
fn assert_version(text: &str) {
    for needle in [
        "nodeprof 0.",
        "commit ",
        "18, 20, 22, 24, 26",
        "Linux 5.15+",
        "nodeprof doctor",
    ] {
        assert!(text.contains(needle), "no {needle:?} in --version:\n{text}");
    }
    assert!(!text.contains("commit unknown"), "{text}");
}

/// The profile of busy.js names its hot JS function.
fn assert_names_hot_loop(prefix: &Path) {
    let outputs = Outputs::load(prefix);
    let names = outputs.function_names();
    assert!(
        names.iter().any(|n| n == "hotLoop"),
        "hotLoop not named: {names:?}"
    );
}

/// `CMD record` launching busy.js for 3 s: succeeds and names hotLoop.
fn record_busy(cmd: Command, prefix: &Path, dir: &Path) {
    let (node, script) = (node20(), fixture("busy.js"));
    let args = [
        "record".as_ref(),
        "-q".as_ref(),
        "-d".as_ref(),
        "3".as_ref(),
        "-o".as_ref(),
        prefix.as_os_str(),
        "--".as_ref(),
        node.as_os_str(),
        script.as_os_str(),
        "10".as_ref(),
    ];
    let run = spawn_nodeprof_with::<&std::ffi::OsStr>(cmd, &args, dir).finish(RUN_TIMEOUT);
    run.assert_success();
    assert_names_hot_loop(prefix);
}

/// The shipped binary: static, stripped, under 15 MB; from a clean directory
/// with nothing but PATH=/usr/bin:/bin it launches and profiles node and
/// names its JS functions; the checksums hold.
#[test]
fn static_binary_records_from_a_clean_directory() {
    let _serial = serial();
    let bin = dist().join("nodeprof");
    let size = fs::metadata(&bin).unwrap().len();
    assert!(size < 15_000_000, "the binary is {size} bytes");
    let file = output(Command::new("file").arg(&bin));
    assert!(
        file.contains("static") && file.contains("stripped") && !file.contains("not stripped"),
        "{file}"
    );
    let dist = dist();
    output(
        Command::new("sha256sum")
            .args(["--check", "SHA256SUMS"])
            .current_dir(&dist),
    );

    let clean = scratch_dir();
    let copy = clean.path().join("nodeprof");
    fs::copy(&bin, &copy).unwrap();
    let version = output(Command::new(&copy).arg("--version").env_clear());
    assert_version(&version);
    let prefix = clean.path().join("busy");
    let mut cmd = Command::new(&copy);
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir(clean.path());
    record_busy(cmd, &prefix, clean.path());
}

/// The tarball holds the binary, README, licenses, man pages and
/// completions; `man -l` renders the page with every command.
#[test]
fn tarball_has_man_page_and_completions() {
    let _serial = serial();
    let tarball = artifact("-x86_64-unknown-linux-musl.tar.gz");
    let listing = output(Command::new("tar").arg("-tzf").arg(&tarball));
    let stem = tarball
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".tar.gz")
        .to_string();
    for file in [
        "nodeprof",
        "README.md",
        "LICENSE-MIT",
        "LICENSE-APACHE",
        "man/nodeprof.1",
        "man/nodeprof-record.1",
        "completions/nodeprof.bash",
        "completions/_nodeprof",
        "completions/nodeprof.fish",
    ] {
        let path = format!("{stem}/{file}");
        assert!(
            listing.lines().any(|l| l == path),
            "no {path} in:\n{listing}"
        );
    }
    let dir = scratch_dir();
    output(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .current_dir(dir.path()),
    );
    let page = dir.path().join(&stem).join("man/nodeprof.1");
    let text = output(
        Command::new("man")
            .arg("-l")
            .arg(&page)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100"),
    );
    for needle in [
        "NAME",
        "nodeprof",
        "record",
        "doctor",
        "snapshot",
        "SUBCOMMANDS",
    ] {
        assert!(
            text.contains(needle),
            "no {needle:?} in the man page:\n{text}"
        );
    }
    assert!(
        !text.contains("generate-assets"),
        "the hidden command is documented"
    );
    let bash =
        fs::read_to_string(dir.path().join(&stem).join("completions/nodeprof.bash")).unwrap();
    assert!(
        bash.contains("doctor") && bash.contains("--off-cpu"),
        "bash completions"
    );
}

/// `npm install ./launcher.tgz ./platform.tgz` offline into an empty
/// directory; `npx nodeprof` runs the platform package's binary with the
/// same arguments and exit code, and a signal to the launcher stops the
/// recording the way it stops nodeprof.
#[test]
fn npm_packages_install_offline_and_run_with_npx() {
    let _serial = serial();
    let launcher = artifact(&format!("nodeprof-{}.tgz", env!("CARGO_PKG_VERSION")));
    let platform = artifact(&format!(
        "nodeprof-linux-x64-{}.tgz",
        env!("CARGO_PKG_VERSION")
    ));
    let dir = scratch_dir();
    let project = dir.path();
    output(
        Command::new("npm")
            .args(["install", "--offline", "--no-audit", "--no-fund"])
            .arg(&launcher)
            .arg(&platform)
            .current_dir(project),
    );
    let npx = |args: &[&std::ffi::OsStr]| {
        let mut cmd = Command::new("npx");
        cmd.args(["--offline", "--no-install", "nodeprof"])
            .args(args)
            .current_dir(project);
        cmd
    };
    assert_version(&output(&mut npx(&["--version".as_ref()])));
    let prefix = project.join("npx");
    record_busy(npx(&[]), &prefix, project);
    // An error keeps its one line and exit code 1.
    let missing =
        spawn_nodeprof_with(npx(&[]), &["record", "-p", "4194000"], project).finish(RUN_TIMEOUT);
    missing.assert_error("no such process");

    // SIGTERM to the launcher (node 20: no process.execve, so it forwards).
    let target = Proc::node(&node20(), &[], "busy.js", &["30"], project);
    target.wait_for_line("ready", READY);
    let mut cmd = Command::new(node20());
    cmd.arg(project.join("node_modules/nodeprof/bin/nodeprof.js"));
    let signalled = project.join("signalled");
    let recording = spawn_nodeprof_with(cmd, &record_args(target.pid, &signalled, &[]), project);
    let started = wait_until(READY, || {
        descendants(recording.proc.pid)
            .into_iter()
            .any(|p| perf_attachments(p) >= online_cpus())
    });
    assert!(started, "the launched nodeprof never sampled");
    std::thread::sleep(Duration::from_secs(1));
    send_signal(recording.proc.pid, libc::SIGTERM);
    let run = recording.finish(RUN_TIMEOUT);
    run.assert_success();
    assert_eq!(run.stop_reason(), "terminated", "{}", run.stdout);
    assert_names_hot_loop(&signalled);
}

/// Removes the package again when dropped, also when the test fails.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["-r", "nodeprof"]).output();
    }
}

/// The .deb lists the binary, man pages, completions and copyright;
/// `dpkg -i` installs a working /usr/bin/nodeprof and `man nodeprof`
/// finds the page; `dpkg -r` removes it all.
#[test]
fn deb_installs_a_working_nodeprof() {
    let _serial = serial();
    let deb = artifact("_amd64.deb");
    let info = output(Command::new("dpkg-deb").arg("--info").arg(&deb));
    for needle in ["Package: nodeprof", "Architecture: amd64", "Version: "] {
        assert!(info.contains(needle), "no {needle:?}:\n{info}");
    }
    let contents = output(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for path in [
        "./usr/bin/nodeprof",
        "./usr/share/man/man1/nodeprof.1.gz",
        "./usr/share/man/man1/nodeprof-record.1.gz",
        "./usr/share/bash-completion/completions/nodeprof",
        "./usr/share/zsh/vendor-completions/_nodeprof",
        "./usr/share/fish/vendor_completions.d/nodeprof.fish",
        "./usr/share/doc/nodeprof/copyright",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(path)),
            "no {path} in:\n{contents}"
        );
    }
    let owner = Command::new("dpkg")
        .args(["-S", "/usr/bin/nodeprof"])
        .output()
        .unwrap();
    let already = Path::new("/usr/bin/nodeprof").exists();
    assert!(
        !already || String::from_utf8_lossy(&owner.stdout).starts_with("nodeprof:"),
        "/usr/bin/nodeprof exists and is not from our package: not touching it"
    );
    let _installed = Installed;
    output(Command::new("dpkg").arg("-i").arg(&deb));
    assert_version(&output(Command::new("/usr/bin/nodeprof").arg("--version")));
    let doctor = output(Command::new("/usr/bin/nodeprof").arg("doctor"));
    assert!(doctor.contains("  record            works"), "{doctor}");
    let page = output(
        Command::new("man")
            .args(["nodeprof"])
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100"),
    );
    assert!(page.contains("doctor"), "{page}");
    drop(_installed);
    assert!(
        !Path::new("/usr/bin/nodeprof").exists(),
        "dpkg -r left /usr/bin/nodeprof"
    );
}
