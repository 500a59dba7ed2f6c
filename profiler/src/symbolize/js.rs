//! JS frames: the sampler records each JS frame's SharedFunctionInfo; here it
//! becomes a function name, script URL and position by reading the target's
//! memory while it still runs (a GC may move or free the SFI later). A frame
//! in optimized code also gets the functions inlined at its pc, read then too.

use std::collections::HashMap;
use std::sync::Arc;

use nodeprof_common::UserFrame;

use crate::image::SharedMemory;
use crate::profile::{Frame, FrameKind};
use crate::target::V8Runtime;
use crate::v8::code::{self, CodeInfo};
use crate::v8::memory::{Memory, MemoryExt};
use crate::v8::{CodeFinder, EmbeddedBlob, JsFunctionInfo, JsResolver, Lookup, V8Layout};

/// Distinct (SFI, fingerprint) pairs remembered; past this, new functions are
/// labelled `[unknown JS]` rather than growing memory without bound.
const MAX_RESOLVED: usize = 1 << 20;
/// Distinct functions kept (one function may sit at many addresses over time).
const MAX_FUNCTIONS: usize = 1 << 18;
/// SFIs waiting for another try at most (a GC moved their script while read).
const MAX_PENDING: usize = 4096;
/// Sampled frames (pc, SFI) whose inlining is remembered at most.
const MAX_INLINED_FRAMES: usize = 1 << 18;

/// A sampled frame, as far as naming goes: pc, SFI and fingerprint.
type FrameKey = (u64, u64, u64);

/// What nodeprof found out about a target's V8.
pub struct JsNaming {
    layout: Arc<V8Layout>,
    resolver: JsResolver<SharedMemory>,
    /// (sfi, fingerprint) → index into `functions`, or None when unresolvable.
    resolved: HashMap<(u64, u64), Option<u32>>,
    functions: Vec<JsFunctionInfo>,
    function_ids: HashMap<JsFunctionInfo, u32>,
    /// SFIs whose script a GC was moving while they were read: tried again
    /// at the next observation.
    pending: Vec<(u64, u64)>,
    code: CodeFinder,
    /// Functions inlined at a sampled frame's pc, outermost first, as
    /// (SFI, fingerprint); frames without inlining are not stored.
    inlined: HashMap<FrameKey, Box<[(u64, u64)]>>,
    /// Sampled frames whose pc is in optimized code of another function than
    /// the frame's SFI: that function, then those inlined at the pc, as
    /// (SFI, fingerprint). See [`JsNaming::leaf_frames`].
    pc_owners: HashMap<FrameKey, Box<[(u64, u64)]>>,
    /// Frames whose inlining was looked up.
    inlining_seen: std::collections::HashSet<FrameKey>,
}

impl JsNaming {
    /// Names the JS functions of a target that runs this V8, read through `memory`.
    pub fn new(memory: SharedMemory, v8: &V8Runtime) -> JsNaming {
        JsNaming {
            resolver: JsResolver::new(memory, v8.layout.clone()),
            layout: v8.layout.clone(),
            resolved: HashMap::new(),
            functions: Vec::new(),
            function_ids: HashMap::new(),
            pending: Vec::new(),
            code: CodeFinder::new(),
            inlined: HashMap::new(),
            pc_owners: HashMap::new(),
            inlining_seen: Default::default(),
        }
    }

    pub fn embedded_blob(&self) -> Option<EmbeddedBlob> {
        self.layout.embedded_blob
    }

    /// Resolves a sampled SFI now, while the target is alive; cached.
    pub fn observe(&mut self, sfi: u64, fingerprint: u64) {
        if self.resolved.contains_key(&(sfi, fingerprint)) || self.resolved.len() >= MAX_RESOLVED {
            return;
        }
        let id = match self.resolver.lookup(sfi, fingerprint) {
            Lookup::Found(info) => self.intern(info),
            Lookup::NotAFunction => None,
            Lookup::TryLater => {
                if !self.pending.contains(&(sfi, fingerprint)) && self.pending.len() < MAX_PENDING {
                    self.pending.push((sfi, fingerprint));
                }
                return;
            }
        };
        self.resolved.insert((sfi, fingerprint), id);
    }

