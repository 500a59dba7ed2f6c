//! How long the main thread's current event-loop turn has run, read from
//! libuv's own clock without any tracing beforehand: `uv_loop_t.time` is
//! the loop's "now" in ms of CLOCK_MONOTONIC, set when a turn starts and
//! again when `epoll_wait` returns. Node's main thread runs libuv's default
//! loop, which libuv keeps in the static `default_loop_ptr`; the offset of
//! `time` is read from the code of `uv_now` (`return loop->time;`), so no
//! per-version table is needed.
//!
//! Node also refreshes the loop's time when JS asks for it (scheduling a
//! timer calls `uv_update_time`), so the figure is a lower bound: the turn
//! has run at least this long.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use crate::target::Mapping;
use crate::v8::elf::{read_symbols, SymbolFilter};
use crate::v8::memory::{Memory, MemoryExt};

const LOOP_POINTER: &str = "default_loop_ptr";
const UV_NOW: &str = "uv_now";

/// Where the default loop's clock is, in an executable with libuv linked in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopClock {
    /// Link-time address of `default_loop_ptr`.
    loop_pointer: u64,
    /// Offset of `time` in `uv_loop_t`.
    time_offset: u64,
    /// A position-independent executable needs its load bias added.
    position_independent: bool,
}

impl LoopClock {
    /// Reads the two symbols and `uv_now`'s first instructions from
    /// `binary`; `None` when libuv is not linked in (a shared libuv) or its
    /// code has an unexpected shape.
    pub fn find(binary: &Path) -> Option<LoopClock> {
        let filter = SymbolFilter {
            prefixes: &[LOOP_POINTER.as_bytes(), UV_NOW.as_bytes()],
            keep: &|name| name == LOOP_POINTER || name == UV_NOW,
        };
        let symbols = read_symbols(binary, &filter).ok()?;
        let loop_pointer = symbols.get(LOOP_POINTER)?.address;
        let code_at = symbols.get(UV_NOW)?.file_offset?;
        let file = std::fs::File::open(binary).ok()?;
        let mut code = [0u8; 16];
        file.read_exact_at(&mut code, code_at).ok()?;
        let mut header = [0u8; 18];
        file.read_exact_at(&mut header, 0).ok()?;
        const ET_DYN: u16 = 3;
        Some(LoopClock {
            loop_pointer,
            time_offset: time_offset(&code)?,
            position_independent: u16::from_le_bytes([header[16], header[17]]) == ET_DYN,
        })
    }

    /// Where the executable was loaded (0 unless position-independent):
    /// its first mapping (file offset 0) in the process's `maps`.
    pub fn load_bias(&self, maps: impl FnOnce() -> Vec<Mapping>, exe: &Path) -> Option<u64> {
        if !self.position_independent {
            return Some(0);
        }
        maps()
            .into_iter()
            .find(|m| m.offset == 0 && Path::new(&m.path) == exe)
            .map(|m| m.start)
    }

    /// The time the current turn started, CLOCK_MONOTONIC ms.
    pub fn turn_started_ms(&self, mem: &dyn Memory, bias: u64) -> Option<u64> {
        let event_loop = mem.read_u64(self.loop_pointer.wrapping_add(bias)).ok()?;
        if event_loop == 0 {
            return None; // libuv not initialised yet
        }
        mem.read_u64(event_loop.wrapping_add(self.time_offset))
            .ok()
            .filter(|&ms| ms > 0)
    }
}

/// How long a turn that started at `started_ms` has run at `now_ns`.
pub fn turn_age(started_ms: u64, now_ns: u64) -> Duration {
    Duration::from_millis((now_ns / 1_000_000).saturating_sub(started_ms))
}

/// The displacement of `mov rax, [rdi + disp]` among `uv_now`'s first
/// instructions (after a frame-pointer prologue, in builds that keep one).
fn time_offset(code: &[u8]) -> Option<u64> {
    (0..code.len()).find_map(|at| match code.get(at..)? {
        [0x48, 0x8b, 0x87, d @ ..] if d.len() >= 4 => {
            Some(u32::from_le_bytes([d[0], d[1], d[2], d[3]]) as u64)
        }
        [0x48, 0x8b, 0x47, d, ..] => Some(*d as u64),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_offset_of_time_from_uv_now() {
        // node 18: mov rax, [rdi+0x220]; ret
        let plain = [0x48, 0x8b, 0x87, 0x20, 0x02, 0x00, 0x00, 0xc3, 0x0f, 0x1f];
        assert_eq!(time_offset(&plain), Some(0x220));
        // node 26: push rbp; mov rbp, rsp; mov rax, [rdi+0x220]; pop rbp; ret
        let framed = [
            0x55, 0x48, 0x89, 0xe5, 0x48, 0x8b, 0x87, 0x20, 0x02, 0x00, 0x00, 0x5d, 0xc3,
        ];
        assert_eq!(time_offset(&framed), Some(0x220));
        // A short displacement.
        assert_eq!(time_offset(&[0x48, 0x8b, 0x47, 0x58, 0xc3]), Some(0x58));
        // Some other function.
        assert_eq!(time_offset(&[0x8b, 0x47, 0x40, 0xc3]), None);
    }

    #[test]
    fn a_turn_started_in_the_future_has_run_no_time() {
        assert_eq!(turn_age(5_000, 7_500_000_000), Duration::from_millis(2_500));
        assert_eq!(turn_age(9_000, 7_500_000_000), Duration::ZERO);
    }
}
