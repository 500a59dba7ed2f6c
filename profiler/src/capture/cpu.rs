//! A CPU capture of a live process: the sampler on every CPU, filtered in the
//! kernel to the target's threads, drained while the target runs (JS
//! functions are named then, while their V8 objects are valid), until a stop.
//! [`Capture::profile`] turns what was taken into a [`Profile`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;

use super::blocked::BlockedStacks;
use super::{StopReason, Stopper};
use crate::clock::monotonic_ns;
use crate::collect::{Collection, Collector, ThreadEventCollector};
use crate::eventloop::{self, ThreadLoop};
use crate::gc::{GcError, GcEvent, GcPoints, GcProbes, GcSummary};
use crate::probe::{Probe, ProbeError};
use crate::profile::{Frame, Pause, Profile, ProfileBuilder, TimeKind};
use crate::symbolize::Symbolizer;
use crate::target::{Discovery, Launched, Runtime, Target};
use nodeprof_common::{ThreadEvent, EVENT_SWITCH_IN};

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Target(#[from] crate::target::TargetError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("cannot {action}: {source}")]
    Io {
        action: &'static str,
        source: std::io::Error,
    },
}

/// The frame of off-CPU time whose stack record was lost (buffer full).
const OFF_CPU_STACK_LOST: &str = "(off-CPU stack lost)";

/// Which time of the target's threads a profile shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clock {
    /// Time on CPU (the `cpu-clock` samples).
    #[default]
    Cpu,
    /// Time off CPU (blocked, or waiting for a CPU), by the stack the thread left in.
    OffCpu,
    /// Both: each thread's samples add up to the wall-clock time.
    Wall,
}

impl Clock {
    fn on_cpu(self) -> bool {
        self != Clock::OffCpu
    }

    fn off_cpu(self) -> bool {
        self != Clock::Cpu
    }
}

/// How to sample.
#[derive(Debug, Clone)]
pub struct CpuOptions {
    pub frequency_hz: u64,
    pub clock: Clock,
    /// Stop after this long; `None`: until a signal or the target's exit.
    pub duration: Option<Duration>,
    /// No progress line.
    pub quiet: bool,
    /// Trace GC pauses (uprobes in V8) besides sampling.
    pub trace_gc: bool,
    /// Trace event-loop turns (`epoll_wait` tracepoints). While any
    /// syscall tracepoint is on, every system call of the machine takes the
    /// kernel's traced path (about 20 ns more here).
    pub trace_loop: bool,
}

/// What one sampling run took in, ready to become a profile.
pub struct Capture {
    pub pid: u32,
    pub frequency_hz: u64,
    /// Sampling start and end, CLOCK_MONOTONIC ns.
    pub start_ns: u64,
    pub end_ns: u64,
    pub collection: Collection,
    /// Samples the kernel could not hand over (ring buffer full).
    pub lost: u64,
    pub stop: StopReason,
    /// The target's GCs while sampling; `None` when they were not traced.
    pub gc: Option<GcCapture>,
    pub clock: Clock,
    /// Threads back on the CPU, event loops entering and leaving `epoll_wait`.
    pub thread_events: Vec<ThreadEvent>,
    /// Whether event-loop turns were traced.
    pub loop_traced: bool,
    /// The executable the target ran last (it may have exec'd since the start).
    pub exe: Option<PathBuf>,
    /// At the end: whether the main thread was outside `epoll_wait`.
    loop_main_stuck: Option<bool>,
    /// Holds what was read of the target while it ran (mappings, JS names).
    symbolizer: Symbolizer,
}

/// The GCs seen while sampling, and the probe events lost.
pub struct GcCapture {
    pub events: Vec<GcEvent>,
    pub lost: u64,
}

