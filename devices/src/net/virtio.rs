//! virtio-net constants and the configuration space bytes (virtio 1.2, 5.1).

/// Feature bits (virtio 1.2, 5.1.3).
pub const VIRTIO_NET_F_CSUM: u32 = 0;
/// The driver handles packets with a partial checksum.
pub const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
/// `mtu` in the configuration space is valid.
pub const VIRTIO_NET_F_MTU: u32 = 3;
/// `mac` in the configuration space is valid.
pub const VIRTIO_NET_F_MAC: u32 = 5;
/// The driver takes TSOv4.
pub const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
/// The driver takes TSOv6.
pub const VIRTIO_NET_F_GUEST_TSO6: u32 = 8;
/// The driver takes TSO with ECN.
pub const VIRTIO_NET_F_GUEST_ECN: u32 = 9;
/// The driver takes UFO.
pub const VIRTIO_NET_F_GUEST_UFO: u32 = 10;
/// The device takes TSOv4.
pub const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
/// The device takes TSOv6.
pub const VIRTIO_NET_F_HOST_TSO6: u32 = 12;
/// Receive buffers can be merged.
pub const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;
/// `status` in the configuration space is valid.
pub const VIRTIO_NET_F_STATUS: u32 = 16;
/// Several queue pairs.
pub const VIRTIO_NET_F_MQ: u32 = 22;

/// `status`: link up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// `virtio_net_hdr_v1` (with `num_buffers`): what precedes every frame on both queues,
/// and what the TAP reads and writes with `TUNSETVNETHDRSZ` 12.
pub const NET_HDR_SIZE: usize = 12;
/// Offset of `num_buffers` in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;

/// Largest frame (without the header) accepted from the guest: a 64 KiB GSO frame plus
/// an Ethernet header with a VLAN tag, as Linux's `tun` and QEMU allow.
pub const MAX_FRAME: usize = 65550;

/// Largest queue size offered.
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// Most queue pairs.
pub const MAX_QUEUE_PAIRS: u16 = 16;

/// Size of the configuration space we expose: mac[6], status, max_virtqueue_pairs, mtu.
pub const CONFIG_SPACE_SIZE: usize = 12;

/// The configuration space, as bytes in little-endian order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SPACE_SIZE],
}

impl ConfigSpace {
    /// `mac`, link up, `queue_pairs`, `mtu`.
    pub fn new(mac: [u8; 6], queue_pairs: u16, mtu: u16) -> Self {
        let mut bytes = [0u8; CONFIG_SPACE_SIZE];
        bytes[..6].copy_from_slice(&mac);
        bytes[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        bytes[8..10].copy_from_slice(&queue_pairs.to_le_bytes());
        bytes[10..12].copy_from_slice(&mtu.to_le_bytes());
        ConfigSpace { bytes }
    }

    /// `size` bytes from `offset`; empty when the range is outside the space (a
    /// frontend asking beyond it gets nothing rather than a crash).
    pub fn read(&self, offset: u32, size: u32) -> Vec<u8> {
        let start = offset as usize;
        match start.checked_add(size as usize) {
            Some(end) if end <= CONFIG_SPACE_SIZE => self.bytes[start..end].to_vec(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let c = ConfigSpace::new([2, 1, 2, 3, 4, 5], 4, 9000);
        assert_eq!(c.read(0, 12), [2, 1, 2, 3, 4, 5, 1, 0, 4, 0, 0x28, 0x23]);
        assert_eq!(c.read(10, 2), 9000u16.to_le_bytes());
        assert!(c.read(11, 2).is_empty());
        assert!(c.read(u32::MAX, 2).is_empty());
    }
}
