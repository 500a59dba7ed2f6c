//! What target threads do besides running: when they leave the CPU and come
//! back (`sched_switch`, for off-CPU time), and when an event loop enters and
//! leaves `epoll_wait` (event-loop turns). Tracepoints, no uprobe trap.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
    EbpfContext,
};
use nodeprof_common::{
    OffCpu, SwitchConfig, ThreadEvent, EPOLL_ENTER_EPFD_OFFSET, EVENT_LOOP_ENTER, EVENT_LOOP_EXIT,
    EVENT_SWITCH_IN, SAMPLE_OFF_CPU, TASK_EXITING,
};

use crate::sampler::{fill_record, is_target, reserve_sample, saved_user_regs, submit_sample};

const EVENTS_BYTES: u32 = 1 << 20;
#[map(name = "THREAD_EVENTS")]
static THREAD_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
const EVENTS_WAKEUP_BYTES: u64 = (EVENTS_BYTES / 4) as u64;

/// Target threads off CPU now, with when they left.
#[map(name = "OFF_CPU")]
static OFF_CPU: HashMap<u32, OffCpu> = HashMap::with_max_entries(16384, 0);

#[map(name = "THREAD_EVENTS_LOST")]
static THREAD_EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "SWITCH_CONFIG")]
static SWITCH_CONFIG: Array<SwitchConfig> = Array::with_max_entries(1, 0);

/// Runs in the context of the thread leaving the CPU (`prev`): its stack is
/// the one it blocks in. `next`'s return is looked up by tid: only threads
/// this program saw leave are in `OFF_CPU`.
#[tracepoint]
pub fn nodeprof_switch(ctx: TracePointContext) -> u32 {
    let Some(config) = SWITCH_CONFIG.get(0) else {
        return 0;
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: reads inside the tracepoint's record, at offsets from its format.
    let state: i64 = unsafe { ctx.read_at(config.prev_state_offset as usize) }.unwrap_or(0);
    // An exiting thread never comes back: no interval to open.
    if is_target(tgid) && state & TASK_EXITING == 0 {
        let start = OffCpu {
            start_ns: now,
            tgid,
            _pad: 0,
        };
        if OFF_CPU.insert(&(pid_tgid as u32), &start, 0).is_ok() {
            if let Some(mut entry) = reserve_sample() {
                // SAFETY: reserved ring buffer memory of a SampleRecord.
                unsafe {
                    fill_record(
                        ctx.as_ptr(),
                        entry.as_mut_ptr(),
                        pid_tgid,
                        SAMPLE_OFF_CPU,
                        state as u16,
                        saved_user_regs(),
                    );
                    // The off-CPU interval starts now, not when the stack was read.
                    (*entry.as_mut_ptr()).time_ns = now;
                }
                submit_sample(entry);
            }
        }
    }
    // SAFETY: as above.
    let next: i32 = unsafe { ctx.read_at(config.next_pid_offset as usize) }.unwrap_or(0);
    if next <= 0 {
        return 0;
    }
    let next = next as u32;
    // SAFETY: a copy of the value is taken before the entry is removed.
    let Some(off) = (unsafe { OFF_CPU.get(&next) }).copied() else {
        return 0;
    };
    let _ = OFF_CPU.remove(&next);
    emit(ThreadEvent {
        time_ns: now,
        start_ns: off.start_ns,
        tgid: off.tgid,
        tid: next,
        kind: EVENT_SWITCH_IN,
        epfd: -1,
    });
    0
}

#[tracepoint]
pub fn nodeprof_loop_enter(ctx: TracePointContext) -> u32 {
    // SAFETY: the first syscall argument, inside the tracepoint's record.
    let epfd: i64 = unsafe { ctx.read_at(EPOLL_ENTER_EPFD_OFFSET) }.unwrap_or(-1);
    loop_event(EVENT_LOOP_ENTER, epfd as i32);
    0
}

#[tracepoint]
pub fn nodeprof_loop_exit(_ctx: TracePointContext) -> u32 {
    loop_event(EVENT_LOOP_EXIT, -1);
    0
}

#[inline(always)]
fn loop_event(kind: u32, epfd: i32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_target(tgid) {
        return;
    }
    emit(ThreadEvent {
        // SAFETY: no preconditions.
        time_ns: unsafe { bpf_ktime_get_ns() },
        start_ns: 0,
        tgid,
        tid: pid_tgid as u32,
        kind,
        epfd,
    });
}

#[inline(always)]
fn emit(event: ThreadEvent) {
    let wakeup = if THREAD_EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= EVENTS_WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if THREAD_EVENTS
        .output::<ThreadEvent>(&event, wakeup as u64)
        .is_err()
    {
        if let Some(lost) = THREAD_EVENTS_LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *lost += 1 };
        }
    }
}
