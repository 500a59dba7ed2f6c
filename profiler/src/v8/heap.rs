//! Typed access to V8 heap objects of the target: tagged words, Smis, maps
//! and instance types. Every accessor validates tags and returns `None` on
//! garbage instead of failing loudly.

use super::layout::V8Layout;
use super::memory::{Memory, MemoryExt};

/// A view of the target's V8 heap through `mem`, decoded with `layout`.
pub struct Heap<'a, M: Memory + ?Sized> {
    pub mem: &'a M,
    pub layout: &'a V8Layout,
}

impl<M: Memory + ?Sized> Clone for Heap<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M: Memory + ?Sized> Copy for Heap<'_, M> {}

impl<'a, M: Memory + ?Sized> Heap<'a, M> {
    pub fn new(mem: &'a M, layout: &'a V8Layout) -> Self {
        Heap { mem, layout }
    }

    pub fn is_heap_object(&self, word: u64) -> bool {
        self.layout.is_heap_object(word) && word > 0x1000
    }

    /// The word at byte offset `offset` of the object `tagged` points to.
    pub fn field(&self, tagged: u64, offset: u32) -> Option<u64> {
        if !self.is_heap_object(tagged) {
            return None;
        }
        let addr = self.layout.untag(tagged).checked_add(u64::from(offset))?;
        self.mem.read_u64(addr).ok()
    }

    pub fn field_i32(&self, tagged: u64, offset: u32) -> Option<i32> {
        if !self.is_heap_object(tagged) {
            return None;
        }
        let addr = self.layout.untag(tagged).checked_add(u64::from(offset))?;
        self.mem.read_i32(addr).ok()
    }

    /// A Smi field's value.
    pub fn smi_field(&self, tagged: u64, offset: u32) -> Option<i32> {
        self.field(tagged, offset)
            .and_then(|w| self.layout.smi_value(w))
    }

    /// The instance type of the object `tagged` points to (through its map).
    pub fn instance_type(&self, tagged: u64) -> Option<u16> {
        let map = self.field(tagged, self.layout.heap_object_map)?;
        if !self.is_heap_object(map) {
            return None;
        }
        let addr = self
            .layout
            .untag(map)
            .checked_add(u64::from(self.layout.map_instance_type))?;
        self.mem.read_u16(addr).ok()
    }

    /// Whether `tagged` is a heap object of instance type `ty`.
    pub fn has_type(&self, tagged: u64, ty: u16) -> bool {
        self.instance_type(tagged) == Some(ty)
    }
}
