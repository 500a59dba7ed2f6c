//! Reading an x86-64 Linux core file (nodeprof's, the kernel's, gdb's
//! `gcore`) as an [`Image`]: memory from its `PT_LOAD` segments, threads
//! from `NT_PRSTATUS`, mappings from `NT_FILE`.
//!
//! A core usually leaves file-backed code out (the default
//! `coredump_filter` keeps only the first page of each ELF file), yet
//! unwinding and naming need it: those reads go to the files themselves —
//! the executable given with `--exe`, the libraries at the paths `NT_FILE`
//! names on this host — each checked against the first page the core kept
//! (when it kept it), so a different build is never read for the target's.
//!
//! Headers and notes are parsed with `object`; memory is read with `pread`
//! on demand, so a core of many GB costs no more memory than a small one.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use object::elf::{FileHeader64, ET_CORE, PF_X, PT_LOAD, PT_NOTE};
use object::read::elf::{FileHeader, ProgramHeader};
use object::{Endianness, ReadCache};

use crate::image::{Image, Mapping, SharedMemory, ThreadRegs};
use crate::v8::memory::{check_request, Memory, MemoryError};

const NT_PRSTATUS: u32 = 1;
const NT_PRPSINFO: u32 = 3;
const NT_AUXV: u32 = 6;
const NT_FILE: u32 = 0x4649_4c45;
const AT_ENTRY: u64 = 9;
const AT_SYSINFO_EHDR: u64 = 33;
/// `struct elf_prstatus` on x86-64: `pr_pid` and `pr_reg` offsets, and size.
const PRSTATUS_PID: usize = 32;
const PRSTATUS_REGS: usize = 112;
const PRSTATUS_SIZE: usize = 336;
/// `struct elf_prpsinfo` on x86-64: `pr_pid` and `pr_fname[16]`.
const PRPSINFO_PID: usize = 24;
const PRPSINFO_FNAME: usize = 40;
/// Bytes of an ELF file compared with the core's copy of its first page.
const HEADER_CHECK: usize = 4096;
const PAGE: u64 = 4096;

/// Index of each register in `user_regs_struct`.
mod reg {
    pub const RBP: usize = 4;
    pub const R10: usize = 7;
    pub const R9: usize = 8;
    pub const R8: usize = 9;
    pub const RDX: usize = 12;
    pub const RSI: usize = 13;
    pub const RDI: usize = 14;
    pub const ORIG_RAX: usize = 15;
    pub const RIP: usize = 16;
    pub const CS: usize = 17;
    pub const RSP: usize = 19;
    pub const COUNT: usize = 27;
}
const _: () = assert!(reg::COUNT * 8 + PRSTATUS_REGS <= PRSTATUS_SIZE);

#[derive(Debug, thiserror::Error)]
pub enum CoreFileError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0} is not an ELF file, so not a core file")]
    NotElf(String),
    #[error("{0} is compressed with zstd: `zstd -d {0}` first, then read the core it gives")]
    Compressed(String),
    #[error("{path} is not a core file (ELF type {kind})")]
    NotCore { path: String, kind: u16 },
    #[error("{0} is not an x86-64 core file")]
    NotX86_64(String),
    #[error("{path} is a damaged core file: {detail}")]
    Damaged { path: String, detail: String },
    #[error("{0} holds no thread (no NT_PRSTATUS note)")]
    NoThreads(String),
    #[error(
        "{core} was not taken from {exe}: the process ran {ran} ({why}); give that binary with --exe"
    )]
    OtherExe {
        core: String,
        exe: String,
        ran: String,
        why: &'static str,
    },
}

/// One `PT_LOAD` segment.
#[derive(Debug, Clone, Copy)]
struct Segment {
    vaddr: u64,
    memsz: u64,
    offset: u64,
    filesz: u64,
    executable: bool,
}

/// The file on this host behind a path, and its code's file offset ranges.
type Backing = (Option<Arc<File>>, Arc<[(u64, u64)]>);

/// One `NT_FILE` entry, and the file on this host that backs it.
#[derive(Debug, Clone)]
struct FileMapping {
    mapping: Mapping,
    file: Option<Arc<File>>,
    /// File offset ranges of the file's executable segments.
    code: Arc<[(u64, u64)]>,
}

