//! Turns raw addresses into frames a person can read: native code through
//! blazesym (node binary, shared libraries, kernel), JIT code through the
//! target's perf map when it writes one.
//!
//! The target may exit before we symbolize, so while it runs we keep a snapshot
//! of its executable mappings and an open descriptor to every mapped file and
//! to its perf map; symbolization at the end reads only those.

mod gc;
mod js;
mod perf_map;

pub use js::JsNaming;
pub use perf_map::PerfMap;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blazesym::symbolize::{self, source, Input};
use nodeprof_common::UserFrame;

use crate::collect::{Collection, RawStack, TOS_FRAME_MARKER};
use crate::image::{Image, Mapping, ProcessImage};
use crate::profile::{Frame, FrameKind};
use crate::target::{Discovery, Target};

/// Re-reading `/proc/PID/maps` at most this often while new code appears.
const MAPS_REFRESH_INTERVAL: Duration = Duration::from_millis(100);
/// JS frames waiting for a snapshot that covers their code, at most.
const MAX_INLINING_LATER: usize = 4096;

struct Module {
    /// Path as the target sees it.
    path: String,
    /// Open while the target lived: survives its exit and mount namespace.
    file: Option<File>,
}

pub struct Symbolizer {
    /// A live process, or a core file.
    image: Arc<dyn Image>,
    /// Where a live target writes its perf map.
    perf_map_path: Option<std::path::PathBuf>,
    mappings: Vec<(Mapping, usize)>,
    modules: Vec<Module>,
    module_ids: HashMap<String, usize>,
    perf_map_file: Option<File>,
    last_refresh: Option<Instant>,
    /// The target's executable as it sees it.
    exe: Option<String>,
    js: Option<JsNaming>,
    /// The JS naming of executables the target ran before an exec: samples
    /// taken before it name their functions there.
    retired: Vec<JsNaming>,
    /// JS frames in code mapped after the last snapshot: their inlining is
    /// looked up after the next one.
    inlining_later: Vec<UserFrame>,
}

impl Symbolizer {
    pub fn new(target: &Target) -> Symbolizer {
        Symbolizer::of_image(
            Arc::new(ProcessImage::new(target.pid)),
            Some(target.perf_map_path()),
        )
    }

    /// Names the frames of any image: a core file has no perf map.
    pub fn of_image(
        image: Arc<dyn Image>,
        perf_map_path: Option<std::path::PathBuf>,
    ) -> Symbolizer {
        Symbolizer {
            image,
            perf_map_path,
            mappings: Vec::new(),
            modules: Vec::new(),
            module_ids: HashMap::new(),
            perf_map_file: None,
            last_refresh: None,
            exe: None,
            js: None,
            retired: Vec::new(),
            inlining_later: Vec::new(),
        }
    }

    /// The executable the target runs now, and its V8 when it has one (found
    /// by [`crate::target::Runtime`] at the start and after an exec).
    pub fn use_executable(&mut self, found: &Discovery) {
        self.exe = Some(found.exe.to_string_lossy().into_owned());
        if let Some(old) = self.js.take() {
            self.retired.push(old);
        }
        self.js = match &found.v8 {
            Ok(v8) => Some(JsNaming::new(self.image.memory(), v8)),
            Err(e) => {
                tracing::debug!("no V8 layout in {}: {e}", found.exe.display());
                None
            }
        };
    }

