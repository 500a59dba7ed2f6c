//! A heap snapshot of a live Node.js process, started with no flag: its
//! inspector is found among its listening sockets, or started with SIGUSR1
//! (node's own way), asked for `HeapProfiler.takeHeapSnapshot`, and the
//! chunks are streamed to disk as they come (nodeprof holds one chunk at a
//! time). An inspector nodeprof started is closed again
//! (`process._debugEnd()`, what `inspector.close()` calls) and its port
//! checked closed. The inspector serves the protocol on its own thread and
//! interrupts V8, so this works while JS spins in `while (true)`.
//!
//! Inside a container the inspector listens in the target's network
//! namespace: the session runs on a thread that joined it (`setns`); the
//! file is still written in nodeprof's own mount namespace.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::inspector::{self, Incoming, InspectorError, Session};
use super::interrupt;
use crate::output;
use crate::target::Target;

#[derive(Debug, Clone, Copy)]
pub struct SnapshotOptions {
    /// Take the snapshot even when free memory or disk look too small.
    pub force: bool,
    pub quiet: bool,
    /// Bytes the caller lets the file take (a disk budget): a snapshot
    /// expected to be larger is not taken, even with `force`.
    pub room: Option<u64>,
    /// Of this worker thread's heap (its `threadId`) instead of the main thread's.
    pub worker: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("process {pid} ({exe}) is not Node.js: it has no inspector to take a heap snapshot")]
    NotNode { pid: u32, exe: String },
    #[error(
        "process {0} does not handle SIGUSR1 (started with --disable-sigusr1?): the signal would kill it, so nodeprof does not send it; start it with --inspect=127.0.0.1:0 to allow snapshots"
    )]
    NoSigusr1(u32),
    #[error("the inspector of process {pid} did not start: port {port} is taken in its network namespace")]
    PortTaken { pid: u32, port: u16 },
    #[error("the inspector of process {0} did not start within 5 s of SIGUSR1")]
    NoInspector(u32),
    #[error("process {pid}'s inspector listens at {addrs}, which nodeprof cannot reach: {source}")]
    Unreachable {
        pid: u32,
        addrs: String,
        source: InspectorError,
    },
    #[error("cannot join the network namespace of process {pid}: {source}")]
    Namespace { pid: u32, source: io::Error },
    #[error("process {0} exited during the snapshot; no file written")]
    Exited(u32),
    #[error("heap snapshot of process {pid}: {source}")]
    Inspector { pid: u32, source: InspectorError },
    #[error(
        "the heap of process {pid} holds {heap}: a snapshot needs about {need} free {what}, and {free} is ({hint}); --force takes it anyway"
    )]
    TooLarge {
        pid: u32,
        heap: String,
        need: String,
        free: String,
        what: &'static str,
        hint: &'static str,
    },
    #[error(
        "a snapshot of process {pid} (heap {heap}) is expected to take about {need} on disk, more than the {room} left to it; not taken"
    )]
    NoRoom {
        pid: u32,
        heap: String,
        need: String,
        room: String,
    },
    #[error("the disk is full; no file written")]
    DiskFull,
    #[error("cannot write the snapshot: {0}")]
    Write(io::Error),
    #[error(
        "worker thread {thread} of process {pid} did not start the snapshot within {secs} s, even with its JS paused; no file written"
    )]
    WorkerStuck { pid: u32, thread: u32, secs: u64 },
    #[error("{0}; no file written{1}")]
    Interrupted(&'static str, &'static str),
}

/// A snapshot written to the capture file.
#[derive(Debug)]
pub struct SnapshotCapture {
    pub inspector: SocketAddr,
    /// nodeprof started the inspector (and so closed it).
    pub opened: bool,
    /// The inspector's port is no longer listening.
    pub closed: bool,
    /// V8's used and total heap when the snapshot started.
    pub heap_used: u64,
    pub heap_total: u64,
    pub bytes: u64,
    /// From the request to the last chunk: how long the target was busy with it.
    pub took: Duration,
}

/// Takes a heap snapshot of `target` into `file`.
pub fn capture(
    target: &Target,
    file: &mut File,
    dir: &std::path::Path,
    options: &SnapshotOptions,
    progress: &indicatif::ProgressBar,
) -> Result<SnapshotCapture, SnapshotError> {
    // Node is told by its binary's contents (V8's layout), not its name.
    let exe = std::path::PathBuf::from(format!("/proc/{}/exe", target.pid));
    if crate::target::discover(&exe).is_err() {
        return Err(SnapshotError::NotNode {
            pid: target.pid,
            exe: target.exe.display().to_string(),
        });
    }
    let pid = target.pid;
    let same_ns = namespace(std::process::id()) == namespace(pid);
    let dir = dir.to_path_buf();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if !same_ns {
                    join_network_namespace(pid)?;
                }
                session(target, file, &dir, options, progress)
            })
            .join()
            .unwrap_or_else(|_| {
                Err(SnapshotError::Write(io::Error::other(
                    "snapshot thread panicked",
                )))
            })
    })
}