/// A core file opened for reading.
pub struct CoreFile {
    pid: u32,
    /// `pr_fname` of `NT_PRPSINFO`: the process's name.
    pub name: String,
    /// The executable as the target saw it (its `NT_FILE` path).
    pub exe_path: String,
    /// Main thread first.
    pub threads: Vec<ThreadRegs>,
    memory: Arc<CoreMemory>,
    vdso: Option<u64>,
}

/// The memory of a core: its segments, then the files mapped.
struct CoreMemory {
    core: File,
    /// Sorted by address.
    segments: Vec<Segment>,
    /// Sorted by address.
    files: Vec<FileMapping>,
}

impl CoreFile {
    /// Opens `path`, a core of a process that ran the executable `exe`.
    pub fn open(path: &Path, exe: &Path) -> Result<CoreFile, CoreFileError> {
        let shown = path.display().to_string();
        let (mut memory, notes) = read_headers(path)?;
        let exe_file = File::open(exe).map_err(|source| CoreFileError::Io {
            path: exe.display().to_string(),
            source,
        })?;
        let auxv = |key: u64| notes.auxv.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        // The executable: the file mapped where the entry point is.
        let entry = auxv(AT_ENTRY);
        let exe_path = executable_of(&memory, entry);
        check_exe(&memory, &exe_path, &exe_file, entry).map_err(|why| CoreFileError::OtherExe {
            core: shown.clone(),
            exe: exe.display().to_string(),
            ran: exe_path.clone(),
            why,
        })?;

        // Open each file once, verified against the core's copy of its
        // first page.
        let exe_file = Arc::new(exe_file);
        let mut opened: HashMap<String, Backing> = HashMap::new();
        opened.insert(
            exe_path.clone(),
            (Some(exe_file.clone()), code_ranges(&exe_file).into()),
        );
        for i in 0..memory.files.len() {
            let path = memory.files[i].mapping.path.clone();
            if !opened.contains_key(&path) {
                let file = open_regular(Path::new(path.trim_end_matches(" (deleted)")))
                    .filter(|f| {
                        let same = first_page_matches(&memory, &path, f) != Some(false);
                        if !same {
                            tracing::warn!(
                                "{path} on this host differs from the file the process mapped: its frames stay unnamed"
                            );
                        }
                        same
                    })
                    .map(Arc::new);
                let code = file.as_deref().map(code_ranges).unwrap_or_default();
                opened.insert(path.clone(), (file, code.into()));
            }
            (memory.files[i].file, memory.files[i].code) = opened[&path].clone();
        }

        let pid = notes.pid.unwrap_or(notes.threads[0].tid);
        let mut threads = notes.threads;
        threads.sort_by_key(|t| (t.tid != pid, t.tid));
        Ok(CoreFile {
            pid,
            name: notes.name,
            exe_path,
            threads,
            memory: Arc::new(memory),
            vdso: auxv(AT_SYSINFO_EHDR),
        })
    }
}

/// The executable a core's process ran, as it saw it (its `NT_FILE` path).
pub fn executable_named(path: &Path) -> Result<String, CoreFileError> {
    let (memory, notes) = read_headers(path)?;
    let entry = notes
        .auxv
        .iter()
        .find(|(k, _)| *k == AT_ENTRY)
        .map(|(_, v)| *v);
    Ok(executable_of(&memory, entry))
}

/// The file mapped where the entry point is, else the first file mapped.
fn executable_of(memory: &CoreMemory, entry: Option<u64>) -> String {
    entry
        .and_then(|e| memory.files.iter().find(|f| f.mapping.contains(e)))
        .or_else(|| memory.files.first())
        .map(|f| f.mapping.path.clone())
        .unwrap_or_default()
}

/// The segments and notes of a core; its files not opened yet.
/// Opens a file a core names, only if it is a regular file: the path comes
/// from the core, and a FIFO or a device there must not block or react.
fn open_regular(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    file.metadata().ok()?.is_file().then_some(file)
}

