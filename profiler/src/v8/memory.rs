//! Reading the target's memory: one small trait, so the same V8 code can read a
//! live process ([`ProcessMemory`], `process_vm_readv`) or, later, a core file.

use std::io;

/// Largest single read: callers read bigger things (script sources) in chunks.
pub const MAX_READ: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("read of {len} bytes at {addr:#x} exceeds the {max} byte cap", max = MAX_READ)]
    TooLarge { addr: u64, len: usize },
    #[error("address range {addr:#x}+{len} wraps around")]
    BadAddress { addr: u64, len: usize },
    #[error("cannot read {len} bytes at {addr:#x}: {source}")]
    Io {
        addr: u64,
        len: usize,
        source: io::Error,
    },
    #[error("short read at {addr:#x}: {got} of {len} bytes")]
    Short { addr: u64, len: usize, got: usize },
}

/// A source of target memory. `read` fills all of `buf` or fails; it never
/// reads more than [`MAX_READ`] bytes at once.
pub trait Memory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError>;
}

impl<M: Memory + ?Sized> Memory for &M {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        (**self).read(addr, buf)
    }
}

impl<M: Memory + ?Sized> Memory for Box<M> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        (**self).read(addr, buf)
    }
}

impl<M: Memory + ?Sized> Memory for std::sync::Arc<M> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        (**self).read(addr, buf)
    }
}

/// Little-endian fixed-size reads on top of any [`Memory`].
pub trait MemoryExt: Memory {
    fn read_array<const N: usize>(&self, addr: u64) -> Result<[u8; N], MemoryError> {
        let mut buf = [0u8; N];
        self.read(addr, &mut buf)?;
        Ok(buf)
    }
    fn read_u64(&self, addr: u64) -> Result<u64, MemoryError> {
        self.read_array(addr).map(u64::from_le_bytes)
    }
    fn read_u32(&self, addr: u64) -> Result<u32, MemoryError> {
        self.read_array(addr).map(u32::from_le_bytes)
    }
    fn read_i32(&self, addr: u64) -> Result<i32, MemoryError> {
        self.read_array(addr).map(i32::from_le_bytes)
    }
    fn read_u16(&self, addr: u64) -> Result<u16, MemoryError> {
        self.read_array(addr).map(u16::from_le_bytes)
    }
    fn read_u8(&self, addr: u64) -> Result<u8, MemoryError> {
        self.read_array::<1>(addr).map(|b| b[0])
    }
    /// Reads `words.len()` consecutive little-endian u64 words.
    fn read_u64s(&self, addr: u64, words: &mut [u64]) -> Result<(), MemoryError> {
        let mut bytes = [0u8; 512];
        let mut done = 0;
        while done < words.len() {
            let n = (words.len() - done).min(bytes.len() / 8);
            let at = addr.wrapping_add(8 * done as u64);
            self.read(at, &mut bytes[..8 * n])?;
            for (i, w) in words[done..done + n].iter_mut().enumerate() {
                *w = u64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().unwrap_or_default());
            }
            done += n;
        }
        Ok(())
    }
}

impl<M: Memory + ?Sized> MemoryExt for M {}

/// Checks a read request against the size cap and address wrap-around.
pub fn check_request(addr: u64, len: usize) -> Result<(), MemoryError> {
    if len > MAX_READ {
        return Err(MemoryError::TooLarge { addr, len });
    }
    if addr.checked_add(len as u64).is_none() {
        return Err(MemoryError::BadAddress { addr, len });
    }
    Ok(())
}

/// The memory of a live process, read with `process_vm_readv` (needs ptrace
/// access to the target: root, or the same user under Yama scope 0/1 for a child).
#[derive(Debug, Clone, Copy)]
pub struct ProcessMemory {
    pid: u32,
}

