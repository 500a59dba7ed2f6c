//! JS frames: the sampler records each JS frame's SharedFunctionInfo; here it
//! becomes a function name, script URL and position by reading the target's
//! memory while it still runs (a GC may move or free the SFI later).

use std::collections::HashMap;
use std::sync::Arc;

use crate::profile::{Frame, FrameKind};
use crate::target::V8Runtime;
use crate::v8::{EmbeddedBlob, JsFunctionInfo, JsResolver, Lookup, ProcessMemory, V8Layout};

/// Distinct (SFI, fingerprint) pairs remembered; past this, new functions are
/// labelled `[unknown JS]` rather than growing memory without bound.
const MAX_RESOLVED: usize = 1 << 20;
/// Distinct functions kept (one function may sit at many addresses over time).
const MAX_FUNCTIONS: usize = 1 << 18;
/// SFIs waiting for another try at most (a GC moved their script while read).
const MAX_PENDING: usize = 4096;

/// What nodeprof found out about a target's V8.
pub struct JsNaming {
    layout: Arc<V8Layout>,
    resolver: JsResolver<ProcessMemory>,
    /// (sfi, fingerprint) → index into `functions`, or None when unresolvable.
    resolved: HashMap<(u64, u64), Option<u32>>,
    functions: Vec<JsFunctionInfo>,
    function_ids: HashMap<JsFunctionInfo, u32>,
    /// SFIs whose script a GC was moving while they were read: tried again
    /// at the next observation.
    pending: Vec<(u64, u64)>,
}

impl JsNaming {
    /// Names the JS functions of `pid`, which runs this V8.
    pub fn new(pid: u32, v8: &V8Runtime) -> JsNaming {
        JsNaming {
            resolver: JsResolver::new(ProcessMemory::new(pid), v8.layout.clone()),
            layout: v8.layout.clone(),
            resolved: HashMap::new(),
            functions: Vec::new(),
            function_ids: HashMap::new(),
            pending: Vec::new(),
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
    }
}
