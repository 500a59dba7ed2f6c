//! A core file of a live process that keeps running: every thread is stopped
//! (PTRACE_SEIZE + PTRACE_INTERRUPT), its registers and the mappings chosen by
//! the target's `coredump_filter` are written, and the threads are resumed.
//!
//! The ELF writing is the `elfcore` crate's (notes NT_PRSTATUS, NT_FPREGSET
//! and NT_X86_XSTATE per thread, NT_SIGINFO, NT_PRPSINFO, NT_AUXV, NT_FILE;
//! memory read with `process_vm_readv` in 64 KiB pieces, so nodeprof's memory
//! stays bounded). What it lacks nodeprof adds around it:
//! - the mappings: elfcore dumps every readable mapping except non-ELF files
//!   and the vDSO; nodeprof chooses them as the kernel does, by
//!   `/proc/PID/coredump_filter` (anonymous, file-backed, shared, huge, ELF
//!   headers, `MADV_DONTDUMP`), and keeps the vDSO gdb unwinds through;
//! - resuming on every path: elfcore detaches only a fully built process
//!   view, so threads seized before a failure would stay stopped. The stop
//!   runs on a thread of its own, the tracer: when it ends, however it ends,
//!   the kernel detaches and resumes every thread it still traces;
//! - Ctrl-C, SIGTERM, SIGHUP and a full disk end the write early through the
//!   sink, which resumes the target and removes the partial file;
//! - all-zero pieces are skipped in the file (a sparse file), as the kernel
//!   does for pages never touched.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use elfcore::{CoreDumpBuilder, LinuxProcessMemoryReader, ProcessInfoSource, ProcessView};

use super::interrupt;

/// Which mappings go into the core, over the target's own `coredump_filter`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoreOptions {
    /// Some(true): include file-backed mappings whole; Some(false): leave them out.
    pub file_backed: Option<bool>,
    /// Some(true): include hugetlb mappings; Some(false): leave them out.
    pub huge: Option<bool>,
    /// No progress bar.
    pub quiet: bool,
    /// Compress the file as it is written.
    pub compress: Option<Compression>,
}

/// How a core is compressed as it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    /// Zstandard, level 1 (`zstd -d` restores the core): the target stays
    /// stopped while it compresses, so speed over ratio.
    Zstd,
}

/// zstd level 1: the fastest of the standard levels.
const ZSTD_LEVEL: i32 = 1;

