//! Drains the sampler's ring buffer into raw samples: thread, time and the
//! kernel and user stacks as addresses. Identical frames and stacks are stored
//! once, so a long recording grows by a few bytes per sample.
//!
//! [`EventCollector`] drains the small fixed-size events of the other ring
//! buffers (GC uprobes' calls, threads leaving the CPU, event-loop turns).

use std::collections::HashMap;
use std::rc::Rc;

use aya::maps::{MapData, RingBuf};
use nodeprof_common::{CallEvent, SampleRecord, ThreadEvent, UserFrame, SAMPLE_OFF_CPU};

/// A stack as the kernel saw it, innermost first: kernel addresses, and user
/// frames as indices into [`Collection::user_frames`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawStack {
    pub kernel: Box<[u64]>,
    pub user: Box<[u32]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawSample {
    pub time_ns: u64,
    pub tid: u32,
    /// Index into [`Collection::stacks`].
    pub stack: u32,
    /// Index into [`Collection::thread_names`].
    pub thread_name: u32,
    /// Taken as the thread left the CPU: `time_ns` starts its off-CPU time.
    pub off_cpu: bool,
}

/// Everything collected so far.
#[derive(Debug, Default)]
pub struct Collection {
    pub samples: Vec<RawSample>,
    pub stacks: Vec<Rc<RawStack>>,
    stack_ids: HashMap<Rc<RawStack>, u32>,
    /// Distinct user frames, in the order first seen.
    pub user_frames: Vec<UserFrame>,
    user_frame_ids: HashMap<UserFrame, u32>,
    pub thread_names: Vec<String>,
    thread_name_ids: HashMap<Vec<u8>, u32>,
    /// Address ranges of V8's code (JIT and builtins), sorted: the word at
    /// the stack pointer becomes a frame only when it points there and the
    /// sampled pc does not (otherwise every sample would carry a different
    /// data word and no two stacks would be alike).
    v8_code: Vec<(u64, u64)>,
}

impl Collection {
    pub fn push(&mut self, record: &SampleRecord) {
        let stack = self.intern_stack(record);
        let comm = record.comm();
        let thread_name = match self.thread_name_ids.get(comm) {
            Some(&id) => id,
            None => {
                let id = self.thread_names.len() as u32;
                self.thread_names
                    .push(String::from_utf8_lossy(comm).into_owned());
                self.thread_name_ids.insert(comm.to_vec(), id);
                id
            }
        };
        self.samples.push(RawSample {
            time_ns: record.time_ns,
            tid: record.tid,
            stack,
            thread_name,
            off_cpu: record.kind == SAMPLE_OFF_CPU,
        });
    }

    /// Gives sample `index` the stacks of `record` (a better walk of the
    /// same moment).
    pub fn restack(&mut self, index: usize, record: &SampleRecord) {
        let stack = self.intern_stack(record);
        self.samples[index].stack = stack;
    }

    fn intern_stack(&mut self, record: &SampleRecord) -> u32 {
        let walked = record.user_stack();
        // The sampler's word at the stack pointer, as a possible frame of
        // the JS function whose fp the walk started from (see
        // TOS_FRAME_MARKER); the symbolizer keeps it only when the sampled
        // pc is outside V8 code.
        let tos = walked
            .first()
            .filter(|f| f.sfi != 0 && self.in_v8_code(record.user_tos) && !self.in_v8_code(f.pc))
            .map(|f| UserFrame {
                pc: record.user_tos,
                frame_marker: TOS_FRAME_MARKER,
                ..*f
            });
        // Frames the sampler unwound with `.eh_frame` rows (libc) come first.
        let leaves: Vec<UserFrame> = record
            .leaf_pcs()
            .iter()
            .map(|&pc| UserFrame {
                pc,
                ..UserFrame::default()
            })
            .collect();
        let user = leaves
            .iter()
            .chain(walked.iter().take(1))
            .chain(tos.as_ref())
            .chain(walked.iter().skip(1))
            .map(|frame| {
                let frame = normalize_frame(frame);
                *self.user_frame_ids.entry(frame).or_insert_with(|| {
                    self.user_frames.push(frame);
                    self.user_frames.len() as u32 - 1
                })
            })
            .collect();
        let stack = Rc::new(RawStack {
            kernel: record.kernel_stack().into(),
            user,
        });
        match self.stack_ids.get(&stack) {
            Some(&id) => id,
            None => {
                let id = self.stacks.len() as u32;
                self.stacks.push(stack.clone());
                self.stack_ids.insert(stack, id);
                id
            }
        }
    }

