//! Decoding V8 strings of the target: sequential (one- and two-byte), cons
//! (walked iteratively with an explicit, bounded stack), thin, sliced and
//! external (cached data pointer; uncached ones cannot be read from outside).
//! Every walk is bounded in units, visited nodes and stack depth.
//!
//! V8 strings are sequences of UTF-16 code units; one-byte strings hold
//! Latin-1. Output is UTF-8 (lossy for lone surrogates). Positions in V8
//! (function start, line ends) count UTF-16 code units.

use super::heap::Heap;
use super::layout::V8Layout;
use super::memory::{Memory, MAX_READ};

/// Longest function name decoded (longer ones are truncated).
pub const MAX_NAME_UNITS: usize = 1024;
/// Longest script name (URL) decoded (PATH_MAX; longer ones are truncated).
pub const MAX_URL_UNITS: usize = 4096;
/// Largest script source scanned for line ends.
pub const MAX_SOURCE_UNITS: usize = 64 << 20;
/// Most line ends kept for one script (4 bytes each).
pub const MAX_LINES: usize = 2 << 20;

/// Bounds of one string walk.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Units visited at most (the string is truncated to this many).
    pub max_units: usize,
    /// String objects (cons/thin/sliced nodes and leaves) visited at most.
    pub max_nodes: usize,
    /// Pending cons halves at most.
    pub max_stack: usize,
}

impl Limits {
    pub const NAME: Limits = Limits {
        max_units: MAX_NAME_UNITS,
        max_nodes: 4096,
        max_stack: 1024,
    };
    pub const URL: Limits = Limits {
        max_units: MAX_URL_UNITS,
        max_nodes: 4096,
        max_stack: 1024,
    };
    pub const SOURCE: Limits = Limits {
        max_units: MAX_SOURCE_UNITS,
        max_nodes: 1 << 16,
        max_stack: 8192,
    };
}

/// A run of consecutive units of a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk<'a> {
    /// Latin-1 units.
    OneByte(&'a [u8]),
    /// UTF-16 units.
    TwoByte(&'a [u16]),
}

/// Why a string could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringError {
    /// Not a string, bad tag, bad length, inconsistent structure or unreadable memory.
    Invalid,
    /// An external string without a cached data pointer.
    Uncached,
    /// A walk bound (nodes, stack) was hit.
    TooComplex,
    /// The string is longer than the caller accepts in full.
    TooLong,
}

const CHUNK_BYTES: usize = 256 << 10;
const _: () = assert!(CHUNK_BYTES <= MAX_READ);

/// Reads V8 strings of the target.
pub struct StringReader<'a, M: Memory + ?Sized> {
    heap: Heap<'a, M>,
}

impl<'a, M: Memory + ?Sized> StringReader<'a, M> {
    pub fn new(mem: &'a M, layout: &'a V8Layout) -> Self {
        StringReader {
            heap: Heap::new(mem, layout),
        }
    }

    pub(crate) fn from_heap(heap: Heap<'a, M>) -> Self {
        StringReader { heap }
    }

    fn layout(&self) -> &V8Layout {
        self.heap.layout
    }

    /// Instance type and length of a string; `None` when `tagged` is no string.
    pub fn header(&self, tagged: u64) -> Option<(u16, usize)> {
        let ty = self.heap.instance_type(tagged)?;
        if !self.layout().is_string_type(ty) {
            return None;
        }
        let len = self.heap.field_i32(tagged, self.layout().strings.length)?;
        Some((ty, usize::try_from(len).ok()?))
    }

    /// Whether `tagged` is a string.
    pub fn is_string(&self, tagged: u64) -> bool {
        self.header(tagged).is_some()
    }

    /// Length of the string in UTF-16 units.
    pub fn len(&self, tagged: u64) -> Option<usize> {
        self.header(tagged).map(|(_, len)| len)
    }

