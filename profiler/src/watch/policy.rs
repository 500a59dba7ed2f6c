//! When a reading becomes a capture: consecutive-check counters per process
//! and trigger, and the limits that keep watching safe on a production host
//! (per-process rate limit, one capture at a time, a cool-down, a cluster
//! cap, the disk). Time is CLOCK_MONOTONIC ns, given by the caller.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// What a check reads of one process.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Reading {
    pub pid: u32,
    /// CPU of all threads over the last interval, % of one core.
    pub cpu_percent: Option<f64>,
    pub rss_bytes: Option<u64>,
    /// V8 heap left by the latest GC of any kind.
    pub heap_used_bytes: Option<u64>,
    /// V8 heap left by the latest full GC: what the program holds.
    pub heap_after_full_gc_bytes: Option<u64>,
    /// A leak suspicion was raised since the previous check.
    pub leak: bool,
    /// Share of the interval the main thread's event loop spent in turns, 0–1.
    pub loop_utilization: Option<f64>,
    /// The longest turn that ended in the interval or is still running.
    pub longest_turn_ms: Option<f64>,
}

/// Which memory figure `--mem` compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemOf {
    /// Resident set size of the process.
    #[default]
    Rss,
    /// V8 heap used, as left by the latest GC.
    Heap,
}

impl MemOf {
    pub fn name(self) -> &'static str {
        match self {
            MemOf::Rss => "rss",
            MemOf::Heap => "heap",
        }
    }
}

/// The thresholds; `None` leaves a trigger off.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Thresholds {
    /// % of one core, and consecutive checks.
    pub cpu: Option<(f64, u32)>,
    /// Bytes, which figure, and consecutive checks.
    pub mem: Option<(u64, MemOf, u32)>,
    /// A turn at least this long, on one check.
    pub loop_blocked: Option<Duration>,
    /// A GC leak suspicion.
    pub on_leak: bool,
}

/// The limits on captures.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// At most `max` captures per trigger and process within `per`.
    pub max: u32,
    pub per: Duration,
    /// After a capture, this process's checks feed no counter for this long.
    pub cooldown: Duration,
    /// Processes captured for one trigger within `cluster_window` of each other.
    pub cluster_max: usize,
    pub cluster_window: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max: 3,
            per: Duration::from_secs(3600),
            cooldown: Duration::from_secs(60),
            cluster_max: 1,
            cluster_window: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    LoopBlocked,
    Cpu,
    Memory,
    Leak,
}

