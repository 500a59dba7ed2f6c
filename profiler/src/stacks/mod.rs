//! Every thread's stack now, without stopping or signalling the process.
//!
//! - A thread that is not on a CPU entered the kernel and stays there: the
//!   task iterator (`probe::Probe::read_task`) gives the user registers it
//!   entered with and its kernel stack; [`unwind`] walks its user stack from
//!   them over `process_vm_readv` (it does not move while we read), and
//!   [`crate::v8::walk`] recognises JS frames as the sampler does.
//! - A running thread's saved registers are stale: the sampler catches it
//!   for a few milliseconds instead.
//!
//! Both become sampler-shaped records, so [`Symbolizer`] names every frame
//! exactly as `nodeprof record` does.
//!
//! A core file ([`from_core`]) is an [`Image`] too: its threads' registers
//! come from `NT_PRSTATUS` instead of the iterator, and its stacks are
//! walked and named by the same code.

pub mod report;
pub mod syscalls;
pub mod threads;
pub mod unwind;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodeprof_common::{SampleRecord, TaskRecord, UserFrame, MAX_KERNEL_FRAMES, MAX_USER_FRAMES};
use serde::Serialize;

use crate::collect::{Collection, Collector};
use crate::corefile::{CoreFile, CoreFileError};
use crate::eventloop::uv::{self, LoopClock};
use crate::image::{Image, ProcessImage, ThreadRegs};
use crate::probe::{self, Probe, ProbeError, Purpose};
use crate::profile::Frame;
use crate::symbolize::Symbolizer;
use crate::target::{discover, Discovery, Runtime, Target, TargetError, V8Runtime};
use crate::v8::memory::Memory;

pub use syscalls::Syscall;
pub use threads::{ThreadInfo, ThreadState};

#[derive(Debug, thiserror::Error)]
pub enum StacksError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Core(#[from] CoreFileError),
    #[error("cannot {action}: {source}")]
    Io {
        action: &'static str,
        source: std::io::Error,
    },
}

/// How long the sampler may watch running threads, and how many samples
/// of each are enough to stop early.
#[derive(Debug, Clone, Copy)]
pub struct SampleWindow {
    pub max: Duration,
    pub min: Duration,
    pub enough_samples: usize,
    pub frequency_hz: u64,
}

impl Default for SampleWindow {
    fn default() -> Self {
        SampleWindow {
            max: Duration::from_millis(200),
            min: Duration::from_millis(20),
            enough_samples: 5,
            frequency_hz: 999,
        }
    }
}

/// Where a thread's stack comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StackSource {
    /// Walked from the registers saved when it entered the kernel.
    Registers,
    /// Walked from the registers a core file holds.
    Core,
    /// The newest of `samples` samples taken while it ran (the newest whose
    /// walk went past its first frame, when one did).
    Sampled { samples: usize, window_ms: u64 },
    /// No stack: why.
    Unavailable { reason: String },
}

/// One thread, what it is doing, and its stack.
#[derive(Debug, Clone)]
pub struct ThreadStack {
    pub info: ThreadInfo,
    /// The system call it is blocked in.
    pub syscall: Option<Syscall>,
    pub source: StackSource,
    /// Innermost first.
    pub frames: Vec<Frame>,
    /// For a sampled thread: how many samples had each JS function innermost.
    pub sampled_js: Vec<(String, usize)>,
    /// The main thread: how long its event loop's current turn has run
    /// (at least; see [`crate::eventloop::uv`]).
    pub loop_turn: Option<Duration>,
}

/// Where the stacks were read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The live process, which kept running.
    Live,
    /// A core file of it.
    Core { path: String },
}

/// Every thread of a process at one moment.
pub struct Stacks {
    pub pid: u32,
    /// The executable, as the target saw it.
    pub exe: String,
    pub origin: Origin,
    pub threads: Vec<ThreadStack>,
    /// JS frames can be named (a V8 layout was found).
    pub js_naming: bool,
    /// Version of the V8 found, when it is Node.js.
    pub v8_version: Option<String>,
    /// From the first look at the process to the last stack taken.
    pub capture_time: Duration,
}