impl Compression {
    /// The file name's extension after `.core`.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Zstd => "core.zst",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("cannot read {what} of process {pid}: {source}")]
    Proc {
        pid: u32,
        what: &'static str,
        source: io::Error,
    },
    #[error("cannot stop process {pid}: {source}")]
    Stop {
        pid: u32,
        source: elfcore::CoreError,
    },
    #[error("process {0} exited while its core was taken; no file written")]
    Exited(u32),
    #[error("the disk is full; the target was resumed and no file written")]
    DiskFull,
    #[error("cannot write the core: {0}")]
    Write(io::Error),
    #[error("{0}: the target was resumed and no file written")]
    Interrupted(&'static str),
    #[error("cannot write the core: {0}")]
    Elf(elfcore::CoreError),
}

/// A written core, before it gets its final name.
#[derive(Debug)]
pub struct CoreCapture {
    pub threads: usize,
    pub regions: usize,
    /// Bytes of the file, as addressed (zero pages are holes).
    pub size: u64,
    /// Bytes of memory read from the target.
    pub data: u64,
    /// From the first thread's stop to the last thread's resume.
    pub stopped: Duration,
    pub filter: u32,
    pub compressed: Option<Compression>,
}

/// A mapping of the target, as `/proc/PID/smaps` shows it.
#[derive(Debug, Clone, PartialEq)]
struct Vma {
    begin: u64,
    end: u64,
    offset: u64,
    perms: String,
    path: String,
    /// Anonymous + swapped kB: the mapping has private pages of its own.
    anon_kb: u64,
    rss_kb: u64,
    flags: Vec<String>,
}

/// coredump_filter bits (core(5)).
const ANON_PRIVATE: u32 = 1 << 0;
const ANON_SHARED: u32 = 1 << 1;
const MAPPED_PRIVATE: u32 = 1 << 2;
const MAPPED_SHARED: u32 = 1 << 3;
const ELF_HEADERS: u32 = 1 << 4;
const HUGETLB_PRIVATE: u32 = 1 << 5;
const HUGETLB_SHARED: u32 = 1 << 6;

fn parse_smaps(text: &str) -> Vec<Vma> {
    let mut vmas: Vec<Vma> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((begin, end)) = first.split_once('-') {
            if let (Ok(begin), Ok(end)) =
                (u64::from_str_radix(begin, 16), u64::from_str_radix(end, 16))
            {
                let perms = fields.next().unwrap_or("").to_string();
                let offset = u64::from_str_radix(fields.next().unwrap_or("0"), 16).unwrap_or(0);
                let _dev = fields.next();
                let _inode = fields.next();
                let path = fields.collect::<Vec<_>>().join(" ");
                vmas.push(Vma {
                    begin,
                    end,
                    offset,
                    perms,
                    path,
                    anon_kb: 0,
                    rss_kb: 0,
                    flags: Vec::new(),
                });
                continue;
            }
        }
        let Some(vma) = vmas.last_mut() else { continue };
        let kb = || {
            line.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match first {
            "Anonymous:" | "Swap:" => vma.anon_kb += kb(),
            "Rss:" => vma.rss_kb = kb(),
            "VmFlags:" => vma.flags = line.split_whitespace().skip(1).map(String::from).collect(),
            _ => {}
        }
    }
    vmas
}

/// What to dump of one mapping, by the kernel's rules (`vma_dump_size`).
enum Dump {
    Skip,
    Whole,
    FirstPage,
}

fn dump_of(vma: &Vma, filter: u32, is_elf: impl Fn(u64) -> bool) -> Dump {
    let flag = |f: &str| vma.flags.iter().any(|x| x == f);
    if vma.path == "[vdso]" || vma.path == "[vsyscall]" {
        // The kernel always dumps the gate area; gdb unwinds signal frames through the vDSO.
        return if vma.path == "[vdso]" {
            Dump::Whole
        } else {
            Dump::Skip
        };
    }
    // Device memory, MADV_DONTDUMP, and what cannot be read.
    if flag("io") || flag("pf") || flag("dd") || !vma.perms.starts_with('r') || vma.path == "[vvar]"
    {
        return Dump::Skip;
    }
    let shared = vma.perms.as_bytes().get(3) == Some(&b's');
    if flag("ht") {
        let bit = if shared {
            HUGETLB_SHARED
        } else {
            HUGETLB_PRIVATE
        };
        return if filter & bit != 0 {
            Dump::Whole
        } else {
            Dump::Skip
        };
    }
    if flag("dx") {
        return Dump::Skip;
    }
    let file_backed = vma.path.starts_with('/');
    if shared {
        // Shared anonymous memory is a deleted or never linked file (shmem, memfd).
        let anonymous = !file_backed
            || vma.path.ends_with(" (deleted)")
            || vma.path.starts_with("/SYSV")
            || vma.path.starts_with("/memfd:");
        let bit = if anonymous {
            ANON_SHARED
        } else {
            MAPPED_SHARED
        };
        return if filter & bit != 0 {
            Dump::Whole
        } else {
            Dump::Skip
        };
    }
    if vma.anon_kb > 0 && filter & ANON_PRIVATE != 0 {
        return Dump::Whole;
    }
    if !file_backed {
        return Dump::Skip;
    }
    if filter & MAPPED_PRIVATE != 0 {
        return Dump::Whole;
    }
    if filter & ELF_HEADERS != 0 && vma.offset == 0 && is_elf(vma.begin) {
        return Dump::FirstPage;
    }
    Dump::Skip
}

fn read_filter(pid: u32, options: &CoreOptions) -> Result<u32, CoreError> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/coredump_filter")).map_err(|source| {
            CoreError::Proc {
                pid,
                what: "coredump_filter",
                source,
            }
        })?;
    let mut filter = u32::from_str_radix(text.trim(), 16).unwrap_or(0x33);
    let mut set = |bits: u32, on: Option<bool>| match on {
        Some(true) => filter |= bits,
        Some(false) => filter &= !bits,
        None => {}
    };
    set(MAPPED_PRIVATE | MAPPED_SHARED, options.file_backed);
    set(HUGETLB_PRIVATE | HUGETLB_SHARED, options.huge);
    Ok(filter)
}

