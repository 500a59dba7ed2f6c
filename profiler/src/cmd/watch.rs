//! `nodeprof watch`: reads every watched process each interval (CPU, RSS,
//! V8 heap and leak signal from GC tracing, event-loop utilization and
//! longest turn from `epoll_wait` tracepoints), hands the readings to
//! [`crate::watch::Policy`], and takes the captures it decides, one at a
//! time, on a thread of their own so that watching goes on meanwhile.
//!
//! The readings come from outside the process: a blocked event loop is
//! measured as well as an idle one, where an in-process monitor would be
//! blocked with it.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use crate::capture::core::{self, CoreOptions};
use crate::capture::cpu::{self, CaptureError, CpuOptions};
use crate::capture::snapshot::{self, SnapshotOptions};
use crate::capture::{interrupt, StopReason};
use crate::clock::monotonic_ns;
use crate::collect::ThreadEventCollector;
use crate::eventloop::{self, LoopReport};
use crate::gc::{leak, GcFleet, LeakDetector};
use crate::output::{CaptureFile, FileError, Format, OutputFiles, Report, Summary};
use crate::probe::{self, Probe, ProbeError, Purpose};
use crate::profile::FrameKind;
use crate::stacks::report::DumpReport;
use crate::target::{Runtime, Target};
use crate::watch::{
    human, Action, Decision, Disk, LoopMeter, Policy, Reading, Select, Settings, Trigger,
};
use nodeprof_common::{EVENT_LOOP_ENTER, EVENT_LOOP_EXIT};

pub use crate::watch::Settings as WatchOptions;

/// How often the kernel's buffers are drained between checks.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// A `command` action still running after this is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Target(#[from] crate::target::TargetError),
    #[error("cannot {action}: {source}")]
    Io {
        action: &'static str,
        source: std::io::Error,
    },
    #[error("output directory {0} does not exist")]
    NoOutputDir(PathBuf),
}

/// Why watching ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEnd {
    TargetsGone,
    Stopped(StopReason),
}