impl Capture {
    /// Symbolizes every sampled stack into a profile; samples in a GC pause
    /// of their thread sit under `(garbage collector)`.
    pub fn profile(&mut self) -> Profile {
        let pauses: Vec<Pause> = self
            .gc
            .iter()
            .flat_map(|gc| &gc.events)
            .map(|e| Pause {
                tid: e.tid,
                start_ns: e.start_ns,
                end_ns: e.end_ns(),
            })
            .collect();
        let mut builder = ProfileBuilder::new(self.pid, self.frequency_hz, self.start_ns, &pauses);
        let collection = &self.collection;
        self.symbolizer
            .symbolize(collection, |frames| builder.add_stack(frames));
        // An off-CPU stack's interval ends when its thread is back on CPU,
        // or at the end for a thread still off CPU then.
        let returns: std::collections::HashMap<(u32, u64), u64> = self
            .thread_events
            .iter()
            .filter(|e| e.kind == EVENT_SWITCH_IN)
            .map(|e| ((e.tid, e.start_ns), e.time_ns))
            .collect();
        // Where a return was lost, the thread's next record proves it ran again.
        let mut record_times: std::collections::HashMap<u32, Vec<u64>> =
            std::collections::HashMap::new();
        for sample in &collection.samples {
            record_times
                .entry(sample.tid)
                .or_default()
                .push(sample.time_ns);
        }
        for times in record_times.values_mut() {
            times.sort_unstable();
        }
        let next_record = |tid: u32, after: u64| -> Option<u64> {
            let times = record_times.get(&tid)?;
            times.get(times.partition_point(|&t| t <= after)).copied()
        };
        for sample in &collection.samples {
            let name = &collection.thread_names[sample.thread_name as usize];
            let stack = sample.stack as usize;
            if !sample.off_cpu {
                if self.clock.on_cpu() {
                    builder.add_sample(sample.time_ns, sample.tid, name, stack);
                }
            } else if self.clock.off_cpu() {
                let start = sample.time_ns.max(self.start_ns);
                let end = returns
                    .get(&(sample.tid, sample.time_ns))
                    .copied()
                    .or_else(|| next_record(sample.tid, sample.time_ns))
                    .unwrap_or(self.end_ns)
                    .min(self.end_ns);
                builder.add_off_cpu(start, end, sample.tid, name, stack);
            }
        }
        if self.clock.off_cpu() {
            // A return whose switch-out record the full buffer dropped: the
            // time is known, the stack is not; wall time still adds up.
            let recorded: std::collections::HashSet<(u32, u64)> = collection
                .samples
                .iter()
                .filter(|s| s.off_cpu)
                .map(|s| (s.tid, s.time_ns))
                .collect();
            let lost_stack = builder.stack_count();
            let mut lost_any = false;
            for e in self
                .thread_events
                .iter()
                .filter(|e| e.kind == EVENT_SWITCH_IN)
            {
                if recorded.contains(&(e.tid, e.start_ns)) {
                    continue;
                }
                if !lost_any {
                    builder.add_stack(vec![Frame::meta(OFF_CPU_STACK_LOST)]);
                    lost_any = true;
                }
                let name = self.thread_name(e.tid);
                let start = e.start_ns.max(self.start_ns);
                builder.add_off_cpu(start, e.time_ns.min(self.end_ns), e.tid, &name, lost_stack);
            }
        }
        let mut profile = builder.finish(self.end_ns, self.lost);
        profile.time = match self.clock {
            Clock::Cpu => TimeKind::Cpu,
            Clock::OffCpu => TimeKind::OffCpu,
            Clock::Wall => TimeKind::Wall,
        };
        profile
    }

    /// The name a thread was last sampled with.
    fn thread_name(&self, tid: u32) -> String {
        self.collection
            .samples
            .iter()
            .rev()
            .find(|s| s.tid == tid)
            .map(|s| self.collection.thread_names[s.thread_name as usize].clone())
            .unwrap_or_default()
    }

    /// The event loops' turns, when they were traced. The target's main
    /// thread, if it never entered or left `epoll_wait` but is outside it
    /// now, spent the whole capture in one turn.
    pub fn loops(&self) -> Option<Vec<ThreadLoop>> {
        if !self.loop_traced {
            return None;
        }
        let mut loops = eventloop::turns(&self.thread_events, self.start_ns, self.end_ns);
        if !loops.iter().any(|l| l.tid == self.pid)
            && self.stop != StopReason::TargetExited
            && self.loop_main_stuck == Some(true)
        {
            loops.push(ThreadLoop {
                tid: self.pid,
                turns: vec![eventloop::Turn {
                    start_ns: self.start_ns,
                    end_ns: self.end_ns,
                    began_before: true,
                    ongoing: true,
                }],
                utilization: 1.0,
            });
        }
        Some(loops)
    }

