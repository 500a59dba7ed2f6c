//! What a run of GCs adds up to: counts per kind, pause statistics, the
//! share of wall time spent paused, and the trend of the heap left after
//! full GCs.

use serde::Serialize;

use std::io::Write;

use super::{human_bytes, megabytes, GcEvent, GcKind};
use crate::output::Report;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PauseStats {
    pub count: usize,
    pub total_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl PauseStats {
    pub fn of(pauses_ns: &mut [u64]) -> PauseStats {
        pauses_ns.sort_unstable();
        let ms = |ns: u64| ns as f64 / 1e6;
        let total: u64 = pauses_ns.iter().sum();
        let count = pauses_ns.len();
        PauseStats {
            count,
            total_ms: ms(total),
            mean_ms: if count == 0 {
                0.0
            } else {
                ms(total) / count as f64
            },
            p50_ms: ms(percentile(pauses_ns, 50.0)),
            p99_ms: ms(percentile(pauses_ns, 99.0)),
            max_ms: ms(pauses_ns.last().copied().unwrap_or(0)),
        }
    }
}

/// Nearest-rank percentile of sorted values (0 when empty).
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindStats {
    pub kind: GcKind,
    pub pauses: PauseStats,
}

/// Heap left after full GCs over the run, of one isolate (its JS thread).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeapTrend {
    pub tid: u32,
    pub full_gcs: usize,
    pub first_bytes: u64,
    pub last_bytes: u64,
    pub min_bytes: u64,
    pub max_bytes: u64,
    /// Least-squares slope of heap-after against time, bytes per hour.
    pub slope_per_hour: f64,
    /// Time between the first and the last full GC, seconds.
    pub span_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GcSummary {
    pub duration_s: f64,
    pub all: PauseStats,
    pub by_kind: Vec<KindStats>,
    /// Share of wall time the JS threads were paused, 0–100 (pauses of all
    /// isolates summed: several busy worker isolates can exceed one thread's time).
    pub paused_percent: f64,
    /// Per isolate (JS thread) with full GCs, in thread id order.
    pub heap_after_full_gc: Vec<HeapTrend>,
    pub leak_suspicions: usize,
    /// Call events the kernel dropped (a full buffer): GCs may be missing.
    pub lost_events: u64,
    /// V8 records that failed the sanity checks (a layout this build does not have).
    pub invalid_records: u64,
}

impl GcSummary {
    /// The GCs of a trace over the window `(start_ns, end_ns)`, widened to
    /// every pause in `events`: a GC caught between attaching the probes and
    /// the window's start still lies within the time the share is taken of.
    pub fn of(
        events: &[GcEvent],
        window_ns: (u64, u64),
        leak_suspicions: usize,
        lost_events: u64,
    ) -> GcSummary {
        let start = events
            .iter()
            .map(|e| e.start_ns)
            .fold(window_ns.0, u64::min);
        let end = events
            .iter()
            .map(GcEvent::end_ns)
            .fold(window_ns.1, u64::max);
        let duration_s = end.saturating_sub(start) as f64 / 1e9;
        let mut all: Vec<u64> = events.iter().map(|e| e.pause_ns).collect();
        let by_kind = GcKind::ALL
            .iter()
            .filter_map(|&kind| {
                let mut pauses: Vec<u64> = events
                    .iter()
                    .filter(|e| e.kind == kind)
                    .map(|e| e.pause_ns)
                    .collect();
                (!pauses.is_empty()).then(|| KindStats {
                    kind,
                    pauses: PauseStats::of(&mut pauses),
                })
            })
            .collect();
        let all = PauseStats::of(&mut all);
        let paused_percent = if duration_s > 0.0 {
            all.total_ms / 1e3 / duration_s * 100.0
        } else {
            0.0
        };
        GcSummary {
            duration_s,
            all,
            by_kind,
            paused_percent,
            heap_after_full_gc: HeapTrend::per_thread(events),
            leak_suspicions,
            lost_events,
            invalid_records: 0,
        }
    }
}

impl HeapTrend {
    fn per_thread(events: &[GcEvent]) -> Vec<HeapTrend> {
        let mut tids: Vec<u32> = events.iter().map(|e| e.tid).collect();
        tids.sort_unstable();
        tids.dedup();
        tids.into_iter()
            .filter_map(|tid| HeapTrend::of(tid, events))
            .collect()
    }

    fn of(tid: u32, events: &[GcEvent]) -> Option<HeapTrend> {
        let points: Vec<(f64, f64)> = events
            .iter()
            .filter(|e| e.tid == tid && e.kind.is_full())
            .filter_map(|e| Some((e.end_ns() as f64 / 3.6e12, e.heap_after? as f64)))
            .collect();
        let first = points.first()?;
        let last = points.last()?;
        let n = points.len() as f64;
        let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
        let mean_h = points.iter().map(|p| p.1).sum::<f64>() / n;
        let var_t: f64 = points.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
        let cov: f64 = points.iter().map(|p| (p.0 - mean_t) * (p.1 - mean_h)).sum();
        Some(HeapTrend {
            tid,
            full_gcs: points.len(),
            first_bytes: first.1 as u64,
            last_bytes: last.1 as u64,
            min_bytes: points.iter().map(|p| p.1 as u64).min().unwrap_or(0),
            max_bytes: points.iter().map(|p| p.1 as u64).max().unwrap_or(0),
            slope_per_hour: if var_t > 0.0 { cov / var_t } else { 0.0 },
            span_s: (last.0 - first.0) * 3600.0,
        })
    }
}

/// The end-of-run table of `gc`, also printed by `record`.
impl Report for GcSummary {
    fn write_text(&self, s: &mut dyn Write) -> std::io::Result<()> {
        let summary = self;
        writeln!(
            s,
            "GC: {} collections in {:.1} s, paused {:.1} ms ({:.2}% of wall time)",
            summary.all.count, summary.duration_s, summary.all.total_ms, summary.paused_percent
        )?;
        if summary.all.count > 0 {
            writeln!(
                s,
                "  {:<18} {:>6} {:>10} {:>9} {:>9} {:>9} {:>9}",
                "kind", "count", "total ms", "mean", "p50", "p99", "max"
            )?;
            let mut row = |name: &str, p: &PauseStats| -> std::io::Result<()> {
                writeln!(
                    s,
                    "  {name:<18} {:>6} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                    p.count, p.total_ms, p.mean_ms, p.p50_ms, p.p99_ms, p.max_ms
                )
            };
            for k in &summary.by_kind {
                row(k.kind.name(), &k.pauses)?;
            }
            row("all", &summary.all)?;
        }
        if summary.heap_after_full_gc.is_empty() {
            writeln!(s, "  heap after full GC: no full GC seen")?;
        }
        let several = summary.heap_after_full_gc.len() > 1;
        for t in &summary.heap_after_full_gc {
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
            let thread = if several {
                format!(" (thread {})", t.tid)
            } else {
                String::new()
            };
            writeln!(
                s,
                "  heap after full GC{thread}: {} → {} over {} full GCs (min {}, max {}){trend}",
                megabytes(t.first_bytes),
                megabytes(t.last_bytes),
                t.full_gcs,
                megabytes(t.min_bytes),
                megabytes(t.max_bytes),
            )?;
        }
        if summary.leak_suspicions > 0 {
            writeln!(s, "  leak suspected {} time(s)", summary.leak_suspicions)?;
        }
        if summary.invalid_records > 0 {
            writeln!(
                s,
                "  {} GC records failed the layout checks and were left out",
                summary.invalid_records
            )?;
        }
        if summary.lost_events > 0 {
            writeln!(
                s,
                "  {} probe events lost (buffer full): some GCs are missing",
                summary.lost_events
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GCs between attach and the first sample of a short recording: the
    /// paused share is of a window that holds them, never over 100 %.
    #[test]
    fn the_window_holds_every_pause() {
        let gc = |start_ns: u64, pause_ns: u64| GcEvent {
            tid: 1,
            start_ns,
            pause_ns,
            kind: GcKind::Scavenge,
            incremental: None,
            reason: None,
            heap_before: None,
            heap_after: None,
        };
        let events: Vec<GcEvent> = (0..7)
            .map(|i| gc(1_000_000 + i * 400_000, 330_000))
            .collect();
        // The window opens after the GCs (3.8 ms in) and lasts 76 µs.
        let s = GcSummary::of(&events, (3_824_000, 3_900_000), 0, 0);
        assert!(s.paused_percent <= 100.0, "{}", s.paused_percent);
        assert!((s.duration_s - 0.0029).abs() < 1e-6, "{}", s.duration_s);
    }

    fn gc(kind: GcKind, start_s: f64, pause_ms: f64, after: Option<u64>) -> GcEvent {
        GcEvent {
            tid: 7,
            start_ns: (start_s * 1e9) as u64,
            pause_ns: (pause_ms * 1e6) as u64,
            kind,
            incremental: None,
            reason: None,
            heap_before: None,
            heap_after: after,
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        let s = PauseStats::of(&mut v);
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_ms, 50e-6);
        assert_eq!(s.p99_ms, 99e-6);
        assert_eq!(s.max_ms, 100e-6);
        assert!((s.mean_ms - 50.5e-6).abs() < 1e-12);
        let empty = PauseStats::of(&mut []);
        assert_eq!((empty.count, empty.p99_ms, empty.mean_ms), (0, 0.0, 0.0));
        assert_eq!(PauseStats::of(&mut [5_000_000]).p50_ms, 5.0);
    }

    #[test]
    fn summary_counts_kinds_share_and_trend() {
        let events = [
            gc(GcKind::Scavenge, 0.0, 1.0, Some(1)),
            gc(GcKind::Scavenge, 1.0, 3.0, Some(1)),
            gc(GcKind::MarkCompact, 2.0, 10.0, Some(100)),
            gc(GcKind::Scavenge, 3.0, 2.0, Some(1)),
            gc(GcKind::MarkCompact, 5.0, 20.0, Some(160)),
            gc(GcKind::MarkCompact, 8.0, 30.0, None),
        ];
        let s = GcSummary::of(&events, (0, 10_000_000_000), 0, 0);
        assert_eq!(s.all.count, 6);
        assert!((s.all.total_ms - 66.0).abs() < 1e-9);
        assert!((s.paused_percent - 0.66).abs() < 1e-9);
        assert_eq!(s.by_kind.len(), 2);
        assert_eq!(s.by_kind[0].kind, GcKind::Scavenge);
        assert_eq!(s.by_kind[0].pauses.count, 3);
        assert_eq!(s.by_kind[0].pauses.max_ms, 3.0);
        assert_eq!(s.by_kind[1].pauses.count, 3);
        assert_eq!(s.heap_after_full_gc.len(), 1);
        let trend = &s.heap_after_full_gc[0];
        assert_eq!(trend.full_gcs, 2);
        assert_eq!((trend.first_bytes, trend.last_bytes), (100, 160));
        // 60 bytes between the ends of the pauses (2.010 s, 5.020 s).
        let expected = 60.0 / 3.01 * 3600.0;
        assert!(
            (trend.slope_per_hour - expected).abs() < 1.0,
            "{}",
            trend.slope_per_hour
        );
    }
}