/// Watches until the targets are gone (unless `keep_waiting`), SIGINT or
/// SIGTERM; one line per event on `out`.
pub fn run(options: &WatchOptions, out: &mut dyn Write) -> Result<WatchEnd, WatchError> {
    // Uprobes (GC) and the sampler of profile captures.
    probe::check_permissions(probe::UPROBES)?;
    if !options.out.is_dir() {
        return Err(WatchError::NoOutputDir(options.out.clone()));
    }
    if let Select::Pids(pids) = &options.select {
        for &pid in pids {
            Target::inspect(pid)?;
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| WatchError::Io {
            action: "start the event loop",
            source,
        })?;
    runtime.block_on(watch(options, out))
}

/// One watched process.
struct Watched {
    target: Target,
    /// Tells an exec: the GC probes must move to the new image.
    runtime: Runtime,
    /// utime + stime in clock ticks, and when read.
    cpu: Option<(u64, Instant)>,
    meter: LoopMeter,
    /// Per JS thread (isolate).
    leaks: HashMap<u32, LeakDetector>,
    leak_since_check: bool,
    /// The turn (by its start) that already brought a check forward.
    early_check_for: Option<u64>,
    heap_used: Option<u64>,
    heap_after_full: Option<u64>,
}

/// The kernel side of watching: one probe for every target, kept attached
/// between captures.
struct Monitor {
    probe: Probe,
    loop_events: Option<ThreadEventCollector>,
    gc: GcFleet,
    leak_after: u32,
}

/// A capture running on its own thread.
struct Running {
    pid: u32,
    handle: JoinHandle<Vec<Line>>,
}

/// One line of output: text, or its JSON form.
struct Line {
    text: String,
    json: serde_json::Value,
}

async fn watch(options: &WatchOptions, out: &mut dyn Write) -> Result<WatchEnd, WatchError> {
    let mut probe = Probe::load_with(Purpose::Tracing)?;
    let loop_events = if options.no_loop {
        None
    } else {
        match probe.start_loop_tracing() {
            Ok(()) => probe.take_thread_events().map(ThreadEventCollector::new),
            Err(e) => {
                tracing::warn!("event loops not measured: {e}");
                None
            }
        }
    };
    let mut monitor = Monitor {
        probe,
        loop_events,
        gc: GcFleet::new(),
        leak_after: options.leak_after,
    };
    let mut policy = Policy::new(options.thresholds.clone(), options.limits.clone());
    let mut watched: BTreeMap<u32, Watched> = BTreeMap::new();
    let mut finder = Finder::new(&options.select);
    let stopping = Arc::new(AtomicBool::new(false));
    let mut running: Option<Running> = None;
    let mut ever_watched = false;
    let mut floor_said = false;
    let mut interrupt = signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut terminate = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut drain = tokio::time::interval(DRAIN_EVERY);
    let mut next_check = Instant::now();
    // The limit counts captures by the loop's `now`: their `at_s` too, so
    // two captures the limit allows are as far apart in the output.
    let started_ns = monotonic_ns();
    let json_out = options.json;
    let emit = |out: &mut dyn Write, line: Line| {
        let _ = if json_out {
            writeln!(out, "{}", line.json)
        } else {
            writeln!(out, "{}", line.text)
        };
        let _ = out.flush();
    };
    let end = loop {
        tokio::select! {
            _ = interrupt.recv() => break WatchEnd::Stopped(StopReason::Interrupted),
            _ = terminate.recv() => break WatchEnd::Stopped(StopReason::Terminated),
            _ = drain.tick() => {}
        }
        let now = monotonic_ns();
        monitor.drain(&mut watched, |pid, at| policy.quiet(pid, at));
        if let Some(r) = running.take() {
            if r.handle.is_finished() {
                let lines = r.handle.join().unwrap_or_default();
                for line in lines {
                    emit(out, line);
                }
                policy.finished(r.pid, monotonic_ns());
                if let Some(keep) = options.keep {
                    for removed in retain(&options.out, keep) {
                        emit(out, removed_line(&removed));
                    }
                }
            } else {
                running = Some(r);
            }
        }
        // A turn running past --loop-blocked brings the check forward, so
        // that a dump sees the loop while it is still blocked.
        // Once per turn: a loop blocked for good is not checked every tick.
        let mut blocked_now = false;
        if let (Some(limit), None) = (options.thresholds.loop_blocked, &running) {
            let limit = limit.as_nanos() as u64;
            for w in watched.values_mut() {
                if let Some(d) = w.meter.ongoing_ns(now).filter(|&d| d >= limit) {
                    let since = now - d;
                    if w.early_check_for != Some(since) {
                        w.early_check_for = Some(since);
                        blocked_now = true;
                    }
                }
            }
        }
        if Instant::now() < next_check && !blocked_now {
            continue;
        }
        next_check += options.interval;
        // A late check (a slow drain) does not make up for missed ones.
        if next_check < Instant::now() {
            next_check = Instant::now() + options.interval;
        }
        // Targets that left, then targets that came.
        let gone: Vec<u32> = watched
            .values()
            .filter(|w| !w.target.is_alive())
            .map(|w| w.target.pid)
            .collect();
        for pid in gone {
            watched.remove(&pid);
            monitor.forget(pid);
            policy.forget(pid);
            finder.forget(pid);
            emit(
                out,
                Line {
                    text: format!("pid {pid} exited"),
                    json: json!({"type": "exit", "pid": pid}),
                },
            );
        }
        let mut fresh = Vec::new();
        for target in finder.scan() {
            let pid = target.pid;
            if watched.contains_key(&pid) {
                continue;
            }
            fresh.push(pid);
            let (line, w) = monitor.adopt(target);
            emit(out, line);
            watched.insert(pid, w);
            ever_watched = true;
        }
        if watched.is_empty() && running.is_none() {
            let fixed = matches!(options.select, Select::Pids(_));
            if fixed || (ever_watched && !options.keep_waiting) {
                break WatchEnd::TargetsGone;
            }
        }
        for w in watched.values_mut() {
            if let Some(line) = monitor.follow_exec(w) {
                emit(out, line);
            }
        }
        // A process found in this check is read from the next one: a
        // reading needs an interval behind it.
        let loops_measured = monitor.loop_events.is_some();
        let readings: Vec<Reading> = watched
            .values_mut()
            .filter(|w| !fresh.contains(&w.target.pid))
            .map(|w| read(w, loops_measured))
            .collect();
        if options.readings {
            for r in &readings {
                emit(out, reading_line(r));
            }
        }
        let disk = disk_state(options);
        if let Disk::BelowFloor { free, floor } = disk {
            if !floor_said {
                floor_said = true;
                emit(
                    out,
                    Line {
                        text: format!(
                            "free disk space in {} is {} (under {}): capturing nothing until there is more",
                            options.out.display(), human(free), human(floor)
                        ),
                        json: json!({"type": "disk", "state": "below-floor", "free": free, "floor": floor}),
                    },
                );
            }
        } else {
            floor_said = false;
        }
        let decisions = policy.check(now, &readings, &disk);
        for decision in decisions {
            match decision {
                Decision::Capture {
                    pid,
                    trigger,
                    why,
                    cluster_skipped,
                } => {
                    let Some(w) = watched.get(&pid) else { continue };
                    if !cluster_skipped.is_empty() {
                        emit(out, cluster_line(pid, trigger, &cluster_skipped));
                    }
                    let reading = readings.iter().find(|r| r.pid == pid).cloned();
                    let job = Job {
                        target: w.target.clone(),
                        trigger,
                        why,
                        reading: reading.unwrap_or_default(),
                        actions: options.actions.get(&trigger).cloned().unwrap_or_default(),
                        options: options.clone(),
                        stopping: stopping.clone(),
                        at_s: now.saturating_sub(started_ns) as f64 / 1e9,
                    };
                    let handle = std::thread::Builder::new()
                        .name(format!("capture-{pid}"))
                        .spawn(move || job.run())
                        .map_err(|source| WatchError::Io {
                            action: "start a capture thread",
                            source,
                        })?;
                    running = Some(Running { pid, handle });
                }
                Decision::Limited {
                    pid,
                    trigger,
                    max,
                    per,
                } => emit(
                    out,
                    Line {
                        text: format!(
                            "pid {pid}: {trigger} crossed again; limit of {max} per {} reached, not captured",
                            humantime::format_duration(per)
                        ),
                        json: json!({"type": "limited", "pid": pid, "trigger": trigger, "max": max, "per_s": per.as_secs_f64()}),
                    },
                ),
                Decision::Clustered {
                    pid,
                    trigger,
                    captured,
                } => emit(out, clustered_line(pid, trigger, &captured)),
                Decision::DiskFull(disk) => emit(out, disk_line(&disk, &options.out)),
            }
        }
    };
    stopping.store(true, Ordering::SeqCst);
    if let WatchEnd::Stopped(reason) = end {
        // A snapshot or core under way stops as its command's would: the
        // inspector closed, the target resumed, no partial file.
        interrupt::request(match reason {
            StopReason::Interrupted => libc::SIGINT,
            _ => libc::SIGTERM,
        });
    }
    if let Some(r) = running {
        // A capture is never cut off in a state that leaves its target
        // stopped: the profile ends at the signal too, and is written.
        emit(
            out,
            Line {
                text: format!("finishing the capture of pid {}", r.pid),
                json: json!({"type": "finishing", "pid": r.pid}),
            },
        );
        // Signals still count meanwhile: a second one cuts short the wait
        // for an inspector to close behind an abandoned snapshot.
        while !r.handle.is_finished() {
            tokio::select! {
                _ = interrupt.recv() => interrupt::request(libc::SIGINT),
                _ = terminate.recv() => interrupt::request(libc::SIGTERM),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        for line in r.handle.join().unwrap_or_default() {
            emit(out, line);
        }
    }
    let reason = match end {
        WatchEnd::TargetsGone => "no process left to watch",
        WatchEnd::Stopped(reason) => reason.describe(),
    };
    emit(
        out,
        Line {
            text: format!("watch ended: {reason}"),
            json: json!({"type": "end", "reason": reason}),
        },
    );
    Ok(end)
}

fn signal(
    kind: tokio::signal::unix::SignalKind,
) -> Result<tokio::signal::unix::Signal, WatchError> {
    tokio::signal::unix::signal(kind).map_err(|source| WatchError::Io {
        action: "install the signal handlers",
        source,
    })
}

impl Monitor {
    /// Starts watching `target`: its loop and GC events, a CPU baseline.
    fn adopt(&mut self, target: Target) -> (Line, Watched) {
        let pid = target.pid;
        let mut notes = Vec::new();
        if let Err(e) = self.probe.add_target(pid) {
            notes.push(format!("event loop not measured: {e}"));
        }
        // The first look, before the GC probes go on that executable: an
        // exec while they attach is then seen as one.
        let mut runtime = Runtime::new(pid);
        let _ = runtime.poll();
        // Heap figures and the leak signal come from GC tracing.
        match self.gc.attach(&mut self.probe, pid) {
            Ok(missing) => notes.extend(missing),
            Err(e) => notes.push(format!("GC not traced: {e}")),
        }
        let command_line = command_line(pid);
        let mut w = Watched {
            runtime,
            cpu: None,
            // From now: attaching took time the loop was not watched.
            meter: LoopMeter::new(monotonic_ns()),
            leaks: HashMap::new(),
            leak_since_check: false,
            early_check_for: None,
            heap_used: None,
            heap_after_full: None,
            target,
        };
        w.cpu = cpu_ticks(pid).map(|t| (t, Instant::now()));
        let mut text = format!("watching pid {pid} ({command_line})");
        for note in &notes {
            text.push_str("; ");
            text.push_str(note);
        }
        let line = Line {
            text,
            json: json!({"type": "watch", "pid": pid, "command": command_line, "notes": notes}),
        };
        (line, w)
    }

    /// A process that exec'd: its GC probes sat on the old image and are
    /// moved to the new one (as `record` does), and the heap figures and
    /// the event-loop turn of the old program are dropped. CPU and RSS
    /// readings carry on.
    fn follow_exec(&mut self, w: &mut Watched) -> Option<Line> {
        let found = w.runtime.poll()?;
        let pid = w.target.pid;
        self.gc.detach(&mut self.probe, pid);
        // The old program's turn ended with it: the new one starts afresh.
        w.meter = LoopMeter::new(monotonic_ns());
        w.early_check_for = None;
        w.heap_used = None;
        w.heap_after_full = None;
        w.leaks.clear();
        w.leak_since_check = false;
        if let Ok(target) = Target::inspect(pid) {
            w.target = target;
        }
        let mut notes = Vec::new();
        if found.v8.is_ok() {
            match self.gc.attach(&mut self.probe, pid) {
                Ok(missing) => notes.extend(missing),
                Err(e) => notes.push(format!("GC not traced: {e}")),
            }
        } else {
            notes.push("no V8 in it: no heap readings".into());
        }
        let exe = found.exe.display().to_string();
        let mut text = format!("pid {pid} exec'd {exe}");
        for note in &notes {
            text.push_str("; ");
            text.push_str(note);
        }
        Some(Line {
            text,
            json: json!({"type": "exec", "pid": pid, "exe": exe, "notes": notes}),
        })
    }

    fn forget(&mut self, pid: u32) {
        self.gc.detach(&mut self.probe, pid);
        self.probe.remove_target(pid);
    }

    /// Takes in the loop and GC events the kernel wrote since the last
    /// drain. A GC of a process `quiet` when it ran does not feed its leak
    /// signal.
    fn drain(&mut self, watched: &mut BTreeMap<u32, Watched>, quiet: impl Fn(u32, u64) -> bool) {
        if let Some(events) = &mut self.loop_events {
            let mut batch = Vec::new();
            events.drain(|e| {
                // The main thread's loop: the one that serves the program.
                if e.tgid == e.tid && (e.kind == EVENT_LOOP_ENTER || e.kind == EVENT_LOOP_EXIT) {
                    batch.push(e);
                }
            });
            // Per-CPU buffers interleave: in time order per thread.
            batch.sort_by_key(|e| e.time_ns);
            for e in batch {
                if let Some(w) = watched.get_mut(&e.tgid) {
                    w.meter.event(e.time_ns, e.kind == EVENT_LOOP_ENTER);
                }
            }
        }
        for (pid, gc) in self.gc.drain() {
            let Some(w) = watched.get_mut(&pid) else {
                continue;
            };
            if let Some(after) = gc.heap_after {
                w.heap_used = Some(after);
                if gc.kind.is_full() {
                    w.heap_after_full = Some(after);
                }
            }
            if quiet(pid, gc.end_ns()) {
                continue;
            }
            let leak_after = self.leak_after;
            let detector = w
                .leaks
                .entry(gc.tid)
                .or_insert_with(|| LeakDetector::new(leak_after, leak::DEFAULT_NOISE_FLOOR_BYTES));
            if detector.observe(&gc).is_some() {
                w.leak_since_check = true;
            }
        }
    }
}

/// One check's readings of a process; its event loop's only when
/// `loops_measured` (without loop events a loop would read as idle).
fn read(w: &mut Watched, loops_measured: bool) -> Reading {
    let pid = w.target.pid;
    let now = monotonic_ns();
    let cpu_percent = cpu_ticks(pid).and_then(|ticks| {
        let at = Instant::now();
        let previous = w.cpu.replace((ticks, at));
        let (before, then) = previous?;
        let seconds = at.duration_since(then).as_secs_f64();
        // Clock ticks are 10 ms: a shorter span says nothing.
        (seconds >= 0.1)
            .then(|| ticks.saturating_sub(before) as f64 / clock_ticks() / seconds * 100.0)
    });
    let window = if loops_measured {
        w.meter.finish(now, eventloop::stuck_in_turn(pid))
    } else {
        None
    };
    let leak = std::mem::take(&mut w.leak_since_check);
    Reading {
        pid,
        cpu_percent,
        rss_bytes: rss(pid),
        heap_used_bytes: w.heap_used,
        heap_after_full_gc_bytes: w.heap_after_full,
        leak,
        loop_utilization: window.map(|l| l.utilization),
        longest_turn_ms: window.map(|l| l.longest_ns as f64 / 1e6),
    }
}

/// utime + stime of every thread, clock ticks (`/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name can hold spaces and parentheses: fields follow the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15; fields[0] is field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

fn rss(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Some(pages * page)
}

fn command_line(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let text: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect();
    text.join(" ")
}

/// Finds the processes to watch, now and as they start.
struct Finder {
    select: Select,
    /// Processes already looked at, by pid, with the executable seen then
    /// (a process that execs node later is looked at again).
    seen: HashMap<u32, PathBuf>,
    /// Executables (device, inode) and whether they hold V8.
    v8_binaries: HashMap<(u64, u64), bool>,
    own: u32,
}

impl Finder {
    fn new(select: &Select) -> Finder {
        Finder {
            select: select.clone(),
            seen: HashMap::new(),
            v8_binaries: HashMap::new(),
            own: std::process::id(),
        }
    }

    fn forget(&mut self, pid: u32) {
        self.seen.remove(&pid);
    }

    /// The matching processes not returned before.
    fn scan(&mut self) -> Vec<Target> {
        let mut found = Vec::new();
        if let Select::Pids(pids) = &self.select {
            for &pid in pids {
                if self.seen.contains_key(&pid) {
                    continue;
                }
                self.seen.insert(pid, PathBuf::new());
                if let Ok(target) = Target::inspect(pid) {
                    found.push(target);
                }
            }
            return found;
        }
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return found;
        };
        let mut alive = Vec::new();
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            alive.push(pid);
            if pid == self.own {
                continue;
            }
            let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else {
                continue;
            };
            if self.seen.get(&pid) == Some(&exe) {
                continue;
            }
            self.seen.insert(pid, exe);
            if !self.matches(pid) || !self.runs_v8(pid) {
                continue;
            }
            if let Ok(target) = Target::inspect(pid) {
                found.push(target);
            }
        }
        alive.sort_unstable();
        self.seen.retain(|pid, _| alive.binary_search(pid).is_ok());
        found
    }

    /// Whether the process runs node, told by its executable's contents
    /// (V8's layout), once per executable file.
    fn runs_v8(&mut self, pid: u32) -> bool {
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let Ok(meta) = std::fs::metadata(&exe) else {
            return false;
        };
        let key = (
            std::os::unix::fs::MetadataExt::dev(&meta),
            std::os::unix::fs::MetadataExt::ino(&meta),
        );
        *self
            .v8_binaries
            .entry(key)
            .or_insert_with(|| crate::target::discover(&exe).is_ok())
    }

    fn matches(&self, pid: u32) -> bool {
        match &self.select {
            Select::All => true,
            Select::Pids(pids) => pids.contains(&pid),
            Select::Name(regex) => regex.is_match(&command_line(pid)),
            Select::Cgroup(path) => in_cgroup(
                &std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default(),
                path,
            ),
        }
    }
}

/// Whether a process whose `/proc/PID/cgroup` reads `text` is in cgroup
/// `path` or below it (`0::/system.slice/app.service`; cgroup v1 lines name
/// a hierarchy first, and match the same way).
fn in_cgroup(text: &str, path: &str) -> bool {
    let below = format!("{}/", path.trim_end_matches('/'));
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .any(|cg| cg == path || cg.starts_with(&below))
}

/// A capture decided by the policy, taken on its own thread.
struct Job {
    target: Target,
    trigger: Trigger,
    why: String,
    reading: Reading,
    actions: Vec<Action>,
    options: Settings,
    stopping: Arc<AtomicBool>,
    /// When it was decided, seconds since watching began.
    at_s: f64,
}

impl Job {
    fn run(self) -> Vec<Line> {
        let mut lines = Vec::new();
        // One capture at a time on the host, also across watch instances.
        let _lock = match HostLock::take() {
            Ok(lock) => lock,
            Err(error) => {
                for &action in &self.actions {
                    lines.push(self.line(action, Err(error.clone())));
                }
                return lines;
            }
        };
        for &action in &self.actions {
            if self.stopping.load(Ordering::SeqCst) || !self.target.is_alive() {
                break;
            }
            let started = SystemTime::now();
            let result = match action {
                Action::Profile => self.profile(started),
                Action::Command => self.command(started),
                Action::Dump => self.dump(started),
                Action::Snapshot => self.snapshot(started),
                Action::Core => self.core(started),
            };
            lines.push(self.line(action, result));
        }
        lines
    }

    fn stem(&self, kind: &str, at: SystemTime) -> PathBuf {
        self.options
            .out
            .join(format!("{kind}-{}-{}", self.target.pid, utc_stamp(at)))
    }

    /// `<kind>-<pid>-<UTC time>.<extension>` in `--out`.
    fn path(&self, kind: &str, at: SystemTime, extension: &str) -> PathBuf {
        let mut path = self.stem(kind, at).into_os_string();
        path.push(".");
        path.push(extension);
        PathBuf::from(path)
    }

    /// Bytes a capture may take: what `--max-disk` has left, and what the
    /// disk has above `--min-free`.
    fn room(&self) -> Option<u64> {
        let out = &self.options.out;
        let budget = self.options.max_disk.map(|budget| {
            let used: u64 = our_files(out).iter().map(|f| f.2).sum();
            budget.saturating_sub(used)
        });
        let above_floor = free_bytes(out).map(|free| free.saturating_sub(self.options.min_free));
        budget.into_iter().chain(above_floor).min()
    }

    /// A heap snapshot through the target's inspector (started with SIGUSR1
    /// and closed again if it was not listening), into a 0600 file named
    /// when complete; one whose expected size exceeds [`Job::room`] is not taken.
    fn snapshot(&self, at: SystemTime) -> Result<Done, String> {
        let mut file = CaptureFile::create(&self.path("snapshot", at, "heapsnapshot"))
            .map_err(|e| e.to_string())?;
        let options = SnapshotOptions {
            force: false,
            quiet: true,
            room: self.room(),
            worker: None,
        };
        let dir = file.dir();
        let taken = snapshot::capture(
            &self.target,
            file.file(),
            &dir,
            &options,
            &indicatif::ProgressBar::hidden(),
        )
        .map_err(|e| e.to_string())?;
        let path = file.persist().map_err(|e| e.to_string())?;
        let inspector = match (taken.opened, taken.closed) {
            (true, true) => "inspector started with SIGUSR1, closed again",
            (true, false) => {
                "inspector started with SIGUSR1 did NOT close: its port may still listen"
            }
            (false, _) => "inspector already listening, left open",
        };
        Ok(Done {
            files: vec![path],
            detail: format!(
                "heap {} used of {}; the target's JS waited {:.1} s; {inspector}",
                human(taken.heap_used),
                human(taken.heap_total),
                taken.took.as_secs_f64()
            ),
        })
    }

    /// A core file: every thread stopped while its memory is written, then
    /// resumed (on every path, capture::core's guarantee); refused when its
    /// expected size exceeds [`Job::room`].
    fn core(&self, at: SystemTime) -> Result<Done, String> {
        let pid = self.target.pid;
        let options = CoreOptions {
            quiet: true,
            ..CoreOptions::default()
        };
        let (expected, _) = core::expected_size(pid, &options).map_err(|e| e.to_string())?;
        let need = core::disk_needed(expected);
        if let Some(room) = self.room().filter(|&room| need > room) {
            return Err(format!(
                "the core is expected to take about {}, more than the {} --max-disk and --min-free leave; not taken",
                human(need),
                human(room)
            ));
        }
        let mut file =
            CaptureFile::create(&self.path("core", at, "core")).map_err(|e| e.to_string())?;
        let taken = core::capture(
            pid,
            &options,
            file.file(),
            &indicatif::ProgressBar::hidden(),
        )
        .map_err(|e| e.to_string())?;
        let path = file.persist().map_err(|e| e.to_string())?;
        Ok(Done {
            detail: format!(
                "{} threads stopped for {:.1} ms, then resumed; read it with gdb {} {}",
                taken.threads,
                taken.stopped.as_secs_f64() * 1e3,
                self.target.exe.display(),
                path.display()
            ),
            files: vec![path],
        })
    }

    /// A CPU profile of the next `profile_duration`, in the default formats.
    fn profile(&self, at: SystemTime) -> Result<Done, String> {
        let stem = self.stem("cpu", at);
        let files =
            OutputFiles::create(&stem, &Format::DEFAULT).map_err(|e: FileError| e.to_string())?;
        let sampling = CpuOptions {
            frequency_hz: 99,
            clock: cpu::Clock::Cpu,
            duration: Some(self.options.profile_duration),
            quiet: true,
            trace_gc: true,
            trace_loop: !self.options.no_loop,
        };
        let mut capture = match cpu::capture(&sampling, &self.target, None) {
            Ok(capture) => capture,
            Err(e) => {
                files.discard();
                return Err(capture_error(e));
            }
        };
        let profile = capture.profile();
        let title = format!(
            "nodeprof watch: pid {} ({}), {}",
            self.target.pid, self.trigger, self.why
        );
        let written = files.write(&profile, &title).map_err(|e| e.to_string())?;
        let summary = Summary::from_profile(&profile, 20);
        let mut detail = summary
            .js_self
            .iter()
            .find(|f| f.kind == FrameKind::Js)
            .map(|f| format!("hottest JS function {} ({:.0} %)", f.label, f.percent))
            .unwrap_or_else(|| format!("{} samples", summary.samples));
        if let (Trigger::LoopBlocked, Some(threshold), Some(loops)) = (
            self.trigger,
            self.options.thresholds.loop_blocked,
            capture.loops(),
        ) {
            let report = LoopReport::of(&loops, &profile, threshold);
            let main = report.loops.iter().find(|l| l.tid == self.target.pid);
            if let Some(turn) = main.and_then(|l| l.long_turns.first()) {
                detail = format!(
                    "longest turn {:.0} ms in {}{}; {detail}",
                    turn.duration_ms,
                    if turn.running.is_empty() {
                        "?"
                    } else {
                        &turn.running
                    },
                    turn.cut_marks()
                );
            }
        }
        if capture.stop != StopReason::DurationElapsed {
            detail.push_str(&format!("; stopped early: {}", capture.stop.describe()));
        }
        Ok(Done {
            files: written,
            detail,
        })
    }

    /// Every thread's state, system call and stack now, as `nodeprof dump`
    /// prints them, in a text file; the main thread's verdict is the detail.
    fn dump(&self, at: SystemTime) -> Result<Done, String> {
        // Named only when complete, like every capture.
        let mut file =
            CaptureFile::create(&self.path("dump", at, "txt")).map_err(|e| e.to_string())?;
        let stacks =
            crate::stacks::capture(self.target.pid, crate::stacks::SampleWindow::default())
                .map_err(|e| e.to_string())?;
        let report = DumpReport::of(&stacks);
        report
            .write_text(file.file())
            .map_err(|e| format!("cannot write {}: {e}", file.path().display()))?;
        let path = file.persist().map_err(|e| e.to_string())?;
        let detail = report
            .threads
            .iter()
            .find(|t| t.main)
            .map(|t| format!("main thread: {}", t.verdict))
            .unwrap_or_else(|| format!("{} threads", report.threads.len()));
        Ok(Done {
            files: vec![path],
            detail,
        })
    }

    /// `sh -c COMMAND` with the pid and the reason in its environment; its
    /// output goes to a log file beside the captures.
    fn command(&self, at: SystemTime) -> Result<Done, String> {
        let command = self.options.command.as_deref().unwrap_or_default();
        let log_path = self.path("command", at, "log");
        let log = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let err_log = log
            .try_clone()
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .env("NODEPROF_PID", self.target.pid.to_string())
            .env("NODEPROF_TRIGGER", self.trigger.name())
            .env("NODEPROF_REASON", &self.why)
            .env("NODEPROF_OUT", &self.options.out)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(|e| format!("cannot run {command:?}: {e}"))?;
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) => {}
                Err(e) => break Err(format!("cannot wait for {command:?}: {e}")),
            }
            if self.stopping.load(Ordering::SeqCst) || started.elapsed() > COMMAND_TIMEOUT {
                // Our own child, by pid.
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!(
                    "{command:?} killed (watch ending or over {COMMAND_TIMEOUT:?})"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }?;
        Ok(Done {
            files: vec![log_path],
            detail: format!("`{command}` exited with {status}"),
        })
    }

    fn line(&self, action: Action, result: Result<Done, String>) -> Line {
        let pid = self.target.pid;
        let trigger = self.trigger;
        let time = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        match result {
            Ok(done) => {
                let bytes: u64 = done
                    .files
                    .iter()
                    .filter_map(|f| std::fs::metadata(f).ok())
                    .map(|m| disk_bytes(&m))
                    .sum();
                let names: Vec<String> =
                    done.files.iter().map(|f| f.display().to_string()).collect();
                Line {
                    text: format!(
                        "{time} {} of pid {pid}: {trigger} {}; {}; wrote {} ({})",
                        action.name(),
                        self.why,
                        done.detail,
                        names.join(", "),
                        human(bytes)
                    ),
                    json: json!({
                        "type": "capture",
                        "time": time,
                        "at_s": self.at_s,
                        "pid": pid,
                        "action": action.name(),
                        "trigger": trigger,
                        "why": self.why,
                        "reading": self.reading,
                        "detail": done.detail,
                        "files": names,
                        "bytes": bytes,
                    }),
                }
            }
            Err(error) => Line {
                text: format!(
                    "{time} {} of pid {pid} failed: {error} ({trigger} {})",
                    action.name(),
                    self.why
                ),
                json: json!({
                    "type": "capture-failed",
                    "time": time,
                    "pid": pid,
                    "action": action.name(),
                    "trigger": trigger,
                    "why": self.why,
                    "error": error,
                }),
            },
        }
    }
}

