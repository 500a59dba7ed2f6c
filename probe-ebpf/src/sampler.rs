//! The stack sampler: runs on every tick of a per-CPU `cpu-clock` perf event.

use aya_ebpf::{
    bindings::{pt_regs, BPF_F_MMAPABLE, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task_btf,
        bpf_get_smp_processor_id, bpf_get_stack, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user, bpf_task_pt_regs,
    },
    macros::{map, perf_event, tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{PerfEventContext, TracePointContext},
    EbpfContext,
};
use nodeprof_common::{
    find_unwind_row, SampleRecord, UnwindRow, UnwindTable, UserFrame, V8ProbeConfig, CFA_RBP,
    CFA_RSP, MAX_KERNEL_FRAMES, MAX_UNWIND_LEVELS, MAX_UNWIND_OBJECTS, MAX_UNWIND_ROWS,
    MAX_USER_FRAMES, SAMPLE_OFF_CPU, SAMPLE_ON_CPU,
};

/// About 950 samples (8.6 KiB each), half a second of 2 busy CPUs at
/// 999 Hz. A recording sizes it for a quarter second of its CPUs at its
/// rate (up to 64 MiB); user space drains every 50 ms, or sooner when woken
/// past 2 MiB.
const SAMPLES_BYTES: u32 = nodeprof_common::SAMPLES_RING_BYTES;
#[map(name = "SAMPLES")]
static SAMPLES: RingBuf = RingBuf::with_byte_size(SAMPLES_BYTES, 0);
/// User space drains the ring buffer on a timer; a wakeup per sample would
/// cost a context switch each. It is woken early only past this fill level
/// (a quarter of the declared size; a larger ring keeps it; dump's 512 KiB
/// ring never reaches it, and dump reads every 5 ms).
const WAKEUP_BYTES: u64 = (SAMPLES_BYTES / 4) as u64;

#[map(name = "TARGETS")]
static TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(1024, 0);

#[map(name = "V8_CONFIGS")]
static V8_CONFIGS: HashMap<u32, V8ProbeConfig> = HashMap::with_max_entries(1024, 0);

/// `.eh_frame` rows of the objects built without frame pointers (libc…),
/// computed by user space (`probe/cfi.rs`), which writes them through a
/// mapping of the array (`probe/rows.rs`), not one `bpf(2)` call per row.
#[map(name = "UNWIND_ROWS")]
static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(MAX_UNWIND_ROWS, BPF_F_MMAPABLE);

#[map(name = "UNWIND_TABLES")]
static UNWIND_TABLES: HashMap<u32, UnwindTable> = HashMap::with_max_entries(1024, 0);

/// An exec replaces every mapping a target's unwind table describes: the
/// table goes at once, before the new program runs a single instruction,
/// rather than when user space notices (it then builds the new one).
#[tracepoint]
pub fn nodeprof_unwind_exec(_ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if is_target(tgid) {
        // Counted first: user space compares the count around a rebuild
        // that may have read the old program's mappings.
        match UNWIND_EXECS.get_ptr_mut(&tgid) {
            // SAFETY: a valid map value; an exec of one process cannot run
            // twice at once.
            Some(count) => unsafe { *count += 1 },
            None => {
                let _ = UNWIND_EXECS.insert(&tgid, &1, 0);
            }
        }
        let _ = UNWIND_TABLES.remove(&tgid);
    }
    0
}

/// Execs of each target, counted by [`nodeprof_unwind_exec`].
#[map(name = "UNWIND_EXECS")]
static UNWIND_EXECS: HashMap<u32, u64> = HashMap::with_max_entries(1024, 0);

#[map(name = "LOST")]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The layout of a process without V8: its tag test fails on every word
/// (`word & 0 != 1`), so no frame is taken for a JS one.
const NO_V8: V8ProbeConfig = V8ProbeConfig {
    fp_context: 0,
    fp_function: 0,
    jsfunction_shared: 0,
    heap_object_map: 0,
    map_instance_type: 0,
    sfi_name_or_scope_info: 0,
    sfi_instance_type: 0,
    heap_object_tag: 1,
    heap_object_tag_mask: 0,
    _pad: 0,
};

/// Frames farther apart than this are not one stack: stop the walk.
const MAX_FRAME_SIZE: u64 = 8 << 20;

#[perf_event]
pub fn nodeprof_sample(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_target((pid_tgid >> 32) as u32) {
        return 0;
    }
    let Some(mut entry) = reserve_sample() else {
        return 0;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points to reserved ring buffer memory of the right size.
    unsafe {
        fill_record(
            ctx.as_ptr(),
            record,
            pid_tgid,
            SAMPLE_ON_CPU,
            0,
            user_regs(&ctx),
        )
    };
    submit_sample(entry);
    0
}

/// Submits a reserved record, waking user space only past [`WAKEUP_BYTES`].
pub(crate) fn submit_sample(entry: aya_ebpf::maps::ring_buf::RingBufEntry<SampleRecord>) {
    let wakeup = if SAMPLES.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(wakeup as u64);
}

/// Reserves a sample record, counting it lost when the buffer is full.
pub(crate) fn reserve_sample() -> Option<aya_ebpf::maps::ring_buf::RingBufEntry<SampleRecord>> {
    let entry = SAMPLES.reserve::<SampleRecord>(0);
    if entry.is_none() {
        if let Some(lost) = LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *lost += 1 };
        }
    }
    entry
}

