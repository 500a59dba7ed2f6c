//! Loads nodeprof's eBPF programs into the kernel, tells them which processes
//! to watch, attaches the sampler to one `cpu-clock` perf event per CPU, and
//! the call tracer's uprobes to functions of one process.
//!
//! Every attachment is a file descriptor of this process: however nodeprof
//! ends, even by SIGKILL, the kernel closes them and detaches the programs.

pub mod cfi;
pub mod features;
mod rows;

use std::collections::HashSet;
use std::os::fd::AsFd;

use aya::maps::Array;

use crate::caps;
use crate::host;
use aya::maps::{HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::perf_event::{
    PerfEvent, PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent,
};
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope};
use aya::programs::{Iter, TracePoint, UProbe};
use aya::Ebpf;
use nodeprof_common::UnwindTable;
use nodeprof_common::{
    CallReads, OffCpu, SwitchConfig, TaskRecord, V8ProbeConfig, CALLS_LOST_MAP, CALLS_MAP,
    CALL_ENTRY_PROGRAM, CALL_READS_MAP, CALL_RETURN_PROGRAM, LOOP_ENTER_PROGRAM, LOOP_EXIT_PROGRAM,
    LOST_MAP, OFF_CPU_MAP, SAMPLER_PROGRAM, SAMPLES_MAP, SWITCH_CONFIG_MAP, SWITCH_PROGRAM,
    TARGETS_MAP, TASKS_ITER_TARGET, TASKS_PROGRAM, THREAD_EVENTS_LOST_MAP, THREAD_EVENTS_MAP,
    UNWIND_EXECS_MAP, UNWIND_EXEC_PROGRAM, UNWIND_ROWS_MAP, UNWIND_TABLES_MAP, V8_CONFIGS_MAP,
};

/// The eBPF object built from `probe-ebpf` by build.rs.
static PROBE_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The words `nodeprof doctor` uses too ([`caps::denied`]).
    #[error("{}", caps::denied(.lacking))]
    NotPermitted { lacking: Vec<&'static str> },
    /// eBPF sees the host's pids; see [`host::container_pid_namespace`].
    #[error("{0}")]
    PidNamespace(String),
    #[error("this kernel has no usable BPF support ({0}); nodeprof needs Linux 5.8+ with CONFIG_BPF_SYSCALL")]
    NoKernelSupport(String),
    #[error("cannot {action}: {detail}")]
    Kernel {
        action: &'static str,
        detail: String,
    },
}

impl ProbeError {
    /// Sorts a failure into the cases a user can act on.
    fn classify(action: &'static str, error: &(dyn std::error::Error + 'static)) -> ProbeError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                match io.raw_os_error() {
                    Some(libc::EPERM) | Some(libc::EACCES) => {
                        return ProbeError::NotPermitted {
                            lacking: caps::lacking(EVERYTHING),
                        }
                    }
                    Some(libc::ENOSYS) => return ProbeError::NoKernelSupport(io.to_string()),
                    _ => {}
                }
            }
            source = e.source();
        }
        // aya's messages carry the verifier log: keep the first line for the user.
        let detail = error.to_string();
        let detail = detail.lines().next().unwrap_or("").to_string();
        ProbeError::Kernel { action, detail }
    }
}

/// Checks up front that this process holds `needed` (see [`crate::caps`])
/// and sees the host's processes, so the user gets one clear line instead
/// of a kernel error or an empty profile. `nodeprof doctor` says the same.
pub fn check_permissions(needed: &[u32]) -> Result<(), ProbeError> {
    check_capabilities(needed)?;
    match host::container_pid_namespace() {
        Some(why) => Err(ProbeError::PidNamespace(why)),
        None => Ok(()),
    }
}

fn check_capabilities(needed: &[u32]) -> Result<(), ProbeError> {
    let lacking = caps::lacking(needed);
    if lacking.is_empty() {
        Ok(())
    } else {
        Err(ProbeError::NotPermitted { lacking })
    }
}

/// What sampling needs: loading programs, perf events of every process,
/// reading the target.
pub const SAMPLING: &[u32] = &[caps::CAP_BPF, caps::CAP_PERFMON, caps::CAP_SYS_PTRACE];
/// What uprobes need besides.
pub const UPROBES: &[u32] = &[
    caps::CAP_BPF,
    caps::CAP_PERFMON,
    caps::CAP_SYS_PTRACE,
    caps::CAP_SYS_ADMIN,
];
/// What tracepoints need besides sampling (tracefs is mode 0700).
pub const TRACEPOINTS: &[u32] = &[
    caps::CAP_BPF,
    caps::CAP_PERFMON,
    caps::CAP_SYS_PTRACE,
    caps::CAP_DAC_READ_SEARCH,
];
/// Every capability of the eBPF commands: what a refusal may be missing.
pub const EVERYTHING: &[u32] = &[
    caps::CAP_BPF,
    caps::CAP_PERFMON,
    caps::CAP_SYS_PTRACE,
    caps::CAP_SYS_ADMIN,
    caps::CAP_DAC_READ_SEARCH,
];

