//! The profile model: interned frames and stacks, and per-thread samples with
//! timestamps. Every writer in `output` reads only this.

mod build;
mod threads;

pub use build::{Pause, ProfileBuilder, GARBAGE_COLLECTOR};

use std::collections::{BTreeMap, HashMap};

/// What kind of code a frame is. JS frames carry their script and position in
/// [`Frame`]; the kind tells writers how to colour and label them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrameKind {
    /// Machine code from an ELF file (node binary, shared library).
    Native,
    /// Kernel code.
    Kernel,
    /// JIT code named by the target's perf map (`/tmp/perf-PID.map`).
    Jit,
    /// A JavaScript function named by V8 introspection.
    Js,
    /// A pseudo frame: `(root)`, `(program)`, `(garbage collector)`, `(idle)`.
    Meta,
    /// Code nodeprof could not name; `name` holds the address.
    Unknown,
}

/// One frame of a stack, as the user will read it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frame {
    pub kind: FrameKind,
    /// Function name: a demangled native symbol, a JS function name, or a
    /// placeholder like `[unknown] 0x…`.
    pub name: String,
    /// Where the code lives: the script URL for JS, the module path for native code.
    pub location: String,
    /// 0-based line of the function's start, when known.
    pub line: Option<u32>,
    /// 0-based column of the function's start, when known.
    pub column: Option<u32>,
    /// V8's id of a JS frame's script (per isolate): code of `new Function`
    /// and `eval` has one but no URL.
    pub script_id: Option<u32>,
}

impl Frame {
    pub fn new(kind: FrameKind, name: impl Into<String>, location: impl Into<String>) -> Self {
        Frame {
            kind,
            name: name.into(),
            location: location.into(),
            line: None,
            column: None,
            script_id: None,
        }
    }

    pub fn meta(name: &str) -> Self {
        Frame::new(FrameKind::Meta, name, "")
    }
}

/// A frame interned in one [`Profile`]; only the profile makes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameId(u32);

/// A stack interned in one [`Profile`]; only the profile makes them, so an
/// index of another space (a raw sampled stack) cannot pass for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackId(u32);

impl FrameId {
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}

/// A thread of the target that was sampled at least once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadInfo {
    pub tid: u32,
    /// The name the thread had when last sampled (`comm`, at most 15 bytes).
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// CLOCK_MONOTONIC nanoseconds.
    pub time_ns: u64,
    pub tid: u32,
    pub stack: StackId,
    /// The thread was off CPU (blocked or waiting for a CPU): a sample of
    /// its off-CPU time, one per sampling period it spent there.
    pub off_cpu: bool,
}

/// The time a profile's samples stand for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TimeKind {
    /// On-CPU time (`record`).
    #[default]
    Cpu,
    /// Time blocked (`record --off-cpu`).
    OffCpu,
    /// Both (`record --wall`).
    Wall,
}

/// A recorded CPU profile.
#[derive(Debug, Default, Clone)]
pub struct Profile {
    /// The target's pid (root pid namespace).
    pub pid: u32,
    /// Sampling frequency per CPU, Hz.
    pub frequency_hz: u64,
    /// Recording start and end, CLOCK_MONOTONIC nanoseconds.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Samples the kernel could not hand over (ring buffer full).
    pub lost_samples: u64,
    /// What a sample's time is, as recorded (not guessed from the samples:
    /// a `--wall` recording of an idle process has no on-CPU sample).
    pub time: TimeKind,
    pub threads: BTreeMap<u32, ThreadInfo>,
    pub samples: Vec<Sample>,
    frames: Vec<Frame>,
    frame_ids: HashMap<Frame, FrameId>,
    /// Stacks as frame ids, outermost (root side) first.
    stacks: Vec<Vec<FrameId>>,
    stack_ids: HashMap<Vec<FrameId>, StackId>,
}

impl Profile {
    pub fn new(pid: u32, frequency_hz: u64, start_ns: u64) -> Self {
        Profile {
            pid,
            frequency_hz,
            start_ns,
            end_ns: start_ns,
            ..Default::default()
        }
    }

    pub fn intern_frame(&mut self, frame: Frame) -> FrameId {
        if let Some(&id) = self.frame_ids.get(&frame) {
            return id;
        }
        let id = FrameId(self.frames.len() as u32);
        self.frames.push(frame.clone());
        self.frame_ids.insert(frame, id);
        id
    }

