//! Native unwinding of a thread that is not running, from the registers it
//! entered the kernel with: DWARF CFI (`.eh_frame`) where a module has it,
//! frame pointers elsewhere (V8's JIT code and embedded builtins have no
//! CFI but keep rbp). framehop does both; we give it the target's modules
//! and its stack memory through [`Memory`].
//!
//! CFI matters for the innermost frames: libc's system-call wrappers
//! (`read`, `epoll_wait`, `futex`) set up no frame pointer, so a pure
//! frame-pointer walk from them skips their caller.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder as _};
use object::read::elf::{FileHeader, SectionHeader};
use object::{elf::FileHeader64, Endianness};

use crate::image::{load_bias, open_mapped_file, Mapping};
use crate::v8::memory::{Memory, MemoryExt};

/// Deepest stack walked (as the sampler's).
const MAX_FRAMES: usize = nodeprof_common::MAX_USER_FRAMES;
/// Stack memory is read a page at a time and kept for the walk.
const PAGE: u64 = 4096;

/// One frame: its pc (the interrupted pc for the first, return addresses
/// after) and the frame pointer register while it ran, which in V8's frames
/// addresses the function and context slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NativeFrame {
    pub pc: u64,
    pub bp: u64,
}

/// The unwind data of every executable file the target maps.
pub struct Unwinder {
    inner: UnwinderX86_64<Vec<u8>>,
    cache: RefCell<CacheX86_64>,
}

impl Unwinder {
    /// Reads `.eh_frame` and `.eh_frame_hdr` of the files behind the
    /// executable mappings (opened through `/proc/PID/map_files`, so the
    /// target's mount namespace does not matter). A file that cannot be read
    /// is unwound by frame pointers only.
    pub fn for_process(pid: u32, mappings: &[Mapping]) -> Unwinder {
        Unwinder::new(mappings, |m| open_mapped_file(pid, m))
    }

    /// The unwind data of the files `open` gives for the executable mappings.
    pub fn new(mappings: &[Mapping], open: impl Fn(&Mapping) -> Option<File>) -> Unwinder {
        let mut inner = UnwinderX86_64::new();
        for mapping in mappings.iter().filter(|m| m.executable && m.is_file()) {
            match open(mapping).and_then(|file| module_of(file, mapping)) {
                Some(module) => inner.add_module(module),
                None => tracing::debug!("no unwind data for {}", mapping.path),
            }
        }
        Unwinder {
            inner,
            cache: RefCell::new(CacheX86_64::new()),
        }
    }

    /// Walks from the registers of a thread that stays put while we read.
    pub fn walk<M: Memory + ?Sized>(&self, mem: &M, ip: u64, sp: u64, bp: u64) -> Vec<NativeFrame> {
        let pages = RefCell::new(HashMap::<u64, Option<Box<[u8]>>>::new());
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            if !addr.is_multiple_of(8) {
                return mem.read_u64(addr).map_err(|_| ());
            }
            let page = addr & !(PAGE - 1);
            let mut pages = pages.borrow_mut();
            let bytes = pages.entry(page).or_insert_with(|| {
                let mut buf = vec![0u8; PAGE as usize];
                mem.read(page, &mut buf)
                    .ok()
                    .map(|()| buf.into_boxed_slice())
            });
            match bytes {
                Some(b) => {
                    let off = (addr - page) as usize;
                    Ok(u64::from_le_bytes(
                        b[off..off + 8].try_into().map_err(|_| ())?,
                    ))
                }
                // A page partly unmapped (the top of the stack): word by word.
                None => mem.read_u64(addr).map_err(|_| ()),
            }
        };
        let mut cache = self.cache.borrow_mut();
        let mut regs = UnwindRegsX86_64::new(ip, sp, bp);
        let mut address = FrameAddress::InstructionPointer(ip);
        let mut frames = Vec::new();
        while frames.len() < MAX_FRAMES {
            frames.push(NativeFrame {
                pc: address.address(),
                bp: regs.bp(),
            });
            match self
                .inner
                .unwind_frame(address, &mut regs, &mut cache, &mut read_stack)
            {
                Ok(Some(ret)) => match FrameAddress::from_return_address(ret) {
                    Some(next) => address = next,
                    None => break,
                },
                // The root (Ok(None)) or a stack that cannot be read further.
                _ => break,
            }
        }
        frames
    }
}

/// The framehop module of one executable mapping.
fn module_of(file: File, mapping: &Mapping) -> Option<Module<Vec<u8>>> {
    // Only the headers and the unwind sections are read: not the symbol
    // tables (10 MB in node) that `object::File::parse` would load.
    let raw = file.try_clone().ok()?;
    let cache = object::ReadCache::new(file);
    let header = FileHeader64::<Endianness>::parse(&cache).ok()?;
    let endian = header.endian().ok()?;
    let bias = load_bias(&cache, mapping)?;
    let sections = header.sections(endian, &cache).ok()?;
    let range = |name: &[u8]| -> Option<Range<u64>> {
        let (_, sh) = sections.section_by_name(endian, name)?;
        let start = sh.sh_addr(endian);
        Some(start..start + sh.sh_size(endian))
    };
    // Read directly into zeroed memory: through the cache, a few MB of
    // `.eh_frame` cost a byte-wise `Vec::resize` in unoptimized builds.
    let data = |name: &[u8]| -> Option<Vec<u8>> {
        let (_, sh) = sections.section_by_name(endian, name)?;
        let (offset, size) = sh.file_range(endian)?;
        let mut buf = vec![0u8; usize::try_from(size).ok()?];
        raw.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    };
    let eh_frame = data(b".eh_frame")?;
    let info = ExplicitModuleSectionInfo {
        base_svma: 0,
        text_svma: range(b".text"),
        got_svma: range(b".got"),
        eh_frame_svma: range(b".eh_frame"),
        eh_frame: Some(eh_frame),
        eh_frame_hdr_svma: range(b".eh_frame_hdr"),
        eh_frame_hdr: data(b".eh_frame_hdr"),
        ..Default::default()
    };
    Some(Module::new(
        mapping.path.clone(),
        mapping.start..mapping.end,
        bias,
        info,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::read_maps;
    use crate::v8::ProcessMemory;

    /// Unwinds this test's own thread from registers taken in this frame
    /// (it stays live while the walk runs below it): the walk must climb
    /// through the test harness, which Rust builds without frame pointers,
    /// to libc's thread start.
    #[test]
    fn unwinds_own_stack_through_cfi() {
        let (ip, sp, bp): (u64, u64, u64);
        // SAFETY: reads registers only.
        unsafe {
            std::arch::asm!(
                "lea {ip}, [rip]",
                "mov {sp}, rsp",
                "mov {bp}, rbp",
                ip = out(reg) ip,
                sp = out(reg) sp,
                bp = out(reg) bp,
            );
        }
        let pid = std::process::id();
        let maps = read_maps(pid).unwrap();
        let unwinder = Unwinder::for_process(pid, &maps);
        let frames = unwinder.walk(&ProcessMemory::new(pid), ip, sp, bp);
        let libc = maps
            .iter()
            .filter(|m| m.path.contains("libc.so"))
            .collect::<Vec<_>>();
        assert!(!libc.is_empty());
        assert!(
            frames
                .iter()
                .skip(1)
                .any(|f| libc.iter().any(|m| m.contains(f.pc))),
            "the walk did not reach libc's thread start: {} frames {frames:x?}",
            frames.len()
        );
    }
}
