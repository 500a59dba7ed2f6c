//! Tries, one by one, each kernel feature nodeprof's commands use, the way
//! they use it: a map is created, a program loaded and attached, an event
//! opened — not guessed from the kernel's version. `nodeprof doctor` reports
//! the outcomes. Everything tried is closed again before this returns.

use std::os::fd::{FromRawFd, OwnedFd};

use serde::Serialize;

use super::{CallSite, Probe, ProbeError, Purpose};

/// A kernel feature, with the Linux version that brought it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    BpfSyscall,
    Btf,
    RingBuffer,
    PerfEvents,
    PerfEventPrograms,
    Uprobes,
    TaskIterator,
    TaskPtRegs,
    SchedSwitch,
    EpollTracepoints,
}

impl Feature {
    pub const ALL: [Feature; 10] = [
        Feature::BpfSyscall,
        Feature::Btf,
        Feature::RingBuffer,
        Feature::PerfEvents,
        Feature::PerfEventPrograms,
        Feature::Uprobes,
        Feature::TaskIterator,
        Feature::TaskPtRegs,
        Feature::SchedSwitch,
        Feature::EpollTracepoints,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Feature::BpfSyscall => "BPF syscall (a map created)",
            Feature::Btf => "BTF (/sys/kernel/btf/vmlinux parsed)",
            Feature::RingBuffer => "BPF ring buffer (a map created)",
            Feature::PerfEvents => "perf events (cpu-clock on every process of CPU 0 opened)",
            Feature::PerfEventPrograms => "BPF on perf events (the sampler loaded and attached)",
            Feature::Uprobes => "uprobes (one attached to nodeprof itself)",
            Feature::TaskIterator => "BPF task iterators (loaded)",
            Feature::TaskPtRegs => "bpf_task_pt_regs (this thread's registers read)",
            Feature::SchedSwitch => "tracepoint sched:sched_switch (attached)",
            Feature::EpollTracepoints => "tracepoints syscalls:*_epoll_wait (attached)",
        }
    }

    /// The first Linux release with what nodeprof uses of it.
    pub fn since(self) -> &'static str {
        match self {
            Feature::BpfSyscall => "4.4",
            Feature::Btf => "5.4",
            Feature::RingBuffer => "5.8",
            Feature::PerfEvents => "2.6.31",
            // The sampler reads the saved user registers (bpf_task_pt_regs).
            Feature::PerfEventPrograms => "5.15",
            // Probes carry a cookie (bpf_get_attach_cookie on perf links).
            Feature::Uprobes => "5.15",
            // One thread per iteration (bpf_iter_link_info's tid).
            Feature::TaskIterator => "6.1",
            Feature::TaskPtRegs => "5.15",
            Feature::SchedSwitch => "4.7",
            Feature::EpollTracepoints => "4.7",
        }
    }
}

/// How trying a feature went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    Works,
    /// The kernel refused this process: privileges (the sentence says which).
    Denied(String),
    /// The kernel lacks it, or it failed otherwise.
    Fails(String),
}

impl Outcome {
    pub fn works(&self) -> bool {
        matches!(self, Outcome::Works)
    }

    fn of(result: Result<(), ProbeError>) -> Outcome {
        match result {
            Ok(()) => Outcome::Works,
            Err(e @ ProbeError::NotPermitted { .. }) => Outcome::Denied(e.to_string()),
            Err(e) => Outcome::Fails(e.to_string()),
        }
    }