    /// Where V8's code is now (see [`Collection::push`]); the symbolizer
    /// knows it from the target's mappings.
    pub fn set_v8_code(&mut self, mut ranges: Vec<(u64, u64)>) {
        ranges.sort_unstable();
        self.v8_code = ranges;
    }

    fn in_v8_code(&self, addr: u64) -> bool {
        let i = self.v8_code.partition_point(|&(start, _)| start <= addr);
        i > 0 && addr < self.v8_code[i - 1].1
    }

    /// The user frames of a stack, innermost first.
    pub fn user_frames_of<'a>(
        &'a self,
        stack: &'a RawStack,
    ) -> impl Iterator<Item = &'a UserFrame> + 'a {
        stack.user.iter().map(|&id| &self.user_frames[id as usize])
    }
}

/// Reads sample records out of the ring buffer.
pub struct Collector {
    ring: RingBuf<MapData>,
}

impl Collector {
    pub fn new(ring: RingBuf<MapData>) -> Self {
        Collector { ring }
    }

    /// Moves every pending record into `into`; returns how many.
    pub fn drain(&mut self, into: &mut Collection) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            if let Some(record) = read_pod::<SampleRecord>(&item) {
                into.push(&record);
                n += 1;
            }
        }
        n
    }
}

/// Lets the async runtime wait for the ring buffer to have data.
impl std::os::fd::AsRawFd for Collector {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

/// Reads fixed-size events in the order the kernel wrote them.
pub struct EventCollector<T> {
    ring: RingBuf<MapData>,
    _event: std::marker::PhantomData<T>,
}

/// Function entries and returns of the target (GC uprobes).
pub type CallCollector = EventCollector<CallEvent>;
/// Threads back on the CPU, event loops entering and leaving `epoll_wait`.
pub type ThreadEventCollector = EventCollector<ThreadEvent>;

impl<T: aya::Pod> EventCollector<T> {
    pub fn new(ring: RingBuf<MapData>) -> Self {
        EventCollector {
            ring,
            _event: std::marker::PhantomData,
        }
    }

    /// Hands every pending event to `sink`; returns how many.
    pub fn drain(&mut self, mut sink: impl FnMut(T)) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            if let Some(event) = read_pod::<T>(&item) {
                sink(event);
                n += 1;
            }
        }
        n
    }
}

/// Largest V8 frame-type marker (`type << 1`); V8 has about 40 frame types.
const MAX_FRAME_MARKER: u64 = 256;

/// `frame_marker` of the frame made from the word at the stack pointer
/// (`SampleRecord::user_tos`): a return address into the JS function whose
/// frame the walk started from, when the sampled code is a frameless leaf.
/// V8's sampler looks there too (TickSample's `tos`). Never a real marker:
/// those are small even numbers, and other words normalize to `u64::MAX`.
pub const TOS_FRAME_MARKER: u64 = u64::MAX - 1;

/// Keeps only what symbolization needs of a frame, so that identical stacks
/// compare equal: the `[fp-8]` word matters only as a typed-frame marker, while
/// Context pointers and C++ garbage would make every stack unique.
fn normalize_frame(frame: &UserFrame) -> UserFrame {
    if frame.frame_marker == TOS_FRAME_MARKER {
        return *frame;
    }
    let is_marker = frame.frame_marker & 1 == 0 && frame.frame_marker < MAX_FRAME_MARKER;
    UserFrame {
        frame_marker: if is_marker {
            frame.frame_marker
        } else {
            u64::MAX
        },
        ..*frame
    }
}