    /// Looks up, now, the functions inlined at the pc of a sampled frame in
    /// JIT code, and names them. Cached per frame, and per code object below.
    pub fn observe_inlining(&mut self, frame: &UserFrame) {
        let key = (frame.pc, frame.sfi, frame.sfi_fingerprint);
        if self.layout.code.is_none()
            || self.inlining_seen.contains(&key)
            || self.inlining_seen.len() >= MAX_INLINED_FRAMES
        {
            return;
        }
        self.inlining_seen.insert(key);
        let Some(code) = self
            .code
            .code_at(self.resolver.memory(), &self.layout, frame.pc)
        else {
            return;
        };
        if code.sfi == 0 {
            // Unoptimized code: no inlining. (In a baseline callee's
            // prologue the frame stays named after the caller.)
            return;
        }
        // In an optimized callee's prologue or epilogue the frame pointer
        // still holds the caller's frame (or the new frame's function slot
        // is not written yet): V8's profiler names such a pc by the code it
        // is in, and so does nodeprof. Anywhere else, code of another
        // function than the frame's is stale (the lookup comes after the
        // sample): nothing is added.
        let owner = if code.sfi == frame.sfi {
            None
        } else if self.frame_not_set_up(&code, frame.pc) {
            match self.fingerprint(code.sfi) {
                Some(fingerprint) => Some((code.sfi, fingerprint)),
                // Unreadable now: keep the frame's own name.
                None => return,
            }
        } else {
            return;
        };
        let sfis = code.inlined_at(frame.pc).unwrap_or_default();
        if owner.is_none() && sfis.is_empty() {
            return;
        }
        let functions: Box<[(u64, u64)]> = owner
            .into_iter()
            .chain(
                sfis.into_iter()
                    .filter_map(|sfi| Some((sfi, self.fingerprint(sfi)?))),
            )
            .collect();
        for &(sfi, fingerprint) in functions.iter() {
            self.observe(sfi, fingerprint);
        }
        if owner.is_some() {
            self.pc_owners.insert(key, functions);
        } else {
            self.inlined.insert(key, functions);
        }
    }

    /// Whether `pc` in `code` runs before its frame is set up or after it is
    /// torn down (see [`code::frame_not_set_up_at`]), from the code's bytes now.
    fn frame_not_set_up(&self, code: &CodeInfo, pc: u64) -> bool {
        // The code found for a pc holds it; a garbage frame's must not panic.
        let Some(offset) = pc
            .checked_sub(code.instruction_start)
            .filter(|&offset| offset < code.instruction_size)
        else {
            return false;
        };
        let memory = self.resolver.memory();
        code::frame_not_set_up_at(
            code.instruction_size as usize,
            offset as usize,
            |from, len| {
                let mut buf = vec![0u8; len];
                memory
                    .read(code.instruction_start + from as u64, &mut buf)
                    .map(|()| buf)
                    .unwrap_or_default()
            },
        )
    }

    /// The fingerprint of an SFI as the sampler would have read it, now.
    fn fingerprint(&self, sfi: u64) -> Option<u64> {
        let offset = u64::from(self.layout.sfi.name_or_scope_info);
        self.resolver
            .memory()
            .read_u64(self.layout.untag(sfi).wrapping_add(offset))
            .ok()
    }

    /// Tries again the SFIs that could not be read consistently before.
    pub fn retry_pending(&mut self) {
        for (sfi, fingerprint) in std::mem::take(&mut self.pending) {
            self.observe(sfi, fingerprint);
        }
    }

    fn intern(&mut self, info: JsFunctionInfo) -> Option<u32> {
        if let Some(&id) = self.function_ids.get(&info) {
            return Some(id);
        }
        if self.functions.len() >= MAX_FUNCTIONS {
            return None;
        }
        let id = self.functions.len() as u32;
        self.functions.push(info.clone());
        self.function_ids.insert(info, id);
        Some(id)
    }

