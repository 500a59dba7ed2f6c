//! Symbols of a node ELF binary: `.dynsym` and the full `.symtab` (node 24+
//! keeps V8 internals only there), filtered while scanning so that only the
//! few hundred names a caller wants are kept out of ~250,000.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection, SectionIndex, SectionKind};

use super::layout::V8Version;

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse {path} as an ELF file: {message}")]
    Parse { path: PathBuf, message: String },
}

/// A symbol of interest: its address and, when its section has file data,
/// the 4 (or 8) bytes at it.
#[derive(Debug, Clone)]
pub struct Sym {
    pub address: u64,
    /// The int32 at the symbol (0 for symbols in `.bss`); None when unreadable.
    pub int: Option<i32>,
    pub executable: bool,
    /// File offset of the symbol's address, when its section has file data.
    pub file_offset: Option<u64>,
    pub in_dynsym: bool,
}

#[derive(Debug, Default)]
pub struct Symbols {
    pub map: HashMap<String, Sym>,
}

impl Symbols {
    pub fn get(&self, name: &str) -> Option<&Sym> {
        self.map.get(name)
    }

    pub fn int(&self, name: &str) -> Option<i32> {
        self.map.get(name).and_then(|s| s.int)
    }

    /// Kept symbols whose name starts with `prefix`, sorted by name.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> Vec<(&'a str, &'a Sym)> {
        let mut v: Vec<_> = self
            .map
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(n, s)| (n.as_str(), s))
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }
}

pub const VERSION_SYMBOLS: [&str; 4] = [
    "_ZN2v88internal7Version6major_E",
    "_ZN2v88internal7Version6minor_E",
    "_ZN2v88internal7Version6build_E",
    "_ZN2v88internal7Version6patch_E",
];
pub const BLOB_CODE: &str = "v8_Default_embedded_blob_code_";
pub const BLOB_CODE_DATA: &str = "v8_Default_embedded_blob_code_data_";
pub const BLOB_CODE_SIZE: &str = "v8_Default_embedded_blob_code_size_";

/// Which symbols [`read_symbols`] keeps: names starting with one of
/// `prefixes` (a cheap byte test on every name) that `keep` accepts.
pub struct SymbolFilter<'a> {
    pub prefixes: &'a [&'a [u8]],
    pub keep: &'a dyn Fn(&str) -> bool,
}

/// The `v8::internal::Version` symbols' values, when all are readable.
pub fn v8_version(symbols: &Symbols) -> Option<V8Version> {
    let parts: Vec<Option<i32>> = VERSION_SYMBOLS.iter().map(|n| symbols.int(n)).collect();
    match parts[..] {
        [Some(major), Some(minor), Some(build), patch] if major > 0 && minor >= 0 && build >= 0 => {
            Some(V8Version::new(
                major as u32,
                minor as u32,
                build as u32,
                patch.unwrap_or(0).max(0) as u32,
            ))
        }
        _ => None,
    }
}

pub fn read_symbols(path: &Path, filter: &SymbolFilter<'_>) -> Result<Symbols, ElfError> {
    let file = File::open(path).map_err(|source| ElfError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    // ReadCache reads only what parsing touches (headers, the symbol and
    // string tables, the 4 bytes of each interesting symbol), not the whole
    // 100+ MB binary.
    let open_err = |source| ElfError::Open {
        path: path.to_path_buf(),
        source,
    };
    let raw = file.try_clone().map_err(open_err)?;
    let cache = object::ReadCache::new(file);
    let parse_err = |message: String| ElfError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let elf = object::File::parse(&cache).map_err(|e| parse_err(e.to_string()))?;
    if !elf.is_64() || !elf.is_little_endian() {
        return Err(parse_err("not a 64-bit little-endian ELF file".to_string()));
    }
    let mut symbols = Symbols::default();
    // Dynamic symbols first, then the full .symtab (node 24+ keeps some
    // V8 symbols only there).
    for (in_dynsym, table, strtab) in [(true, ".dynsym", ".dynstr"), (false, ".symtab", ".strtab")]
    {
        let (Some(table), Some(strtab)) = (elf.section_by_name(table), elf.section_by_name(strtab))
        else {
            continue;
        };
        // The object crate's symbol iterator reads every name through the
        // cache with one syscall each (250k of them): parse the table by hand.
        let (Some(table), Some(strtab)) = (read_section(&raw, &table), read_section(&raw, &strtab))
        else {
            continue;
        };
        for entry in table.chunks_exact(ELF64_SYM_SIZE) {
            let st_name = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]) as usize;
            let st_shndx = u16::from_le_bytes([entry[6], entry[7]]);
            let mut value = [0u8; 8];
            value.copy_from_slice(&entry[8..16]);
            let address = u64::from_le_bytes(value);
            if st_shndx == 0 || st_shndx >= 0xff00 {
                continue; // undefined, absolute, common, or extended index
            }
            let Some(rest) = strtab.get(st_name..) else {
                continue;
            };
            // Cheap prefix test before scanning for the name's end.
            if !filter.prefixes.iter().any(|p| rest.starts_with(p)) {
                continue;
            }
            let Some(name) = rest.split(|&b| b == 0).next() else {
                continue;
            };
            let Ok(name) = std::str::from_utf8(name) else {
                continue;
            };
            if !(filter.keep)(name) || symbols.map.contains_key(name) {
                continue;
            }
            let Ok(section) = elf.section_by_index(SectionIndex(usize::from(st_shndx))) else {
                continue;
            };
            let kind = section.kind();
            let nobits = matches!(
                kind,
                SectionKind::UninitializedData | SectionKind::UninitializedTls
            );
            let in_section =
                address >= section.address() && address - section.address() < section.size().max(1);
            let file_offset = if nobits || !in_section {
                None
            } else {
                section
                    .file_range()
                    .map(|(off, _)| off + (address - section.address()))
            };
            let int = if nobits {
                // A v8dbg constant whose value is 0 lives in .bss.
                in_section.then_some(0)
            } else {
                // (The section's data_range() would read the whole section.)
                file_offset.and_then(|off| {
                    use std::os::unix::fs::FileExt;
                    let mut b = [0u8; 4];
                    raw.read_exact_at(&mut b, off)
                        .ok()
                        .map(|()| i32::from_le_bytes(b))
                })
            };
            symbols.map.insert(
                name.to_string(),
                Sym {
                    address,
                    int,
                    executable: kind == SectionKind::Text,
                    file_offset,
                    in_dynsym,
                },
            );
        }
    }
    Ok(symbols)
}

const ELF64_SYM_SIZE: usize = 24;
/// Largest symbol or string table read (node 26's .strtab is 19 MB).
const MAX_TABLE_BYTES: u64 = 512 << 20;

/// The file bytes of a section, read in one go (`vec![0; n]` is a cheap
/// calloc, unlike the cache's byte-wise fill in unoptimised builds).
fn read_section<'d, S: ObjectSection<'d>>(file: &File, section: &S) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let (offset, size) = section.file_range()?;
    if size > MAX_TABLE_BYTES {
        return None;
    }
    let mut buf = vec![0u8; usize::try_from(size).ok()?];
    file.read_exact_at(&mut buf, offset).ok()?;
    Some(buf)
}
