//! SharedFunctionInfo → function name, script URL, script id and 0-based
//! line/column of the function start, as DevTools and `node --cpu-prof`
//! report them in a `.cpuprofile` callFrame. Cached and bounded: garbage in,
//! `None` out, never a panic, a hang or unbounded memory.

use std::collections::HashMap;
use std::sync::Arc;

use super::cache::GenCache;
use super::heap::Heap;
use super::layout::V8Layout;
use super::memory::{Memory, MemoryExt};
use super::strings::{line_column, Limits, StringReader, MAX_LINES};

/// A JS function as a `.cpuprofile` callFrame names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JsFunctionInfo {
    /// V8's debug name: the function's name, else its inferred name
    /// (`obj.handler`), else empty (the caller labels it `(anonymous)`).
    pub name: String,
    /// `file://` URL for scripts named by an absolute path, the script name
    /// otherwise (`node:internal/…`, ESM `file://…`); empty for builtins.
    pub url: String,
    /// V8's script id (per isolate); 0 without a script.
    pub script_id: u32,
    /// 0-based line of the function start; `None` when unknown.
    pub line: Option<u32>,
    /// 0-based column (UTF-16 units) of the function start; `None` when unknown.
    pub column: Option<u32>,
}

/// The function a JS frame runs, read the way the eBPF sampler does it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameFunction {
    /// Tagged JSFunction at `[fp + fp_function]`.
    pub js_function: u64,
    /// Its tagged SharedFunctionInfo (instance type verified).
    pub sfi: u64,
    /// The SFI's `name_or_scope_info` word (the resolver's cache fingerprint).
    pub fingerprint: u64,
}

/// Reads the JSFunction and SFI of the frame at `fp`, if it is a JS frame
/// (the context slot holds a heap object, not a frame-type marker). Only
/// meaningful when the frame's pc is V8 code.
pub fn frame_function<M: Memory + ?Sized>(
    mem: &M,
    layout: &V8Layout,
    fp: u64,
) -> Option<FrameFunction> {
    let heap = Heap::new(mem, layout);
    let ctx = mem
        .read_u64(fp.checked_add_signed(i64::from(layout.fp_context))?)
        .ok()?;
    if !heap.is_heap_object(ctx) {
        return None;
    }
    let js_function = mem
        .read_u64(fp.checked_add_signed(i64::from(layout.fp_function))?)
        .ok()?;
    if !layout.is_js_function_type(heap.instance_type(js_function)?) {
        return None;
    }
    let sfi = heap.field(js_function, layout.js_function_shared)?;
    if !heap.has_type(sfi, layout.types.shared_function_info) {
        return None;
    }
    let fingerprint = heap.field(sfi, layout.sfi.name_or_scope_info)?;
    Some(FrameFunction {
        js_function,
        sfi,
        fingerprint,
    })
}

/// Cache sizes of a [`JsResolver`].
#[derive(Debug, Clone, Copy)]
pub struct ResolverLimits {
    pub max_functions: usize,
    pub max_scripts: usize,
    /// Total bytes of cached line tables.
    pub max_line_table_bytes: usize,
}

impl Default for ResolverLimits {
    fn default() -> Self {
        ResolverLimits {
            max_functions: 64 << 10,
            max_scripts: 4 << 10,
            max_line_table_bytes: 16 << 20,
        }
    }
}

/// Counters of a [`JsResolver`] (for `--verbose` and benchmarks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResolverStats {
    pub lookups: u64,
    pub cache_hits: u64,
    pub resolved: u64,
    pub failed: u64,
    /// Scripts whose line table was computed by scanning the source.
    pub sources_scanned: u64,
    /// Scripts whose line ends could not be found (uncached external source, too big…).
    pub line_tables_unavailable: u64,
    /// Scripts whose source or line table moved (a GC) while being read: retried later.
    pub scripts_moved: u64,
    pub cached_functions: usize,
    pub cached_scripts: usize,
    /// Approximate bytes held by the script cache (URLs and line tables).
    pub cached_script_bytes: usize,
}

#[derive(Debug)]
struct ScriptInfo {
    url: String,
    id: u32,
    line_ends: Option<Arc<[u32]>>,
    line_offset: i32,
    column_offset: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ScriptKey {
    addr: u64,
    id: i32,
    source_len: usize,
}

/// What a ScopeInfo says about its function.
#[derive(Debug, Default, PartialEq, Eq)]
struct ScopeNames {
    name: Option<String>,
    inferred: Option<String>,
    start: Option<u32>,
}

/// Resolves SharedFunctionInfo addresses of one target to [`JsFunctionInfo`].
pub struct JsResolver<M: Memory> {
    mem: M,
    layout: Arc<V8Layout>,
    functions: GenCache<(u64, u64), Option<JsFunctionInfo>>,
    scripts: GenCache<ScriptKey, Arc<ScriptInfo>>,
    stats: ResolverStats,
    /// Set when the current resolution read a script that a GC was moving.
    moved_while_reading: bool,
    /// Failed reads of a script's line table so far, by script address.
    line_table_tries: HashMap<u64, u8>,
}

/// What [`JsResolver::lookup`] made of a sampled frame's function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(JsFunctionInfo),
    /// Not a live SharedFunctionInfo with that fingerprint: gone, moved or garbage.
    NotAFunction,
    /// A GC was moving its script while it was read: worth another try later.
    TryLater,
}