    /// Whether this SFI was resolved to a function here.
    pub fn knows(&self, sfi: u64, fingerprint: u64) -> bool {
        matches!(self.resolved.get(&(sfi, fingerprint)), Some(Some(_)))
    }

    /// The frame of a sampled SFI: `None` for a JS-linkage builtin
    /// (`forEach`…), which DevTools folds into its caller as well.
    pub fn frame(&self, sfi: u64, fingerprint: u64) -> Option<Frame> {
        let Some(Some(id)) = self.resolved.get(&(sfi, fingerprint)) else {
            return Some(Frame::new(FrameKind::Js, "[unknown JS]", ""));
        };
        let info = &self.functions[*id as usize];
        if info.url.is_empty() && info.script_id == 0 {
            return None;
        }
        Some(js_frame(info))
    }

    /// The frames of a sampled JS frame, outermost first: its function, then
    /// the functions inlined at its pc (each hidden like [`JsNaming::frame`]).
    pub fn frames(&self, frame: &UserFrame) -> Vec<Frame> {
        let mut frames: Vec<Frame> = self
            .frame(frame.sfi, frame.sfi_fingerprint)
            .into_iter()
            .collect();
        if let Some(inlined) = self
            .inlined
            .get(&(frame.pc, frame.sfi, frame.sfi_fingerprint))
        {
            frames.extend(inlined.iter().filter_map(|&(sfi, fp)| self.frame(sfi, fp)));
        }
        frames
    }

    /// The frames of the frame the sampled pc is in, outermost first; with
    /// `expand`, the functions inlined at the pc too. Named, as V8's
    /// profiler names the sampled pc, by the code the pc is in: in a
    /// callee's prologue (before `push rbp`) or epilogue (after `leave`) the
    /// frame pointer still holds the caller's frame, whose function slot
    /// the sampler read.
    pub fn leaf_frames(&self, frame: &UserFrame, expand: bool) -> Vec<Frame> {
        let key = (frame.pc, frame.sfi, frame.sfi_fingerprint);
        // An owner this naming could not resolve leaves the frame's name.
        if let Some(functions) = self
            .pc_owners
            .get(&key)
            .filter(|functions| self.knows(functions[0].0, functions[0].1))
        {
            let n = if expand { functions.len() } else { 1 };
            return functions[..n.min(functions.len())]
                .iter()
                .filter_map(|&(sfi, fp)| self.frame(sfi, fp))
                .collect();
        }
        if expand {
            self.frames(frame)
        } else {
            self.frame(frame.sfi, frame.sfi_fingerprint)
                .into_iter()
                .collect()
        }
    }

    /// Whether the frame the sampled pc is in gets its inlined functions
    /// too: as `node --cpu-prof` of the same V8 does.
    pub fn leaf_inlining(&self) -> bool {
        self.layout.code.as_ref().is_some_and(|c| c.leaf_inlining)
    }

    /// A label for a typed V8 frame (entry, exit, stub…) from its marker.
    pub fn frame_type_name(&self, marker: u64) -> Option<&str> {
        self.layout.frame_type_name(marker)
    }
}

pub fn js_frame(info: &JsFunctionInfo) -> Frame {
    let name = if info.name.is_empty() {
        "(anonymous)"
    } else {
        info.name.as_str()
    };
    Frame {
        line: info.line,
        column: info.column,
        script_id: (info.script_id != 0).then_some(info.script_id),
        ..Frame::new(FrameKind::Js, name, info.url.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_functions_read_like_devtools() {
        let info = JsFunctionInfo {
            name: String::new(),
            url: "file:///a.js".into(),
            script_id: 3,
            line: Some(4),
            column: Some(2),
        };
        let frame = js_frame(&info);
        assert_eq!(frame.name, "(anonymous)");
        assert_eq!((frame.line, frame.column), (Some(4), Some(2)));
        assert_eq!(frame.kind, FrameKind::Js);
        assert_eq!(frame.location, "file:///a.js");
        assert_eq!(frame.script_id, Some(3));
    }
}
