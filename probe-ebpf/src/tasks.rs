//! The task iterator (`iter/task`): for the one thread its link names, the
//! user registers saved at kernel entry and the kernel stack. Nothing of the
//! thread is stopped or signalled; user space walks the user stack from
//! these registers with `process_vm_readv` (a blocked thread does not move).
//!
//! aya-ebpf 0.2.1 has no `#[iter]` macro: the section name is what makes
//! this an iterator program (aya parses `iter/…`).

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_task_stack, bpf_probe_read_kernel, bpf_task_pt_regs},
    macros::map,
    maps::PerCpuArray,
};
use nodeprof_common::{TaskRecord, MAX_KERNEL_FRAMES};

/// The record is built here: at about 700 bytes it does not fit the stack.
#[map(name = "TASK_SCRATCH")]
static TASK_SCRATCH: PerCpuArray<TaskRecord> = PerCpuArray::with_max_entries(1, 0);

/// `struct bpf_iter_meta` (the first member is all we use).
#[repr(C)]
pub struct IterMeta {
    seq: *mut aya_ebpf::bindings::seq_file,
    session_id: u64,
    seq_num: u64,
}

/// `struct bpf_iter__task`: the context of a task iterator.
#[repr(C)]
pub struct IterTask {
    meta: *mut IterMeta,
    task: *mut aya_ebpf::bindings::task_struct,
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub extern "C" fn nodeprof_tasks(ctx: *mut IterTask) -> i32 {
    // SAFETY: the kernel passes a valid context; task is NULL after the last one.
    unsafe {
        let task = (*ctx).task;
        if task.is_null() {
            return 0;
        }
        let seq = (*(*ctx).meta).seq;
        let Some(record) = TASK_SCRATCH.get_ptr_mut(0) else {
            return 0;
        };
        let saved = bpf_task_pt_regs(task) as *const pt_regs;
        let regs: pt_regs = if saved.is_null() {
            core::mem::zeroed()
        } else {
            bpf_probe_read_kernel(saved).unwrap_or(core::mem::zeroed())
        };
        (*record).ip = regs.rip;
        (*record).sp = regs.rsp;
        (*record).bp = regs.rbp;
        (*record).cs = regs.cs;
        (*record).syscall_nr = regs.orig_rax as i64;
        (*record).args = [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9];
        (*record)._pad = 0;
        let bytes = bpf_get_task_stack(
            task,
            (*record).kernel_stack.as_mut_ptr().cast(),
            (MAX_KERNEL_FRAMES * 8) as u32,
            0,
        );
        (*record).kernel_frames = if bytes > 0 { (bytes / 8) as u32 } else { 0 };
        aya_ebpf::helpers::bpf_seq_write(
            seq,
            record.cast(),
            core::mem::size_of::<TaskRecord>() as u32,
        );
    }
    0
}