/// The loaded programs and their maps.
pub struct Probe {
    ebpf: Ebpf,
    targets: HashMap<MapData, u32, u32>,
    v8_configs: HashMap<MapData, u32, V8ProbeConfig>,
    lost: PerCpuArray<MapData, u64>,
    samples: Option<RingBuf<MapData>>,
    calls_lost: PerCpuArray<MapData, u64>,
    calls: Option<RingBuf<MapData>>,
    call_reads: HashMap<MapData, u64, CallReads>,
    /// Attached uprobes: (process, program name, link).
    call_links: Vec<(u32, &'static str, aya::programs::uprobe::UProbeLinkId)>,
    thread_events: Option<RingBuf<MapData>>,
    /// The sampler's perf-event attachments, one per CPU.
    sampler_links: Vec<aya::programs::perf_event::PerfEventLinkId>,
    /// The kernel's BTF, kept for the task iterator of a snapshot.
    btf: Option<aya::Btf>,
    unwind_rows: rows::RowsMap,
    unwind_tables: HashMap<MapData, u32, UnwindTable>,
    unwind: cfi::UnwindTables,
    /// Execs of each target seen by the guard (`sched_process_exec`).
    unwind_execs: HashMap<MapData, u32, u64>,
    /// Targets given a table, which only the guard removes behind our back.
    unwind_published: HashSet<u32>,
    /// Whether the guard that drops a table at an exec is attached.
    unwind_guarded: bool,
}

/// A function of the target to trace, by file offset in its ELF binary, at
/// entry (arguments) or at return (return value). The cookie comes back in
/// every [`nodeprof_common::CallEvent`] of this site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallSite {
    pub file_offset: u64,
    pub at_return: bool,
    pub cookie: u64,
    /// Fields of the first argument's object to copy at entry.
    pub reads: Option<CallReads>,
}

/// What a probe is loaded for, which sizes its maps: the ring buffers, and
/// the unwind rows (2 MiB), which only a recording of CPU samples fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Sampling stacks with unwind rows (`record`, and `watch`'s CPU
    /// profiles, which load a probe of their own): every map as the eBPF
    /// object declares it.
    Recording,
    /// Tracing without stack samples (`gc`, `watch`'s monitor of event
    /// loops and GC): rings as declared, one unwind row.
    Tracing,
    /// One page each but the samples' 512 KiB (about 59 records), one unwind
    /// row: for a snapshot of a few milliseconds (`dump`, which samples
    /// without rows; `doctor`), where allocating and mapping 10 MB of
    /// rings would be most of the cost.
    Snapshot,
}

/// Bytes of the samples' ring for sampling every CPU at `frequency_hz`: a
/// quarter of a second of full records (user space drains every 50 ms), a
/// power of two from the size the eBPF object declares up to 64 MiB.
/// (`--off-cpu` adds a record per context switch, which this does not count.)
fn samples_ring_bytes(cpus: usize, frequency_hz: u64) -> u32 {
    // Each record is 8.6 KiB, behind the ring's 8-byte header.
    let record = std::mem::size_of::<nodeprof_common::SampleRecord>() as u64 + 8;
    let quarter_second = cpus as u64 * frequency_hz * record / 4;
    quarter_second
        .next_power_of_two()
        .clamp(u64::from(nodeprof_common::SAMPLES_RING_BYTES), 64 << 20) as u32
}

impl Probe {
    /// A probe for sampling stacks with unwind rows at `frequency_hz` on
    /// every CPU (which sizes the samples' ring).
    pub fn load(frequency_hz: u64) -> Result<Probe, ProbeError> {
        let cpus = aya::util::online_cpus().map_or(1, |cpus| cpus.len());
        let bytes = samples_ring_bytes(cpus, frequency_hz);
        tracing::debug!("samples ring: {} MiB", bytes >> 20);
        Probe::load_sized(Purpose::Recording, Some(bytes))
    }

    pub fn load_with(purpose: Purpose) -> Result<Probe, ProbeError> {
        Probe::load_sized(purpose, None)
    }

