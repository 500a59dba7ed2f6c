//! A process image: what stack walking and naming read, whether from a live
//! process or from a core file — its memory, its code mappings and the files
//! behind them, and its threads' registers. `dump -p` and `dump --core` walk
//! and name through this one trait, so a core gets the live dump's stacks
//! and printer.

use std::fs::File;
use std::sync::Arc;

use crate::v8::memory::Memory;
use crate::v8::ProcessMemory;

/// Memory any thread may read.
pub type SharedMemory = Arc<dyn Memory + Send + Sync>;

/// One mapping of the target (a line of `/proc/PID/maps`, or a core's
/// `NT_FILE` entry or `PT_LOAD` segment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of `start`.
    pub offset: u64,
    pub executable: bool,
    /// File path as the target sees it, or a pseudo name like `[vdso]`, or empty for anonymous memory.
    pub path: String,
}

impl Mapping {
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// Backed by a regular file (not anonymous memory or a kernel pseudo mapping).
    pub fn is_file(&self) -> bool {
        self.path.starts_with('/') && !self.path.starts_with("/memfd:")
    }
}

/// The user registers of one thread, as saved when it entered the kernel
/// (live: the task iterator) or when it was stopped (core: `NT_PRSTATUS`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadRegs {
    pub tid: u32,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// The registers are user-mode ones (a kernel thread has none).
    pub user: bool,
    /// `orig_rax`: the system call in progress, or -1.
    pub syscall_nr: i64,
    /// The system call's arguments (rdi, rsi, rdx, r10, r8, r9).
    pub args: [u64; 6],
    /// Kernel instruction pointers, innermost first (a core has none).
    pub kernel_stack: Vec<u64>,
}

/// What stacks are walked and named from.
pub trait Image: Send + Sync {
    /// The process id the image is of.
    fn pid(&self) -> u32;
    fn memory(&self) -> SharedMemory;
    /// Executable mappings, sorted by address.
    fn mappings(&self) -> Vec<Mapping>;
    /// The file behind a file mapping, as the target mapped it.
    fn open(&self, mapping: &Mapping) -> Option<File>;
    /// What a file descriptor referred to (`/tmp/x.fifo`, `socket:[9]`), when known.
    fn fd_target(&self, fd: u64) -> Option<String>;
}

/// A live process, read through `/proc` and `process_vm_readv`.
pub struct ProcessImage {
    pid: u32,
    memory: SharedMemory,
}

impl ProcessImage {
    pub fn new(pid: u32) -> ProcessImage {
        ProcessImage {
            pid,
            memory: Arc::new(ProcessMemory::new(pid)),
        }
    }
}

impl Image for ProcessImage {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn memory(&self) -> SharedMemory {
        self.memory.clone()
    }

    fn mappings(&self) -> Vec<Mapping> {
        executable_mappings(self.pid).unwrap_or_default()
    }

    fn open(&self, mapping: &Mapping) -> Option<File> {
        open_mapped_file(self.pid, mapping)
    }

    fn fd_target(&self, fd: u64) -> Option<String> {
        std::fs::read_link(format!("/proc/{}/fd/{fd}", self.pid))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }
}

/// `map_files` reaches the very file mapped, even deleted or in another
/// mount namespace; the path under the target's root is the fallback.
pub fn open_mapped_file(pid: u32, mapping: &Mapping) -> Option<File> {
    File::open(format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        mapping.start, mapping.end
    ))
    .or_else(|_| {
        File::open(format!(
            "/proc/{pid}/root{}",
            mapping.path.trim_end_matches(" (deleted)")
        ))
    })
    .ok()
}

pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let _inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start().to_string();
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        path,
    })
}

/// Executable mappings of a process, sorted by address.
pub fn executable_mappings(pid: u32) -> std::io::Result<Vec<Mapping>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut maps: Vec<Mapping> = parse_maps(&text)
        .into_iter()
        .filter(|m| m.executable)
        .collect();
    maps.sort_by_key(|m| m.start);
    Ok(maps)
}

/// The run-time address of ELF virtual address 0 for an executable mapping
/// of the ELF file `data` at `mapping`: where the executable segment the
/// mapping holds landed. The sampler's unwind rows (`probe::cfi`) and dump's
/// unwinder (`stacks::unwind`) both place a file's code with it.
pub fn load_bias<'data, R: object::ReadRef<'data>>(data: R, mapping: &Mapping) -> Option<u64> {
    use object::read::elf::{FileHeader, ProgramHeader};
    let header = object::elf::FileHeader64::<object::Endianness>::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let segments: Vec<LoadSegment> = header
        .program_headers(endian, data)
        .ok()?
        .iter()
        .filter(|ph| {
            ph.p_type(endian) == object::elf::PT_LOAD && ph.p_flags(endian) & object::elf::PF_X != 0
        })
        .map(|ph| LoadSegment {
            offset: ph.p_offset(endian),
            size: ph.p_filesz(endian),
            vaddr: ph.p_vaddr(endian),
        })
        .collect();
    bias_of(&segments, mapping)
}

