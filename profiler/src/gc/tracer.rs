//! Turns the GC probes' call events into [`GcEvent`]s, one per pause.
//!
//! With [`Plan::TracerRecord`], the record probe carries V8's own figures
//! (kind, incremental or not, reason, sizes, and the start and end times V8
//! took); on V8 12+ the start time comes from the `StartObservablePause`
//! argument, kept per tracer object (each isolate has its own).
//!
//! With [`Plan::Calls`], per JS thread (each isolate GCs on its own thread): a pause opens at
//! `StartObservablePause` and closes at `StopObservablePause`. Inside it, the
//! collector function that runs gives the kind, and the first and last
//! `SizeOfObjects()` results the heap before and after (V8 asks for them when
//! the pause starts and ends, which is what `--trace-gc` prints). The reason
//! is the one `Heap::CollectGarbage` was called with just before the pause;
//! whether marking was incremental comes from the `StartCycle` of the cycle
//! the pause belongs to (for an incremental mark-compact, called when marking
//! started, long before the pause).
//!
//! Pauses that began before [`GcTracer::arm`] are dropped: probes attach one
//! by one, and a pause seen by half of them would be reported wrong.

use std::collections::HashMap;

use nodeprof_common::CallEvent;

use super::points::{reason_name, GcPoints, PauseTimes, Plan, Role, Semantics, TracerLayout};
use super::{GcEvent, GcKind};

#[derive(Debug, Default)]
struct OpenPause {
    start_ns: u64,
    reason: Option<u64>,
    kind: Option<GcKind>,
    first_size: Option<u64>,
    last_size: Option<u64>,
}

#[derive(Debug, Clone)]
struct Cycle {
    reason: Option<u64>,
    incremental: bool,
}

#[derive(Debug, Default)]
struct ThreadState {
    pause: Option<OpenPause>,
    /// The latest cycle started per collector kind (a young GC can run while
    /// an incremental full cycle is in progress).
    cycles: HashMap<GcKind, Cycle>,
    /// Kind of the latest cycle started, for a pause whose collector function
    /// could not be probed.
    last_cycle_kind: Option<GcKind>,
    /// Reason of the latest `CollectGarbage` call, for the pause it leads to.
    pending_reason: Option<u64>,
}

pub struct GcTracer {
    semantics: &'static Semantics,
    layout: Option<&'static TracerLayout>,
    /// V8 12+: pause start (µs) per GCTracer object.
    starts_us: HashMap<u64, u64>,
    /// Records whose fields failed the sanity checks (a layout mismatch).
    pub invalid_records: u64,
    knows_cycles: bool,
    knows_sizes: bool,
    /// Pauses starting before this (all probes attached) are dropped.
    armed_ns: u64,
    threads: HashMap<u32, ThreadState>,
}

impl GcTracer {
    pub fn new(points: &GcPoints) -> GcTracer {
        GcTracer {
            semantics: points.semantics,
            layout: match points.plan {
                Plan::TracerRecord(layout) => Some(layout),
                Plan::Calls => None,
            },
            starts_us: HashMap::new(),
            invalid_records: 0,
            knows_cycles: points.has(Role::CycleStart),
            knows_sizes: points.has(Role::ObjectSizes),
            armed_ns: u64::MAX,
            threads: HashMap::new(),
        }
    }

    /// Every probe is attached as of `time_ns` (CLOCK_MONOTONIC).
    pub fn arm(&mut self, time_ns: u64) {
        self.armed_ns = time_ns;
    }

