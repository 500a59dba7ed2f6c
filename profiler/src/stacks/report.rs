//! The dump of one process as printed: each thread's state, system call,
//! stack and a one-line verdict. `nodeprof dump` prints it, and `watch`
//! writes it to a file, from the same code.

use std::io::Write;

use serde::Serialize;

use super::{Origin, StackSource, Stacks, Syscall, ThreadStack, ThreadState};
use crate::output::Report;
use crate::profile::{Frame, FrameKind, GARBAGE_COLLECTOR};

/// JS callers shown after a verdict's system call or function.
const VERDICT_JS_FRAMES: usize = 4;

/// The dump of one process, as printed.
#[derive(Debug, Clone, Serialize)]
pub struct DumpReport {
    pub pid: u32,
    pub exe: String,
    pub v8_version: Option<String>,
    pub js_naming: bool,
    pub capture_ms: f64,
    /// The core file read, for `dump --core`.
    pub core: Option<String>,
    pub threads: Vec<ThreadReport>,
}

/// One thread of a [`DumpReport`]: one JSON object with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadReport {
    pub pid: u32,
    pub tid: u32,
    pub name: String,
    pub main: bool,
    pub state: ThreadState,
    /// Seconds since it last ran, for a thread off the CPU.
    pub off_cpu_s: Option<f64>,
    /// The main thread: seconds its event loop's current turn has run (at least).
    pub loop_turn_s: Option<f64>,
    pub syscall: Option<Syscall>,
    pub source: StackSource,
    pub verdict: String,
    /// Innermost first.
    pub frames: Vec<FrameReport>,
    pub capture_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FrameReport {
    pub kind: &'static str,
    pub name: String,
    pub location: String,
    /// 0-based, as in a `.cpuprofile`.
    pub line: Option<u32>,
    pub column: Option<u32>,
}

impl DumpReport {
    pub fn of(stacks: &Stacks) -> DumpReport {
        let capture_ms = stacks.capture_time.as_secs_f64() * 1e3;
        let pid = stacks.pid;
        DumpReport {
            pid,
            exe: stacks.exe.clone(),
            core: match &stacks.origin {
                Origin::Live => None,
                Origin::Core { path } => Some(path.clone()),
            },
            v8_version: stacks.v8_version.clone(),
            js_naming: stacks.js_naming,
            capture_ms,
            threads: stacks
                .threads
                .iter()
                .map(|t| ThreadReport {
                    pid,
                    tid: t.info.tid,
                    name: t.info.name.clone(),
                    main: t.info.tid == pid,
                    state: t.info.state,
                    off_cpu_s: t.info.off_cpu.map(|d| d.as_secs_f64()),
                    loop_turn_s: t.loop_turn.map(|d| d.as_secs_f64()),
                    syscall: t.syscall.clone(),
                    source: t.source.clone(),
                    verdict: verdict(t),
                    frames: t
                        .frames
                        .iter()
                        .map(|f| FrameReport {
                            kind: kind_name(f.kind),
                            name: f.name.clone(),
                            location: f.location.clone(),
                            line: f.line,
                            column: f.column,
                        })
                        .collect(),
                    capture_ms,
                })
                .collect(),
        }
    }

    /// `--json`: one object per thread and line.
    pub fn write_json_lines(&self, out: &mut dyn Write) -> std::io::Result<()> {
        for thread in &self.threads {
            serde_json::to_writer(&mut *out, thread)?;
            writeln!(out)?;
        }
        Ok(())
    }
}

/// What the thread is doing, in one line: `event loop idle (epoll_wait)`,
/// `blocked in a synchronous call: openat /tmp/x.fifo ← readFileSync ← …`;
/// for a main thread that is not idle, how long its event-loop turn has run.
pub fn verdict(thread: &ThreadStack) -> String {
    let what = activity(thread);
    match thread.loop_turn {
        Some(turn) if !loop_idle(thread) => format!(
            "{what}; event-loop turn running for {}",
            human_duration(turn.as_secs_f64())
        ),
        _ => what,
    }
}

/// Waiting for events with no JS below: an epoll wait with JS below it is a
/// synchronous call's own loop (`execSync`), not the event loop's.
fn loop_idle(thread: &ThreadStack) -> bool {
    matches!(&thread.syscall, Some(call) if call.is_event_loop_wait())
        && !thread.frames.iter().any(|f| f.kind == FrameKind::Js)
}

/// The innermost frame outside the kernel.
fn native_leaf(thread: &ThreadStack) -> &str {
    thread
        .frames
        .iter()
        .find(|f| f.kind != FrameKind::Kernel)
        .map_or("?", |f| f.name.as_str())
}