impl ProcessMemory {
    pub fn new(pid: u32) -> ProcessMemory {
        ProcessMemory { pid }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl Memory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = buf.len();
        check_request(addr, len)?;
        if len == 0 {
            return Ok(());
        }
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: len,
        };
        let remote = libc::iovec {
            iov_base: addr as usize as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: `local` describes `buf`, which is valid for writes of `len`
        // bytes; the remote range is only read by the kernel, which checks it.
        let got =
            unsafe { libc::process_vm_readv(self.pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        if got < 0 {
            return Err(MemoryError::Io {
                addr,
                len,
                source: io::Error::last_os_error(),
            });
        }
        // A single remote iovec is read up to the first unreadable page: a short
        // count means the rest is not mapped.
        if got as usize != len {
            return Err(MemoryError::Short {
                addr,
                len,
                got: got as usize,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! An in-memory [`Memory`] for unit tests of pure decoding logic.
    use super::*;
    use std::collections::BTreeMap;

    /// Sparse memory made of byte segments at fixed addresses.
    #[derive(Default)]
    pub struct FakeMemory {
        segments: BTreeMap<u64, Vec<u8>>,
    }

    impl FakeMemory {
        pub fn new() -> FakeMemory {
            FakeMemory::default()
        }

        pub fn put(&mut self, addr: u64, bytes: &[u8]) {
            self.segments.insert(addr, bytes.to_vec());
        }

        pub fn put_u64s(&mut self, addr: u64, words: &[u64]) {
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            self.put(addr, &bytes);
        }
    }

    /// A tiny fake V8 heap on top of [`FakeMemory`]: maps per instance type
    /// (instance type at +12) and objects `[map][body…]` (8-byte aligned).
    pub struct FakeHeap {
        pub mem: FakeMemory,
        next: u64,
        maps: BTreeMap<u16, u64>,
    }

    impl Default for FakeHeap {
        fn default() -> Self {
            FakeHeap {
                mem: FakeMemory::new(),
                next: 0x10_0000,
                maps: BTreeMap::new(),
            }
        }
    }

    impl FakeHeap {
        /// Reserves `len` bytes (8-aligned) and returns their address.
        pub fn raw(&mut self, bytes: &[u8]) -> u64 {
            let addr = self.next;
            self.mem.put(addr, bytes);
            self.next += (bytes.len() as u64).div_ceil(8) * 8 + 16;
            addr
        }

        /// The tagged map of instance type `ty`.
        pub fn map(&mut self, ty: u16) -> u64 {
            if let Some(&m) = self.maps.get(&ty) {
                return m;
            }
            let mut bytes = vec![0u8; 16];
            bytes[12..14].copy_from_slice(&ty.to_le_bytes());
            let m = self.raw(&bytes) + 1;
            self.maps.insert(ty, m);
            m
        }

        /// A heap object of type `ty` whose bytes after the map word are `body`; tagged.
        pub fn object(&mut self, ty: u16, body: &[u8]) -> u64 {
            let map = self.map(ty);
            let mut bytes = map.to_le_bytes().to_vec();
            bytes.extend_from_slice(body);
            self.raw(&bytes) + 1
        }

        /// An object whose fields after the map are the given words; tagged.
        pub fn object_words(&mut self, ty: u16, words: &[u64]) -> u64 {
            let body: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            self.object(ty, &body)
        }

        /// Overwrites the word at byte `offset` of object `tagged`.
        pub fn set_word(&mut self, tagged: u64, offset: u64, word: u64) {
            let addr = tagged - 1 + offset;
            let (&start, seg) = self
                .mem
                .segments
                .range_mut(..=addr)
                .next_back()
                .expect("object");
            let off = (addr - start) as usize;
            seg[off..off + 8].copy_from_slice(&word.to_le_bytes());
        }
    }

    pub fn smi(v: i32) -> u64 {
        u64::from(v as u32) << 32
    }

    impl Memory for FakeMemory {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
            check_request(addr, buf.len())?;
            let short = || MemoryError::Short {
                addr,
                len: buf.len(),
                got: 0,
            };
            let (start, seg) = self.segments.range(..=addr).next_back().ok_or_else(short)?;
            let off = (addr - start) as usize;
            let end = off.checked_add(buf.len()).ok_or_else(short)?;
            let src = seg.get(off..end).ok_or_else(short)?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_memory_reads_own_memory_and_rejects_bad_ranges() {
        let mem = ProcessMemory::new(std::process::id());
        let value: u64 = 0x1122_3344_5566_7788;
        let addr = &value as *const u64 as u64;
        assert_eq!(mem.read_u64(addr).unwrap(), value);
        assert_eq!(mem.read_u16(addr).unwrap(), 0x7788);
        assert!(matches!(mem.read_u64(0), Err(MemoryError::Io { .. })));
        let mut big = vec![0u8; MAX_READ + 1];
        assert!(matches!(
            mem.read(addr, &mut big),
            Err(MemoryError::TooLarge { .. })
        ));
        assert!(matches!(
            mem.read_u64(u64::MAX - 3),
            Err(MemoryError::BadAddress { .. })
        ));
        let mut words = [0u64; 3];
        let arr = [1u64, 2, 3];
        mem.read_u64s(arr.as_ptr() as u64, &mut words).unwrap();
        assert_eq!(words, arr);
    }
}
