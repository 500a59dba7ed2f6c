//! The target process: who it is (exe, node or not, namespaces), where its code
//! is mapped, which V8 it runs, and how to launch one paused so profiling
//! starts at its first instruction.

mod launch;
mod maps;
mod runtime;

pub use launch::Launched;
pub use maps::{read_maps, Mapping};
pub use runtime::{discover, Discovery, Runtime, V8Runtime};

use std::fs;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no such process: {0}")]
    NoSuchProcess(u32),
    #[error("cannot inspect process {pid}: {source}")]
    Inspect { pid: u32, source: std::io::Error },
    #[error("cannot launch {command}: {source}")]
    Launch {
        command: String,
        source: std::io::Error,
    },
    #[error("command not found: {0}")]
    CommandNotFound(String),
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
        if tgid.is_some_and(|tgid| tgid != pid) {
            return Err(TargetError::NoSuchProcess(pid));
        }
        let exe = fs::read_link(proc_dir.join("exe")).map_err(io)?;
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

    /// Whether the target looks like Node.js: its executable is named node,
    /// nodejs, node20… (the official binaries and distribution packages are).
    pub fn is_node(&self) -> bool {
        let name = self.exe.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let name = name.trim_end_matches(" (deleted)");
        let version_suffix = |rest: &str| {
            rest.chars()
                .all(|c| c.is_ascii_digit() || c == '.' || c == '-' || c == 'v')
        };
        name == "nodejs"
            || name.strip_prefix("node").is_some_and(version_suffix)
            || self.comm == "node"
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
        // A zombie still has /proc/PID but no longer runs code.
        match fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    != Some("Z")
            }
            Err(_) => false,
        }
    }
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
        assert!(!me.is_node());
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
    fn recognises_node_executables_by_name() {
        let named = |exe: &str| {
            Target {
                pid: 1,
                exe: exe.into(),
                comm: String::new(),
                ns_pid: 1,
            }
            .is_node()
        };
        assert!(named("/usr/bin/node"));
        assert!(named("/usr/bin/nodejs"));
        assert!(named("/opt/node22"));
        assert!(named("/opt/node-v20.1.0"));
        assert!(named("/usr/bin/node (deleted)"));
        assert!(!named("/usr/bin/nodeprof"));
        assert!(!named("/usr/bin/python3"));
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