    fn load_sized(purpose: Purpose, samples_bytes: Option<u32>) -> Result<Probe, ProbeError> {
        check_capabilities(&[caps::CAP_BPF, caps::CAP_PERFMON])?;
        if !std::path::Path::new("/sys/fs/bpf").exists()
            && !std::path::Path::new("/sys/kernel/btf/vmlinux").exists()
        {
            return Err(ProbeError::NoKernelSupport(
                "no /sys/fs/bpf and no /sys/kernel/btf/vmlinux".into(),
            ));
        }
        // The kernel's BTF (a few MB, 60 ms to parse here) serves only CO-RE
        // relocations, which our programs have none of, and the task
        // iterator: parsed here for a snapshot, which uses the iterator at
        // once, and on demand otherwise ([`Probe::load_task_iterator`]).
        // (Left to aya, the loader would parse it every time.)
        let btf = match purpose {
            Purpose::Snapshot => aya::Btf::from_sys_fs().ok(),
            Purpose::Recording | Purpose::Tracing => None,
        };
        let mut loader = aya::EbpfLoader::new();
        loader.btf(btf.as_ref());
        if let Some(bytes) = samples_bytes {
            loader.map_max_entries(SAMPLES_MAP, bytes);
        }
        if purpose == Purpose::Snapshot {
            let page = 4096;
            loader
                .map_max_entries(SAMPLES_MAP, 512 << 10)
                .map_max_entries(CALLS_MAP, page)
                .map_max_entries(THREAD_EVENTS_MAP, page);
        }
        if purpose != Purpose::Recording {
            // No unwind tables are built (see `stacks::sample` for dump's
            // samples): one row, as a map cannot have none.
            loader
                .map_max_entries(UNWIND_ROWS_MAP, 1)
                .map_max_entries(UNWIND_EXECS_MAP, 1);
        }
        let mut ebpf = match loader.load(PROBE_OBJECT) {
            // A memory limit (the memory cgroup's ENOMEM, kernels 5.11+)
            // that refuses any map once a larger samples ring is in (maps
            // are created in no fixed order): the declared ring will do.
            // Any other failure is reported as it is.
            Err(aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error }))
                if samples_bytes > Some(nodeprof_common::SAMPLES_RING_BYTES)
                    && io_error.raw_os_error() == Some(libc::ENOMEM) =>
            {
                tracing::debug!("map {name} refused ({io_error}): the declared samples ring");
                loader
                    .map_max_entries(SAMPLES_MAP, nodeprof_common::SAMPLES_RING_BYTES)
                    .load(PROBE_OBJECT)
            }
            loaded => loaded,
        }
        .map_err(|e| ProbeError::classify("load the eBPF programs", &e))?;
        let targets = take_map(&mut ebpf, TARGETS_MAP)?;
        let v8_configs = take_map(&mut ebpf, V8_CONFIGS_MAP)?;
        let lost = take_map(&mut ebpf, LOST_MAP)?;
        let samples = take_map(&mut ebpf, SAMPLES_MAP)?;
        let calls_lost = take_map(&mut ebpf, CALLS_LOST_MAP)?;
        let calls = take_map(&mut ebpf, CALLS_MAP)?;
        let call_reads = take_map(&mut ebpf, CALL_READS_MAP)?;
        let thread_events = take_map(&mut ebpf, THREAD_EVENTS_MAP)?;
        let unwind_rows = rows::RowsMap::new(take_any_map(&mut ebpf, UNWIND_ROWS_MAP)?)?;
        let unwind_tables = take_map(&mut ebpf, UNWIND_TABLES_MAP)?;
        let unwind_execs = take_map(&mut ebpf, UNWIND_EXECS_MAP)?;
        Ok(Probe {
            unwind: cfi::UnwindTables::new(unwind_rows.len()),
            unwind_rows,
            unwind_tables,
            unwind_execs,
            unwind_published: HashSet::new(),
            unwind_guarded: false,
            thread_events: Some(thread_events),
            ebpf,
            targets,
            v8_configs,
            lost,
            samples: Some(samples),
            calls_lost,
            calls: Some(calls),
            call_reads,
            call_links: Vec::new(),
            sampler_links: Vec::new(),
            btf,
        })
    }

    /// Samples of this process (all of its threads) will be recorded.
    pub fn add_target(&mut self, tgid: u32) -> Result<(), ProbeError> {
        self.targets
            .insert(tgid, 0, 0)
            .map_err(|e| ProbeError::classify("register the target", &e))
    }

    /// Gives the sampler the `.eh_frame` rows of this process's shared
    /// libraries (see [`cfi`]), read from its mappings now: call it once the
    /// process runs the program to profile (after its exec), and again when
    /// it execs or maps new code. Returns the paths of the covered objects.
    pub fn load_unwind_tables(&mut self, tgid: u32) -> Result<Vec<String>, ProbeError> {
        if !self.unwind_guarded {
            // Without it a stale table lives until user space sees the
            // change: worth a note in the log, not an end to the capture.
            if let Err(e) = self.guard_unwind_tables() {
                tracing::debug!("unwind tables are not dropped by the kernel: {e}");
            }
            self.unwind_guarded = true;
        }
        // Logged here, whatever asked for this build (tests look for it).
        if self.unwind_table_dropped(tgid) {
            tracing::debug!("unwind table of {tgid} dropped at an exec");
        }
        self.unwind_published.remove(&tgid);
        let built = self.build_unwind_table(tgid);
        if built.is_err() {
            // The old table describes mappings the check above may no longer
            // see: no table is better than a stale one.
            let _ = self.unwind_tables.remove(&tgid);
        }
        built
    }

    /// [`Probe::load_unwind_tables`]'s build: the paths its table covers,
    /// none when it has no table.
    fn build_unwind_table(&mut self, tgid: u32) -> Result<Vec<String>, ProbeError> {
        let execs = self.exec_count(tgid);
        let plan = self.unwind.plan(tgid).map_err(|e| ProbeError::Kernel {
            action: "read the target's mappings",
            detail: e.to_string(),
        })?;
        // Every row first, then the table in one update: the kernel reuses a
        // replaced hash-map element for the next update, while a sampler on
        // another CPU may still be reading it.
        self.store_unwind_rows(&plan)?;
        if plan.objects.is_empty() {
            let _ = self.unwind_tables.remove(&tgid);
            return Ok(Vec::new());
        }
        self.unwind_tables
            .insert(tgid, plan.table(plan.objects.len()), 0)
            .map_err(|e| ProbeError::classify("register the unwind table", &e))?;
        self.unwind_published.insert(tgid);
        // An exec between reading the mappings and the insert: the table is
        // the old program's, and the guard has already run. It goes now,
        // and `unwind_table_dropped` has the next one built.
        let now = self.exec_count(tgid);
        if now.is_none() || now != execs {
            tracing::debug!("unwind table of {tgid} built across an exec: removed");
            let _ = self.unwind_tables.remove(&tgid);
            return Ok(Vec::new());
        }
        Ok(plan.covered)
    }

    /// How many execs of `tgid` the guard counted; None when the count
    /// cannot be read (then a table is not trusted).
    fn exec_count(&self, tgid: u32) -> Option<u64> {
        match self.unwind_execs.get(&tgid, 0) {
            Ok(count) => Some(count),
            Err(aya::maps::MapError::KeyNotFound) => Some(0),
            Err(e) => {
                tracing::debug!("exec count of {tgid} unreadable: {e}");
                None
            }
        }
    }

    /// Attaches the program that drops a target's unwind table in the
    /// kernel at its exec, before the new program runs: until user space
    /// builds the next one, stacks are walked as without. (An unmap has no
    /// tracepoint but the system call's, which would slow every system call
    /// of the machine: user space checks for it, see
    /// [`Probe::unwind_objects_unmapped`].)
    fn guard_unwind_tables(&mut self) -> Result<(), ProbeError> {
        let program: &mut TracePoint = program_mut(&mut self.ebpf, UNWIND_EXEC_PROGRAM)?;
        program
            .load()
            .map_err(|e| ProbeError::classify("load the unwind-table guard", &e))?;
        program
            .attach("sched", "sched_process_exec")
            .map_err(|e| ProbeError::classify("attach the unwind-table guard", &e))?;
        Ok(())
    }

    /// Whether the kernel dropped `tgid`'s unwind table (see
    /// [`Probe::guard_unwind_tables`]) since user space built it.
    pub fn unwind_table_dropped(&self, tgid: u32) -> bool {
        self.unwind_published.contains(&tgid) && self.unwind_tables.get(&tgid, 0).is_err()
    }

    /// Whether an object `tgid`'s unwind table covers is no longer mapped
    /// where the table says (a `dlclose`): its range may hold other code
    /// next. Reads the target's mappings.
    pub fn unwind_objects_unmapped(&self, tgid: u32) -> bool {
        let unmapped = self.unwind.covered_unmapped(tgid);
        if unmapped {
            tracing::debug!("unwind table of {tgid} stale: a library it covers was unmapped");
        }
        unmapped
    }

    /// Stores the rows of the libraries `pid` maps now, without giving it a
    /// table: a launched child, before its exec, maps nodeprof's own libc,
    /// most likely the very file node will map, so that table is ready at once.
    pub fn prepare_unwind_rows(&mut self, pid: u32) {
        let Ok(plan) = self.unwind.plan(pid) else {
            return;
        };
        self.unwind.forget(pid);
        if let Err(e) = self.store_unwind_rows(&plan) {
            tracing::debug!("unwind rows not stored: {e}");
        }
    }

    /// Writes the rows of the plan's new files into `UNWIND_ROWS`.
    fn store_unwind_rows(&mut self, plan: &cfi::Plan) -> Result<(), ProbeError> {
        let started = std::time::Instant::now();
        let mut count = 0;
        for (_, write) in &plan.objects {
            let Some((first, rows)) = write else { continue };
            self.unwind_rows.write(*first, rows)?;
            count += rows.len();
        }
        if count > 0 {
            tracing::debug!("unwind rows: {count} stored in {:?}", started.elapsed());
        }
        Ok(())
    }

    /// Whether `pc` of `tgid` lies in code mapped after its unwind table
    /// was built (a `dlopen`, ld.so's work after an exec).
    pub fn unwind_misses(&self, tgid: u32, pc: u64) -> bool {
        self.unwind.is_new_code(tgid, pc)
    }

    /// Tells the sampler how to recognise JS frames of this process.
    pub fn set_v8_config(&mut self, tgid: u32, config: V8ProbeConfig) -> Result<(), ProbeError> {
        self.v8_configs
            .insert(tgid, config, 0)
            .map_err(|e| ProbeError::classify("register the V8 layout", &e))
    }

    /// Attaches the sampler to a `cpu-clock` event on every online CPU at `frequency_hz`.
    /// The hardware PMU is not needed: the software clock works everywhere, VMs included.
    pub fn start_sampling(&mut self, frequency_hz: u64) -> Result<(), ProbeError> {
        self.load_sampler()?;
        let program: &mut PerfEvent = program_mut(&mut self.ebpf, SAMPLER_PROGRAM)?;
        let cpus = aya::util::online_cpus()
            .map_err(|(_, e)| ProbeError::classify("list online CPUs", &e))?;
        for cpu in cpus {
            let link = program
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(frequency_hz),
                    false,
                )
                .map_err(|e| ProbeError::classify("attach the sampler to a perf event", &e))?;
            self.sampler_links.push(link);
        }
        Ok(())
    }

    /// Loads the sampler into the kernel (the verifier's part, most of the
    /// cost of starting to sample) if it is not loaded yet.
    pub fn load_sampler(&mut self) -> Result<(), ProbeError> {
        let program: &mut PerfEvent = program_mut(&mut self.ebpf, SAMPLER_PROGRAM)?;
        if program.fd().is_err() {
            program.load().map_err(|e| {
                tracing::debug!("sampler refused: {e:?}");
                ProbeError::classify("load the sampler", &e)
            })?;
            // The verifier's work is most of the start-up: worth watching.
            if let Some(count) = program
                .info()
                .ok()
                .and_then(|info| info.verified_instruction_count())
            {
                tracing::debug!("sampler: {count} instructions processed by the verifier");
            }
        }
        Ok(())
    }

    /// Detaches the sampler from every CPU (samples already written stay
    /// in the ring buffer).
    pub fn stop_sampling(&mut self) {
        if let Ok(program) = program_mut::<PerfEvent>(&mut self.ebpf, SAMPLER_PROGRAM) {
            for link in self.sampler_links.drain(..) {
                let _ = program.detach(link);
            }
        }
    }

    /// Traces calls of one function of process `pid`, which runs `binary`
    /// (`/proc/PID/exe` works in any mount namespace: the kernel resolves it to
    /// the file's inode). The kernel fires the probe for this process only.
    pub fn attach_call(
        &mut self,
        pid: u32,
        binary: &std::path::Path,
        site: CallSite,
    ) -> Result<(), ProbeError> {
        let name = if site.at_return {
            CALL_RETURN_PROGRAM
        } else {
            CALL_ENTRY_PROGRAM
        };
        let program: &mut UProbe = program_mut(&mut self.ebpf, name)?;
        if program.fd().is_err() {
            program
                .load()
                .map_err(|e| ProbeError::classify("load the call tracer", &e))?;
            tracing::debug!("call tracer {name} verified");
        }
        let scope =
            UProbeScope::OneProcess(std::num::NonZeroU32::new(pid).ok_or(ProbeError::Kernel {
                action: "attach a uprobe",
                detail: "pid 0".into(),
            })?);
        if let Some(reads) = site.reads {
            self.call_reads
                .insert(site.cookie, reads, 0)
                .map_err(|e| ProbeError::classify("configure a uprobe", &e))?;
        }
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(site.file_offset),
            cookie: Some(site.cookie),
        };
        let link = program
            .attach(point, binary, scope)
            .map_err(|e| ProbeError::classify("attach a uprobe", &e))?;
        self.call_links.push((pid, name, link));
        Ok(())
    }

    /// Attaches `sched_switch`: every target thread's stack when it leaves
    /// the CPU, and when it comes back, as [`nodeprof_common::ThreadEvent`]s.
    pub fn start_off_cpu(&mut self) -> Result<(), ProbeError> {
        let tracefs = tracefs()?;
        let format = std::fs::read_to_string(tracefs.join("events/sched/sched_switch/format"))
            .map_err(|e| ProbeError::classify("read the sched_switch tracepoint's format", &e))?;
        let config = switch_config(&format).ok_or_else(|| ProbeError::Kernel {
            action: "trace context switches",
            detail: "sched_switch has no prev_state or next_pid field".into(),
        })?;
        let mut configs: Array<_, SwitchConfig> =
            Array::try_from(self.ebpf.map_mut(SWITCH_CONFIG_MAP).ok_or_else(|| {
                ProbeError::Kernel {
                    action: "open the eBPF maps",
                    detail: format!("map {SWITCH_CONFIG_MAP} missing"),
                }
            })?)
            .map_err(|e| ProbeError::classify("open the eBPF maps", &e))?;
        configs
            .set(0, config, 0)
            .map_err(|e| ProbeError::classify("configure the context-switch tracer", &e))?;
        let program: &mut TracePoint = program_mut(&mut self.ebpf, SWITCH_PROGRAM)?;
        program
            .load()
            .map_err(|e| ProbeError::classify("load the context-switch tracer", &e))?;
        program
            .attach("sched", "sched_switch")
            .map_err(|e| ProbeError::classify("attach to sched_switch", &e))?;
        Ok(())
    }

    /// Attaches to the entry and exit of `epoll_wait` (and its `pwait`
    /// variants): the turns of every event loop of the targets.
    pub fn start_loop_tracing(&mut self) -> Result<(), ProbeError> {
        let tracefs = tracefs()?;
        for (name, prefix) in [
            (LOOP_ENTER_PROGRAM, "sys_enter_"),
            (LOOP_EXIT_PROGRAM, "sys_exit_"),
        ] {
            let program: &mut TracePoint = program_mut(&mut self.ebpf, name)?;
            program
                .load()
                .map_err(|e| ProbeError::classify("load the event-loop tracer", &e))?;
            let mut attached = 0;
            for call in ["epoll_wait", "epoll_pwait", "epoll_pwait2"] {
                let event = format!("{prefix}{call}");
                // epoll_pwait2 is Linux 5.11+: trace what this kernel has.
                if !tracefs.join("events/syscalls").join(&event).exists() {
                    continue;
                }
                program
                    .attach("syscalls", &event)
                    .map_err(|e| ProbeError::classify("attach to epoll_wait", &e))?;
                attached += 1;
            }
            if attached == 0 {
                return Err(ProbeError::Kernel {
                    action: "trace event loops",
                    detail: "this kernel has no syscalls:sys_enter_epoll_wait tracepoint (CONFIG_FTRACE_SYSCALLS)".into(),
                });
            }
        }
        Ok(())
    }

    /// When thread `tid` of a target left the CPU, while it is still off
    /// it (`sched_switch` tracing only).
    pub fn off_cpu_since(&self, tid: u32) -> Option<u64> {
        let map = self.ebpf.map(OFF_CPU_MAP)?;
        let off: HashMap<&MapData, u32, OffCpu> = HashMap::try_from(map).ok()?;
        off.get(&tid, 0).ok().map(|o| o.start_ns)
    }

    /// Marks thread `tid` of `tgid` off CPU since `start_ns` (it was before
    /// tracing began), so that its return is reported like any other; false
    /// when it has an entry already (it switched out since).
    pub fn open_off_cpu(&mut self, tid: u32, tgid: u32, start_ns: u64) -> bool {
        let Some(map) = self.ebpf.map_mut(OFF_CPU_MAP) else {
            return false;
        };
        let Ok(mut off) = HashMap::<&mut MapData, u32, OffCpu>::try_from(map) else {
            return false;
        };
        let entry = OffCpu {
            start_ns,
            tgid,
            _pad: 0,
        };
        // BPF_NOEXIST: never over an entry the kernel just made.
        off.insert(tid, entry, 1).is_ok()
    }

    /// Thread events dropped in the kernel because their ring buffer was full.
    pub fn lost_thread_events(&self) -> u64 {
        self.ebpf
            .map(THREAD_EVENTS_LOST_MAP)
            .and_then(|map| PerCpuArray::<&MapData, u64>::try_from(map).ok())
            .and_then(|lost| lost.get(&0, 0).ok())
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    /// The ring buffer of switch-ins and event-loop events (taken once).
    pub fn take_thread_events(&mut self) -> Option<RingBuf<MapData>> {
        self.thread_events.take()
    }

    /// Removes every uprobe attached by [`Probe::attach_call`].
    pub fn detach_calls(&mut self) {
        for (_, name, link) in self.call_links.drain(..) {
            if let Ok(program) = program_mut::<UProbe>(&mut self.ebpf, name) {
                let _ = program.detach(link);
            }
        }
    }

    /// Removes the uprobes attached to process `pid` (gone, or no longer watched).
    pub fn detach_calls_of(&mut self, pid: u32) {
        let (of_pid, others) = std::mem::take(&mut self.call_links)
            .into_iter()
            .partition(|(p, _, _)| *p == pid);
        self.call_links = others;
        for (_, name, link) in of_pid {
            if let Ok(program) = program_mut::<UProbe>(&mut self.ebpf, name) {
                let _ = program.detach(link);
            }
        }
    }

    /// Samples and loop events of this process are no longer wanted.
    pub fn remove_target(&mut self, tgid: u32) {
        let _ = self.targets.remove(&tgid);
        let _ = self.v8_configs.remove(&tgid);
        let _ = self.unwind_tables.remove(&tgid);
        let _ = self.unwind_execs.remove(&tgid);
        self.unwind_published.remove(&tgid);
        self.unwind.forget(tgid);
    }

    /// The ring buffer the call tracer writes into (taken once).
    pub fn take_calls(&mut self) -> Option<RingBuf<MapData>> {
        self.calls.take()
    }

    /// Call events dropped in the kernel because their ring buffer was full.
    pub fn lost_calls(&self) -> u64 {
        sum_per_cpu(&self.calls_lost)
    }

    /// The ring buffer the sampler writes into (taken once, by the collector).
    pub fn take_samples(&mut self) -> Option<RingBuf<MapData>> {
        self.samples.take()
    }

    /// Samples dropped in the kernel because the ring buffer was full.
    pub fn lost_samples(&self) -> u64 {
        sum_per_cpu(&self.lost)
    }
}

