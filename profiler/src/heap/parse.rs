//! Streaming reader of V8 `.heapsnapshot` files into compact column arrays.
//!
//! The file is one JSON object: `snapshot` (the header with `meta`), then the
//! flat number arrays `nodes` and `edges`, then `strings` (and a few optional
//! arrays nodeprof skips: `trace_function_infos`, `trace_tree`, `samples`,
//! `locations`). Only the small header goes through serde_json; the number
//! arrays, which are 90 % of a file, are read by a hand-written scanner straight
//! into typed columns (one `Vec` per field, no per-node allocation), on two
//! threads (one scans, one stores). Measured on the 242 MB snapshot of `cargo
//! xtask bench-heap`: serde_json's typed `from_reader` into plain `Vec<u64>`s
//! (no columns, no checks) took 1.0 s (`from_slice`, with the whole file in
//! memory, 0.76 s); this reader 0.45–0.55 s into checked columns. Strings use
//! serde_json when they contain escapes.
//!
//! Every count comes from the header and is checked against the file size
//! before anything is allocated, so a corrupt header cannot make nodeprof
//! allocate more than the file could hold.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::mpsc;

use serde::Deserialize;

use super::snapshot::{HeapSnapshot, Strings};
use super::HeapError;

/// Bytes read per `read` call.
const CHUNK: usize = 1 << 20;
/// The header (`"snapshot": {...}`) is a few KB; refuse anything absurd.
const MAX_HEADER: usize = 16 << 20;

#[derive(Deserialize)]
struct Header {
    meta: Meta,
    node_count: u64,
    edge_count: u64,
}

#[derive(Deserialize)]
struct Meta {
    node_fields: Vec<String>,
    node_types: Vec<serde_json::Value>,
    edge_fields: Vec<String>,
    edge_types: Vec<serde_json::Value>,
}

/// The role of one position of a node or edge record.
#[derive(Clone, Copy, PartialEq)]
enum Field {
    Type,
    Name,
    Id,
    SelfSize,
    EdgeCount,
    Detachedness,
    ToNode,
    Other,
}

/// Reads and checks a snapshot file. `progress` gets the number of bytes read
/// so far (and the file size once, first).
pub fn read_file(
    path: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<HeapSnapshot, HeapError> {
    let io_err = |source| HeapError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    progress(0, size);
    let mut parser = Parser {
        lex: Lexer::new(file, size, progress),
    };
    parser.snapshot().map_err(|e| match e {
        ParseError::Io(source) => io_err(source),
        ParseError::Format { offset, message } => HeapError::Format {
            path: path.to_path_buf(),
            offset,
            message,
        },
    })
}

/// Parses a snapshot held in memory (tests, fuzzing).
pub fn read_bytes(bytes: &[u8]) -> Result<HeapSnapshot, HeapError> {
    let mut none = |_: u64, _: u64| {};
    let mut parser = Parser {
        lex: Lexer::new(bytes, bytes.len() as u64, &mut none),
    };
    parser.snapshot().map_err(|e| match e {
        ParseError::Io(source) => HeapError::Io {
            path: "<memory>".into(),
            source,
        },
        ParseError::Format { offset, message } => HeapError::Format {
            path: "<memory>".into(),
            offset,
            message,
        },
    })
}

enum ParseError {
    Io(std::io::Error),
    Format { offset: u64, message: String },
}

type PResult<T> = Result<T, ParseError>;

struct Lexer<'p, R> {
    reader: R,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    /// File offset of `buf[0]`.
    base: u64,
    size: u64,
    progress: &'p mut dyn FnMut(u64, u64),
    reported: u64,
}

impl<'p, R: Read> Lexer<'p, R> {
    fn new(reader: R, size: u64, progress: &'p mut dyn FnMut(u64, u64)) -> Self {
        Lexer {
            reader,
            buf: vec![0; CHUNK],
            pos: 0,
            len: 0,
            base: 0,
            size,
            progress,
            reported: 0,
        }
    }

    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    fn error<T>(&self, message: impl Into<String>) -> PResult<T> {
        Err(ParseError::Format {
            offset: self.offset(),
            message: message.into(),
        })
    }

    /// Refills the buffer; false at the end of the input.
    #[cold]
    fn fill(&mut self) -> PResult<bool> {
        self.base += self.len as u64;
        self.pos = 0;
        self.len = 0;
        loop {
            match self.reader.read(&mut self.buf) {
                Ok(n) => {
                    self.len = n;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ParseError::Io(e)),
            }
        }
        if self.base - self.reported >= 8 << 20 {
            self.reported = self.base;
            (self.progress)(self.base, self.size);
        }
        Ok(self.len > 0)
    }

    /// The next byte, without consuming it; `None` at the end.
    #[inline]
    fn peek_raw(&mut self) -> PResult<Option<u8>> {
        if self.pos == self.len && !self.fill()? {
            return Ok(None);
        }
        Ok(Some(self.buf[self.pos]))
    }