/// Whether the current thread belongs to a target process.
pub(crate) fn is_target(tgid: u32) -> bool {
    // SAFETY: lookup of a plain u32 key; the value is not used.
    unsafe { TARGETS.get(&tgid) }.is_some()
}

/// Fills a sample of the current thread: time, ids, name, the kernel stack
/// at `ctx` and the user stack walked from `regs` (pc, fp, sp).
///
/// # Safety
/// `record` points to writable memory of a `SampleRecord`; `ctx` is the
/// program's context.
#[inline(always)]
pub(crate) unsafe fn fill_record(
    ctx: *mut core::ffi::c_void,
    record: *mut SampleRecord,
    pid_tgid: u64,
    kind: u16,
    state: u16,
    regs: Option<(u64, u64, u64)>,
) {
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: the caller's contract; every field read later is written here.
    unsafe {
        (*record).time_ns = bpf_ktime_get_ns();
        (*record).tgid = tgid;
        (*record).tid = pid_tgid as u32;
        (*record).cpu = bpf_get_smp_processor_id();
        (*record).kind = kind;
        (*record).state = state;
        (*record).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        let kernel_bytes = bpf_get_stack(
            ctx,
            (*record).kernel_stack.as_mut_ptr().cast(),
            (MAX_KERNEL_FRAMES * 8) as u32,
            0,
        );
        (*record).kernel_frames = if kernel_bytes > 0 {
            (kernel_bytes / 8) as u32
        } else {
            0
        };
        // Copied to the stack, a layout or none (one that matches no
        // frame): the verifier then walks the frames once, not once per case.
        let config = match V8_CONFIGS.get(&tgid) {
            Some(config) => *config,
            None => NO_V8,
        };
        (*record).user_tos = 0;
        // Ring-buffer memory is not zeroed: a record without registers must
        // not show an earlier record's leaf frames.
        (*record).leaf_frames = 0;
        (*record).user_frames = match regs {
            Some((pc, fp, sp)) => {
                // Frames of code without frame pointers (libc) first, by
                // their `.eh_frame` rows; then the frame-pointer chain.
                let (unwound, pc, fp) = match UNWIND_TABLES.get(&tgid) {
                    Some(table) => unwind_with_rows(table, pc, fp, sp, &mut (*record).leaf_pcs),
                    None => (0, pc, fp),
                };
                (*record).leaf_frames = unwound as u32;
                // A thread leaving the CPU mostly sits in a libc syscall
                // wrapper without a frame pointer; a sampled one rarely.
                // Without a row for it, a frame record is searched for.
                let fp = if kind == SAMPLE_OFF_CPU && unwound == 0 {
                    walk_start(fp, sp)
                } else {
                    fp
                };
                let n = walk_user_stack(pc, fp, &config, &mut (*record).user_stack);
                // Read back, not `unwound`: a count kept live across the walk
                // would make the verifier check the walk once per value.
                if kind == SAMPLE_ON_CPU
                    && core::ptr::read_volatile(&(*record).leaf_frames) == 0
                    && n > 0
                    && (*record).user_stack[0].sfi != 0
                {
                    (*record).user_tos = bpf_probe_read_user(sp as *const u64).unwrap_or(0);
                }
                n
            }
            None => 0,
        };
    }
}