    /// Called while the target runs with the user frames first seen since the
    /// last call: re-snapshots the mappings when code appears that the
    /// snapshot does not cover (a library loaded, or the launched command just
    /// exec'd), and names new JS functions while their SFIs are valid.
    pub fn observe(&mut self, new_frames: &[UserFrame]) {
        let uncovered = new_frames.iter().any(|f| self.mapping(f.pc).is_none());
        let due = self
            .last_refresh
            .is_none_or(|t| t.elapsed() >= MAPS_REFRESH_INTERVAL);
        let refreshed = (uncovered || self.last_refresh.is_none()) && due;
        if refreshed {
            self.refresh();
        }
        // JS frames in JIT code (anonymous memory) may run inlined functions.
        // A frame in code no snapshot covers yet waits for the next one (its
        // code is looked for only where V8's code is); the word from the
        // stack top may be no code at all.
        let waiting = if refreshed {
            std::mem::take(&mut self.inlining_later)
        } else {
            Vec::new()
        };
        let mut in_jit = Vec::new();
        for f in waiting
            .iter()
            .chain(new_frames.iter().filter(|f| f.sfi != 0))
        {
            match self.mapping(f.pc) {
                Some((m, _)) if m.path.is_empty() => in_jit.push(*f),
                None if !refreshed
                    && f.frame_marker != TOS_FRAME_MARKER
                    && self.inlining_later.len() < MAX_INLINING_LATER =>
                {
                    self.inlining_later.push(*f)
                }
                _ => {}
            }
        }
        if let Some(js) = self.js.as_mut() {
            js.retry_pending();
            for frame in new_frames.iter().filter(|f| f.sfi != 0) {
                js.observe(frame.sfi, frame.sfi_fingerprint);
            }
            for frame in &in_jit {
                js.observe_inlining(frame);
            }
        }
    }

    /// Snapshots the target's executable mappings and opens what they map.
    pub fn refresh(&mut self) {
        self.last_refresh = Some(Instant::now());
        let maps = self.image.mappings();
        if maps.is_empty() {
            // An exited (zombie) target: keep what we had.
            return;
        }
        let mut mappings = Vec::with_capacity(maps.len());
        for mapping in maps {
            let module = self.module_for(&mapping);
            mappings.push((mapping, module));
        }
        // Keep earlier mappings the new snapshot does not overlap: code
        // unmapped since (a worker's isolate that exited) was sampled too.
        for old in std::mem::take(&mut self.mappings) {
            if !mappings
                .iter()
                .any(|(m, _)| m.start < old.0.end && old.0.start < m.end)
            {
                mappings.push(old);
            }
        }
        mappings.sort_by_key(|(m, _)| m.start);
        self.mappings = mappings;
        if self.perf_map_file.is_none() {
            self.perf_map_file = self.perf_map_path.as_ref().and_then(|p| File::open(p).ok());
        }
    }

    fn module_for(&mut self, mapping: &Mapping) -> usize {
        if let Some(&id) = self.module_ids.get(&mapping.path) {
            if self.modules[id].file.is_some() || !mapping.is_file() {
                return id;
            }
        }
        let file = mapping
            .is_file()
            .then(|| self.image.open(mapping))
            .flatten();
        let id = match self.module_ids.get(&mapping.path) {
            Some(&id) => {
                self.modules[id].file = file;
                id
            }
            None => {
                self.modules.push(Module {
                    path: mapping.path.clone(),
                    file,
                });
                self.modules.len() - 1
            }
        };
        self.module_ids.insert(mapping.path.clone(), id);
        id
    }

    fn mapping(&self, addr: u64) -> Option<&(Mapping, usize)> {
        let i = self.mappings.partition_point(|(m, _)| m.start <= addr);
        self.mappings
            .get(i.checked_sub(1)?)
            .filter(|(m, _)| m.contains(addr))
    }

    /// Whether `pc` is code V8 generated or ships: JIT code in anonymous (or
    /// not yet snapshotted) memory or the embedded builtins (in the executable, or the copy node 22+ maps).
    /// Only there do V8's frame slots mean anything.
    fn is_v8_code(&self, pc: u64) -> bool {
        // Code no snapshot saw: JIT memory V8 mapped after the last one (the
        // executable and libraries are always in it).
        self.mapping(pc).is_none() || self.is_mapped_v8_code(pc)
    }