impl From<Option<JsFunctionInfo>> for Lookup {
    fn from(info: Option<JsFunctionInfo>) -> Self {
        info.map_or(Lookup::NotAFunction, Lookup::Found)
    }
}

/// Reads of a script's line table before nodeprof gives up on its positions.
const LINE_TABLE_TRIES: u8 = 4;

/// Upper bound of ScopeInfo context locals we accept (V8's own limit is far lower).
const MAX_CONTEXT_LOCALS: i32 = 1 << 20;
/// Slots the otel-style fallback scans for a name.
const NAME_SCAN_SLOTS: u64 = 16;

impl<M: Memory> JsResolver<M> {
    pub fn new(mem: M, layout: impl Into<Arc<V8Layout>>) -> Self {
        Self::with_limits(mem, layout, ResolverLimits::default())
    }

    pub fn with_limits(mem: M, layout: impl Into<Arc<V8Layout>>, limits: ResolverLimits) -> Self {
        JsResolver {
            mem,
            layout: layout.into(),
            functions: GenCache::new(limits.max_functions, usize::MAX),
            scripts: GenCache::new(limits.max_scripts, limits.max_line_table_bytes),
            stats: ResolverStats::default(),
            moved_while_reading: false,
            line_table_tries: HashMap::new(),
        }
    }

    pub fn layout(&self) -> &V8Layout {
        &self.layout
    }

    pub fn memory(&self) -> &M {
        &self.mem
    }

    pub fn stats(&self) -> ResolverStats {
        ResolverStats {
            cached_functions: self.functions.len(),
            cached_scripts: self.scripts.len(),
            cached_script_bytes: self.scripts.weight(),
            ..self.stats
        }
    }

    /// Forgets everything (e.g. after a compacting GC moved objects).
    pub fn clear_caches(&mut self) {
        self.functions.clear();
        self.scripts.clear();
    }

    /// Names the function of a sampled frame: `sfi` is the tagged
    /// SharedFunctionInfo address, `fingerprint` its `name_or_scope_info` word
    /// at sample time. `None` when the SFI is gone, moved or garbage, or
    /// could not be read consistently now ([`JsResolver::lookup`] tells).
    pub fn resolve(&mut self, sfi: u64, fingerprint: u64) -> Option<JsFunctionInfo> {
        match self.lookup(sfi, fingerprint) {
            Lookup::Found(info) => Some(info),
            Lookup::NotAFunction | Lookup::TryLater => None,
        }
    }

    /// [`JsResolver::resolve`], telling a final "no" from "not now".
    pub fn lookup(&mut self, sfi: u64, fingerprint: u64) -> Lookup {
        self.stats.lookups += 1;
        let key = (sfi, fingerprint);
        if let Some(hit) = self.functions.get(&key) {
            self.stats.cache_hits += 1;
            return Lookup::from(hit.clone());
        }
        self.moved_while_reading = false;
        let info = self.resolve_uncached(sfi, fingerprint);
        if self.moved_while_reading {
            // Not an answer, and not cached: a later sample tries again.
            return Lookup::TryLater;
        }
        if info.is_some() {
            self.stats.resolved += 1;
        } else {
            self.stats.failed += 1;
        }
        self.functions.insert(key, info.clone(), 1);
        Lookup::from(info)
    }

