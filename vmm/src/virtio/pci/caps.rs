//! The virtio vendor capabilities (virtio 1.2 4.1.4) of a function's configuration space:
//! where the common, notify, ISR and device structures are in BAR0, and the PCI
//! configuration access window (`VIRTIO_PCI_CAP_PCI_CFG`) through which a driver can reach
//! BAR0 with configuration cycles only.

use super::layout::*;
use crate::pci::config_space::ConfigSpace;

/// The vendor-specific capability ID.
const CAP_VENDOR: u8 = 0x09;
/// `cfg_type`s.
const COMMON_CFG: u8 = 1;
const NOTIFY_CFG: u8 = 2;
const ISR_CFG: u8 = 3;
const DEVICE_CFG: u8 = 4;
const PCI_CFG: u8 = 5;

/// Offsets, from the window capability's start, of its writable fields.
pub const WINDOW_BAR: usize = 4;
/// `cap.offset`.
pub const WINDOW_OFFSET: usize = 8;
/// `cap.length`.
pub const WINDOW_LENGTH: usize = 12;
/// `pci_cfg_data`.
pub const WINDOW_DATA: usize = 16;

/// The body (after ID and next) of a `virtio_pci_cap` of `len` bytes in all.
fn body(len: u8, cfg_type: u8, offset: u64, length: u64) -> Vec<u8> {
    let mut b = vec![len, cfg_type, 0, 0, 0, 0];
    b.extend_from_slice(&(offset as u32).to_le_bytes());
    b.extend_from_slice(&(length as u32).to_le_bytes());
    b
}

/// Adds the capabilities for `queues` queues and `device_len` bytes of device config;
/// returns the window capability's offset. The space has room for them (checked by a
/// unit test with the most queues), so `None` never comes from here in practice.
pub fn add(config: &mut ConfigSpace, queues: usize, device_len: u64) -> Option<usize> {
    let ro = |b: &[u8]| vec![0u8; b.len()];
    let common = body(16, COMMON_CFG, COMMON, COMMON_LEN);
    config.add_capability(CAP_VENDOR, &common, &ro(&common))?;
    let mut notify = body(
        20,
        NOTIFY_CFG,
        NOTIFY,
        queues as u64 * u64::from(NOTIFY_MULTIPLIER),
    );
    notify.extend_from_slice(&NOTIFY_MULTIPLIER.to_le_bytes());
    config.add_capability(CAP_VENDOR, &notify, &ro(&notify))?;
    let isr = body(16, ISR_CFG, ISR, ISR_LEN);
    config.add_capability(CAP_VENDOR, &isr, &ro(&isr))?;
    if device_len > 0 {
        let device = body(16, DEVICE_CFG, DEVICE, device_len.min(DEVICE_MAX));
        config.add_capability(CAP_VENDOR, &device, &ro(&device))?;
    }
    let mut window = body(20, PCI_CFG, 0, 0);
    window.extend_from_slice(&[0; 4]);
    let mut wmask = vec![0u8; window.len()];
    // bar, offset, length and pci_cfg_data are the driver's (offsets minus ID and next).
    wmask[WINDOW_BAR - 2] = 0xff;
    wmask[WINDOW_OFFSET - 2..WINDOW_DATA + 2].fill(0xff);
    config.add_capability(CAP_VENDOR, &window, &wmask)
}