    /// Address ranges of V8's code among the mappings seen: anonymous
    /// executable memory (JIT) and the builtins blob in the executable.
    pub fn v8_code_ranges(&self) -> Vec<(u64, u64)> {
        let blob = self.js.as_ref().and_then(JsNaming::embedded_blob);
        let exe = self
            .exe
            .as_deref()
            .map(|e| e.trim_end_matches(" (deleted)"));
        self.mappings
            .iter()
            .filter_map(|(m, _)| {
                if m.path.is_empty() {
                    return Some((m.start, m.end));
                }
                let blob = blob?;
                if Some(m.path.trim_end_matches(" (deleted)")) != exe {
                    return None;
                }
                // The part of this mapping that holds the blob.
                let start = blob.file_offset.max(m.offset);
                let end = (blob.file_offset + blob.size).min(m.offset + (m.end - m.start));
                (start < end).then(|| (m.start + start - m.offset, m.start + end - m.offset))
            })
            .collect()
    }

    /// [`Symbolizer::is_v8_code`] among the mappings seen: a word from the
    /// stack (see [`TOS_FRAME_MARKER`]) may point anywhere.
    fn is_mapped_v8_code(&self, pc: u64) -> bool {
        let Some((mapping, _)) = self.mapping(pc) else {
            return false;
        };
        if mapping.path.is_empty() {
            return true;
        }
        let (Some(exe), Some(blob)) = (
            self.exe.as_deref(),
            self.js.as_ref().and_then(JsNaming::embedded_blob),
        ) else {
            return false;
        };
        mapping.path.trim_end_matches(" (deleted)") == exe.trim_end_matches(" (deleted)")
            && blob.contains_file_offset(pc - mapping.start + mapping.offset)
    }

    /// A user frame as a reader wants it, outermost first: the JS function
    /// V8 runs there and the functions inlined into it, a labelled V8 frame,
    /// or the native symbol. No frame for a JS builtin such as `forEach`
    /// (folded into its caller as DevTools does).
    ///
    /// A frame that called out of its code (`leaf` false) gets its inlined
    /// functions; the frame the sampled pc is in only where V8's own
    /// profiler does it too (V8 14): before, `node --cpu-prof` charges it to
    /// the outermost function (the sampled pc's entry is pushed without its
    /// inline stack), and nodeprof's figures agree with it.
    fn user_frame(&self, frame: &UserFrame, native: &Frame, leaf: bool) -> Vec<Frame> {
        // A JS frame of an executable the target ran before an exec: the
        // naming of that executable resolved it (its SFI was verified).
        if frame.sfi != 0
            && !self
                .js
                .as_ref()
                .is_some_and(|js| js.knows(frame.sfi, frame.sfi_fingerprint))
        {
            if let Some(old) = self
                .retired
                .iter()
                .rev()
                .find(|old| old.knows(frame.sfi, frame.sfi_fingerprint))
            {
                return if leaf {
                    old.leaf_frames(frame, old.leaf_inlining())
                } else {
                    old.frames(frame)
                };
            }
        }
        let Some(js) = self.js.as_ref() else {
            return vec![native.clone()];
        };
        if !self.is_v8_code(frame.pc) {
            return vec![native.clone()];
        }
        if frame.sfi != 0 {
            if leaf {
                return js.leaf_frames(frame, js.leaf_inlining());
            }
            return js.frames(frame);
        }
        if native.kind == FrameKind::Unknown {
            if let Some(name) = js.frame_type_name(frame.frame_marker) {
                return vec![Frame::new(FrameKind::Jit, format!("[V8 {name}]"), "")];
            }
        }
        vec![native.clone()]
    }

    fn read_perf_map(&mut self) -> PerfMap {
        let mut text = String::new();
        if let Some(file) = self.perf_map_file.as_mut() {
            let _ = file.rewind();
            // Capped: a perf map of a long-running server is a few MB at most.
            let _ = file.take(256 << 20).read_to_string(&mut text);
        }
        PerfMap::parse(&text)
    }

