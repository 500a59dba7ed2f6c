//! `UNWIND_ROWS` mapped into nodeprof's memory. The map is declared
//! `BPF_F_MMAPABLE`, so a table rebuild writes its rows as plain stores
//! rather than one `bpf(BPF_MAP_UPDATE_ELEM)` call per row (28,000 for
//! libc). aya 0.14 offers neither batch updates nor a mapping of an array,
//! hence memmap2 on the map's file descriptor.

use std::os::fd::{AsFd, AsRawFd};

use nodeprof_common::UnwindRow;

use super::ProbeError;

// The kernel's array and the sampler see 8-byte rows: no padding in ours.
const _: () = assert!(size_of::<UnwindRow>() == 8);

pub(super) struct RowsMap {
    memory: memmap2::MmapMut,
    /// The map itself: its file descriptor is the one aya wrote into the
    /// programs' instructions at load, and programs loaded later (the
    /// sampler, the tracers) are relocated with it, so it stays open. Tests
    /// read rows back through it.
    #[cfg_attr(not(test), allow(dead_code))]
    map: aya::maps::Map,
    len: u32,
}

impl RowsMap {
    /// Maps every row of the array `map` (of [`UnwindRow`]s) for writing.
    pub(super) fn new(map: aya::maps::Map) -> Result<RowsMap, ProbeError> {
        let aya::maps::Map::Array(data) = &map else {
            return Err(ProbeError::Kernel {
                action: "map the unwind rows",
                detail: "not an array".into(),
            });
        };
        let info = data
            .info()
            .map_err(|e| ProbeError::classify("map the unwind rows", &e))?;
        let len = info.max_entries();
        let bytes = len as usize * size_of::<UnwindRow>();
        // SAFETY: the file descriptor is a BPF array map's, created
        // BPF_F_MMAPABLE; the kernel keeps the map alive while it is mapped.
        // Its memory is shared with the sampler, which only reads it, and
        // only the rows of published tables, which are never written again
        // (`cfi::UnwindTables` appends, see [`RowsMap::write`]).
        let memory = unsafe {
            memmap2::MmapOptions::new()
                .len(bytes)
                .map_mut(data.fd().as_fd().as_raw_fd())
        }
        .map_err(|e| ProbeError::classify("map the unwind rows", &e))?;
        Ok(RowsMap { memory, map, len })
    }

    /// Writes `rows` at `first..`. The caller publishes them (updates a
    /// table that refers to them) only after this returns: the release
    /// fence keeps the stores before that update; the `bpf(2)` call that
    /// makes it, and the kernel's RCU publication of the new element, order
    /// them for the sampler on other CPUs.
    pub(super) fn write(&mut self, first: u32, rows: &[UnwindRow]) -> Result<(), ProbeError> {
        let end = first as usize + rows.len();
        if end > self.len as usize {
            return Err(ProbeError::Kernel {
                action: "store unwind rows",
                detail: format!("rows {first}..{end} past the map's {}", self.len),
            });
        }
        // SAFETY: the mapping is page-aligned and `len` rows long, and
        // UnwindRow is plain data (repr(C), integers only, no padding).
        let all = unsafe {
            std::slice::from_raw_parts_mut(
                self.memory.as_mut_ptr().cast::<UnwindRow>(),
                self.len as usize,
            )
        };
        all[first as usize..end].copy_from_slice(rows);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Row `index` as a `bpf(BPF_MAP_LOOKUP_ELEM)` call reads it (tests).
    #[cfg(test)]
    pub(super) fn lookup(&self, index: u32) -> Option<UnwindRow> {
        let array = aya::maps::Array::<&aya::maps::MapData, UnwindRow>::try_from(&self.map).ok()?;
        array.get(&index, 0).ok()
    }

    /// How many rows the map holds.
    pub(super) fn len(&self) -> u32 {
        self.len
    }
}