fn read_headers(path: &Path) -> Result<(CoreMemory, Notes), CoreFileError> {
    let shown = path.display().to_string();
    let io_err = |source| CoreFileError::Io {
        path: shown.clone(),
        source,
    };
    let core = File::open(path).map_err(io_err)?;
    let damaged = |detail: &str| CoreFileError::Damaged {
        path: shown.clone(),
        detail: detail.to_string(),
    };
    let cache = ReadCache::new(core.try_clone().map_err(io_err)?);
    let mut magic = [0u8; 4];
    if core.read_exact_at(&mut magic, 0).is_ok() && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        return Err(CoreFileError::Compressed(shown));
    }
    let header = FileHeader64::<Endianness>::parse(&cache)
        .map_err(|_| CoreFileError::NotElf(shown.clone()))?;
    let endian = header
        .endian()
        .map_err(|_| CoreFileError::NotElf(shown.clone()))?;
    let kind = header.e_type(endian);
    if kind != ET_CORE {
        return Err(CoreFileError::NotCore { path: shown, kind });
    }
    if header.e_machine(endian) != object::elf::EM_X86_64 {
        return Err(CoreFileError::NotX86_64(shown));
    }
    let phdrs = header
        .program_headers(endian, &cache)
        .map_err(|e| damaged(&e.to_string()))?;
    let core_len = core.metadata().map_err(io_err)?.len();
    let mut truncated = 0u64;
    let mut segments = Vec::new();
    let mut notes = Notes::default();
    for ph in phdrs {
        match ph.p_type(endian) {
            PT_LOAD => {
                let (vaddr, memsz) = (ph.p_vaddr(endian), ph.p_memsz(endian));
                let (offset, filesz) = (ph.p_offset(endian), ph.p_filesz(endian));
                // Sizes come from the file: none may wrap an address.
                if vaddr.checked_add(memsz).is_none() || offset.checked_add(filesz).is_none() {
                    return Err(damaged("a segment's size wraps around"));
                }
                // A truncated core (RLIMIT_CORE, a full disk, a size limit
                // of systemd-coredump) holds less than its headers say.
                let kept = filesz.min(core_len.saturating_sub(offset));
                truncated += filesz - kept;
                segments.push(Segment {
                    vaddr,
                    memsz,
                    offset,
                    filesz: kept,
                    executable: ph.p_flags(endian) & PF_X != 0,
                });
            }
            PT_NOTE => {
                let Some(mut iter) = ph
                    .notes(endian, &cache)
                    .map_err(|e| damaged(&e.to_string()))?
                else {
                    continue;
                };
                while let Some(note) = iter.next().map_err(|e| damaged(&e.to_string()))? {
                    notes.add(note.n_type(endian), note.name(), note.desc());
                }
            }
            _ => {}
        }
    }
    segments.sort_by_key(|s| s.vaddr);
    if truncated > 0 {
        tracing::warn!(
            "{shown} is truncated: {truncated} bytes of its memory are missing; stacks that reach them stay short"
        );
    }
    if notes.threads.is_empty() {
        return Err(CoreFileError::NoThreads(shown));
    }
    let mut files: Vec<FileMapping> = notes
        .files
        .iter()
        .map(|m| FileMapping {
            mapping: m.clone(),
            file: None,
            code: Arc::new([]),
        })
        .collect();
    files.sort_by_key(|f| f.mapping.start);
    Ok((
        CoreMemory {
            core,
            segments,
            files,
        },
        notes,
    ))
}

/// Whether `exe` is the file the core's process ran: its entry point where
/// the auxiliary vector says the process's was, and its first page as the
/// core kept it. `Err` says which check failed.
fn check_exe(
    memory: &CoreMemory,
    exe_path: &str,
    exe: &File,
    entry: Option<u64>,
) -> Result<(), &'static str> {
    if first_page_matches(memory, exe_path, exe) == Some(false) {
        return Err("its ELF header differs");
    }
    let Some(entry) = entry else {
        return Ok(());
    };
    let cache = ReadCache::new(exe);
    let header =
        FileHeader64::<Endianness>::parse(&cache).map_err(|_| "the given file is not ELF")?;
    let endian = header.endian().map_err(|_| "the given file is not ELF")?;
    // Where the first segment (file offset 0) landed: the load bias.
    let first_vaddr = header
        .program_headers(endian, &cache)
        .map_err(|_| "the given file has no program headers")?
        .iter()
        .find(|ph| ph.p_type(endian) == PT_LOAD && ph.p_offset(endian) == 0)
        .map(|ph| ph.p_vaddr(endian))
        .ok_or("the given file has no program headers")?;
    let start = memory
        .files
        .iter()
        .find(|f| f.mapping.path == exe_path && f.mapping.offset == 0)
        .map(|f| f.mapping.start)
        .ok_or("the core maps no executable")?;
    let bias = start.wrapping_sub(first_vaddr);
    if header.e_entry(endian).wrapping_add(bias) != entry {
        return Err("its entry point differs");
    }
    Ok(())
}