fn namespace(pid: u32) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()
}

/// Moves the calling thread (only it) into the target's network namespace.
fn join_network_namespace(pid: u32) -> Result<(), SnapshotError> {
    let err = |source| SnapshotError::Namespace { pid, source };
    let ns = File::open(format!("/proc/{pid}/ns/net")).map_err(err)?;
    // SAFETY: setns on an fd we hold; it affects this thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

const SIGUSR1_BIT: u64 = 1 << (libc::SIGUSR1 - 1);

fn catches_sigusr1(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|mask| mask & SIGUSR1_BIT != 0)
}

/// The first listening socket of the process that answers as an inspector.
/// The usual inspector ports come first, so an application's own server is
/// asked only when no inspector is found there.
fn find_inspector(
    pid: u32,
    addrs: &[SocketAddr],
) -> Result<Option<(SocketAddr, String)>, SnapshotError> {
    let mut addrs = addrs.to_vec();
    addrs.sort_by_key(|a| !(9229..9240).contains(&a.port()));
    let mut last_error = None;
    for addr in &addrs {
        let connect = inspector::connect_addr(*addr);
        match inspector::debugger_url(connect) {
            Ok(Some(url)) => return Ok(Some((connect, url))),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
    }
    match last_error {
        Some(source) if addrs.iter().any(|a| (9229..9240).contains(&a.port())) => {
            Err(SnapshotError::Unreachable {
                pid,
                addrs: addrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                source,
            })
        }
        _ => Ok(None),
    }
}

fn listening(pid: u32) -> Result<Vec<SocketAddr>, SnapshotError> {
    inspector::listening(pid).map_err(|source| {
        if !alive(pid) {
            SnapshotError::Exited(pid)
        } else {
            SnapshotError::Inspector { pid, source }
        }
    })
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Whether some socket of the namespace, not the target's, listens on `port`.
fn port_taken(pid: u32, port: u16) -> bool {
    let hex = format!(":{port:04X} ");
    ["tcp", "tcp6"].iter().any(|f| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).is_ok_and(|text| {
            text.lines()
                .any(|l| l.contains(&hex) && l.split_whitespace().nth(3) == Some("0A"))
        })
    })
}