/// Checks that `pid` is a process nodeprof can dump (not a thread id, a
/// zombie or a kernel thread: `Target::inspect` names each) and that we may
/// load the probe and read its memory.
pub fn check_target(pid: u32) -> Result<Target, StacksError> {
    // Before reading /proc/PID/exe, which fails for others' processes with a less useful message.
    probe::check_permissions(probe::SAMPLING)?;
    // A thread id is named as such there.
    Ok(Target::inspect(pid)?)
}

/// Takes the stack of every thread of `pid`.
pub fn capture(pid: u32, window: SampleWindow) -> Result<Stacks, StacksError> {
    let target = check_target(pid)?;
    let started = Instant::now();
    // Reading the binaries (symbols, V8 layout, unwind tables) needs no
    // probe: it runs beside loading the probe and reading the registers.
    std::thread::scope(|scope| {
        let naming = scope.spawn(|| {
            let mut symbolizer = Symbolizer::new(&target);
            let discovery = Runtime::new(pid).poll();
            if let Some(found) = &discovery {
                symbolizer.use_executable(found);
            }
            symbolizer.refresh();
            tracing::debug!("V8 layout read after {:?}", started.elapsed());
            (symbolizer, discovery.and_then(|found| found.v8.ok()))
        });
        // Through /proc: the very file, even in another mount namespace.
        let clock = scope.spawn(|| LoopClock::find(Path::new(&format!("/proc/{pid}/exe"))));
        let unwinder = scope.spawn(|| {
            let unwinder = crate::image::executable_mappings(pid)
                .map(|maps| unwind::Unwinder::for_process(pid, &maps));
            tracing::debug!("unwind data read after {:?}", started.elapsed());
            unwinder
        });
        let mut probe = Probe::load_with(Purpose::Snapshot)?;
        tracing::debug!("probe loaded after {:?}", started.elapsed());
        probe.load_task_iterator()?;
        let listed = threads::list(pid).map_err(|source| StacksError::Io {
            action: "list the threads",
            source,
        })?;
        // Registers first, the blocked threads' state at one moment.
        let mut regs: HashMap<u32, ThreadRegs> = HashMap::new();
        for thread in &listed {
            if let Some(record) = probe.read_task(thread.tid)? {
                regs.insert(thread.tid, thread_regs(thread.tid, &record));
            }
        }
        let registers_ns = crate::clock::monotonic_ns();
        tracing::debug!("registers read after {:?}", started.elapsed());
        // Beside the registers: the turn may end while the rest is read.
        let loop_turn = clock
            .join()
            .expect("the loop clock thread does not panic")
            .and_then(|clock| {
                let bias = clock.load_bias(
                    || crate::image::executable_mappings(pid).unwrap_or_default(),
                    &target.exe,
                )?;
                let started_ms =
                    clock.turn_started_ms(&crate::v8::ProcessMemory::new(pid), bias)?;
                uv::turn_age(started_ms, registers_ns)
            });
        let running: Vec<u32> = listed
            .iter()
            .filter(|t| t.state == ThreadState::Running)
            .map(|t| t.tid)
            .collect();
        if !running.is_empty() {
            // While the naming thread still reads the binary.
            probe.load_sampler()?;
            tracing::debug!("sampler loaded after {:?}", started.elapsed());
        }
        let (symbolizer, v8) = naming.join().expect("the naming thread does not panic");
        let mut collection = Collection::default();
        let mut window_ms = 0;
        if !running.is_empty() {
            if let Some(v8) = &v8 {
                probe.set_v8_config(pid, v8.layout.probe_config())?;
            }
            window_ms = sample(&mut probe, pid, &running, window, &mut collection)?;
            tracing::debug!("sampled after {:?}", started.elapsed());
        }
        drop(probe);
        let unwinder = unwinder
            .join()
            .expect("the unwinder thread does not panic")
            .map_err(|source| StacksError::Io {
                action: "read the process's mappings",
                source,
            })?;
        Ok(assemble(
            Snapshot {
                image: Arc::new(ProcessImage::new(pid)),
                exe: target.exe.display().to_string(),
                origin: Origin::Live,
                listed,
                regs,
                symbolizer,
                v8,
                unwinder,
                collection,
                window_ms,
                loop_turn,
            },
            started,
        ))
    })
}