/// Compares the start of `file` with the core's copy of the first page of
/// its mapping at offset 0: `None` when the core did not keep that page.
fn first_page_matches(memory: &CoreMemory, path: &str, file: &File) -> Option<bool> {
    let start = memory
        .files
        .iter()
        .find(|f| f.mapping.path == path && f.mapping.offset == 0)?
        .mapping
        .start;
    let mut kept = vec![0u8; HEADER_CHECK];
    memory.read_segments(start, &mut kept).ok()?;
    let mut ours = vec![0u8; HEADER_CHECK];
    let n = read_up_to(file, 0, &mut ours).ok()?;
    Some(kept[..n] == ours[..n])
}

/// Reads as much as the file has at `offset`, up to `buf.len()`.
fn read_up_to(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

/// What the notes say.
#[derive(Default)]
struct Notes {
    threads: Vec<ThreadRegs>,
    pid: Option<u32>,
    name: String,
    auxv: Vec<(u64, u64)>,
    files: Vec<Mapping>,
}

impl Notes {
    fn add(&mut self, kind: u32, name: &[u8], desc: &[u8]) {
        let word = |at: usize| -> u64 {
            desc.get(at..at + 8)
                .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
        };
        let word32 = |at: usize| -> u32 {
            desc.get(at..at + 4)
                .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
        };
        match (name, kind) {
            (b"CORE", NT_PRSTATUS) if desc.len() >= PRSTATUS_SIZE => {
                let r = |i: usize| word(PRSTATUS_REGS + 8 * i);
                self.threads.push(ThreadRegs {
                    tid: word32(PRSTATUS_PID),
                    ip: r(reg::RIP),
                    sp: r(reg::RSP),
                    bp: r(reg::RBP),
                    user: r(reg::CS) & 3 == 3,
                    syscall_nr: r(reg::ORIG_RAX) as i64,
                    args: [
                        r(reg::RDI),
                        r(reg::RSI),
                        r(reg::RDX),
                        r(reg::R10),
                        r(reg::R8),
                        r(reg::R9),
                    ],
                    kernel_stack: Vec::new(),
                });
            }
            (b"CORE", NT_PRPSINFO) if desc.len() >= PRPSINFO_FNAME + 16 => {
                self.pid = Some(word32(PRPSINFO_PID));
                let fname = &desc[PRPSINFO_FNAME..PRPSINFO_FNAME + 16];
                let end = fname.iter().position(|&b| b == 0).unwrap_or(16);
                self.name = String::from_utf8_lossy(&fname[..end]).into_owned();
            }
            (b"CORE", NT_AUXV) => {
                self.auxv = desc
                    .chunks_exact(16)
                    .map(|c| (word_of(&c[..8]), word_of(&c[8..])))
                    .collect();
            }
            (b"CORE", NT_FILE) => self.files = parse_nt_file(desc),
            _ => {}
        }
    }
}

fn word_of(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().unwrap_or_default())
}

/// `NT_FILE`: count, page size, `count` × (start, end, page offset), then
/// `count` NUL-terminated paths.
fn parse_nt_file(desc: &[u8]) -> Vec<Mapping> {
    let word = |i: usize| desc.get(8 * i..8 * i + 8).map(word_of);
    let (Some(count), Some(page)) = (word(0), word(1)) else {
        return Vec::new();
    };
    let Ok(count) = usize::try_from(count) else {
        return Vec::new();
    };
    let names_at = count
        .checked_mul(24)
        .and_then(|n| n.checked_add(16))
        .unwrap_or(usize::MAX);
    let names = desc.get(names_at..).unwrap_or_default();
    names
        .split(|&b| b == 0)
        .take(count)
        .enumerate()
        .filter_map(|(i, name)| {
            let (start, end) = (word(2 + 3 * i)?, word(3 + 3 * i)?);
            let offset = word(4 + 3 * i)?.checked_mul(page)?;
            // Entries from the file: an empty or wrapping one is dropped.
            (start < end && offset.checked_add(end - start).is_some()).then(|| Mapping {
                start,
                end,
                offset,
                executable: false,
                path: String::from_utf8_lossy(name).into_owned(),
            })
        })
        .collect()
}

