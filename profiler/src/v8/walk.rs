//! V8's view of a stack walked in user space: which frames are JS frames
//! and of which function, from the frame pointer of each frame, exactly as
//! the eBPF sampler decides it (probe-ebpf/src/sampler.rs).

use nodeprof_common::UserFrame;

use super::function::{frame_function, FrameFunction};
use super::layout::V8Layout;
use super::memory::{Memory, MemoryExt};

/// One frame of a frame-pointer walk.
#[derive(Debug, Clone, Copy)]
pub struct WalkedFrame {
    pub pc: u64,
    pub fp: u64,
    pub marker: u64,
    pub function: Option<FrameFunction>,
}

/// The frame-pointer walk of the sampler, in user space.
pub fn walk<M: Memory>(mem: &M, layout: &V8Layout, mut pc: u64, mut fp: u64) -> Vec<WalkedFrame> {
    let mut frames = Vec::new();
    for _ in 0..nodeprof_common::MAX_USER_FRAMES {
        if fp == 0 || !fp.is_multiple_of(8) {
            break;
        }
        let Ok(marker) = mem.read_u64(fp.wrapping_add_signed(i64::from(layout.fp_context))) else {
            break;
        };
        frames.push(WalkedFrame {
            pc,
            fp,
            marker,
            function: frame_function(mem, layout, fp),
        });
        let (Ok(next_fp), Ok(ret)) = (mem.read_u64(fp), mem.read_u64(fp + 8)) else {
            break;
        };
        if next_fp <= fp || next_fp - fp > 16 << 20 {
            break;
        }
        fp = next_fp;
        pc = ret;
    }
    frames
}

/// The sampler's record of one frame, from its pc and frame pointer: the
/// word at the context-or-marker slot, and the SharedFunctionInfo when the
/// frame holds a JSFunction. Only meaningful where `pc` is V8 code (the
/// symbolizer checks that).
pub fn user_frame<M: Memory + ?Sized>(mem: &M, layout: &V8Layout, pc: u64, fp: u64) -> UserFrame {
    let mut frame = UserFrame {
        pc,
        ..Default::default()
    };
    if fp == 0 || !fp.is_multiple_of(8) {
        return frame;
    }
    if let Some(slot) = fp.checked_add_signed(i64::from(layout.fp_context)) {
        frame.frame_marker = mem.read_u64(slot).unwrap_or(0);
    }
    if let Some(f) = frame_function(mem, layout, fp) {
        frame.sfi = f.sfi;
        frame.sfi_fingerprint = f.fingerprint;
    }
    frame
}