fn read_vmas(pid: u32) -> Result<Vec<Vma>, CoreError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).map_err(|source| {
        CoreError::Proc {
            pid,
            what: "smaps",
            source,
        }
    })?;
    Ok(parse_smaps(&text))
}

/// The mappings to dump and the bytes they are expected to take on disk
/// (resident pages: the rest are holes).
fn regions(pid: u32, filter: u32) -> Result<(Vec<elfcore::VaRegion>, u64), CoreError> {
    let page = 4096u64;
    let mut regions = Vec::new();
    let mut expected = 0;
    for vma in read_vmas(pid)? {
        let end = match dump_of(&vma, filter, |at| is_elf(pid, at)) {
            Dump::Skip => continue,
            Dump::Whole => {
                expected += vma.rss_kb * 1024;
                vma.end
            }
            Dump::FirstPage => {
                expected += page;
                vma.begin + page
            }
        };
        let perm = |i: usize, c: u8| vma.perms.as_bytes().get(i) == Some(&c);
        regions.push(elfcore::VaRegion {
            begin: vma.begin,
            end,
            offset: vma.offset,
            protection: elfcore::VaProtection {
                is_private: perm(3, b'p'),
                read: perm(0, b'r'),
                write: perm(1, b'w'),
                execute: perm(2, b'x'),
            },
            mapped_file_name: vma.path.starts_with('/').then(|| vma.path.clone()),
        });
    }
    Ok((regions, expected))
}

fn is_elf(pid: u32, at: u64) -> bool {
    let mut magic = [0u8; 4];
    let local = libc::iovec {
        iov_base: magic.as_mut_ptr().cast(),
        iov_len: 4,
    };
    let remote = libc::iovec {
        iov_base: at as *mut libc::c_void,
        iov_len: 4,
    };
    // SAFETY: reads 4 bytes of another process into a local buffer.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    n == 4 && magic == *b"\x7fELF"
}

/// Bytes the core of `pid` is expected to take on disk with `options`
/// (read while the target runs, before it is stopped), and the filter used.
pub fn expected_size(pid: u32, options: &CoreOptions) -> Result<(u64, u32), CoreError> {
    let filter = read_filter(pid, options)?;
    Ok((regions(pid, filter)?.1, filter))
}

/// The free disk a core of `expected` bytes ([`expected_size`]) needs:
/// mappings may grow between the estimate and the stop, so with a margin.
pub fn disk_needed(expected: u64) -> u64 {
    expected + expected / 10 + (16 << 20)
}

/// elfcore's process view (auxv, mapped files) with nodeprof's mappings and
/// thread notes.
struct Filtered {
    view: ProcessView,
    threads: Vec<elfcore::ThreadView>,
    regions: Vec<elfcore::VaRegion>,
}

const NT_X86_XSTATE: u32 = 0x202;

