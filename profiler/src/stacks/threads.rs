//! What `/proc` says about a process's threads: names, scheduler states, and
//! how long a sleeping thread has been off the CPU.

use std::fs;
use std::time::Duration;

/// The scheduler's view of a thread (`/proc/PID/task/TID/stat`, field 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ThreadState {
    /// On a CPU or waiting for one (R).
    Running,
    /// Waiting for an event, interruptible (S).
    Sleeping,
    /// Waiting in the kernel, not interruptible (D): disk, NFS, a kernel lock.
    Uninterruptible,
    /// Stopped by a signal or a debugger (T, t).
    Stopped,
    /// Idle kernel wait (I), exited (Z, X), or another letter.
    Other,
}

impl ThreadState {
    pub fn from_letter(c: char) -> ThreadState {
        match c {
            'R' => ThreadState::Running,
            'S' => ThreadState::Sleeping,
            'D' => ThreadState::Uninterruptible,
            'T' | 't' => ThreadState::Stopped,
            _ => ThreadState::Other,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            ThreadState::Running => "running",
            ThreadState::Sleeping => "sleeping",
            ThreadState::Uninterruptible => "uninterruptible",
            ThreadState::Stopped => "stopped",
            ThreadState::Other => "other",
        }
    }
}

/// One thread of the process.
#[derive(Debug, Clone)]
pub struct ThreadInfo {
    pub tid: u32,
    pub name: String,
    pub state: ThreadState,
    /// How long since the thread last ran, for a thread that is not
    /// running (the scheduler's `se.exec_start`, ms resolution).
    pub off_cpu: Option<Duration>,
}

/// The threads of process `pid`, main thread first.
pub fn list(pid: u32) -> std::io::Result<Vec<ThreadInfo>> {
    let now_ms = exec_start_ms("/proc/thread-self/sched");
    let mut threads = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // A thread that exited since the listing is left out.
        if let Some(thread) = read_thread(pid, tid, now_ms) {
            threads.push(thread);
        }
    }
    threads.sort_by_key(|t: &ThreadInfo| (t.tid != pid, t.tid));
    Ok(threads)
}

/// Name and state of one thread now.
pub fn read_thread(pid: u32, tid: u32, now_ms: Option<f64>) -> Option<ThreadInfo> {
    let dir = format!("/proc/{pid}/task/{tid}");
    let stat = fs::read_to_string(format!("{dir}/stat")).ok()?;
    let (name, state) = parse_stat(&stat)?;
    let off_cpu = match (state, now_ms, exec_start_ms(&format!("{dir}/sched"))) {
        (ThreadState::Running, _, _) => None,
        (_, Some(now), Some(last)) if now >= last => {
            Some(Duration::from_secs_f64((now - last) / 1e3))
        }
        _ => None,
    };
    Some(ThreadInfo {
        tid,
        name,
        state,
        off_cpu,
    })
}

/// `(comm)` and the state letter of a `stat` line (comm may hold spaces and parentheses).
fn parse_stat(stat: &str) -> Option<(String, ThreadState)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let state = stat
        .get(close + 1..)?
        .split_whitespace()
        .next()?
        .chars()
        .next()?;
    Some((name, ThreadState::from_letter(state)))
}

/// `se.exec_start` of a `sched` file: when the task last started running, in
/// ms of the scheduler's clock. Our own thread's value is "now" on that clock.
fn exec_start_ms(path: &str) -> Option<f64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.starts_with("se.exec_start"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let (name, state) = parse_stat("12 (a) b (c)) S 1 12 12 0 -1").unwrap();
        assert_eq!(name, "a) b (c)");
        assert_eq!(state, ThreadState::Sleeping);
        assert_eq!(parse_stat("7 (node) R 1").unwrap().1, ThreadState::Running);
        assert_eq!(
            parse_stat("7 (node) D 1").unwrap().1,
            ThreadState::Uninterruptible
        );
    }

    #[test]
    fn lists_own_threads_main_first() {
        let pid = std::process::id();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let helper = std::thread::Builder::new()
            .name("lister-helper".into())
            .spawn(move || {
                // The name is set by the new thread itself: list it after that.
                let _ = started_tx.send(());
                rx.recv()
            })
            .unwrap();
        started.recv().unwrap();
        let threads = list(pid).unwrap();
        assert_eq!(threads[0].tid, pid);
        let helper_info = threads.iter().find(|t| t.name == "lister-helper");
        assert!(helper_info.is_some(), "{threads:?}");
        // Blocked in recv: sleeping, off the CPU for some (short) time.
        let h = helper_info.unwrap();
        assert!(matches!(
            h.state,
            ThreadState::Sleeping | ThreadState::Running
        ));
        drop(tx);
        let _ = helper.join();
    }
}
