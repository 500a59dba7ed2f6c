//! Optimized code: the functions TurboFan or Maglev inlined at a pc, so that
//! a sample in inlined code belongs to the inlined function, as in
//! `node --cpu-prof`.
//!
//! The sampler records only the pc of a JS frame (and its function's
//! SharedFunctionInfo); everything else happens here, in user space, while
//! the target runs:
//!
//! 1. pc → the object holding its machine code (an InstructionStream on
//!    V8 ≥ 11, the Code itself on V8 10), found by scanning back from the pc
//!    for a word equal to that object's map, and checked through the Code's
//!    pointers back to it and its instruction range.
//! 2. Code → its source position table: (code offset, SourcePosition) pairs;
//!    a position carries an inlining id.
//! 3. inlining id → the deoptimization data's inlining positions (the
//!    position in the caller and the inlined function's index in the literal
//!    array), repeated until the outermost function.
//!
//! Decoded code objects are cached by instruction start and checked again on
//! each use (code moves and dies with GCs). Garbage in, nothing out: no panic,
//! bounded reads.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use super::heap::Heap;
use super::layout::{CodeLayout, V8Layout};
use super::memory::{Memory, MemoryExt, MAX_READ};

/// How far back from a pc the scan looks for the start of its code object.
const MAX_SCAN_BACK: u64 = 1 << 20;
/// Instructions start on this boundary (V8's kCodeAlignment is 64 on x64 in
/// V8 10–14; 32 keeps a margin): only words at that distance before an
/// aligned address can start a container.
const CODE_ALIGNMENT: u64 = 32;
/// Words whose map is read to find the container map, per scan at most;
/// once it is known, a scan compares words with it and reads nothing more.
const MAX_MAP_CHECKS: u32 = 64;
/// Bytes read per step of the scan (one page: JIT memory has holes).
const SCAN_STEP: u64 = 4096;
/// Largest instruction area believed (V8 caps code objects far below).
const MAX_INSTRUCTION_SIZE: i32 = 256 << 20;
/// Inlining levels followed at most (V8 inlines far fewer).
const MAX_INLINING_DEPTH: usize = 64;
/// Code objects cached at most; the cache is dropped when full.
const MAX_CODES: usize = 8192;
/// Words remembered as "not a code map", at most.
const MAX_NOT_MAPS: usize = 1 << 16;

/// One decoded code object.
#[derive(Debug, Default)]
pub struct CodeInfo {
    /// Untagged start of the container (InstructionStream, or Code on V8 10).
    container: u64,
    /// Tagged Code.
    code: u64,
    pub instruction_start: u64,
    pub instruction_size: u64,
    /// Tagged deoptimization data; 0 for unoptimized code.
    deopt: u64,
    /// The outer function's tagged SharedFunctionInfo; 0 for unoptimized code.
    pub sfi: u64,
    /// (code offset, SourcePosition bits), in table order.
    positions: Vec<(u32, u64)>,
    /// Inlining positions: (SourcePosition in the caller, inlined function index).
    inlining: Vec<(u64, i32)>,
    /// The literal array's first entries: the inlined functions' SFIs.
    inlined_sfis: Vec<u64>,
}

/// SourcePosition: bit 0 external, bits 1..31 script offset + 1, bits 31..47
/// inlining id + 1 (0: not inlined).
fn inlining_id(position: u64) -> Option<usize> {
    let id = (position >> 31) & 0xffff;
    (id != 0).then(|| id as usize - 1)
}

impl CodeInfo {
    /// The functions inlined at `pc`, outermost first, without the code's own
    /// function; `None` when the tables do not make sense.
    pub fn inlined_at(&self, pc: u64) -> Option<Vec<u64>> {
        if self.sfi == 0 || self.positions.is_empty() {
            return Some(Vec::new());
        }
        let offset = pc.checked_sub(self.instruction_start)?;
        // V8's profiler takes the last entry strictly before the pc offset
        // (SourcePositionTable::GetInliningId: lower_bound, then one back).
        let i = self
            .positions
            .partition_point(|&(o, _)| u64::from(o) < offset)
            .saturating_sub(1);
        let mut position = self.positions[i].1;
        let mut inlined = Vec::new();
        while let Some(id) = inlining_id(position) {
            if inlined.len() >= MAX_INLINING_DEPTH {
                return None;
            }
            let &(caller_position, function) = self.inlining.get(id)?;
            let sfi = match usize::try_from(function) {
                Ok(index) => *self.inlined_sfis.get(index)?,
                Err(_) => self.sfi,
            };
            inlined.push(sfi);
            // Callers have smaller ids: anything else is garbage (or a loop).
            if inlining_id(caller_position).is_some_and(|caller| caller >= id) {
                return None;
            }
            position = caller_position;
        }
        inlined.reverse();
        Some(inlined)
    }
}

