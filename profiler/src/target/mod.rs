//! The target process: who it is (exe, namespaces), where its code
//! is mapped, which V8 it runs, and how to launch one paused so profiling
//! starts at its first instruction.

mod launch;
mod runtime;

pub use crate::image::executable_mappings as read_maps;
pub use launch::Launched;
pub use runtime::{discover, Discovery, Runtime, V8Runtime};

use std::fs;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no such process: {0}")]
    NoSuchProcess(u32),
    #[error("{tid} is a thread of process {pid}: give the process id (-p {pid})")]
    IsThread { tid: u32, pid: u32 },
    #[error("process {0} has exited (a zombie its parent has not reaped)")]
    Zombie(u32),
    #[error("process {0} exited while nodeprof attached")]
    Exited(u32),
    #[error("process {pid} ({name}) is a kernel thread: it runs no user-space code")]
    KernelThread { pid: u32, name: String },
    #[error(
        "cannot inspect process {pid}: permission denied. Run nodeprof as root, or grant the capabilities: {setcap}",
        setcap = crate::caps::SETCAP
    )]
    NotPermitted { pid: u32 },
    #[error("cannot inspect process {pid}: {source}")]
    Inspect { pid: u32, source: std::io::Error },
    #[error("cannot launch {command}: {source}")]
    Launch {
        command: String,
        source: std::io::Error,
    },
    #[error("command not found: {0}")]
    CommandNotFound(String),
    #[error("cannot run {0}: permission denied (not an executable file)")]
    NotExecutable(String),
}

/// Whether process `pid` still runs code (a zombie still has /proc/PID).
pub fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// A process nodeprof looks at, by its pid in nodeprof's (root) pid namespace.
#[derive(Debug, Clone)]
pub struct Target {
    pub pid: u32,
    /// The executable as the target sees it (inside its mount namespace).
    pub exe: PathBuf,
    /// The thread name of the main thread.
    pub comm: String,
    /// The pid inside the target's own (innermost) pid namespace; equals `pid`
    /// outside containers. Perf maps are named with it.
    pub ns_pid: u32,
}

impl Target {
    pub fn inspect(pid: u32) -> Result<Target, TargetError> {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        if pid == 0 || !proc_dir.exists() {
            return Err(TargetError::NoSuchProcess(pid));
        }
        let io = |source| TargetError::Inspect { pid, source };
        let status = fs::read_to_string(proc_dir.join("status")).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                TargetError::NoSuchProcess(pid)
            } else {
                io(e)
            }
        })?;
        // A thread id also has a /proc entry; only thread group leaders are processes.
        let tgid = status_field(&status, "Tgid:").and_then(|v| v.parse::<u32>().ok());
        if let Some(tgid) = tgid.filter(|&tgid| tgid != pid) {
            return Err(TargetError::IsThread {
                tid: pid,
                pid: tgid,
            });
        }
        if status_field(&status, "State:").is_some_and(|s| s.starts_with('Z')) {
            return Err(TargetError::Zombie(pid));
        }
        let exe = fs::read_link(proc_dir.join("exe")).map_err(|e| match e.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => TargetError::NotPermitted { pid },
            // Kernel threads have no executable (and no parent but kthreadd).
            Some(libc::ENOENT) if is_kernel_thread(&proc_dir) => TargetError::KernelThread {
                pid,
                name: status_field(&status, "Name:").unwrap_or("").to_string(),
            },
            _ => io(e),
        })?;
        let comm = fs::read_to_string(proc_dir.join("comm"))
            .map_err(io)?
            .trim_end()
            .to_string();
        let ns_pid = status_field(&status, "NSpid:")
            .and_then(|v| v.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(pid);
        Ok(Target {
            pid,
            exe,
            comm,
            ns_pid,
        })
    }

    /// Path of a file as the target sees it, reachable from nodeprof's mount namespace.
    pub fn path_in_root(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{}", self.pid, path))
    }

    /// The perf map V8 writes with `--perf-basic-prof` (inside the target's mount namespace).
    pub fn perf_map_path(&self) -> PathBuf {
        self.path_in_root(&format!("/tmp/perf-{}.map", self.ns_pid))
    }

    pub fn is_alive(&self) -> bool {
        is_alive(self.pid)
    }
}

/// A kernel thread has PF_KTHREAD (0x00200000) in the flags of its stat.
fn is_kernel_thread(proc_dir: &std::path::Path) -> bool {
    let Ok(stat) = fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(6))
        .and_then(|flags| flags.parse::<u64>().ok())
        .is_some_and(|flags| flags & 0x0020_0000 != 0)
}

fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspects_itself() {
        let me = Target::inspect(std::process::id()).unwrap();
        assert_eq!(me.pid, std::process::id());
        assert!(me.exe.exists());
        assert!(me.is_alive());
    }

    #[test]
    fn missing_process_is_reported() {
        // pid_max is at most 2^22, so this pid cannot exist.
        assert!(matches!(
            Target::inspect(u32::MAX - 1),
            Err(TargetError::NoSuchProcess(_))
        ));
        assert!(matches!(
            Target::inspect(0),
            Err(TargetError::NoSuchProcess(0))
        ));
    }

    #[test]
    fn threads_and_kernel_threads_are_named_as_such() {
        let me = std::process::id();
        let handle = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() } as u32;
            Target::inspect(tid).err().map(|e| e.to_string())
        });
        let message = handle.join().unwrap().unwrap();
        assert!(
            message.contains(&format!("is a thread of process {me}")),
            "{message}"
        );
        if let Err(TargetError::KernelThread { pid, .. }) = Target::inspect(2) {
            assert_eq!(pid, 2);
        } else {
            panic!("pid 2 (kthreadd) is a kernel thread");
        }
    }

    #[test]
    fn status_fields_parse() {
        let status = "Name:\tnode\nTgid:\t42\nNSpid:\t42\t1\n";
        assert_eq!(status_field(status, "Tgid:"), Some("42"));
        assert_eq!(
            status_field(status, "NSpid:").and_then(|v| v.split_whitespace().last()),
            Some("1")
        );
    }
}