impl CoreMemory {
    /// Reads only what the core holds.
    fn read_segments(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        check_request(addr, buf.len())?;
        let mut done = 0;
        while done < buf.len() {
            let at = addr + done as u64;
            let Some(n) = self.read_segment(at, &mut buf[done..])? else {
                return Err(MemoryError::Short {
                    addr,
                    len: buf.len(),
                    got: done,
                });
            };
            done += n;
        }
        Ok(())
    }

    /// Reads the start of `buf` at `at` from the segment that holds it:
    /// `None` when no segment has data there.
    fn read_segment(&self, at: u64, buf: &mut [u8]) -> Result<Option<usize>, MemoryError> {
        let i = self.segments.partition_point(|s| s.vaddr <= at);
        let Some(seg) = i.checked_sub(1).map(|i| &self.segments[i]) else {
            return Ok(None);
        };
        let held = seg.vaddr + seg.filesz.min(seg.memsz);
        if at >= held {
            return Ok(None);
        }
        let n = buf.len().min((held - at) as usize);
        self.core
            .read_exact_at(&mut buf[..n], seg.offset + (at - seg.vaddr))
            .map_err(|source| MemoryError::Io {
                addr: at,
                len: n,
                source,
            })?;
        Ok(Some(n))
    }

    /// Reads the start of `buf` at `at` from the file mapped there.
    fn read_file(&self, at: u64, buf: &mut [u8]) -> Result<Option<usize>, MemoryError> {
        let i = self.files.partition_point(|f| f.mapping.start <= at);
        let Some(fm) = i.checked_sub(1).map(|i| &self.files[i]) else {
            return Ok(None);
        };
        let (Some(file), true) = (&fm.file, fm.mapping.contains(at)) else {
            return Ok(None);
        };
        let n = buf.len().min((fm.mapping.end - at) as usize);
        let got = read_up_to(
            file,
            fm.mapping.offset + (at - fm.mapping.start),
            &mut buf[..n],
        )
        .map_err(|source| MemoryError::Io {
            addr: at,
            len: n,
            source,
        })?;
        Ok((got > 0).then_some(got))
    }
}

impl Memory for CoreMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        check_request(addr, buf.len())?;
        let mut done = 0;
        while done < buf.len() {
            let at = addr + done as u64;
            let got = match self.read_segment(at, &mut buf[done..])? {
                Some(n) => Some(n),
                None => self.read_file(at, &mut buf[done..])?,
            };
            match got {
                Some(n) => done += n,
                None => {
                    return Err(MemoryError::Short {
                        addr,
                        len: buf.len(),
                        got: done,
                    })
                }
            }
        }
        Ok(())
    }
}

impl Image for CoreFile {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn memory(&self) -> SharedMemory {
        self.memory.clone()
    }

    /// Executable segments (anonymous ones are JIT code, or the vDSO), and
    /// the parts of file mappings that hold the file's executable segments
    /// (the core may not have kept them; and `NT_FILE` entries may join
    /// several mappings of one file, as elfcore writes them).
    fn mappings(&self) -> Vec<Mapping> {
        let mut out: Vec<Mapping> = Vec::new();
        for fm in &self.memory.files {
            let m = &fm.mapping;
            if fm.file.is_none() {
                // Only the core's own segment says whether it was code.
                if let Some(s) = self
                    .memory
                    .segments
                    .iter()
                    .find(|s| s.vaddr == m.start && s.vaddr + s.memsz == m.end && s.executable)
                {
                    out.push(Mapping {
                        executable: true,
                        end: s.vaddr + s.memsz,
                        ..m.clone()
                    });
                }
                continue;
            }
            let len = m.end - m.start;
            for &(lo, hi) in fm.code.iter() {
                let (lo, hi) = (lo.max(m.offset), hi.min(m.offset + len));
                if lo < hi {
                    out.push(Mapping {
                        start: m.start + (lo - m.offset),
                        end: m.start + (hi - m.offset),
                        offset: lo,
                        executable: true,
                        path: m.path.clone(),
                    });
                }
            }
        }
        for s in self.memory.segments.iter().filter(|s| s.executable) {
            if self
                .memory
                .files
                .iter()
                .any(|f| f.mapping.contains(s.vaddr))
            {
                continue;
            }
            let path = if Some(s.vaddr) == self.vdso {
                "[vdso]"
            } else {
                ""
            };
            out.push(Mapping {
                start: s.vaddr,
                end: s.vaddr + s.memsz,
                offset: 0,
                executable: true,
                path: path.to_string(),
            });
        }
        out.sort_by_key(|m| m.start);
        out
    }