impl Probe {
    /// Loads the task iterator (kernel 5.8+ with BTF; the per-thread filter
    /// [`Probe::read_task`] uses needs 6.1+).
    pub fn load_task_iterator(&mut self) -> Result<(), ProbeError> {
        if self.btf.is_none() {
            self.btf = Some(
                aya::Btf::from_sys_fs()
                    .map_err(|e| ProbeError::classify("read the kernel's BTF", &e))?,
            );
        }
        let btf = self.btf.as_ref().expect("set above");
        let program: &mut Iter = program_mut(&mut self.ebpf, TASKS_PROGRAM)?;
        program
            .load(TASKS_ITER_TARGET, btf)
            .map_err(|e| ProbeError::classify("load the task iterator", &e))
    }

    /// The saved user registers and kernel stack of thread `tid` (a tid in
    /// nodeprof's pid namespace), or None when no such thread exists.
    pub fn read_task(&mut self, tid: u32) -> Result<Option<TaskRecord>, ProbeError> {
        let program: &mut Iter = program_mut(&mut self.ebpf, TASKS_PROGRAM)?;
        let prog_fd = program
            .fd()
            .map_err(|e| ProbeError::classify("use the task iterator", &e))?;
        let link = task_iter::link_one_thread(prog_fd.as_fd(), tid)
            .map_err(|e| ProbeError::classify("attach the task iterator", &e))?;
        let bytes = task_iter::read_all(&link)
            .map_err(|e| ProbeError::classify("run the task iterator", &e))?;
        Ok(bytes
            .chunks_exact(size_of::<TaskRecord>())
            .next()
            // SAFETY: exactly one record's bytes; TaskRecord is plain old data.
            .map(|b| unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<TaskRecord>()) }))
    }
}