/// x86-64 bytes of V8's frame set-up and tear-down in optimized code. A
/// register move has two encodings: V8 writes `mov rbp,rsp` as `48 89 e5`
/// and `mov rsp,rbp` as `48 8b e5` (TurboFan and Maglev, node 18 to 26);
/// either is accepted for both.
const PUSH_RBP_MOV_RBP_RSP: [[u8; 4]; 2] = [[0x55, 0x48, 0x89, 0xe5], [0x55, 0x48, 0x8b, 0xec]];
const MOV_RSP_RBP_POP_RBP: [[u8; 4]; 2] = [[0x48, 0x89, 0xec, 0x5d], [0x48, 0x8b, 0xe5, 0x5d]];
/// After `push rbp; mov rbp,rsp`: `push rsi` (context), then `push rdi`
/// (the function), which the frame's function slot holds once it has run.
const FUNCTION_SLOT_WRITTEN: usize = PUSH_RBP_MOV_RBP_RSP[0].len() + 2;
/// Bytes read at the start of a code object for its prologue, and on each
/// side of a pc for an epilogue: from `mov rsp,rbp` to the last `ret` of
/// `mov; pop rbp; cmp; jg; ret N; pop; lea; push; ret` is 21 bytes in
/// TurboFan code, 25 in Maglev's.
const PROLOGUE_BYTES: usize = 48;
const EPILOGUE_BYTES: usize = 32;

/// Whether a pc in optimized code runs where the frame pointer does not name
/// its function: in the prologue before the function slot is written (the
/// frame pointer is still the caller's, or the slot holds a stale word), or
/// in an epilogue after `mov rsp,rbp; pop rbp` and before `ret`. There V8's
/// profiler names the pc by the code it is in; everywhere else the frame
/// pointer's function is the code's. `prologue`: the code's first bytes;
/// `before`/`after`: the bytes just before the pc and from it.
fn frame_not_set_up(prologue: &[u8], pc_offset: u64, before: &[u8], after: &[u8]) -> bool {
    let set_up_at = prologue
        .windows(4)
        .position(|w| PUSH_RBP_MOV_RBP_RSP.iter().any(|p| w == p));
    if set_up_at.is_some_and(|at| pc_offset < (at + FUNCTION_SLOT_WRITTEN) as u64) {
        return true;
    }
    // The last tear-down before the pc, with no `ret` after it yet.
    let torn_down = before
        .windows(4)
        .rposition(|w| MOV_RSP_RBP_POP_RBP.iter().any(|p| w == p))
        .is_some_and(|at| !before[at + 4..].contains(&0xc3));
    let returns = after.iter().any(|&b| b == 0xc3 || b == 0xc2);
    torn_down && returns
}

/// [`frame_not_set_up`] for a pc `offset` bytes into optimized code of
/// `size` bytes (`offset < size`), read with `read(from, len)` (offsets
/// into the code).
pub fn frame_not_set_up_at(
    size: usize,
    offset: usize,
    read: impl Fn(usize, usize) -> Vec<u8>,
) -> bool {
    debug_assert!(offset < size, "pc {offset} past code of {size} bytes");
    let before_len = offset.min(EPILOGUE_BYTES);
    frame_not_set_up(
        &read(0, size.min(PROLOGUE_BYTES)),
        offset as u64,
        &read(offset - before_len, before_len),
        &read(offset, size.saturating_sub(offset).min(EPILOGUE_BYTES)),
    )
}

/// Counters of a [`CodeFinder`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CodeStats {
    pub lookups: u64,
    pub cache_hits: u64,
    pub scans: u64,
    pub found: u64,
    pub not_found: u64,
    /// Cached code objects that had moved or died when looked up again.
    pub stale: u64,
}