fn session(
    target: &Target,
    file: &mut File,
    dir: &std::path::Path,
    options: &SnapshotOptions,
    progress: &indicatif::ProgressBar,
) -> Result<SnapshotCapture, SnapshotError> {
    let pid = target.pid;
    let before = listening(pid)?;
    let (addr, url, opened) = match find_inspector(pid, &before)? {
        Some((addr, url)) => (addr, url, false),
        None => {
            if !catches_sigusr1(pid) {
                return Err(SnapshotError::NoSigusr1(pid));
            }
            // SAFETY: kill with a pid and a signal the target handles.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) };
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let now = listening(pid)?;
                let new: Vec<SocketAddr> =
                    now.into_iter().filter(|a| !before.contains(a)).collect();
                if let Some((addr, url)) = find_inspector(pid, &new)? {
                    break (addr, url, true);
                }
                // Interrupted, it still waits for the inspector it asked
                // for, to close it (snapshot() sees the signal before it
                // starts); only a second signal leaves it behind.
                let starting_left = |signal| {
                    SnapshotError::Interrupted(
                        interrupt::describe(signal),
                        " (the inspector may start after this)",
                    )
                };
                if Instant::now() > deadline {
                    return Err(match interrupt::pending() {
                        Some(signal) => starting_left(signal),
                        None if port_taken(pid, 9229) => {
                            SnapshotError::PortTaken { pid, port: 9229 }
                        }
                        None => SnapshotError::NoInspector(pid),
                    });
                }
                if let Some(signal) = interrupt::pending().filter(|_| interrupt::count() >= 2) {
                    return Err(starting_left(signal));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    let mut session =
        Session::connect(addr, &url).map_err(|source| SnapshotError::Unreachable {
            pid,
            addrs: addr.to_string(),
            source,
        })?;
    let mut paused = false;
    let out = Out {
        file,
        dir,
        progress,
    };
    let result = match options.worker {
        Some(thread) => session
            .attach_worker(thread)
            .map_err(|source| SnapshotError::Inspector { pid, source })
            .and_then(|()| snapshot(&mut session, pid, addr, out, options, &mut paused)),
        None => snapshot(&mut session, pid, addr, out, options, &mut paused),
    };
    if paused {
        // Also cancels a pause still pending: JS must never stay paused.
        let _ = session.send("Debugger.resume", json!({}));
        let _ = session.send("Debugger.disable", json!({}));
    }
    // The inspector is closed from the main thread.
    session.detach_worker();
    let closed = if opened {
        close_inspector(session, pid, addr, result.is_ok())
    } else {
        false
    };
    let mut capture = match result {
        Err(SnapshotError::Interrupted(why, _)) if opened && !closed => {
            return Err(SnapshotError::Interrupted(
                why,
                "; the inspector nodeprof opened may still be listening",
            ))
        }
        result => result?,
    };
    capture.opened = opened;
    capture.closed = closed;
    Ok(capture)
}

/// Asks node to close the inspector nodeprof opened, then waits for its port
/// to stop listening. A snapshot still being generated delays the request
/// (after Ctrl-C): the wait drains it, and a second signal cuts it short.
fn close_inspector(mut session: Session, pid: u32, addr: SocketAddr, finished: bool) -> bool {
    let _ = session.send(
        "Runtime.evaluate",
        json!({ "expression": "process._debugEnd()" }),
    );
    // Unfinished, the request waits behind the snapshot: keep draining.
    let deadline = Instant::now() + Duration::from_secs(if finished { 5 } else { 120 });
    let gone = |pid| {
        inspector::listening(pid)
            .map(|l| !l.iter().any(|a| a.port() == addr.port()))
            .unwrap_or(true)
    };
    while Instant::now() < deadline && interrupt::count() < 2 {
        if gone(pid) {
            return true;
        }
        if session.next().is_err() {
            break;
        }
    }
    drop(session);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// How long a snapshot may wait for the event loop before the debugger pauses JS.
const PAUSE_AFTER: Duration = Duration::from_millis(500);
/// The same for a worker, whose loop nodeprof does not watch (its thread is
/// not told apart from node's own): a longer wait, so an idle worker's
/// snapshot starts before it, then a pause regardless.
const WORKER_PAUSE_AFTER: Duration = Duration::from_secs(3);
/// A worker whose snapshot has not started this long after the pause is
/// given up on, rather than waited for forever.
const WORKER_GIVE_UP_AFTER: Duration = Duration::from_secs(30);

#[derive(serde::Deserialize)]
struct HeapUsage {
    #[serde(rename = "usedSize")]
    used: f64,
    #[serde(rename = "totalSize")]
    total: f64,
}

/// Where a snapshot goes, and its progress.
struct Out<'a> {
    file: &'a mut File,
    dir: &'a std::path::Path,
    progress: &'a indicatif::ProgressBar,
}

fn snapshot(
    session: &mut Session,
    pid: u32,
    addr: SocketAddr,
    out: Out<'_>,
    options: &SnapshotOptions,
    paused: &mut bool,
) -> Result<SnapshotCapture, SnapshotError> {
    let Out {
        file,
        dir,
        progress,
    } = out;
    let protocol = |source| {
        if !alive(pid) {
            SnapshotError::Exited(pid)
        } else {
            SnapshotError::Inspector { pid, source }
        }
    };
    let interrupted = || interrupt::pending().is_some();
    let usage = session
        .call(
            "Runtime.getHeapUsage",
            json!({}),
            Duration::from_secs(30),
            interrupted,
        )
        .map_err(protocol)?;
    if let Some(signal) = interrupt::pending() {
        return Err(SnapshotError::Interrupted(interrupt::describe(signal), ""));
    }
    let usage: HeapUsage = usage
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| {
            protocol(InspectorError::Protocol {
                addr,
                what: "no answer to Runtime.getHeapUsage within 30 s".into(),
            })
        })?;
    let (used, total) = (usage.used as u64, usage.total as u64);
    check_room(pid, used, dir, options)?;

    // Looked at before the request: once the snapshot runs, the main thread
    // is busy with it and looks stuck too. A worker's loop is not watched:
    // it is paused after a longer wait instead.
    let (stuck, pause_after) = match options.worker {
        None => (loop_is_stuck(pid), PAUSE_AFTER),
        Some(_) => (true, WORKER_PAUSE_AFTER),
    };
    let id = session
        .send(
            "HeapProfiler.takeHeapSnapshot",
            json!({ "reportProgress": true, "treatGlobalObjectsAsRoots": true }),
        )
        .map_err(protocol)?;
    let started = Instant::now();
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut bytes = 0u64;
    let mut counting = false;
    let mut begun = false;
    progress.set_message("objects");
    loop {
        if let Some(signal) = interrupt::pending() {
            return Err(SnapshotError::Interrupted(interrupt::describe(signal), ""));
        }
        match session.next().map_err(protocol)? {
            Incoming::Event(method, params) => match method.as_str() {
                "HeapProfiler.addHeapSnapshotChunk" => {
                    begun = true;
                    let chunk = params.get("chunk").and_then(Value::as_str).unwrap_or("");
                    out.write_all(chunk.as_bytes()).map_err(write_error)?;
                    bytes += chunk.len() as u64;
                    if !counting {
                        counting = true;
                        progress.set_length(used.max(1));
                        progress.set_message("written");
                    }
                    progress.set_position(bytes);
                }
                "HeapProfiler.reportHeapSnapshotProgress" if !counting => {
                    begun = true;
                    let n = |k| params.get(k).and_then(Value::as_u64).unwrap_or(0);
                    progress.set_length(n("total").max(1));
                    progress.set_position(n("done"));
                }
                _ => {}
            },
            Incoming::Response(got, result) if got == id => {
                result.map_err(|message| {
                    protocol(InspectorError::Refused {
                        method: "HeapProfiler.takeHeapSnapshot".into(),
                        message,
                    })
                })?;
                break;
            }
            Incoming::Response(..) => {}
            Incoming::Idle => {
                if !alive(pid) {
                    return Err(SnapshotError::Exited(pid));
                }
                // V8 12+ (node 22+) takes the snapshot in a task of the event
                // loop, which never runs while JS is stuck; it also takes
                // deferred snapshots when the debugger pauses, so pause it.
                if let (Some(thread), false, true) = (options.worker, begun, *paused) {
                    if started.elapsed() > pause_after + WORKER_GIVE_UP_AFTER {
                        return Err(SnapshotError::WorkerStuck {
                            pid,
                            thread,
                            secs: (pause_after + WORKER_GIVE_UP_AFTER).as_secs(),
                        });
                    }
                }
                if stuck && !begun && !*paused && started.elapsed() > pause_after {
                    *paused = true;
                    session
                        .send("Debugger.enable", json!({}))
                        .map_err(protocol)?;
                    session
                        .send("Debugger.pause", json!({}))
                        .map_err(protocol)?;
                }
            }
        }
    }

    out.flush().map_err(write_error)?;
    Ok(SnapshotCapture {
        inspector: addr,
        opened: false,
        closed: false,
        heap_used: used,
        heap_total: total,
        bytes,
        took: started.elapsed(),
    })
}

/// Whether the main thread stayed in user space for 200 ms: JS that never
/// returns to the event loop (an idle or working loop enters epoll_wait).
fn loop_is_stuck(pid: u32) -> bool {
    let path = format!("/proc/{pid}/task/{pid}/syscall");
    let deadline = Instant::now() + Duration::from_millis(200);
    while Instant::now() < deadline {
        match std::fs::read_to_string(&path) {
            Ok(text) if text.starts_with("running") => {}
            _ => return false,
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn write_error(e: io::Error) -> SnapshotError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        SnapshotError::DiskFull
    } else {
        SnapshotError::Write(e)
    }
}

/// The snapshot grows the target's memory by several times its used heap
/// while V8 builds the graph (measured: RSS 1 → 7.9 GiB for a 0.86 GiB heap),
/// and the file is larger than the used heap (edges spelled out).
fn check_room(
    pid: u32,
    used: u64,
    dir: &std::path::Path,
    options: &SnapshotOptions,
) -> Result<(), SnapshotError> {
    let b = crate::output::format_bytes;
    let need_disk = expected_file_size(used);
    if let Some(room) = options.room.filter(|&room| need_disk > room) {
        return Err(SnapshotError::NoRoom {
            pid,
            heap: b(used),
            need: b(need_disk),
            room: b(room),
        });
    }
    if options.force {
        return Ok(());
    }
    let need_memory = used * 8 + (64 << 20);
    if let Some(free) = output::available_memory() {
        if free < need_memory {
            return Err(SnapshotError::TooLarge {
                pid,
                heap: b(used),
                need: b(need_memory),
                free: b(free),
                what: "memory",
                hint: "MemAvailable",
            });
        }
    }
    if let Ok(free) = output::free_disk(dir) {
        if free < need_disk {
            return Err(SnapshotError::TooLarge {
                pid,
                heap: b(used),
                need: b(need_disk),
                free: b(free),
                what: "disk",
                hint: "in the output directory",
            });
        }
    }
    Ok(())
}

/// What the file of a snapshot of a heap of `used` bytes is expected to
/// take: larger than the heap (every edge spelled out), with a margin.
fn expected_file_size(used: u64) -> u64 {
    used * 2 + (16 << 20)
}