    /// Calls `sink` with the string's units in order, up to `limits.max_units`
    /// of them. Returns the string's full length.
    pub fn visit(
        &self,
        tagged: u64,
        limits: Limits,
        sink: &mut dyn FnMut(Chunk<'_>),
    ) -> Result<usize, StringError> {
        let (_, full_len) = self.header(tagged).ok_or(StringError::Invalid)?;
        let want = full_len.min(limits.max_units);
        let mut stack: Vec<(u64, usize, usize)> = vec![(tagged, 0, want)];
        let mut nodes = 0usize;
        let mut buf: Vec<u8> = Vec::new();
        let mut units: Vec<u16> = Vec::new();
        let st = &self.layout().strings;
        while let Some((s, start, end)) = stack.pop() {
            nodes += 1;
            if nodes > limits.max_nodes {
                return Err(StringError::TooComplex);
            }
            if start == end {
                continue;
            }
            let (ty, len) = self.header(s).ok_or(StringError::Invalid)?;
            if start > end || end > len {
                return Err(StringError::Invalid);
            }
            let repr = ty & st.representation_mask;
            let one_byte = ty & st.encoding_mask == st.one_byte_tag;
            if repr == st.seq_tag {
                let chars = if one_byte {
                    st.seq_one_byte_chars
                } else {
                    st.seq_two_byte_chars
                };
                let base = self
                    .heap
                    .layout
                    .untag(s)
                    .checked_add(u64::from(chars))
                    .ok_or(StringError::Invalid)?;
                self.emit(base, start, end, one_byte, &mut buf, &mut units, sink)?;
            } else if repr == st.external_tag {
                if ty & st.uncached_external_mask != 0 {
                    return Err(StringError::Uncached);
                }
                let data = self
                    .heap
                    .field(s, st.external_data)
                    .ok_or(StringError::Invalid)?;
                if data == 0 {
                    return Err(StringError::Invalid);
                }
                self.emit(data, start, end, one_byte, &mut buf, &mut units, sink)?;
            } else if repr == st.cons_tag {
                let first = self
                    .heap
                    .field(s, st.cons_first)
                    .ok_or(StringError::Invalid)?;
                let second = self
                    .heap
                    .field(s, st.cons_second)
                    .ok_or(StringError::Invalid)?;
                let first_len = self.len(first).ok_or(StringError::Invalid)?;
                if first_len > len {
                    return Err(StringError::Invalid);
                }
                if stack.len() + 2 > limits.max_stack {
                    return Err(StringError::TooComplex);
                }
                // LIFO: the second half's range is handled after the first's.
                if end > first_len {
                    stack.push((second, start.max(first_len) - first_len, end - first_len));
                }
                if start < first_len {
                    stack.push((first, start, end.min(first_len)));
                }
            } else if repr == st.thin_tag {
                let actual = self
                    .heap
                    .field(s, st.thin_actual)
                    .ok_or(StringError::Invalid)?;
                stack.push((actual, start, end));
            } else if repr == st.sliced_tag {
                let parent = self
                    .heap
                    .field(s, st.sliced_parent)
                    .ok_or(StringError::Invalid)?;
                let offset = self
                    .heap
                    .smi_field(s, st.sliced_offset)
                    .ok_or(StringError::Invalid)?;
                let offset = usize::try_from(offset).map_err(|_| StringError::Invalid)?;
                let (ps, pe) = (start.checked_add(offset), end.checked_add(offset));
                let (Some(ps), Some(pe)) = (ps, pe) else {
                    return Err(StringError::Invalid);
                };
                stack.push((parent, ps, pe));
            } else {
                return Err(StringError::Invalid);
            }
        }
        Ok(full_len)
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
        &self,
        base: u64,
        start: usize,
        end: usize,
        one_byte: bool,
        buf: &mut Vec<u8>,
        units: &mut Vec<u16>,
        sink: &mut dyn FnMut(Chunk<'_>),
    ) -> Result<(), StringError> {
        let width = if one_byte { 1 } else { 2 };
        let per_chunk = CHUNK_BYTES / width;
        let mut at = start;
        while at < end {
            let n = (end - at).min(per_chunk);
            let addr = base
                .checked_add((at * width) as u64)
                .ok_or(StringError::Invalid)?;
            buf.resize(n * width, 0);
            self.heap
                .mem
                .read(addr, &mut buf[..n * width])
                .map_err(|_| StringError::Invalid)?;
            if one_byte {
                sink(Chunk::OneByte(&buf[..n]));
            } else {
                units.clear();
                units.extend(
                    buf[..2 * n]
                        .chunks_exact(2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]])),
                );
                sink(Chunk::TwoByte(units));
            }
            at += n;
        }
        Ok(())
    }

    /// The string as UTF-8, truncated to `limits.max_units` units.
    pub fn read(&self, tagged: u64, limits: Limits) -> Result<String, StringError> {
        let mut acc = Utf16Accumulator::default();
        self.visit(tagged, limits, &mut |c| acc.push(c))?;
        Ok(acc.finish())
    }

    /// A function or property name (≤ [`MAX_NAME_UNITS`] units).
    pub fn read_name(&self, tagged: u64) -> Option<String> {
        self.read(tagged, Limits::NAME).ok()
    }

    /// Line end offsets (UTF-16 units) of a whole source, V8-style (see
    /// [`LineEnds`]); fails when longer than `limits.max_units`.
    pub fn line_ends(
        &self,
        tagged: u64,
        limits: Limits,
        max_lines: usize,
    ) -> Result<Vec<u32>, StringError> {
        let len = self.len(tagged).ok_or(StringError::Invalid)?;
        if len > limits.max_units || len > u32::MAX as usize {
            return Err(StringError::TooLong);
        }
        let mut ends = LineEnds::new(max_lines);
        self.visit(tagged, limits, &mut |c| ends.push(c))?;
        ends.finish().ok_or(StringError::TooLong)
    }
}

