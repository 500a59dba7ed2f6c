//! `nodeprof record`: runs the pipeline target → probe → collect → symbolize →
//! profile → output for one process, attached by pid or launched by us.

mod files;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::unix::AsyncFd;

use crate::collect::{Collection, Collector};
use crate::gc::GcProbes;
use crate::gc::{GcEvent, GcSummary};
use crate::output::{self, Summary};
use crate::probe::{self, Probe, ProbeError};
use crate::profile::{Frame, Profile, StackId};
use crate::symbolize::Symbolizer;
use crate::symbolize::GARBAGE_COLLECTOR;
use crate::target::{Launched, Target, TargetError};

use crate::session::Stopper;
pub use crate::session::{monotonic_ns, StopReason};
pub use files::{OutputFiles, OutputFormat};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Output(#[from] files::FileError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: output::OutputError,
    },
    #[error("{0}")]
    Runtime(std::io::Error),
}

/// What to record and where to write it.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    pub pid: Option<u32>,
    /// Launch mode: the command to run and profile from its first instruction.
    pub command: Vec<String>,
    pub frequency_hz: u64,
    pub duration: Option<Duration>,
    /// Output path prefix: `<prefix>.cpuprofile`, `.folded`, `.svg`.
    pub output: Option<PathBuf>,
    pub formats: Vec<OutputFormat>,
    /// No progress line.
    pub quiet: bool,
    /// Top functions in the printed summary.
    pub top: usize,
    /// Trace GC pauses (uprobes in V8) besides sampling.
    pub trace_gc: bool,
}

pub struct Recording {
    pub profile: Profile,
    pub summary: Summary,
    pub written: Vec<PathBuf>,
    pub stop: StopReason,
    pub target: Target,
    /// Exit status of a launched command that ended while recording.
    pub child_status: Option<i32>,
    /// The target's GCs while recording (None when they could not be traced).
    pub gc: Option<GcSummary>,
}

/// Records a profile; everything sampled before a stop is written.
pub fn record(options: &RecordOptions) -> Result<Recording, RecordError> {
    probe::check_permissions()?;
    // Fork before the async runtime starts threads (see target::launch).
    let mut launched = if options.command.is_empty() {
        None
    } else {
        Some(Launched::spawn(&options.command)?)
    };
    let pid = launched
        .as_ref()
        .map(|l| l.pid)
        .or(options.pid)
        .ok_or(TargetError::NoSuchProcess(0))?;
    let target = match &launched {
        // Until released the child is a copy of us; it becomes the command at exec.
        Some(_) => Target {
            pid,
            exe: PathBuf::from(&options.command[0]),
            comm: String::new(),
            ns_pid: pid,
        },
        None => Target::inspect(pid)?,
    };
    if launched.is_none() && !target.is_node() {
        tracing::warn!(
            "process {pid} ({}) does not look like Node.js: profiling native code only",
            target.exe.display()
        );
    }

    let prefix = options
        .output
        .clone()
        .unwrap_or_else(|| files::default_prefix(pid));
    let files = OutputFiles::create(&prefix, &options.formats)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RecordError::Runtime)?;
    let result = runtime.block_on(run(options, &target, launched.as_mut()));
    let (collection, start_ns, end_ns, lost, stop, mut symbolizer, gc_events) = match result {
        Ok(r) => r,
        Err(e) => {
            files.discard();
            return Err(e);
        }
    };
    let child_status = launched.as_ref().and_then(Launched::try_wait);

    let profile = build_profile(
        &collection,
        &mut symbolizer,
        gc_events.as_ref().map_or(&[][..], |(events, _)| events),
        pid,
        options.frequency_hz,
        start_ns,
        end_ns,
        lost,
    );
    let gc = gc_events.map(|(events, lost_events)| {
        let duration_s = end_ns.saturating_sub(start_ns) as f64 / 1e9;
        GcSummary::of(&events, duration_s, 0, lost_events)
    });
    let title = format!("nodeprof: {} (pid {pid})", target.exe.display());
    let written = files
        .write(&profile, &title)
        .map_err(|(path, source)| RecordError::Write { path, source })?;
    let summary = Summary::from_profile(&profile, options.top);
    Ok(Recording {
        profile,
        summary,
        written,
        stop,
        target,
        child_status,
        gc,
    })
}

