//! How long the main thread's current event-loop turn has run, read from
//! libuv's own clock without any tracing beforehand: `uv_loop_t.time` is
//! the loop's "now" in ms of CLOCK_MONOTONIC (read through
//! CLOCK_MONOTONIC_COARSE where that ticks at least every ms: the same
//! clock, up to a tick behind), set when a turn starts and again when
//! `epoll_wait` returns. Node's main thread runs libuv's default
//! loop, which libuv keeps in the static `default_loop_ptr`; the offset of
//! `time` is read from the code of `uv_now` (`return loop->time;`), so no
//! per-version table is needed.
//!
//! Node also refreshes the loop's time when JS asks for it (scheduling a
//! timer calls `uv_update_time`), so the figure is a lower bound: the turn
//! has run at least this long. `default_loop_ptr` is a local symbol: a
//! stripped node shows no turn time.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use crate::image::Mapping;
use crate::v8::elf::{read_symbols, SymbolFilter};
use crate::v8::memory::{Memory, MemoryExt};

const LOOP_POINTER: &str = "default_loop_ptr";
const UV_NOW: &str = "uv_now";

/// Where the default loop's clock is, in an executable with libuv linked in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopClock {
    /// Link-time address of `default_loop_ptr`.
    loop_pointer: u64,
    /// Offset of `time` in `uv_loop_t`.
    time_offset: u64,
    /// A position-independent executable's loadable segments, to find its
    /// load bias from where one of them is mapped; empty for a fixed one.
    segments: Vec<Segment>,
}

/// A `PT_LOAD` segment: where its bytes are in the file and in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    offset: u64,
    vaddr: u64,
    filesz: u64,
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
        let mut code = [0u8; 12];
        file.read_exact_at(&mut code, code_at).ok()?;
        Some(LoopClock {
            loop_pointer,
            time_offset: time_offset(&code)?,
            segments: pie_segments(&file)?,
        })
    }

    /// Where the executable was loaded: 0 unless it is position-independent;
    /// then from one of its executable mappings in the process's `maps`
    /// (a mapping at file offset `o` holds the segment's address
    /// `vaddr + o - offset`).
    pub fn load_bias(&self, maps: impl FnOnce() -> Vec<Mapping>, exe: &Path) -> Option<u64> {
        if self.segments.is_empty() {
            return Some(0);
        }
        maps().into_iter().find_map(|m| {
            if Path::new(&m.path) != exe {
                return None;
            }
            let segment = self
                .segments
                .iter()
                .find(|s| s.offset <= m.offset && m.offset < s.offset + s.filesz.max(1))?;
            Some(
                m.start
                    .wrapping_sub(segment.vaddr)
                    .wrapping_sub(m.offset - segment.offset),
            )
        })
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

/// How long a turn that started at `started_ms` has run at `now_ns`;
/// `None` for a start after `now_ns` (a turn that began after that moment:
/// not the turn seen then).
pub fn turn_age(started_ms: u64, now_ns: u64) -> Option<Duration> {
    (now_ns / 1_000_000)
        .checked_sub(started_ms)
        .map(Duration::from_millis)
}

/// The `PT_LOAD` segments of a position-independent x86-64 executable
/// (empty for a fixed-address one); `None` for anything else.
fn pie_segments(file: &std::fs::File) -> Option<Vec<Segment>> {
    use object::read::elf::{FileHeader, ProgramHeader};
    let data = object::ReadCache::new(file);
    let header = object::elf::FileHeader64::<object::Endianness>::parse(&data).ok()?;
    let endian = header.endian().ok()?;
    if header.e_machine(endian) != object::elf::EM_X86_64 {
        return None;
    }
    if header.e_type(endian) != object::elf::ET_DYN {
        return Some(Vec::new());
    }
    let segments = header
        .program_headers(endian, &data)
        .ok()?
        .iter()
        .filter(|ph| ph.p_type(endian) == object::elf::PT_LOAD)
        .map(|ph| Segment {
            offset: ph.p_offset(endian),
            vaddr: ph.p_vaddr(endian),
            filesz: ph.p_filesz(endian),
        })
        .collect();
    Some(segments)
}

/// The displacement of `mov rax, [rdi + disp]` among `uv_now`'s first
/// instructions (after a frame-pointer prologue, in builds that keep one),
/// when it is a plausible offset in `uv_loop_t` (a few hundred bytes).
fn time_offset(code: &[u8]) -> Option<u64> {
    let offset = (0..code.len()).find_map(|at| match code.get(at..)? {
        [0x48, 0x8b, 0x87, d @ ..] if d.len() >= 4 => {
            Some(i32::from_le_bytes([d[0], d[1], d[2], d[3]]) as i64)
        }
        [0x48, 0x8b, 0x47, d, ..] => Some(*d as i8 as i64),
        _ => None,
    })?;
    (8..0x1000).contains(&offset).then_some(offset as u64)
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
    fn a_turn_that_started_later_is_not_the_one_seen() {
        assert_eq!(
            turn_age(5_000, 7_500_000_000),
            Some(Duration::from_millis(2_500))
        );
        assert_eq!(turn_age(9_000, 7_500_000_000), None);
    }

    #[test]
    fn implausible_offsets_are_refused() {
        assert_eq!(time_offset(&[0x48, 0x8b, 0x47, 0xf8, 0xc3]), None);
        assert_eq!(time_offset(&[0x48, 0x8b, 0x87, 0, 0, 1, 0, 0xc3]), None);
    }

    /// A position-independent node, linked with separate code: the first
    /// mapping (offset 0) is read-only, and nodeprof's maps list only the
    /// executable ones.
    #[test]
    fn load_bias_of_a_pie_from_its_code_mapping() {
        let clock = LoopClock {
            loop_pointer: 0x5000,
            time_offset: 0x220,
            segments: vec![
                Segment {
                    offset: 0,
                    vaddr: 0,
                    filesz: 0x1000,
                },
                Segment {
                    offset: 0x1000,
                    vaddr: 0x1000,
                    filesz: 0x3000,
                },
                Segment {
                    offset: 0x4000,
                    vaddr: 0x5000,
                    filesz: 0x800,
                },
            ],
        };
        let exe = Path::new("/usr/bin/node");
        let code = Mapping {
            start: 0x5555_5555_6000,
            end: 0x5555_5555_8000,
            offset: 0x2000,
            executable: true,
            path: "/usr/bin/node".into(),
        };
        let other = Mapping {
            path: "/lib/libc.so.6".into(),
            ..code.clone()
        };
        assert_eq!(
            clock.load_bias(|| vec![other.clone(), code.clone()], exe),
            Some(0x5555_5555_4000)
        );
        assert_eq!(clock.load_bias(|| vec![other], exe), None);
        let fixed = LoopClock {
            segments: Vec::new(),
            ..clock
        };
        assert_eq!(fixed.load_bias(Vec::new, exe), Some(0));
    }
}