impl Trigger {
    /// In order of urgency: a blocked loop first (it may not last).
    pub const ALL: [Trigger; 4] = [
        Trigger::LoopBlocked,
        Trigger::Cpu,
        Trigger::Memory,
        Trigger::Leak,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Trigger::LoopBlocked => "loop-blocked",
            Trigger::Cpu => "cpu",
            Trigger::Memory => "memory",
            Trigger::Leak => "leak",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether the output directory may take another capture.
#[derive(Debug, Clone, PartialEq)]
pub enum Disk {
    Ok,
    /// Everything written adds up to the budget.
    BudgetSpent {
        used: u64,
        budget: u64,
    },
    /// The filesystem's free space is under the floor.
    BelowFloor {
        free: u64,
        floor: u64,
    },
}

/// What a check decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Capture this process now (the policy counts it as running until
    /// [`Policy::finished`]).
    Capture {
        pid: u32,
        trigger: Trigger,
        /// The readings that crossed, oldest first, in words.
        why: String,
        /// Other processes that crossed with it and are not captured.
        cluster_skipped: Vec<u32>,
    },
    /// A trigger crossed but the limit of captures is reached; said once
    /// until a capture of this trigger is possible again.
    Limited {
        pid: u32,
        trigger: Trigger,
        max: u32,
        per: Duration,
    },
    /// A trigger crossed while other processes of the same wave (crossing
    /// within the cluster window) were captured: left out, said once per wave.
    Clustered {
        pid: u32,
        trigger: Trigger,
        captured: Vec<u32>,
    },
    /// A trigger crossed but the disk takes nothing more; said once until
    /// the disk is fine again.
    DiskFull(Disk),
}

#[derive(Debug, Default)]
struct ProcessState {
    /// Per trigger: the crossing values of the current run of checks.
    runs: HashMap<Trigger, Vec<String>>,
    /// Checks before this time feed no counter (a capture and its cool-down).
    quiet_until: u64,
    capturing: bool,
}

/// The captures of one trigger across processes close in time.
#[derive(Debug)]
struct Wave {
    started: u64,
    /// Captured in this wave.
    pids: BTreeSet<u32>,
    /// Left out, already said.
    skipped: BTreeSet<u32>,
}

/// The watch policy over every watched process.
#[derive(Debug)]
pub struct Policy {
    thresholds: Thresholds,
    limits: Limits,
    processes: BTreeMap<u32, ProcessState>,
    /// Captures per (pid, trigger), times.
    history: HashMap<(u32, Trigger), VecDeque<u64>>,
    waves: HashMap<Trigger, Wave>,
    busy: bool,
    /// Limits already said, until they lift.
    limited_said: BTreeSet<(u32, Trigger)>,
    disk_said: bool,
}

impl Policy {
    pub fn new(thresholds: Thresholds, limits: Limits) -> Policy {
        Policy {
            thresholds,
            limits,
            processes: BTreeMap::new(),
            history: HashMap::new(),
            waves: HashMap::new(),
            busy: false,
            limited_said: BTreeSet::new(),
            disk_said: false,
        }
    }

    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    /// A process is gone: its counters go with it (its pid may come back).
    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
        self.history.retain(|(p, _), _| *p != pid);
        self.limited_said.retain(|(p, _)| *p != pid);
    }

    /// Whether `pid` is being captured or cooling down at `now`: what it
    /// does then (the full GCs a heap snapshot forces, a stall) is the
    /// capture's doing, and feeds no counter, the leak signal's included.
    pub fn quiet(&self, pid: u32, now: u64) -> bool {
        self.processes
            .get(&pid)
            .is_some_and(|p| p.capturing || now < p.quiet_until)
    }

    /// Whether a capture is running.
    pub fn busy(&self) -> bool {
        self.busy
    }

    /// The capture decided for `pid` has ended at `now`: its cool-down begins.
    pub fn finished(&mut self, pid: u32, now: u64) {
        self.busy = false;
        if let Some(p) = self.processes.get_mut(&pid) {
            p.capturing = false;
            p.quiet_until = now.saturating_add(self.limits.cooldown.as_nanos() as u64);
            p.runs.clear();
        }
    }