    /// Symbolizes every stack and hands each, outermost frame first, to
    /// `sink` in order; one stack's frames at a time, so memory holds the
    /// caller's interned frames, not a copy of every frame of every stack.
    pub fn symbolize(&mut self, collection: &Collection, mut sink: impl FnMut(Vec<Frame>)) {
        if let Some(js) = self.js.as_mut() {
            // A last chance for functions whose script a GC was moving.
            js.retry_pending();
        }
        let stacks = &collection.stacks;
        let perf_map = self.read_perf_map();
        let blaze = symbolize::Symbolizer::builder()
            .enable_code_info(false)
            .enable_inlined_fns(false)
            .build();

        // Return addresses point after the call: look up addr-1 so the frame
        // names the calling function even when the call is its last instruction.
        let lookup = |stack: &[u64]| -> Vec<u64> {
            stack
                .iter()
                .enumerate()
                .map(|(i, &a)| if i == 0 { a } else { a.saturating_sub(1) })
                .collect()
        };

        let mut user_addrs: BTreeMap<u64, ()> = BTreeMap::new();
        let mut kernel_addrs: BTreeMap<u64, ()> = BTreeMap::new();
        let user_pcs = |stack: &RawStack| -> Vec<u64> {
            collection.user_frames_of(stack).map(|f| f.pc).collect()
        };
        for stack in stacks {
            user_addrs.extend(lookup(&user_pcs(stack)).into_iter().map(|a| (a, ())));
            kernel_addrs.extend(lookup(&stack.kernel).into_iter().map(|a| (a, ())));
        }

        let mut user_frames: HashMap<u64, Frame> = HashMap::new();
        // Batch per module: one blazesym call resolves all of a file's addresses.
        let mut per_module: BTreeMap<usize, Vec<(u64, u64)>> = BTreeMap::new();
        for &addr in user_addrs.keys() {
            match self.mapping(addr) {
                Some((m, module)) if self.modules[*module].file.is_some() => {
                    per_module
                        .entry(*module)
                        .or_default()
                        .push((addr, addr - m.start + m.offset));
                }
                Some((m, _)) => {
                    user_frames.insert(addr, anonymous_frame(addr, m, &perf_map));
                }
                None => {
                    let frame = match perf_map.lookup(addr) {
                        Some(name) => Frame::new(FrameKind::Jit, name, ""),
                        None => Frame::new(FrameKind::Unknown, "[unknown]", ""),
                    };
                    user_frames.insert(addr, frame);
                }
            }
        }
        for (module_id, addrs) in per_module {
            let module = &self.modules[module_id];
            let file = module.file.as_ref().expect("filtered above");
            let path = format!("/proc/self/fd/{}", file.as_raw_fd());
            let mut elf = source::Elf::new(path);
            // The symbol table names functions; DWARF would cost seconds on node's 100 MB of debug info.
            elf.debug_syms = false;
            let src = source::Source::Elf(elf);
            let offsets: Vec<u64> = addrs.iter().map(|&(_, off)| off).collect();
            let results = blaze
                .symbolize(&src, Input::FileOffset(&offsets))
                .unwrap_or_default();
            let basename = module
                .path
                .rsplit('/')
                .next()
                .unwrap_or(&module.path)
                .to_string();
            for (i, &(addr, _)) in addrs.iter().enumerate() {
                let frame = match results.get(i).and_then(|r| r.as_sym()) {
                    Some(sym) => {
                        Frame::new(FrameKind::Native, sym.name.to_string(), module.path.clone())
                    }
                    None => Frame::new(
                        FrameKind::Unknown,
                        format!("[{basename}]"),
                        module.path.clone(),
                    ),
                };
                user_frames.insert(addr, frame);
            }
        }

        let mut kernel_frames: HashMap<u64, Frame> = HashMap::new();
        if !kernel_addrs.is_empty() {
            let src = source::Source::Kernel(source::Kernel {
                debug_syms: false,
                ..Default::default()
            });
            let addrs: Vec<u64> = kernel_addrs.keys().copied().collect();
            let results = blaze
                .symbolize(&src, Input::AbsAddr(&addrs))
                .unwrap_or_default();
            for (i, &addr) in addrs.iter().enumerate() {
                let frame = match results.get(i).and_then(|r| r.as_sym()) {
                    Some(sym) => Frame::new(FrameKind::Kernel, sym.name.to_string(), "[kernel]"),
                    None => Frame::new(FrameKind::Kernel, "[unknown kernel]", "[kernel]"),
                };
                kernel_frames.insert(addr, frame);
            }
        }

        for stack in stacks {
            let user = lookup(&user_pcs(stack));
            let kernel = lookup(&stack.kernel);
            let walked: Vec<&UserFrame> = collection.user_frames_of(stack).collect();
            // The frame from the stack top counts only when the sampled pc
            // is outside V8 code, in a leaf that made no frame, and the word
            // there is V8 code.
            let leaf_in_v8 = walked.first().is_some_and(|f| self.is_v8_code(f.pc));
            let kept: Vec<(&u64, &UserFrame)> = user
                .iter()
                .zip(walked)
                .filter(|(_, f)| {
                    f.frame_marker != TOS_FRAME_MARKER
                        || (!leaf_in_v8 && self.is_mapped_v8_code(f.pc))
                })
                .collect();
            let mut frames: Vec<Frame> = kept
                .into_iter()
                .enumerate()
                .rev()
                .flat_map(|(i, (a, frame))| self.user_frame(frame, &user_frames[a], i == 0))
                .chain(kernel.iter().rev().map(|a| kernel_frames[a].clone()))
                .collect();
            gc::mark_garbage_collection(&mut frames);
            sink(frames);
        }
    }
}

