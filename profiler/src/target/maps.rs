//! `/proc/PID/maps` parsing: where the target's code lives.

use std::fs;

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of `start`.
    pub offset: u64,
    pub executable: bool,
    /// File path as the target sees it, or a pseudo name like `[vdso]`, or empty for anonymous memory.
    pub path: String,
}

impl Mapping {
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// Backed by a regular file (not anonymous memory or a kernel pseudo mapping).
    pub fn is_file(&self) -> bool {
        self.path.starts_with('/') && !self.path.starts_with("/memfd:")
    }
}

pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let _inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start().to_string();
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        path,
    })
}

/// Executable mappings of a process, sorted by address.
pub fn read_maps(pid: u32) -> std::io::Result<Vec<Mapping>> {
    let text = fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut maps: Vec<Mapping> = parse_maps(&text)
        .into_iter()
        .filter(|m| m.executable)
        .collect();
    maps.sort_by_key(|m| m.start);
    Ok(maps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_anon_and_pseudo_mappings() {
        let text = "\
00400000-00401000 r--p 00000000 fd:00 123 /usr/bin/node
00401000-02000000 r-xp 00001000 fd:00 123 /usr/bin/node
7f0000000000-7f0000010000 rwxp 00000000 00:00 0 
7ffd1000-7ffd3000 r-xp 00000000 00:00 0                          [vdso]
7f1000000000-7f1000001000 r-xp 00002000 fd:00 9 /opt/my dir/lib.so (deleted)
";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 5);
        assert!(!maps[0].executable);
        assert_eq!(maps[1].offset, 0x1000);
        assert!(maps[1].is_file());
        assert_eq!(maps[2].path, "");
        assert!(!maps[2].is_file());
        assert_eq!(maps[3].path, "[vdso]");
        assert_eq!(maps[4].path, "/opt/my dir/lib.so (deleted)");
        assert!(maps[1].contains(0x401000) && !maps[1].contains(0x2000000));
    }

    #[test]
    fn reads_own_maps() {
        let maps = read_maps(std::process::id()).unwrap();
        assert!(maps.iter().all(|m| m.executable));
        assert!(maps.iter().any(|m| m.is_file()));
    }
}