/// An executable PT_LOAD segment: file offset, file size, virtual address.
#[derive(Debug, Clone, Copy)]
struct LoadSegment {
    offset: u64,
    size: u64,
    vaddr: u64,
}

/// The mapping starts at a page boundary, its segment maybe later in the
/// page (lld puts .text at offset 0x1682a0, vaddr 0x1692a0), so the segment
/// is found by its page-aligned offset.
fn bias_of(segments: &[LoadSegment], mapping: &Mapping) -> Option<u64> {
    const PAGE: u64 = 4096;
    segments.iter().find_map(|s| {
        (s.offset & !(PAGE - 1) <= mapping.offset && mapping.offset < s.offset + s.size).then(
            || {
                mapping
                    .start
                    .wrapping_add(s.offset)
                    .wrapping_sub(mapping.offset)
                    .wrapping_sub(s.vaddr)
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_anon_and_pseudo_mappings() {
        let text = "\
00400000-00401000 r--p 00000000 fd:00 123 /usr/bin/node
00401000-02000000 r-xp 00001000 fd:00 123 /usr/bin/node
7f0000000000-7f0000010000 rwxp 00000000 00:00 0 
7ffd1000-7ffd3000 r-xp 00000000 00:00 0                          [vdso]
7f1000000000-7f1000001000 r-xp 00002000 fd:00 9 /opt/my dir/lib.so (deleted)
";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 5);
        assert!(!maps[0].executable);
        assert_eq!(maps[1].offset, 0x1000);
        assert!(maps[1].is_file());
        assert_eq!(maps[2].path, "");
        assert!(!maps[2].is_file());
        assert_eq!(maps[3].path, "[vdso]");
        assert_eq!(maps[4].path, "/opt/my dir/lib.so (deleted)");
        assert!(maps[1].contains(0x401000) && !maps[1].contains(0x2000000));
    }

    #[test]
    fn reads_own_maps() {
        let maps = executable_mappings(std::process::id()).unwrap();
        assert!(maps.iter().all(|m| m.executable));
        assert!(maps.iter().any(|m| m.is_file()));
    }

    #[test]
    fn the_load_bias_comes_from_the_executable_segment_by_page() {
        let mapping = |start, offset| Mapping {
            start,
            end: start + 0x10000,
            offset,
            executable: true,
            path: "/lib/x.so".into(),
        };
        // GNU ld: r-- at 0, r-x at 0x28000 = vaddr 0x28000.
        let gnu = [LoadSegment {
            offset: 0x28000,
            size: 0x17_0000,
            vaddr: 0x28000,
        }];
        assert_eq!(
            bias_of(&gnu, &mapping(0x7f00_0002_8000, 0x28000)),
            Some(0x7f00_0000_0000)
        );
        // lld: .text at offset 0x1682a0, vaddr 0x1692a0; the mapping starts at
        // the page (offset 0x168000), which the r-- segment before also covers.
        let lld = [LoadSegment {
            offset: 0x1682a0,
            size: 0x10_0000,
            vaddr: 0x1692a0,
        }];
        assert_eq!(
            bias_of(&lld, &mapping(0x7f00_0016_9000, 0x168000)),
            Some(0x7f00_0000_0000)
        );
        // A mapping of no executable segment: none.
        assert_eq!(bias_of(&gnu, &mapping(0x7f00_0000_0000, 0)), None);
    }

    /// The bias of this process's own libc places its `getpid` where the
    /// dynamic linker found it.
    #[test]
    fn the_load_bias_places_libc_symbols() {
        use object::{Object, ObjectSymbol};
        let maps = executable_mappings(std::process::id()).unwrap();
        let libc = maps
            .iter()
            .find(|m| m.path.contains("/libc.so"))
            .expect("libc mapped");
        let data = std::fs::read(&libc.path).unwrap();
        let bias = load_bias(&*data, libc).expect("a bias");
        let file = object::File::parse(&*data).unwrap();
        let value = file
            .dynamic_symbols()
            .find(|s| s.name() == Ok("getpid"))
            .unwrap()
            .address();
        // SAFETY: a lookup by a NUL-terminated name.
        let runtime = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"getpid".as_ptr()) } as u64;
        assert_eq!(bias.wrapping_add(value), runtime, "bias {bias:x}");
    }
}