    fn resolve_uncached(&mut self, sfi: u64, fingerprint: u64) -> Option<JsFunctionInfo> {
        let layout = Arc::clone(&self.layout);
        let heap = Heap::new(&self.mem, &layout);
        let strings = StringReader::from_heap(heap);
        if !heap.has_type(sfi, layout.types.shared_function_info) {
            return None;
        }
        let name_or_scope_info = heap.field(sfi, layout.sfi.name_or_scope_info)?;
        if name_or_scope_info != fingerprint {
            return None;
        }

        let mut names = ScopeNames::default();
        if heap.is_heap_object(name_or_scope_info) {
            let ty = heap.instance_type(name_or_scope_info)?;
            if ty == layout.types.scope_info {
                names = decode_scope_info(heap, &strings, name_or_scope_info)?;
            } else if layout.is_string_type(ty) {
                names.name = Some(strings.read_name(name_or_scope_info)?);
            } else {
                return None;
            }
        } else if layout.smi_value(name_or_scope_info) != Some(0) {
            // Only the "no name" sentinel (Smi 0) is valid besides objects.
            return None;
        }

        // Lazily compiled (or flushed) functions: UncompiledData has the
        // inferred name and the start position.
        if let Some(data) = heap.field(sfi, layout.sfi.function_data) {
            let is_uncompiled = heap
                .instance_type(data)
                .is_some_and(|t| layout.types.uncompiled_data.contains(&t));
            if is_uncompiled {
                if names.inferred.is_none() {
                    let inferred = heap
                        .field(data, layout.uncompiled.inferred_name)
                        .unwrap_or(0);
                    names.inferred = strings.read_name(inferred);
                }
                if names.start.is_none() {
                    names.start = heap
                        .field_i32(data, layout.uncompiled.start_position)
                        .and_then(|p| u32::try_from(p).ok());
                }
            }
        }

        // V8's SharedFunctionInfo::DebugName.
        let name = match (names.name, names.inferred) {
            (Some(n), _) if !n.is_empty() => n,
            (_, Some(inferred)) => inferred,
            _ => String::new(),
        };

        let mut info = JsFunctionInfo {
            name,
            url: String::new(),
            script_id: 0,
            line: None,
            column: None,
        };
        let Some(script) = self.script_of(sfi) else {
            return Some(info);
        };
        let Some(script) = self.script_info(script) else {
            return Some(info);
        };
        info.url = script.url.clone();
        info.script_id = script.id;
        if let (Some(ends), Some(start)) = (&script.line_ends, names.start) {
            if let Some((line, column)) = line_column(ends, start) {
                // Script::GetPositionInfo(WITH_OFFSET): vm.Script line/column offsets.
                let line_out = i64::from(line) + i64::from(script.line_offset);
                let column_out = if line == 0 {
                    i64::from(column) + i64::from(script.column_offset)
                } else {
                    i64::from(column)
                };
                info.line = u32::try_from(line_out).ok();
                info.column = u32::try_from(column_out).ok();
                if info.line.is_none() || info.column.is_none() {
                    info.line = None;
                    info.column = None;
                }
            }
        }
        Some(info)
    }

    /// The Script of an SFI (through a DebugInfo on V8 < 12).
    fn script_of(&self, sfi: u64) -> Option<u64> {
        let layout = &*self.layout;
        let heap = Heap::new(&self.mem, layout);
        let slot = heap.field(sfi, layout.sfi.script_or_debug_info)?;
        let ty = heap.instance_type(slot)?;
        if ty == layout.types.script {
            return Some(slot);
        }
        if let (Some(debug_info), Some(off)) = (layout.types.debug_info, layout.debug_info_script) {
            if ty == debug_info {
                let script = heap.field(slot, off)?;
                return heap.has_type(script, layout.types.script).then_some(script);
            }
        }
        None
    }

    fn script_info(&mut self, script: u64) -> Option<Arc<ScriptInfo>> {
        let layout = Arc::clone(&self.layout);
        let heap = Heap::new(&self.mem, &layout);
        let strings = StringReader::from_heap(heap);
        let sl = &layout.script;
        let id = heap.smi_field(script, sl.id)?;
        let source = heap.field(script, sl.source).unwrap_or(0);
        let source_len = strings.len(source);
        let key = ScriptKey {
            addr: script,
            id,
            source_len: source_len.unwrap_or(usize::MAX),
        };
        if let Some(hit) = self.scripts.get(&key) {
            return Some(Arc::clone(hit));
        }
        let name = heap.field(script, sl.name).unwrap_or(0);
        let url = match strings.read(name, Limits::URL) {
            Ok(name) => script_url(&name),
            Err(_) => String::new(),
        };
        let smi_or_zero = |off| heap.smi_field(script, off).unwrap_or(0);
        let line_ends_field = heap.field(script, sl.line_ends);
        let mut line_ends =
            source_len.and_then(|len| self.line_ends_from_script(heap, script, len));
        if line_ends.is_none() && source_len.is_some() {
            // Fails for uncached external sources, sources over 64 Mi units
            // or 2 Mi lines, and garbage: no positions then.
            if let Ok(ends) = strings.line_ends(source, Limits::SOURCE, MAX_LINES) {
                self.stats.sources_scanned += 1;
                line_ends = Some(ends);
            }
        }
        // A scavenge can move the source (or the line-end table) while we
        // read it, and a copy read mid-move is garbage: a whole file on one
        // line, say. Cache only what was read while the Script still pointed
        // at the same source and table; otherwise try again next time.
        let unchanged = heap.field(script, sl.source).unwrap_or(0) == source
            && strings.len(source) == source_len
            && heap.field(script, sl.line_ends) == line_ends_field;
        if !unchanged {
            self.stats.scripts_moved += 1;
            self.moved_while_reading = true;
            return None;
        }
        if line_ends.is_none() {
            // A source caught mid-move can fail to read at all: give it a few
            // more tries before settling for a script without positions.
            let tries = self.line_table_tries.entry(script).or_insert(0);
            *tries += 1;
            if *tries < LINE_TABLE_TRIES {
                self.moved_while_reading = true;
                return None;
            }
            self.stats.line_tables_unavailable += 1;
        }
        let weight = url.len() + 64 + line_ends.as_ref().map_or(0, |e| e.len() * 4);
        let info = Arc::new(ScriptInfo {
            url,
            id: u32::try_from(id).unwrap_or(0),
            line_ends: line_ends.map(Arc::from),
            line_offset: smi_or_zero(sl.line_offset),
            column_offset: smi_or_zero(sl.column_offset),
        });
        self.scripts.insert(key, Arc::clone(&info), weight);
        Some(info)
    }