/// Finds and decodes the code objects of one target; cached.
#[derive(Default)]
pub struct CodeFinder {
    /// Tagged maps of code containers seen (one per isolate, usually one).
    maps: Vec<u64>,
    not_maps: HashSet<u64>,
    /// Decoded code by instruction start.
    codes: BTreeMap<u64, Arc<CodeInfo>>,
    stats: CodeStats,
}

impl CodeFinder {
    pub fn new() -> CodeFinder {
        CodeFinder::default()
    }

    pub fn stats(&self) -> CodeStats {
        self.stats
    }

    /// The functions inlined at `pc` in a frame of the function `sfi`
    /// (tagged SFIs, outermost first). Empty when the pc is not in optimized
    /// code of that function, or nothing is inlined there. (The symbolizer
    /// decodes the code once with [`CodeFinder::code_at`].)
    #[cfg(test)]
    pub fn inlined_at<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        layout: &V8Layout,
        pc: u64,
        sfi: u64,
    ) -> Vec<u64> {
        let Some(code) = self.code_at(mem, layout, pc) else {
            return Vec::new();
        };
        if code.sfi != sfi {
            tracing::trace!(pc, sfi, code_sfi = code.sfi, "code of another function");
            return Vec::new();
        }
        let inlined = code.inlined_at(pc).unwrap_or_default();
        tracing::trace!(
            pc,
            offset = pc - code.instruction_start,
            size = code.instruction_size,
            positions = ?code.positions.iter().map(|&(o, p)| (o, inlining_id(p))).collect::<Vec<_>>(),
            ?inlined,
            "inlining"
        );
        inlined
    }

    /// The code object whose instructions contain `pc`, if V8 made it.
    pub fn code_at<M: Memory + ?Sized>(
        &mut self,
        mem: &M,
        layout: &V8Layout,
        pc: u64,
    ) -> Option<Arc<CodeInfo>> {
        let cl = layout.code.as_ref()?;
        self.stats.lookups += 1;
        let heap = Heap::new(mem, layout);
        if let Some((&start, code)) = self.codes.range(..=pc).next_back() {
            if pc < start + code.instruction_size {
                if still_there(heap, cl, code, &self.maps) {
                    self.stats.cache_hits += 1;
                    return Some(Arc::clone(code));
                }
                self.stats.stale += 1;
                self.codes.remove(&start);
            }
        }
        self.stats.scans += 1;
        let found = self.scan(heap, cl, pc);
        match &found {
            Some(code) => {
                self.stats.found += 1;
                if self.codes.len() >= MAX_CODES {
                    self.codes.clear();
                }
                self.codes.insert(code.instruction_start, Arc::clone(code));
            }
            None => self.stats.not_found += 1,
        }
        found
    }

    /// Scans back from `pc` for the map word of the container holding it.
    fn scan<M: Memory + ?Sized>(
        &mut self,
        heap: Heap<'_, M>,
        cl: &CodeLayout,
        pc: u64,
    ) -> Option<Arc<CodeInfo>> {
        let mut hi = pc & !7;
        let lowest = pc.saturating_sub(MAX_SCAN_BACK);
        let mut page = vec![0u64; (SCAN_STEP / 8) as usize];
        let mut map_checks = 0;
        while hi > lowest {
            let lo = ((hi - 1) & !(SCAN_STEP - 1)).max(lowest & !7);
            let n = ((hi - lo) / 8) as usize;
            if heap.mem.read_u64s(lo, &mut page[..n]).is_ok() {
                if let Some(done) = self.scan_words(heap, cl, pc, lo, &page[..n], &mut map_checks) {
                    return done;
                }
                hi = lo;
                continue;
            }
            // A hole below: what is readable right under `hi` still counts,
            // and a code object never spans a hole.
            let mut sub_hi = hi;
            while sub_hi > lo {
                let sub_lo = sub_hi.saturating_sub(64).max(lo);
                let m = ((sub_hi - sub_lo) / 8) as usize;
                heap.mem.read_u64s(sub_lo, &mut page[..m]).ok()?;
                if let Some(done) =
                    self.scan_words(heap, cl, pc, sub_lo, &page[..m], &mut map_checks)
                {
                    return done;
                }
                sub_hi = sub_lo;
            }
            return None;
        }
        None
    }

    /// Looks for a container start among `words` (read at `lo`), highest
    /// address first: `Some` when the scan is decided.
    fn scan_words<M: Memory + ?Sized>(
        &mut self,
        heap: Heap<'_, M>,
        cl: &CodeLayout,
        pc: u64,
        lo: u64,
        words: &[u64],
        map_checks: &mut u32,
    ) -> Option<Option<Arc<CodeInfo>>> {
        let layout = heap.layout;
        let header = u64::from(cl.container_instructions);
        for (i, &word) in words.iter().enumerate().rev() {
            let container = lo + 8 * i as u64;
            if !layout.is_heap_object(word)
                || !container
                    .wrapping_add(header)
                    .is_multiple_of(CODE_ALIGNMENT)
            {
                continue;
            }
            let known = self.maps.contains(&word);
            if !known {
                if self.not_maps.contains(&word) || *map_checks >= MAX_MAP_CHECKS {
                    continue;
                }
                *map_checks += 1;
                let ty = heap.mem.read_u16(
                    layout
                        .untag(word)
                        .wrapping_add(u64::from(layout.map_instance_type)),
                );
                if ty.ok() != Some(cl.container_type) {
                    if self.not_maps.len() >= MAX_NOT_MAPS {
                        self.not_maps.clear();
                    }
                    self.not_maps.insert(word);
                    continue;
                }
            }
            let Some((code, start, size)) = check_container(heap, cl, container) else {
                continue;
            };
            if !known {
                self.maps.push(word);
            }
            // Code objects do not overlap: the first one found below the
            // pc either holds it or nothing does.
            if pc >= start + size {
                return Some(None);
            }
            return Some(Some(Arc::new(decode(
                heap, cl, container, code, start, size,
            ))));
        }
        None
    }
}

