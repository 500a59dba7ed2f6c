//! Event-loop turns, measured from outside: a thread running an event loop
//! (node's main thread, each Worker's) waits in `epoll_wait` between turns,
//! so a turn is the time from one return of `epoll_wait` to the next call.
//! Tracepoints on that syscall give every turn's bounds without a uprobe
//! trap; the samples of the same interval say what ran. `record` reports it,
//! and `watch` thresholds use it.

pub mod uv;

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::time::Duration;

use nodeprof_common::{ThreadEvent, EVENT_LOOP_ENTER, EVENT_LOOP_EXIT};
use serde::Serialize;

use crate::output::{frame_label, Report};
use crate::profile::{FrameKind, Profile};

/// One turn of an event loop, CLOCK_MONOTONIC ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Turn {
    pub start_ns: u64,
    pub end_ns: u64,
    /// Already running when the window began: its start, and so its
    /// length, is known only as a bound.
    pub began_before: bool,
    /// Still running when the window ended (the loop may be stuck in it).
    pub ongoing: bool,
}

impl Turn {
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// The turns of one thread's event loop within a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThreadLoop {
    pub tid: u32,
    pub turns: Vec<Turn>,
    /// Share of the window spent in turns (not waiting in `epoll_wait`), 0–1.
    pub utilization: f64,
}

/// Cuts each thread's `epoll_wait` entries and exits into turns within the
/// window `[start_ns, end_ns]`. Only the thread's own loop counts: the epoll
/// instance it waits on most; another one (the loop `execSync` runs while
/// the thread's loop is blocked) is part of the turn. A thread with no event
/// in the window is not listed: it either waited or ran the whole time,
/// which the events cannot tell apart (see [`stuck_in_turn`]). Events
/// before the window only tell which loop an exit in it belongs to (an exit
/// does not name its epoll instance).
pub fn turns(events: &[ThreadEvent], start_ns: u64, end_ns: u64) -> Vec<ThreadLoop> {
    let mut by_tid: BTreeMap<u32, Vec<&ThreadEvent>> = BTreeMap::new();
    for e in events {
        if (e.kind == EVENT_LOOP_ENTER || e.kind == EVENT_LOOP_EXIT) && e.time_ns <= end_ns {
            by_tid.entry(e.tid).or_default().push(e);
        }
    }
    let window = end_ns.saturating_sub(start_ns).max(1);
    by_tid
        .into_iter()
        .filter_map(|(tid, mut events)| {
            events.sort_by_key(|e| e.time_ns);
            let events: Vec<&ThreadEvent> = own_loop(&events)
                .into_iter()
                .filter(|e| e.time_ns >= start_ns)
                .collect();
            let first = events.first()?;
            let mut turns = Vec::new();
            // Before the first event the thread was in a turn if that event
            // is an entry into epoll_wait.
            let mut began_before = first.kind == EVENT_LOOP_ENTER;
            let mut turn_start = began_before.then_some(start_ns);
            let mut push = |start_ns: u64, end_ns: u64, ongoing: bool| {
                turns.push(Turn {
                    start_ns,
                    end_ns,
                    began_before: std::mem::take(&mut began_before),
                    ongoing,
                })
            };
            for e in events {
                match e.kind {
                    EVENT_LOOP_EXIT => turn_start = Some(e.time_ns),
                    _ => {
                        if let Some(start) = turn_start.take() {
                            push(start, e.time_ns, false);
                        }
                    }
                }
            }
            if let Some(start) = turn_start {
                push(start, end_ns, true);
            }
            let busy: u64 = turns.iter().map(Turn::duration_ns).sum();
            Some(ThreadLoop {
                tid,
                turns,
                utilization: busy as f64 / window as f64,
            })
        })
        .collect()
}