/// elfcore's threads, corrected where gdb notices (while still stopped):
/// the XSAVE area is read whole (elfcore reads at most 4 KiB, and gdb
/// rejects a cut one, e.g. with AMX state); the signal is SIGSTOP, as the
/// threads were stopped (elfcore takes SigQ's queue count for it); the
/// command line is space-separated and the thread name whole.
fn threads_of(pid: u32, view: &ProcessView) -> Vec<elfcore::ThreadView> {
    view.threads()
        .iter()
        .map(|t| {
            let components = t
                .arch_state
                .components
                .iter()
                .map(|c| elfcore::ArchComponentState {
                    name: c.name,
                    note_type: c.note_type,
                    note_name: c.note_name,
                    data: if c.note_type == NT_X86_XSTATE {
                        read_regset(t.tid, NT_X86_XSTATE)
                            .map(without_amx)
                            .unwrap_or_else(|| c.data.clone())
                    } else {
                        c.data.clone()
                    },
                })
                .collect();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{}/comm", t.tid))
                .map(|c| c.trim_end().to_string())
                .unwrap_or_else(|_| t.comm.clone());
            elfcore::ThreadView {
                tid: t.tid,
                cmd_line: t.cmd_line.trim_end_matches('\0').replace('\0', " "),
                comm,
                state: t.state,
                ppid: t.ppid,
                pgrp: t.pgrp,
                session: t.session,
                flags: t.flags,
                utime: t.utime,
                stime: t.stime,
                cutime: t.cutime,
                cstime: t.cstime,
                nice: t.nice,
                uid: t.uid,
                gid: t.gid,
                cursig: libc::SIGSTOP as u16,
                sighold: t.sighold,
                sigpend: t.sigpend,
                arch_state: Box::new(elfcore::ArchState {
                    gpr_state: t.arch_state.gpr_state.clone(),
                    components,
                }),
            }
        })
        .collect()
}

/// XCR0 bits of AMX state (XTILECFG, XTILEDATA).
const XFEATURE_AMX: u64 = (1 << 17) | (1 << 18);

/// The XSAVE area without AMX state. gdb sizes the section from the features
/// it knows and rejects a longer one (8 KiB of tile data on CPUs with AMX);
/// no JS runtime keeps state in AMX tiles. The bits are cleared from XCR0
/// (the software-reserved bytes at 464) and XSTATE_BV (at 512), and the area
/// ends where the last remaining feature ends (CPUID leaf 0xD).
fn without_amx(mut xsave: Vec<u8>) -> Vec<u8> {
    let word = |x: &[u8], at: usize| {
        x.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let Some(xcr0) = word(&xsave, 464) else {
        return xsave;
    };
    if xcr0 & XFEATURE_AMX == 0 {
        return xsave;
    }
    let kept = xcr0 & !XFEATURE_AMX;
    let mut end = 576; // legacy area + XSAVE header
    for feature in 2..17 {
        if kept & (1 << feature) != 0 {
            let leaf = std::arch::x86_64::__cpuid_count(0xd, feature);
            end = end.max((leaf.ebx + leaf.eax) as usize);
        }
    }
    xsave[464..472].copy_from_slice(&kept.to_le_bytes());
    if let Some(bv) = word(&xsave, 512) {
        xsave[512..520].copy_from_slice(&(bv & !XFEATURE_AMX).to_le_bytes());
    }
    xsave.truncate(end.min(xsave.len()));
    xsave
}

/// A register set of a stopped tracee, as long as the kernel has it.
fn read_regset(tid: i32, set: u32) -> Option<Vec<u8>> {
    let mut data = vec![0u8; 64 << 10];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: PTRACE_GETREGSET writes at most iov_len bytes into our buffer
    // and sets iov_len to what it wrote.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGSET,
            tid as libc::pid_t,
            set as usize as *mut libc::c_void,
            &mut iov as *mut libc::iovec,
        )
    };
    if rc != 0 {
        return None;
    }
    data.truncate(iov.iov_len);
    Some(data)
}

impl ProcessInfoSource for Filtered {
    fn pid(&self) -> i32 {
        self.view.pid()
    }
    fn threads(&self) -> &[elfcore::ThreadView] {
        &self.threads
    }
    fn va_regions(&self) -> &[elfcore::VaRegion] {
        &self.regions
    }
    fn mapped_files(&self) -> Option<&[elfcore::MappedFile]> {
        self.view.mapped_files()
    }
    fn aux_vector(&self) -> Option<&[elfcore::Elf64_Auxv]> {
        self.view.aux_vector()
    }
    fn page_size(&self) -> usize {
        self.view.page_size()
    }
}

/// Where elfcore's bytes go: buffered, all-zero pieces skipped as holes
/// (or compressed), stopped by a signal, counted for the progress bar.
struct Sink<'a> {
    out: Output<'a>,
    buf: Vec<u8>,
    pos: u64,
    data: u64,
    progress: &'a indicatif::ProgressBar,
}