/// Whether `container` starts a code object: its Code, instruction start
/// and size, all pointing back at each other.
fn check_container<M: Memory + ?Sized>(
    heap: Heap<'_, M>,
    cl: &CodeLayout,
    container: u64,
) -> Option<(u64, u64, u64)> {
    let tagged = container + heap.layout.heap_object_tag;
    let code = match cl.container_code {
        Some(off) => heap.field(tagged, off)?,
        None => tagged,
    };
    if !heap.has_type(code, cl.code_type) {
        return None;
    }
    let start = container + u64::from(cl.container_instructions);
    if let Some(off) = cl.code_instruction_start {
        if heap.field(code, off)? != start {
            return None;
        }
    }
    if let Some(off) = cl.code_instruction_stream {
        if heap.field(code, off)? != tagged {
            return None;
        }
    }
    let size = heap.field_i32(code, cl.code_instruction_size)?;
    if !(0..=MAX_INSTRUCTION_SIZE).contains(&size) {
        return None;
    }
    Some((code, start, size as u64))
}

/// A cached code object is still the same object at the same place.
fn still_there<M: Memory + ?Sized>(
    heap: Heap<'_, M>,
    cl: &CodeLayout,
    code: &CodeInfo,
    maps: &[u64],
) -> bool {
    let map = heap.mem.read_u64(code.container).ok();
    map.is_some_and(|m| maps.contains(&m))
        && check_container(heap, cl, code.container).is_some_and(|(c, s, n)| {
            (c, s, n) == (code.code, code.instruction_start, code.instruction_size)
        })
        && (code.deopt == 0
            || heap.field(code.code, cl.code_deoptimization_data) == Some(code.deopt))
}

/// Reads what [`CodeInfo::inlined_at`] needs; unoptimized code (and
/// anything unreadable) decodes to a CodeInfo without inlining.
fn decode<M: Memory + ?Sized>(
    heap: Heap<'_, M>,
    cl: &CodeLayout,
    container: u64,
    code: u64,
    start: u64,
    size: u64,
) -> CodeInfo {
    let mut info = CodeInfo {
        container,
        code,
        instruction_start: start,
        instruction_size: size,
        ..CodeInfo::default()
    };
    let optimized = heap
        .field_i32(code, cl.code_flags)
        .map(|flags| (flags as u32 >> cl.code_kind_shift) & cl.code_kind_mask)
        .is_some_and(|kind| cl.optimized_kinds.contains(&kind));
    if !optimized {
        return info;
    }
    if let Some(tables) = inlining_tables(heap, cl, code) {
        info.deopt = tables.deopt;
        info.sfi = tables.sfi;
        info.inlining = tables.inlining;
        info.inlined_sfis = tables.inlined_sfis;
        let bytes = heap
            .field(code, cl.code_source_position_table)
            .and_then(|table| byte_array(heap, table))
            .unwrap_or_default();
        // The version tells the encoding; offsets past the instructions
        // mean it was the other one.
        let fits = |p: &Vec<(u32, u64)>| p.last().is_none_or(|&(o, _)| u64::from(o) <= size);
        let mut positions = decode_positions(&bytes, cl.statement_bit_in_offset);
        if !fits(&positions) {
            positions = decode_positions(&bytes, !cl.statement_bit_in_offset);
        }
        if fits(&positions) {
            info.positions = positions;
        }
    }
    info
}