/// What [`capture`] gathered, before the stacks are walked and named.
struct Snapshot {
    image: Arc<dyn Image>,
    exe: String,
    origin: Origin,
    listed: Vec<ThreadInfo>,
    regs: HashMap<u32, ThreadRegs>,
    symbolizer: Symbolizer,
    v8: Option<V8Runtime>,
    unwinder: unwind::Unwinder,
    /// The samples of the running threads.
    collection: Collection,
    window_ms: u64,
    loop_turn: Option<Duration>,
}

/// Walks the threads that were not sampled, and names every frame.
fn assemble(snapshot: Snapshot, started: Instant) -> Stacks {
    let Snapshot {
        image,
        exe,
        origin,
        listed,
        regs,
        mut symbolizer,
        v8,
        unwinder,
        mut collection,
        window_ms,
        loop_turn,
    } = snapshot;
    let pid = image.pid();
    let layout = v8.as_ref().map(|v8| v8.layout.clone());
    let v8_version = v8
        .as_ref()
        .and_then(|v8| v8.report.v8_version)
        .map(|v| v.to_string());
    // Index of each sampled thread's newest sample, and its sample count.
    // A stack of one user frame is a walk that stopped at once (a libc leaf
    // without a frame pointer; dump has no unwind rows): a newer one is
    // shown only when no older sample says more.
    let mut sampled: HashMap<u32, (usize, usize)> = HashMap::new();
    let walked_past_leaf = |i: usize| {
        collection.stacks[collection.samples[i].stack as usize]
            .user
            .len()
            > 1
    };
    for (i, s) in collection.samples.iter().enumerate() {
        let entry = sampled.entry(s.tid).or_insert((i, 0));
        if walked_past_leaf(i) || !walked_past_leaf(entry.0) {
            entry.0 = i;
        }
        entry.1 += 1;
    }
    let mem = image.memory();
    let mut walked: HashMap<u32, usize> = HashMap::new();
    for thread in &listed {
        if sampled.contains_key(&thread.tid) {
            continue;
        }
        let Some(r) = regs.get(&thread.tid) else {
            continue;
        };
        let mut record = empty_record(pid, thread);
        walk_registers(&mut record, r, &unwinder, &*mem, layout.as_deref());
        collection.push(&record);
        walked.insert(thread.tid, collection.samples.len() - 1);
    }
    tracing::debug!("stacks walked after {:?}", started.elapsed());
    symbolizer.observe(&collection.user_frames);
    let mut symbolized: Vec<Vec<Frame>> = Vec::with_capacity(collection.stacks.len());
    symbolizer.symbolize(&collection, |mut frames| {
        frames.reverse();
        symbolized.push(frames);
    });
    let capture_time = started.elapsed();
    tracing::debug!("symbolized after {capture_time:?}");

    let mut out = Vec::with_capacity(listed.len());
    for info in listed {
        let frames_of =
            |sample: usize| symbolized[collection.samples[sample].stack as usize].clone();
        let (source, frames, syscall, sampled_js) = if let Some(&(newest, count)) =
            sampled.get(&info.tid)
        {
            let js = js_leaders(&collection, &symbolized, info.tid);
            (
                StackSource::Sampled {
                    samples: count,
                    window_ms,
                },
                frames_of(newest),
                None,
                js,
            )
        } else if let Some(&sample) = walked.get(&info.tid) {
            let r = &regs[&info.tid];
            let syscall = (r.syscall_nr >= 0 && r.user)
                .then(|| syscalls::decode(r.syscall_nr, r.args, &*mem, |fd| image.fd_target(fd)));
            let source = match origin {
                Origin::Live => StackSource::Registers,
                Origin::Core { .. } => StackSource::Core,
            };
            (source, frames_of(sample), syscall, Vec::new())
        } else {
            let reason = "the thread exited while being read".to_string();
            (
                StackSource::Unavailable { reason },
                Vec::new(),
                None,
                Vec::new(),
            )
        };
        out.push(ThreadStack {
            loop_turn: loop_turn.filter(|_| info.tid == pid),
            info,
            syscall,
            source,
            frames,
            sampled_js,
        });
    }
    Stacks {
        pid,
        exe,
        origin,
        threads: out,
        js_naming: layout.is_some(),
        v8_version,
        capture_time,
    }
}