/// `/run/nodeprof-capture.lock`, held (flock) while a capture runs.
struct HostLock {
    /// The lock lives as long as this descriptor.
    _file: Option<std::fs::File>,
}

impl HostLock {
    const PATH: &'static str = "/run/nodeprof-capture.lock";

    fn take() -> Result<HostLock, String> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        // Without /run (a minimal container) captures are serialized per watch only.
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(Self::PATH)
        else {
            return Ok(HostLock { _file: None });
        };
        // SAFETY: flock on an fd we own; released when it is closed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(format!(
                "another nodeprof is capturing on this host ({} is locked)",
                Self::PATH
            ));
        }
        Ok(HostLock { _file: Some(file) })
    }
}

struct Done {
    files: Vec<PathBuf>,
    detail: String,
}

fn capture_error(e: CaptureError) -> String {
    e.to_string()
}

/// `20261130T140312Z`: sortable, and the same in every time zone.
fn utc_stamp(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T' || *c == 'Z')
        .collect()
}

/// Files `watch` writes: `<kind>-<pid>-<UTC time>.<ext>`.
fn capture_stem(name: &str) -> Option<&str> {
    let (stem, _ext) = name.split_once('.')?;
    let mut parts = stem.splitn(3, '-');
    let kind = parts.next()?;
    let pid = parts.next()?;
    let time = parts.next()?;
    let ok = Action::ALL.iter().any(|a| a.name() == kind) || kind == "cpu";
    let ok = ok
        && pid.bytes().all(|b| b.is_ascii_digit())
        && time.len() == 16
        && time.ends_with('Z')
        && time.as_bytes()[8] == b'T';
    ok.then_some(stem)
}

