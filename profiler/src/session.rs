//! What every tracing command (`record`, `gc`) shares: why it stopped, and
//! the clock its events are on.

/// Why a recording or trace stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    DurationElapsed,
    Interrupted,
    Terminated,
    TargetExited,
    /// The reader of nodeprof's output went away (`nodeprof gc | head`).
    OutputClosed,
}

impl StopReason {
    pub fn describe(self) -> &'static str {
        match self {
            StopReason::DurationElapsed => "duration elapsed",
            StopReason::Interrupted => "interrupted",
            StopReason::Terminated => "terminated",
            StopReason::TargetExited => "target exited",
            StopReason::OutputClosed => "output closed",
        }
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns` and of V8's
/// `TimeTicks`, so samples, GC pauses and recording bounds share one time base.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