/// The user registers the kernel saved when the current thread entered it.
pub(crate) fn saved_user_regs() -> Option<(u64, u64, u64)> {
    // SAFETY: helpers on the current task; the pt_regs are copied with a checked read.
    unsafe {
        let saved = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        if saved.is_null() {
            return None;
        }
        let regs: pt_regs = bpf_probe_read_kernel(saved).ok()?;
        (regs.rip != 0).then_some((regs.rip, regs.rbp, regs.rsp))
    }
}

/// The user-mode pc and frame pointer of the interrupted thread: the
/// interrupt's registers when it hit user code, else those the kernel
/// saved on entry (a syscall or fault in progress).
fn user_regs(ctx: &PerfEventContext) -> Option<(u64, u64, u64)> {
    // SAFETY: ctx points to the kernel's bpf_perf_event_data.
    let regs = unsafe { &(*ctx.ctx).regs };
    if regs.cs & 3 == 3 {
        return Some((regs.rip, regs.rbp, regs.rsp));
    }
    saved_user_regs()
}

/// Words above the stack pointer searched for a frame record when the
/// frame pointer is not one (a libc leaf that uses rbp as a plain register).
const SCAN_CHUNKS: usize = 4;
const CHUNK_WORDS: usize = 8;

/// Largest frame the scan for a frame record accepts: tighter than
/// [`MAX_FRAME_SIZE`], since stack words that are neither are also scanned.
const MAX_SCANNED_FRAME: u64 = 64 << 10;
/// Lowest address code is mapped at (non-PIE executables start at 4 MiB).
const MIN_CODE_ADDRESS: u64 = 0x40_0000;

/// Whether the 16 bytes at `at` look like a frame record: a saved frame
/// pointer a little higher up the same stack, then a return address.
#[inline(always)]
fn is_frame_record(at: u64, saved_fp: u64, return_address: u64) -> bool {
    saved_fp > at
        && saved_fp - at < MAX_SCANNED_FRAME
        && saved_fp & 7 == 0
        && return_address >= MIN_CODE_ADDRESS
        && return_address < 0x0000_8000_0000_0000
        && return_address.abs_diff(at) > MAX_FRAME_SIZE
}

/// The frame pointer to start the walk from: `fp` when it points at a frame
/// record, else the first frame record found just above `sp`. A thread in a
/// system call usually sits in a libc wrapper built without frame pointers;
/// the record its caller's prologue pushed is a few words up the stack.
#[inline(always)]
fn walk_start(fp: u64, sp: u64) -> u64 {
    // SAFETY: checked reads of user memory.
    if let Ok(record) = unsafe { bpf_probe_read_user(fp as *const [u64; 2]) } {
        if is_frame_record(fp, record[0], record[1]) {
            return fp;
        }
    }
    if sp == 0 {
        return fp;
    }
    for chunk in 0..SCAN_CHUNKS {
        let base = sp + (chunk * CHUNK_WORDS * 8) as u64;
        // One word more than the chunk, so a record across chunks is seen.
        let Ok(words) = (unsafe { bpf_probe_read_user(base as *const [u64; CHUNK_WORDS + 1]) })
        else {
            return fp;
        };
        for i in 0..CHUNK_WORDS {
            let at = base + (i * 8) as u64;
            if is_frame_record(at, words[i], words[i + 1]) {
                return at;
            }
        }
    }
    fp
}

/// Unwinds the frames whose pc lies in an object of `table` with that
/// object's `.eh_frame` rows, writing their pcs to `leaf_pcs`; stops at the
/// first pc outside them, an unknown rule, a failed read or a CFA that does
/// not move up the stack. Returns how many frames it wrote and the pc and
/// frame pointer the frame-pointer walk goes on from (unchanged if none).
#[inline(always)]
unsafe fn unwind_with_rows(
    table: &UnwindTable,
    mut pc: u64,
    mut fp: u64,
    mut sp: u64,
    leaf_pcs: &mut [u64; MAX_UNWIND_LEVELS],
) -> (usize, u64, u64) {
    for level in 0..MAX_UNWIND_LEVELS {
        // A return address is the instruction after the call, which may be
        // the next function's first: its call lies one byte before.
        let lookup = if level == 0 { pc } else { pc - 1 };
        let Some(row) = find_row(table, lookup) else {
            return (level, pc, fp);
        };
        let base = match row.cfa {
            CFA_RSP => sp,
            CFA_RBP => fp,
            _ => return (level, pc, fp),
        };
        let cfa = base + row.cfa_offset as u64;
        if cfa <= sp || cfa - sp > MAX_FRAME_SIZE {
            return (level, pc, fp);
        }
        // SAFETY: checked reads of user memory.
        let Ok(return_address) = (unsafe { bpf_probe_read_user((cfa - 8) as *const u64) }) else {
            return (level, pc, fp);
        };
        let caller_fp = if row.rbp_offset == 0 {
            fp
        } else {
            let at = cfa.wrapping_add((row.rbp_offset as i64 * 8) as u64);
            match unsafe { bpf_probe_read_user(at as *const u64) } {
                Ok(saved) => saved,
                Err(_) => return (level, pc, fp),
            }
        };
        if return_address == 0 {
            return (level, pc, fp);
        }
        leaf_pcs[level] = pc;
        pc = return_address;
        fp = caller_fp;
        sp = cfa;
    }
    (MAX_UNWIND_LEVELS, pc, fp)
}