    fn of_errno(error: std::io::Error, without: &str) -> Outcome {
        match error.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => Outcome::Denied(
                ProbeError::NotPermitted {
                    lacking: crate::caps::lacking(super::EVERYTHING),
                }
                .to_string(),
            ),
            Some(libc::ENOSYS)
            | Some(libc::EINVAL)
            | Some(libc::ENOENT)
            | Some(libc::ENODEV)
            | Some(libc::EOPNOTSUPP) => Outcome::Fails(format!("{without} ({error})")),
            _ => Outcome::Fails(error.to_string()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub feature: Feature,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Tries every feature of [`Feature::ALL`], in that order.
pub fn try_all() -> Vec<Trial> {
    let mut trials = vec![
        (
            Feature::BpfSyscall,
            bpf_map(
                BPF_MAP_TYPE_ARRAY,
                4,
                4,
                1,
                "no BPF syscall (CONFIG_BPF_SYSCALL)",
            ),
        ),
        (
            Feature::Btf,
            match aya::Btf::from_sys_fs() {
                Ok(_) => Outcome::Works,
                Err(e) => Outcome::Fails(format!(
                    "no usable /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF): {e}"
                )),
            },
        ),
        (
            Feature::RingBuffer,
            bpf_map(
                BPF_MAP_TYPE_RINGBUF,
                0,
                0,
                4096,
                "no BPF ring buffer (Linux 5.8+)",
            ),
        ),
        (Feature::PerfEvents, cpu_clock_event()),
    ];
    let rest = &Feature::ALL[trials.len()..];
    match Probe::load_with(Purpose::Snapshot) {
        Ok(mut probe) => {
            for &feature in rest {
                let outcome = try_with(&mut probe, feature, &trials);
                trials.push((feature, outcome));
            }
        }
        Err(e) => {
            let outcome = Outcome::of(Err(e));
            trials.extend(rest.iter().map(|&f| (f, outcome.clone())));
        }
    }
    trials
        .into_iter()
        .map(|(feature, outcome)| Trial { feature, outcome })
        .collect()
}

fn try_with(probe: &mut Probe, feature: Feature, so_far: &[(Feature, Outcome)]) -> Outcome {
    match feature {
        Feature::PerfEventPrograms => {
            let result = probe.start_sampling(1);
            probe.stop_sampling();
            Outcome::of(result)
        }
        Feature::Uprobes => match entry_point_offset() {
            Ok(file_offset) => {
                let site = CallSite {
                    file_offset,
                    at_return: false,
                    cookie: 0,
                    reads: None,
                };
                let result = probe.attach_call(
                    std::process::id(),
                    std::path::Path::new("/proc/self/exe"),
                    site,
                );
                probe.detach_calls();
                Outcome::of(result)
            }
            Err(e) => Outcome::Fails(format!("cannot read nodeprof's own executable: {e}")),
        },
        Feature::TaskIterator => Outcome::of(probe.load_task_iterator()),
        Feature::TaskPtRegs => {
            let iterator = so_far.iter().find(|(f, _)| *f == Feature::TaskIterator);
            match iterator {
                Some((_, Outcome::Works)) => {}
                Some((_, other)) => return other.clone(),
                None => return Outcome::Fails("needs the task iterator".into()),
            }
            // SAFETY: gettid has no arguments and cannot fail.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
            match probe.read_task(tid) {
                // This thread is running the iterator: its saved user
                // registers are those of its system call.
                Ok(Some(task)) if task.sp != 0 && task.cs & 3 == 3 => Outcome::Works,
                Ok(Some(_)) => {
                    Outcome::Fails("the registers read back are not user registers".into())
                }
                Ok(None) => Outcome::Fails("the task iterator did not see this thread".into()),
                Err(e) => Outcome::of(Err(e)),
            }
        }
        Feature::SchedSwitch => Outcome::of(probe.start_off_cpu()),
        Feature::EpollTracepoints => Outcome::of(probe.start_loop_tracing()),
        Feature::BpfSyscall | Feature::Btf | Feature::RingBuffer | Feature::PerfEvents => {
            unreachable!("tried without the probe")
        }
    }
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_RINGBUF: u32 = 27;

/// Creates (and closes) one map with the bpf syscall directly: the
/// smallest thing that proves the syscall and the map type work.
fn bpf_map(kind: u32, key: u32, value: u32, entries: u32, without: &str) -> Outcome {
    // `union bpf_attr` for BPF_MAP_CREATE: map_type, key_size, value_size,
    // max_entries, then fields left zero.
    let mut attr = [0u32; 30];
    attr[..4].copy_from_slice(&[kind, key, value, entries]);
    // SAFETY: attr is a zeroed attribute of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_mut_ptr(),
            size_of_val(&attr) as u32,
        )
    };
    if fd < 0 {
        return Outcome::of_errno(std::io::Error::last_os_error(), without);
    }
    // SAFETY: a new fd we own; closed when dropped.
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Outcome::Works
}

/// Opens (and closes) the event the sampler attaches to: the software
/// `cpu-clock` of every process on one CPU, which needs CAP_PERFMON or
/// `kernel.perf_event_paranoid` ≤ 0.
fn cpu_clock_event() -> Outcome {
    const PERF_TYPE_SOFTWARE: u32 = 1;
    const PERF_COUNT_SW_CPU_CLOCK: u64 = 0;
    const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
    // `struct perf_event_attr`, version 0 (64 bytes): type, size, config, …
    let mut attr = [0u64; 8];
    attr[0] = PERF_TYPE_SOFTWARE as u64 | (64u64 << 32);
    attr[1] = PERF_COUNT_SW_CPU_CLOCK;
    let cpu = first_online_cpu();
    // SAFETY: attr is a zeroed perf_event_attr of the size it declares.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_mut_ptr(),
            -1 as libc::pid_t,
            cpu as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        let error = std::io::Error::last_os_error();
        if matches!(error.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) {
            let paranoid = crate::host::Host::read().perf_event_paranoid;
            let lacking = crate::caps::lacking(&[crate::caps::CAP_PERFMON]);
            let mut why = ProbeError::NotPermitted { lacking }.to_string();
            if let Some(level) = paranoid {
                why = format!("kernel.perf_event_paranoid is {level}, above 0: {why}");
            }
            return Outcome::Denied(why);
        }
        return Outcome::of_errno(error, "no perf events (CONFIG_PERF_EVENTS)");
    }
    // SAFETY: a new fd we own; closed when dropped.
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Outcome::Works
}

fn first_online_cpu() -> u32 {
    aya::util::online_cpus()
        .ok()
        .and_then(|cpus| cpus.into_iter().next())
        .unwrap_or(0)
}

/// The file offset of nodeprof's own entry point: an instruction every
/// build has, stripped or not, for a uprobe that never fires again.
fn entry_point_offset() -> std::io::Result<u64> {
    use object::{Object, ObjectSegment};
    let data = std::fs::read("/proc/self/exe")?;
    let elf = object::File::parse(&*data).map_err(std::io::Error::other)?;
    let entry = elf.entry();
    elf.segments()
        .find_map(|segment| {
            let (start, size) = (segment.address(), segment.size());
            let (offset, file_size) = segment.file_range();
            (entry >= start && entry < start + size && entry - start < file_size)
                .then(|| entry - start + offset)
        })
        .ok_or_else(|| std::io::Error::other("the entry point is in no loaded segment"))
}