    /// One check of every watched process at `now`; at most one capture
    /// starts per check (one at a time per host).
    pub fn check(&mut self, now: u64, readings: &[Reading], disk: &Disk) -> Vec<Decision> {
        for reading in readings {
            if self.quiet(reading.pid, now) {
                // A capture stalls and loads its target: what it reads then
                // is the capture's doing, not the program's (the avalanche).
                continue;
            }
            let thresholds = &self.thresholds;
            let p = self.processes.entry(reading.pid).or_default();
            for trigger in Trigger::ALL {
                match crossing(thresholds, trigger, reading) {
                    Some(value) => p.runs.entry(trigger).or_default().push(value),
                    None => {
                        p.runs.remove(&trigger);
                    }
                }
            }
        }
        let mut decisions = Vec::new();
        let due = self.due();
        if due.is_empty() {
            return decisions;
        }
        if *disk != Disk::Ok {
            if !self.disk_said {
                self.disk_said = true;
                decisions.push(Decision::DiskFull(disk.clone()));
            }
            // Nothing can be written: the evidence must build up again.
            for (pid, trigger) in due {
                self.reset(pid, trigger);
            }
            return decisions;
        }
        self.disk_said = false;
        for (pid, trigger) in due {
            if self.busy {
                // Still due at the next check if it keeps crossing.
                break;
            }
            if self.limited(pid, trigger, now) {
                if self.limited_said.insert((pid, trigger)) {
                    decisions.push(Decision::Limited {
                        pid,
                        trigger,
                        max: self.limits.max,
                        per: self.limits.per,
                    });
                }
                // The counter keeps running: when the limit lifts, a process
                // still over the threshold is captured at once.
                continue;
            }
            self.limited_said.remove(&(pid, trigger));
            let window = self.limits.cluster_window.as_nanos() as u64;
            let wave = self.waves.entry(trigger).or_insert_with(|| Wave {
                started: now,
                pids: BTreeSet::new(),
                skipped: BTreeSet::new(),
            });
            if now.saturating_sub(wave.started) > window {
                *wave = Wave {
                    started: now,
                    pids: BTreeSet::new(),
                    skipped: BTreeSet::new(),
                };
            }
            if !wave.pids.contains(&pid) && wave.pids.len() >= self.limits.cluster_max {
                let captured: Vec<u32> = wave.pids.iter().copied().collect();
                if wave.skipped.insert(pid) {
                    decisions.push(Decision::Clustered {
                        pid,
                        trigger,
                        captured,
                    });
                }
                self.reset(pid, trigger);
                continue;
            }
            wave.pids.insert(pid);
            let wave_full = wave.pids.len() >= self.limits.cluster_max;
            let why = self.why(pid, trigger);
            // The others crossing this trigger now are left out when the wave is full.
            let mut cluster_skipped = Vec::new();
            if wave_full {
                let others: Vec<u32> = self
                    .processes
                    .iter()
                    .filter(|(&other, p)| {
                        other != pid
                            && !self.waves[&trigger].pids.contains(&other)
                            && p.runs.contains_key(&trigger)
                    })
                    .map(|(&other, _)| other)
                    .collect();
                for other in others {
                    self.reset(other, trigger);
                    let wave = self.waves.get_mut(&trigger).expect("inserted above");
                    if wave.skipped.insert(other) {
                        cluster_skipped.push(other);
                    }
                }
            }
            self.start(pid, trigger, now);
            decisions.push(Decision::Capture {
                pid,
                trigger,
                why,
                cluster_skipped,
            });
        }
        decisions
    }

    /// (pid, trigger) pairs whose counter reached its count, most urgent
    /// trigger first, and within a trigger the process furthest over.
    fn due(&self) -> Vec<(u32, Trigger)> {
        let mut due = Vec::new();
        for trigger in Trigger::ALL {
            let needed = count(&self.thresholds, trigger);
            let mut pids: Vec<(u32, usize)> = self
                .processes
                .iter()
                .filter(|(_, p)| !p.capturing)
                .filter_map(|(&pid, p)| {
                    let run = p.runs.get(&trigger)?;
                    (run.len() as u32 >= needed).then_some((pid, run.len()))
                })
                .collect();
            // Longest run first: the process that crossed first.
            pids.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            due.extend(pids.into_iter().map(|(pid, _)| (pid, trigger)));
        }
        due
    }

    fn limited(&mut self, pid: u32, trigger: Trigger, now: u64) -> bool {
        let per = self.limits.per.as_nanos() as u64;
        let times = self.history.entry((pid, trigger)).or_default();
        while times.front().is_some_and(|&t| now.saturating_sub(t) >= per) {
            times.pop_front();
        }
        times.len() as u32 >= self.limits.max
    }

    fn start(&mut self, pid: u32, trigger: Trigger, now: u64) {
        self.busy = true;
        self.history
            .entry((pid, trigger))
            .or_default()
            .push_back(now);
        let p = self.processes.entry(pid).or_default();
        p.capturing = true;
        p.runs.clear();
    }

    fn reset(&mut self, pid: u32, trigger: Trigger) {
        if let Some(p) = self.processes.get_mut(&pid) {
            p.runs.remove(&trigger);
        }
    }

