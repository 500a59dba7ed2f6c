//! A CPU capture of a live process: the sampler on every CPU, filtered in the
//! kernel to the target's threads, drained while the target runs (JS
//! functions are named then, while their V8 objects are valid), until a stop.
//! [`Capture::profile`] turns what was taken into a [`Profile`].

use std::path::Path;
use std::time::Duration;

use tokio::io::unix::AsyncFd;

use super::{StopReason, Stopper};
use crate::clock::monotonic_ns;
use crate::collect::{Collection, Collector};
use crate::gc::{GcEvent, GcProbes, GcSummary};
use crate::probe::{Probe, ProbeError};
use crate::profile::{Pause, Profile, ProfileBuilder};
use crate::symbolize::Symbolizer;
use crate::target::{Discovery, Launched, Runtime, Target};

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

/// How to sample.
#[derive(Debug, Clone)]
pub struct CpuOptions {
    pub frequency_hz: u64,
    /// Stop after this long; `None`: until a signal or the target's exit.
    pub duration: Option<Duration>,
    /// No progress line.
    pub quiet: bool,
    /// Trace GC pauses (uprobes in V8) besides sampling.
    pub trace_gc: bool,
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
        for sample in &collection.samples {
            let name = &collection.thread_names[sample.thread_name as usize];
            builder.add_sample(sample.time_ns, sample.tid, name, sample.stack as usize);
        }
        builder.finish(self.end_ns, self.lost)
    }

    /// The GC table of the capture, when GCs were traced.
    pub fn gc_summary(&self) -> Option<GcSummary> {
        self.gc.as_ref().map(|gc| {
            let duration_s = self.end_ns.saturating_sub(self.start_ns) as f64 / 1e9;
            GcSummary::of(&gc.events, duration_s, 0, gc.lost)
        })
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
    let mut probe = Probe::load()?;
    probe.add_target(pid)?;
    let mut symbolizer = Symbolizer::new(target);
    let mut runtime = Runtime::new(pid);
    let mut gc = None;
    if launched.is_none() {
        // Before sampling starts, so that the first samples name JS frames too.
        if let Some(found) = runtime.poll() {
            adopt(&found, &mut probe, &mut symbolizer, pid)?;
        }
        symbolizer.refresh();
        if options.trace_gc {
            // Any binary with V8's GC functions, whatever its name.
            gc = trace_gc(
                &mut probe,
                pid,
                &crate::gc::probes::exe_path(pid),
                target.is_node(),
            );
        }
    }
    probe.start_sampling(options.frequency_hz)?;
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
    if let Some(child) = launched {
        if let Some(found) = runtime.preload(&child.program) {
            if adopt(&found, &mut probe, &mut symbolizer, pid)? && options.trace_gc {
                // A node program: its GCs too, probed in the file it is about to exec.
                gc = trace_gc(&mut probe, pid, &child.program, true);
            }
        }
        child.release()?;
    }
    let mut gc_events = Vec::new();
    let start_ns = monotonic_ns();
    let mut collection = Collection::default();

    let progress = progress_bar(options.quiet, pid);
    let mut stopper = Stopper::new(options.duration).map_err(|source| CaptureError::Io {
        action: "install the signal handlers",
        source,
    })?;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut intake = Intake {
        collection: &mut collection,
        symbolizer: &mut symbolizer,
        runtime: &mut runtime,
        pid,
    };
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
                if let Some(gc) = &mut gc {
                    gc_events.extend(gc.drain(pid));
                }
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
    let lost = probe.lost_samples();
    let gc = gc.map(|mut gc| {
        gc_events.extend(gc.drain(pid));
        GcCapture {
            events: gc_events,
            lost: probe.lost_calls(),
        }
    });
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
        symbolizer,
    })
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
}

impl Intake<'_> {
    /// Takes in what the sampler wrote and names JS functions while the
    /// target still runs; an exec'd executable is found first.
    fn absorb(&mut self, collector: &mut Collector, probe: &mut Probe) -> Result<(), ProbeError> {
        if let Some(found) = self.runtime.poll() {
            adopt(&found, probe, self.symbolizer, self.pid)?;
        }
        let before = self.collection.user_frames.len();
        collector.drain(self.collection);
        self.symbolizer
            .observe(&self.collection.user_frames[before..]);
        Ok(())
    }
}

/// Attaches the GC probes, or says why GC pauses will not be in the profile
/// (a warning for a node target, where they were expected).
fn trace_gc(probe: &mut Probe, pid: u32, binary: &Path, expected: bool) -> Option<GcProbes> {
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
