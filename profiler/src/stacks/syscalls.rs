//! x86-64 system calls a blocked thread sits in, and their arguments made
//! readable: a file descriptor becomes what it refers to, a path is read
//! from the thread's memory, a futex says whether it waits.

use serde::Serialize;

use crate::v8::memory::Memory;

/// A system call in progress, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Syscall {
    pub nr: i64,
    /// `read`, `epoll_wait`…; `syscall_N` for one not in the table.
    pub name: String,
    pub args: [u64; 6],
    /// The arguments that help a reader, e.g. `fd 17 /tmp/x.fifo` or `"/tmp/x.fifo"`.
    pub detail: String,
}

impl Syscall {
    /// The call and its useful arguments in one phrase: `openat /tmp/x.fifo`.
    pub fn summary(&self) -> String {
        if self.detail.is_empty() {
            self.name.clone()
        } else {
            format!("{} {}", self.name, self.detail)
        }
    }

    /// Whether this is the event loop's wait for I/O (libuv polls with epoll).
    pub fn is_event_loop_wait(&self) -> bool {
        matches!(
            self.name.as_str(),
            "epoll_wait" | "epoll_pwait" | "epoll_pwait2" | "io_uring_enter"
        )
    }
}

/// How an argument is shown.
#[derive(Clone, Copy)]
enum Arg {
    Fd,
    Path,
    Int,
    Futex,
    Skip,
}

/// The calls a thread is commonly found blocked in, with their argument kinds.
fn describe(nr: i64) -> Option<(&'static str, &'static [Arg])> {
    use Arg::*;
    Some(match nr {
        0 => ("read", &[Fd]),
        1 => ("write", &[Fd]),
        2 => ("open", &[Path]),
        3 => ("close", &[Fd]),
        4 => ("stat", &[Path]),
        7 => ("poll", &[Skip, Int, Int]),
        17 => ("pread64", &[Fd]),
        18 => ("pwrite64", &[Fd]),
        19 => ("readv", &[Fd]),
        20 => ("writev", &[Fd]),
        23 => ("select", &[Int]),
        34 => ("pause", &[]),
        35 => ("nanosleep", &[]),
        42 => ("connect", &[Fd]),
        43 => ("accept", &[Fd]),
        44 => ("sendto", &[Fd]),
        45 => ("recvfrom", &[Fd]),
        46 => ("sendmsg", &[Fd]),
        47 => ("recvmsg", &[Fd]),
        61 => ("wait4", &[Int]),
        72 => ("fcntl", &[Fd]),
        73 => ("flock", &[Fd]),
        74 => ("fsync", &[Fd]),
        75 => ("fdatasync", &[Fd]),
        128 => ("rt_sigtimedwait", &[]),
        130 => ("rt_sigsuspend", &[]),
        202 => ("futex", &[Futex]),
        217 => ("getdents64", &[Fd]),
        230 => ("clock_nanosleep", &[]),
        232 => ("epoll_wait", &[Fd, Skip, Int, Int]),
        247 => ("waitid", &[Skip, Int]),
        257 => ("openat", &[Skip, Path]),
        262 => ("newfstatat", &[Skip, Path]),
        270 => ("pselect6", &[Int]),
        271 => ("ppoll", &[Skip, Int]),
        281 => ("epoll_pwait", &[Fd, Skip, Int, Int]),
        288 => ("accept4", &[Fd]),
        332 => ("statx", &[Skip, Path]),
        426 => ("io_uring_enter", &[Fd]),
        437 => ("openat2", &[Skip, Path]),
        441 => ("epoll_pwait2", &[Fd, Skip, Int]),
        _ => return None,
    })
}

/// `FUTEX_*` operations (without the PRIVATE and CLOCK_REALTIME flags).
fn futex_op(op: u64) -> &'static str {
    match op & 0x7f {
        0 => "FUTEX_WAIT",
        1 => "FUTEX_WAKE",
        9 => "FUTEX_WAIT_BITSET",
        6 => "FUTEX_LOCK_PI",
        11 => "FUTEX_WAIT_REQUEUE_PI",
        _ => "FUTEX_OP",
    }
}

