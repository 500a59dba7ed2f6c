//! The leak signal, memwatch's idea done right: compare the heap left after
//! each *full* GC (mark-compact) with the one before. Young GCs say nothing
//! about leaks, and the heap between GCs is a sawtooth whatever the program
//! does; what survives a full GC is what the program still holds.
//!
//! `threshold` consecutive increases raise a suspicion; any full GC that does
//! not grow the heap resets the count. An increase smaller than the noise
//! floor (V8's own bookkeeping moves the figure by a few KB between full GCs
//! of a steady program) does not count as growth, and does not reset either.
//!
//! One more condition keeps a steady server quiet: the heap must also end
//! above every level of the full GCs just before the run. The heap-after of a
//! steady server is noisy (what incremental marking allocated survives its
//! cycle), and a run of increases from a dip back to the usual peak happens
//! by chance (1 in 720 for 5 increases of pure noise); a leak climbs past it.
//! Until `threshold` full GCs give that level, a run needs twice as many
//! increases (1 in 40 million for noise).

use std::collections::VecDeque;

use super::GcEvent;

/// Growth below this between two full GCs is noise, not a trend.
pub const DEFAULT_NOISE_FLOOR_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LeakSuspicion {
    /// The isolate's JS thread.
    pub tid: u32,
    /// CLOCK_MONOTONIC ns of the full GC that raised it.
    pub time_ns: u64,
    /// Consecutive growing full GCs so far.
    pub consecutive: u32,
    /// Heap after the full GC where the growth began, and now.
    pub heap_after_start: u64,
    pub heap_after_now: u64,
    /// Growth over the run of increases.
    pub growth_bytes: u64,
    /// Growth rate over the run, bytes per hour.
    pub rate_per_hour: f64,
}

#[derive(Debug, Clone)]
pub struct LeakDetector {
    threshold: u32,
    noise_floor: u64,
    /// Time and heap-after of the last full GC.
    last: Option<(u64, u64)>,
    /// Where the current run of increases began (the full GC before the first increase).
    run_start: Option<(u64, u64)>,
    consecutive: u32,
    /// Heap-after of the latest full GCs, newest last.
    recent: VecDeque<u64>,
    /// Highest of `recent` when the current run began.
    peak_before_run: u64,
    /// How many full GCs `recent` held when the current run began.
    history_before_run: usize,
}

impl LeakDetector {
    pub fn new(threshold: u32, noise_floor: u64) -> LeakDetector {
        LeakDetector {
            threshold: threshold.max(1),
            noise_floor,
            last: None,
            run_start: None,
            consecutive: 0,
            recent: VecDeque::new(),
            peak_before_run: 0,
            history_before_run: 0,
        }
    }

    /// How many recent full GCs set the level a leak must climb past.
    fn window(&self) -> usize {
        4 * self.threshold as usize
    }