    /// The GC table of the capture, when GCs were traced.
    pub fn gc_summary(&self) -> Option<GcSummary> {
        self.gc
            .as_ref()
            .map(|gc| GcSummary::of(&gc.events, (self.start_ns, self.end_ns), 0, gc.lost))
    }
}

/// Samples `target` until the duration, a signal or its exit. A `launched`
/// target is released (it execs its command) once the sampler is attached.
pub fn capture(
    options: &CpuOptions,
    target: &Target,
    launched: Option<&mut Launched>,
) -> Result<Capture, CaptureError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| CaptureError::Io {
            action: "start the event loop",
            source,
        })?;
    runtime.block_on(run(options, target, launched))
}

async fn run(
    options: &CpuOptions,
    target: &Target,
    launched: Option<&mut Launched>,
) -> Result<Capture, CaptureError> {
    let pid = target.pid;
    // First: a signal during the set-up below ends the capture at its start,
    // instead of killing nodeprof with its temporary files.
    let mut stopper = Stopper::new(options.duration).map_err(|source| CaptureError::Io {
        action: "install the signal handlers",
        source,
    })?;
    tracing::debug!("capture of {pid}: setting up");
    let mut symbolizer = Symbolizer::new(target);
    let mut runtime = Runtime::new(pid);
    let attached = launched.is_none();
    // Start-up's two long steps side by side: reading the target's binary
    // (V8 layout, GC functions) on a thread of its own, while the probe
    // loads and the kernel verifies the sampler.
    let (probe, reading) = std::thread::scope(|scope| {
        let reading = attached.then(|| {
            scope.spawn(|| read_target(pid, &mut runtime, &mut symbolizer, options.trace_gc))
        });
        let probe = Probe::load(options.frequency_hz).and_then(|mut probe| {
            tracing::debug!("probe loaded");
            probe.add_target(pid)?;
            probe.load_sampler()?;
            tracing::debug!("sampler verified");
            Ok(probe)
        });
        // A panic there is a bug: it goes on as this thread's, message kept.
        let reading = reading.map(|r| r.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        (probe, reading)
    });
    let mut probe = probe?;
    let mut gc = None;
    let mut exe = None;
    let mut layout = None;
    if let Some(reading) = reading {
        // Before sampling starts, so that the first samples name JS frames too.
        // Node or not is told by the binary's contents (V8's layout), not
        // its name: a renamed or deleted node binary is still node.
        let is_v8 = match &reading.found {
            Some(found) => {
                exe = Some((found.exe.clone(), found.v8.is_ok()));
                layout = found.v8.as_ref().ok().map(|v8| v8.layout.clone());
                set_layout(found, &mut probe, pid)?
            }
            None => false,
        };
        if !is_v8 {
            tracing::warn!(
                "process {pid} ({}) does not look like Node.js (no V8 in its executable): \
                 profiling native code only",
                target.exe.display()
            );
        }
        if runtime.exe_changed() {
            // The GC functions' offsets are the old binary's: probing them in
            // the new one would write breakpoints into the wrong code.
            tracing::warn!("process {pid} exec'd while nodeprof started: GC not traced");
        } else if let Some(points) = reading.gc_points {
            gc = attach_gc(
                &mut probe,
                pid,
                &crate::gc::probes::exe_path(pid),
                points,
                is_v8,
            );
            tracing::debug!("GC probes attached");
        }
    }
    probe.start_sampling(options.frequency_hz)?;
    tracing::debug!("sampler attached");
    if attached {
        // After the attach, off start-up's critical path: until the rows
        // are in (tens of ms), stacks are walked as without them. A
        // launched command gets its rows once it has exec'd: until then
        // its mappings are a copy of nodeprof's.
        load_unwind_tables(&mut probe, pid);
    }
    if options.clock.off_cpu() {
        probe.start_off_cpu()?;
    }
    let loop_traced = options.trace_loop
        && match probe.start_loop_tracing() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("event-loop turns not traced: {e}");
                false
            }
        };
    if loop_traced {
        tracing::debug!("event-loop tracepoints attached");
    }
    let thread_collector = ThreadEventCollector::new(
        probe
            .take_thread_events()
            .expect("thread event buffer is taken once"),
    );
    let ring = probe.take_samples().expect("ring buffer is taken once");
    // SAFETY: the collector owns the ring buffer map, whose fd stays open and
    // unchanged for the collector's life.
    let mut collector = unsafe {
        AsyncFd::register_with_interest(Collector::new(ring), tokio::io::Interest::READABLE)
    }
    .map_err(|e| CaptureError::Io {
        action: "watch the sample buffer",
        source: e.into(),
    })?;
    // A launched child whose exec nodeprof has not seen yet: its table waits.
    let mut unwind_pending = false;
    if let Some(child) = launched {
        probe.prepare_unwind_rows(pid);
        if let Some(found) = runtime.preload(&child.program) {
            exe = Some((found.exe.clone(), found.v8.is_ok()));
            layout = found.v8.as_ref().ok().map(|v8| v8.layout.clone());
            if adopt(&found, &mut probe, &mut symbolizer, pid)? && options.trace_gc {
                // A node program: its GCs too, probed in the file it is about to exec.
                gc = trace_gc(&mut probe, pid, &child.program, true);
            }
        }
        child.release()?;
        // ld.so maps libc before main: the table is built as soon as it
        // is there, so that start-up's samples keep their callers too.
        wait_for_libc(pid, Duration::from_millis(100));
        // Never before the exec: a table of nodeprof's own mappings would
        // give node's code at those addresses wrong rules.
        if has_exec(pid) {
            load_unwind_tables(&mut probe, pid);
        } else {
            unwind_pending = true;
        }
    }
    // After the release: a launched child is the command now, not a copy of us.
    let blocked = if options.clock.off_cpu() {
        BlockedStacks::new(pid, &mut probe)
    } else {
        None
    };
    let start_ns = monotonic_ns();
    let mut collection = Collection::default();

    let progress = progress_bar(options.quiet, pid);
    stopper.restart_clock();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut intake = Intake {
        collection: &mut collection,
        symbolizer: &mut symbolizer,
        runtime: &mut runtime,
        pid,
        gc,
        gc_events: Vec::new(),
        trace_gc: options.trace_gc,
        exe,
        threads: thread_collector,
        thread_events: Vec::new(),
        blocked,
        unwind_loaded: Instant::now(),
        unwind_checked: Instant::now(),
        unwind_pending,
    };
    if let Some(blocked) = &mut intake.blocked {
        blocked.set_layout(layout);
    }
    if attached {
        // A launched command had no thread before it started.
        intake.seed_blocked(&mut probe, start_ns);
    }
    let stop = loop {
        tokio::select! {
            guard = collector.readable_mut() => {
                let Ok(mut guard) = guard else { break StopReason::TargetExited };
                intake.absorb(guard.get_inner_mut(), &mut probe)?;
                guard.clear_ready();
            }
            reason = stopper.signalled() => break reason,
            _ = tick.tick() => {
                // The sampler wakes us only when its buffer fills: drain on the tick.
                intake.absorb(collector.get_mut(), &mut probe)?;
                intake.drain_gc();
                progress.set_message(format!("{} samples", intake.collection.samples.len()));
                if let Some(reason) = stopper.due(target) {
                    break reason;
                }
            }
        }
    };
    let end_ns = monotonic_ns();
    // Whatever the kernel wrote before the stop is still in the ring buffer
    // (JS frames of a target that exited can no longer be named).
    intake.absorb(collector.get_mut(), &mut probe)?;
    // Only node's main thread is known to run an event loop.
    let runs_v8 = intake.exe.as_ref().is_some_and(|(_, v8)| *v8);
    let loop_main_stuck = runs_v8.then(|| eventloop::stuck_in_turn(pid)).flatten();
    let lost = probe.lost_samples();
    let lost_events = probe.lost_thread_events();
    if lost_events > 0 {
        tracing::warn!(
            "{lost_events} thread events lost (buffer full): off-CPU intervals and event-loop turns \
             near them are approximate"
        );
    }
    intake.drain_gc();
    let exe = intake.exe.take().map(|(exe, _)| exe);
    let gc = intake.gc.is_some().then(|| GcCapture {
        events: std::mem::take(&mut intake.gc_events),
        lost: probe.lost_calls(),
    });
    let thread_events = std::mem::take(&mut intake.thread_events);
    drop(intake);
    // Detach now: symbolizing and writing need no sampling.
    drop(collector);
    drop(probe);
    progress.finish_and_clear();
    Ok(Capture {
        pid,
        frequency_hz: options.frequency_hz,
        start_ns,
        end_ns,
        collection,
        lost,
        stop,
        gc,
        clock: options.clock,
        thread_events,
        loop_traced,
        loop_main_stuck,
        exe,
        symbolizer,
    })
}