/// The events of a thread's own loop: an exit belongs to the epoll instance
/// of the entry before it; the loop's instance is the one entered most.
fn own_loop<'a>(events: &[&'a ThreadEvent]) -> Vec<&'a ThreadEvent> {
    let mut entries: HashMap<i32, usize> = HashMap::new();
    for e in events
        .iter()
        .filter(|e| e.kind == EVENT_LOOP_ENTER && e.epfd >= 0)
    {
        *entries.entry(e.epfd).or_default() += 1;
    }
    let Some(own) = entries
        .into_iter()
        .max_by_key(|&(epfd, n)| (n, std::cmp::Reverse(epfd)))
        .map(|(epfd, _)| epfd)
    else {
        return events.to_vec();
    };
    let mut current = None;
    events
        .iter()
        .copied()
        .filter(|e| {
            if e.kind == EVENT_LOOP_ENTER {
                current = Some(e.epfd);
            }
            current.is_none_or(|epfd| epfd == own)
        })
        .collect()
}

/// Whether the main thread is outside its event loop's `epoll_wait` now, by
/// the system call it is in (`/proc/PID/task/PID/syscall`): with no turn
/// boundary in a window, that means one turn spanned it. Its loop's epoll
/// instance is the process's first (node creates it at start; the one a
/// synchronous child process waits on comes later).
pub fn stuck_in_turn(pid: u32) -> Option<bool> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/syscall")).ok()?;
    let mut fields = text.split_whitespace();
    // "running" when on CPU: not waiting.
    let Ok(nr) = fields.next()?.parse::<i64>() else {
        return Some(true);
    };
    // x86-64: epoll_wait, epoll_pwait, epoll_pwait2.
    if !matches!(nr, 232 | 281 | 441) {
        return Some(true);
    }
    let epfd = u64::from_str_radix(fields.next()?.trim_start_matches("0x"), 16).ok()?;
    Some(Some(epfd) != first_epoll_fd(pid))
}

/// The lowest-numbered file descriptor of `pid` that is an epoll instance.
fn first_epoll_fd(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|t| t.to_string_lossy() == "anon_inode:[eventpoll]")
        })
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .min()
}

/// A turn longer than the threshold and what ran in it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LongTurn {
    /// Seconds from the start of the recording.
    pub at_s: f64,
    pub duration_ms: f64,
    /// Cut by the recording's start: at least this long.
    pub began_before: bool,
    pub ongoing: bool,
    /// The JS functions most of the turn's samples were in, outermost first
    /// (`handleRequest → JSON.parse`); empty when no sample fell in it.
    pub running: String,
    /// Of the turn's samples, how many were off CPU (blocked).
    pub off_cpu_samples: usize,
    pub samples: usize,
}

impl LongTurn {
    /// Where the recording's edges cut the turn: its length is then a
    /// lower bound.
    pub fn cut_marks(&self) -> String {
        let mut text = String::new();
        if self.began_before {
            text.push_str(" (already running at the start)");
        }
        if self.ongoing {
            text.push_str(" (still running at the end)");
        }
        text
    }
}

/// One event loop's figures for the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoopSummary {
    pub tid: u32,
    pub thread: String,
    pub turns: usize,
    pub utilization: f64,
    pub threshold_ms: f64,
    /// Turns over the threshold, longest first.
    pub long_turns: Vec<LongTurn>,
}

/// Every event loop of a recording.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoopReport {
    pub loops: Vec<LoopSummary>,
}

impl LoopReport {
    /// Puts names on the turns of `loops` over `threshold` from the samples
    /// of `profile` taken in them.
    pub fn of(loops: &[ThreadLoop], profile: &Profile, threshold: Duration) -> LoopReport {
        let threshold_ns = threshold.as_nanos() as u64;
        let mut samples_by_tid: HashMap<u32, Vec<&crate::profile::Sample>> = HashMap::new();
        for s in &profile.samples {
            samples_by_tid.entry(s.tid).or_default().push(s);
        }
        for samples in samples_by_tid.values_mut() {
            samples.sort_by_key(|s| s.time_ns);
        }
        let loops = loops
            .iter()
            .filter_map(|l| {
                let samples = samples_by_tid.get(&l.tid).map_or(&[][..], Vec::as_slice);
                let mut long_turns: Vec<LongTurn> = l
                    .turns
                    .iter()
                    .filter(|t| t.duration_ns() > threshold_ns)
                    .map(|t| long_turn(t, samples, profile))
                    .collect();
                long_turns.sort_by(|a, b| b.duration_ms.total_cmp(&a.duration_ms));
                // A helper's loop never sampled and never long (node's
                // delayed-task scheduler): nothing to say about it.
                if l.tid != profile.pid && samples.is_empty() && long_turns.is_empty() {
                    return None;
                }
                Some(LoopSummary {
                    tid: l.tid,
                    thread: thread_label(profile, l.tid),
                    turns: l.turns.len(),
                    utilization: l.utilization,
                    threshold_ms: threshold.as_secs_f64() * 1e3,
                    long_turns,
                })
            })
            .collect();
        LoopReport { loops }
    }
}