struct InliningTables {
    deopt: u64,
    sfi: u64,
    inlining: Vec<(u64, i32)>,
    inlined_sfis: Vec<u64>,
}

fn inlining_tables<M: Memory + ?Sized>(
    heap: Heap<'_, M>,
    cl: &CodeLayout,
    code: u64,
) -> Option<InliningTables> {
    let layout = heap.layout;
    let deopt = heap.field(code, cl.code_deoptimization_data)?;
    let length = heap.smi_field(deopt, layout.fixed_array_length)?;
    let element = |index: u32| -> Option<u64> {
        if i64::from(index) >= i64::from(length) {
            return None;
        }
        heap.field(deopt, layout.fixed_array_data + 8 * index)
    };
    let mut sfi = element(cl.deopt_shared_function_info)?;
    if let Some(off) = cl.sfi_wrapper_shared {
        sfi = heap.field(sfi, off)?;
    }
    if !heap.has_type(sfi, layout.types.shared_function_info) {
        return None;
    }
    let count = layout.smi_value(element(cl.deopt_inlined_function_count)?)?;
    let mut tables = InliningTables {
        deopt,
        sfi,
        inlining: Vec::new(),
        inlined_sfis: Vec::new(),
    };
    if count <= 0 {
        return Some(tables);
    }
    let literals = element(cl.deopt_literal_array)?;
    let literal_count = heap.smi_field(literals, layout.fixed_array_length)?;
    if count > literal_count || count > 0xffff {
        return None;
    }
    let mut words = vec![0u64; count as usize];
    heap.mem
        .read_u64s(
            layout
                .untag(literals)
                .checked_add(u64::from(layout.fixed_array_data))?,
            &mut words,
        )
        .ok()?;
    // A weak literal array may hold weak references (tag 0b11).
    tables.inlined_sfis = words.into_iter().map(|w| w & !2).collect();
    let positions = byte_array(heap, element(cl.deopt_inlining_positions)?)?;
    // InliningPosition { SourcePosition position; int inlined_function_id; }: 16 bytes.
    tables.inlining = positions
        .chunks_exact(16)
        .map(|c| {
            let position = u64::from_le_bytes(c[..8].try_into().unwrap_or_default());
            let function = i32::from_le_bytes(c[8..12].try_into().unwrap_or_default());
            (position, function)
        })
        .collect();
    Some(tables)
}

/// The bytes of a ByteArray (or TrustedByteArray: same header).
fn byte_array<M: Memory + ?Sized>(heap: Heap<'_, M>, array: u64) -> Option<Vec<u8>> {
    let layout = heap.layout;
    let length = usize::try_from(heap.smi_field(array, layout.fixed_array_length)?).ok()?;
    if length > MAX_READ {
        return None;
    }
    let mut bytes = vec![0u8; length];
    let addr = layout
        .untag(array)
        .checked_add(u64::from(layout.fixed_array_data))?;
    heap.mem.read(addr, &mut bytes).ok()?;
    Some(bytes)
}

/// A zigzag VLQ (V8's `base::VLQDecode`), at most 10 bytes.
fn read_vlq(bytes: &[u8], at: &mut usize) -> Option<i64> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
        if byte & 0x80 == 0 {
            return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    None
}

/// V8's source position table (`SourcePositionTableIterator`): per entry a
/// code offset delta and a position delta, both from (-1, 0). The offset
/// carries the statement flag: as its sign up to V8 13, in its low bit
/// from V8 14 (`statement_bit`). Stops at the first malformed entry.
fn decode_positions(bytes: &[u8], statement_bit: bool) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut code_offset: i64 = -1;
    let mut position: i64 = 0;
    while at < bytes.len() {
        let Some(delta) = read_vlq(bytes, &mut at) else {
            break;
        };
        let delta = if statement_bit {
            delta >> 1
        } else if delta >= 0 {
            delta
        } else {
            -(delta + 1)
        };
        let Some(source) = read_vlq(bytes, &mut at) else {
            break;
        };
        code_offset = code_offset.saturating_add(delta);
        position = position.wrapping_add(source);
        let Ok(offset) = u32::try_from(code_offset) else {
            break;
        };
        if out.last().is_some_and(|&(last, _)| offset < last) {
            break;
        }
        out.push((offset, position as u64));
    }
    out
}