/// The iterator link of one thread, made with the bpf syscall directly:
/// aya 0.14's `Iter::attach` passes no `bpf_iter_link_info`, so its
/// iterator visits every task of the system.
mod task_iter {
    use std::io::Read;
    use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_ITER_CREATE: libc::c_long = 33;
    /// `enum bpf_attach_type`: BPF_TRACE_ITER.
    const BPF_TRACE_ITER: u32 = 28;

    /// `union bpf_iter_link_info`, task member: tid, pid, pid_fd (16 bytes
    /// with the union's largest member).
    #[repr(C)]
    struct IterLinkInfo {
        tid: u32,
        pid: u32,
        pid_fd: u32,
        _pad: u32,
    }

    /// `union bpf_attr` as BPF_LINK_CREATE reads it for an iterator.
    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
        iter_info: u64,
        iter_info_len: u32,
        _rest: [u32; 9],
    }

    fn bpf(cmd: libc::c_long, attr: *mut libc::c_void, size: usize) -> std::io::Result<OwnedFd> {
        // SAFETY: attr points to a live, zero-padded attribute of `size` bytes.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size as u32) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a new fd that we now own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// A link whose iteration visits thread `tid` only.
    pub fn link_one_thread(prog: BorrowedFd<'_>, tid: u32) -> std::io::Result<OwnedFd> {
        let mut info = IterLinkInfo {
            tid,
            pid: 0,
            pid_fd: 0,
            _pad: 0,
        };
        let mut attr = LinkCreate {
            prog_fd: prog.as_raw_fd() as u32,
            target_fd: 0,
            attach_type: BPF_TRACE_ITER,
            flags: 0,
            iter_info: &mut info as *mut IterLinkInfo as u64,
            iter_info_len: size_of::<IterLinkInfo>() as u32,
            _rest: [0; 9],
        };
        bpf(
            BPF_LINK_CREATE,
            (&mut attr as *mut LinkCreate).cast(),
            size_of::<LinkCreate>(),
        )
    }

    /// Runs the iterator once and returns everything it wrote.
    pub fn read_all(link: &OwnedFd) -> std::io::Result<Vec<u8>> {
        let mut attr = [link.as_raw_fd() as u32, 0u32];
        let fd = bpf(
            BPF_ITER_CREATE,
            attr.as_mut_ptr().cast(),
            size_of_val(&attr),
        )?;
        let mut bytes = Vec::new();
        std::fs::File::from(fd).read_to_end(&mut bytes)?;
        Ok(bytes)
    }
}

