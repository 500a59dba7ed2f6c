//! Launch mode: start a command paused before `exec`, so the probe is attached
//! before the target runs its first instruction.
//!
//! `std::process::Command` cannot do this: `spawn` blocks until the child has
//! exec'd, so a child that waits for us would deadlock. We fork by hand before
//! any other thread exists and the child only calls async-signal-safe
//! functions (`read`, `execve`, `_exit`).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::TargetError;

/// A child process stopped just before `exec`.
#[derive(Debug)]
pub struct Launched {
    pub pid: u32,
    /// The program exec'd, as found on PATH.
    pub program: PathBuf,
    release_fd: libc::c_int,
    command: String,
}

impl Launched {
    /// Forks `argv`; the child execs it once [`Launched::release`] is called.
    /// Must be called while the process has a single thread.
    pub fn spawn(argv: &[String]) -> Result<Launched, TargetError> {
        let command = argv.join(" ");
        let program = argv
            .first()
            .ok_or_else(|| TargetError::CommandNotFound(String::new()))?;
        let path = find_program(program).ok_or_else(|| {
            if program.contains('/') && Path::new(program).is_file() {
                TargetError::NotExecutable(program.clone())
            } else {
                TargetError::CommandNotFound(program.clone())
            }
        })?;
        let launch_err = |source| TargetError::Launch {
            command: command.clone(),
            source,
        };
        let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|e| launch_err(e.into()))?;
        let c_args: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|e| launch_err(e.into()))?;
        let c_env: Vec<CString> = std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv)
            })
            .collect::<Result<_, _>>()
            .map_err(|e| launch_err(e.into()))?;
        let mut arg_ptrs: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
        arg_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<*const libc::c_char> = c_env.iter().map(|a| a.as_ptr()).collect();
        env_ptrs.push(std::ptr::null());

        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: plain syscalls on owned memory.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(launch_err(std::io::Error::last_os_error()));
        }
        let [read_fd, write_fd] = fds;
        // SAFETY: the child only calls async-signal-safe functions before execve.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(launch_err(std::io::Error::last_os_error()));
        }
        if pid == 0 {
            unsafe {
                libc::close(write_fd);
                let mut byte = 0u8;
                // Proceed only on an explicit go; EOF means nodeprof gave up.
                let n = loop {
                    let n = libc::read(read_fd, (&mut byte as *mut u8).cast(), 1);
                    if n >= 0 || *libc::__errno_location() != libc::EINTR {
                        break n;
                    }
                };
                if n != 1 {
                    libc::_exit(127);
                }
                libc::execve(c_path.as_ptr(), arg_ptrs.as_ptr(), env_ptrs.as_ptr());
                libc::_exit(127);
            }
        }
        // SAFETY: closing our copy of the child's end.
        unsafe { libc::close(read_fd) };
        Ok(Launched {
            pid: pid as u32,
            program: path,
            release_fd: write_fd,
            command,
        })
    }

    /// Lets the child exec its command.
    pub fn release(&mut self) -> Result<(), TargetError> {
        let byte = 1u8;
        // SAFETY: writing one byte from a valid buffer to our pipe.
        let n = unsafe { libc::write(self.release_fd, (&byte as *const u8).cast(), 1) };
        let result = if n == 1 {
            Ok(())
        } else {
            Err(TargetError::Launch {
                command: self.command.clone(),
                source: std::io::Error::last_os_error(),
            })
        };
        self.close();
        result
    }

    /// Reaps the child if it has exited; returns its exit status then.
    pub fn try_wait(&self) -> Option<i32> {
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        let r = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut status, libc::WNOHANG) };
        (r == self.pid as libc::pid_t).then_some(status)
    }

    /// Ends the child: SIGTERM, then SIGKILL if it is still there after
    /// `grace`. Returns its wait status.
    pub fn terminate(&self, grace: std::time::Duration) -> Option<i32> {
        if let Some(status) = self.try_wait() {
            return Some(status);
        }
        // SAFETY: signals to our own child, which we have not reaped.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        let r = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut status, 0) };
        (r == self.pid as libc::pid_t).then_some(status)
    }

    fn close(&mut self) {
        if self.release_fd >= 0 {
            // SAFETY: our own fd, closed once.
            unsafe { libc::close(self.release_fd) };
            self.release_fd = -1;
        }
    }
}

impl Drop for Launched {
    /// Without a release the child sees EOF and exits without running the command.
    fn drop(&mut self) {
        self.close();
    }
}

/// `execvp`'s PATH search, done before fork (execvp itself is not async-signal-safe).
fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        return is_executable(&path).then_some(path);
    }
    let path_var =
        std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_on_path() {
        assert!(find_program("sh").is_some());
        assert!(find_program("/bin/sh").is_some());
        assert!(find_program("no-such-program-nodeprof").is_none());
    }
}
