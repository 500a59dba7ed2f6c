//! Unwind rows for the sampler: the `.eh_frame` of a target's shared
//! libraries (libc, libm… code built without frame pointers) turned into
//! compact rows the eBPF program applies before its frame-pointer walk, the
//! way opentelemetry-ebpf-profiler's "stack deltas" do.
//!
//! A row says, from its pc on, where the CFA is (rsp or rbp plus an offset)
//! and where the caller's rbp was saved; anything else DWARF can say
//! (expressions, the PLT, other registers for the CFA) and the gaps between
//! functions become "unknown", where the sampler stops unwinding with rows
//! and falls back to frame pointers: a cut stack, never a wrong one.
//!
//! Rows of one file are stored once in `UNWIND_ROWS`, whatever number of
//! targets map it; each target gets a small table of its covered objects
//! (`UNWIND_TABLES`), refreshed when it execs or maps new code.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, EhFrame, LittleEndian, RegisterRule, UnwindContext,
    UnwindSection, X86_64,
};
use nodeprof_common::{
    UnwindObject, UnwindRow, UnwindTable, CFA_RBP, CFA_RSP, CFA_UNKNOWN, MAX_UNWIND_OBJECTS,
    MAX_UNWIND_ROWS,
};
use object::{Object, ObjectSection};

use crate::image::{executable_mappings, load_bias, open_mapped_file, Mapping};

/// The rows of one ELF file, relative to `base` (its lowest covered address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRows {
    pub base: u64,
    pub rows: Vec<UnwindRow>,
}