    fn open(&self, mapping: &Mapping) -> Option<File> {
        let fm = self
            .memory
            .files
            .iter()
            .find(|f| f.mapping.path == mapping.path)?;
        fm.file.as_deref()?.try_clone().ok()
    }

    /// A core does not say what its descriptors were.
    fn fd_target(&self, _fd: u64) -> Option<String> {
        None
    }
}

/// File offset ranges of the executable segments of an ELF file, widened
/// to pages as they are mapped.
fn code_ranges(file: &File) -> Vec<(u64, u64)> {
    let cache = ReadCache::new(file);
    let Ok(header) = FileHeader64::<Endianness>::parse(&cache) else {
        return Vec::new();
    };
    let Ok(endian) = header.endian() else {
        return Vec::new();
    };
    let Ok(phdrs) = header.program_headers(endian, &cache) else {
        return Vec::new();
    };
    phdrs
        .iter()
        .filter(|ph| ph.p_type(endian) == PT_LOAD && ph.p_flags(endian) & PF_X != 0)
        .map(|ph| {
            let (offset, size) = (ph.p_offset(endian), ph.p_filesz(endian));
            (offset & !(PAGE - 1), (offset + size).next_multiple_of(PAGE))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nt_file_entries_parse() {
        let mut desc = Vec::new();
        for w in [
            2u64,
            4096,
            0x400000,
            0x401000,
            0,
            0x7f00_0000_0000,
            0x7f00_0000_2000,
            3,
        ] {
            desc.extend_from_slice(&w.to_le_bytes());
        }
        desc.extend_from_slice(b"/usr/bin/node\0/lib/libc.so.6\0");
        let files = parse_nt_file(&desc);
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].path, "/usr/bin/node");
        assert_eq!(
            (files[0].start, files[0].end, files[0].offset),
            (0x400000, 0x401000, 0)
        );
        assert_eq!(files[1].offset, 3 * 4096);
        assert_eq!(files[1].path, "/lib/libc.so.6");
        // Truncated: no panic, what is whole is kept.
        assert!(parse_nt_file(&desc[..20]).is_empty());
    }

    #[test]
    fn prstatus_registers_parse() {
        let mut desc = vec![0u8; PRSTATUS_SIZE];
        desc[PRSTATUS_PID..PRSTATUS_PID + 4].copy_from_slice(&4242u32.to_le_bytes());
        let mut set = |i: usize, v: u64| {
            desc[PRSTATUS_REGS + 8 * i..PRSTATUS_REGS + 8 * i + 8].copy_from_slice(&v.to_le_bytes())
        };
        set(reg::RIP, 0x1111);
        set(reg::RSP, 0x2222);
        set(reg::RBP, 0x3333);
        set(reg::CS, 0x33);
        set(reg::ORIG_RAX, 257);
        set(reg::RSI, 0x4444);
        set(reg::R10, 0x5555);
        let mut notes = Notes::default();
        notes.add(NT_PRSTATUS, b"CORE", &desc);
        let t = &notes.threads[0];
        assert_eq!(t.tid, 4242);
        assert_eq!((t.ip, t.sp, t.bp), (0x1111, 0x2222, 0x3333));
        assert!(t.user);
        assert_eq!(t.syscall_nr, 257);
        assert_eq!(t.args[1], 0x4444);
        assert_eq!(t.args[3], 0x5555);
        // Another owner's note of the same number is not a thread.
        notes.add(NT_PRSTATUS, b"LINUX", &desc);
        assert_eq!(notes.threads.len(), 1);
    }
}