/// What start-up reads of an attached target beside loading the probe.
struct TargetReading {
    /// Its executable (None when unreadable), taken into the symbolizer.
    found: Option<Discovery>,
    /// Its GC functions, when GCs are traced.
    gc_points: Option<Result<GcPoints, GcError>>,
}

/// Reads the target's executable (V8 layout, GC functions) and mappings:
/// no probe needed.
fn read_target(
    pid: u32,
    runtime: &mut Runtime,
    symbolizer: &mut Symbolizer,
    trace_gc: bool,
) -> TargetReading {
    let found = runtime.poll();
    if let Some(found) = &found {
        tracing::debug!("V8 layout read");
        symbolizer.use_executable(found);
    }
    symbolizer.refresh();
    tracing::debug!("mappings read");
    let gc_points = trace_gc.then(|| {
        let points = GcPoints::find(&crate::gc::probes::exe_path(pid)).map_err(GcError::from);
        tracing::debug!("GC functions found");
        points
    });
    TargetReading { found, gc_points }
}

/// Takes a newly found executable into use: the sampler gets its V8 layout,
/// the symbolizer its names. Returns whether it runs V8.
fn adopt(
    found: &Discovery,
    probe: &mut Probe,
    symbolizer: &mut Symbolizer,
    pid: u32,
) -> Result<bool, ProbeError> {
    symbolizer.use_executable(found);
    set_layout(found, probe, pid)
}