    /// The next non-whitespace byte, not consumed; an error at the end.
    fn peek(&mut self, what: &str) -> PResult<u8> {
        loop {
            match self.peek_raw()? {
                Some(b' ' | b'\n' | b'\r' | b'\t') => self.pos += 1,
                Some(b) => return Ok(b),
                None => {
                    return self.error(format!("file ends where {what} was expected (truncated?)"))
                }
            }
        }
    }

    fn expect(&mut self, byte: u8, what: &str) -> PResult<()> {
        let b = self.peek(what)?;
        if b != byte {
            return self.error(format!(
                "expected {what} ('{}'), found '{}'",
                byte as char,
                (b as char).escape_default()
            ));
        }
        self.pos += 1;
        Ok(())
    }

    /// Reads a JSON string (after whitespace) into `out` as raw bytes, quotes
    /// excluded; returns whether it holds escapes.
    fn raw_string(&mut self, out: &mut Vec<u8>, limit: usize) -> PResult<bool> {
        self.expect(b'"', "a string")?;
        let mut escaped = false;
        loop {
            if self.pos == self.len && !self.fill()? {
                return self.error("file ends inside a string (truncated?)");
            }
            let chunk = &self.buf[self.pos..self.len];
            match chunk
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            {
                None => {
                    out.extend_from_slice(chunk);
                    self.pos = self.len;
                }
                Some(i) => {
                    out.extend_from_slice(&chunk[..i]);
                    let b = chunk[i];
                    self.pos += i + 1;
                    match b {
                        b'"' => return Ok(escaped),
                        b'\\' => {
                            escaped = true;
                            out.push(b'\\');
                            match self.peek_raw()? {
                                Some(next) => {
                                    out.push(next);
                                    self.pos += 1;
                                }
                                None => {
                                    return self.error("file ends inside a string (truncated?)")
                                }
                            }
                        }
                        _ => {
                            self.pos -= 1;
                            return self.error("control character inside a string");
                        }
                    }
                }
            }
            if out.len() > limit {
                return self.error("string longer than the file allows");
            }
        }
    }

    /// Reads a string and appends its decoded UTF-8 text to `text`, in place:
    /// a string is never held twice, however big (a snapshot may hold a
    /// string of a gigabyte).
    fn string_into(&mut self, text: &mut Vec<u8>) -> PResult<()> {
        let start = self.offset();
        let from = text.len();
        let escaped = self.raw_string(text, usize::MAX)?;
        let bad = |message: &str| ParseError::Format {
            offset: start,
            message: message.to_string(),
        };
        if escaped {
            unescape_in_place(text, from).map_err(bad)?;
        }
        std::str::from_utf8(&text[from..]).map_err(|_| bad("string is not valid UTF-8"))?;
        Ok(())
    }

    /// Skips one JSON value (or copies it into `capture`, up to `limit` bytes).
    fn skip_value(&mut self, mut capture: Option<&mut Vec<u8>>, limit: usize) -> PResult<()> {
        let first = self.peek("a value")?;
        let mut depth = 0usize;
        let mut scratch = Vec::new();
        match first {
            b'"' => {
                let buf = capture.as_deref_mut().unwrap_or(&mut scratch);
                buf.push(b'"');
                self.raw_string(buf, limit)?;
                buf.push(b'"');
                return Ok(());
            }
            b'[' | b'{' => {}
            _ => {
                // A number or literal: up to the next delimiter.
                loop {
                    match self.peek_raw()? {
                        Some(b',' | b']' | b'}' | b' ' | b'\n' | b'\r' | b'\t') | None => {
                            return Ok(())
                        }
                        Some(b) => {
                            if let Some(c) = capture.as_deref_mut() {
                                c.push(b);
                            }
                            self.pos += 1;
                        }
                    }
                }
            }
        }
        loop {
            let Some(b) = self.peek_raw()? else {
                return self.error("file ends inside a value (truncated?)");
            };
            if b == b'"' {
                let buf = capture.as_deref_mut().unwrap_or(&mut scratch);
                buf.push(b'"');
                self.raw_string(buf, limit)?;
                buf.push(b'"');
                scratch.clear();
                continue;
            }
            self.pos += 1;
            if let Some(c) = capture.as_deref_mut() {
                c.push(b);
                if c.len() > limit {
                    return self.error("snapshot header is too large");
                }
            }
            match b {
                b'[' | b'{' => depth += 1,
                b']' | b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
    }

    /// Reads a JSON array of non-negative integers, handing each to `sink`.
    /// Returns how many there were.
    fn numbers(
        &mut self,
        what: &str,
        mut sink: impl FnMut(u64, &Self) -> PResult<()>,
    ) -> PResult<u64> {
        self.expect(b'[', what)?;
        let mut count = 0u64;
        if self.peek(what)? == b']' {
            self.pos += 1;
            return Ok(0);
        }
        loop {
            // Fast path, while the buffer holds enough bytes for any number
            // and its separator: no refill checks per byte.
            if let Some(done) = self.numbers_in_buffer(&mut count, &mut sink)? {
                if done {
                    return Ok(count);
                }
                continue;
            }
            self.peek(what)?;
            let mut value = 0u64;
            let mut digits = 0;
            loop {
                if self.pos == self.len && !self.fill()? {
                    break;
                }
                let b = self.buf[self.pos];
                if !b.is_ascii_digit() {
                    break;
                }
                value = match value
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(b - b'0')))
                {
                    Some(v) => v,
                    None => return self.error(format!("number too large in {what}")),
                };
                digits += 1;
                self.pos += 1;
            }
            if digits == 0 {
                let b = self.peek(what)?;
                return self.error(format!(
                    "expected a non-negative integer in {what}, found '{}'",
                    (b as char).escape_default()
                ));
            }
            sink(value, self)?;
            count += 1;
            match self.peek(what)? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Ok(count);
                }
                b => {
                    return self.error(format!(
                        "expected ',' or ']' in {what}, found '{}'",
                        (b as char).escape_default()
                    ))
                }
            }
        }
    }
}

