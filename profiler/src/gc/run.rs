//! `nodeprof gc -p PID`: one line per GC as it happens, leak suspicions when
//! they arise, and a summary at the end.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};

use super::{
    human_bytes, megabytes, GcEvent, GcPoints, GcSummary, GcTracer, LeakDetector, LeakSuspicion,
};
use crate::collect::CallCollector;
use crate::probe::{self, Probe, ProbeError};
use crate::record::{monotonic_ns, StopReason};
use crate::target::{Target, TargetError};

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Points(#[from] super::PointsError),
    #[error("{0}")]
    Runtime(std::io::Error),
}

#[derive(Debug, Clone)]
pub struct GcOptions {
    pub pid: u32,
    pub duration: Option<Duration>,
    /// JSON lines instead of text.
    pub json: bool,
    /// Consecutive growing full GCs that raise a leak suspicion.
    pub leak_threshold: u32,
}

/// Probes attached to a target's GC, ready to be drained.
pub struct GcProbes {
    pub points: GcPoints,
    pub collector: CallCollector,
    pub tracer: GcTracer,
}

impl GcProbes {
    /// Finds the GC functions of `target`'s node binary and attaches the
    /// call tracer to them. Functions that cannot be probed are reported in
    /// `points.missing` and skipped, as long as a pause can still be timed.
    pub fn attach(probe: &mut Probe, target: &Target) -> Result<GcProbes, GcError> {
        GcProbes::attach_binary(probe, target.pid, &exe_path(target.pid))
    }

    /// Like [`GcProbes::attach`], for process `pid` running (or about to
    /// exec) the node binary at `binary`.
    pub fn attach_binary(probe: &mut Probe, pid: u32, binary: &Path) -> Result<GcProbes, GcError> {
        let mut points = GcPoints::find(binary)?;
        let mut failed = Vec::new();
        for (index, site) in points.sites.iter().enumerate() {
            if let Err(e) = probe.attach_call(pid, binary, site.site) {
                // Permission problems concern every probe: say so at once.
                if matches!(e, ProbeError::NotPermitted) {
                    return Err(e.into());
                }
                failed.push((index, format!("{}: {e}", site.symbol)));
            }
        }
        points.drop_failed(failed)?;
        let ring = probe
            .take_calls()
            .expect("the call ring buffer is taken once");
        let mut tracer = GcTracer::new(&points);
        tracer.arm(monotonic_ns());
        Ok(GcProbes {
            tracer,
            points,
            collector: CallCollector::new(ring),
        })
    }

    /// Feeds every pending call event to the tracer; returns the GCs completed.
    pub fn drain(&mut self, pid: u32) -> Vec<GcEvent> {
        let mut done = Vec::new();
        let tracer = &mut self.tracer;
        self.collector.drain(|event| {
            if event.tgid == pid {
                done.extend(tracer.feed(&event));
            }
        });
        done
    }
}

pub fn exe_path(pid: u32) -> PathBuf {
    Path::new("/proc").join(pid.to_string()).join("exe")
}

pub struct GcReport {
    pub events: Vec<GcEvent>,
    pub leaks: Vec<LeakSuspicion>,
    pub summary: GcSummary,
    pub stop: StopReason,
}

/// Traces GCs until the duration, Ctrl-C, SIGTERM or the target's exit,
/// writing each GC and leak suspicion to `out` as it happens.
pub fn trace(options: &GcOptions, out: &mut dyn Write) -> Result<GcReport, GcError> {
    probe::check_permissions()?;
    let target = Target::inspect(options.pid)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(GcError::Runtime)?;
    runtime.block_on(trace_async(options, &target, out))
}

async fn trace_async(
    options: &GcOptions,
    target: &Target,
    out: &mut dyn Write,
) -> Result<GcReport, GcError> {
    let mut probe = Probe::load()?;
    let mut probes = GcProbes::attach(&mut probe, target)?;
    for missing in &probes.points.missing {
        tracing::warn!("{missing}");
    }
    let start_ns = monotonic_ns();
    let started = Instant::now();
    if options.json {
        let start = serde_json::json!({
            "type": "start",
            "pid": target.pid,
            "v8": probes.points.version.to_string(),
            "plan": probes.points.plan.name(),
            "missing": probes.points.missing,
        });
        let _ = writeln!(out, "{start}");
    } else {
        let _ = writeln!(
            out,
            "tracing GC of pid {} (V8 {}); Ctrl-C to stop",
            target.pid, probes.points.version
        );
        let _ = writeln!(out, "{}", header());
    }
    let _ = out.flush();
    let mut detector = LeakDetector::new(
        options.leak_threshold,
        super::leak::DEFAULT_NOISE_FLOOR_BYTES,
    );
    let mut events = Vec::new();
    let mut leaks = Vec::new();
    let mut interrupt = signal(SignalKind::interrupt()).map_err(GcError::Runtime)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(GcError::Runtime)?;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut absorb = |probes: &mut GcProbes, out: &mut dyn Write| {
        for gc in probes.drain(target.pid) {
            print_event(out, options.json, start_ns, target.pid, &gc);
            if let Some(leak) = detector.observe(&gc) {
                print_leak(out, options.json, start_ns, &leak);
                leaks.push(leak);
            }
            events.push(gc);
        }
        let _ = out.flush();
    };
    let stop = loop {
        tokio::select! {
            _ = interrupt.recv() => break StopReason::Interrupted,
            _ = terminate.recv() => break StopReason::Terminated,
            _ = tick.tick() => {
                absorb(&mut probes, out);
                if options.duration.is_some_and(|d| started.elapsed() >= d) {
                    break StopReason::DurationElapsed;
                }
                if !target.is_alive() {
                    break StopReason::TargetExited;
                }
            }
        }
    };
    absorb(&mut probes, out);
    let lost = probe.lost_calls();
    drop(probes);
    drop(probe);
    let duration_s = monotonic_ns().saturating_sub(start_ns) as f64 / 1e9;
    let summary = GcSummary::of(&events, duration_s, leaks.len(), lost);
    Ok(GcReport {
        events,
        leaks,
        summary,
        stop,
    })
}