    /// Feeds one GC; returns a suspicion when this one completes `threshold`
    /// (or a further multiple of it) consecutive increases.
    pub fn observe(&mut self, gc: &GcEvent) -> Option<LeakSuspicion> {
        if !gc.kind.is_full() {
            return None;
        }
        let after = gc.heap_after?;
        let now = gc.end_ns();
        let previous = self.last.replace((now, after));
        let peak = self.recent.iter().copied().max().unwrap_or(0);
        let history = self.recent.len();
        self.recent.push_back(after);
        if self.recent.len() > self.window() {
            self.recent.pop_front();
        }
        let (last_time, last_after) = previous?;
        if after > last_after.saturating_add(self.noise_floor) {
            if self.consecutive == 0 {
                self.run_start = Some((last_time, last_after));
                self.peak_before_run = peak;
                self.history_before_run = history;
            }
            self.consecutive += 1;
        } else if after <= last_after {
            self.consecutive = 0;
            self.run_start = None;
            return None;
        } else {
            // Within the noise floor: neither growth nor a reset.
            return None;
        }
        // Without `threshold` full GCs of history there is no level to climb
        // past: ask for twice the evidence instead.
        let enough = self.history_before_run >= self.threshold as usize
            || self.consecutive >= 2 * self.threshold;
        if !self.consecutive.is_multiple_of(self.threshold)
            || after <= self.peak_before_run
            || !enough
        {
            return None;
        }
        let (start_time, start_after) = self.run_start?;
        let growth = after - start_after;
        let hours = (now.saturating_sub(start_time)) as f64 / 3.6e12;
        Some(LeakSuspicion {
            tid: gc.tid,
            time_ns: now,
            consecutive: self.consecutive,
            heap_after_start: start_after,
            heap_after_now: after,
            growth_bytes: growth,
            rate_per_hour: if hours > 0.0 {
                growth as f64 / hours
            } else {
                0.0
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gc::GcKind;

    fn gc(kind: GcKind, second: u64, after: u64) -> GcEvent {
        GcEvent {
            tid: 1,
            start_ns: second * 1_000_000_000,
            pause_ns: 1_000_000,
            kind,
            incremental: None,
            reason: None,
            heap_before: Some(after * 2),
            heap_after: Some(after),
        }
    }

    const MB: u64 = 1 << 20;

    #[test]
    fn five_growing_full_gcs_raise_it_with_growth_and_rate() {
        let mut d = LeakDetector::new(5, DEFAULT_NOISE_FLOOR_BYTES);
        // Five level full GCs first: the history a run must climb past.
        for i in 0..5 {
            assert_eq!(d.observe(&gc(GcKind::MarkCompact, i, 10 * MB)), None);
        }
        let mut raised = Vec::new();
        for i in 0..=5 {
            raised.extend(d.observe(&gc(GcKind::MarkCompact, 10 + 10 * i, 10 * MB + i * MB)));
        }
        assert_eq!(raised.len(), 1);
        let s = &raised[0];
        assert_eq!(s.consecutive, 5);
        assert_eq!(s.heap_after_start, 10 * MB);
        assert_eq!(s.heap_after_now, 15 * MB);
        assert_eq!(s.growth_bytes, 5 * MB);
        // 5 MB in 50 s (between the ends of the two pauses): 360 MB per hour.
        let expected = 5.0 * MB as f64 * 3600.0 / 50.0;
        assert!((s.rate_per_hour - expected).abs() < expected * 1e-6);
        // It fires again after five more increases, with the growth of the whole run.
        for i in 6..=10 {
            raised.extend(d.observe(&gc(GcKind::MarkCompact, 10 + 10 * i, 10 * MB + i * MB)));
        }
        assert_eq!(raised.len(), 2);
        assert_eq!(raised[1].growth_bytes, 10 * MB);
    }

    #[test]
    fn a_drop_resets_and_young_gcs_do_not_count() {
        let mut d = LeakDetector::new(5, DEFAULT_NOISE_FLOOR_BYTES);
        let afters = [10, 11, 12, 13, 14, 9, 10, 11, 12, 13];
        for (i, a) in afters.iter().enumerate() {
            assert_eq!(
                d.observe(&gc(GcKind::MarkCompact, i as u64, a * MB)),
                None,
                "{i}"
            );
            // Young GCs in between with a growing figure change nothing.
            assert_eq!(
                d.observe(&gc(GcKind::Scavenge, i as u64, (20 + i as u64) * MB)),
                None
            );
        }
        // Five increases from 9 MB, but 14 MB is no higher than before the run.
        assert!(d.observe(&gc(GcKind::MarkCompact, 11, 14 * MB)).is_none());
        let mut d = LeakDetector::new(5, DEFAULT_NOISE_FLOOR_BYTES);
        for (i, a) in afters.iter().enumerate() {
            assert_eq!(d.observe(&gc(GcKind::MarkCompact, i as u64, a * MB)), None);
        }
        assert!(d.observe(&gc(GcKind::MarkCompact, 11, 15 * MB)).is_some());
    }

    #[test]
    fn a_steady_sawtooth_never_raises_it() {
        let mut d = LeakDetector::new(5, DEFAULT_NOISE_FLOOR_BYTES);
        // Heap-after jitters by a few KB around 30 MB, as on a steady server.
        for i in 0..1000u64 {
            let jitter = (i * 7919) % 40 * 1024;
            assert_eq!(
                d.observe(&gc(GcKind::MarkCompact, i, 30 * MB + jitter)),
                None
            );
        }
    }

    #[test]
    fn a_climb_from_a_dip_back_to_the_usual_level_is_not_a_leak() {
        let mut d = LeakDetector::new(5, DEFAULT_NOISE_FLOOR_BYTES);
        // Noise between 25 and 40 MB, then five increases from a dip to 39 MB.
        let afters = [31, 40, 32, 39, 31, 25, 27, 30, 33, 36, 39];
        for (i, a) in afters.iter().enumerate() {
            assert_eq!(
                d.observe(&gc(GcKind::MarkCompact, i as u64, a * MB)),
                None,
                "{i}"
            );
        }
        // Past the earlier peak it is growth.
        assert!(d.observe(&gc(GcKind::MarkCompact, 12, 42 * MB)).is_none()); // 6th increase, not a multiple of 5
        let mut d = LeakDetector::new(5, DEFAULT_NOISE_FLOOR_BYTES);
        let climbing = [31, 40, 32, 39, 31, 33, 36, 39, 41, 44];
        let raised: Vec<_> = climbing
            .iter()
            .enumerate()
            .filter_map(|(i, a)| d.observe(&gc(GcKind::MarkCompact, i as u64, a * MB)))
            .collect();
        assert_eq!(raised.len(), 1);
        assert_eq!(raised[0].heap_after_start, 31 * MB);
    }

    #[test]
    fn without_history_it_takes_twice_the_increases() {
        let mut d = LeakDetector::new(5, DEFAULT_NOISE_FLOOR_BYTES);
        let raised: Vec<_> = (0..=10)
            .filter_map(|i| d.observe(&gc(GcKind::MarkCompact, i, (10 + i) * MB)))
            .collect();
        assert_eq!(raised.len(), 1);
        assert_eq!(raised[0].consecutive, 10);
        assert_eq!(raised[0].growth_bytes, 10 * MB);
    }

    #[test]
    fn growth_within_the_noise_floor_neither_counts_nor_resets() {
        let mut d = LeakDetector::new(3, 100);
        let afters = [1000, 1000, 1000, 1000, 2000, 2050, 3000, 4000];
        let raised: Vec<_> = afters
            .iter()
            .enumerate()
            .filter_map(|(i, &a)| d.observe(&gc(GcKind::MarkCompact, i as u64, a)))
            .collect();
        assert_eq!(raised.len(), 1);
        assert_eq!(raised[0].growth_bytes, 3000);
        assert_eq!(raised[0].tid, 1);
    }
}
