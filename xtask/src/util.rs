//! Small helpers shared by the subcommands: paths, running commands, root check.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{bail, Context, Result};

/// The workspace root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` if set, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                std::env::current_dir()
                    .map(|cwd| cwd.join(&dir))
                    .unwrap_or(dir)
            }
        }
        _ => root().join("target"),
    }
}

/// The cargo that runs us (`$CARGO`, set by `cargo run`), so nested builds use
/// the same toolchain; plain `cargo` otherwise.
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(program);
    cmd.current_dir(root());
    cmd.env("PATH", path_with_cargo_bin());
    cmd
}

/// `$CARGO_HOME` (default `~/.cargo`).
pub fn cargo_home() -> Option<PathBuf> {
    match std::env::var_os("CARGO_HOME") {
        Some(h) if !h.is_empty() => Some(PathBuf::from(h)),
        _ => home().map(|h| h.join(".cargo")),
    }
}

pub fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// `$PATH` with `$CARGO_HOME/bin` prepended if it is missing: aya-build looks
/// for `bpf-linker` on `PATH`.
pub fn path_with_cargo_bin() -> OsString {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&current).collect();
    if let Some(bin) = cargo_home().map(|h| h.join("bin")) {
        if !dirs.iter().any(|d| d == &bin) {
            dirs.insert(0, bin);
        }
    }
    std::env::join_paths(dirs).unwrap_or(current)
}

/// The first executable called `name` on `PATH` (plus `$CARGO_HOME/bin`).
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(&path_with_cargo_bin())
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Fails with a clear message unless we run as root.
pub fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask {what}` needs root: nodeprof loads eBPF programs and opens perf events \
             for other processes. Run it as root (e.g. `sudo -E env PATH=\"$PATH\" cargo xtask {what}`)."
        );
    }
    Ok(())
}

/// Renders a command for log lines.
pub fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(char::is_whitespace) {
            s.push_str(&format!("'{a}'"));
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// Runs `cmd` with inherited stdio; error if it cannot start or exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Runs `cmd` with inherited stdio and returns its exit status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    eprintln!("+ {}", display(cmd));
    cmd.status()
        .with_context(|| format!("cannot run `{}`", display(cmd)))
}

/// Runs `cmd` quietly and returns its stdout if it exits 0, `None` otherwise
/// (including when the program does not exist).
pub fn output_ok(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Exit code to hand on for a failed child (signals map to 128+signo).
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// The median (the mean of the two middle values for an even count; NaN
/// for none). Sorts `values`.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// CLOCK_MONOTONIC in µs: the clock of node's `--cpu-prof` and of
/// nodeprof's profiles.
pub fn monotonic_us() -> u64 {
    monotonic_ns() / 1_000
}

/// CLOCK_MONOTONIC, ns: the clock of node's `process.hrtime` and of
/// nodeprof's sample times (xtask does not depend on the nodeprof crate and
/// its eBPF build).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
