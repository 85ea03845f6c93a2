//! Where things are in a virtio-pci function's BAR0. Each structure has its own page, so
//! a guest can map them separately; the guest finds them through the capability list.

/// Size of BAR0 (a power of two; the vmm places BAR0s at multiples of it).
pub const BAR_SIZE: u64 = 0x8000;
/// The common configuration structure.
pub const COMMON: u64 = 0x0000;
/// Its length (virtio 1.2 4.1.4.3, up to `queue_device`; no `queue_notify_data` or
/// `queue_reset`, which need features this device does not offer).
pub const COMMON_LEN: u64 = 0x38;
/// The ISR status byte.
pub const ISR: u64 = 0x1000;
/// Length of the ISR structure.
pub const ISR_LEN: u64 = 1;
/// The device-specific configuration.
pub const DEVICE: u64 = 0x2000;
/// Room for it.
pub const DEVICE_MAX: u64 = 0x1000;
/// The notify area: queue `q` is notified by a write at `NOTIFY + q * NOTIFY_MULTIPLIER`.
pub const NOTIFY: u64 = 0x3000;
/// `notify_off_multiplier`: each queue has its own address (its own ioeventfd).
pub const NOTIFY_MULTIPLIER: u32 = 4;
/// Room for the notify area.
pub const NOTIFY_MAX: u64 = 0x1000;
/// The MSI-X table.
pub const MSIX_TABLE: u64 = 0x4000;
/// Room for the table: 256 vectors of 16 bytes.
pub const MSIX_TABLE_MAX: u64 = 0x1000;
/// The MSI-X pending-bit array.
pub const MSIX_PBA: u64 = 0x5000;
/// Most queues a function can have: one vector each plus the config vector must fit the
/// table, and each queue a notify address.
pub const MAX_QUEUES: usize = (MSIX_TABLE_MAX / 16) as usize - 1;

const _: () = {
    assert!(COMMON + COMMON_LEN <= ISR && ISR + ISR_LEN <= DEVICE);
    assert!(DEVICE + DEVICE_MAX <= NOTIFY);
    assert!(NOTIFY + NOTIFY_MAX <= MSIX_TABLE);
    assert!(MAX_QUEUES as u64 * NOTIFY_MULTIPLIER as u64 <= NOTIFY_MAX);
    assert!(MSIX_TABLE + MSIX_TABLE_MAX <= MSIX_PBA && MSIX_PBA + 0x1000 <= BAR_SIZE);
    assert!(BAR_SIZE.is_power_of_two());
};