/// Samples `pid` until each of the `running` threads has enough samples or
/// the window ends; returns how long it sampled, in ms.
fn sample(
    probe: &mut Probe,
    pid: u32,
    running: &[u32],
    window: SampleWindow,
    into: &mut Collection,
) -> Result<u64, StacksError> {
    probe.add_target(pid)?;
    // No unwind rows here: building them (libc's and libstdc++'s
    // `.eh_frame`) would cost a snapshot more than the few running
    // threads caught in a libc leaf would gain.
    let attach = Instant::now();
    probe.start_sampling(window.frequency_hz)?;
    tracing::debug!("sampler attached in {:?}", attach.elapsed());
    let started = Instant::now();
    let ring = probe.take_samples().ok_or(ProbeError::Kernel {
        action: "read samples",
        detail: "the ring buffer was taken".into(),
    })?;
    let mut collector = Collector::new(ring);
    loop {
        std::thread::sleep(Duration::from_millis(5));
        collector.drain(into);
        let elapsed = started.elapsed();
        let enough = running.iter().all(|tid| {
            into.samples.iter().filter(|s| s.tid == *tid).count() >= window.enough_samples
        });
        if elapsed >= window.max || (enough && elapsed >= window.min) {
            break;
        }
    }
    probe.stop_sampling();
    collector.drain(into);
    Ok(started.elapsed().as_millis() as u64)
}

/// JS functions innermost in a thread's samples, most samples first.
fn js_leaders(
    collection: &Collection,
    symbolized: &[Vec<Frame>],
    tid: u32,
) -> Vec<(String, usize)> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for s in collection.samples.iter().filter(|s| s.tid == tid) {
        let frames = &symbolized[s.stack as usize];
        if let Some(js) = frames
            .iter()
            .find(|f| f.kind == crate::profile::FrameKind::Js)
        {
            *counts.entry(js.name.clone()).or_default() += 1;
        }
    }
    let mut out: Vec<_> = counts.into_iter().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// Fills `record` with the stacks of a thread off CPU: its kernel stack,
/// and its user stack walked from the registers it entered the kernel with
/// (`.eh_frame` where there is no frame pointer, V8's frames recognised as
/// the sampler does). The thread must stay off CPU while this runs.
pub fn walk_registers<M: Memory + ?Sized>(
    record: &mut SampleRecord,
    r: &ThreadRegs,
    unwinder: &unwind::Unwinder,
    mem: &M,
    layout: Option<&crate::v8::V8Layout>,
) {
    let kernel = &r.kernel_stack[..r.kernel_stack.len().min(MAX_KERNEL_FRAMES)];
    record.kernel_stack[..kernel.len()].copy_from_slice(kernel);
    record.kernel_frames = kernel.len() as u32;
    record.user_frames = 0;
    // Kernel threads and exiting threads have no user registers.
    if r.user && r.ip != 0 {
        let frames = unwinder.walk(mem, r.ip, r.sp, r.bp);
        for (slot, f) in record.user_stack.iter_mut().zip(&frames) {
            *slot = match layout {
                Some(layout) => crate::v8::walk::user_frame(mem, layout, f.pc, f.bp),
                None => UserFrame {
                    pc: f.pc,
                    ..Default::default()
                },
            };
        }
        record.user_frames = frames.len().min(MAX_USER_FRAMES) as u32;
    }
}

