//! V8 garbage-collection tracing from outside the process, with uprobes on
//! V8's own GC functions in the node binary (no flag, no module in the target).
//!
//! - [`points`]: which functions to probe, found by symbol in the binary and
//!   chosen by the V8 version read from it; what is missing is said, not guessed.
//! - [`tracer`]: turns the probes' raw call events into [`GcEvent`]s.
//! - [`probes`]: finds, attaches and drains them for one target.
//! - [`leak`]: the leak signal over heap-after-full-GC figures.
//! - [`stats`]: counts, pause statistics, paused share, heap trend.

pub mod leak;
pub mod points;
pub mod probes;
pub mod stats;
pub mod tracer;

use std::fmt;

use serde::Serialize;

pub use leak::{LeakDetector, LeakSuspicion};
pub use points::{GcPoints, PointsError};
pub use probes::{GcFleet, GcProbes};
pub use stats::GcSummary;
pub use tracer::GcTracer;

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Target(#[from] crate::target::TargetError),
    #[error(transparent)]
    Probe(#[from] crate::probe::ProbeError),
    #[error(transparent)]
    Points(#[from] PointsError),
    #[error("cannot {action}: {source}")]
    Io {
        action: &'static str,
        source: std::io::Error,
    },
}

/// The collector V8 ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GcKind {
    /// Young generation, copying (V8's default minor GC).
    Scavenge,
    /// Young generation, mark-sweep (`--minor-ms`, default in some V8 builds).
    MinorMarkSweep,
    /// Full GC of the whole heap.
    MarkCompact,
}

impl GcKind {
    pub const ALL: [GcKind; 3] = [
        GcKind::Scavenge,
        GcKind::MinorMarkSweep,
        GcKind::MarkCompact,
    ];

    /// Whether this GC collects the whole heap: only then does the heap it
    /// leaves tell what the program holds.
    pub fn is_full(self) -> bool {
        self == GcKind::MarkCompact
    }

    pub fn name(self) -> &'static str {
        match self {
            GcKind::Scavenge => "scavenge",
            GcKind::MinorMarkSweep => "minor mark-sweep",
            GcKind::MarkCompact => "mark-compact",
        }
    }
}

impl fmt::Display for GcKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One garbage collection's pause, as the target's V8 ran it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GcEvent {
    /// The thread that paused (the isolate's JS thread: main or a worker).
    pub tid: u32,
    /// Start of the pause, CLOCK_MONOTONIC ns (the samples' clock).
    pub start_ns: u64,
    pub pause_ns: u64,
    pub kind: GcKind,
    /// Whether marking ran incrementally before this pause (mark-compact), when known.
    pub incremental: Option<bool>,
    /// V8's reason (`allocation failure`, `finalize incremental marking via task`…), when known.
    pub reason: Option<String>,
    /// Size of live objects before and after, bytes (what `--trace-gc` prints in MB).
    pub heap_before: Option<u64>,
    pub heap_after: Option<u64>,
}

impl GcEvent {
    pub fn end_ns(&self) -> u64 {
        self.start_ns + self.pause_ns
    }
}

/// Bytes as `--trace-gc` shows them: MB with one decimal.
pub fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / (1024.0 * 1024.0))
}

/// Bytes in the unit that keeps the number short: 512 KB, 3.4 MB, 1.2 GB.
pub fn human_bytes(bytes: f64) -> String {
    const KB: f64 = 1024.0;
    match bytes.abs() {
        b if b >= KB * KB * KB => format!("{:.1} GB", bytes / (KB * KB * KB)),
        b if b >= KB * KB => format!("{:.1} MB", bytes / (KB * KB)),
        b if b >= KB => format!("{:.0} KB", bytes / KB),
        _ => format!("{bytes:.0} B"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_bytes_picks_the_unit() {
        use super::human_bytes;
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(300.0 * 1024.0), "300 KB");
        assert_eq!(human_bytes(3.4 * 1024.0 * 1024.0), "3.4 MB");
        assert_eq!(human_bytes(226_212.8 * 1024.0 * 1024.0), "220.9 GB");
        assert_eq!(human_bytes(-2.0 * 1024.0 * 1024.0), "-2.0 MB");
    }
}
