//! The leak signal, memwatch's idea done right: compare the heap left after
//! each *full* GC (mark-compact) with the one before. Young GCs say nothing
//! about leaks, and the heap between GCs is a sawtooth whatever the program
//! does; what survives a full GC is what the program still holds.
//!
//! Three signals, each sized so that a steady program stays silent:
//!
//! - **Steps.** `threshold` consecutive increases raise a suspicion; any
//!   full GC that does not grow the heap resets the count. An increase
//!   smaller than the noise floor (V8's own bookkeeping moves the figure by a
//!   few KB between full GCs of a steady program) does not count as growth,
//!   and does not reset either. The heap must also end above every level of
//!   the full GCs just before the run: the heap-after of a steady server is
//!   noisy (what incremental marking allocated survives its cycle), and a run
//!   of increases from a dip back to the usual peak happens by chance (1 in
//!   720 for 5 increases of pure noise); a leak climbs past it. Until
//!   `threshold` full GCs give that level, a run needs twice as many
//!   increases (1 in 40 million for noise).
//! - **Doubling.** A fast leak makes V8 grow the heap, and space out its full
//!   GCs, so much that twice `threshold` of them can take minutes (49 → 94 →
//!   … → 1131 MB in 60 s). `threshold` consecutive increases that at least
//!   double the heap, by more than [`FAST_MIN_GROWTH_BYTES`], at a rate that
//!   has not died down (the last step grows at least half as fast per second
//!   as the whole run) raise it without history: noise does not double a
//!   heap, and a warm-up that fills caches slows down as it ends.
//! - **Floor.** A slow leak (a few MB per minute) under a noisy heap never
//!   grows it many times in a row. The lowest heap-after of a period of full
//!   GCs is the level the program holds; over periods of 8, 16, 32, … full
//!   GCs, a floor above the highest heap-after of the period three before,
//!   `threshold` periods in a row, is growth that noise cannot make (the
//!   noise's range is crossed again and again) and that one step up (a
//!   warm-up, a cache filled once) does not make either.

use std::collections::VecDeque;

use super::GcEvent;

/// Growth below this between two full GCs is noise, not a trend.
pub const DEFAULT_NOISE_FLOOR_BYTES: u64 = 64 * 1024;

/// The least growth the doubling signal reports: a small heap that doubles
/// by a few MB while a program starts is not a leak.
pub const FAST_MIN_GROWTH_BYTES: u64 = 32 << 20;

/// Full GCs in the shortest period of the floor signal.
const FLOOR_BASE_GCS: u64 = 8;
/// Period lengths of the floor signal: 8 · 2^0 … 8 · 2^11 (32768) full GCs.
const FLOOR_LEVELS: usize = 12;
/// A period's floor is compared with the peak of the period this many
/// before: the leak has two whole periods in between to climb past the
/// noise, and a single step up raises the floor past at most this many peaks.
const FLOOR_GAP: usize = 3;

/// Which evidence raised a suspicion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    /// Consecutive increases past the earlier level.
    Steps,
    /// Consecutive increases that doubled the heap at an undiminished rate.
    Doubling,
    /// The lowest heap-after of successive periods of full GCs kept rising.
    Floor,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LeakSuspicion {
    /// The isolate's JS thread.
    pub tid: u32,
    /// CLOCK_MONOTONIC ns of the full GC that raised it.
    pub time_ns: u64,
    /// Consecutive increases so far: of the heap after each full GC, or
    /// (`floor`) of the lowest heap-after of successive periods.
    pub consecutive: u32,
    /// Heap after the full GC where the growth began, and now (`floor`: the
    /// lowest heap-after of the first period and of the last).
    pub heap_after_start: u64,
    pub heap_after_now: u64,
    /// Growth over the run of increases.
    pub growth_bytes: u64,
    /// Growth rate over the run, bytes per hour.
    pub rate_per_hour: f64,
    pub signal: Signal,
}