/// The GCs seen while recording, and the probe events lost.
type GcEvents = (Vec<GcEvent>, u64);
type RunResult = (
    Collection,
    u64,
    u64,
    u64,
    StopReason,
    Symbolizer,
    Option<GcEvents>,
);

async fn run(
    options: &RecordOptions,
    target: &Target,
    launched: Option<&mut Launched>,
) -> Result<RunResult, RecordError> {
    let mut probe = Probe::load()?;
    probe.add_target(target.pid)?;
    let mut symbolizer = Symbolizer::new(target);
    if launched.is_none() {
        // Before sampling starts, so that the first samples name JS frames too.
        symbolizer.refresh();
        if let Some(config) = symbolizer.take_probe_config() {
            probe.set_v8_config(target.pid, config)?;
        }
    }
    let mut gc = match launched.as_ref() {
        None if !options.trace_gc => None,
        // Any binary with V8's GC functions, whatever its name.
        None => trace_gc(
            &mut probe,
            target.pid,
            &crate::gc::probes::exe_path(target.pid),
            target.is_node(),
        ),
        Some(_) => None,
    };
    probe.start_sampling(options.frequency_hz)?;
    let ring = probe.take_samples().expect("ring buffer is taken once");
    // SAFETY: the collector owns the ring buffer map, whose fd stays open and
    // unchanged for the collector's life.
    let mut collector = unsafe {
        AsyncFd::register_with_interest(Collector::new(ring), tokio::io::Interest::READABLE)
    }
    .map_err(|e| RecordError::Runtime(e.into()))?;
    if let Some(child) = launched {
        symbolizer.preload_executable(&child.program);
        if let Some(config) = symbolizer.take_probe_config() {
            probe.set_v8_config(target.pid, config)?;
            if options.trace_gc {
                // A node program: its GCs too, probed in the file it is about to exec.
                gc = trace_gc(&mut probe, target.pid, &child.program, true);
            }
        }
        child.release()?;
    }
    let mut gc_events = Vec::new();
    let start_ns = monotonic_ns();
    let mut collection = Collection::default();

    let progress = progress_bar(options.quiet, target.pid);
    let mut stopper = Stopper::new(options.duration).map_err(RecordError::Runtime)?;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let stop = loop {
        tokio::select! {
            guard = collector.readable_mut() => {
                let Ok(mut guard) = guard else { break StopReason::TargetExited };
                absorb(guard.get_inner_mut(), &mut collection, &mut symbolizer, &mut probe, target.pid)?;
                guard.clear_ready();
            }
            reason = stopper.signalled() => break reason,
            _ = tick.tick() => {
                // The sampler wakes us only when its buffer fills: drain on the tick.
                absorb(collector.get_mut(), &mut collection, &mut symbolizer, &mut probe, target.pid)?;
                if let Some(gc) = &mut gc {
                    gc_events.extend(gc.drain(target.pid));
                }
                progress.set_message(format!("{} samples", collection.samples.len()));
                if let Some(reason) = stopper.due(target) {
                    break reason;
                }
            }
        }
    };
    let end_ns = monotonic_ns();
    // Whatever the kernel wrote before the stop is still in the ring buffer
    // (JS frames of a target that exited can no longer be named).
    absorb(
        collector.get_mut(),
        &mut collection,
        &mut symbolizer,
        &mut probe,
        target.pid,
    )?;
    let lost = probe.lost_samples();
    let gc = gc.map(|mut gc| {
        gc_events.extend(gc.drain(target.pid));
        (std::mem::take(&mut gc_events), probe.lost_calls())
    });
    // Detach now: symbolizing and writing need no sampling.
    drop(collector);
    drop(probe);
    progress.finish_and_clear();
    Ok((collection, start_ns, end_ns, lost, stop, symbolizer, gc))
}

