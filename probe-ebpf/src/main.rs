//! nodeprof's eBPF programs.
//!
//! `nodeprof_sample` runs on every tick of a per-CPU `cpu-clock` perf event.
//! `perf_event_open(pid)` would follow only one thread, so user space opens one
//! event per CPU for all processes and this program keeps only samples whose
//! tgid is a target's.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod sampler {
    use aya_ebpf::{
        bindings::BPF_F_USER_STACK,
        helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_get_stack, bpf_ktime_get_ns},
        macros::{map, perf_event},
        maps::{HashMap, PerCpuArray, RingBuf},
        programs::PerfEventContext,
        EbpfContext,
    };
    use nodeprof_common::{SampleRecord, MAX_KERNEL_FRAMES, MAX_USER_FRAMES};

    /// 8 MiB: about 5,000 samples of headroom, i.e. seconds of 2 busy CPUs at 999 Hz
    /// even if user space stalls.
    #[map(name = "SAMPLES")]
    static SAMPLES: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

    #[map(name = "TARGETS")]
    static TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(1024, 0);

    #[map(name = "LOST")]
    static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

    #[perf_event]
    pub fn nodeprof_sample(ctx: PerfEventContext) -> u32 {
        let pid_tgid = bpf_get_current_pid_tgid();
        let tgid = (pid_tgid >> 32) as u32;
        // SAFETY: lookup of a plain u32 key; the value is not used.
        if unsafe { TARGETS.get(&tgid) }.is_none() {
            return 0;
        }
        let Some(mut entry) = SAMPLES.reserve::<SampleRecord>(0) else {
            if let Some(lost) = LOST.get_ptr_mut(0) {
                // SAFETY: per-CPU slot, no concurrent writer on this CPU.
                unsafe { *lost += 1 };
            }
            return 0;
        };
        let record = entry.as_mut_ptr();
        // SAFETY: `record` points to reserved ring buffer memory of the right size;
        // every field is written before submit.
        unsafe {
            (*record).time_ns = bpf_ktime_get_ns();
            (*record).tgid = tgid;
            (*record).tid = pid_tgid as u32;
            (*record).cpu = bpf_get_smp_processor_id();
            (*record)._pad = 0;
            (*record).comm = bpf_get_current_comm().unwrap_or([0; 16]);
            let ctx_ptr = ctx.as_ptr();
            let kernel_bytes = bpf_get_stack(
                ctx_ptr,
                (*record).kernel_stack.as_mut_ptr().cast(),
                (MAX_KERNEL_FRAMES * 8) as u32,
                0,
            );
            (*record).kernel_frames = if kernel_bytes > 0 { (kernel_bytes / 8) as u32 } else { 0 };
            let user_bytes = bpf_get_stack(
                ctx_ptr,
                (*record).user_stack.as_mut_ptr().cast(),
                (MAX_USER_FRAMES * 8) as u32,
                BPF_F_USER_STACK as u64,
            );
            (*record).user_frames = if user_bytes > 0 { (user_bytes / 8) as u32 } else { 0 };
        }
        entry.submit(0);
        0
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