/// The full GCs of one period of the floor signal.
#[derive(Debug, Clone, Copy)]
struct Period {
    gcs: u64,
    min: u64,
    max: u64,
    /// Time of the full GC with the lowest heap-after.
    min_ns: u64,
    start_ns: u64,
}

#[derive(Debug, Clone)]
struct FloorLevel {
    gcs_per_period: u64,
    open: Option<Period>,
    /// The last closed periods, oldest first (`threshold + FLOOR_GAP` at most).
    closed: VecDeque<Period>,
    /// Consecutive periods whose floor is above the peak of the period `FLOOR_GAP` before.
    rising: u32,
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
    /// Spread of `recent` (highest − lowest) when the current run began: a
    /// run must grow by more than the noise, not only end above its peak.
    range_before_run: u64,
    /// How many full GCs `recent` held when the current run began.
    history_before_run: usize,
    floors: Vec<FloorLevel>,
    /// When the last suspicion was raised: a floor signal reports growth
    /// since then only (the levels overlap in time).
    last_raised_ns: Option<u64>,
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
            range_before_run: 0,
            history_before_run: 0,
            floors: (0..FLOOR_LEVELS)
                .map(|level| FloorLevel {
                    gcs_per_period: FLOOR_BASE_GCS << level,
                    open: None,
                    closed: VecDeque::new(),
                    rising: 0,
                })
                .collect(),
            last_raised_ns: None,
        }
    }

    /// How many recent full GCs set the level a leak must climb past.
    fn window(&self) -> usize {
        64 * self.threshold as usize
    }

    /// Feeds one GC; returns a suspicion when this one completes `threshold`
    /// (or a further multiple of it) consecutive increases, or the floor of
    /// a period completes `threshold` rises.
    pub fn observe(&mut self, gc: &GcEvent) -> Option<LeakSuspicion> {
        if !gc.kind.is_full() {
            return None;
        }
        let after = gc.heap_after?;
        let now = gc.end_ns();
        let floor = self.floor(now, after, gc.tid);
        let steps = self.steps(now, after, gc.tid);
        let raised = steps.or(floor);
        if raised.is_some() {
            self.last_raised_ns = Some(now);
        }
        raised
    }

    /// The steps and doubling signals.
    fn steps(&mut self, now: u64, after: u64, tid: u32) -> Option<LeakSuspicion> {
        let previous = self.last.replace((now, after));
        let peak = self.recent.iter().copied().max().unwrap_or(0);
        let low = self.recent.iter().copied().min().unwrap_or(0);
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
                self.range_before_run = peak - low;
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
        if !self.consecutive.is_multiple_of(self.threshold) {
            return None;
        }
        let (start_time, start_after) = self.run_start?;
        let growth = after - start_after;
        let rate = |bytes: u64, from: u64| {
            let seconds = now.saturating_sub(from) as f64 / 1e9;
            (seconds > 0.0).then(|| bytes as f64 / seconds)
        };
        // Without `threshold` full GCs of history there is no level to climb
        // past: ask for twice the evidence instead.
        let enough = self.history_before_run >= self.threshold as usize
            || self.consecutive >= 2 * self.threshold;
        // Past the earlier peak, and by more than the noise's whole range
        // (over a window long enough to have seen all of it) with a tenth to
        // spare: noise alone climbs its range at most.
        let past_noise = after > self.peak_before_run
            && growth
                > self
                    .range_before_run
                    .saturating_add(self.range_before_run / 10);
        let signal = if enough && past_noise {
            Signal::Steps
        } else {
            let sustained = match (
                rate(growth, start_time),
                rate(after - last_after, last_time),
            ) {
                (Some(run), Some(step)) => step >= run / 2.0,
                _ => false,
            };
            if growth >= start_after && growth >= FAST_MIN_GROWTH_BYTES && sustained {
                Signal::Doubling
            } else {
                return None;
            }
        };
        Some(LeakSuspicion {
            tid,
            time_ns: now,
            consecutive: self.consecutive,
            heap_after_start: start_after,
            heap_after_now: after,
            growth_bytes: growth,
            rate_per_hour: rate(growth, start_time).unwrap_or(0.0) * 3600.0,
            signal,
        })
    }

    /// The floor signal, over periods of every length.
    fn floor(&mut self, now: u64, after: u64, tid: u32) -> Option<LeakSuspicion> {
        let need = self.threshold as usize + FLOOR_GAP;
        let mut raised = None;
        for level in &mut self.floors {
            let p = level.open.get_or_insert(Period {
                gcs: 0,
                min: after,
                max: after,
                min_ns: now,
                start_ns: now,
            });
            p.gcs += 1;
            if after < p.min {
                (p.min, p.min_ns) = (after, now);
            }
            p.max = p.max.max(after);
            if p.gcs < level.gcs_per_period {
                continue;
            }
            let Some(closed) = level.open.take() else {
                continue;
            };
            level.closed.push_back(closed);
            if level.closed.len() > need {
                level.closed.pop_front();
            }
            let n = level.closed.len();
            if n <= FLOOR_GAP {
                continue;
            }
            let earlier = level.closed[n - 1 - FLOOR_GAP];
            if closed.min > earlier.max.saturating_add(self.noise_floor) {
                level.rising += 1;
            } else {
                level.rising = 0;
                continue;
            }
            if raised.is_some() || !level.rising.is_multiple_of(self.threshold) {
                continue;
            }
            // The staircase from the first period it covers, or from the
            // last suspicion if that is later: growth is reported once.
            let first = level.closed[n.saturating_sub(need)];
            if self.last_raised_ns.is_some_and(|t| t >= first.start_ns) {
                continue;
            }
            let growth = closed.min.saturating_sub(first.min);
            let seconds = closed.min_ns.saturating_sub(first.min_ns) as f64 / 1e9;
            raised = Some(LeakSuspicion {
                tid,
                time_ns: now,
                consecutive: level.rising,
                heap_after_start: first.min,
                heap_after_now: closed.min,
                growth_bytes: growth,
                rate_per_hour: if seconds > 0.0 {
                    growth as f64 * 3600.0 / seconds
                } else {
                    0.0
                },
                signal: Signal::Floor,
            });
        }
        raised
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

    /// A full GC at `ms` milliseconds with `after` bytes left.
    fn full_at(ms: u64, after: u64) -> GcEvent {
        GcEvent {
            start_ns: ms * 1_000_000,
            ..gc(GcKind::MarkCompact, 0, after)
        }
    }

    /// xorshift64: the same "noise" on every run.
    struct Rand(u64);
    impl Rand {
        fn below(&mut self, m: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % m
        }
    }

    /// The full GCs of a server whose heap-after jitters between 24 and 40
    /// MB (as the steady fixture's does), one every 450 ms, plus a leak of
    /// `leak_per_min` bytes per minute: (time ms, heap-after).
    fn noisy(seed: u64, leak_per_min: u64, gcs: u64) -> impl Iterator<Item = (u64, u64)> {
        let mut r = Rand(seed | 1);
        (0..gcs).map(move |i| {
            let ms = i * 450 + r.below(100);
            (ms, 24 * MB + r.below(16 * MB) + leak_per_min * ms / 60_000)
        })
    }

    #[test]
    fn a_fast_leak_raises_it_within_six_full_gcs() {
        // Heap after full GC of an express server that keeps every request,
        // attached from its start (no history): each about double the one
        // before, V8 spacing its full GCs out as the heap grows.
        let afters = [49, 94, 179, 337, 631, 1131, 1559];
        let mut d = LeakDetector::new(5, DEFAULT_NOISE_FLOOR_BYTES);
        let raised: Vec<(usize, LeakSuspicion)> = afters
            .iter()
            .enumerate()
            // 17.8 MB/s of leak: 85 s from the first to the last.
            .filter_map(|(i, &a)| {
                let ms = 2000 + (a - 49) * 1000 * 10 / 178;
                d.observe(&full_at(ms, a * MB)).map(|s| (i, s))
            })
            .collect();
        assert_eq!(raised.len(), 1, "{raised:?}");
        let (at, s) = &raised[0];
        assert_eq!(*at, 5, "raised at the sixth full GC");
        assert_eq!(s.signal, Signal::Doubling);
        assert_eq!(
            (s.consecutive, s.heap_after_start, s.heap_after_now),
            (5, 49 * MB, 1131 * MB)
        );
        let per_hour = 17.8 * MB as f64 * 3600.0;
        assert!((s.rate_per_hour / per_hour - 1.0).abs() < 0.05, "{s:?}");
    }

    #[test]
    fn a_warm_up_is_not_a_fast_leak() {
        // A server filling its caches after start: the heap doubles, but the
        // growth dies down, and then it is steady.
        let mut d = LeakDetector::new(5, DEFAULT_NOISE_FLOOR_BYTES);
        let warm = [5, 10, 20, 40, 60, 61].map(|a| a * MB);
        for (i, &a) in warm.iter().enumerate() {
            assert_eq!(d.observe(&full_at(i as u64 * 1000, a)), None, "{i}");
        }
        for (ms, a) in noisy(7, 0, 2000) {
            assert_eq!(d.observe(&full_at(6000 + ms, a + 40 * MB)), None);
        }
        // A small heap that grows by a few MB at a steady rate while the
        // program loads: doubled, but not by enough to be a leak.
        let mut d = LeakDetector::new(5, DEFAULT_NOISE_FLOOR_BYTES);
        for i in 0..6 {
            assert_eq!(d.observe(&full_at(i * 1000, (5 + 5 * i) * MB)), None);
        }
    }

    #[test]
    fn a_noisy_steady_heap_never_raises_it() {
        // A day of full GCs, for several noises.
        for seed in 1..=4 {
            let mut d = LeakDetector::new(5, DEFAULT_NOISE_FLOOR_BYTES);
            for (ms, a) in noisy(seed, 0, 192_000) {
                let raised = d.observe(&full_at(ms, a));
                assert_eq!(raised, None, "seed {seed} at {ms} ms");
            }
        }
    }

    #[test]
    fn one_step_up_is_not_a_leak() {
        // A steady heap that takes 30 MB more once (a cache filled, a
        // module loaded), at any moment, then stays there.
        for step_at in [100, 3000, 3013, 3100] {
            let mut d = LeakDetector::new(5, DEFAULT_NOISE_FLOOR_BYTES);
            for (i, (ms, a)) in noisy(5, 0, 20_000).enumerate() {
                let a = if i >= step_at { a + 30 * MB } else { a };
                assert_eq!(
                    d.observe(&full_at(ms, a)),
                    None,
                    "step at {step_at}, GC {i}"
                );
            }
        }
    }

    #[test]
    fn a_slow_leak_under_noise_raises_it() {
        // 3 MB per minute under 16 MB of jitter: never five increases in a
        // row, but the floor climbs past the noise within minutes.
        for seed in 1..=4 {
            let mut d = LeakDetector::new(5, DEFAULT_NOISE_FLOOR_BYTES);
            let first = noisy(seed, 3 * MB, 8000)
                .find_map(|(ms, a)| d.observe(&full_at(ms, a)).map(|s| (ms, s)));
            let (ms, s) = first.unwrap_or_else(|| panic!("seed {seed}: no suspicion in an hour"));
            assert_eq!(s.signal, Signal::Floor, "seed {seed}");
            assert!(
                ms < 40 * 60_000,
                "seed {seed}: raised only after {} min",
                ms / 60_000
            );
            // The rate it reports is the leak's (the floor's own noise aside).
            let per_hour = 180.0 * MB as f64;
            assert!(
                (s.rate_per_hour / per_hour - 1.0).abs() < 0.5,
                "seed {seed}: {} MB/h",
                s.rate_per_hour / MB as f64
            );
            assert!(s.growth_bytes > 16 * MB && s.heap_after_now > s.heap_after_start);
        }
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