    fn why(&self, pid: u32, trigger: Trigger) -> String {
        let run = &self.processes[&pid].runs[&trigger];
        let shown: Vec<&str> = run.iter().rev().take(5).rev().map(String::as_str).collect();
        let over = match trigger {
            Trigger::Cpu => self
                .thresholds
                .cpu
                .map(|(p, _)| format!("≥ {p}%"))
                .unwrap_or_default(),
            Trigger::Memory => self
                .thresholds
                .mem
                .map(|(b, of, _)| format!("{} ≥ {}", of.name(), human(b)))
                .unwrap_or_default(),
            Trigger::LoopBlocked => self
                .thresholds
                .loop_blocked
                .map(|d| format!("turn ≥ {} ms", d.as_millis()))
                .unwrap_or_default(),
            Trigger::Leak => return format!("leak suspicion: {}", shown.join(", ")),
        };
        let checks = if run.len() == 1 { "check" } else { "checks" };
        format!(
            "{over} on {} consecutive {checks}: {}",
            run.len(),
            shown.join(", ")
        )
    }
}

/// How many consecutive crossing checks fire a trigger.
fn count(thresholds: &Thresholds, trigger: Trigger) -> u32 {
    match trigger {
        Trigger::Cpu => thresholds.cpu.map_or(u32::MAX, |(_, n)| n.max(1)),
        Trigger::Memory => thresholds.mem.map_or(u32::MAX, |(_, _, n)| n.max(1)),
        Trigger::LoopBlocked => {
            if thresholds.loop_blocked.is_some() {
                1
            } else {
                u32::MAX
            }
        }
        Trigger::Leak => {
            if thresholds.on_leak {
                1
            } else {
                u32::MAX
            }
        }
    }
}

/// The reading's value, in words, when it crosses the trigger's threshold.
fn crossing(thresholds: &Thresholds, trigger: Trigger, r: &Reading) -> Option<String> {
    match trigger {
        Trigger::Cpu => {
            let (limit, _) = thresholds.cpu?;
            let cpu = r.cpu_percent?;
            (cpu >= limit).then(|| format!("{cpu:.0}%"))
        }
        Trigger::Memory => {
            let (limit, of, _) = thresholds.mem?;
            let value = match of {
                MemOf::Rss => r.rss_bytes?,
                MemOf::Heap => r.heap_used_bytes?,
            };
            (value >= limit).then(|| human(value))
        }
        Trigger::LoopBlocked => {
            let limit = thresholds.loop_blocked?.as_secs_f64() * 1e3;
            let longest = r.longest_turn_ms?;
            (longest >= limit).then(|| format!("{longest:.0} ms"))
        }
        Trigger::Leak => {
            if !thresholds.on_leak || !r.leak {
                return None;
            }
            Some(match r.heap_after_full_gc_bytes {
                Some(b) => format!("heap after full GC {}", human(b)),
                None => "heap after full GCs growing".into(),
            })
        }
    }
}

