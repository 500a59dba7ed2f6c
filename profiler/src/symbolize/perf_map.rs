//! V8's perf map (`/tmp/perf-PID.map`, written with `--perf-basic-prof`):
//! `START SIZE name` per line, hex addresses.
//!
//! blazesym reads perf maps only through a live `/proc/PID`; ours must still
//! work after the target exited, so we parse the (trivial) format ourselves.

/// JIT code ranges and their names, sorted by start address.
#[derive(Debug, Default, Clone)]
pub struct PerfMap {
    entries: Vec<(u64, u64, String)>,
}

impl PerfMap {
    pub fn parse(text: &str) -> PerfMap {
        let mut entries: Vec<(u64, u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.splitn(3, ' ');
                let start =
                    u64::from_str_radix(fields.next()?.trim_start_matches("0x"), 16).ok()?;
                let size = u64::from_str_radix(fields.next()?.trim_start_matches("0x"), 16).ok()?;
                let name = fields.next()?.trim().to_string();
                Some((start, start.checked_add(size)?, name))
            })
            .collect();
        // Later entries win: V8 reuses code space after GC and appends the new owner.
        entries.reverse();
        entries.sort_by_key(|e| e.0);
        entries.dedup_by_key(|e| e.0);
        PerfMap { entries }
    }

    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let i = self.entries.partition_point(|e| e.0 <= addr);
        let (start, end, name) = self.entries.get(i.checked_sub(1)?)?;
        (*start <= addr && addr < *end).then_some(name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_ranges() {
        let map = PerfMap::parse(
            "1000 10 Builtin:ArgumentsAdaptorTrampoline\n\
             2000 20 JS:~fib /app/x.js:3:13\n\
             bogus line\n\
             0x3000 8 LazyCompile:*work /app/x.js:9:1\n",
        );
        assert_eq!(
            map.lookup(0x1000),
            Some("Builtin:ArgumentsAdaptorTrampoline")
        );
        assert_eq!(
            map.lookup(0x100f),
            Some("Builtin:ArgumentsAdaptorTrampoline")
        );
        assert_eq!(map.lookup(0x1010), None);
        assert_eq!(map.lookup(0x2005), Some("JS:~fib /app/x.js:3:13"));
        assert_eq!(map.lookup(0x3007), Some("LazyCompile:*work /app/x.js:9:1"));
        assert_eq!(map.lookup(0xfff), None);
    }

    #[test]
    fn newest_entry_for_a_reused_address_wins() {
        let map = PerfMap::parse("1000 10 old\n1000 10 new\n");
        assert_eq!(map.lookup(0x1004), Some("new"));
    }
}
