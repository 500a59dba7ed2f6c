//! The V8 inside the target: its layout is found once per executable, before
//! the probe or the symbolizer needs it, and found again after an `exec`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::v8::{LayoutError, LayoutReport, V8Layout};

/// The V8 of one executable: the layout the sampler and the JS naming use,
/// and how it was found.
#[derive(Clone)]
pub struct V8Runtime {
    pub layout: Arc<V8Layout>,
    pub report: LayoutReport,
}

/// An executable the target runs, seen for the first time.
pub struct Discovery {
    /// The executable as the target sees it (inside its mount namespace).
    pub exe: PathBuf,
    pub v8: Result<V8Runtime, LayoutError>,
}

/// Reads the V8 layout of a binary (a path nodeprof can open).
pub fn discover(binary: &Path) -> Result<V8Runtime, LayoutError> {
    let (layout, report) = V8Layout::from_binary(binary)?;
    Ok(V8Runtime {
        layout: Arc::new(layout),
        report,
    })
}

/// Watches which executable a process runs.
pub struct Runtime {
    pid: u32,
    /// The executable's file, by device and inode: its path reads
    /// `… (deleted)` once a package upgrade replaces it, which is no exec.
    exe: Option<(u64, u64)>,
}

/// Device and inode of the file at `path` (through /proc's links too).
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Runtime {
    pub fn new(pid: u32) -> Runtime {
        Runtime { pid, exe: None }
    }

    /// Launch mode: the program the paused child is about to exec, so JS
    /// frames are named from its first instruction. If the exec'd image turns
    /// out different (a wrapper script), [`Runtime::poll`] finds that one.
    pub fn preload(&mut self, program: &Path) -> Option<Discovery> {
        let program = std::fs::canonicalize(program).ok()?;
        self.exe = Some(file_id(&program)?);
        Some(Discovery {
            v8: discover(&program),
            exe: program,
        })
    }

    /// Whether the target's executable is no longer the one the last
    /// [`Runtime::poll`] found (an exec since), without taking it in.
    pub fn exe_changed(&self) -> bool {
        let link = format!("/proc/{}/exe", self.pid);
        self.exe.is_some() && file_id(Path::new(&link)) != self.exe
    }

    /// The target's executable, when it is new since the last call (the
    /// first look, or an exec of another file); `None` while it is
    /// unchanged or unreadable.
    pub fn poll(&mut self) -> Option<Discovery> {
        let link = format!("/proc/{}/exe", self.pid);
        let id = file_id(Path::new(&link))?;
        // A launched command before its exec is still a copy of nodeprof.
        if std::env::current_exe().ok().and_then(|me| file_id(&me)) == Some(id) {
            return None;
        }
        if self.exe == Some(id) {
            return None;
        }
        let exe = std::fs::read_link(&link).ok()?;
        self.exe = Some(id);
        // Through the link: it reaches the very file, even deleted or in another mount namespace.
        Some(Discovery {
            exe,
            v8: discover(Path::new(&link)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_discovered_once() {
        let mut runtime = Runtime::new(std::process::id());
        // This test binary is nodeprof's own: a copy of nodeprof is not a target yet.
        assert!(runtime.poll().is_none());
        let mut other = Runtime::new(1);
        if let Some(found) = other.poll() {
            assert!(found.v8.is_err(), "init is not V8");
            assert!(other.poll().is_none(), "unchanged executable found twice");
        }
    }
}