#[derive(Debug, thiserror::Error)]
pub enum CfiError {
    #[error("not an ELF file: {0}")]
    Elf(#[from] object::Error),
    #[error("no .eh_frame")]
    NoEhFrame,
    #[error("bad .eh_frame: {0}")]
    Dwarf(#[from] gimli::Error),
}

const UNKNOWN: UnwindRow = UnwindRow {
    pc: 0,
    cfa_offset: 0,
    rbp_offset: 0,
    cfa: CFA_UNKNOWN,
};

/// The rows of an ELF file's `.eh_frame`, sorted by pc, gaps between
/// functions as unknown rows, consecutive equal rules merged.
pub fn rows_of_elf(data: &[u8]) -> Result<FileRows, CfiError> {
    let file = object::File::parse(data)?;
    let section = file
        .section_by_name(".eh_frame")
        .ok_or(CfiError::NoEhFrame)?;
    let eh_frame = EhFrame::new(section.data()?, LittleEndian);
    let mut bases = BaseAddresses::default().set_eh_frame(section.address());
    if let Some(text) = file.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(got) = file.section_by_name(".got") {
        bases = bases.set_got(got.address());
    }
    // Every function's rows, (address, rule), and its end.
    let mut functions: Vec<(Vec<(u64, UnwindRow)>, u64)> = Vec::new();
    let mut context = Box::new(UnwindContext::new());
    let mut entries = eh_frame.entries(&bases);
    while let Some(entry) = entries.next()? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        // One bad FDE leaves a gap (unknown), not a table without libc.
        let Ok(fde) =
            partial.parse(|section, bases, offset| section.cie_from_offset(bases, offset))
        else {
            continue;
        };
        if fde.len() == 0 {
            continue;
        }
        let Ok(mut table) = fde.rows(&eh_frame, &bases, &mut context) else {
            continue;
        };
        let mut rows = Vec::new();
        let mut complete = true;
        loop {
            match table.next_row() {
                Ok(Some(row)) => rows.push((row.start_address(), rule(row))),
                Ok(None) => break,
                Err(_) => {
                    complete = false;
                    break;
                }
            }
        }
        if complete && !rows.is_empty() {
            functions.push((rows, fde.end_address()));
        }
    }
    functions.sort_by_key(|(rows, _)| rows[0].0);
    let base = functions.first().map_or(0, |(rows, _)| rows[0].0);
    let mut out: Vec<UnwindRow> = Vec::new();
    let mut push = |address: u64, rule: UnwindRow| {
        let Ok(pc) = u32::try_from(address - base) else {
            return;
        };
        match out.last_mut() {
            // Overlapping functions (rare): the later start wins from there on.
            Some(last) if last.pc > pc => {}
            Some(last) if last.pc == pc => *last = UnwindRow { pc, ..rule },
            Some(last) if same_rule(last, &rule) => {}
            _ => out.push(UnwindRow { pc, ..rule }),
        }
    };
    let mut end = base;
    for (rows, function_end) in functions {
        if rows[0].0 > end {
            push(end, UNKNOWN);
        }
        for (address, rule) in rows {
            push(address, rule);
        }
        end = end.max(function_end);
    }
    push(end, UNKNOWN);
    Ok(FileRows { base, rows: out })
}

fn same_rule(a: &UnwindRow, b: &UnwindRow) -> bool {
    (a.cfa, a.cfa_offset, a.rbp_offset) == (b.cfa, b.cfa_offset, b.rbp_offset)
}

/// One row of a DWARF unwind table as the sampler's rule, or unknown.
fn rule<T: gimli::ReaderOffset>(row: &gimli::UnwindTableRow<T>) -> UnwindRow {
    // The sampler reads the return address at CFA - 8, as the x86-64 ABI
    // has it; a frame that keeps it elsewhere (a signal frame) is unknown.
    if !matches!(row.register(X86_64::RA), Some(RegisterRule::Offset(-8))) {
        return UNKNOWN;
    }
    let (cfa, offset) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } if *register == X86_64::RSP => {
            (CFA_RSP, *offset)
        }
        CfaRule::RegisterAndOffset { register, offset } if *register == X86_64::RBP => {
            (CFA_RBP, *offset)
        }
        _ => return UNKNOWN,
    };
    let Ok(cfa_offset) = u16::try_from(offset) else {
        return UNKNOWN;
    };
    if cfa_offset == 0 {
        return UNKNOWN;
    }
    let rbp_offset = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue) => 0,
        Some(RegisterRule::Offset(at)) if at < 0 && at % 8 == 0 => match i8::try_from(at / 8) {
            Ok(words) => words,
            Err(_) => return UNKNOWN,
        },
        _ => return UNKNOWN,
    };
    UnwindRow {
        pc: 0,
        cfa_offset,
        rbp_offset,
        cfa,
    }
}

/// Where one file's rows are in `UNWIND_ROWS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stored {
    first_row: u32,
    rows: u32,
    base: u64,
}

/// What user space keeps of the rows it gave the sampler.
#[derive(Debug, Default)]
pub struct UnwindTables {
    /// By (device, inode): where its rows are, or None when it has none.
    files: HashMap<(u64, u64), Option<Stored>>,
    next_row: u32,
    /// Rows the sampler's array holds (a probe that builds no tables has one).
    capacity: u32,
    /// Per target, the executable mappings when its table was last built.
    seen: HashMap<u32, Vec<(u64, u64)>>,
    /// Per target, the mappings its table covers: range and path.
    covered: HashMap<u32, Vec<(u64, u64, String)>>,
}

/// Rows of a new file and where they go: `UNWIND_ROWS[first_row..]`.
pub type NewRows = (u32, Vec<UnwindRow>);

/// A target's objects to cover, in order of priority, each with the rows
/// to store first when its file is new.
#[derive(Default)]
pub struct Plan {
    pub objects: Vec<(UnwindObject, Option<NewRows>)>,
    /// The covered objects' paths, for the log.
    pub covered: Vec<String>,
}

impl Plan {
    /// The table of the first `count` objects.
    pub fn table(&self, count: usize) -> UnwindTable {
        let mut table = UnwindTable::default();
        for (slot, (object, _)) in table.objects.iter_mut().zip(&self.objects[..count]) {
            *slot = *object;
        }
        table.count = count as u32;
        table
    }
}