#[cfg(test)]
mod frame_region_tests {
    use super::*;

    /// TurboFan's x64 prologue: a deoptimization check, then
    /// `push rbp; mov rbp,rsp; push rsi; push rdi; push rax`.
    const PROLOGUE: [u8; 21] = [
        0x48, 0x8b, 0x1d, 0xf1, 0xff, 0xff, 0xff, 0xf6, 0x43, 0x0f, 0x20, 0x0f, 0x85, 0x10, 0x00,
        0x55, 0x48, 0x89, 0xe5, 0x56, 0x57,
    ];

    #[test]
    fn the_prologue_runs_until_the_function_slot_is_written() {
        // The check (0..15), push rbp (15), mov (16), push rsi (19), push rdi (20).
        for offset in [0, 8, 15, 16, 19, 20] {
            assert!(
                frame_not_set_up(&PROLOGUE, offset, &[], &[0x90]),
                "{offset}"
            );
        }
        assert!(!frame_not_set_up(&PROLOGUE, 21, &[], &[0x90]));
        assert!(!frame_not_set_up(&PROLOGUE, 400, &[0x90; 16], &[0x90; 16]));
    }

    #[test]
    fn an_epilogue_runs_from_pop_rbp_to_ret() {
        let body = [0x90; 16];
        for tear_down in MOV_RSP_RBP_POP_RBP {
            let mut before = [0x90u8; 16];
            before[10..14].copy_from_slice(&tear_down);
            // `pop rcx; lea rsp,[rsp+rax*8]; push rcx; ret`, and `ret 0x18`.
            assert!(frame_not_set_up(
                &body,
                300,
                &before,
                &[0x59, 0x48, 0x8d, 0x24, 0xc4, 0x51, 0xc3]
            ));
            assert!(frame_not_set_up(&body, 300, &before, &[0xc2, 0x18, 0x00]));
            // No return ahead, or no tear-down behind: the body.
            assert!(!frame_not_set_up(&body, 300, &before, &[0x90; 16]));
            assert!(!frame_not_set_up(&body, 300, &[0x90; 16], &[0xc3]));
            // Past that return already: the next block.
            let mut returned = before;
            returned[15] = 0xc3;
            assert!(!frame_not_set_up(&body, 300, &returned, &[0xc3]));
        }
        // A prologue the code does not have: nothing is assumed.
        assert!(!frame_not_set_up(&[0x90; 48], 3, &[0x90; 16], &[0x90; 16]));
    }

    /// Node 20's TurboFan code of `(a, b) => (a + b + 2) | 0`, read from a
    /// live process: `mov rsp,rbp` is `48 8b e5` there, and its epilogue
    /// drops a dynamic argument count after `pop rbp`.
    const NODE20_CALLEE: &str =
        "488b59f8f64335010f8532f0e31f554889e55657504883ec08488975e0493b65a0\
        0f8656000000488b5518f6c2010f8578000000488b4d2048c1f920488bfa48c1ff204c8b452041f6c0010f855f\
        00000003cf0f805b0000008d510248c1e220488bc2488b4de8488be55d4883f9037f03c21800415a488d24cc41\
        52c348ba00000000100000005248bbf03e520100000000b80100000048bef911842635130000e81ac2ec1fe97c\
        ffffff9041ff55c841ff55c841ff55c841ff55d0";

    fn not_set_up_in(code: &[u8], offset: usize) -> bool {
        frame_not_set_up_at(code.len(), offset, |from, len| {
            code[from..from + len].to_vec()
        })
    }