/// Decodes system call `nr` with `args`; `mem` reads the strings it points
/// to, `fd_target` says what a descriptor refers to.
pub fn decode<M: Memory + ?Sized>(
    nr: i64,
    args: [u64; 6],
    mem: &M,
    fd_target: impl Fn(u64) -> Option<String>,
) -> Syscall {
    let Some((name, kinds)) = describe(nr) else {
        return Syscall {
            nr,
            name: format!("syscall_{nr}"),
            args,
            detail: String::new(),
        };
    };
    let mut parts = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let value = args[i];
        match kind {
            Arg::Fd => match fd_target(value) {
                Some(target) => parts.push(format!("fd {value} {target}")),
                None => parts.push(format!("fd {value}")),
            },
            Arg::Path => {
                parts.push(read_c_string(mem, value).unwrap_or_else(|| format!("{value:#x}")))
            }
            // These are C `int`s: a timeout of -1 arrives as 0xffffffff.
            Arg::Int => parts.push((value as u32 as i32).to_string()),
            Arg::Futex => {
                parts.push(format!("{value:#x} {}", futex_op(args[1])));
            }
            Arg::Skip => {}
        }
    }
    // epoll_wait's last shown number is its timeout: say so.
    if name.starts_with("epoll_") && parts.len() >= 3 {
        let timeout = parts.pop().unwrap_or_default();
        let max = parts.pop().unwrap_or_default();
        parts.push(format!("maxevents {max}, timeout {timeout} ms"));
    }
    Syscall {
        nr,
        name: name.to_string(),
        args,
        detail: parts.join(", "),
    }
}

/// A NUL-terminated string of the target, up to 4 KiB.
fn read_c_string<M: Memory + ?Sized>(mem: &M, addr: u64) -> Option<String> {
    if addr == 0 {
        return None;
    }
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < 4096 {
        // Up to the next 256-byte boundary, so no read crosses into an unmapped page needlessly.
        let len = (256 - (at % 256)) as usize;
        let mut buf = vec![0u8; len];
        mem.read(at, &mut buf).ok()?;
        if let Some(end) = buf.iter().position(|&b| b == 0) {
            out.extend_from_slice(&buf[..end]);
            return Some(String::from_utf8_lossy(&out).into_owned());
        }
        out.extend_from_slice(&buf);
        at += len as u64;
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{Image, ProcessImage};
    use crate::v8::ProcessMemory;
    use std::os::fd::AsRawFd;

    #[test]
    fn decodes_paths_fds_and_futexes_of_a_live_process() {
        let me = std::process::id();
        let mem = ProcessMemory::new(me);
        let image = ProcessImage::new(me);
        let decode =
            |nr, args, mem: &ProcessMemory| decode(nr, args, mem, |fd| image.fd_target(fd));
        let path = c"/tmp/some file.fifo";
        let open = decode(
            257,
            [-100i64 as u64, path.as_ptr() as u64, 0, 0, 0, 0],
            &mem,
        );
        assert_eq!(open.summary(), "openat /tmp/some file.fifo");
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let read = decode(0, [file.as_raw_fd() as u64, 0, 0, 0, 0, 0], &mem);
        assert_eq!(read.name, "read");
        assert!(read.detail.ends_with("/status"), "{}", read.detail);
        let futex = decode(202, [0x1000, 0x80, 0, 0, 0, 0], &mem);
        assert_eq!(futex.detail, "0x1000 FUTEX_WAIT");
        let epoll = decode(281, [99999, 0, 1024, 0xffff_ffff, 0, 0], &mem);
        assert_eq!(epoll.detail, "fd 99999, maxevents 1024, timeout -1 ms");
        assert!(epoll.is_event_loop_wait());
        assert_eq!(decode(9999, [0; 6], &mem).name, "syscall_9999");
    }
}
