//! CPU samples taken in a leaf without a frame pointer (libc's `memmove`,
//! `malloc`, a system-call wrapper) that uses rbp as a plain register: the
//! sampler's frame-pointer walk cannot start from rbp and may lose every
//! frame above. For these the sampler copies the top of the stack
//! (`SampleRecord::stack_top`); here the leaf frames are unwound from that
//! copy with `.eh_frame` ([`Unwinder`]) and joined to the sampler's walk at
//! the first return address both saw.

use nodeprof_common::{SampleRecord, UserFrame, MAX_USER_FRAMES};

use super::unwind::Unwinder;
use crate::v8::memory::{Memory, MemoryError};

/// The unwind tables of one target, read when the first such sample comes.
pub struct LeafUnwinder {
    pid: u32,
    unwinder: Option<Unwinder>,
}

impl LeafUnwinder {
    pub fn new(pid: u32) -> LeafUnwinder {
        LeafUnwinder {
            pid,
            unwinder: None,
        }
    }

    /// After an exec: the tables of the new image, when next needed.
    pub fn reload_modules(&mut self) {
        self.unwinder = None;
    }

    /// Gives `record` the frames its leaf hid, when it carries a stack copy
    /// and the `.eh_frame` walk over it meets the sampler's walk. Returns
    /// whether the stack changed.
    pub fn repair(&mut self, record: &mut SampleRecord) -> bool {
        let walked = record.user_stack();
        if record.stack_top().is_empty() || walked.is_empty() {
            return false;
        }
        let pid = self.pid;
        let unwinder = self.unwinder.get_or_insert_with(|| {
            let maps = crate::target::read_maps(pid).unwrap_or_default();
            Unwinder::for_process(pid, &maps)
        });
        let top = StackTop {
            base: record.leaf_sp,
            bytes: record.stack_top(),
        };
        let unwound: Vec<u64> = unwinder
            .walk(&top, walked[0].pc, record.leaf_sp, record.leaf_bp)
            .iter()
            .map(|f| f.pc)
            .collect();
        let Some(joined) = join(&unwound, walked) else {
            return false;
        };
        if joined == walked {
            return false;
        }
        record.user_stack[..joined.len()].copy_from_slice(&joined);
        record.user_frames = joined.len() as u32;
        true
    }
}

/// The leaf frames `unwound` (pcs, innermost first, the interrupted pc
/// first) followed by the sampler's `walked` frames from the first return
/// address both hold; None when they share none.
fn join(unwound: &[u64], walked: &[UserFrame]) -> Option<Vec<UserFrame>> {
    let (i, j) = unwound.iter().enumerate().skip(1).find_map(|(i, &pc)| {
        let j = walked.iter().skip(1).position(|f| f.pc == pc)?;
        Some((i, j + 1))
    })?;
    // The sampler's walk broke sooner than the unwinding ran out of copy.
    if walked.len() - j < unwound.len() - i {
        return Some(unwound_only(unwound, walked));
    }
    let leaves = unwound[1..i].iter().map(|&pc| UserFrame {
        pc,
        ..Default::default()
    });
    Some(
        walked[..1]
            .iter()
            .copied()
            .chain(leaves)
            .chain(walked[j..].iter().copied())
            .take(MAX_USER_FRAMES)
            .collect(),
    )
}

/// The `unwound` frames alone, the first as the sampler saw it.
fn unwound_only(unwound: &[u64], walked: &[UserFrame]) -> Vec<UserFrame> {
    walked[..1]
        .iter()
        .copied()
        .chain(unwound.iter().skip(1).map(|&pc| UserFrame {
            pc,
            ..Default::default()
        }))
        .take(MAX_USER_FRAMES)
        .collect()
}

/// The sampler's copy of the stack from `base` up; nothing else is readable.
struct StackTop<'a> {
    base: u64,
    bytes: &'a [u8],
}

impl Memory for StackTop<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let bytes = addr
            .checked_sub(self.base)
            .and_then(|offset| usize::try_from(offset).ok())
            .and_then(|offset| self.bytes.get(offset..offset.checked_add(buf.len())?))
            .ok_or(MemoryError::Short {
                addr,
                len: buf.len(),
                got: 0,
            })?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(pcs: &[u64]) -> Vec<UserFrame> {
        pcs.iter()
            .map(|&pc| UserFrame {
                pc,
                sfi: pc + 1000,
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn leaf_frames_are_joined_where_the_walks_meet() {
        // The sampler saw the leaf (1) and, from a record found above it,
        // the frames from 5 up; `.eh_frame` saw the leaf's callers 2, 3, 4.
        let walked = frames(&[1, 5, 6, 7]);
        let joined = join(&[1, 2, 3, 4, 5, 6], &walked).unwrap();
        assert_eq!(
            joined.iter().map(|f| f.pc).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6, 7]
        );
        // The sampler's frames keep what it read in them (JS functions).
        assert_eq!(joined[0], walked[0]);
        assert_eq!(joined[4..], walked[1..]);
        assert_eq!(joined[1].sfi, 0);
    }

    #[test]
    fn a_walk_that_saw_a_frame_the_unwinding_did_not_is_joined_after_it() {
        // A wrong record found by the scan gives a garbage frame (9) before
        // the real ones; the join drops it.
        let joined = join(&[1, 2, 5, 6], &frames(&[1, 9, 5, 6, 7])).unwrap();
        assert_eq!(
            joined.iter().map(|f| f.pc).collect::<Vec<_>>(),
            [1, 2, 5, 6, 7]
        );
    }

    #[test]
    fn the_unwinding_is_kept_where_it_goes_farther() {
        // The scan's record led to one good frame (2), then garbage.
        let joined = join(&[1, 2, 3, 4], &frames(&[1, 2])).unwrap();
        assert_eq!(
            joined.iter().map(|f| f.pc).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
    }

    #[test]
    fn walks_that_share_no_return_address_are_not_joined() {
        assert!(join(&[1, 2, 3], &frames(&[1, 8, 9])).is_none());
        assert!(join(&[1], &frames(&[1, 8, 9])).is_none());
    }

    #[test]
    fn stack_top_reads_only_the_copy() {
        let bytes: Vec<u8> = (0..32).collect();
        let top = StackTop {
            base: 0x1000,
            bytes: &bytes,
        };
        let mut word = [0u8; 8];
        top.read(0x1008, &mut word).unwrap();
        assert_eq!(word, [8, 9, 10, 11, 12, 13, 14, 15]);
        assert!(top.read(0x1019, &mut word).is_err());
        assert!(top.read(0xff8, &mut word).is_err());
    }
}