    /// Interns a stack given outermost frame first.
    pub fn intern_stack(&mut self, frames: Vec<FrameId>) -> StackId {
        if let Some(&id) = self.stack_ids.get(&frames) {
            return id;
        }
        let id = StackId(self.stacks.len() as u32);
        self.stacks.push(frames.clone());
        self.stack_ids.insert(frames, id);
        id
    }

    /// Records one sample; `thread_name` updates the thread's name (threads rename themselves).
    pub fn add_sample(&mut self, time_ns: u64, tid: u32, thread_name: &str, stack: StackId) {
        self.add(time_ns, tid, thread_name, stack, false);
    }

    /// Records one sampling period the thread spent off CPU in `stack`.
    pub fn add_off_cpu_sample(
        &mut self,
        time_ns: u64,
        tid: u32,
        thread_name: &str,
        stack: StackId,
    ) {
        self.add(time_ns, tid, thread_name, stack, true);
    }

    fn add(&mut self, time_ns: u64, tid: u32, thread_name: &str, stack: StackId, off_cpu: bool) {
        let thread = self.threads.entry(tid).or_insert_with(|| ThreadInfo {
            tid,
            name: String::new(),
        });
        if thread.name != thread_name {
            thread.name = thread_name.to_string();
        }
        self.end_ns = self.end_ns.max(time_ns);
        self.start_ns = self.start_ns.min(time_ns);
        self.samples.push(Sample {
            time_ns,
            tid,
            stack,
            off_cpu,
        });
    }

    pub fn frame(&self, id: FrameId) -> &Frame {
        &self.frames[id.index()]
    }

    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    /// The frames of a stack, outermost first.
    pub fn stack(&self, id: StackId) -> &[FrameId] {
        &self.stacks[id.0 as usize]
    }

    pub fn thread_name(&self, tid: u32) -> &str {
        self.threads
            .get(&tid)
            .map(|t| t.name.as_str())
            .unwrap_or("")
    }

    /// The sampling period: what one sample stands for, nanoseconds.
    pub fn period_ns(&self) -> u64 {
        1_000_000_000 / self.frequency_hz.max(1)
    }

    /// Whether any sample is of off-CPU time.
    pub fn has_off_cpu(&self) -> bool {
        self.samples.iter().any(|s| s.off_cpu)
    }

    /// Wall-clock span of the recording in nanoseconds.
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    /// Samples sorted by time (writers that emit a timeline need this order).
    pub fn samples_by_time(&self) -> Vec<Sample> {
        let mut samples = self.samples.clone();
        samples.sort_by_key(|s| (s.time_ns, s.tid));
        samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_reuses_ids() {
        let mut p = Profile::new(1, 99, 1000);
        let a = p.intern_frame(Frame::new(FrameKind::Native, "main", "/bin/node"));
        let b = p.intern_frame(Frame::new(FrameKind::Native, "work", "/bin/node"));
        assert_eq!(
            a,
            p.intern_frame(Frame::new(FrameKind::Native, "main", "/bin/node"))
        );
        assert_ne!(a, b);
        let s1 = p.intern_stack(vec![a, b]);
        let s2 = p.intern_stack(vec![a]);
        assert_eq!(s1, p.intern_stack(vec![a, b]));
        assert_ne!(s1, s2);
        assert_eq!(p.stack(s1), &[a, b]);
        assert_eq!(p.frames().len(), 2);
    }

    #[test]
    fn samples_track_threads_and_span() {
        let mut p = Profile::new(1, 99, 1000);
        let f = p.intern_frame(Frame::meta("(program)"));
        let s = p.intern_stack(vec![f]);
        p.add_sample(5000, 7, "node", s);
        p.add_sample(3000, 8, "worker", s);
        p.add_sample(9000, 7, "node-renamed", s);
        assert_eq!(p.threads.len(), 2);
        assert_eq!(p.thread_name(7), "node-renamed");
        assert_eq!(p.duration_ns(), 8000);
        let times: Vec<u64> = p.samples_by_time().iter().map(|s| s.time_ns).collect();
        assert_eq!(times, vec![3000, 5000, 9000]);
    }
}
