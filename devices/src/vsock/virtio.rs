//! virtio-vsock constants (virtio 1.2 section 5.10) and the configuration space.

/// The virtio device id of a socket device.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// rx (device to driver), tx (driver to device), event.
pub const NUM_QUEUES: usize = 3;
/// The receive queue.
pub const RX_QUEUE: u16 = 0;
/// The transmit queue.
pub const TX_QUEUE: u16 = 1;
/// The event queue (transport resets: this device never sends one).
pub const EVENT_QUEUE: u16 = 2;
/// The largest queue the backend accepts.
pub const MAX_QUEUE_SIZE: u16 = 256;
/// The host's CID: where hybrid vsock's host side lives.
pub const HOST_CID: u64 = 2;
/// Size of the configuration space: `guest_cid`, le64.
pub const CONFIG_SPACE_SIZE: usize = 8;

/// The configuration space: the guest's CID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigSpace {
    /// The guest's context id.
    pub guest_cid: u64,
}

impl ConfigSpace {
    /// The `size` bytes at `offset` (empty if the range is outside the config space).
    pub fn read(&self, offset: u32, size: u32) -> Vec<u8> {
        let bytes = self.guest_cid.to_le_bytes();
        let (start, len) = (offset as usize, size as usize);
        match start.checked_add(len) {
            Some(end) if end <= CONFIG_SPACE_SIZE => bytes[start..end].to_vec(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_is_the_cid_little_endian() {
        let c = ConfigSpace { guest_cid: 0x0102 };
        assert_eq!(c.read(0, 8), vec![2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(c.read(1, 1), vec![1]);
        assert!(c.read(4, 8).is_empty());
        assert!(c.read(u32::MAX, 2).is_empty());
    }
}
