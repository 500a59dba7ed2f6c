//! Exact stacks of threads off CPU during a capture. The stack the
//! `sched_switch` program walks by frame pointers loses the JS frames above
//! code built without them (libuv's synchronous calls); a thread that stays
//! off CPU does not move, so its registers (task iterator) and `.eh_frame`
//! give the whole stack, as `nodeprof dump` walks it:
//! - threads already off CPU when the capture starts are seeded with it
//!   (no switch-out would ever report them);
//! - a thread off CPU for longer than [`REWALK_AFTER`] gets it in place of
//!   the frame-pointer stack, when it is verifiably still in that same
//!   interval (its `OFF_CPU` entry holds the same start).

use std::collections::HashMap;
use std::sync::Arc;

use nodeprof_common::{ThreadEvent, EVENT_SWITCH_IN};

use crate::collect::Collection;
use crate::probe::Probe;
use crate::stacks::{self, threads::ThreadState, unwind::Unwinder};
use crate::v8::{ProcessMemory, V8Layout};

/// An interval shorter than this keeps its frame-pointer stack: the walk
/// costs more than what it would add to a short wait.
const REWALK_AFTER_NS: u64 = 20_000_000;

/// An off-CPU sample whose thread has not been seen back yet.
struct Open {
    sample: usize,
    start_ns: u64,
    rewalked: bool,
}

pub(super) struct BlockedStacks {
    pid: u32,
    unwinder: Unwinder,
    mem: ProcessMemory,
    layout: Option<Arc<V8Layout>>,
    open: HashMap<u32, Open>,
    /// Samples already looked at.
    seen: usize,
}

impl BlockedStacks {
    /// Loads the task iterator and reads the target's unwind tables; `None`
    /// (with a warning) where that fails: the frame-pointer stacks remain.
    pub fn new(pid: u32, probe: &mut Probe) -> Option<BlockedStacks> {
        if let Err(e) = probe.load_task_iterator() {
            tracing::warn!("off-CPU stacks by frame pointers only: {e}");
            return None;
        }
        let maps = match crate::target::read_maps(pid) {
            Ok(maps) => maps,
            Err(e) => {
                tracing::warn!("off-CPU stacks by frame pointers only: {e}");
                return None;
            }
        };
        Some(BlockedStacks {
            pid,
            unwinder: Unwinder::for_process(pid, &maps),
            mem: ProcessMemory::new(pid),
            layout: None,
            open: HashMap::new(),
            seen: 0,
        })
    }

    pub fn set_layout(&mut self, layout: Option<Arc<V8Layout>>) {
        self.layout = layout;
    }

    /// After an exec: the unwind tables of the new image.
    pub fn reload_modules(&mut self) {
        if let Ok(maps) = crate::target::read_maps(self.pid) {
            self.unwinder = Unwinder::for_process(self.pid, &maps);
        }
    }

    /// Threads off CPU at `start_ns`: an off-CPU sample each, from then.
    pub fn seed(&mut self, probe: &mut Probe, collection: &mut Collection, start_ns: u64) {
        let Ok(threads) = stacks::threads::list(self.pid) else {
            return;
        };
        for thread in threads.iter().filter(|t| t.state != ThreadState::Running) {
            // One that left the CPU since tracing began has its own record;
            // for the others an entry from now on makes their return reported.
            if probe.off_cpu_since(thread.tid).is_some()
                || !probe.open_off_cpu(thread.tid, self.pid, start_ns)
            {
                continue;
            }
            let Ok(Some(regs)) = probe.read_task(thread.tid) else {
                continue;
            };
            let mut record = stacks::empty_record(self.pid, thread);
            stacks::walk_registers(
                &mut record,
                &stacks::thread_regs(thread.tid, &regs),
                &self.unwinder,
                &self.mem,
                self.layout.as_deref(),
            );
            record.time_ns = start_ns;
            collection.push(&record);
        }
        // Seeds are exact already; the thread's next record ends them.
        self.seen = collection.samples.len();
    }

    /// Takes note of the samples and switch-ins drained since the last call,
    /// then walks the threads that have been off CPU long enough.
    pub fn update(
        &mut self,
        probe: &mut Probe,
        collection: &mut Collection,
        events: &[ThreadEvent],
        now_ns: u64,
    ) {
        for (index, sample) in collection.samples.iter().enumerate().skip(self.seen) {
            if sample.off_cpu {
                self.open.insert(
                    sample.tid,
                    Open {
                        sample: index,
                        start_ns: sample.time_ns,
                        rewalked: false,
                    },
                );
            } else {
                self.open.remove(&sample.tid);
            }
        }
        self.seen = collection.samples.len();
        for e in events.iter().filter(|e| e.kind == EVENT_SWITCH_IN) {
            if self
                .open
                .get(&e.tid)
                .is_some_and(|o| o.start_ns == e.start_ns)
            {
                self.open.remove(&e.tid);
            }
        }
        for (&tid, open) in self.open.iter_mut() {
            if open.rewalked || now_ns.saturating_sub(open.start_ns) < REWALK_AFTER_NS {
                continue;
            }
            open.rewalked = true;
            // Still off CPU since that switch-out: its registers and stack
            // are those it left with.
            if probe.off_cpu_since(tid) != Some(open.start_ns) {
                continue;
            }
            let Ok(Some(regs)) = probe.read_task(tid) else {
                continue;
            };
            let index = open.sample;
            let name =
                collection.thread_names[collection.samples[index].thread_name as usize].clone();
            let info = stacks::ThreadInfo {
                tid,
                name,
                state: ThreadState::Sleeping,
                off_cpu: None,
            };
            let mut record = stacks::empty_record(self.pid, &info);
            stacks::walk_registers(
                &mut record,
                &stacks::thread_regs(tid, &regs),
                &self.unwinder,
                &self.mem,
                self.layout.as_deref(),
            );
            // The walk read memory the thread could change once back on CPU;
            // and where it found no more than the frame pointers did (code it
            // has no unwind table for), the first walk stays.
            let walked = &collection.stacks[collection.samples[index].stack as usize];
            if probe.off_cpu_since(tid) != Some(open.start_ns)
                || (record.user_frames as usize) <= walked.user.len()
            {
                continue;
            }
            record.time_ns = open.start_ns;
            collection.restack(index, &record);
        }
    }
}