/// Where tracefs is mounted; mounts it at its usual place when it is not
/// (some hosts mount neither tracefs nor debugfs by default).
fn tracefs() -> Result<std::path::PathBuf, ProbeError> {
    let usual = std::path::Path::new("/sys/kernel/tracing");
    for dir in [usual, std::path::Path::new("/sys/kernel/debug/tracing")] {
        if dir.join("events").is_dir() {
            return Ok(dir.to_path_buf());
        }
    }
    // Mounted, but its directory (mode 0700) is closed to us.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("tracefs"))
    {
        return Err(ProbeError::NotPermitted {
            lacking: caps::lacking(TRACEPOINTS),
        });
    }
    let source = std::ffi::CString::new("nodev").expect("no NUL");
    let target = std::ffi::CString::new("/sys/kernel/tracing").expect("no NUL");
    let fstype = std::ffi::CString::new("tracefs").expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no mount data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 || !usual.join("events").is_dir() {
        return Err(ProbeError::classify(
            "mount tracefs at /sys/kernel/tracing",
            &std::io::Error::last_os_error(),
        ));
    }
    tracing::debug!("mounted tracefs at /sys/kernel/tracing");
    Ok(usual.to_path_buf())
}

/// The offsets of `prev_state` and `next_pid` in a `sched_switch` record,
/// from the tracepoint's `format` file.
fn switch_config(format: &str) -> Option<SwitchConfig> {
    let offset = |field: &str| -> Option<u32> {
        format.lines().find_map(|line| {
            let (decl, rest) = line.trim().strip_prefix("field:")?.split_once(';')?;
            if decl.split_whitespace().last()? != field {
                return None;
            }
            rest.trim()
                .strip_prefix("offset:")?
                .split(';')
                .next()?
                .parse()
                .ok()
        })
    };
    Some(SwitchConfig {
        prev_state_offset: offset("prev_state")?,
        next_pid_offset: offset("next_pid")?,
    })
}