/// The registers the task iterator read for thread `tid`.
pub fn thread_regs(tid: u32, r: &TaskRecord) -> ThreadRegs {
    ThreadRegs {
        tid,
        ip: r.ip,
        sp: r.sp,
        bp: r.bp,
        user: r.cs & 3 == 3,
        syscall_nr: r.syscall_nr,
        args: r.args,
        kernel_stack: r.kernel_stack[..(r.kernel_frames as usize).min(MAX_KERNEL_FRAMES)].to_vec(),
    }
}

/// Every thread's stack in a core file of a process that ran `exe` (the
/// binary on this host: its V8 layout, unwind tables and symbols).
pub fn from_core(core: &Path, exe: &Path) -> Result<Stacks, StacksError> {
    let started = Instant::now();
    let file = Arc::new(CoreFile::open(core, exe)?);
    let image: Arc<dyn Image> = file.clone();
    let discovery = Discovery {
        exe: file.exe_path.clone().into(),
        v8: discover(exe),
    };
    let v8 = discovery.v8.as_ref().ok().cloned();
    let mut symbolizer = Symbolizer::of_image(image.clone(), None);
    symbolizer.use_executable(&discovery);
    symbolizer.refresh();
    let unwinder = unwind::Unwinder::new(&image.mappings(), |m| image.open(m));
    let listed = file
        .threads
        .iter()
        .map(|t| ThreadInfo {
            tid: t.tid,
            // A core keeps the process's name, not its threads'.
            name: if t.tid == file.pid() {
                file.name.clone()
            } else {
                String::new()
            },
            // Stopped by the core's writer: in a system call, or running.
            state: if t.syscall_nr >= 0 {
                ThreadState::Sleeping
            } else {
                ThreadState::Running
            },
            off_cpu: None,
        })
        .collect();
    let regs = file.threads.iter().map(|t| (t.tid, t.clone())).collect();
    Ok(assemble(
        Snapshot {
            image,
            exe: file.exe_path.clone(),
            origin: Origin::Core {
                path: core.display().to_string(),
            },
            listed,
            regs,
            symbolizer,
            v8,
            unwinder,
            collection: Collection::default(),
            window_ms: 0,
            // A core has no "now" to measure the turn against.
            loop_turn: None,
        },
        started,
    ))
}

/// The executable a core's process ran, as it saw it.
pub fn executable_in_core(core: &Path) -> Result<String, StacksError> {
    Ok(crate::corefile::executable_named(core)?)
}

/// A sampler-shaped record of a thread, off CPU, stacks empty.
pub fn empty_record(pid: u32, thread: &ThreadInfo) -> Box<SampleRecord> {
    let mut comm = [0u8; nodeprof_common::COMM_LEN];
    let name = thread.name.as_bytes();
    let n = name.len().min(comm.len() - 1);
    comm[..n].copy_from_slice(&name[..n]);
    Box::new(SampleRecord {
        time_ns: crate::clock::monotonic_ns(),
        tgid: pid,
        tid: thread.tid,
        cpu: 0,
        kernel_frames: 0,
        user_frames: 0,
        user_tos: 0,
        // Its stack is where it left the CPU.
        kind: nodeprof_common::SAMPLE_OFF_CPU,
        state: 0,
        comm,
        kernel_stack: [0; MAX_KERNEL_FRAMES],
        user_stack: [UserFrame::default(); MAX_USER_FRAMES],
        leaf_frames: 0,
        _pad: 0,
        leaf_pcs: [0; nodeprof_common::MAX_UNWIND_LEVELS],
    })
}
