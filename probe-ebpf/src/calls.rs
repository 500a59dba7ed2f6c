//! Function entry and return probes for V8's garbage collector.
//!
//! The programs know nothing of V8: each probed function is attached with a
//! cookie that user space chose (which function, entry or return), and every
//! hit becomes one [`CallEvent`]. Which functions to probe, and what their
//! arguments and return values mean, depends on the V8 version and is decided
//! in user space. The kernel filters by process: uprobes are attached to one pid.

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    macros::{map, uprobe, uretprobe},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};
use nodeprof_common::{CallEvent, CallReads, CALL_VALUES, CALL_WORDS};

/// 1 MiB: about 8,000 events (128 bytes each with the ring header). A
/// GC-heavy process makes a few hundred a second, one or two per GC; user
/// space drains every 50 ms.
#[map(name = "CALLS")]
static CALLS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Per cookie: fields of the first argument's object to copy at entry.
#[map(name = "CALL_READS")]
static CALL_READS: HashMap<u64, CallReads> = HashMap::with_max_entries(64, 0);

#[map(name = "CALLS_LOST")]
static CALLS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[uprobe]
pub fn nodeprof_call(ctx: ProbeContext) -> u32 {
    let values = [
        ctx.arg::<u64>(0).unwrap_or(0),
        ctx.arg::<u64>(1).unwrap_or(0),
        ctx.arg::<u64>(2).unwrap_or(0),
        ctx.arg::<u64>(3).unwrap_or(0),
        ctx.arg::<u64>(4).unwrap_or(0),
        ctx.arg::<u64>(5).unwrap_or(0),
    ];
    emit(ctx.as_ptr(), values, Some(values[0]));
    0
}

#[uretprobe]
pub fn nodeprof_return(ctx: RetProbeContext) -> u32 {
    emit(ctx.as_ptr(), [ctx.ret::<u64>(), 0, 0, 0, 0, 0], None);
    0
}

#[inline(always)]
fn emit(ctx: *mut core::ffi::c_void, values: [u64; CALL_VALUES], object: Option<u64>) {
    let Some(mut entry) = CALLS.reserve::<CallEvent>(0) else {
        if let Some(lost) = CALLS_LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *lost += 1 };
        }
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the context pointer is the probe's own; the cookie helper only reads it.
    let cookie = unsafe { bpf_get_attach_cookie(ctx) };
    // SAFETY: no preconditions.
    let time_ns = unsafe { bpf_ktime_get_ns() };
    let mut words = [0u64; CALL_WORDS];
    // SAFETY: lookup of a plain u64 key.
    if let (Some(object), Some(reads)) = (object, unsafe { CALL_READS.get(&cookie) }) {
        for i in 0..CALL_WORDS {
            if i as u32 >= reads.count {
                break;
            }
            let address = object.wrapping_add(reads.offsets[i] as u64);
            // SAFETY: a checked read of target memory; a fault gives an error, not a crash.
            words[i] = unsafe { bpf_probe_read_user(address as *const u64) }.unwrap_or(0);
        }
    }
    entry.write(CallEvent {
        time_ns,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        cookie,
        values,
        words,
    });
    entry.submit(BPF_RB_NO_WAKEUP as u64);
}