    /// `Script.line_ends` when V8 has computed it: a FixedArray of Smis,
    /// strictly increasing, the last one the source length.
    fn line_ends_from_script(
        &self,
        heap: Heap<'_, M>,
        script: u64,
        source_len: usize,
    ) -> Option<Vec<u32>> {
        let layout = heap.layout;
        let arr = heap.field(script, layout.script.line_ends)?;
        if !heap.has_type(arr, layout.types.fixed_array) {
            return None;
        }
        let n = usize::try_from(heap.smi_field(arr, layout.fixed_array_length)?).ok()?;
        if n == 0 || n > MAX_LINES || n > source_len + 1 {
            return None;
        }
        let base = layout
            .untag(arr)
            .checked_add(u64::from(layout.fixed_array_data))?;
        let mut ends = Vec::with_capacity(n);
        let mut words = vec![0u64; n.min(8192)];
        let mut done = 0;
        while done < n {
            let k = (n - done).min(words.len());
            self.mem
                .read_u64s(base.checked_add(8 * done as u64)?, &mut words[..k])
                .ok()?;
            for &w in &words[..k] {
                let v = u32::try_from(layout.smi_value(w)?).ok()?;
                if ends.last().is_some_and(|&last| v <= last) {
                    return None;
                }
                ends.push(v);
            }
            done += k;
        }
        (ends.last().copied() == u32::try_from(source_len).ok()).then_some(ends)
    }
}

/// Name, inferred name and start position from a ScopeInfo (V8's
/// `ScopeInfo::FunctionName`, `InferredFunctionName`, `StartPosition`).
fn decode_scope_info<M: Memory + ?Sized>(
    heap: Heap<'_, M>,
    strings: &StringReader<'_, M>,
    si: u64,
) -> Option<ScopeNames> {
    let layout = heap.layout;
    let sl = &layout.scope_info;
    // Slot i is the tagged word after the map.
    let slot = |i: u64| -> Option<u64> {
        let off = 8u64.checked_add(i.checked_mul(8)?)?;
        heap.field(si, u32::try_from(off).ok()?)
    };
    let flags_word = slot(u64::from(sl.flags_idx))?;
    let (low, high) = (flags_word as u32, (flags_word >> 32) as u32);
    // Smi flags (value in the upper half) before V8 12.8, a raw u32 after;
    // real flags are never 0, so the other shape betrays a misjudged version.
    let flags = if sl.flags_raw_u32 {
        if low == 0 {
            high
        } else {
            low
        }
    } else if low == 0 {
        high
    } else {
        low
    };
    let n = layout.smi_value(slot(u64::from(sl.context_local_count_idx))?)?;
    if !(0..=MAX_CONTEXT_LOCALS).contains(&n) {
        return None;
    }
    let n = n as u64;
    let scope_type = flags & sl.scope_type_mask;
    let mut idx = u64::from(sl.first_vars);
    if sl.module_variable_count_slot && scope_type == sl.module_scope {
        idx += 1;
    }
    // Inlined names (or one hash table), then one info Smi per local.
    idx += if n < u64::from(sl.max_inlined_local_names) {
        n
    } else {
        1
    } + n;
    if flags & (1 << sl.has_saved_class_variable_bit) != 0 {
        idx += 1;
    }
    let mut out = ScopeNames::default();
    let mut consistent = true;
    let function_variable = (flags >> sl.function_variable_shift) & sl.function_variable_mask;
    if function_variable != 0 {
        // function_variable_info: (name, context slot).
        let w = slot(idx)?;
        if layout.smi_value(w) == Some(0) {
            out.name = Some(String::new());
        } else if let Some(name) = strings.read_name(w) {
            out.name = Some(name);
        } else {
            consistent = false;
        }
        idx += 2;
    }
    if flags & (1 << sl.has_inferred_function_name_bit) != 0 {
        // A String, or undefined.
        out.inferred = strings.read_name(slot(idx)?);
        idx += 1;
    }
    let needs_position = [
        sl.function_scope,
        sl.script_scope,
        sl.eval_scope,
        sl.module_scope,
    ]
    .contains(&scope_type);
    let position_idx = if sl.fixed_position_info {
        Some(3)
    } else {
        needs_position.then_some(idx)
    };
    if let Some(p) = position_idx {
        let start = slot(p).and_then(|w| layout.smi_value(w));
        let end = slot(p + 1).and_then(|w| layout.smi_value(w));
        if let (Some(start), Some(end)) = (start, end) {
            if 0 <= start && start <= end {
                out.start = Some(start as u32);
            } else {
                consistent = false;
            }
        } else {
            consistent = false;
        }
    }
    if !consistent && out.name.is_none() {
        // Layout drift: take the first String after the context locals.
        let first = u64::from(sl.first_vars) + 2 * n;
        for i in first..first + NAME_SCAN_SLOTS {
            if let Some(name) = slot(i).and_then(|w| strings.read_name(w)) {
                out.name = Some(name);
                break;
            }
        }
    }
    Some(out)
}

