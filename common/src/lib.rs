//! Types shared by the eBPF programs (`probe-ebpf`) and user space (`profiler`).
//! Everything is `#[repr(C)]` and plain old data: the kernel writes these bytes,
//! user space reads them back.
#![no_std]

/// Deepest user stack the sampler records. The kernel caps callchains at
/// `kernel.perf_event_max_stack` (127 by default).
pub const MAX_USER_FRAMES: usize = 127;
/// Deepest kernel stack the sampler records.
pub const MAX_KERNEL_FRAMES: usize = 64;
/// Length of a task's `comm` (thread name), NUL padded.
pub const COMM_LEN: usize = 16;

/// Name of the ring buffer map samples travel through.
pub const SAMPLES_MAP: &str = "SAMPLES";
/// Name of the hash map of target tgids (key: tgid, value: unused).
pub const TARGETS_MAP: &str = "TARGETS";
/// Name of the per-CPU array counting samples dropped because the ring buffer was full.
pub const LOST_MAP: &str = "LOST";
/// Name of the perf_event sampler program.
pub const SAMPLER_PROGRAM: &str = "nodeprof_sample";

/// One stack sample of a target thread, as the eBPF sampler writes it into the
/// ring buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SampleRecord {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, nanoseconds.
    pub time_ns: u64,
    /// Process id (thread group id) in the root pid namespace.
    pub tgid: u32,
    /// Thread id in the root pid namespace.
    pub tid: u32,
    /// CPU the sample was taken on.
    pub cpu: u32,
    /// Number of valid entries in `kernel_stack` (0 when the thread ran in user mode).
    pub kernel_frames: u32,
    /// Number of valid entries in `user_stack`.
    pub user_frames: u32,
    pub _pad: u32,
    /// Thread name (`comm`), NUL padded.
    pub comm: [u8; COMM_LEN],
    /// Kernel instruction pointers, innermost first.
    pub kernel_stack: [u64; MAX_KERNEL_FRAMES],
    /// User instruction pointers, innermost first (the first is the interrupted pc,
    /// the rest are return addresses).
    pub user_stack: [u64; MAX_USER_FRAMES],
}

impl SampleRecord {
    pub fn kernel_stack(&self) -> &[u64] {
        &self.kernel_stack[..(self.kernel_frames as usize).min(MAX_KERNEL_FRAMES)]
    }

    pub fn user_stack(&self) -> &[u64] {
        &self.user_stack[..(self.user_frames as usize).min(MAX_USER_FRAMES)]
    }

    /// The thread name up to its first NUL.
    pub fn comm(&self) -> &[u8] {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        &self.comm[..end]
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for SampleRecord {}