impl<R: Read> Lexer<'_, R> {
    /// Parses numbers straight from the buffer while at least 64 bytes are
    /// left. `Some(true)`: the array ended; `Some(false)`: parsed some, call
    /// again; `None`: nothing done here (near the buffer's end, or something
    /// unusual that the careful path reports).
    #[inline]
    fn numbers_in_buffer(
        &mut self,
        count: &mut u64,
        sink: &mut impl FnMut(u64, &Self) -> PResult<()>,
    ) -> PResult<Option<bool>> {
        const SLACK: usize = 64;
        let start = self.pos;
        let mut i = self.pos;
        let end = self.len;
        let is_ws = |b: u8| b == b' ' || b == b'\n' || b == b'\r' || b == b'\t';
        while end - i >= SLACK {
            let buf = &self.buf[..end];
            let mut j = i;
            while j < end && is_ws(buf[j]) {
                j += 1;
            }
            if end - j < SLACK - 20 {
                break;
            }
            let digits_start = j;
            // Up to 7 digits at once (SWAR): most numbers of a snapshot are short.
            let mut word = [0u8; 8];
            word.copy_from_slice(&buf[j..j + 8]);
            let (len, short) = digit_run(u64::from_le_bytes(word));
            if len == 0 {
                break;
            }
            let value = if len < 8 {
                j += len;
                short
            } else {
                let mut value = 0u64;
                while buf[j].is_ascii_digit() && j - digits_start < 19 {
                    value = value * 10 + u64::from(buf[j] - b'0');
                    j += 1;
                }
                if buf[j].is_ascii_digit() {
                    break;
                }
                value
            };
            while j < end && is_ws(buf[j]) {
                j += 1;
            }
            if j >= end {
                break;
            }
            let sep = buf[j];
            if sep != b',' && sep != b']' {
                break;
            }
            self.pos = digits_start;
            sink(value, self)?;
            *count += 1;
            i = j + 1;
            self.pos = i;
            if sep == b']' {
                return Ok(Some(true));
            }
        }
        self.pos = i;
        Ok(if i == start { None } else { Some(false) })
    }
}

/// The leading ASCII digits of 8 bytes (first byte first, little-endian
/// load): how many there are (8 when all are), and their value when fewer
/// than 8. A byte is a digit when `byte ^ 0x30` is at most 9: then neither
/// it nor it plus 6 has a high nibble. Carries of the addition only start at
/// non-digit bytes and move up, so the first non-digit is found right.
fn digit_run(word: u64) -> (usize, u64) {
    const LOW: u64 = 0x0101_0101_0101_0101;
    let t = word ^ (0x30 * LOW);
    let non_digit = (t | t.wrapping_add(0x06 * LOW)) & (0xF0 * LOW);
    let len = (non_digit.trailing_zeros() / 8) as usize;
    if len == 0 || len == 8 {
        return (len, 0);
    }
    // Right-align the digits (leading zeros in the low bytes), then combine
    // pairs, quads and halves: the usual eight-digit parse.
    let v = (t << (8 * (8 - len))) & (0x0F * LOW);
    let v = (v.wrapping_mul(10) + (v >> 8)) & 0x00FF_00FF_00FF_00FF;
    let v = (v.wrapping_mul(100) + (v >> 16)) & 0x0000_FFFF_0000_FFFF;
    (len, (v.wrapping_mul(10000) + (v >> 32)) & 0xFFFF_FFFF)
}

struct Parser<'p, R> {
    lex: Lexer<'p, R>,
}

/// Index of a type name in a `node_types`/`edge_types` list.
fn type_names(value: Option<&serde_json::Value>, what: &str) -> Result<Vec<String>, String> {
    let list = value
        .and_then(|v| v.as_array())
        .ok_or_else(|| format!("meta.{what} has no list of type names"))?;
    let names: Option<Vec<String>> = list
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect();
    let names = names.ok_or_else(|| format!("meta.{what} type names are not strings"))?;
    if names.is_empty() || names.len() > 255 {
        return Err(format!("meta.{what} has {} type names", names.len()));
    }
    Ok(names)
}

