//! What the PCI bus needs from a function.

use super::config_space::CONFIG_SPACE_SIZE;

/// A memory range a function decodes: one of its BARs, while memory space is enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRange {
    /// The BAR's index.
    pub bar: u8,
    /// Guest-physical base.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

impl BarRange {
    /// The offset of `addr` in the range, if it is inside.
    pub fn offset_of(&self, addr: u64) -> Option<u64> {
        let off = addr.checked_sub(self.base)?;
        (off < self.size).then_some(off)
    }
}

/// A PCI function on the bus. Offsets of configuration accesses are below
/// [`CONFIG_SPACE_SIZE`] and accesses do not cross its end (the bus clips them).
pub trait PciFunction: Send {
    /// Reads its configuration space.
    fn config_read(&mut self, offset: usize, data: &mut [u8]);
    /// Writes its configuration space.
    fn config_write(&mut self, offset: usize, data: &[u8]);
    /// The memory ranges it decodes now.
    fn bar_ranges(&self) -> Vec<BarRange>;
    /// A read at `offset` of BAR `bar`.
    fn bar_read(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    /// A write at `offset` of BAR `bar`.
    fn bar_write(&mut self, _bar: u8, _offset: u64, _data: &[u8]) {}
}

/// Clips an access of `len` bytes at `offset` to the configuration space: how many bytes
/// are inside.
pub fn inside_config_space(offset: usize, len: usize) -> usize {
    CONFIG_SPACE_SIZE.saturating_sub(offset).min(len)
}