/// Collects chunks into one UTF-8 string: Latin-1 bytes map to U+0000–U+00FF,
/// UTF-16 surrogate pairs may straddle chunks, lone surrogates become U+FFFD.
#[derive(Default)]
pub struct Utf16Accumulator {
    units: Vec<u16>,
}

impl Utf16Accumulator {
    pub fn push(&mut self, chunk: Chunk<'_>) {
        match chunk {
            Chunk::OneByte(b) => self.units.extend(b.iter().map(|&c| u16::from(c))),
            Chunk::TwoByte(u) => self.units.extend_from_slice(u),
        }
    }

    pub fn finish(self) -> String {
        utf16_to_string(&self.units)
    }
}

/// Latin-1 (V8 one-byte string) to UTF-8.
pub fn latin1_to_string(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// UTF-16 (V8 two-byte string) to UTF-8; lone surrogates become U+FFFD.
pub fn utf16_to_string(units: &[u16]) -> String {
    String::from_utf16_lossy(units)
}

/// Line end offsets like V8's `String::CalculateLineEnds(include_ending_line)`:
/// the offset of every line terminator (`\n`, `\r` not followed by `\n`,
/// U+2028, U+2029), then the source length. Offsets count UTF-16 units.
#[derive(Debug)]
pub struct LineEnds {
    ends: Vec<u32>,
    pos: u32,
    pending_cr: Option<u32>,
    max_lines: usize,
    overflow: bool,
}

impl LineEnds {
    pub fn new(max_lines: usize) -> LineEnds {
        LineEnds {
            ends: Vec::new(),
            pos: 0,
            pending_cr: None,
            max_lines,
            overflow: false,
        }
    }

    fn unit(&mut self, c: u16) {
        if let Some(cr) = self.pending_cr.take() {
            if c != u16::from(b'\n') {
                self.end_at(cr);
            }
        }
        match c {
            0x0A | 0x2028 | 0x2029 => self.end_at(self.pos),
            0x0D => self.pending_cr = Some(self.pos),
            _ => {}
        }
        self.pos = self.pos.saturating_add(1);
    }

    fn end_at(&mut self, at: u32) {
        if self.ends.len() >= self.max_lines {
            self.overflow = true;
        } else {
            self.ends.push(at);
        }
    }

    pub fn push(&mut self, chunk: Chunk<'_>) {
        if self.overflow {
            return;
        }
        match chunk {
            Chunk::OneByte(b) => {
                for &c in b {
                    self.unit(u16::from(c));
                }
            }
            Chunk::TwoByte(u) => {
                for &c in u {
                    self.unit(c);
                }
            }
        }
    }

    /// The ends, or `None` when there were more than `max_lines`.
    pub fn finish(mut self) -> Option<Vec<u32>> {
        if let Some(cr) = self.pending_cr.take() {
            self.end_at(cr);
        }
        let len = self.pos;
        self.end_at(len);
        (!self.overflow).then_some(self.ends)
    }

    /// Line ends of a Rust string (for tests and tools), in UTF-16 units.
    pub fn of_str(s: &str) -> Vec<u32> {
        let units: Vec<u16> = s.encode_utf16().collect();
        let mut le = LineEnds::new(usize::MAX);
        le.push(Chunk::TwoByte(&units));
        le.finish().unwrap_or_default()
    }
}

/// 0-based (line, column) of a source position given V8 line ends (each
/// line's terminator offset, the last entry the source length), like
/// `Script::GetPositionInfo`; `None` when `pos` is past the end.
pub fn line_column(ends: &[u32], pos: u32) -> Option<(u32, u32)> {
    let line = ends.partition_point(|&e| e < pos);
    if line >= ends.len() {
        return None;
    }
    let line_start = if line == 0 {
        0
    } else {
        ends[line - 1].checked_add(1)?
    };
    Some((u32::try_from(line).ok()?, pos.checked_sub(line_start)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v8::layout::test_layout;
    use crate::v8::memory::testing::{smi, FakeHeap};

    // Node 20 string instance types.
    const SEQ1: u16 = 40;
    const SEQ2: u16 = 32;
    const CONS1: u16 = 41;
    const CONS2: u16 = 33;
    const EXT1: u16 = 42;
    const EXT2: u16 = 34;
    const SLICED1: u16 = 43;
    const THIN1: u16 = 45;
    const UNCACHED_EXT1: u16 = 58;

    fn header(len: usize) -> Vec<u8> {
        let mut b = vec![0u8; 8];
        b[4..8].copy_from_slice(&(len as i32).to_le_bytes());
        b
    }

    fn seq1(h: &mut FakeHeap, s: &[u8]) -> u64 {
        let mut b = header(s.len());
        b.extend_from_slice(s);
        h.object(SEQ1, &b)
    }

    fn seq2(h: &mut FakeHeap, s: &str) -> u64 {
        let units: Vec<u16> = s.encode_utf16().collect();
        let mut b = header(units.len());
        b.extend(units.iter().flat_map(|u| u.to_le_bytes()));
        h.object(SEQ2, &b)
    }

    fn two_words(h: &mut FakeHeap, ty: u16, len: usize, a: u64, b: u64) -> u64 {
        let mut body = header(len);
        body.extend_from_slice(&a.to_le_bytes());
        body.extend_from_slice(&b.to_le_bytes());
        h.object(ty, &body)
    }

    fn cons(h: &mut FakeHeap, ty: u16, first: u64, second: u64, len: usize) -> u64 {
        two_words(h, ty, len, first, second)
    }

    #[test]
    fn every_representation() {
        let layout = test_layout();
        let mut h = FakeHeap::default();
        let latin = seq1(&mut h, b"caf\xe9");
        let cjk = seq2(&mut h, "中文😀");
        let parent = seq1(&mut h, b"xxhello world");
        let sliced = two_words(&mut h, SLICED1, 5, parent, smi(2));
        let thin = two_words(&mut h, THIN1, 4, latin, 0);
        let ext_data = h.raw(b"external!");
        let ext = two_words(&mut h, EXT1, 9, 0xdead_0000, ext_data);
        let ext2_units: Vec<u8> = "é€".encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        let ext2_data = h.raw(&ext2_units);
        let ext2 = two_words(&mut h, EXT2, 2, 0xdead_0000, ext2_data);
        let uncached = two_words(&mut h, UNCACHED_EXT1, 9, 0xdead_0000, ext_data);
        let c1 = cons(&mut h, CONS2, latin, cjk, 4 + 4);
        let c2 = cons(&mut h, CONS2, c1, sliced, 8 + 5);
        let c3 = cons(&mut h, CONS2, c2, thin, 13 + 4);
        let r = StringReader::new(&h.mem, &layout);
        assert_eq!(r.read_name(latin).as_deref(), Some("café"));
        assert_eq!(r.read_name(cjk).as_deref(), Some("中文😀"));
        assert_eq!(r.read_name(sliced).as_deref(), Some("hello"));
        assert_eq!(r.read_name(thin).as_deref(), Some("café"));
        assert_eq!(r.read_name(ext).as_deref(), Some("external!"));
        assert_eq!(r.read_name(ext2).as_deref(), Some("é€"));
        assert_eq!(r.read(uncached, Limits::NAME), Err(StringError::Uncached));
        assert_eq!(r.read_name(c3).as_deref(), Some("café中文😀hellocafé"));
        assert_eq!(r.len(c3), Some(17));
        // Truncation keeps a prefix, across cons halves.
        let short = Limits {
            max_units: 6,
            ..Limits::NAME
        };
        assert_eq!(r.read(c3, short).as_deref(), Ok("café中文"));
        // Line ends across a cons boundary (\r | \n).
        let a = seq1(&mut h, b"a\r");
        let b = seq2(&mut h, "\nb\u{2028}");
        let ab = cons(&mut h, CONS2, a, b, 5);
        let r = StringReader::new(&h.mem, &layout);
        assert_eq!(r.line_ends(ab, Limits::SOURCE, 100), Ok(vec![2, 4, 5]));
        assert_eq!(
            r.line_ends(
                ab,
                Limits {
                    max_units: 4,
                    ..Limits::SOURCE
                },
                100
            ),
            Err(StringError::TooLong)
        );
        assert_eq!(
            r.line_ends(ab, Limits::SOURCE, 2),
            Err(StringError::TooLong)
        );
    }

    #[test]
    fn garbage_strings_fail_cleanly() {
        let layout = test_layout();
        let mut h = FakeHeap::default();
        let ok = seq1(&mut h, b"abc");
        let negative = h.object(SEQ1, &header(usize::MAX)); // length -1
        let not_string = h.object(200, &header(3));
        let truncated = h.object(SEQ1, &header(1 << 20)); // chars beyond the mapping
        let bad_cons = cons(&mut h, CONS1, ok, ok, 2); // first longer than the cons
        let short_cons = cons(&mut h, CONS1, ok, ok, 7); // halves shorter than claimed
        let bad_slice = two_words(&mut h, SLICED1, 3, ok, smi(2)); // past the parent's end
        let neg_slice = two_words(&mut h, SLICED1, 1, ok, smi(-1));
        let ext_null = two_words(&mut h, EXT1, 3, 0, 0);
        let r = StringReader::new(&h.mem, &layout);
        for (what, s) in [
            ("untagged", ok - 1),
            ("null", 0),
            ("unmapped", 0x7000_0001),
            ("negative length", negative),
            ("not a string", not_string),
            ("truncated", truncated),
            ("bad cons", bad_cons),
            ("short cons", short_cons),
            ("bad slice", bad_slice),
            ("negative slice", neg_slice),
            ("null external", ext_null),
        ] {
            assert_eq!(r.read(s, Limits::NAME), Err(StringError::Invalid), "{what}");
        }
    }

    #[test]
    fn cycles_and_deep_trees_are_bounded() {
        let layout = test_layout();
        let mut h = FakeHeap::default();
        // A cons whose first half is itself.
        let selfish = cons(&mut h, CONS1, 0, 0, 3);
        h.set_word(selfish, 16, selfish);
        let leaf = seq1(&mut h, b"x");
        h.set_word(selfish, 24, leaf);
        // A left-deep tree 10000 levels deep ((((x+x)+x)+x)…).
        let mut deep = leaf;
        for i in 0..10_000 {
            deep = cons(&mut h, CONS1, deep, leaf, i + 2);
        }
        let r = StringReader::new(&h.mem, &layout);
        assert_eq!(r.read(selfish, Limits::NAME), Err(StringError::TooComplex));
        assert_eq!(r.read(deep, Limits::NAME), Err(StringError::TooComplex));
        assert_eq!(r.read(deep, Limits::SOURCE), Err(StringError::TooComplex));
        // Within the bounds, the same tree reads fine.
        let wide = Limits {
            max_units: 1 << 20,
            max_nodes: 1 << 16,
            max_stack: 1 << 15,
        };
        assert_eq!(r.read(deep, wide).map(|s| s.len()), Ok(10_001));
        // Truncated to a short prefix, only the needed nodes are visited:
        // in a right-deep tree (x+(x+(x+…))) that is a handful.
        let mut right = leaf;
        for i in 0..10_000 {
            right = cons(&mut h, CONS1, leaf, right, i + 2);
        }
        let r = StringReader::new(&h.mem, &layout);
        let prefix = Limits {
            max_units: 3,
            max_nodes: 16,
            max_stack: 4,
        };
        assert_eq!(r.read(right, prefix).as_deref(), Ok("xxx"));
        assert_eq!(r.read(right, Limits::SOURCE).map(|s| s.len()), Ok(10_001));
        assert_eq!(
            r.read(
                right,
                Limits {
                    max_nodes: 1000,
                    ..Limits::SOURCE
                }
            )
            .map(|s| s.len()),
            Err(StringError::TooComplex)
        );
    }

    #[test]
    fn latin1_and_utf16_decoding() {
        assert_eq!(latin1_to_string(b"caf\xe9 \xff"), "café ÿ");
        let units: Vec<u16> = "a€中😀".encode_utf16().collect();
        assert_eq!(utf16_to_string(&units), "a€中😀");
        assert_eq!(utf16_to_string(&[0x61, 0xD800, 0x62]), "a\u{FFFD}b");
        // A surrogate pair split across chunks still decodes.
        let mut acc = Utf16Accumulator::default();
        let pair: Vec<u16> = "😀".encode_utf16().collect();
        acc.push(Chunk::OneByte(b"x\xe9"));
        acc.push(Chunk::TwoByte(&pair[..1]));
        acc.push(Chunk::TwoByte(&pair[1..]));
        assert_eq!(acc.finish(), "xé😀");
    }

    #[test]
    fn line_ends_like_v8() {
        assert_eq!(LineEnds::of_str(""), vec![0]);
        assert_eq!(LineEnds::of_str("ab"), vec![2]);
        assert_eq!(LineEnds::of_str("a\nb\n"), vec![1, 3, 4]);
        // \r\n is one terminator, at the \n; a lone \r ends a line.
        assert_eq!(LineEnds::of_str("a\r\nb\rc"), vec![2, 4, 6]);
        assert_eq!(LineEnds::of_str("a\r"), vec![1, 2]);
        assert_eq!(LineEnds::of_str("\u{2028}x\u{2029}"), vec![0, 2, 3]);
        // Positions count UTF-16 units: 😀 is two.
        assert_eq!(LineEnds::of_str("😀\nx"), vec![2, 4]);
        // \r at the end of one chunk and \n at the start of the next.
        let mut le = LineEnds::new(100);
        le.push(Chunk::OneByte(b"ab\r"));
        le.push(Chunk::TwoByte(&[0x0A, 0x63]));
        assert_eq!(le.finish(), Some(vec![3, 5]));
        let mut le = LineEnds::new(2);
        le.push(Chunk::OneByte(b"\n\n\n"));
        assert_eq!(le.finish(), None);
    }

    #[test]
    fn line_and_column_from_line_ends() {
        let src = "function a() {}\r\n  function b() {}\rfunction c() {}\u{2028}   d";
        let ends = LineEnds::of_str(src);
        let pos = |needle: &str| {
            src.encode_utf16()
                .collect::<Vec<_>>()
                .windows(needle.len())
                .position(|w| String::from_utf16_lossy(w) == needle)
                .unwrap() as u32
        };
        assert_eq!(line_column(&ends, 0), Some((0, 0)));
        assert_eq!(line_column(&ends, pos("function b")), Some((1, 2)));
        assert_eq!(line_column(&ends, pos("function c")), Some((2, 0)));
        assert_eq!(line_column(&ends, pos("d")), Some((3, 3)));
        // The terminator belongs to its line; the end of the source is valid.
        assert_eq!(line_column(&ends, 15), Some((0, 15)));
        let len = src.encode_utf16().count() as u32;
        assert_eq!(line_column(&ends, len), Some((3, 4)));
        assert_eq!(line_column(&ends, len + 1), None);
        assert_eq!(line_column(&[], 0), None);
    }
}