impl<R: Read> Parser<'_, R> {
    fn snapshot(&mut self) -> PResult<HeapSnapshot> {
        let lex = &mut self.lex;
        match lex.peek_raw()? {
            None => return lex.error("the file is empty"),
            Some(b) if b != b'{' && !b.is_ascii_whitespace() => {
                return lex.error("not a heap snapshot: it does not start with a JSON object")
            }
            _ => {}
        }
        lex.expect(b'{', "'{'")?;
        let mut header: Option<HeaderParts> = None;
        let mut snap = HeapSnapshot::default();
        let mut seen_nodes = false;
        let mut seen_edges = false;
        let mut seen_strings = false;
        let mut key = Vec::new();
        loop {
            let lex = &mut self.lex;
            key.clear();
            lex.raw_string(&mut key, 256)?;
            lex.expect(b':', "':'")?;
            match key.as_slice() {
                b"snapshot" => {
                    if header.is_some() {
                        return lex.error("a second \"snapshot\" header");
                    }
                    let mut raw = Vec::new();
                    let at = lex.offset();
                    lex.skip_value(Some(&mut raw), MAX_HEADER)?;
                    header = Some(parse_header(&raw, lex.size).map_err(|message| {
                        ParseError::Format {
                            offset: at,
                            message,
                        }
                    })?);
                }
                b"nodes" => {
                    let Some((h, fields, _, types, _)) = &header else {
                        return lex.error("\"nodes\" comes before the \"snapshot\" header");
                    };
                    read_nodes(lex, h.node_count, fields, types.len(), &mut snap)?;
                    seen_nodes = true;
                }
                b"edges" => {
                    let Some((h, nfields, fields, _, types)) = &header else {
                        return lex.error("\"edges\" comes before the \"snapshot\" header");
                    };
                    if !seen_nodes {
                        return lex.error("\"edges\" comes before \"nodes\"");
                    }
                    read_edges(
                        lex,
                        h.edge_count,
                        nfields.len(),
                        fields,
                        types.len(),
                        &mut snap,
                    )?;
                    seen_edges = true;
                }
                b"strings" => {
                    snap.strings = read_strings(lex)?;
                    seen_strings = true;
                }
                _ => lex.skip_value(None, 0)?,
            }
            let lex = &mut self.lex;
            match lex.peek("',' or '}'")? {
                b',' => lex.pos += 1,
                b'}' => {
                    lex.pos += 1;
                    break;
                }
                b => {
                    return lex.error(format!(
                        "expected ',' or '}}' after a top-level value, found '{}'",
                        (b as char).escape_default()
                    ))
                }
            }
        }
        let lex = &mut self.lex;
        loop {
            match lex.peek_raw()? {
                Some(b' ' | b'\n' | b'\r' | b'\t') => lex.pos += 1,
                Some(_) => return lex.error("unexpected data after the end of the snapshot"),
                None => break,
            }
        }
        let Some((_, _, _, node_types, edge_types)) = header else {
            return lex.error("no \"snapshot\" header: not a V8 heap snapshot");
        };
        for (seen, name) in [
            (seen_nodes, "nodes"),
            (seen_edges, "edges"),
            (seen_strings, "strings"),
        ] {
            if !seen {
                return lex.error(format!(
                    "no \"{name}\" array: not a complete V8 heap snapshot"
                ));
            }
        }
        snap.finish(node_types, edge_types)
            .map_err(|message| ParseError::Format {
                offset: lex.offset(),
                message,
            })?;
        Ok(snap)
    }
}

type HeaderParts = (Header, Vec<Field>, Vec<Field>, Vec<String>, Vec<String>);

