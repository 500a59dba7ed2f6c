//! The privileges nodeprof needs, measured on Linux 6.18: sampling needs
//! CAP_BPF and CAP_PERFMON; reading another user's process (its maps, its
//! memory, `/proc/PID/exe`) CAP_SYS_PTRACE; uprobes (GC tracing) are
//! `perf_event_open` of the uprobe PMU, which wants CAP_SYS_ADMIN;
//! tracepoints (event loop, off-CPU time) are found in tracefs, which is
//! mode 0700: CAP_DAC_READ_SEARCH. Root has them all.

pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// What to run once so that every command works without sudo.
pub const SETCAP: &str =
    "sudo setcap cap_bpf,cap_perfmon,cap_sys_ptrace,cap_sys_admin,cap_dac_read_search+ep $(which nodeprof)";

/// Whether this process holds every capability of `needed` (root holds all).
pub fn has_all(needed: &[u32]) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    needed.iter().all(|&cap| effective & (1u64 << cap) != 0)
}
