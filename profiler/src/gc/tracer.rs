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

use super::points::{reason_name, word, GcPoints, PauseTimes, Plan, Role, Semantics, TracerLayout};
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
                let reason = thread.pending_reason.take();
                thread.pause = (event.time_ns >= self.armed_ns).then(|| OpenPause {
                    start_ns: event.time_ns,
                    reason,
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
                    // Without the StartCycle of its cycle (not probed, or
                    // before attaching), a mark-compact's marking is unknown.
                    incremental: match (kind, cycle) {
                        (GcKind::MarkCompact, Some(c)) => Some(c.incremental),
                        (GcKind::MarkCompact, None) => None,
                        // Young GCs are never incremental.
                        _ => Some(false),
                    },
                    reason: pause
                        .reason
                        .or(cycle.and_then(|c| c.reason))
                        .map(reason_name),
                    heap_before: pause.first_size,
                    heap_after: pause.last_size,
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
                        (
                            ms_to_ns(event.words[word::START_MS]),
                            ms_to_ns(event.words[word::END_MS]),
                        )
                    }
                };
                let kind = layout
                    .types
                    .get(event.words[word::TYPE] as u32 as usize)
                    .copied()
                    .flatten();
                let reason = event.words[word::REASON] as u32;
                let (before, after) = (
                    event.words[word::SIZE_BEFORE],
                    event.words[word::SIZE_AFTER],
                );
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
                if start_ns < self.armed_ns {
                    return None;
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gc::points::{PauseTimes, Plan, TRACER_LAYOUTS};
    use crate::gc::GcPoints;
    use nodeprof_common::{CALL_VALUES, CALL_WORDS};

    fn points(plan: Plan) -> GcPoints {
        GcPoints {
            path: "/node".into(),
            version: crate::v8::V8Version::new(11, 3, 0, 0),
            semantics: &super::super::points::SEMANTICS[0],
            plan,
            sites: [
                Role::PauseStart,
                Role::PauseEnd,
                Role::CycleStart,
                Role::ObjectSizes,
                Role::CollectGarbage,
                Role::Record,
            ]
            .into_iter()
            .map(|role| super::super::points::ProbeSite {
                role,
                site: crate::probe::CallSite {
                    file_offset: 0,
                    at_return: false,
                    cookie: 0,
                    reads: None,
                },
                symbol: "",
            })
            .collect(),
            missing: Vec::new(),
        }
    }

    fn event(tid: u32, time_ns: u64, role: Role, values: &[u64], words: &[u64]) -> CallEvent {
        let mut e = CallEvent {
            time_ns,
            tgid: 1,
            tid,
            cookie: role.code(),
            values: [0; CALL_VALUES],
            words: [0; CALL_WORDS],
        };
        e.values[..values.len()].copy_from_slice(values);
        e.words[..words.len()].copy_from_slice(words);
        e
    }

    #[test]
    fn function_probes_make_one_gc_per_pause_per_thread() {
        let mut t = GcTracer::new(&points(Plan::Calls));
        t.arm(1_000);
        // A pause that started before arming is dropped.
        assert!(t.feed(&event(5, 900, Role::PauseStart, &[], &[])).is_none());
        assert!(t.feed(&event(5, 1_100, Role::PauseEnd, &[], &[])).is_none());
        let this = 0x1000;
        let steps = [
            event(5, 2_000, Role::CollectGarbage, &[this, 0, 1], &[]),
            event(5, 2_010, Role::PauseStart, &[this], &[]),
            // Another isolate's thread interleaves and does not mix in.
            event(6, 2_020, Role::CollectGarbage, &[this, 0, 18], &[]),
            event(5, 2_030, Role::Collector(GcKind::Scavenge), &[this], &[]),
            event(5, 2_040, Role::ObjectSizes, &[400], &[]),
            event(5, 2_050, Role::ObjectSizes, &[300], &[]),
            event(5, 2_060, Role::ObjectSizes, &[100], &[]),
        ];
        for e in &steps {
            assert!(t.feed(e).is_none());
        }
        let gc = t
            .feed(&event(5, 3_010, Role::PauseEnd, &[this], &[]))
            .unwrap();
        assert_eq!(gc.tid, 5);
        assert_eq!((gc.start_ns, gc.pause_ns), (2_010, 1_000));
        assert_eq!(gc.kind, GcKind::Scavenge);
        assert_eq!(gc.incremental, Some(false));
        assert_eq!(gc.reason.as_deref(), Some("allocation failure"));
        assert_eq!((gc.heap_before, gc.heap_after), (Some(400), Some(100)));
        // Incremental marking started by StartCycle long before the pause.
        t.feed(&event(5, 4_000, Role::CycleStart, &[this, 1, 2, 0, 1], &[]));
        t.feed(&event(5, 9_000, Role::CollectGarbage, &[this, 0, 9], &[]));
        t.feed(&event(5, 9_010, Role::PauseStart, &[this], &[]));
        t.feed(&event(
            5,
            9_020,
            Role::Collector(GcKind::MarkCompact),
            &[this],
            &[],
        ));
        let gc = t
            .feed(&event(5, 9_510, Role::PauseEnd, &[this], &[]))
            .unwrap();
        assert_eq!(gc.kind, GcKind::MarkCompact);
        assert_eq!(gc.incremental, Some(true));
        assert_eq!(
            gc.reason.as_deref(),
            Some("finalize incremental marking via task")
        );
    }

    #[test]
    fn the_record_gives_v8s_own_figures_and_rejects_garbage() {
        // V8 11.3: times are doubles (ms) in the record.
        let l11 = TRACER_LAYOUTS.iter().find(|l| l.v8 == (11, 3)).unwrap();
        assert!(matches!(l11.times, PauseTimes::Doubles { .. }));
        let mut t = GcTracer::new(&points(Plan::TracerRecord(l11)));
        t.arm(0);
        let ms = |v: f64| v.to_bits();
        let words = [2, 9, 5 << 20, 3 << 20, ms(1500.25), ms(1502.0)];
        let gc = t
            .feed(&event(7, 1_502_100_000, Role::Record, &[0x40], &words))
            .unwrap();
        assert_eq!(gc.kind, GcKind::MarkCompact);
        assert_eq!(gc.incremental, Some(true));
        assert_eq!(gc.start_ns, 1_500_250_000);
        assert_eq!(gc.pause_ns, 1_750_000);
        assert_eq!(
            gc.reason.as_deref(),
            Some("finalize incremental marking via task")
        );
        assert_eq!(
            (gc.heap_before, gc.heap_after),
            (Some(5 << 20), Some(3 << 20))
        );
        // A type V8 does not have, or an end before the start: not a GC.
        let bad_type = [77, 1, 0, 0, ms(1.0), ms(2.0)];
        assert!(t
            .feed(&event(7, 2_000_000, Role::Record, &[0x40], &bad_type))
            .is_none());
        let backwards = [0, 1, 0, 0, ms(5.0), ms(2.0)];
        assert!(t
            .feed(&event(7, 5_000_000, Role::Record, &[0x40], &backwards))
            .is_none());
        assert_eq!(t.invalid_records, 2);

        // V8 12+: start from StartObservablePause's argument, per tracer object.
        let l14 = TRACER_LAYOUTS.iter().find(|l| l.v8 == (14, 6)).unwrap();
        let mut t = GcTracer::new(&points(Plan::TracerRecord(l14)));
        t.arm(0);
        t.feed(&event(7, 10_000, Role::PauseStart, &[0xa, 1_000], &[]));
        t.feed(&event(8, 10_000, Role::PauseStart, &[0xb, 1_100], &[]));
        let gc = t
            .feed(&event(
                8,
                12_000,
                Role::Record,
                &[0xb, 0, 1_400],
                &[0, 1, 10, 5],
            ))
            .unwrap();
        assert_eq!((gc.start_ns, gc.pause_ns), (1_100_000, 300_000));
        assert_eq!(gc.kind, GcKind::Scavenge);
        let gc = t
            .feed(&event(
                7,
                12_000,
                Role::Record,
                &[0xa, 1, 1_900],
                &[1, 1, 10, 5],
            ))
            .unwrap();
        assert_eq!((gc.start_ns, gc.pause_ns), (1_000_000, 900_000));
        assert_eq!(
            (gc.kind, gc.incremental),
            (GcKind::MarkCompact, Some(false))
        );
    }
}