    #[test]
    fn node20_epilogue_runs_from_pop_rbp_to_either_ret() {
        let code: Vec<u8> = (0..NODE20_CALLEE.len() / 2)
            .map(|i| u8::from_str_radix(&NODE20_CALLEE[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        // Prologue: up to `push rdi` at 0x13.
        for offset in [0x0, 0x8, 0xe, 0xf, 0x12, 0x13] {
            assert!(not_set_up_in(&code, offset), "prologue {offset:#x}");
        }
        // Body, and `mov rsp,rbp` / `pop rbp` while rbp still holds the frame.
        for offset in [0x14, 0x27, 0x51, 0x63, 0x67, 0x6a, 0x7d, 0xa6] {
            assert!(!not_set_up_in(&code, offset), "body {offset:#x}");
        }
        // After `pop rbp`: `cmp`, `jg`, `ret 0x18`, and the dynamic path to its `ret`.
        for offset in [0x6b, 0x6f, 0x71, 0x74, 0x76, 0x7a, 0x7c] {
            assert!(not_set_up_in(&code, offset), "epilogue {offset:#x}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v8::layout::test_layout;
    use crate::v8::memory::testing::{smi, FakeHeap};

    const SFI: u16 = 262;
    const ISTREAM: u16 = 252;
    const CODE: u16 = 245;
    const BYTE_ARRAY: u16 = 190;
    const FIXED_ARRAY: u16 = 175;
    const TURBOFAN: u32 = 13;

    fn layout() -> V8Layout {
        V8Layout {
            code: Some(CodeLayout {
                container_type: ISTREAM,
                container_instructions: 16,
                container_code: Some(8),
                code_type: CODE,
                code_instruction_stream: Some(32),
                code_instruction_start: Some(40),
                code_instruction_size: 56,
                code_flags: 48,
                code_kind_mask: 0xf,
                code_kind_shift: 0,
                optimized_kinds: [12, 13],
                code_deoptimization_data: 16,
                code_source_position_table: 24,
                deopt_inlined_function_count: 1,
                deopt_literal_array: 2,
                deopt_inlining_positions: 7,
                deopt_shared_function_info: 6,
                sfi_wrapper_shared: None,
                statement_bit_in_offset: false,
                leaf_inlining: false,
            }),
            ..test_layout()
        }
    }

    fn vlq(out: &mut Vec<u8>, v: i64) {
        let mut u = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            let b = (u & 0x7f) as u8;
            u >>= 7;
            if u == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn position(script_offset: u64, inlining: Option<u64>) -> u64 {
        ((script_offset + 1) << 1) | (inlining.map_or(0, |i| i + 1) << 31)
    }

    fn byte_array(h: &mut FakeHeap, bytes: &[u8]) -> u64 {
        let mut body = smi(bytes.len() as i32).to_le_bytes().to_vec();
        body.extend_from_slice(bytes);
        h.object(BYTE_ARRAY, &body)
    }

    /// An optimized function `outer` (SFI `outer`) that inlined `a`, which
    /// inlined `b`: code offsets [0,16) outer, [16,32) a, [32,48) b, [48,64) outer.
    fn fixture(h: &mut FakeHeap, outer: u64, a: u64, b: u64) -> (u64, u64) {
        let mut table = Vec::new();
        let mut last = (-1i64, 0i64);
        for (offset, pos) in [
            (0i64, position(10, None)),
            (16, position(20, Some(0))),
            (32, position(30, Some(1))),
            (48, position(12, None)),
        ] {
            // Statements positive, others negative: decode both.
            let delta = offset - last.0;
            vlq(&mut table, if offset == 16 { -delta - 1 } else { delta });
            vlq(&mut table, pos as i64 - last.1);
            last = (offset, pos as i64);
        }
        let spt = byte_array(h, &table);
        let mut inl = Vec::new();
        for (pos, f) in [(position(11, None), 0i32), (position(21, Some(0)), 1)] {
            inl.extend_from_slice(&pos.to_le_bytes());
            inl.extend_from_slice(&f.to_le_bytes());
            inl.extend_from_slice(&[0; 4]);
        }
        let inlining = byte_array(h, &inl);
        let literals = h.object_words(FIXED_ARRAY, &[smi(3), a, b | 2, smi(0)]);
        let deopt = h.object_words(
            FIXED_ARRAY,
            &[smi(8), 0, smi(2), literals, 0, 0, 0, outer, inlining],
        );
        // The container: map, code, then 64 bytes of instructions at +16,
        // in one region (the scan reads memory below the pc in one piece).
        let region = h.raw(&[0u8; 320]);
        // Instructions on a CODE_ALIGNMENT boundary, as V8 places them.
        let istream = (region + 64 + 16).next_multiple_of(CODE_ALIGNMENT) - 16 + 1;
        let start = istream - 1 + 16;
        let code = h.object_words(
            CODE,
            &[0, deopt, spt, istream, start, u64::from(TURBOFAN), 64],
        );
        let map = h.map(ISTREAM);
        h.set_word(istream, 0, map);
        h.set_word(istream, 8, code);
        (istream, start)
    }

    #[test]
    fn inlining_levels_from_the_tables() {
        let mut h = FakeHeap::default();
        let outer = h.object_words(SFI, &[0; 6]);
        let a = h.object_words(SFI, &[0; 6]);
        let b = h.object_words(SFI, &[0; 6]);
        let (_, start) = fixture(&mut h, outer, a, b);
        let layout = layout();
        let mut f = CodeFinder::new();
        // Entries count from the one strictly before the pc offset.
        let cases: [(u64, &[u64]); 7] = [
            (0, &[]),
            (16, &[]),
            (17, &[a]),
            (30, &[a]),
            (33, &[a, b]),
            (49, &[]),
            (63, &[]),
        ];
        for (offset, want) in cases {
            assert_eq!(
                f.inlined_at(&h.mem, &layout, start + offset, outer),
                want,
                "offset {offset}"
            );
        }
        assert_eq!(f.stats().scans, 1, "one scan, then the cache");
        // Another function's frame at this pc: not its code.
        assert!(f.inlined_at(&h.mem, &layout, start + 33, a).is_empty());
        // Past the instructions: nothing.
        assert!(f.code_at(&h.mem, &layout, start + 64).is_none());
    }

    #[test]
    fn moved_code_is_found_again_and_garbage_gives_nothing() {
        let mut h = FakeHeap::default();
        let outer = h.object_words(SFI, &[0; 6]);
        let a = h.object_words(SFI, &[0; 6]);
        let b = h.object_words(SFI, &[0; 6]);
        let (istream, start) = fixture(&mut h, outer, a, b);
        let layout = layout();
        let mut f = CodeFinder::new();
        assert_eq!(f.inlined_at(&h.mem, &layout, start + 40, outer), [a, b]);
        // The code object died: its back pointer no longer matches.
        h.set_word(istream, 8, smi(0));
        assert!(f.inlined_at(&h.mem, &layout, start + 40, outer).is_empty());
        assert_eq!(f.stats().stale, 1);
        // Random words never panic and never name a function.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut words = vec![0u64; 4096];
        for w in words.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *w = state;
        }
        let base = h.raw(&vec![0u8; 4096 * 8]);
        h.mem.put_u64s(base, &words);
        for i in (0..4096u64).step_by(7) {
            assert!(f
                .inlined_at(&h.mem, &layout, base + 8 * i, outer)
                .is_empty());
        }
    }

    #[test]
    fn vlq_and_position_table() {
        let mut bytes = Vec::new();
        for v in [0i64, 1, -1, 63, -64, 64, 1 << 40, -(1 << 40)] {
            vlq(&mut bytes, v);
        }
        let mut at = 0;
        for v in [0i64, 1, -1, 63, -64, 64, 1 << 40, -(1 << 40)] {
            assert_eq!(read_vlq(&bytes, &mut at), Some(v));
        }
        assert_eq!(read_vlq(&[0x80, 0x80], &mut 0), None);
        assert_eq!(read_vlq(&[0xff; 12], &mut 0), None);
        // Bytes of a real table (node 20, driveInlined): starts at offset 0.
        let table = [0x03, 0xc0, 0x2d, 0x4f, 0x9c, 0x01];
        let positions = decode_positions(&table, false);
        assert_eq!(positions[0], (0, 2912));
        // Node 26 (V8 14): the flag in the offset's low bit; the offsets
        // `node --print-opt-code` printed for the same table: 0xb, 0x21, 0x38.
        let table = [0x32, 0x8c, 0x34, 0x5a, 0x9c, 0x01, 0x5e, 0xc4, 0x01];
        let offsets: Vec<u32> = decode_positions(&table, true).iter().map(|p| p.0).collect();
        assert_eq!(offsets, [0xb, 0x21, 0x38]);
        assert_eq!(
            decode_positions(&table, true)[0].1 >> 1,
            1667,
            "script offset + 1"
        );
        assert_eq!(inlining_id(position(5, Some(3))), Some(3));
        assert_eq!(inlining_id(position(5, None)), None);
    }
}