/// Bytes in binary units, short.
pub fn human(bytes: u64) -> String {
    const K: f64 = 1024.0;
    let b = bytes as f64;
    if b >= K * K * K {
        format!("{:.2} GiB", b / (K * K * K))
    } else if b >= K * K {
        format!("{:.1} MiB", b / (K * K))
    } else if b >= K {
        format!("{:.0} KiB", b / K)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn cpu(pid: u32, percent: f64) -> Reading {
        Reading {
            pid,
            cpu_percent: Some(percent),
            ..Reading::default()
        }
    }

    fn policy(thresholds: Thresholds, limits: Limits) -> Policy {
        Policy::new(thresholds, limits)
    }

    fn cpu_policy(limits: Limits) -> Policy {
        policy(
            Thresholds {
                cpu: Some((90.0, 3)),
                ..Thresholds::default()
            },
            limits,
        )
    }

    fn captures(decisions: &[Decision]) -> Vec<(u32, Trigger)> {
        decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Capture { pid, trigger, .. } => Some((*pid, *trigger)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn three_consecutive_checks_fire_once() {
        let mut p = cpu_policy(Limits::default());
        assert!(p.check(S, &[cpu(1, 95.0)], &Disk::Ok).is_empty());
        assert!(p.check(2 * S, &[cpu(1, 96.0)], &Disk::Ok).is_empty());
        let d = p.check(3 * S, &[cpu(1, 97.0)], &Disk::Ok);
        assert_eq!(captures(&d), [(1, Trigger::Cpu)]);
        let Decision::Capture { why, .. } = &d[0] else {
            unreachable!()
        };
        assert_eq!(why, "≥ 90% on 3 consecutive checks: 95%, 96%, 97%");
        // Running: nothing else starts, the target's readings are ignored.
        assert!(p.check(4 * S, &[cpu(1, 99.0)], &Disk::Ok).is_empty());
    }

    #[test]
    fn a_flapping_process_never_fires() {
        let mut p = cpu_policy(Limits::default());
        for i in 0..100 {
            let value = if i % 2 == 0 { 99.0 } else { 10.0 };
            assert!(p.check(i * S, &[cpu(1, value)], &Disk::Ok).is_empty());
        }
        // Two crossings, a dip, two crossings: the dip resets.
        for (i, v) in [95.0, 95.0, 50.0, 95.0, 95.0].into_iter().enumerate() {
            assert!(p
                .check((200 + i as u64) * S, &[cpu(1, v)], &Disk::Ok)
                .is_empty());
        }
    }

    #[test]
    fn cool_down_checks_feed_no_counter() {
        let limits = Limits {
            cooldown: Duration::from_secs(10),
            ..Limits::default()
        };
        let mut p = cpu_policy(limits);
        for t in 1..=3 {
            assert!(!p.quiet(1, t * S));
            p.check(t * S, &[cpu(1, 99.0)], &Disk::Ok);
        }
        // The third check started a capture: quiet while it runs.
        assert!(p.quiet(1, 4 * S));
        p.finished(1, 5 * S);
        assert!(p.quiet(1, 14 * S) && !p.quiet(1, 15 * S) && !p.quiet(2, 14 * S));
        // 5 s … 15 s: cool-down; high CPU then is ignored.
        for t in 6..15 {
            assert!(p.check(t * S, &[cpu(1, 99.0)], &Disk::Ok).is_empty());
        }
        // Counting starts again after it: three more checks.
        assert!(p.check(15 * S, &[cpu(1, 99.0)], &Disk::Ok).is_empty());
        assert!(p.check(16 * S, &[cpu(1, 99.0)], &Disk::Ok).is_empty());
        let d = p.check(17 * S, &[cpu(1, 99.0)], &Disk::Ok);
        assert_eq!(captures(&d), [(1, Trigger::Cpu)]);
    }

    /// The avalanche of the cpu-memory-monitor guide: a heap snapshot stalls
    /// its target and raises its memory and CPU. Those readings, while it
    /// runs and through the cool-down, trigger nothing, for any trigger.
    #[test]
    fn a_snapshots_own_memory_and_cpu_trigger_nothing() {
        let mut p = policy(
            Thresholds {
                cpu: Some((90.0, 2)),
                mem: Some((1 << 30, MemOf::Rss, 2)),
                ..Thresholds::default()
            },
            Limits {
                max: 100,
                cooldown: Duration::from_secs(10),
                ..Limits::default()
            },
        );
        let reading = |rss: u64, cpu: f64| Reading {
            pid: 1,
            rss_bytes: Some(rss),
            cpu_percent: Some(cpu),
            ..Reading::default()
        };
        assert!(p.check(S, &[reading(2 << 30, 10.0)], &Disk::Ok).is_empty());
        let d = p.check(2 * S, &[reading(2 << 30, 10.0)], &Disk::Ok);
        assert_eq!(captures(&d), [(1, Trigger::Memory)]);
        // The snapshot: RSS five times over, a core busy, for 8 s.
        for t in 3..=10 {
            assert!(p
                .check(t * S, &[reading(10 << 30, 100.0)], &Disk::Ok)
                .is_empty());
        }
        p.finished(1, 10 * S);
        // Its memory stays up through the cool-down: still nothing.
        for t in 11..20 {
            assert!(p
                .check(t * S, &[reading(10 << 30, 100.0)], &Disk::Ok)
                .is_empty());
        }
        // After it, the counters start from zero: two checks again.
        assert!(p
            .check(20 * S, &[reading(2 << 30, 10.0)], &Disk::Ok)
            .is_empty());
        let d = p.check(21 * S, &[reading(2 << 30, 10.0)], &Disk::Ok);
        assert_eq!(captures(&d), [(1, Trigger::Memory)]);
    }

    #[test]
    fn the_limit_holds_and_is_said_once() {
        let limits = Limits {
            max: 2,
            per: Duration::from_secs(100),
            cooldown: Duration::ZERO,
            ..Limits::default()
        };
        let mut p = cpu_policy(limits);
        let mut fired = Vec::new();
        let mut said = 0;
        for t in 0..300u64 {
            for d in p.check(t * S, &[cpu(1, 99.0)], &Disk::Ok) {
                match d {
                    Decision::Capture { .. } => {
                        fired.push(t);
                        p.finished(1, t * S);
                    }
                    Decision::Limited { max: 2, .. } => said += 1,
                    other => panic!("{other:?}"),
                }
            }
        }
        // Two in each 100 s window: at 2 and 5, then 102 and 105, 202 and 205.
        assert_eq!(fired, [2, 5, 102, 105, 202, 205]);
        assert_eq!(said, 3, "said once per window in which the limit held");
    }

    #[test]
    fn one_capture_at_a_time() {
        let mut p = cpu_policy(Limits {
            cluster_max: 5,
            ..Limits::default()
        });
        for t in 1..=2 {
            p.check(t * S, &[cpu(1, 99.0), cpu(2, 99.0)], &Disk::Ok);
        }
        let d = p.check(3 * S, &[cpu(1, 99.0), cpu(2, 99.0)], &Disk::Ok);
        assert_eq!(captures(&d), [(1, Trigger::Cpu)]);
        // pid 2 stays due while pid 1 is captured, and goes next.
        assert!(p
            .check(4 * S, &[cpu(1, 99.0), cpu(2, 99.0)], &Disk::Ok)
            .is_empty());
        p.finished(1, 4 * S);
        let d = p.check(5 * S, &[cpu(1, 99.0), cpu(2, 99.0)], &Disk::Ok);
        assert_eq!(captures(&d), [(2, Trigger::Cpu)]);
    }

    #[test]
    fn a_cluster_crossing_together_is_captured_once() {
        let mut p = cpu_policy(Limits::default());
        let all = |v: f64| -> Vec<Reading> { (1..=8).map(|pid| cpu(pid, v)).collect() };
        p.check(S, &all(99.0), &Disk::Ok);
        p.check(2 * S, &all(99.0), &Disk::Ok);
        let d = p.check(3 * S, &all(99.0), &Disk::Ok);
        assert_eq!(d.len(), 1);
        let Decision::Capture {
            pid,
            cluster_skipped,
            ..
        } = &d[0]
        else {
            panic!("{d:?}")
        };
        assert_eq!(*pid, 1);
        assert_eq!(cluster_skipped, &[2, 3, 4, 5, 6, 7, 8]);
        p.finished(1, 4 * S);
        // Still over 20 s later: within the wave, nobody else is captured.
        for t in 5..25 {
            assert!(captures(&p.check(t * S, &all(99.0), &Disk::Ok)).is_empty());
        }
    }

    #[test]
    fn the_cluster_cap_is_configurable() {
        let mut p = cpu_policy(Limits {
            cluster_max: 2,
            cooldown: Duration::ZERO,
            ..Limits::default()
        });
        let all = |v: f64| -> Vec<Reading> { (1..=4).map(|pid| cpu(pid, v)).collect() };
        let mut captured = Vec::new();
        let mut skipped = Vec::new();
        for t in 1..30 {
            for d in p.check(t * S, &all(99.0), &Disk::Ok) {
                if let Decision::Capture {
                    pid,
                    cluster_skipped,
                    ..
                } = d
                {
                    captured.push(pid);
                    skipped.extend(cluster_skipped);
                    p.finished(pid, t * S);
                }
            }
        }
        // Two distinct processes; the first may be captured again in the
        // wave (its own limit allows it), never a third process.
        let distinct: BTreeSet<u32> = captured.iter().copied().collect();
        assert_eq!(distinct, BTreeSet::from([1, 2]), "{captured:?}");
        assert_eq!(skipped, [3, 4]);
        // Those crossing again later in the wave are said once each.
        assert!(p
            .check(100 * S, &all(10.0), &Disk::Ok)
            .iter()
            .all(|d| !matches!(d, Decision::Clustered { .. })));
    }

    #[test]
    fn the_disk_stops_captures_and_is_said_once() {
        let mut p = cpu_policy(Limits::default());
        let spent = Disk::BudgetSpent {
            used: 10,
            budget: 10,
        };
        let mut said = 0;
        for t in 1..20 {
            for d in p.check(t * S, &[cpu(1, 99.0)], &spent) {
                assert!(matches!(d, Decision::DiskFull(_)), "{d:?}");
                said += 1;
            }
        }
        assert_eq!(said, 1);
        // Room again: captured within a run of three checks.
        let fired: Vec<_> = (20..23)
            .flat_map(|t| captures(&p.check(t * S, &[cpu(1, 99.0)], &Disk::Ok)))
            .collect();
        assert_eq!(fired, [(1, Trigger::Cpu)]);
    }

    #[test]
    fn a_blocked_loop_fires_on_one_check_before_cpu() {
        let mut p = policy(
            Thresholds {
                cpu: Some((90.0, 1)),
                loop_blocked: Some(Duration::from_millis(500)),
                ..Thresholds::default()
            },
            Limits::default(),
        );
        let r = Reading {
            pid: 7,
            cpu_percent: Some(100.0),
            longest_turn_ms: Some(600.0),
            ..Reading::default()
        };
        let d = p.check(S, &[r], &Disk::Ok);
        assert_eq!(captures(&d), [(7, Trigger::LoopBlocked)]);
        let Decision::Capture { why, .. } = &d[0] else {
            unreachable!()
        };
        assert_eq!(why, "turn ≥ 500 ms on 1 consecutive check: 600 ms");
    }

    #[test]
    fn memory_by_rss_or_heap_and_leaks() {
        let reading = Reading {
            pid: 3,
            rss_bytes: Some(2 << 30),
            heap_used_bytes: Some(100 << 20),
            heap_after_full_gc_bytes: Some(90 << 20),
            leak: true,
            ..Reading::default()
        };
        let mut rss = policy(
            Thresholds {
                mem: Some((1 << 30, MemOf::Rss, 1)),
                ..Thresholds::default()
            },
            Limits::default(),
        );
        assert_eq!(
            captures(&rss.check(S, std::slice::from_ref(&reading), &Disk::Ok)),
            [(3, Trigger::Memory)]
        );
        let mut heap = policy(
            Thresholds {
                mem: Some((1 << 30, MemOf::Heap, 1)),
                ..Thresholds::default()
            },
            Limits::default(),
        );
        assert!(heap
            .check(S, std::slice::from_ref(&reading), &Disk::Ok)
            .is_empty());
        let mut leak = policy(
            Thresholds {
                on_leak: true,
                ..Thresholds::default()
            },
            Limits::default(),
        );
        let d = leak.check(S, &[reading], &Disk::Ok);
        assert_eq!(captures(&d), [(3, Trigger::Leak)]);
        let Decision::Capture { why, .. } = &d[0] else {
            unreachable!()
        };
        assert_eq!(why, "leak suspicion: heap after full GC 90.0 MiB");
    }

    #[test]
    fn missing_readings_do_not_cross() {
        let mut p = cpu_policy(Limits::default());
        for t in 1..10 {
            assert!(p
                .check(
                    t * S,
                    &[Reading {
                        pid: 1,
                        ..Reading::default()
                    }],
                    &Disk::Ok
                )
                .is_empty());
        }
    }
}