fn parse_header(raw: &[u8], file_size: u64) -> Result<HeaderParts, String> {
    let header: Header =
        serde_json::from_slice(raw).map_err(|e| format!("invalid \"snapshot\" header: {e}"))?;
    let m = &header.meta;
    let role = |name: &str, nodes: bool| match (name, nodes) {
        ("type", _) => Field::Type,
        ("name", true) | ("name_or_index", false) => Field::Name,
        ("id", true) => Field::Id,
        ("self_size", true) => Field::SelfSize,
        ("edge_count", true) => Field::EdgeCount,
        ("detachedness", true) => Field::Detachedness,
        ("to_node", false) => Field::ToNode,
        _ => Field::Other,
    };
    let node_fields: Vec<Field> = m.node_fields.iter().map(|f| role(f, true)).collect();
    let edge_fields: Vec<Field> = m.edge_fields.iter().map(|f| role(f, false)).collect();
    for (fields, need, what) in [
        (
            &node_fields,
            &[
                Field::Type,
                Field::Name,
                Field::Id,
                Field::SelfSize,
                Field::EdgeCount,
            ][..],
            "node_fields",
        ),
        (
            &edge_fields,
            &[Field::Type, Field::Name, Field::ToNode][..],
            "edge_fields",
        ),
    ] {
        for f in need {
            if fields.iter().filter(|x| *x == f).count() != 1 {
                return Err(format!("meta.{what} lacks a required field"));
            }
        }
        if fields.len() > 32 {
            return Err(format!("meta.{what} has {} fields", fields.len()));
        }
    }
    let type_pos = |fields: &[String]| fields.iter().position(|f| f == "type").unwrap_or(0);
    let node_types = type_names(m.node_types.get(type_pos(&m.node_fields)), "node_types")?;
    let edge_types = type_names(m.edge_types.get(type_pos(&m.edge_fields)), "edge_types")?;
    // Every number takes at least two bytes ("0,"): counts the file cannot hold are corrupt.
    let fits = |count: u64, per: usize| {
        count
            .checked_mul(2 * per as u64)
            .is_some_and(|b| b <= file_size)
    };
    if !fits(header.node_count, node_fields.len()) {
        return Err(format!(
            "node_count {} does not fit in a file of {file_size} bytes (corrupt header)",
            header.node_count
        ));
    }
    if !fits(header.edge_count, edge_fields.len()) {
        return Err(format!(
            "edge_count {} does not fit in a file of {file_size} bytes (corrupt header)",
            header.edge_count
        ));
    }
    if header.node_count == 0 {
        return Err("the snapshot has no nodes".into());
    }
    if header.node_count >= u64::from(u32::MAX) || header.edge_count >= u64::from(u32::MAX) {
        return Err("more than 4 billion nodes or edges are not supported".into());
    }
    Ok((header, node_fields, edge_fields, node_types, edge_types))
}

/// Numbers per batch handed from the scanning thread to the storing one.
const BATCH: usize = 1 << 16;

