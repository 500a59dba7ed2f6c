//! `nodeprof gc -p PID`: one line per GC as it happens, leak suspicions when
//! they arise, and a summary at the end.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use serde::Serialize;

use crate::capture::{StopReason, Stopper};
use crate::clock::monotonic_ns;
use crate::gc::{
    human_bytes, leak, megabytes, GcError, GcEvent, GcProbes, GcSummary, LeakDetector,
    LeakSuspicion,
};
use crate::output::Report;
use crate::probe::{self, Probe, Purpose};
use crate::target::Target;

#[derive(Debug, Clone)]
pub struct GcOptions {
    pub pid: u32,
    pub duration: Option<Duration>,
    /// JSON lines instead of text.
    pub json: bool,
    /// Consecutive growing full GCs that raise a leak suspicion.
    pub leak_threshold: u32,
}

pub struct GcReport {
    pub events: Vec<GcEvent>,
    pub leaks: Vec<LeakSuspicion>,
    pub summary: GcSummary,
    pub stop: StopReason,
}

/// `nodeprof gc`: traces GCs until the duration, Ctrl-C, SIGTERM or the
/// target's exit, writing each GC and leak suspicion to `out` as it happens,
/// then the summary.
pub fn run(options: &GcOptions, out: &mut dyn Write) -> Result<GcReport, GcError> {
    let report = trace(options, out)?;
    let written = if options.json {
        writeln!(
            out,
            "{}",
            json_line(
                "summary",
                &report.summary,
                serde_json::json!({ "stopped": report.stop.describe() })
            )
        )
    } else {
        // Why the trace ended: a target that died ends it too.
        writeln!(out, "\nstopped: {}", report.stop.describe())
            .and_then(|()| report.summary.write_text(out))
    };
    // A reader that went away (`| head`) ended the trace already.
    match written.and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(GcError::Io {
            action: "write the summary",
            source: e,
        }),
        _ => Ok(report),
    }
}

/// Traces GCs, writing each GC and leak suspicion to `out` as it happens.
pub fn trace(options: &GcOptions, out: &mut dyn Write) -> Result<GcReport, GcError> {
    probe::check_permissions(probe::UPROBES)?;
    let target = Target::inspect(options.pid)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| GcError::Io {
            action: "start the event loop",
            source,
        })?;
    let report = runtime.block_on(trace_async(options, &target, out));
    drop(runtime);
    crate::capture::signals_after_stop();
    report
}