fn thread_label(profile: &Profile, tid: u32) -> String {
    let name = profile.thread_name(tid);
    if tid == profile.pid {
        "main thread".into()
    } else if name.is_empty() {
        format!("thread {tid}")
    } else {
        format!("thread {tid} ({name})")
    }
}

fn long_turn(turn: &Turn, samples: &[&crate::profile::Sample], profile: &Profile) -> LongTurn {
    let from = samples.partition_point(|s| s.time_ns < turn.start_ns);
    let to = samples.partition_point(|s| s.time_ns <= turn.end_ns);
    let inside = &samples[from..to];
    let mut counts: HashMap<String, usize> = HashMap::new();
    for s in inside {
        *counts.entry(js_path(profile, s.stack)).or_default() += 1;
    }
    let running = counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
        .map(|(path, _)| path)
        .unwrap_or_default();
    LongTurn {
        at_s: turn.start_ns.saturating_sub(profile.start_ns) as f64 / 1e9,
        duration_ms: turn.duration_ns() as f64 / 1e6,
        began_before: turn.began_before,
        ongoing: turn.ongoing,
        running,
        off_cpu_samples: inside.iter().filter(|s| s.off_cpu).count(),
        samples: inside.len(),
    }
}

/// What a person reads as "where": the innermost JS function of the
/// application (a script of its own, not node's `node:` internals) and the
/// innermost JS function run, `runChild → spawnSync`; the innermost two when
/// both are the application's; the innermost frame when no JS is on it.
fn js_path(profile: &Profile, stack: crate::profile::StackId) -> String {
    let frames = profile.stack(stack);
    let js: Vec<&crate::profile::Frame> = frames
        .iter()
        .map(|&f| profile.frame(f))
        .filter(|f| f.kind == FrameKind::Js)
        .collect();
    let Some(innermost) = js.last() else {
        return frames
            .last()
            .map(|&f| frame_label(profile.frame(f)))
            .unwrap_or_default();
    };
    let is_app = |f: &&crate::profile::Frame| !f.location.starts_with("node:");
    let caller = match js.iter().rposition(is_app) {
        Some(i) if i + 1 == js.len() => i.checked_sub(1).map(|i| js[i]),
        Some(i) => Some(js[i]),
        None => None,
    };
    match caller {
        Some(caller) => format!("{} → {}", caller.name, innermost.name),
        None => innermost.name.clone(),
    }
}

impl Report for LoopReport {
    fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        for l in &self.loops {
            write!(
                out,
                "event loop ({}): {:.0} % busy, {} turns",
                l.thread,
                l.utilization * 100.0,
                l.turns
            )?;
            let Some(longest) = l.long_turns.first() else {
                writeln!(out, "; none over {:.0} ms", l.threshold_ms)?;
                continue;
            };
            writeln!(
                out,
                "; {} over {:.0} ms, longest {}{}",
                l.long_turns.len(),
                l.threshold_ms,
                duration_text(longest.duration_ms),
                blame(longest)
            )?;
            for t in &l.long_turns {
                writeln!(
                    out,
                    "  {:>8.3}s  {:>9}{}",
                    t.at_s,
                    duration_text(t.duration_ms),
                    blame(t)
                )?;
            }
        }
        Ok(())
    }
}