/// A frame in memory that no file backs: JIT code (named by the perf map when
/// there is one), the vDSO, or other anonymous code.
fn anonymous_frame(addr: u64, mapping: &Mapping, perf_map: &PerfMap) -> Frame {
    if let Some(name) = perf_map.lookup(addr) {
        return Frame::new(FrameKind::Jit, name, "");
    }
    if mapping.path.is_empty() {
        Frame::new(FrameKind::Unknown, "[unknown JIT]", "")
    } else {
        Frame::new(
            FrameKind::Native,
            mapping.path.clone(),
            mapping.path.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Symbolizes addresses of this very test binary: a real ELF, no root needed.
    #[test]
    fn names_functions_of_a_live_process() {
        let me = Target::inspect(std::process::id()).unwrap();
        let mut symbolizer = Symbolizer::new(&me);
        let addr = names_functions_of_a_live_process as *const () as usize as u64;
        let mut record = nodeprof_common::SampleRecord {
            time_ns: 1,
            tgid: me.pid,
            tid: me.pid,
            cpu: 0,
            kernel_frames: 0,
            user_frames: 2,
            kind: 0,
            state: 0,
            user_tos: 0,
            comm: [0; 16],
            kernel_stack: [0; nodeprof_common::MAX_KERNEL_FRAMES],
            user_stack: [UserFrame::default(); nodeprof_common::MAX_USER_FRAMES],
            leaf_frames: 0,
            _pad: 0,
            leaf_pcs: [0; nodeprof_common::MAX_UNWIND_LEVELS],
        };
        record.user_stack[0].pc = addr;
        record.user_stack[1].pc = 0x10;
        let mut collection = Collection::default();
        collection.push(&record);
        symbolizer.observe(&collection.user_frames);
        let mut frames = Vec::new();
        symbolizer.symbolize(&collection, |f| frames.push(f));
        assert_eq!(frames.len(), 1);
        let leaf = frames[0].last().unwrap();
        assert_eq!(leaf.kind, FrameKind::Native, "{leaf:?}");
        assert!(
            leaf.name.contains("names_functions_of_a_live_process"),
            "{leaf:?}"
        );
        // 0x10 is in no mapping: an unknown frame, outermost.
        assert_eq!(frames[0][0].kind, FrameKind::Unknown);
    }
}