impl UnwindTables {
    /// For an array of `capacity` rows.
    pub fn new(capacity: u32) -> UnwindTables {
        UnwindTables {
            capacity: capacity.min(MAX_UNWIND_ROWS),
            ..UnwindTables::default()
        }
    }

    /// Reads `pid`'s mappings and plans its table: every executable file
    /// mapping but the main executable (node keeps frame pointers, and its
    /// rows would be most of the budget) that has an `.eh_frame`, libc first.
    pub fn plan(&mut self, pid: u32) -> std::io::Result<Plan> {
        let mappings = executable_mappings(pid)?;
        let exe = std::fs::metadata(format!("/proc/{pid}/exe"))
            .ok()
            .map(|m| (m.dev(), m.ino()));
        self.seen
            .insert(pid, mappings.iter().map(|m| (m.start, m.end)).collect());
        let mut candidates: Vec<&Mapping> = mappings.iter().filter(|m| m.is_file()).collect();
        // libc and libm hold the leaves that cut stacks: they get the first slots.
        candidates.sort_by_key(|m| !(m.path.contains("/libc.so") || m.path.contains("/libm.so")));
        let mut plan = Plan::default();
        for mapping in candidates {
            if plan.objects.len() == MAX_UNWIND_OBJECTS {
                break;
            }
            let Some(mut file) = open_mapped_file(pid, mapping) else {
                continue;
            };
            let Ok(meta) = file.metadata() else { continue };
            let key = (meta.dev(), meta.ino());
            if Some(key) == exe || self.files.get(&key) == Some(&None) {
                continue;
            }
            let mut data = Vec::new();
            if std::io::Read::read_to_end(&mut file, &mut data).is_err() {
                continue;
            }
            let Some(bias) = load_bias(&*data, mapping) else {
                continue;
            };
            let (stored, write) = match self.files.get(&key) {
                Some(stored) => (*stored, None),
                None => match self.store(&data) {
                    Some((stored, rows)) => {
                        self.files.insert(key, Some(stored));
                        (Some(stored), Some((stored.first_row, rows)))
                    }
                    None => {
                        self.files.insert(key, None);
                        (None, None)
                    }
                },
            };
            let Some(stored) = stored else { continue };
            let object = UnwindObject {
                start: mapping.start,
                end: mapping.end,
                bias: bias.wrapping_add(stored.base),
                first_row: stored.first_row,
                rows: stored.rows,
            };
            plan.objects.push((object, write));
            plan.covered.push(mapping.path.clone());
        }
        self.covered.insert(
            pid,
            plan.objects
                .iter()
                .zip(&plan.covered)
                .map(|((object, _), path)| (object.start, object.end, path.clone()))
                .collect(),
        );
        Ok(plan)
    }

    /// The rows of a file, given their place in `UNWIND_ROWS`; None without
    /// an `.eh_frame` or past the budget.
    fn store(&mut self, data: &[u8]) -> Option<(Stored, Vec<UnwindRow>)> {
        let found = rows_of_elf(data).ok()?;
        let count = u32::try_from(found.rows.len()).ok()?;
        let first_row = self.next_row;
        if first_row.checked_add(count)? > self.capacity {
            tracing::debug!("unwind rows: budget of {} rows reached", self.capacity);
            return None;
        }
        self.next_row += count;
        let stored = Stored {
            first_row,
            rows: count,
            base: found.base,
        };
        Some((stored, found.rows))
    }

    /// Whether `pc` of `pid` lies in no executable mapping its table was
    /// built from: code mapped since (dlopen, or ld.so after an exec).
    pub fn is_new_code(&self, pid: u32, pc: u64) -> bool {
        self.seen
            .get(&pid)
            .is_some_and(|ranges| !ranges.iter().any(|&(s, e)| pc >= s && pc < e))
    }