const SINK_BUFFER: usize = 1 << 20;

/// The file, written sparse or through a compressor.
enum Output<'a> {
    Sparse(&'a mut File),
    /// Streaming: zstd holds a window, not the core.
    Zstd(zstd::stream::write::Encoder<'static, &'a mut File>),
}

impl Output<'_> {
    fn new(file: &mut File, compress: Option<Compression>) -> io::Result<Output<'_>> {
        Ok(match compress {
            None => Output::Sparse(file),
            Some(Compression::Zstd) => {
                Output::Zstd(zstd::stream::write::Encoder::new(file, ZSTD_LEVEL)?)
            }
        })
    }
}

impl Sink<'_> {
    fn flush_buf(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            match &mut self.out {
                Output::Sparse(file) => file.write_all(&self.buf)?,
                Output::Zstd(encoder) => encoder.write_all(&self.buf)?,
            }
            self.buf.clear();
        }
        Ok(())
    }

    /// Flushes and ends the file: a sparse one gets its full length (a
    /// trailing hole included), a compressed one its last frame. Returns the
    /// file's size.
    fn finish(mut self) -> io::Result<u64> {
        self.flush_buf()?;
        match self.out {
            Output::Sparse(file) => {
                file.set_len(self.pos)?;
                Ok(self.pos)
            }
            Output::Zstd(encoder) => {
                let file = encoder.finish()?;
                file.stream_position()
            }
        }
    }
}

impl Write for Sink<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if interrupt::pending().is_some() {
            // Not ErrorKind::Interrupted: write_all would retry that.
            return Err(io::Error::other("stopped by a signal"));
        }
        let sparse = matches!(self.out, Output::Sparse(_));
        if sparse && data.len() >= 4096 && data.iter().all(|&b| b == 0) {
            self.flush_buf()?;
            if let Output::Sparse(file) = &mut self.out {
                file.seek(SeekFrom::Current(data.len() as i64))?;
            }
        } else {
            self.buf.extend_from_slice(data);
            if self.buf.len() >= SINK_BUFFER {
                self.flush_buf()?;
            }
        }
        self.pos += data.len() as u64;
        if data.len() >= 4096 {
            self.data += data.len() as u64;
            self.progress.set_position(self.data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_buf()
    }
}

/// Stops `pid`, writes its core into `file`, resumes it. The target is
/// resumed before this returns, on every path.
pub fn capture(
    pid: u32,
    options: &CoreOptions,
    file: &mut File,
    progress: &indicatif::ProgressBar,
) -> Result<CoreCapture, CoreError> {
    let filter = read_filter(pid, options)?;
    // A thread created while the threads are being seized makes elfcore give
    // up (the list changed); a new attempt on a fresh tracer thread sees it.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let result = std::thread::scope(|scope| {
            scope
                .spawn(|| stop_and_write(pid, filter, options.compress, file, progress))
                .join()
                .unwrap_or_else(|_| Err(CoreError::Write(io::Error::other("core writer panicked"))))
        });
        // The tracer thread has ended: every thread of the target is resumed.
        match result {
            Err(CoreError::Stop {
                source: elfcore::CoreError::RaceTryAgain,
                ..
            }) if attempts < 5 => {
                file.set_len(0).map_err(CoreError::Write)?;
                file.seek(SeekFrom::Start(0)).map_err(CoreError::Write)?;
            }
            result => return result,
        }
    }
}