/// The `.cpuprofile` url of a script name: absolute paths become `file://`
/// URLs (see [`path_to_file_url`]); anything else (`node:internal/…`,
/// `file://…` of ES modules, `[eval]`, empty) passes through.
pub fn script_url(name: &str) -> String {
    if name.starts_with('/') {
        path_to_file_url(name)
    } else {
        name.to_string()
    }
}

/// `url.pathToFileURL(path).href` of node ≥ 20 for an absolute POSIX path:
/// the path is normalised like `path.resolve` (`.`, `..`, repeated `/`; a
/// trailing `/` kept), then every byte outside
/// `A–Z a–z 0–9 ! $ & ' ( ) * + , - . / : ; = @ _` is percent-encoded (UTF-8).
pub fn path_to_file_url(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut normalized = String::with_capacity(path.len() + 1);
    for s in &segments {
        normalized.push('/');
        normalized.push_str(s);
    }
    if normalized.is_empty() || (path.ends_with('/') && !segments.is_empty()) {
        normalized.push('/');
    }
    let mut url = String::with_capacity(normalized.len() + 16);
    url.push_str("file://");
    for &b in normalized.as_bytes() {
        let keep = b.is_ascii_alphanumeric() || b"!$&'()*+,-./:;=@_".contains(&b);
        if keep {
            url.push(char::from(b));
        } else {
            url.push('%');
            url.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            url.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v8::layout::test_layout;
    use crate::v8::memory::testing::{smi, FakeHeap};

    // Node 20 (V8 11.3) instance types and ScopeInfo flags.
    const SFI: u16 = 262;
    const SCOPE_INFO: u16 = 261;
    const SCRIPT: u16 = 167;
    const FIXED_ARRAY: u16 = 175;
    const DEBUG_INFO: u16 = 153;
    const UNCOMPILED: u16 = 222;
    const ODDBALL: u16 = 131;
    const SEQ1: u16 = 40;
    const FUNCTION_SCOPE: u32 = 2;
    const FN_VAR_UNUSED: u32 = 3 << 12;
    const HAS_INFERRED: u32 = 1 << 14;
    const SAVED_CLASS_VAR: u32 = 1 << 10;

    fn string(h: &mut FakeHeap, s: &str) -> u64 {
        let mut b = vec![0u8; 8];
        b[4..8].copy_from_slice(&(s.len() as i32).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
        h.object(SEQ1, &b)
    }

    const SOURCE: &str = "function a() {}\nfunction foo(x) {}\n  obj.m = function () {};\n";

    struct Fixture {
        heap: FakeHeap,
        script: u64,
        undefined: u64,
    }

    /// A Script of SOURCE named `path`, without a line-end table yet.
    fn script_object(heap: &mut FakeHeap, path: &str, id: i32, undefined: u64) -> u64 {
        let source = string(heap, SOURCE);
        let name = string(heap, path);
        // source, name, line_offset, column_offset, context_data, type, line_ends, id
        heap.object_words(
            SCRIPT,
            &[
                source,
                name,
                smi(0),
                smi(0),
                undefined,
                smi(0),
                undefined,
                smi(id),
            ],
        )
    }

    fn fixture() -> Fixture {
        let mut heap = FakeHeap::default();
        let undefined = heap.object_words(ODDBALL, &[0, 0]);
        let script = script_object(&mut heap, "/srv/my app/index.js", 42, undefined);
        Fixture {
            heap,
            script,
            undefined,
        }
    }

    /// A ScopeInfo with `n` context locals (names inlined below 75).
    fn scope_info(
        f: &mut Fixture,
        flags: u32,
        n: usize,
        name: Option<&str>,
        inferred: Option<&str>,
        start: i32,
    ) -> u64 {
        let mut slots = vec![smi(flags as i32), smi(0), smi(n as i32)];
        let local = string(&mut f.heap, "local");
        if n < 75 {
            slots.extend(std::iter::repeat_n(local, n));
        } else {
            slots.push(f.undefined); // the names hash table
        }
        slots.extend(std::iter::repeat_n(smi(0), n));
        if flags & SAVED_CLASS_VAR != 0 {
            slots.push(smi(7));
        }
        if flags & FN_VAR_UNUSED != 0 {
            let w = name.map_or(smi(0), |n| string(&mut f.heap, n));
            slots.extend([w, smi(0)]);
        }
        if flags & HAS_INFERRED != 0 {
            let w = inferred.map_or(f.undefined, |n| string(&mut f.heap, n));
            slots.push(w);
        }
        slots.extend([smi(start), smi(start + 5)]);
        f.heap.object_words(SCOPE_INFO, &slots)
    }

    fn sfi(f: &mut Fixture, function_data: u64, nosi: u64, script: u64) -> u64 {
        f.heap
            .object_words(SFI, &[function_data, nosi, 0, script, 0, smi(0)])
    }

    fn info(name: &str, line: u32, column: u32) -> JsFunctionInfo {
        JsFunctionInfo {
            name: name.to_string(),
            url: "file:///srv/my%20app/index.js".to_string(),
            script_id: 42,
            line: Some(line),
            column: Some(column),
        }
    }

    #[test]
    fn names_and_positions_from_scope_info() {
        let mut f = fixture();
        let foo_pos = SOURCE.find("(x)").unwrap() as i32;
        let m_pos = SOURCE.find("() {};").unwrap() as i32;
        let script = f.script;
        let cases = [
            (
                scope_info(
                    &mut f,
                    FUNCTION_SCOPE | FN_VAR_UNUSED,
                    2,
                    Some("foo"),
                    None,
                    foo_pos,
                ),
                info("foo", 1, 12),
            ),
            // No own name: the inferred name (V8's DebugName).
            (
                scope_info(
                    &mut f,
                    FUNCTION_SCOPE | FN_VAR_UNUSED | HAS_INFERRED,
                    0,
                    None,
                    Some("obj.m"),
                    m_pos,
                ),
                info("obj.m", 2, 19),
            ),
            // Anonymous.
            (
                scope_info(
                    &mut f,
                    FUNCTION_SCOPE | FN_VAR_UNUSED | HAS_INFERRED,
                    1,
                    None,
                    None,
                    0,
                ),
                info("", 0, 0),
            ),
            // 80 context locals: names in a hash table; a saved class variable.
            (
                scope_info(
                    &mut f,
                    FUNCTION_SCOPE | FN_VAR_UNUSED | SAVED_CLASS_VAR,
                    80,
                    Some("many"),
                    None,
                    foo_pos,
                ),
                info("many", 1, 12),
            ),
        ];
        let mut sfis = Vec::new();
        for (si, want) in cases {
            let s = sfi(&mut f, 0, si, script);
            sfis.push((s, si, want));
        }
        let layout = test_layout();
        let mut r = JsResolver::new(&f.heap.mem, layout);
        for (s, si, want) in &sfis {
            assert_eq!(r.resolve(*s, *si).as_ref(), Some(want));
        }
        assert_eq!(r.stats().sources_scanned, 1, "one line table per script");
        assert_eq!(r.stats().resolved, 4);
    }

    /// Memory in which a scavenge moves the script's source between the
    /// resolver's first read of the Script and its check: the first answer
    /// must be "try again", never a cached function without positions.
    struct MovingSource<'a> {
        inner: &'a crate::v8::memory::testing::FakeMemory,
        source_slot: u64,
        moved_to: u64,
        reads: std::cell::Cell<u32>,
    }

    impl Memory for MovingSource<'_> {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), crate::v8::memory::MemoryError> {
            self.inner.read(addr, buf)?;
            if addr == self.source_slot && buf.len() == 8 {
                let n = self.reads.get() + 1;
                self.reads.set(n);
                // From the second read of the slot on, the source has moved.
                if n >= 2 {
                    buf.copy_from_slice(&self.moved_to.to_le_bytes());
                }
            }
            Ok(())
        }
    }

    #[test]
    fn a_script_moved_while_read_is_retried_not_cached() {
        let mut f = fixture();
        let layout = test_layout();
        let foo_pos = SOURCE.find("(x)").unwrap() as i32;
        let si = scope_info(
            &mut f,
            FUNCTION_SCOPE | FN_VAR_UNUSED,
            0,
            Some("foo"),
            None,
            foo_pos,
        );
        let script = f.script;
        let s = sfi(&mut f, 0, si, script);
        let moved_to = string(&mut f.heap, SOURCE);
        // A function of another script, whose source stays put.
        let other_script = script_object(&mut f.heap, "/srv/other.js", 43, f.undefined);
        let a_si = scope_info(
            &mut f,
            FUNCTION_SCOPE | FN_VAR_UNUSED,
            0,
            Some("a"),
            None,
            9,
        );
        let a = sfi(&mut f, 0, a_si, other_script);

        let source_slot = script - 1 + u64::from(layout.script.source);
        let mem = MovingSource {
            inner: &f.heap.mem,
            source_slot,
            moved_to,
            reads: std::cell::Cell::new(0),
        };
        let mut r = JsResolver::new(&mem, layout);
        let found_a = Lookup::Found(JsFunctionInfo {
            url: "file:///srv/other.js".into(),
            script_id: 43,
            ..info("a", 0, 9)
        });
        assert_eq!(r.lookup(a, a_si), found_a);
        assert_eq!(r.lookup(s, si), Lookup::TryLater);
        assert_eq!(r.stats().scripts_moved, 1);
        // A cached answer is not affected by the retry before it.
        assert_eq!(r.lookup(a, a_si), found_a);
        // Settled: the same function resolves in full, from the moved source.
        let Lookup::Found(info) = r.lookup(s, si) else {
            panic!("not resolved on the second try");
        };
        assert_eq!(info.name, "foo");
        assert_eq!((info.line, info.column), (Some(1), Some(12)));
    }

    #[test]
    fn uncompiled_debug_info_line_ends_and_offsets() {
        let mut f = fixture();
        let layout = test_layout();
        let foo_pos = SOURCE.find("(x)").unwrap() as i32;
        // Lazily compiled: a String name, UncompiledData with inferred name and start.
        let name = string(&mut f.heap, "foo");
        let inferred = string(&mut f.heap, "ignored");
        let mut body = inferred.to_le_bytes().to_vec();
        body.extend_from_slice(&foo_pos.to_le_bytes());
        body.extend_from_slice(&(foo_pos + 5).to_le_bytes());
        let uncompiled = f.heap.object(UNCOMPILED, &body);
        let script = f.script;
        let lazy = sfi(&mut f, uncompiled, name, script);
        // V8 < 12 under a debugger: the script slot holds a DebugInfo.
        let debug_info = f.heap.object_words(DEBUG_INFO, &[0, smi(0), script]);
        let si = scope_info(
            &mut f,
            FUNCTION_SCOPE | FN_VAR_UNUSED,
            0,
            Some("dbg"),
            None,
            foo_pos,
        );
        let debugged = sfi(&mut f, 0, si, debug_info);
        // A builtin: name only, no script.
        let builtin_name = string(&mut f.heap, "forEach");
        let undefined = f.undefined;
        let builtin = sfi(&mut f, smi(3), builtin_name, undefined);
        let mut r = JsResolver::new(&f.heap.mem, layout.clone());
        assert_eq!(r.resolve(lazy, name), Some(info("foo", 1, 12)));
        assert_eq!(r.resolve(debugged, si), Some(info("dbg", 1, 12)));
        let want = JsFunctionInfo {
            name: "forEach".into(),
            url: String::new(),
            script_id: 0,
            line: None,
            column: None,
        };
        assert_eq!(r.resolve(builtin, builtin_name), Some(want));

        // Script.line_ends computed by V8 (a FixedArray of Smis, last = length)
        // is used as is; a corrupt one is ignored in favour of the source.
        let ends = crate::v8::strings::LineEnds::of_str(SOURCE);
        let mut words = vec![smi(ends.len() as i32)];
        words.extend(ends.iter().map(|&e| smi(e as i32)));
        let good = f.heap.object_words(FIXED_ARRAY, &words);
        f.heap.set_word(script, 56, good);
        let mut r = JsResolver::new(&f.heap.mem, layout.clone());
        assert_eq!(r.resolve(lazy, name), Some(info("foo", 1, 12)));
        assert_eq!(r.stats().sources_scanned, 0);
        let bad = f
            .heap
            .object_words(FIXED_ARRAY, &[smi(3), smi(1), smi(40), smi(2)]);
        f.heap.set_word(script, 56, bad);
        let mut r = JsResolver::new(&f.heap.mem, layout.clone());
        assert_eq!(r.resolve(lazy, name), Some(info("foo", 1, 12)));
        assert_eq!(r.stats().sources_scanned, 1);
        let huge = f.heap.object_words(FIXED_ARRAY, &[smi(i32::MAX), smi(1)]);
        f.heap.set_word(script, 56, huge);
        let mut r = JsResolver::new(&f.heap.mem, layout.clone());
        assert_eq!(r.resolve(lazy, name), Some(info("foo", 1, 12)));

        // vm.Script line/column offsets (column only on the first line).
        f.heap.set_word(script, 24, smi(10));
        f.heap.set_word(script, 32, smi(5));
        let first_line = scope_info(
            &mut f,
            FUNCTION_SCOPE | FN_VAR_UNUSED,
            0,
            Some("a"),
            None,
            10,
        );
        let a = sfi(&mut f, 0, first_line, script);
        let mut r = JsResolver::new(&f.heap.mem, layout);
        assert_eq!(r.resolve(a, first_line), Some(info("a", 10, 15)));
        assert_eq!(r.resolve(lazy, name), Some(info("foo", 11, 12)));
    }

    #[test]
    fn hostile_objects_give_none() {
        let mut f = fixture();
        let layout = test_layout();
        let script = f.script;
        let si = scope_info(
            &mut f,
            FUNCTION_SCOPE | FN_VAR_UNUSED,
            0,
            Some("ok"),
            None,
            0,
        );
        let good = sfi(&mut f, 0, si, script);
        // Context local count absurd or negative.
        let huge = f.heap.object_words(
            SCOPE_INFO,
            &[
                smi((FUNCTION_SCOPE | FN_VAR_UNUSED) as i32),
                smi(0),
                smi(i32::MAX),
            ],
        );
        let huge_sfi = sfi(&mut f, 0, huge, script);
        let negative = f.heap.object_words(
            SCOPE_INFO,
            &[
                smi((FUNCTION_SCOPE | FN_VAR_UNUSED) as i32),
                smi(0),
                smi(-4),
            ],
        );
        let negative_sfi = sfi(&mut f, 0, negative, script);
        // name_or_scope_info of a wrong type, or a non-zero Smi.
        let wrong = f.heap.object_words(FIXED_ARRAY, &[smi(0)]);
        let wrong_sfi = sfi(&mut f, 0, wrong, script);
        let smi_sfi = sfi(&mut f, 0, smi(5), script);
        let mut r = JsResolver::new(&f.heap.mem, layout.clone());
        assert!(r.resolve(good, si).is_some());
        assert_eq!(r.resolve(good, si ^ 8), None, "stale fingerprint");
        assert_eq!(r.resolve(script, 0), None, "not an SFI");
        assert_eq!(r.resolve(huge_sfi, huge), None);
        assert_eq!(r.resolve(negative_sfi, negative), None);
        assert_eq!(r.resolve(wrong_sfi, wrong), None);
        assert_eq!(r.resolve(smi_sfi, smi(5)), None);
        for addr in [0, 1, 0x1001, u64::MAX, u64::MAX - 6, 0x7fff_ffff_ffff_fff9] {
            assert_eq!(r.resolve(addr, 0), None, "{addr:#x}");
        }
    }

    #[test]
    fn random_memory_never_panics() {
        // Words that are random, Smis, or tagged pointers into the region,
        // some of them to maps of the types the resolver follows.
        let layout = test_layout();
        let mut h = FakeHeap::default();
        let types = [
            SFI,
            SCOPE_INFO,
            SCRIPT,
            FIXED_ARRAY,
            DEBUG_INFO,
            UNCOMPILED,
            SEQ1,
            32,
            41,
            33,
            42,
            43,
            45,
            58,
        ];
        let maps: Vec<u64> = types.iter().map(|&t| h.map(t)).collect();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        const WORDS: usize = 8192;
        let base = h.raw(&vec![0u8; WORDS * 8]);
        let mut words = vec![0u64; WORDS];
        for w in words.iter_mut() {
            let r = next();
            *w = match r % 8 {
                0 | 1 => maps[(r >> 8) as usize % maps.len()],
                2 | 3 => base + 8 * ((r >> 8) % WORDS as u64) + 1,
                4 => smi(((r >> 8) % 200) as i32 - 20),
                5 => ((r >> 8) % 100_000) << 32 | (r & 0xffff_0000),
                _ => r,
            };
        }
        h.mem.put_u64s(base, &words);
        let start = std::time::Instant::now();
        let mut r = JsResolver::new(&h.mem, layout);
        for i in 0..WORDS as u64 {
            let sfi = base + 8 * i + 1;
            let nosi = words.get(i as usize + 2).copied().unwrap_or(0);
            let _ = r.resolve(sfi, nosi);
            let _ = frame_function(&h.mem, r.layout(), base + 8 * i + 16);
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn file_urls_like_path_to_file_url() {
        assert_eq!(
            path_to_file_url("/tmp/v8t/a bé#c.js"),
            "file:///tmp/v8t/a%20b%C3%A9%23c.js"
        );
        assert_eq!(
            path_to_file_url("/srv/app/server.js"),
            "file:///srv/app/server.js"
        );
        assert_eq!(path_to_file_url("/a/100%?.js"), "file:///a/100%25%3F.js");
        assert_eq!(
            path_to_file_url("/a/€😀\u{FFFD}"),
            "file:///a/%E2%82%AC%F0%9F%98%80%EF%BF%BD"
        );
        assert_eq!(path_to_file_url("/tmp/./x/../y/"), "file:///tmp/y/");
        assert_eq!(path_to_file_url("//tmp//x"), "file:///tmp/x");
        assert_eq!(path_to_file_url("/"), "file:///");
        assert_eq!(path_to_file_url("/.."), "file:///");
        assert_eq!(
            script_url("node:internal/modules/cjs/loader"),
            "node:internal/modules/cjs/loader"
        );
        assert_eq!(script_url("file:///tmp/a%20b.mjs"), "file:///tmp/a%20b.mjs");
        assert_eq!(script_url("[eval]"), "[eval]");
        assert_eq!(script_url(""), "");
        // Every ASCII character, as node 20–26 encode it (checked with
        // `node -e 'url.pathToFileURL("/tmp/a" + c + "b")'`).
        let expected = "%01%02%03%04%05%06%07%08%09%0A%0B%0C%0D%0E%0F%10%11%12%13%14%15%16%17%18%19%1A%1B%1C%1D%1E%1F\
                        %20!%22%23$%25&'()*+,-.0123456789:;%3C=%3E%3F@ABCDEFGHIJKLMNOPQRSTUVWXYZ%5B%5C%5D%5E_%60\
                        abcdefghijklmnopqrstuvwxyz%7B%7C%7D%7E%7F";
        let all: String = (1u8..128).filter(|&c| c != b'/').map(char::from).collect();
        assert_eq!(
            path_to_file_url(&format!("/{all}")),
            format!("file:///{expected}")
        );
    }
}