/// Attaches the GC probes, or says why GC pauses will not be in the profile
/// (a warning for a node target, where they were expected).
fn trace_gc(
    probe: &mut Probe,
    pid: u32,
    binary: &std::path::Path,
    expected: bool,
) -> Option<GcProbes> {
    match GcProbes::attach_binary(probe, pid, binary) {
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

/// Takes in what the sampler wrote: records it, names JS functions while the
/// target still runs, and hands the sampler a V8 layout once one is found.
fn absorb(
    collector: &mut Collector,
    collection: &mut Collection,
    symbolizer: &mut Symbolizer,
    probe: &mut Probe,
    pid: u32,
) -> Result<(), RecordError> {
    let before = collection.user_frames.len();
    collector.drain(collection);
    symbolizer.observe(&collection.user_frames[before..]);
    if let Some(config) = symbolizer.take_probe_config() {
        probe.set_v8_config(pid, config)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn build_profile(
    collection: &Collection,
    symbolizer: &mut Symbolizer,
    gc_events: &[GcEvent],
    pid: u32,
    frequency_hz: u64,
    start_ns: u64,
    end_ns: u64,
    lost: u64,
) -> Profile {
    let mut profile = Profile::new(pid, frequency_hz, start_ns);
    let mut stack_ids: Vec<StackId> = Vec::with_capacity(collection.stacks.len());
    symbolizer.symbolize(collection, |frames| {
        let ids = frames
            .into_iter()
            .map(|f| profile.intern_frame(f))
            .collect();
        stack_ids.push(profile.intern_stack(ids));
    });
    let pauses = GcPauses::new(gc_events);
    let gc_frame = profile.intern_frame(Frame::meta(GARBAGE_COLLECTOR));
    let mut in_gc_variant: HashMap<StackId, StackId> = HashMap::new();
    for sample in &collection.samples {
        let name = &collection.thread_names[sample.thread_name as usize];
        let mut stack = stack_ids[sample.stack as usize];
        // A sample in a GC pause of its thread sits under (garbage collector),
        // even where its stack shows no GC function (a pause's edges, code
        // V8 runs for the GC without a frame pointer).
        if pauses.covers(sample.tid, sample.time_ns) {
            stack = *in_gc_variant.entry(stack).or_insert_with(|| {
                let frames = profile.stack(stack);
                if frames.contains(&gc_frame) {
                    stack
                } else {
                    let mut frames = frames.to_vec();
                    frames.push(gc_frame);
                    profile.intern_stack(frames)
                }
            });
        }
        profile.add_sample(sample.time_ns, sample.tid, name, stack);
    }
    profile.end_ns = profile.end_ns.max(end_ns);
    profile.lost_samples = lost;
    profile
}

/// GC pauses per thread, sorted, for "was this sample taken in a pause".
struct GcPauses {
    by_tid: HashMap<u32, Vec<(u64, u64)>>,
}

impl GcPauses {
    fn new(events: &[GcEvent]) -> GcPauses {
        let mut by_tid: HashMap<u32, Vec<(u64, u64)>> = HashMap::new();
        for e in events {
            by_tid
                .entry(e.tid)
                .or_default()
                .push((e.start_ns, e.end_ns()));
        }
        for pauses in by_tid.values_mut() {
            pauses.sort_unstable();
        }
        GcPauses { by_tid }
    }

    fn covers(&self, tid: u32, time_ns: u64) -> bool {
        let Some(pauses) = self.by_tid.get(&tid) else {
            return false;
        };
        // The last pause starting at or before the instant.
        let i = pauses.partition_point(|&(start, _)| start <= time_ns);
        i > 0 && time_ns <= pauses[i - 1].1
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gc::GcKind;

    fn pause(tid: u32, start_ns: u64, pause_ns: u64) -> GcEvent {
        GcEvent {
            tid,
            start_ns,
            pause_ns,
            kind: GcKind::Scavenge,
            incremental: Some(false),
            reason: None,
            heap_before: None,
            heap_after: None,
        }
    }

    #[test]
    fn pauses_cover_their_thread_and_interval_only() {
        let pauses = GcPauses::new(&[pause(7, 300, 50), pause(7, 100, 10), pause(8, 0, 1000)]);
        for (tid, t, inside) in [
            (7, 99, false),
            (7, 100, true),
            (7, 110, true),
            (7, 111, false),
            (7, 299, false),
            (7, 325, true),
            (7, 351, false),
            (8, 500, true),
            (9, 500, false),
        ] {
            assert_eq!(pauses.covers(tid, t), inside, "tid {tid} at {t}");
        }
    }
}