fn duration_text(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

fn blame(t: &LongTurn) -> String {
    let mut text = String::new();
    if !t.running.is_empty() {
        text.push_str(" in ");
        text.push_str(&t.running);
    }
    if t.samples > 0 && t.off_cpu_samples * 2 > t.samples {
        text.push_str(" (blocked off CPU)");
    } else if t.samples == 0 {
        text.push_str(" (no sample: off CPU? `record --wall` shows where)");
    }
    text.push_str(&t.cut_marks());
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(tid: u32, time_ns: u64, kind: u32) -> ThreadEvent {
        ThreadEvent {
            time_ns,
            start_ns: 0,
            tgid: 1,
            tid,
            kind,
            epfd: if kind == EVENT_LOOP_ENTER { 5 } else { -1 },
        }
    }

    #[test]
    fn turns_run_from_an_exit_to_the_next_entry() {
        let events = [
            event(1, 100, EVENT_LOOP_ENTER), // a turn ran since the start
            event(1, 300, EVENT_LOOP_EXIT),
            event(1, 500, EVENT_LOOP_ENTER),
            event(1, 900, EVENT_LOOP_EXIT), // still in a turn at the end
            event(2, 200, EVENT_LOOP_EXIT),
            event(2, 250, EVENT_LOOP_ENTER),
            event(2, 5000, EVENT_LOOP_EXIT), // outside the window
        ];
        let loops = turns(&events, 0, 1000);
        assert_eq!(loops.len(), 2);
        let spans: Vec<(u64, u64, bool, bool)> = loops[0]
            .turns
            .iter()
            .map(|t| (t.start_ns, t.end_ns, t.began_before, t.ongoing))
            .collect();
        assert_eq!(
            spans,
            [
                (0, 100, true, false),
                (300, 500, false, false),
                (900, 1000, false, true)
            ]
        );
        assert!(!loops[1].turns[0].began_before, "it began in the window");
        assert!((loops[0].utilization - 0.4).abs() < 1e-9);
        assert_eq!(loops[1].turns.len(), 1);
        assert!((loops[1].utilization - 0.05).abs() < 1e-9);
    }

    /// `execSync` runs a loop of its own on the thread: its epoll_wait is
    /// inside the turn of the thread's loop, not a boundary.
    #[test]
    fn another_loop_on_the_thread_is_part_of_the_turn() {
        let other = |time_ns, kind| ThreadEvent {
            epfd: if kind == EVENT_LOOP_ENTER { 9 } else { -1 },
            ..event(1, time_ns, kind)
        };
        let events = [
            event(1, 100, EVENT_LOOP_EXIT),
            event(1, 200, EVENT_LOOP_ENTER),
            event(1, 300, EVENT_LOOP_EXIT),
            other(310, EVENT_LOOP_ENTER),
            other(800, EVENT_LOOP_EXIT),
            event(1, 900, EVENT_LOOP_ENTER),
            event(1, 950, EVENT_LOOP_EXIT),
            event(1, 960, EVENT_LOOP_ENTER),
        ];
        let loops = turns(&events, 0, 1000);
        let spans: Vec<(u64, u64)> = loops[0]
            .turns
            .iter()
            .map(|t| (t.start_ns, t.end_ns))
            .collect();
        assert_eq!(spans, [(100, 200), (300, 900), (950, 960)]);
    }

    /// The window opens while the thread waits in `execSync`'s loop inside
    /// a turn of its own: the inner loop's exit is part of that turn, which
    /// began before the window.
    #[test]
    fn a_turn_cut_by_the_start_is_marked_even_inside_another_loop() {
        let other = |time_ns, kind| ThreadEvent {
            epfd: if kind == EVENT_LOOP_ENTER { 9 } else { -1 },
            ..event(1, time_ns, kind)
        };
        let events = [
            event(1, 10, EVENT_LOOP_ENTER),
            event(1, 20, EVENT_LOOP_EXIT),
            event(1, 30, EVENT_LOOP_ENTER),
            event(1, 40, EVENT_LOOP_EXIT), // the turn begins before the window
            other(50, EVENT_LOOP_ENTER),
            other(150, EVENT_LOOP_EXIT), // the first event in the window
            event(1, 400, EVENT_LOOP_ENTER),
            event(1, 500, EVENT_LOOP_EXIT),
            event(1, 600, EVENT_LOOP_ENTER),
        ];
        let loops = turns(&events, 100, 1000);
        let spans: Vec<(u64, u64, bool, bool)> = loops[0]
            .turns
            .iter()
            .map(|t| (t.start_ns, t.end_ns, t.began_before, t.ongoing))
            .collect();
        assert_eq!(spans, [(100, 400, true, false), (500, 600, false, false)]);
        // Events only before the window: the thread is not listed.
        assert!(turns(&events[..4], 100, 1000).is_empty());
    }

    /// A helper thread's loop (node's delayed-task scheduler) that was
    /// never sampled and had no long turn is left out; the main thread's
    /// loop is listed even so.
    #[test]
    fn an_unsampled_quiet_helper_loop_is_not_listed() {
        use crate::profile::ProfileBuilder;
        let profile = ProfileBuilder::new(1, 100, 0, &[]).finish(1_000_000_000, 0);
        let loops = turns(
            &[
                event(1, 100, EVENT_LOOP_EXIT),
                event(1, 200, EVENT_LOOP_ENTER),
                event(7, 100, EVENT_LOOP_EXIT),
                event(7, 200, EVENT_LOOP_ENTER),
            ],
            0,
            1_000_000_000,
        );
        assert_eq!(loops.len(), 2);
        let report = LoopReport::of(&loops, &profile, Duration::from_millis(100));
        let tids: Vec<u32> = report.loops.iter().map(|l| l.tid).collect();
        assert_eq!(tids, [1]);
    }

    #[test]
    fn long_turns_name_what_ran() {
        use crate::profile::{Frame, ProfileBuilder};
        let js = |name: &str| Frame {
            line: Some(1),
            column: Some(0),
            ..Frame::new(FrameKind::Js, name, "file:///app.js")
        };
        let mut b = ProfileBuilder::new(1, 100, 0, &[]);
        b.add_stack(vec![js("main"), js("handleRequest"), js("parse")]);
        b.add_stack(vec![js("main"), js("idle")]);
        for i in 0..30 {
            b.add_sample(1_000_000_000 + i * 10_000_000, 1, "node", 0);
        }
        b.add_sample(1_200_000_000, 1, "node", 1);
        let profile = b.finish(3_000_000_000, 0);
        let loops = turns(
            &[
                event(1, 1_000_000_000, EVENT_LOOP_EXIT),
                event(1, 1_310_000_000, EVENT_LOOP_ENTER),
                event(1, 2_000_000_000, EVENT_LOOP_EXIT),
                event(1, 2_050_000_000, EVENT_LOOP_ENTER),
            ],
            0,
            3_000_000_000,
        );
        let report = LoopReport::of(&loops, &profile, Duration::from_millis(100));
        let l = &report.loops[0];
        assert_eq!(
            l.long_turns.len(),
            1,
            "the 50 ms turn is under the threshold"
        );
        let t = &l.long_turns[0];
        assert!((t.duration_ms - 310.0).abs() < 1e-6);
        assert_eq!(t.running, "handleRequest → parse");
        let text = report.to_text();
        assert!(
            text.contains("1 over 100 ms, longest 310 ms in handleRequest → parse"),
            "{text}"
        );
        assert!(!text.contains("running at"), "{text}");

        // A window that opens inside that turn and closes inside the next.
        let loops = turns(
            &[
                event(1, 1_000_000_000, EVENT_LOOP_EXIT),
                event(1, 1_310_000_000, EVENT_LOOP_ENTER),
                event(1, 1_350_000_000, EVENT_LOOP_EXIT),
            ],
            1_100_000_000,
            1_500_000_000,
        );
        let spans: Vec<(u64, u64, bool, bool)> = loops[0]
            .turns
            .iter()
            .map(|t| (t.start_ns, t.end_ns, t.began_before, t.ongoing))
            .collect();
        assert_eq!(
            spans,
            [
                (1_100_000_000, 1_310_000_000, true, false),
                (1_350_000_000, 1_500_000_000, false, true)
            ]
        );
        let text = LoopReport::of(&loops, &profile, Duration::from_millis(100)).to_text();
        assert!(
            text.contains("210 ms in handleRequest → parse (already running at the start)\n"),
            "{text}"
        );
        assert!(
            text.contains("150 ms (no sample: off CPU? `record --wall` shows where) (still running at the end)\n"),
            "{text}"
        );
    }
}