/// Our files in `dir`: (stem, path, size, modified).
fn our_files(dir: &Path) -> Vec<(String, PathBuf, u64, SystemTime)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let stem = capture_stem(&name)?.to_string();
            let meta = e.metadata().ok()?;
            meta.is_file().then(|| {
                (
                    stem,
                    e.path(),
                    disk_bytes(&meta),
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                )
            })
        })
        .collect()
}

/// What a file takes on disk: a core's pages never touched are holes, so
/// its length says more than it holds.
fn disk_bytes(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.len().min(meta.blocks() * 512)
}

fn disk_state(options: &Settings) -> Disk {
    if let Some(budget) = options.max_disk {
        let used: u64 = our_files(&options.out).iter().map(|f| f.2).sum();
        if used >= budget {
            return Disk::BudgetSpent { used, budget };
        }
    }
    if let Some(free) = free_bytes(&options.out) {
        if free < options.min_free {
            return Disk::BelowFloor {
                free,
                floor: options.min_free,
            };
        }
    }
    Disk::Ok
}

fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: zeroed statvfs is a valid out-parameter; path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Keeps the newest `keep` captures in `dir`, removing the oldest first;
/// returns the files removed.
fn retain(dir: &Path, keep: usize) -> Vec<PathBuf> {
    let files = our_files(dir);
    let mut stems: BTreeMap<String, SystemTime> = BTreeMap::new();
    for (stem, _, _, modified) in &files {
        let newest = stems.entry(stem.clone()).or_insert(*modified);
        *newest = (*newest).max(*modified);
    }
    let mut by_age: Vec<(SystemTime, String)> = stems.into_iter().map(|(s, t)| (t, s)).collect();
    // Oldest first; the UTC stamp in the name breaks ties.
    by_age.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| stamp_of(&a.1).cmp(stamp_of(&b.1)))
    });
    let excess = by_age.len().saturating_sub(keep);
    let old: Vec<&String> = by_age.iter().take(excess).map(|(_, s)| s).collect();
    let mut removed = Vec::new();
    for (stem, path, _, _) in &files {
        if old.contains(&stem) && std::fs::remove_file(path).is_ok() {
            removed.push(path.clone());
        }
    }
    removed
}