impl<R: Read> Lexer<'_, R> {
    /// Like [`Lexer::numbers`], but `consume` stores them on a second thread,
    /// in batches, while this one goes on scanning: the two halves of reading
    /// `nodes` and `edges` take about as long as each other. A `consume`
    /// error stops the scan; its offset is where the scan had got to.
    /// Batches hold whole records: `record` numbers times a constant.
    fn numbers_batched(
        &mut self,
        what: &str,
        record: usize,
        consume: impl FnMut(&[u64]) -> Result<(), String> + Send,
    ) -> PResult<u64> {
        let batch_len = BATCH / record * record;
        let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u64>>(4);
        let (empty_tx, empty_rx) = mpsc::channel::<Vec<u64>>();
        std::thread::scope(|scope| {
            let mut consume = consume;
            let worker = scope.spawn(move || -> Result<(), String> {
                for mut batch in full_rx {
                    consume(&batch)?;
                    batch.clear();
                    let _ = empty_tx.send(batch);
                }
                Ok(())
            });
            let mut batch: Vec<u64> = Vec::with_capacity(batch_len);
            let scanned = self.numbers(what, |v, lex| {
                batch.push(v);
                if batch.len() == batch_len {
                    let next = empty_rx
                        .try_recv()
                        .unwrap_or_else(|_| Vec::with_capacity(batch_len));
                    if full_tx.send(std::mem::replace(&mut batch, next)).is_err() {
                        // The worker stopped on an error: it reports it below.
                        return lex.error("");
                    }
                }
                Ok(())
            });
            if scanned.is_ok() && !batch.is_empty() {
                let _ = full_tx.send(batch);
            }
            drop(full_tx);
            match worker.join() {
                Ok(Err(message)) => self.error(message),
                Ok(Ok(())) => scanned,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

fn read_nodes<R: Read>(
    lex: &mut Lexer<'_, R>,
    node_count: u64,
    fields: &[Field],
    type_count: usize,
    snap: &mut HeapSnapshot,
) -> PResult<()> {
    let n = node_count as usize;
    snap.node_type = Vec::with_capacity(n);
    snap.node_name = Vec::with_capacity(n);
    snap.node_id = Vec::with_capacity(n);
    snap.node_self = Vec::with_capacity(n);
    snap.first_edge = Vec::with_capacity(n + 1);
    snap.first_edge.push(0);
    if fields.contains(&Field::Detachedness) {
        snap.node_detachedness = Vec::with_capacity(n);
    }
    let expected = node_count * fields.len() as u64;
    let mut k = 0u64;
    let mut edges = 0u64;
    let width = fields.len();
    let at = |f: Field| fields.iter().position(|x| *x == f);
    let (ti, ni, ii, si, ei) = (
        at(Field::Type).unwrap_or(0),
        at(Field::Name).unwrap_or(0),
        at(Field::Id).unwrap_or(0),
        at(Field::SelfSize).unwrap_or(0),
        at(Field::EdgeCount).unwrap_or(0),
    );
    let di = at(Field::Detachedness);
    let small = |v: u64| u32::try_from(v).map_err(|_| format!("node field value {v} out of range"));
    let got = lex.numbers_batched("\"nodes\"", width, |batch| {
        if k + batch.len() as u64 > expected {
            return Err(format!(
                "\"nodes\" holds more than node_count ({node_count}) nodes"
            ));
        }
        k += batch.len() as u64;
        // A last, incomplete record is left to the count check below.
        let records = batch.chunks_exact(width);
        for r in records {
            if r[ti] >= type_count as u64 {
                return Err(format!("node type {} is not in meta.node_types", r[ti]));
            }
            snap.node_type.push(r[ti] as u8);
            snap.node_name.push(small(r[ni])?);
            snap.node_id.push(small(r[ii])?);
            snap.node_self.push(r[si]);
            if let Some(di) = di {
                snap.node_detachedness.push(r[di].min(3) as u8);
            }
            edges += r[ei];
            let end =
                u32::try_from(edges).map_err(|_| "edge counts of nodes overflow".to_string())?;
            snap.first_edge.push(end);
        }
        Ok(())
    })?;
    if got != expected {
        return lex.error(format!(
            "\"nodes\" holds {got} numbers, the header announces {expected} ({node_count} nodes)"
        ));
    }
    Ok(())
}

fn read_edges<R: Read>(
    lex: &mut Lexer<'_, R>,
    edge_count: u64,
    node_width: usize,
    fields: &[Field],
    type_count: usize,
    snap: &mut HeapSnapshot,
) -> PResult<()> {
    let e = edge_count as usize;
    let announced = u64::from(*snap.first_edge.last().unwrap_or(&0));
    if announced != edge_count {
        return lex.error(format!(
            "the nodes' edge counts add up to {announced}, the header announces {edge_count} edges"
        ));
    }
    let mut edge_type: Vec<u8> = Vec::with_capacity(e);
    let mut edge_name: Vec<u32> = Vec::with_capacity(e);
    let mut edge_to: Vec<u32> = Vec::with_capacity(e);
    let expected = edge_count * fields.len() as u64;
    let node_count = snap.node_type.len() as u64;
    let width = fields.len();
    let nw = node_width as u64;
    let mut k = 0u64;
    let at = |f: Field| fields.iter().position(|x| *x == f).unwrap_or(0);
    let (ti, ni, oi) = (at(Field::Type), at(Field::Name), at(Field::ToNode));
    let got = lex.numbers_batched("\"edges\"", width, |batch| {
        if k + batch.len() as u64 > expected {
            return Err(format!(
                "\"edges\" holds more than edge_count ({edge_count}) edges"
            ));
        }
        k += batch.len() as u64;
        // A last, incomplete record is left to the count check below.
        let records = batch.chunks_exact(width);
        for r in records {
            let (t, name, to) = (r[ti], r[ni], r[oi]);
            if t >= type_count as u64 {
                return Err(format!("edge type {t} is not in meta.edge_types"));
            }
            if to % nw != 0 || to / nw >= node_count {
                return Err(format!("edge points to {to}, which is not a node"));
            }
            edge_type.push(t as u8);
            edge_name
                .push(u32::try_from(name).map_err(|_| format!("edge name {name} out of range"))?);
            edge_to.push((to / nw) as u32);
        }
        Ok(())
    })?;
    if got != expected {
        return lex.error(format!(
            "\"edges\" holds {got} numbers, the header announces {expected} ({edge_count} edges)"
        ));
    }
    snap.edge_type = edge_type;
    snap.edge_name = edge_name;
    snap.edge_to = edge_to;
    Ok(())
}

fn read_strings<R: Read>(lex: &mut Lexer<'_, R>) -> PResult<Strings> {
    let mut text: Vec<u8> = Vec::new();
    let mut ends = Vec::new();
    let start = lex.offset();
    lex.expect(b'[', "\"strings\" array")?;
    if lex.peek("a string")? == b']' {
        lex.pos += 1;
    } else {
        loop {
            lex.string_into(&mut text)?;
            ends.push(text.len() as u64);
            match lex.peek("',' or ']'")? {
                b',' => lex.pos += 1,
                b']' => {
                    lex.pos += 1;
                    break;
                }
                b => {
                    return lex.error(format!(
                        "expected ',' or ']' in \"strings\", found '{}'",
                        (b as char).escape_default()
                    ))
                }
            }
        }
    }
    // Each string was checked as it was read; this checks again, without a copy.
    let text = String::from_utf8(text).map_err(|_| ParseError::Format {
        offset: start,
        message: "strings are not valid UTF-8".into(),
    })?;
    Ok(Strings { text, ends })
}

/// Decodes the JSON escapes of `buf[from..]` in place. Every escape is at
/// least as long as what it decodes to, so writing never overtakes reading.
/// Lone surrogates (V8 writes JS strings as they are) become U+FFFD.
fn unescape_in_place(buf: &mut Vec<u8>, from: usize) -> Result<(), &'static str> {
    const BAD: &str = "invalid escape in a string";
    let hex4 = |buf: &[u8], at: usize| -> Result<u32, &'static str> {
        let digits = buf.get(at..at + 4).ok_or(BAD)?;
        let text = std::str::from_utf8(digits).map_err(|_| BAD)?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BAD);
        }
        u32::from_str_radix(text, 16).map_err(|_| BAD)
    };
    let (mut read, mut write) = (from, from);
    while read < buf.len() {
        let Some(skip) = buf[read..].iter().position(|&b| b == b'\\') else {
            buf.copy_within(read.., write);
            write += buf.len() - read;
            break;
        };
        buf.copy_within(read..read + skip, write);
        write += skip;
        read += skip + 1;
        let simple = match buf.get(read).ok_or(BAD)? {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(8),
            b'f' => Some(12),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'u' => None,
            _ => return Err(BAD),
        };
        if let Some(byte) = simple {
            buf[write] = byte;
            write += 1;
            read += 1;
            continue;
        }
        let unit = hex4(buf, read + 1)?;
        read += 5;
        let c = if (0xD800..0xDC00).contains(&unit)
            && buf.get(read..read + 2) == Some(b"\\u")
            && hex4(buf, read + 2).is_ok_and(|low| (0xDC00..0xE000).contains(&low))
        {
            let low = hex4(buf, read + 2)?;
            read += 6;
            char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))
        } else {
            char::from_u32(unit)
        };
        let mut utf8 = [0; 4];
        let encoded = c
            .unwrap_or(char::REPLACEMENT_CHARACTER)
            .encode_utf8(&mut utf8);
        buf[write..write + encoded.len()].copy_from_slice(encoded.as_bytes());
        write += encoded.len();
    }
    buf.truncate(write);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::read_bytes;

    const META: &str = r#"{"meta":{"node_fields":["type","name","id","self_size","edge_count","trace_node_id","detachedness"],
        "node_types":[["hidden","array","string","object","code","closure","regexp","number","native","synthetic"],"string","number","number","number","number","number"],
        "edge_fields":["type","name_or_index","to_node"],
        "edge_types":[["context","element","property","internal","hidden","shortcut","weak"],"string_or_number","node"]},
        "node_count":2,"edge_count":1}"#;

    fn file(nodes: &str, edges: &str, strings: &str) -> String {
        format!(
            r#"{{"snapshot":{META},"nodes":[{nodes}],"edges":[{edges}],"locations":[],"strings":[{strings}]}}"#
        )
    }

    fn err(text: &str) -> String {
        match read_bytes(text.as_bytes()) {
            Ok(_) => panic!("parsed: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn scans_numbers_of_every_length() {
        use super::Lexer;
        let mut expected: Vec<u64> = Vec::new();
        let mut text = String::from("[");
        let seps = [",", "\n,", " , ", ",\n", "\t,"];
        let mut k = 0;
        for round in 0..40u64 {
            for digits in 1..=20u32 {
                let v = if digits == 20 {
                    u64::MAX - round
                } else {
                    10u64.pow(digits - 1) + round * 7919 % 10u64.pow(digits - 1).max(1)
                };
                for v in [v, 10u64.pow(digits.min(19)) - 1, 0] {
                    if k > 0 {
                        text.push_str(seps[k % seps.len()]);
                    }
                    text.push_str(&v.to_string());
                    expected.push(v);
                    k += 1;
                }
            }
        }
        text.push(']');
        let mut none = |_: u64, _: u64| {};
        let mut lex = Lexer::new(text.as_bytes(), text.len() as u64, &mut none);
        let mut got = Vec::new();
        let n = lex
            .numbers("test", |v, _| {
                got.push(v);
                Ok(())
            })
            .unwrap_or_else(|_| panic!("scan failed"));
        assert_eq!(n as usize, expected.len());
        assert_eq!(got, expected);
        assert_eq!(
            super::digit_run(u64::from_le_bytes(*b"1234567,")),
            (7, 1234567)
        );
        assert_eq!(super::digit_run(u64::from_le_bytes(*b"0,123456")), (1, 0));
        assert_eq!(super::digit_run(u64::from_le_bytes(*b"12345678")), (8, 0));
        assert_eq!(super::digit_run(u64::from_le_bytes(*b"x1234567")), (0, 0));
        assert_eq!(
            super::digit_run(u64::from_le_bytes(*b"9/:\xff0000")),
            (1, 9)
        );
        // One past u64::MAX, inside a long array: an error, not a wrap.
        let big = format!("[{}18446744073709551616]", "1,".repeat(100));
        let mut lex = Lexer::new(big.as_bytes(), big.len() as u64, &mut none);
        assert!(lex.numbers("test", |_, _| Ok(())).is_err());
    }

    #[test]
    fn reads_a_minimal_snapshot() {
        let s = read_bytes(
            file(
                "9,0,1,0,1,0,0, 3,1,3,40,0,0,2",
                "2,2,7",
                r#""","Foo \"q\" \u00e9","x""#,
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(s.node_count(), 2);
        assert_eq!(s.edge_to, vec![1]);
        assert_eq!(s.node_self, vec![0, 40]);
        assert_eq!(s.strings.get(1), "Foo \"q\" é");
        assert_eq!(s.edge_label(0), ".x");
        // detachedness 2 on a non-native node: no rename; the class is the name.
        assert_eq!(s.class_name(1), "Foo \"q\" é");
        assert_eq!(s.class_name(0), "(synthetic)");
    }

    #[test]
    fn decodes_every_escape() {
        let strings = r#""","a\"b\\c\/d\be\ff\ng\rh\ti","\u00e9\u20ac\ud83d\ude00","lone \ud800 x \udc00","x""#;
        let s =
            read_bytes(file("9,0,1,0,1,0,0, 3,1,3,40,0,0,2", "2,4,7", strings).as_bytes()).unwrap();
        assert_eq!(s.strings.get(1), "a\"b\\c/d\u{8}e\u{c}f\ng\rh\ti");
        assert_eq!(s.strings.get(2), "é€😀");
        // V8 writes lone surrogates of JS strings as they are: U+FFFD here.
        assert_eq!(s.strings.get(3), "lone \u{fffd} x \u{fffd}");
        assert_eq!(s.strings.get(4), "x");
        for bad in [r#"\x"#, r#"\u12"#, r#"\u12g4"#, r#"ab\u"#] {
            let text = file(
                "9,0,1,0,1,0,0,3,1,3,40,0,0,0",
                "2,2,7",
                &format!(r#""","{bad}","x""#),
            );
            assert!(err(&text).contains("escape"), "{bad}");
        }
    }

    #[test]
    fn implausible_sizes_are_rejected() {
        let strings = r#""","Foo","x""#;
        for nodes in [
            "9,0,1,9223372036854775808,1,0,0,3,1,3,9223372036854775808,0,0,0",
            "9,0,1,0,1,0,0,3,1,3,18446744073709551615,0,0,0",
            "9,0,1,4611686018427387904,1,0,0,3,1,3,4611686018427387904,0,0,0",
        ] {
            assert!(
                err(&file(nodes, "2,2,7", strings)).contains("implausible"),
                "{nodes}"
            );
        }
        // A terabyte is big, not implausible.
        let s = read_bytes(
            file("9,0,1,0,1,0,0,3,1,3,1099511627776,0,0,0", "2,2,7", strings).as_bytes(),
        )
        .unwrap();
        assert_eq!(s.node_self[1], 1 << 40);
    }

    #[test]
    fn rejects_inconsistent_files() {
        let ok_strings = r#""","Foo","x""#;
        assert!(
            err(&file("9,0,1,0,1,0,0,3,1,3,40,0,0", "2,2,7", ok_strings)).contains("announces")
        );
        assert!(
            err(&file("9,0,1,0,1,0,0,3,1,3,40,0,0,0", "2,2,8", ok_strings)).contains("not a node")
        );
        assert!(
            err(&file("9,0,1,0,1,0,0,3,1,3,40,0,0,0", "2,2,14", ok_strings)).contains("not a node")
        );
        assert!(err(&file("9,0,1,0,2,0,0,3,1,3,40,0,0,0", "2,2,7", ok_strings)).contains("add up"));
        assert!(
            err(&file("9,0,1,0,1,0,0,3,9,3,40,0,0,0", "2,2,7", ok_strings)).contains("string 9")
        );
        assert!(
            err(&file("9,0,1,0,1,0,0,30,1,3,40,0,0,0", "2,2,7", ok_strings)).contains("node type")
        );
        assert!(
            err(&file("9,0,1,0,1,0,0,3,1,3,-4,0,0,0", "2,2,7", ok_strings))
                .contains("non-negative")
        );
        assert!(err(&file(
            "9,0,1,0,1,0,0,3,1,3,40,0,0,0",
            "2,2,7",
            r#""","Foo""#
        ))
        .contains("string 2"));
        let good = file("9,0,1,0,1,0,0,3,1,3,40,0,0,0", "2,2,7", ok_strings);
        assert!(read_bytes(good.as_bytes()).is_ok());
        assert!(err(&format!("{good} x")).contains("after the end"));
        assert!(err(&good.replace(r#""snapshot":"#, r#""snapshop":"#))
            .contains("before the \"snapshot\""));
        assert!(err(&good.replace(r#""strings""#, r#""strongs""#)).contains("no \"strings\""));
        let twice = good.replacen(r#","nodes""#, &format!(r#","snapshot":{META},"nodes""#), 1);
        assert!(err(&twice).contains("second"));
        assert!(
            err(&good.replace("\"node_count\":2", "\"node_count\":99999999"))
                .contains("does not fit")
        );
        assert!(err("").contains("empty"));
        assert!(err("[1,2]").contains("not a heap snapshot"));
        for cut in 0..good.len() {
            assert!(read_bytes(&good.as_bytes()[..cut]).is_err(), "cut at {cut}");
        }
    }
}