    /// Whether a mapping `pid`'s table covers is gone (a `dlclose`), or now
    /// holds another file: its rows would unwind whatever code comes there.
    /// False when the mappings cannot be read (the process is gone).
    pub fn covered_unmapped(&self, pid: u32) -> bool {
        let Some(covered) = self.covered.get(&pid).filter(|c| !c.is_empty()) else {
            return false;
        };
        let Ok(now) = executable_mappings(pid) else {
            return false;
        };
        !covered.iter().all(|(start, end, path)| {
            now.iter()
                .any(|m| m.start == *start && m.end == *end && m.path == *path)
        })
    }

    pub fn forget(&mut self, pid: u32) {
        self.seen.remove(&pid);
        self.covered.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodeprof_common::find_unwind_row;

    const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";

    fn lookup(found: &FileRows, address: u64) -> Option<UnwindRow> {
        let offset = u32::try_from(address.checked_sub(found.base)?).ok()?;
        find_unwind_row(0, found.rows.len() as u32, offset, |i| {
            found.rows.get(i as usize).copied()
        })
    }

    fn row(pc: u32, cfa: u8, cfa_offset: u16, rbp_offset: i8) -> UnwindRow {
        UnwindRow {
            pc,
            cfa_offset,
            rbp_offset,
            cfa,
        }
    }

    #[test]
    fn lookup_takes_the_last_row_at_or_before() {
        let rows = [
            row(0, CFA_RSP, 8, 0),
            row(4, CFA_RSP, 16, -2),
            row(10, CFA_RBP, 16, -2),
            row(30, CFA_UNKNOWN, 0, 0),
        ];
        let get = |i: u32| rows.get(i as usize).copied();
        assert_eq!(find_unwind_row(0, 4, 0, get), Some(rows[0]));
        assert_eq!(find_unwind_row(0, 4, 3, get), Some(rows[0]));
        assert_eq!(find_unwind_row(0, 4, 4, get), Some(rows[1]));
        assert_eq!(find_unwind_row(0, 4, 29, get), Some(rows[2]));
        assert_eq!(find_unwind_row(0, 4, 1000, get), Some(rows[3]));
        // Another object's rows start at 1: the search stays inside them.
        assert_eq!(find_unwind_row(1, 2, 0, get), None);
        assert_eq!(find_unwind_row(1, 2, 100, get), Some(rows[2]));
        assert_eq!(find_unwind_row(0, 0, 5, get), None);
        // 2^20 rows take all 20 steps and still find the row.
        let many = |i: u32| Some(row(i * 2, CFA_RSP, 8, 0));
        assert_eq!(
            find_unwind_row(0, 1 << 20, 2001, many).map(|r| r.pc),
            Some(2000)
        );
        assert_eq!(find_unwind_row(0, 1 << 21, 2001, many), None);
    }

    /// One row of an FDE as `readelf --debug-dump=frames-interp` prints it:
    /// its address and the CFA, rbp and return-address columns ("u" when
    /// the FDE says nothing of rbp).
    #[derive(Debug, Clone)]
    struct ReadelfRow {
        loc: u64,
        cfa: String,
        rbp: String,
        ra: String,
    }

    /// Every FDE of `path` as binutils reads it: its pc range and rows. An
    /// FDE without instructions prints no table: it has its CIE's first row.
    fn readelf_fdes(path: &std::path::Path) -> Vec<(std::ops::Range<u64>, Vec<ReadelfRow>)> {
        let out = std::process::Command::new("readelf")
            .arg("--debug-dump=frames-interp")
            .arg(path)
            .output()
            .expect("readelf runs (Debian binutils; `cargo xtask bootstrap` installs it)");
        // readelf exits 1 for a file without `.debug_frame`, having printed `.eh_frame`.
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(" FDE "), "readelf on {}", path.display());
        // Only `.eh_frame`: node 26 also has a `.debug_frame`, which we do not read.
        let text = text.split("Contents of the .debug_frame").next().unwrap();
        let hex = |s: &str| u64::from_str_radix(s, 16).unwrap();
        let mut cies: HashMap<String, Option<ReadelfRow>> = HashMap::new();
        let mut fdes = Vec::new();
        for block in text.split("\n\n") {
            let mut lines = block.lines().filter(|l| !l.trim().is_empty());
            let Some(header) = lines.next() else { continue };
            let fields: Vec<&str> = header.split_whitespace().collect();
            let kind = fields.get(3).copied();
            if kind != Some("CIE") && kind != Some("FDE") {
                continue;
            }
            let mut rows = Vec::new();
            if let Some(columns) = lines.next() {
                let columns: Vec<&str> = columns.split_whitespace().collect();
                assert_eq!(columns[..2], ["LOC", "CFA"], "{header}");
                let at = |name: &str| columns.iter().position(|c| *c == name);
                let (rbp, ra) = (at("rbp"), at("ra").expect("an ra column"));
                for line in lines {
                    // A register rule prints as "r9 (r9)": one cell.
                    let mut cols: Vec<&str> = Vec::new();
                    for word in line.split_whitespace() {
                        if word.starts_with('(') {
                            continue;
                        }
                        cols.push(word);
                    }
                    assert_eq!(cols.len(), columns.len(), "{line}");
                    rows.push(ReadelfRow {
                        loc: hex(cols[0]),
                        cfa: cols[1].to_string(),
                        rbp: rbp.map_or("u", |i| cols[i]).to_string(),
                        ra: cols[ra].to_string(),
                    });
                }
            }
            if kind == Some("CIE") {
                cies.insert(fields[0].to_string(), rows.first().cloned());
                continue;
            }
            let cie = fields[4].strip_prefix("cie=").unwrap();
            let (start, end) = fields[5]
                .strip_prefix("pc=")
                .and_then(|r| r.split_once(".."))
                .unwrap();
            let range = hex(start)..hex(end);
            if rows.is_empty() {
                // A CIE with no initial instructions (libc's signal
                // trampoline's) leaves even the CFA undefined.
                let initial = cies.get(cie).unwrap_or_else(|| panic!("CIE {cie}"));
                rows.push(match initial {
                    Some(row) => ReadelfRow {
                        loc: range.start,
                        ..row.clone()
                    },
                    None => ReadelfRow {
                        loc: range.start,
                        cfa: "undefined".into(),
                        rbp: "u".into(),
                        ra: "u".into(),
                    },
                });
            }
            fdes.push((range, rows));
        }
        fdes
    }