fn stamp_of(stem: &str) -> &str {
    stem.rsplit('-').next().unwrap_or(stem)
}

fn removed_line(path: &Path) -> Line {
    Line {
        text: format!("removed {} (oldest beyond --keep)", path.display()),
        json: json!({"type": "removed", "file": path.display().to_string()}),
    }
}

fn reading_line(r: &Reading) -> Line {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    Line {
        text: format!(
            "pid {}: cpu {} rss {} heap {} (after full GC {}) loop {} longest turn {}{}",
            r.pid,
            opt(r.cpu_percent.map(|c| format!("{c:.0}%"))),
            opt(r.rss_bytes.map(human)),
            opt(r.heap_used_bytes.map(human)),
            opt(r.heap_after_full_gc_bytes.map(human)),
            opt(r.loop_utilization.map(|u| format!("{:.0}%", u * 100.0))),
            opt(r.longest_turn_ms.map(|m| format!("{m:.0} ms"))),
            if r.leak { " LEAK SUSPECTED" } else { "" }
        ),
        json: json!({"type": "reading", "reading": r}),
    }
}

fn cluster_line(pid: u32, trigger: Trigger, skipped: &[u32]) -> Line {
    Line {
        text: format!(
            "{} processes crossed {trigger} together: capturing pid {pid} only, not {}",
            skipped.len() + 1,
            join_pids(skipped)
        ),
        json: json!({"type": "cluster", "trigger": trigger, "captured": [pid], "skipped": skipped}),
    }
}