fn sum_per_cpu(counter: &PerCpuArray<MapData, u64>) -> u64 {
    counter
        .get(&0, 0)
        .map(|per_cpu| per_cpu.iter().sum())
        .unwrap_or(0)
}

/// A program of the loaded object as its typed aya program.
fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or_else(|| ProbeError::Kernel {
        action: "find an eBPF program",
        detail: format!("program {name} missing"),
    })?;
    program
        .try_into()
        .map_err(|e| ProbeError::classify("find an eBPF program", &e))
}

/// Takes a map out of the loaded object as its typed aya map.
fn take_map<T>(ebpf: &mut Ebpf, name: &str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    T::try_from(take_any_map(ebpf, name)?)
        .map_err(|e| ProbeError::classify("open the eBPF maps", &e))
}

/// The map `name`, whatever its type.
fn take_any_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or_else(|| ProbeError::Kernel {
        action: "open the eBPF maps",
        detail: format!("map {name} missing"),
    })
}

/// Whether any nodeprof sampler is loaded in the kernel right now (tests use
/// this to prove nothing stays attached after nodeprof dies).
pub fn sampler_loaded() -> bool {
    program_loaded(SAMPLER_PROGRAM)
}

/// Whether any nodeprof call tracer (GC uprobes) is loaded in the kernel right now.
pub fn call_tracer_loaded() -> bool {
    program_loaded(CALL_ENTRY_PROGRAM) || program_loaded(CALL_RETURN_PROGRAM)
}