    /// The row the sampler must have for what readelf prints: the rule when
    /// an 8-byte row can say it, else unknown.
    fn expected_row(r: &ReadelfRow) -> (u8, u16, i8) {
        const UNKNOWN_RULE: (u8, u16, i8) = (CFA_UNKNOWN, 0, 0);
        if r.ra != "c-8" {
            return UNKNOWN_RULE;
        }
        let cfa = if let Some(n) = r.cfa.strip_prefix("rsp+") {
            (CFA_RSP, n)
        } else if let Some(n) = r.cfa.strip_prefix("rbp+") {
            (CFA_RBP, n)
        } else {
            return UNKNOWN_RULE;
        };
        let cfa_offset = match cfa.1.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return UNKNOWN_RULE,
        };
        // "u": no rule for rbp, "s": same value: the caller's is still in it.
        let rbp_offset = match r.rbp.as_str() {
            "u" | "s" => 0,
            other => match other.strip_prefix("c-").and_then(|n| n.parse::<i16>().ok()) {
                Some(n) if n > 0 && n % 8 == 0 && n / 8 <= 128 => -(n / 8) as i8,
                _ => return UNKNOWN_RULE,
            },
        };
        (cfa.0, cfa_offset, rbp_offset)
    }

    /// Compares the rows of `path` with readelf's reading of every FDE:
    /// at each row readelf prints, ours is the same rule, or unknown where
    /// readelf shows what a row cannot say. Returns (rows compared, of
    /// them unknown, FDEs skipped because another overlaps them).
    fn compare_with_readelf(path: &std::path::Path) -> (usize, usize, usize) {
        let data = std::fs::read(path).unwrap();
        let found = rows_of_elf(&data).unwrap();
        let mut fdes = readelf_fdes(path);
        fdes.retain(|(range, _)| !range.is_empty());
        fdes.sort_by_key(|(range, _)| range.start);
        let overlaps = |i: usize| {
            let range = &fdes[i].0;
            (i > 0 && fdes[..i].iter().any(|(r, _)| r.end > range.start))
                || fdes.get(i + 1).is_some_and(|(r, _)| r.start < range.end)
        };
        let (mut compared, mut unknown, mut skipped) = (0, 0, 0);
        let mut wrong = Vec::new();
        for (i, (range, rows)) in fdes.iter().enumerate() {
            if overlaps(i) {
                skipped += 1;
                continue;
            }
            // readelf also prints a row an FDE's last advance takes to its
            // very end: the code after it is another function's, or padding.
            for r in rows.iter().filter(|r| range.contains(&r.loc)) {
                let want = expected_row(r);
                let got = lookup(&found, r.loc).map(|g| (g.cfa, g.cfa_offset, g.rbp_offset));
                compared += 1;
                if want.0 == CFA_UNKNOWN {
                    unknown += 1;
                }
                if got != Some(want) && wrong.len() < 10 {
                    wrong.push(format!("at {:x}: readelf {r:?}, row {got:?}", r.loc));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "{}: rows differ from readelf's:\n{}",
            path.display(),
            wrong.join("\n")
        );
        (compared, unknown, skipped)
    }

    /// Every row readelf (binutils, an unwinder written apart from gimli)
    /// prints for libc and for node's `.eh_frame` is the rule the sampler
    /// gets at that pc, or unknown where a row cannot say it.
    #[test]
    fn rows_match_readelf() {
        let mut files = vec![std::path::PathBuf::from(LIBC)];
        // The oldest and newest majors.
        files.extend([18, 26].map(crate::v8::live_tests::node_binary));
        for path in files {
            let (compared, unknown, skipped) = compare_with_readelf(&path);
            eprintln!(
                "{}: {compared} rows agree with readelf ({unknown} of them unknown), \
                 {skipped} overlapping FDEs skipped",
                path.display()
            );
            assert!(compared > 5000, "only {compared} rows compared");
            assert!(unknown < compared / 10, "{unknown} unknown of {compared}");
        }
    }

    #[test]
    fn gaps_and_plt_are_unknown() {
        let data = std::fs::read(LIBC).unwrap();
        let found = rows_of_elf(&data).unwrap();
        // Below the first function: no row; past the last: an unknown row.
        assert_eq!(lookup(&found, found.base.wrapping_sub(1)), None);
        assert_eq!(lookup(&found, found.base).map(|r| r.pc), Some(0));
        assert_eq!(
            find_unwind_row(0, 2, 0, |i| [row(4, CFA_RSP, 8, 0), row(9, CFA_RSP, 16, 0)]
                .get(i as usize)
                .copied()),
            None,
            "an offset before the first row has none"
        );
        assert_eq!(found.rows.last().unwrap().cfa, CFA_UNKNOWN);
        // The PLT's CFA is a DWARF expression.
        let file = object::File::parse(&*data).unwrap();
        if let Some(plt) = file.section_by_name(".plt") {
            assert_eq!(
                lookup(&found, plt.address() + 0x10).map(|r| r.cfa),
                Some(CFA_UNKNOWN)
            );
        }
    }
}