/// The sampler gets the V8 layout of a newly found executable. Returns
/// whether it runs V8.
fn set_layout(found: &Discovery, probe: &mut Probe, pid: u32) -> Result<bool, ProbeError> {
    match &found.v8 {
        Ok(v8) => {
            probe.set_v8_config(pid, v8.layout.probe_config())?;
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

/// What the sampling loop updates on each drain.
struct Intake<'a> {
    collection: &'a mut Collection,
    symbolizer: &'a mut Symbolizer,
    runtime: &'a mut Runtime,
    pid: u32,
    gc: Option<GcProbes>,
    gc_events: Vec<GcEvent>,
    trace_gc: bool,
    /// The executable the target runs, and whether it has V8.
    exe: Option<(PathBuf, bool)>,
    threads: ThreadEventCollector,
    thread_events: Vec<ThreadEvent>,
    /// Exact stacks of threads off CPU (`--off-cpu`, `--wall`).
    blocked: Option<BlockedStacks>,
    /// When the target's unwind table was last built.
    unwind_loaded: Instant,
    /// When the table was last checked against the target's mappings.
    unwind_checked: Instant,
    /// A launched child not seen exec'd yet: its table is built once it has.
    unwind_pending: bool,
}

/// Waits until a just released child has exec'd and ld.so has mapped libc
/// (or `timeout` passes: a static program, or a slow start that
/// [`Intake::follow_new_code`] catches up with).
fn wait_for_libc(pid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        // The executable first: before the exec, the child maps nodeprof's libc.
        let mapped = has_exec(pid)
            && crate::image::executable_mappings(pid)
                .is_ok_and(|maps| maps.iter().any(|m| m.path.contains("/libc.so")));
        if mapped {
            return;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Whether a launched child runs its command now, not a copy of nodeprof.
fn has_exec(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .zip(std::env::current_exe().ok())
        .is_some_and(|(exe, me)| exe != me)
}

/// Shortest time between two builds of a target's unwind table on new code.
const UNWIND_RELOAD: Duration = Duration::from_millis(250);

/// Gives the sampler the target's unwind rows; without them stacks may be
/// cut at libc, which is worth a warning, not an end to the capture.
fn load_unwind_tables(probe: &mut Probe, pid: u32) {
    match probe.load_unwind_tables(pid) {
        Ok(covered) if covered.is_empty() => tracing::debug!("no unwind rows for {pid}"),
        Ok(covered) => tracing::debug!("unwind rows of {pid}: {}", covered.join(", ")),
        Err(e) => tracing::warn!("stacks may stop at libc functions: {e}"),
    }
}

impl Intake<'_> {
    /// Takes in what the sampler wrote and names JS functions while the
    /// target still runs; an exec'd executable is found first.
    fn absorb(&mut self, collector: &mut Collector, probe: &mut Probe) -> Result<(), ProbeError> {
        if let Some(found) = self.runtime.poll() {
            // After an exec a failure here must not throw away what was taken.
            let is_v8 = adopt(&found, probe, self.symbolizer, self.pid).unwrap_or_else(|e| {
                tracing::warn!("JS frames of the new program are not named: {e}");
                false
            });
            load_unwind_tables(probe, self.pid);
            self.unwind_loaded = Instant::now();
            if let Some(blocked) = &mut self.blocked {
                blocked.set_layout(found.v8.as_ref().ok().map(|v8| v8.layout.clone()));
                blocked.reload_modules();
            }
            self.exec(&found.exe, is_v8, probe);
        }
        let before = self.collection.user_frames.len();
        self.collection
            .set_v8_code(self.symbolizer.v8_code_ranges());
        let first = self.collection.samples.is_empty();
        let samples_before = self.collection.samples.len();
        collector.drain(self.collection);
        self.follow_new_code(probe, samples_before);
        if let Some(sample) = self.collection.samples.first().filter(|_| first) {
            // Start-up ends at the first sample, not when it was read.
            let ago = monotonic_ns().saturating_sub(sample.time_ns);
            tracing::debug!(
                "first sample read, taken {:?} before",
                Duration::from_nanos(ago)
            );
        }
        let events_before = self.thread_events.len();
        let (pid, events) = (self.pid, &mut self.thread_events);
        self.threads.drain(|e| {
            if e.tgid == pid {
                events.push(e)
            }
        });
        if let Some(blocked) = &mut self.blocked {
            blocked.update(
                probe,
                self.collection,
                &self.thread_events[events_before..],
                monotonic_ns(),
            );
        }
        // New frames, the better walks' included, named while the target runs.
        self.symbolizer
            .observe(&self.collection.user_frames[before..]);
        Ok(())
    }

    /// A stack that ends in code mapped after the unwind table was built
    /// (a `dlopen`, or ld.so mapping libc after the exec of a launched
    /// command) may have been cut there, a table the kernel dropped (an
    /// exec) is missing, and one that covers an unmapped library (a
    /// `dlclose`) is stale: the table is built again, checked at most every
    /// [`UNWIND_RELOAD`].
    fn follow_new_code(&mut self, probe: &mut Probe, samples_before: usize) {
        if self.unwind_pending {
            if has_exec(self.pid) {
                load_unwind_tables(probe, self.pid);
                self.unwind_loaded = Instant::now();
                self.unwind_pending = false;
            }
            return;
        }
        if self.unwind_loaded.elapsed() < UNWIND_RELOAD {
            return;
        }
        // An exec: the kernel dropped the table. An unmap of a covered
        // library (a dlclose): the table must go before other code lands
        // there. Checked every UNWIND_RELOAD (a read of /proc/PID/maps).
        if self.unwind_checked.elapsed() >= UNWIND_RELOAD {
            self.unwind_checked = Instant::now();
            if probe.unwind_table_dropped(self.pid) || probe.unwind_objects_unmapped(self.pid) {
                load_unwind_tables(probe, self.pid);
                self.unwind_loaded = Instant::now();
                return;
            }
        }
        let collection = &*self.collection;
        let new_code = collection.samples[samples_before..].iter().any(|sample| {
            let stack = &collection.stacks[sample.stack as usize];
            stack.user.last().is_some_and(|&frame| {
                probe.unwind_misses(self.pid, collection.user_frames[frame as usize].pc)
            })
        });
        if new_code {
            load_unwind_tables(probe, self.pid);
            self.unwind_loaded = Instant::now();
        }
    }

    /// Threads off CPU when the capture starts get an off-CPU sample from then.
    fn seed_blocked(&mut self, probe: &mut Probe, start_ns: u64) {
        if let Some(blocked) = &mut self.blocked {
            let before = self.collection.user_frames.len();
            blocked.seed(probe, self.collection, start_ns);
            self.symbolizer
                .observe(&self.collection.user_frames[before..]);
        }
    }

    fn drain_gc(&mut self) {
        if let Some(gc) = &mut self.gc {
            self.gc_events.extend(gc.drain(self.pid));
        }
    }

    /// The target exec'd `exe`: the GC probes move to it (those in the old
    /// image are gone with it), and the user is told when it replaced a
    /// node (a launched command's wrapper script exec'ing node is expected).
    fn exec(&mut self, exe: &Path, is_v8: bool, probe: &mut Probe) {
        let was_v8 = self.exe.as_ref().is_some_and(|(_, v8)| *v8);
        self.exe = Some((exe.to_path_buf(), is_v8));
        let binary = crate::gc::probes::exe_path(self.pid);
        let gc = match (self.gc.as_mut(), is_v8 && self.trace_gc) {
            (Some(gc), true) => match gc.reattach(probe, self.pid, &binary) {
                Ok(done) => {
                    self.gc_events.extend(done);
                    "GC tracing follows it"
                }
                Err(e) => {
                    self.gc = None;
                    tracing::warn!("GC tracing stopped: {e}");
                    "GC tracing stopped"
                }
            },
            (Some(gc), false) => {
                self.gc_events.extend(gc.drain(self.pid));
                probe.detach_calls();
                "no V8 in it: GC tracing stopped"
            }
            (None, true) => {
                self.gc = trace_gc(probe, self.pid, &binary, true);
                if self.gc.is_some() {
                    "GC tracing starts"
                } else {
                    "GC not traced"
                }
            }
            (None, false) => "",
        };
        if was_v8 {
            tracing::warn!(
                "process {} exec'd {}: samples from now on are of the new program; {gc}",
                self.pid,
                exe.display()
            );
        }
    }
}

/// Attaches the GC probes, or says why GC pauses will not be in the profile
/// (a warning for a node target, where they were expected).
fn trace_gc(probe: &mut Probe, pid: u32, binary: &Path, expected: bool) -> Option<GcProbes> {
    let points = GcPoints::find(binary).map_err(GcError::from);
    attach_gc(probe, pid, binary, points, expected)
}

/// [`trace_gc`] with the GC functions already looked for.
fn attach_gc(
    probe: &mut Probe,
    pid: u32,
    binary: &Path,
    points: Result<GcPoints, GcError>,
    expected: bool,
) -> Option<GcProbes> {
    match points.and_then(|points| GcProbes::attach_found(probe, pid, binary, points)) {
        Ok(gc) => {
            for missing in &gc.points.missing {
                tracing::warn!("GC tracing: {missing}");
            }
            Some(gc)
        }
        Err(e) if expected => {
            tracing::warn!("GC pauses not traced: {e}");
            None
        }
        Err(e) => {
            tracing::debug!("GC pauses not traced: {e}");
            None
        }
    }
}

fn progress_bar(quiet: bool, pid: u32) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} recording pid {prefix} for {elapsed}: {msg} (Ctrl-C to stop)",
        )
        .expect("valid template"),
    );
    bar.set_prefix(pid.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