    /// Feeds one event, in kernel order; returns the GC whose pause it ends.
    pub fn feed(&mut self, event: &CallEvent) -> Option<GcEvent> {
        let role = Role::from_cookie(event.cookie)?;
        if let Some(layout) = self.layout {
            return self.feed_record(layout, role, event);
        }
        let thread = self.threads.entry(event.tid).or_default();
        match role {
            Role::CollectGarbage => {
                thread.pending_reason = Some(event.values[self.semantics.collect_reason_arg]);
                None
            }
            Role::PauseStart => {
                thread.pause = (event.time_ns >= self.armed_ns).then(|| OpenPause {
                    start_ns: event.time_ns,
                    reason: thread.pending_reason.take(),
                    ..OpenPause::default()
                });
                None
            }
            Role::Collector(kind) => {
                if let Some(pause) = &mut thread.pause {
                    pause.kind = Some(kind);
                }
                None
            }
            Role::ObjectSizes => {
                if let Some(pause) = &mut thread.pause {
                    let size = event.values[0];
                    pause.first_size.get_or_insert(size);
                    pause.last_size = Some(size);
                }
                None
            }
            Role::CycleStart => {
                let s = self.semantics;
                let kind = s
                    .collectors
                    .get(event.values[s.cycle_collector_arg] as usize)
                    .copied();
                if let Some(kind) = kind {
                    thread.cycles.insert(
                        kind,
                        Cycle {
                            reason: Some(event.values[s.cycle_reason_arg]),
                            incremental: event.values[s.cycle_marking_arg] == s.incremental_marking,
                        },
                    );
                    thread.last_cycle_kind = Some(kind);
                }
                None
            }
            Role::Record => None,
            Role::PauseEnd => {
                let pause = thread.pause.take()?;
                let kind = pause.kind.or(thread.last_cycle_kind)?;
                let cycle = thread.cycles.get(&kind);
                Some(GcEvent {
                    tid: event.tid,
                    start_ns: pause.start_ns,
                    pause_ns: event.time_ns.saturating_sub(pause.start_ns),
                    kind,
                    incremental: match (kind, self.knows_cycles, cycle) {
                        (GcKind::MarkCompact, true, Some(c)) => Some(c.incremental),
                        (GcKind::MarkCompact, _, _) => None,
                        // Young GCs are never incremental.
                        _ => Some(false),
                    },
                    reason: pause
                        .reason
                        .or(cycle.and_then(|c| c.reason))
                        .map(reason_name),
                    heap_before: pause.first_size.filter(|_| self.knows_sizes),
                    heap_after: pause.last_size.filter(|_| self.knows_sizes),
                })
            }
        }
    }

    fn feed_record(
        &mut self,
        layout: &TracerLayout,
        role: Role,
        event: &CallEvent,
    ) -> Option<GcEvent> {
        let tracer_object = event.values[0];
        match role {
            Role::PauseStart => {
                if event.time_ns >= self.armed_ns {
                    self.starts_us.insert(tracer_object, event.values[1]);
                }
                None
            }
            Role::Record => {
                let (start_ns, end_ns) = match layout.times {
                    PauseTimes::Arguments => {
                        let start_us = self.starts_us.remove(&tracer_object)?;
                        (
                            start_us.saturating_mul(1000),
                            event.values[2].saturating_mul(1000),
                        )
                    }
                    PauseTimes::Doubles { .. } => {
                        let ms_to_ns = |word: u64| (f64::from_bits(word) * 1e6) as u64;
                        (ms_to_ns(event.words[4]), ms_to_ns(event.words[5]))
                    }
                };
                if start_ns < self.armed_ns {
                    return None;
                }
                let kind = layout
                    .types
                    .get(event.words[0] as u32 as usize)
                    .copied()
                    .flatten();
                let reason = event.words[1] as u32;
                let (before, after) = (event.words[2], event.words[3]);
                // A wrong layout reads garbage: drop what cannot be a pause
                // rather than report it.
                const MAX_PAUSE_NS: u64 = 600 * 1_000_000_000;
                const MAX_HEAP: u64 = 1 << 44;
                let sane = end_ns >= start_ns
                    && end_ns - start_ns < MAX_PAUSE_NS
                    && event.time_ns.abs_diff(end_ns) < MAX_PAUSE_NS
                    && reason < 256
                    && before < MAX_HEAP
                    && after < MAX_HEAP;
                let (Some((kind, incremental)), true) = (kind, sane) else {
                    self.invalid_records += 1;
                    return None;
                };
                Some(GcEvent {
                    tid: event.tid,
                    start_ns,
                    pause_ns: end_ns - start_ns,
                    kind,
                    incremental: Some(incremental),
                    reason: Some(reason_name(u64::from(reason))),
                    heap_before: Some(before),
                    heap_after: Some(after),
                })
            }
            _ => None,
        }
    }
}
