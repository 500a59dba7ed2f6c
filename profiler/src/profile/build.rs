//! Building a [`Profile`] from symbolized stacks and timed samples, with the
//! rule that puts samples taken in a GC pause under `(garbage collector)`.

use std::collections::HashMap;

use super::{Frame, Profile, StackId};

/// The meta frame of garbage collection (DevTools' name).
pub const GARBAGE_COLLECTOR: &str = "(garbage collector)";

/// A thread's GC pause, CLOCK_MONOTONIC ns, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    pub tid: u32,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// Feeds a profile: first every stack, in the order samples refer to them,
/// then the samples.
pub struct ProfileBuilder {
    profile: Profile,
    /// Per thread, off-CPU time not yet a whole sampling period.
    off_cpu_carry: HashMap<u32, u64>,
    /// The profile's id of each stack added, by the caller's index.
    stacks: Vec<StackId>,
    pauses: GcPauses,
    in_gc_variant: HashMap<StackId, StackId>,
}

impl ProfileBuilder {
    pub fn new(pid: u32, frequency_hz: u64, start_ns: u64, pauses: &[Pause]) -> ProfileBuilder {
        ProfileBuilder {
            profile: Profile::new(pid, frequency_hz, start_ns),
            off_cpu_carry: HashMap::new(),
            stacks: Vec::new(),
            pauses: GcPauses::new(pauses),
            in_gc_variant: HashMap::new(),
        }
    }

    /// Adds the next stack, outermost frame first; samples name it by the
    /// order it was added in.
    pub fn add_stack(&mut self, frames: Vec<Frame>) {
        let ids = frames
            .into_iter()
            .map(|f| self.profile.intern_frame(f))
            .collect();
        let id = self.profile.intern_stack(ids);
        self.stacks.push(id);
    }

    /// How many stacks were added (the index the next one gets).
    pub fn stack_count(&self) -> usize {
        self.stacks.len()
    }

    /// Adds a sample of the `stack`-th stack added.
    pub fn add_sample(&mut self, time_ns: u64, tid: u32, thread_name: &str, stack: usize) {
        let stack = self.in_pause(tid, time_ns, self.stacks[stack]);
        self.profile.add_sample(time_ns, tid, thread_name, stack);
    }

    /// Adds the time a thread spent off CPU from `start_ns` to `end_ns` in
    /// the `stack`-th stack, as one sample per sampling period (the unit of
    /// on-CPU samples, so a thread's samples add up to its wall time). What
    /// is less than a period carries over to the thread's next interval.
    pub fn add_off_cpu(
        &mut self,
        start_ns: u64,
        end_ns: u64,
        tid: u32,
        thread_name: &str,
        stack: usize,
    ) {
        let period = self.profile.period_ns();
        let carry = self.off_cpu_carry.entry(tid).or_default();
        let total = *carry + end_ns.saturating_sub(start_ns);
        let count = total / period;
        *carry = total % period;
        let stack = self.stacks[stack];
        for i in 0..count {
            // Spread over the interval, so a timeline shows when the thread waited.
            let time_ns = (start_ns + i * period).min(end_ns);
            // Waiting in a GC pause (for the GC's helper threads) is GC time.
            let stack = self.in_pause(tid, time_ns, stack);
            self.profile
                .add_off_cpu_sample(time_ns, tid, thread_name, stack);
        }
    }