/// Copies a record out of ring buffer bytes; short records (a probe/user
/// mismatch) are skipped rather than read past their end.
fn read_pod<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; T is plain old data, valid for any bytes.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodeprof_common::{MAX_KERNEL_FRAMES, MAX_USER_FRAMES};

    fn pcs(pcs: &[u64]) -> Vec<UserFrame> {
        pcs.iter()
            .map(|&pc| UserFrame {
                pc,
                frame_marker: u64::MAX,
                ..Default::default()
            })
            .collect()
    }

    fn record(tid: u32, comm: &[u8], user: &[u64]) -> SampleRecord {
        let mut r = SampleRecord {
            time_ns: 100,
            tgid: 1,
            tid,
            cpu: 0,
            kernel_frames: 0,
            user_frames: user.len() as u32,
            kind: 0,
            state: 0,
            user_tos: 0,
            comm: [0; 16],
            kernel_stack: [0; MAX_KERNEL_FRAMES],
            user_stack: [UserFrame::default(); MAX_USER_FRAMES],
            leaf_frames: 0,
            _pad: 0,
            leaf_pcs: [0; nodeprof_common::MAX_UNWIND_LEVELS],
        };
        r.comm[..comm.len()].copy_from_slice(comm);
        r.user_stack[..user.len()].copy_from_slice(&pcs(user));
        r
    }

    #[test]
    fn the_stack_top_word_follows_a_js_leaf_frame() {
        let mut c = Collection::default();
        c.set_v8_code(vec![(0x70, 0x80)]);
        let mut r = record(1, b"node", &[1, 2, 3]);
        r.user_tos = 0x77;
        // Frame 0 is no JS frame: the word is not used.
        c.push(&r);
        r.user_stack[0].sfi = 0x51;
        c.push(&r);
        // A word outside V8's code, or a sampled pc inside it: not used.
        r.user_tos = 0x99;
        c.push(&r);
        r.user_tos = 0x77;
        r.user_stack[0].pc = 0x71;
        c.push(&r);
        let has_word = |i: usize| {
            c.user_frames_of(&c.stacks[c.samples[i].stack as usize])
                .any(|f| f.frame_marker == TOS_FRAME_MARKER)
        };
        assert_eq!(
            (0..4).map(has_word).collect::<Vec<_>>(),
            [false, true, false, false]
        );
        let walked = |i: usize| -> Vec<(u64, u64, u64)> {
            c.user_frames_of(&c.stacks[c.samples[i].stack as usize])
                .map(|f| (f.pc, f.sfi, f.frame_marker))
                .collect()
        };
        assert_eq!(walked(0).len(), 3);
        assert_eq!(
            walked(1),
            [
                (1, 0x51, u64::MAX),
                (0x77, 0x51, TOS_FRAME_MARKER),
                (2, 0, u64::MAX),
                (3, 0, u64::MAX)
            ]
        );
    }

    #[test]
    fn identical_stacks_and_names_are_stored_once() {
        let mut c = Collection::default();
        c.push(&record(1, b"node", &[1, 2, 3]));
        c.push(&record(2, b"node", &[1, 2, 3]));
        c.push(&record(2, b"worker", &[4]));
        assert_eq!(c.samples.len(), 3);
        assert_eq!(c.stacks.len(), 2);
        assert_eq!(
            c.thread_names,
            vec!["node".to_string(), "worker".to_string()]
        );
        assert_eq!(
            c.user_frames_of(&c.stacks[c.samples[0].stack as usize])
                .copied()
                .collect::<Vec<_>>()
                .as_slice(),
            pcs(&[1, 2, 3]).as_slice()
        );
        assert_eq!(c.samples[2].thread_name, 1);
    }

    #[test]
    fn contexts_and_garbage_do_not_split_stacks() {
        let frame = |marker| UserFrame {
            pc: 7,
            frame_marker: marker,
            sfi: 0x1001,
            sfi_fingerprint: 3,
        };
        // Two calls of one JS function with different Context pointers: one stack.
        assert_eq!(
            normalize_frame(&frame(0x7f00_1231)),
            normalize_frame(&frame(0x7f00_4561))
        );
        assert_eq!(normalize_frame(&frame(0x7f00_4560)).frame_marker, u64::MAX);
        // A typed frame's marker (type 3 = exit frame) survives.
        assert_eq!(normalize_frame(&frame(3 << 1)).frame_marker, 6);
        assert_eq!(normalize_frame(&frame(0x7f00_1231)).sfi, 0x1001);
    }

    #[test]
    fn short_records_are_rejected() {
        assert!(read_pod::<SampleRecord>(&[0u8; 16]).is_none());
        let r = record(5, b"x", &[9, 8]);
        // SAFETY: viewing a POD struct as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&r as *const SampleRecord).cast::<u8>(),
                size_of::<SampleRecord>(),
            )
        };
        let back = read_pod::<SampleRecord>(bytes).unwrap();
        assert_eq!(back.tid, 5);
        assert_eq!(
            back.user_stack().iter().map(|f| f.pc).collect::<Vec<_>>(),
            vec![9, 8]
        );
    }
}
