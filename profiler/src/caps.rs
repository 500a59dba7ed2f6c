//! The privileges nodeprof needs, measured on Linux 6.18: sampling needs
//! CAP_BPF and CAP_PERFMON; reading another user's process (its maps, its
//! memory, `/proc/PID/exe`) CAP_SYS_PTRACE; uprobes (GC tracing) are
//! `perf_event_open` of the uprobe PMU, which wants CAP_SYS_ADMIN;
//! tracepoints (event loop, off-CPU time) are found in tracefs, which is
//! mode 0700: CAP_DAC_READ_SEARCH. Root has them all. Signalling another
//! user's process (`snapshot` starts the inspector with SIGUSR1) needs CAP_KILL.

pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_KILL: u32 = 5;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// The capabilities nodeprof's commands use, by name.
pub const KNOWN: &[(u32, &str)] = &[
    (CAP_BPF, "CAP_BPF"),
    (CAP_PERFMON, "CAP_PERFMON"),
    (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
    (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
    (CAP_KILL, "CAP_KILL"),
];

/// What to run once so that every command works without sudo.
pub const SETCAP: &str =
    "sudo setcap cap_bpf,cap_perfmon,cap_sys_ptrace,cap_sys_admin,cap_dac_read_search+ep $(which nodeprof)";

/// This process's effective capability set. By the effective set, not the
/// uid: root in a container may lack CAP_BPF.
pub fn effective() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// Whether this process holds every capability of `needed`.
pub fn has_all(needed: &[u32]) -> bool {
    lacking(needed).is_empty()
}

/// The names of the capabilities of `needed` this process does not hold.
pub fn lacking(needed: &[u32]) -> Vec<&'static str> {
    lacking_in(effective(), needed)
}

pub fn lacking_in(effective: u64, needed: &[u32]) -> Vec<&'static str> {
    needed
        .iter()
        .filter(|&&cap| effective & (1u64 << cap) == 0)
        .map(|&cap| name(cap))
        .collect()
}

pub fn name(cap: u32) -> &'static str {
    KNOWN
        .iter()
        .find(|(c, _)| *c == cap)
        .map_or("an unnamed capability", |(_, n)| n)
}

/// The one sentence every command and `nodeprof doctor` give when
/// privileges are missing: what is lacking, and the fix.
pub fn denied(lacking: &[&str]) -> String {
    if lacking.is_empty() {
        // Every capability held and still refused: not something setcap fixes.
        return "permission denied by the kernel although nodeprof holds its capabilities \
                (a seccomp profile, lockdown or a security module refuses it; in Docker run \
                with --privileged or --security-opt seccomp=unconfined)"
            .into();
    }
    format!(
        "permission denied: nodeprof lacks {}. Run it as root (sudo), or grant the capabilities: {SETCAP}",
        lacking.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_lacking() {
        let bpf_only = 1u64 << CAP_BPF;
        assert_eq!(
            lacking_in(bpf_only, &[CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE]),
            ["CAP_PERFMON", "CAP_SYS_PTRACE"]
        );
        assert!(lacking_in(u64::MAX, &[CAP_BPF, CAP_KILL]).is_empty());
        let text = denied(&["CAP_BPF", "CAP_PERFMON"]);
        assert!(text.contains("lacks CAP_BPF, CAP_PERFMON"), "{text}");
        assert!(text.ends_with(SETCAP), "the hint ends the line: {text}");
        assert!(!denied(&[]).contains("setcap"));
    }
}