/// The row of `table` that holds for `pc`, if an object of it covers `pc`.
#[inline(always)]
fn find_row(table: &UnwindTable, pc: u64) -> Option<UnwindRow> {
    let mut found = None;
    for i in 0..MAX_UNWIND_OBJECTS {
        if i as u32 >= table.count {
            break;
        }
        let object = &table.objects[i];
        if pc >= object.start && pc < object.end && pc >= object.bias {
            found = Some((pc - object.bias, object.first_row, object.rows));
            break;
        }
    }
    let (offset, first, rows) = found?;
    if offset > u32::MAX as u64 {
        return None;
    }
    find_unwind_row(first, rows, offset as u32, |i| UNWIND_ROWS.get(i).copied())
}

/// Walks the frame-pointer chain. For each frame records the pc, the word
/// V8 keeps at `[fp-8]` and, when the frame holds a JSFunction, its
/// SharedFunctionInfo, checked by instance type so that a stale or garbage
/// slot is never taken for a function.
#[inline(always)]
unsafe fn walk_user_stack(
    mut pc: u64,
    mut fp: u64,
    config: &V8ProbeConfig,
    frames: &mut [UserFrame; MAX_USER_FRAMES],
) -> u32 {
    let mut n = 0u32;
    for i in 0..MAX_USER_FRAMES {
        let frame = &mut frames[i];
        frame.pc = pc;
        frame.frame_marker = 0;
        frame.sfi = 0;
        frame.sfi_fingerprint = 0;
        n = i as u32 + 1;
        if fp == 0 {
            break;
        }
        // [fp-16] function, [fp-8] context or marker, [fp] caller fp, [fp+8] return address.
        let Ok(window) = (unsafe { bpf_probe_read_user((fp - 16) as *const [u64; 4]) }) else {
            break;
        };
        let [function, marker, caller_fp, return_address] = window;
        frame.frame_marker = marker;
        if let Some((sfi, fingerprint)) = unsafe { shared_function_info(config, function, marker) }
        {
            frame.sfi = sfi;
            frame.sfi_fingerprint = fingerprint;
        }
        if caller_fp <= fp || caller_fp - fp > MAX_FRAME_SIZE || return_address == 0 {
            break;
        }
        pc = return_address;
        fp = caller_fp;
    }
    n
}

/// The SharedFunctionInfo of a JS frame's function, or None when the slots
/// do not hold a JSFunction whose `shared` is an SFI.
#[inline(always)]
unsafe fn shared_function_info(
    config: &V8ProbeConfig,
    function: u64,
    context: u64,
) -> Option<(u64, u64)> {
    let tag = config.heap_object_tag as u64;
    let mask = config.heap_object_tag_mask as u64;
    // A typed frame keeps a Smi marker here, a JS frame its Context.
    if context & mask != tag || function & mask != tag {
        return None;
    }
    let shared: u64 = unsafe {
        bpf_probe_read_user((function - tag + config.jsfunction_shared as u64) as *const u64)
    }
    .ok()?;
    if shared & mask != tag {
        return None;
    }
    let map: u64 = unsafe {
        bpf_probe_read_user((shared - tag + config.heap_object_map as u64) as *const u64)
    }
    .ok()?;
    if map & mask != tag {
        return None;
    }
    let instance_type: u16 =
        unsafe { bpf_probe_read_user((map - tag + config.map_instance_type as u64) as *const u16) }
            .ok()?;
    if instance_type != config.sfi_instance_type {
        return None;
    }
    let fingerprint: u64 = unsafe {
        bpf_probe_read_user((shared - tag + config.sfi_name_or_scope_info as u64) as *const u64)
    }
    .ok()?;
    Some((shared, fingerprint))
}
