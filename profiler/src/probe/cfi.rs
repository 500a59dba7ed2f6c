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
    /// Per target, the executable mappings when its table was last built.
    seen: HashMap<u32, Vec<(u64, u64)>>,
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
        Ok(plan)
    }

    /// The rows of a file, given their place in `UNWIND_ROWS`; None without
    /// an `.eh_frame` or past the budget.
    fn store(&mut self, data: &[u8]) -> Option<(Stored, Vec<UnwindRow>)> {
        let found = rows_of_elf(data).ok()?;
        let count = u32::try_from(found.rows.len()).ok()?;
        let first_row = self.next_row;
        if first_row.checked_add(count)? > MAX_UNWIND_ROWS {
            tracing::debug!("unwind rows: budget of {MAX_UNWIND_ROWS} rows reached");
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

    pub fn forget(&mut self, pid: u32) {
        self.seen.remove(&pid);
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

    /// The CFA and rbp columns `readelf --debug-dump=frames-interp` shows
    /// for the FDE that covers `address`: (loc, cfa, rbp).
    fn readelf_rows(path: &str, address: u64) -> Vec<(u64, String, String)> {
        let out = std::process::Command::new("readelf")
            .args(["--debug-dump=frames-interp", path])
            .output()
            .expect("readelf (binutils) runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut blocks = text.split("\n\n");
        let block = blocks
            .find(|b| {
                b.lines()
                    .next()
                    .and_then(|l| l.split("pc=").nth(1))
                    .is_some_and(|range| {
                        let (s, e) = range.split_once("..").unwrap();
                        let s = u64::from_str_radix(s, 16).unwrap();
                        let e = u64::from_str_radix(e.trim(), 16).unwrap();
                        address >= s && address < e
                    })
            })
            .expect("an FDE covers the function");
        let mut lines = block.lines().skip(1);
        // An FDE that only keeps its CIE's initial rule has no table.
        let Some(header) = lines.next() else {
            return Vec::new();
        };
        let header: Vec<&str> = header.split_whitespace().collect();
        let rbp = header.iter().position(|h| *h == "rbp");
        lines
            .map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                let loc = u64::from_str_radix(cols[0], 16).unwrap();
                let rbp = rbp.map_or("u".to_string(), |i| cols[i].to_string());
                (loc, cols[1].to_string(), rbp)
            })
            .collect()
    }

    fn symbol(data: &[u8], name: &str) -> u64 {
        use object::ObjectSymbol;
        let file = object::File::parse(data).unwrap();
        file.dynamic_symbols()
            .chain(file.symbols())
            .find(|s| s.name() == Ok(name))
            .unwrap_or_else(|| panic!("{name} in libc"))
            .address()
    }

    /// Every row readelf shows for these libc functions is the rule the
    /// sampler gets at that pc (CFA register and offset, where rbp is).
    #[test]
    fn libc_rows_match_readelf() {
        let data = std::fs::read(LIBC).expect("libc.so.6 at its Debian path");
        let found = rows_of_elf(&data).unwrap();
        assert!(
            found.rows.len() > 1000 && found.rows.len() < 100_000,
            "{}",
            found.rows.len()
        );
        assert!(found.rows.windows(2).all(|w| w[0].pc < w[1].pc));
        let mut checked = 0;
        for name in ["malloc", "free", "open64", "mmap", "__printf_fp", "memmove"] {
            let address = symbol(&data, name);
            let expected = readelf_rows(LIBC, address);
            for (loc, cfa, rbp) in expected {
                let got =
                    lookup(&found, loc).unwrap_or_else(|| panic!("{name}: no row at {loc:x}"));
                let want_cfa = if let Some(n) = cfa.strip_prefix("rsp+") {
                    (CFA_RSP, n.parse().unwrap())
                } else if let Some(n) = cfa.strip_prefix("rbp+") {
                    (CFA_RBP, n.parse().unwrap())
                } else {
                    (CFA_UNKNOWN, 0)
                };
                if want_cfa.0 == CFA_UNKNOWN {
                    assert_eq!(got.cfa, CFA_UNKNOWN, "{name} at {loc:x}: {cfa}");
                    continue;
                }
                assert_eq!(
                    (got.cfa, got.cfa_offset),
                    want_cfa,
                    "{name} at {loc:x}: {cfa}"
                );
                let want_rbp = match rbp.strip_prefix("c") {
                    Some(n) => n.parse::<i8>().unwrap() / 8,
                    None => 0,
                };
                assert_eq!(got.rbp_offset, want_rbp, "{name} at {loc:x}: rbp {rbp}");
                checked += 1;
            }
        }
        eprintln!(
            "libc: {} rows, {checked} compared with readelf",
            found.rows.len()
        );
        assert!(checked >= 10, "only {checked} rows compared");
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
