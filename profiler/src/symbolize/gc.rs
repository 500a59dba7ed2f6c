//! Samples inside V8's garbage collector get a `(garbage collector)` frame,
//! DevTools' name for GC time, placed where GC starts so the JS that
//! triggered it stays visible above.

use crate::profile::{Frame, FrameKind, GARBAGE_COLLECTOR};

/// Native functions that start garbage-collection work (node 18–26), on the
/// JS thread (allocation failure, incremental step) and on V8's helper
/// threads (concurrent marking, sweeping, parallel scavenge).
const GC_ENTRY_PREFIXES: &[&str] = &[
    "v8::internal::Heap::CollectGarbage",
    "v8::internal::Heap::CollectAllGarbage",
    "v8::internal::Heap::CollectAllAvailableGarbage",
    "v8::internal::Heap::PerformGarbageCollection",
    "v8::internal::Heap::FinalizeIncrementalMarking",
    "v8::internal::IncrementalMarking::",
    "v8::internal::IncrementalMarkingJob::",
    "v8::internal::ScavengeJob::",
    "v8::internal::ScavengerCollector::",
    "v8::internal::Scavenger::",
    "v8::internal::MarkCompactCollector::",
    "v8::internal::MinorMarkCompactCollector::",
    "v8::internal::MinorMarkSweepCollector::",
    "v8::internal::ConcurrentMarking::",
    "v8::internal::MinorGCJob::",
    "v8::internal::Sweeper::",
    "v8::internal::MemoryReducer::",
    "v8::internal::ArrayBufferSweeper::",
];

pub fn is_gc_entry(frame: &Frame) -> bool {
    frame.kind == FrameKind::Native && GC_ENTRY_PREFIXES.iter().any(|p| frame.name.starts_with(p))
}

/// Inserts `(garbage collector)` before the outermost GC frame of a stack
/// (outermost first), if any.
pub fn mark_garbage_collection(frames: &mut Vec<Frame>) {
    if let Some(at) = frames.iter().position(is_gc_entry) {
        frames.insert(at, Frame::meta(GARBAGE_COLLECTOR));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(name: &str) -> Frame {
        Frame::new(FrameKind::Native, name, "/usr/bin/node")
    }

    #[test]
    fn gc_frames_sit_under_the_meta_frame() {
        let mut stack = vec![
            native("node::Start(int, char**)"),
            Frame::new(FrameKind::Js, "allocate", "file:///a.js"),
            native("v8::internal::Heap::CollectGarbage(v8::internal::AllocationSpace, v8::internal::GarbageCollectionReason, v8::GCCallbackFlags)"),
            native("v8::internal::Heap::PerformGarbageCollection(v8::internal::GarbageCollector, v8::internal::GarbageCollectionReason, char const*)"),
        ];
        mark_garbage_collection(&mut stack);
        assert_eq!(stack.len(), 5);
        assert_eq!(stack[2], Frame::meta(GARBAGE_COLLECTOR));
        assert_eq!(stack[1].name, "allocate");
    }

    #[test]
    fn other_stacks_are_untouched() {
        let mut stack = vec![
            native("node::Start(int, char**)"),
            native("v8::internal::Heap::Allocate"),
        ];
        mark_garbage_collection(&mut stack);
        assert_eq!(stack.len(), 2);
        // A JS function that happens to be named like GC code is not GC.
        let mut js = vec![Frame::new(
            FrameKind::Js,
            "v8::internal::Sweeper::x",
            "file:///a.js",
        )];
        mark_garbage_collection(&mut js);
        assert_eq!(js.len(), 1);
    }
}