fn activity(thread: &ThreadStack) -> String {
    let js: Vec<&Frame> = thread
        .frames
        .iter()
        .filter(|f| f.kind == FrameKind::Js)
        .collect();
    let chain = |first: String, js: &[&Frame]| -> String {
        let mut parts = vec![first];
        parts.extend(js.iter().take(VERDICT_JS_FRAMES).map(|f| f.name.clone()));
        parts.join(" ← ")
    };
    let in_gc = thread
        .frames
        .iter()
        .any(|f| f.kind == FrameKind::Meta && f.name == GARBAGE_COLLECTOR);
    let since = thread
        .info
        .off_cpu
        .map(|d| format!(", for {}", human_duration(d.as_secs_f64())))
        .unwrap_or_default();
    match &thread.source {
        StackSource::Sampled { samples, window_ms } => {
            let sampled = format!("sampled {window_ms} ms, {samples} samples");
            if in_gc {
                return format!("in garbage collection ({sampled})");
            }
            match thread.sampled_js.first() {
                Some((name, _)) => {
                    // Callers from the newest stack, below the leading function.
                    let callers: Vec<&Frame> = js
                        .iter()
                        .skip_while(|f| &f.name != name)
                        .skip(1)
                        .copied()
                        .collect();
                    format!(
                        "running JavaScript: {} ({sampled})",
                        chain(name.clone(), &callers)
                    )
                }
                None => format!("running native code: {} ({sampled})", native_leaf(thread)),
            }
        }
        StackSource::Registers | StackSource::Core => {
            if in_gc {
                return format!("in garbage collection{since}");
            }
            let in_core = thread.source == StackSource::Core;
            match &thread.syscall {
                Some(call) if loop_idle(thread) => {
                    format!("event loop idle ({}){since}", call.name)
                }
                Some(call) if !js.is_empty() => format!(
                    "blocked in a synchronous call: {}{since}",
                    chain(call.summary(), &js)
                ),
                Some(call) => {
                    let native = thread
                        .frames
                        .iter()
                        .filter(|f| f.kind == FrameKind::Native)
                        .find(|f| !f.location.contains("/libc"))
                        .map(|f| format!(" in {}", f.name))
                        .unwrap_or_default();
                    format!("blocked in {}{native}{since}", call.summary())
                }
                // Stopped by the core's writer outside a system call: it
                // was running (or waiting for a CPU) there.
                None if in_core => match js.first() {
                    Some(_) => format!(
                        "running JavaScript: {}",
                        chain(js[0].name.clone(), &js[1..])
                    ),
                    None => format!("running native code: {}", native_leaf(thread)),
                },
                None if thread.info.state == ThreadState::Running => {
                    // Runnable but never on a CPU while sampled: its saved
                    // registers are where it was preempted.
                    match js.first() {
                        Some(_) => format!(
                            "waiting for a CPU in JavaScript: {}",
                            chain(js[0].name.clone(), &js[1..])
                        ),
                        None => "waiting for a CPU".to_string(),
                    }
                }
                None => format!(
                    "{} outside a system call{since}",
                    thread.info.state.describe()
                ),
            }
        }
        StackSource::Unavailable { reason } => format!("unknown: {reason}"),
    }
}

fn human_duration(seconds: f64) -> String {
    if seconds < 1.0 {
        format!("{:.0} ms", seconds * 1e3)
    } else if seconds < 120.0 {
        format!("{seconds:.1} s")
    } else {
        format!("{:.0} min", seconds / 60.0)
    }
}

/// A frame as one line of the dump: `name (url:line:column)` with 1-based
/// positions as editors show them, `name (module)` for native code.
fn frame_line(frame: &FrameReport) -> String {
    match frame.kind {
        "js" => match (frame.line, frame.column) {
            (Some(l), Some(c)) => {
                format!("{} ({}:{}:{})", frame.name, frame.location, l + 1, c + 1)
            }
            _ if frame.location.is_empty() => frame.name.clone(),
            _ => format!("{} ({})", frame.name, frame.location),
        },
        "kernel" => format!("{} [kernel]", frame.name),
        "meta" => frame.name.clone(),
        _ => {
            let module = frame.location.rsplit('/').next().unwrap_or("");
            if module.is_empty() || frame.name.starts_with('[') {
                frame.name.clone()
            } else {
                format!("{} ({module})", frame.name)
            }
        }
    }
}

fn kind_name(kind: FrameKind) -> &'static str {
    match kind {
        FrameKind::Native => "native",
        FrameKind::Kernel => "kernel",
        FrameKind::Jit => "jit",
        FrameKind::Js => "js",
        FrameKind::Meta => "meta",
        FrameKind::Unknown => "unknown",
    }
}

impl Report for DumpReport {
    /// py-spy's layout: a header, then per thread `Thread TID (state): "name"`
    /// and one frame per line, innermost first.
    fn write_text(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let runtime = match (&self.v8_version, self.js_naming) {
            (Some(v8), true) => format!("V8 {v8}"),
            (_, true) => "V8".to_string(),
            (_, false) => "no V8 found: native stacks only".to_string(),
        };
        writeln!(out, "Process {}: {} ({runtime})", self.pid, self.exe)?;
        match &self.core {
            None => writeln!(
                out,
                "{} threads, dumped in {:.0} ms without stopping the process",
                self.threads.len(),
                self.capture_ms
            )?,
            Some(core) => writeln!(
                out,
                "{} threads, read from the core file {core} in {:.0} ms",
                self.threads.len(),
                self.capture_ms
            )?,
        }
        for thread in &self.threads {
            writeln!(out)?;
            let mut state = thread.state.describe().to_string();
            if let Some(s) = thread.off_cpu_s {
                state.push_str(&format!(" for {}", human_duration(s)));
            }
            writeln!(
                out,
                "Thread {} ({state}): \"{}\"{}",
                thread.tid,
                thread.name,
                if thread.main { " main thread" } else { "" }
            )?;
            if thread.main {
                writeln!(out, "    => {}", thread.verdict)?;
            }
            if let Some(call) = &thread.syscall {
                writeln!(out, "    in system call {}", call.summary())?;
            }
            match &thread.source {
                StackSource::Sampled { samples, window_ms } => {
                    writeln!(
                        out,
                        "    on CPU: newest of {samples} samples in {window_ms} ms"
                    )?;
                }
                StackSource::Unavailable { reason } => writeln!(out, "    no stack: {reason}")?,
                StackSource::Registers | StackSource::Core => {}
            }
            for frame in &thread.frames {
                writeln!(out, "    {}", frame_line(frame))?;
            }
        }
        Ok(())
    }
}