async fn trace_async(
    options: &GcOptions,
    target: &Target,
    out: &mut dyn Write,
) -> Result<GcReport, GcError> {
    // First: a signal while the probes attach ends the trace at its start.
    let mut stopper = Stopper::new(options.duration).map_err(|source| GcError::Io {
        action: "install the signal handlers",
        source,
    })?;
    let mut probe = Probe::load_with(Purpose::Tracing)?;
    let mut probes = GcProbes::attach(&mut probe, target).map_err(|e| {
        // Attaching to a process that is gone fails in perf_event_open: say what happened.
        if target.is_alive() {
            e
        } else {
            GcError::Target(crate::target::TargetError::Exited(target.pid))
        }
    })?;
    for missing in &probes.points.missing {
        tracing::warn!("{missing}");
    }
    let start_ns = monotonic_ns();
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
    // Each isolate has its own heap: one detector per JS thread.
    let mut detectors: HashMap<u32, LeakDetector> = HashMap::new();
    let mut events = Vec::new();
    let mut leaks = Vec::new();
    stopper.restart_clock();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut warned_invalid = false;
    let mut absorb = |probes: &mut GcProbes, out: &mut dyn Write| -> std::io::Result<()> {
        for gc in probes.drain(target.pid) {
            print_event(out, options.json, start_ns, target.pid, &gc)?;
            let detector = detectors.entry(gc.tid).or_insert_with(|| {
                LeakDetector::new(options.leak_threshold, leak::DEFAULT_NOISE_FLOOR_BYTES)
            });
            if let Some(leak) = detector.observe(&gc) {
                print_leak(out, options.json, start_ns, target.pid, &leak)?;
                leaks.push(leak);
            }
            events.push(gc);
        }
        if probes.tracer.invalid_records > 0 && !warned_invalid {
            warned_invalid = true;
            tracing::warn!(
                "a GC record of V8 {} did not pass the layout checks: this build's GCTracer \
                 differs from the one nodeprof knows; NODEPROF_GC_PLAN=calls traces without it",
                probes.points.version
            );
        }
        out.flush()
    };
    let mut stop = loop {
        tokio::select! {
            reason = stopper.signalled() => break reason,
            _ = tick.tick() => {
                if absorb(&mut probes, out).is_err() {
                    break StopReason::OutputClosed;
                }
                if let Some(reason) = stopper.due(target) {
                    break reason;
                }
            }
        }
    };
    if absorb(&mut probes, out).is_err() {
        stop = StopReason::OutputClosed;
    }
    let invalid_records = probes.tracer.invalid_records;
    let lost = probe.lost_calls();
    drop(probes);
    drop(probe);
    let mut summary = GcSummary::of(&events, (start_ns, monotonic_ns()), leaks.len(), lost);
    summary.invalid_records = invalid_records;
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

fn print_event(
    out: &mut dyn Write,
    json: bool,
    start_ns: u64,
    pid: u32,
    gc: &GcEvent,
) -> std::io::Result<()> {
    let time_s = gc.start_ns.saturating_sub(start_ns) as f64 / 1e9;
    if json {
        let extra = serde_json::json!({"time_s": time_s, "pause_ms": gc.pause_ns as f64 / 1e6});
        return writeln!(out, "{}", json_line("gc", gc, extra));
    }
    let heap = match (gc.heap_before, gc.heap_after) {
        (Some(b), Some(a)) => format!("{} → {}", megabytes(b), megabytes(a)),
        _ => "?".to_string(),
    };
    writeln!(
        out,
        "{time_s:>8.3}s  {:<26} {:>6.2} ms  {heap:>23}  {}{}",
        kind_label(gc),
        gc.pause_ns as f64 / 1e6,
        gc.reason.as_deref().unwrap_or(""),
        thread_suffix(gc.tid, pid)
    )
}

/// GCs of a Worker isolate name its thread; the main thread's need not.
fn thread_suffix(tid: u32, pid: u32) -> String {
    if tid == pid {
        String::new()
    } else {
        format!("  [thread {tid}]")
    }
}

fn print_leak(
    out: &mut dyn Write,
    json: bool,
    start_ns: u64,
    pid: u32,
    leak: &LeakSuspicion,
) -> std::io::Result<()> {
    let time_s = leak.time_ns.saturating_sub(start_ns) as f64 / 1e9;
    if json {
        let extra = serde_json::json!({ "time_s": time_s });
        return writeln!(out, "{}", json_line("leak", leak, extra));
    }
    writeln!(
        out,
        "{}{}",
        leak_line(time_s, leak),
        thread_suffix(leak.tid, pid)
    )
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
    use crate::gc::leak::Signal;
    let how = match leak.signal {
        Signal::Steps => format!(
            "heap after full GC grew {} consecutive times",
            leak.consecutive
        ),
        Signal::Doubling => format!(
            "heap after full GC grew {} consecutive times, doubling",
            leak.consecutive
        ),
        Signal::Floor => format!(
            "lowest heap after full GC rose past the earlier peak {} times in a row",
            leak.consecutive
        ),
    };
    format!(
        "{time_s:>8.3}s  LEAK SUSPECTED: {how}, {} → {} (+{}), about +{}/hour",
        megabytes(leak.heap_after_start),
        megabytes(leak.heap_after_now),
        human_bytes(leak.growth_bytes as f64),
        human_bytes(leak.rate_per_hour.max(0.0)),
    )
}
