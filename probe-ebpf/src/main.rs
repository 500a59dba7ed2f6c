//! nodeprof's eBPF programs.
//!
//! `nodeprof_sample` (sampler.rs) runs on every tick of a per-CPU `cpu-clock`
//! perf event. `perf_event_open(pid)` would follow only one thread, so user
//! space opens one event per CPU for all processes and this program keeps only
//! samples whose tgid is a target's.
//!
//! `nodeprof_call` / `nodeprof_return` (calls.rs) are uprobes on V8's GC
//! functions, attached to one process each.
//!
//! `nodeprof_switch` (threads.rs) runs on `sched_switch`: the stack a target
//! thread leaves the CPU with, and when it returns (off-CPU time).
//! `nodeprof_loop_enter` / `nodeprof_loop_exit` run on `epoll_wait`'s entry
//! and exit tracepoints: the turns of each event loop.
//!
//! `nodeprof_tasks` (tasks.rs) is a task iterator: the saved user registers
//! and kernel stack of one thread (`nodeprof dump`).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod calls;
#[cfg(target_arch = "bpf")]
mod sampler;
#[cfg(target_arch = "bpf")]
mod tasks;
#[cfg(target_arch = "bpf")]
mod threads;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