fn stop_and_write(
    pid: u32,
    filter: u32,
    compress: Option<Compression>,
    file: &mut File,
    progress: &indicatif::ProgressBar,
) -> Result<CoreCapture, CoreError> {
    let alive = || Path::new(&format!("/proc/{pid}")).exists();
    let started = Instant::now();
    let view = ProcessView::new(pid as libc::pid_t).map_err(|source| {
        if !alive() {
            CoreError::Exited(pid)
        } else {
            CoreError::Stop { pid, source }
        }
    })?;
    let threads = view.threads().len();
    // Read while stopped: the mappings cannot change under the write.
    let (regions, expected) = regions(pid, filter)?;
    progress.set_length(expected.max(1));
    let count = regions.len();
    let reader = LinuxProcessMemoryReader::new(nix_pid(pid)).map_err(CoreError::Elf)?;
    let mut sink = Sink {
        out: Output::new(file, compress).map_err(CoreError::Write)?,
        buf: Vec::with_capacity(SINK_BUFFER),
        pos: 0,
        data: 0,
        progress,
    };
    let source = Filtered {
        threads: threads_of(pid, &view),
        view,
        regions,
    };
    // Writing consumes the builder and its view, which detaches every thread.
    let written = CoreDumpBuilder::from_source(source, reader).write(&mut sink);
    let stopped = started.elapsed();
    if let Some(signal) = interrupt::pending() {
        return Err(CoreError::Interrupted(interrupt::describe(signal)));
    }
    written.map_err(|e| match e {
        elfcore::CoreError::IoError(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
            CoreError::DiskFull
        }
        elfcore::CoreError::IoError(e) => CoreError::Write(e),
        e => CoreError::Elf(e),
    })?;
    let data = sink.data;
    let size = sink.finish().map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            CoreError::DiskFull
        } else {
            CoreError::Write(e)
        }
    })?;
    Ok(CoreCapture {
        threads,
        regions: count,
        size,
        data,
        stopped,
        filter,
        compressed: compress,
    })
}

fn nix_pid(pid: u32) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(pid as libc::pid_t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r--p 00000000 08:01 123 /usr/bin/node
Rss:                1024 kB
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd mr mw me sd
55d0c0200000-55d0c0300000 rw-p 00100000 08:01 123 /usr/bin/node
Rss:                  64 kB
Anonymous:            16 kB
VmFlags: rd wr mr mw me ac sd
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Rss:                 512 kB
Anonymous:           512 kB
VmFlags: rd wr mr mw me ac sd
7f0000200000-7f0000300000 ---p 00000000 00:00 0
Rss:                   0 kB
VmFlags: mr mw me sd
7f0000400000-7f0000500000 rw-s 00000000 00:01 9 /memfd:x (deleted)
Rss:                   8 kB
VmFlags: rd wr sh mr mw me ms sd
7f0000600000-7f0000700000 rw-p 00000000 00:00 0
Rss:                   4 kB
Anonymous:             4 kB
VmFlags: rd wr mr mw me ac sd dd
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
Rss:                   8 kB
VmFlags: rd ex mr mw me de sd
";

    fn chosen(filter: u32) -> Vec<(u64, &'static str)> {
        parse_smaps(SMAPS)
            .iter()
            .filter_map(|v| match dump_of(v, filter, |_| true) {
                Dump::Skip => None,
                Dump::Whole => Some((v.begin, "whole")),
                Dump::FirstPage => Some((v.begin, "page")),
            })
            .collect()
    }

    #[test]
    fn default_filter_dumps_what_the_kernel_dumps() {
        assert_eq!(
            chosen(0x33),
            [
                (0x55d0c0000000, "page"),
                (0x55d0c0200000, "whole"),
                (0x7f0000000000, "whole"),
                (0x7f0000400000, "whole"),
                (0x7ffd00000000, "whole"),
            ]
        );
    }

    #[test]
    fn filter_bits_choose_file_backed_and_anonymous() {
        // File-backed included whole; anonymous shared left out.
        let with_files = chosen(0x33 | MAPPED_PRIVATE & !ANON_SHARED);
        assert!(with_files.contains(&(0x55d0c0000000, "whole")));
        // Nothing but the vDSO without any bit.
        assert_eq!(chosen(0), [(0x7ffd00000000, "whole")]);
    }

    #[test]
    fn smaps_fields_parse() {
        let vmas = parse_smaps(SMAPS);
        assert_eq!(vmas.len(), 7);
        assert_eq!(vmas[1].offset, 0x100000);
        assert_eq!(vmas[1].anon_kb, 16);
        assert_eq!(vmas[4].path, "/memfd:x (deleted)");
        assert!(vmas[5].flags.iter().any(|f| f == "dd"));
    }
}