fn clustered_line(pid: u32, trigger: Trigger, captured: &[u32]) -> Line {
    Line {
        text: format!(
            "pid {pid} crossed {trigger} with others: not captured, pid {} already was",
            join_pids(captured)
        ),
        json: json!({"type": "cluster", "trigger": trigger, "captured": captured, "skipped": [pid]}),
    }
}

fn join_pids(pids: &[u32]) -> String {
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn disk_line(disk: &Disk, dir: &Path) -> Line {
    let text = match disk {
        Disk::BudgetSpent { used, budget } => format!(
            "disk budget spent: captures in {} take {} of --max-disk {}; capturing nothing more",
            dir.display(),
            human(*used),
            human(*budget)
        ),
        Disk::BelowFloor { free, floor } => format!(
            "free disk space in {} is {} (under {}): not captured",
            dir.display(),
            human(*free),
            human(*floor)
        ),
        Disk::Ok => String::new(),
    };
    let json = match disk {
        Disk::BudgetSpent { used, budget } => {
            json!({"type": "disk", "state": "budget-spent", "used": used, "budget": budget})
        }
        Disk::BelowFloor { free, floor } => {
            json!({"type": "disk", "state": "below-floor", "free": free, "floor": floor})
        }
        Disk::Ok => json!({"type": "disk", "state": "ok"}),
    };
    Line { text, json }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_files_are_recognised_by_name() {
        assert_eq!(
            capture_stem("cpu-123-20261130T140312Z.cpuprofile"),
            Some("cpu-123-20261130T140312Z")
        );
        assert_eq!(
            capture_stem("command-9-20261130T140312Z.log"),
            Some("command-9-20261130T140312Z")
        );
        assert_eq!(capture_stem("notes.txt"), None);
        assert_eq!(capture_stem("cpu-12x-20261130T140312Z.svg"), None);
        assert_eq!(capture_stem("app-1-20261130T140312Z.svg"), None);
    }

    #[test]
    fn retention_removes_the_oldest_captures_first() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "cpu-1-20261130T100000Z",
            "cpu-1-20261130T110000Z",
            "cpu-2-20261130T120000Z",
        ];
        for (i, stem) in names.iter().enumerate() {
            for ext in ["cpuprofile", "svg"] {
                let path = dir.path().join(format!("{stem}.{ext}"));
                std::fs::write(&path, "x").unwrap();
                let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 + i as u64);
                std::fs::File::options()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_modified(t)
                    .unwrap();
            }
        }
        std::fs::write(dir.path().join("keep-me.txt"), "mine").unwrap();
        let removed = retain(dir.path(), 2);
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(removed
            .iter()
            .all(|p| p.to_string_lossy().contains("T100000Z")));
        assert!(dir.path().join("keep-me.txt").exists());
        assert_eq!(our_files(dir.path()).len(), 4);
    }

    #[test]
    fn cgroups_match_the_path_and_below() {
        let text = "0::/system.slice/app.service/worker\n";
        assert!(in_cgroup(text, "/system.slice/app.service"));
        assert!(in_cgroup(text, "/system.slice"));
        assert!(!in_cgroup(text, "/system.slice/app"));
        assert!(!in_cgroup("0::/user.slice\n", "/system.slice"));
        assert!(in_cgroup("4:memory:/docker/abc\n", "/docker/abc"));
    }

    #[test]
    fn utc_stamps_sort_as_time() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_047_392);
        assert_eq!(utc_stamp(t), "20261130T140312Z");
    }
}
