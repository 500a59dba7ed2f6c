//! The one clock of nodeprof's events.

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