fn program_loaded(name: &str) -> bool {
    // The kernel truncates program names to 15 bytes.
    let short = &name[..name.len().min(15)];
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .any(|p| p.name_as_str().is_some_and(|n| n == short))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodeprof_common::{UnwindRow, MAX_UNWIND_ROWS};

    #[test]
    fn the_samples_ring_holds_a_quarter_second_of_every_cpu() {
        // 2 CPUs at 99 or 999 Hz: the declared 8 MiB (about 950 records).
        assert_eq!(samples_ring_bytes(2, 99), 8 << 20);
        assert_eq!(samples_ring_bytes(2, 999), 8 << 20);
        // 2 CPUs at 3999 Hz: 17.7 MB for a quarter second.
        assert_eq!(samples_ring_bytes(2, 3999), 32 << 20);
        // 64 CPUs at 999 Hz: capped.
        assert_eq!(samples_ring_bytes(64, 999), 64 << 20);
    }

    /// Rows written through the mapping are what the kernel's map holds at
    /// those indices (read back with `bpf(2)` lookups); a write past the
    /// end is refused. Needs root, as the integration tests.
    #[test]
    fn unwind_rows_written_through_the_mapping_are_in_the_map() {
        let mut probe = Probe::load(99).expect("the probe loads (as root)");
        assert_eq!(probe.unwind_rows.len(), MAX_UNWIND_ROWS);
        let rows: Vec<UnwindRow> = (0..1000u32)
            .map(|i| UnwindRow {
                pc: i * 3 + 1,
                cfa_offset: (i % 500) as u16 + 8,
                rbp_offset: -((i % 4) as i8),
                cfa: (i % 3) as u8,
            })
            .collect();
        probe.unwind_rows.write(5000, &rows).unwrap();
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(
                probe.unwind_rows.lookup(5000 + i as u32),
                Some(*row),
                "row {i}"
            );
        }
        assert_eq!(probe.unwind_rows.lookup(4999), Some(UnwindRow::default()));
        assert_eq!(probe.unwind_rows.lookup(6000), Some(UnwindRow::default()));
        assert!(probe
            .unwind_rows
            .write(MAX_UNWIND_ROWS - 1, &rows[..2])
            .is_err());
        probe
            .unwind_rows
            .write(MAX_UNWIND_ROWS - 1, &rows[..1])
            .unwrap();
        assert_eq!(probe.unwind_rows.lookup(MAX_UNWIND_ROWS - 1), Some(rows[0]));
    }

    /// Only a probe that samples with unwind rows gets the 2 MiB row map.
    #[test]
    fn only_recording_probes_get_the_full_row_map() {
        for (purpose, rows) in [
            (Purpose::Recording, MAX_UNWIND_ROWS),
            (Purpose::Tracing, 1),
            (Purpose::Snapshot, 1),
        ] {
            let probe = Probe::load_with(purpose).expect("the probe loads (as root)");
            assert_eq!(probe.unwind_rows.len(), rows, "{purpose:?}");
        }
    }

    #[test]
    fn reads_the_sched_switch_format() {
        let format = "name: sched_switch\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;\n\tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;\n";
        assert_eq!(
            switch_config(format),
            Some(SwitchConfig {
                prev_state_offset: 32,
                next_pid_offset: 56
            })
        );
        assert_eq!(switch_config("field:int x;\toffset:8;"), None);
    }

    #[test]
    fn classifies_permission_and_missing_syscall() {
        let eperm = std::io::Error::from_raw_os_error(libc::EPERM);
        assert!(matches!(
            ProbeError::classify("x", &eperm),
            ProbeError::NotPermitted { .. }
        ));
        let enosys = std::io::Error::from_raw_os_error(libc::ENOSYS);
        assert!(matches!(
            ProbeError::classify("x", &enosys),
            ProbeError::NoKernelSupport(_)
        ));
        let other = std::io::Error::from_raw_os_error(libc::EINVAL);
        assert!(matches!(
            ProbeError::classify("x", &other),
            ProbeError::Kernel { .. }
        ));
    }
}