    /// The stack, or its `(garbage collector)` variant for a sample in a GC
    /// pause of its thread.
    fn in_pause(&mut self, tid: u32, time_ns: u64, mut stack: StackId) -> StackId {
        // A sample in a GC pause of its thread sits under (garbage collector),
        // even where its stack shows no GC function (a pause's edges, code
        // V8 runs for the GC without a frame pointer).
        if self.pauses.covers(tid, time_ns) {
            let profile = &mut self.profile;
            stack = *self.in_gc_variant.entry(stack).or_insert_with(|| {
                let gc_frame = profile.intern_frame(Frame::meta(GARBAGE_COLLECTOR));
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
        stack
    }

    /// The profile of a recording that ended at `end_ns` and lost `lost` samples.
    pub fn finish(mut self, end_ns: u64, lost: u64) -> Profile {
        self.profile.end_ns = self.profile.end_ns.max(end_ns);
        self.profile.lost_samples = lost;
        super::threads::name_by_role(&mut self.profile);
        self.profile
    }
}

/// GC pauses per thread, sorted, for "was this sample taken in a pause".
struct GcPauses {
    by_tid: HashMap<u32, Vec<(u64, u64)>>,
}

impl GcPauses {
    fn new(pauses: &[Pause]) -> GcPauses {
        let mut by_tid: HashMap<u32, Vec<(u64, u64)>> = HashMap::new();
        for p in pauses {
            by_tid
                .entry(p.tid)
                .or_default()
                .push((p.start_ns, p.end_ns));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::FrameKind;

    fn pause(tid: u32, start_ns: u64, pause_ns: u64) -> Pause {
        Pause {
            tid,
            start_ns,
            end_ns: start_ns + pause_ns,
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

    #[test]
    fn samples_in_a_pause_sit_under_the_garbage_collector() {
        let mut b = ProfileBuilder::new(7, 99, 0, &[pause(7, 100, 50)]);
        b.add_stack(vec![Frame::new(FrameKind::Native, "main", "/bin/node")]);
        b.add_sample(90, 7, "node", 0);
        b.add_sample(120, 7, "node", 0);
        b.add_sample(130, 8, "worker", 0);
        let p = b.finish(1000, 3);
        let names = |i: usize| -> Vec<String> {
            p.stack(p.samples[i].stack)
                .iter()
                .map(|&f| p.frame(f).name.clone())
                .collect()
        };
        assert_eq!(names(0), ["main"]);
        assert_eq!(names(1), ["main", GARBAGE_COLLECTOR]);
        assert_eq!(names(2), ["main"], "another thread's pause");
        assert_eq!((p.end_ns, p.lost_samples), (1000, 3));
    }

    #[test]
    fn off_cpu_time_in_a_pause_sits_under_the_garbage_collector() {
        // 100 Hz; a pause of thread 7 from 20 to 40 ms.
        let mut b = ProfileBuilder::new(7, 100, 0, &[pause(7, 20_000_000, 20_000_000)]);
        b.add_stack(vec![Frame::new(FrameKind::Native, "futex_wait", "libc")]);
        b.add_off_cpu(0, 50_000_000, 7, "node", 0);
        let p = b.finish(100_000_000, 0);
        let in_gc: Vec<u64> = p
            .samples
            .iter()
            .filter(|s| {
                p.stack(s.stack)
                    .iter()
                    .any(|&f| p.frame(f).name == GARBAGE_COLLECTOR)
            })
            .map(|s| s.time_ns / 1_000_000)
            .collect();
        assert_eq!(p.samples.len(), 5);
        assert_eq!(in_gc, [20, 30, 40]);
    }

    #[test]
    fn off_cpu_time_becomes_samples_of_one_period() {
        // 100 Hz: 10 ms per sample.
        let mut b = ProfileBuilder::new(7, 100, 0, &[]);
        b.add_stack(vec![Frame::new(FrameKind::Native, "read", "libc")]);
        b.add_off_cpu(0, 35_000_000, 7, "node", 0);
        // 5 ms here and 5 ms carried make one more period.
        b.add_off_cpu(50_000_000, 55_000_000, 7, "node", 0);
        b.add_off_cpu(0, 9_000_000, 8, "worker", 0);
        b.add_sample(60_000_000, 7, "node", 0);
        let p = b.finish(100_000_000, 0);
        let off = |tid: u32| {
            p.samples
                .iter()
                .filter(|s| s.tid == tid && s.off_cpu)
                .count()
        };
        assert_eq!(off(7), 4);
        assert_eq!(off(8), 0, "9 ms is less than a period");
        assert!(p.samples.iter().all(|s| p.stack(s.stack).len() == 1));
        assert_eq!(p.samples.iter().filter(|s| !s.off_cpu).count(), 1);
        assert!(p.samples.iter().all(|s| s.time_ns <= 60_000_000));
    }
}