fn header() -> String {
    format!(
        "{:>9}  {:<26} {:>9}  {:>23}  {}",
        "time", "kind", "pause", "heap before → after", "reason"
    )
}

/// The kind as a user reads it: `mark-compact (incremental)`.
fn kind_label(gc: &GcEvent) -> String {
    match gc.incremental {
        Some(true) => format!("{} (incremental)", gc.kind),
        _ => gc.kind.to_string(),
    }
}

fn print_event(out: &mut dyn Write, json: bool, start_ns: u64, pid: u32, gc: &GcEvent) {
    let time_s = gc.start_ns.saturating_sub(start_ns) as f64 / 1e9;
    if json {
        let extra = serde_json::json!({"time_s": time_s, "pause_ms": gc.pause_ns as f64 / 1e6});
        let _ = writeln!(out, "{}", json_line("gc", gc, extra));
        return;
    }
    let heap = match (gc.heap_before, gc.heap_after) {
        (Some(b), Some(a)) => format!("{} → {}", megabytes(b), megabytes(a)),
        _ => "?".to_string(),
    };
    let thread = if gc.tid == pid {
        String::new()
    } else {
        format!("  [thread {}]", gc.tid)
    };
    let _ = writeln!(
        out,
        "{time_s:>8.3}s  {:<26} {:>6.2} ms  {heap:>23}  {}{thread}",
        kind_label(gc),
        gc.pause_ns as f64 / 1e6,
        gc.reason.as_deref().unwrap_or("")
    );
}

fn print_leak(out: &mut dyn Write, json: bool, start_ns: u64, leak: &LeakSuspicion) {
    let time_s = leak.time_ns.saturating_sub(start_ns) as f64 / 1e9;
    if json {
        let _ = writeln!(
            out,
            "{}",
            json_line("leak", leak, serde_json::json!({"time_s": time_s}))
        );
        return;
    }
    let _ = writeln!(out, "{}", leak_line(time_s, leak));
}

/// One line of `--json` output: `{"type": TYPE, …value's fields, …extra}`.
pub fn json_line(ty: &str, value: &impl Serialize, extra: serde_json::Value) -> String {
    let mut object = match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    object.insert("type".into(), ty.into());
    if let serde_json::Value::Object(extra) = extra {
        object.extend(extra);
    }
    serde_json::Value::Object(object).to_string()
}

pub fn leak_line(time_s: f64, leak: &LeakSuspicion) -> String {
    format!(
        "{time_s:>8.3}s  LEAK SUSPECTED: heap after full GC grew {} consecutive times, {} → {} (+{}), about +{}/hour",
        leak.consecutive,
        megabytes(leak.heap_after_start),
        megabytes(leak.heap_after_now),
        human_bytes(leak.growth_bytes as f64),
        human_bytes(leak.rate_per_hour.max(0.0)),
    )
}

/// The end-of-run table, also printed by `record`.
pub fn summary_text(summary: &GcSummary) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "GC: {} collections in {:.1} s, paused {:.1} ms ({:.2}% of wall time)",
        summary.all.count, summary.duration_s, summary.all.total_ms, summary.paused_percent
    );
    if summary.all.count > 0 {
        let _ = writeln!(
            s,
            "  {:<18} {:>6} {:>10} {:>9} {:>9} {:>9} {:>9}",
            "kind", "count", "total ms", "mean", "p50", "p99", "max"
        );
        let mut row = |name: &str, p: &super::stats::PauseStats| {
            let _ = writeln!(
                s,
                "  {name:<18} {:>6} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                p.count, p.total_ms, p.mean_ms, p.p50_ms, p.p99_ms, p.max_ms
            );
        };
        for k in &summary.by_kind {
            row(k.kind.name(), &k.pauses);
        }
        row("all", &summary.all);
    }
    match &summary.heap_after_full_gc {
        Some(t) => {
            // Over seconds, the noise of heap-after extrapolated to an hour means nothing.
            let trend = if t.full_gcs >= 5 && t.span_s >= 30.0 {
                format!(
                    ", trend {}{}/hour",
                    if t.slope_per_hour < 0.0 { "" } else { "+" },
                    human_bytes(t.slope_per_hour)
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "  heap after full GC: {} → {} over {} full GCs (min {}, max {}){trend}",
                megabytes(t.first_bytes),
                megabytes(t.last_bytes),
                t.full_gcs,
                megabytes(t.min_bytes),
                megabytes(t.max_bytes),
            );
        }
        None => {
            let _ = writeln!(s, "  heap after full GC: no full GC seen");
        }
    }
    if summary.leak_suspicions > 0 {
        let _ = writeln!(s, "  leak suspected {} time(s)", summary.leak_suspicions);
    }
    if summary.lost_events > 0 {
        let _ = writeln!(
            s,
            "  {} probe events lost (buffer full): some GCs are missing",
            summary.lost_events
        );
    }
    s
}
