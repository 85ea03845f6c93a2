//! How many bytes of config space a device has, from its type and offered features.
//!
//! Needed because many vhost-user backends (every libvhost-user one: qemu-storage-daemon,
//! QEMU's contrib backends) ignore GET_CONFIG's offset and always answer from the start of
//! their config space, refusing sizes larger than it. So the frontend always asks for the
//! whole config space from offset 0 and serves the guest's access from that, as QEMU's own
//! vhost-user frontends do.

/// virtio-blk feature bits that extend its config space.
const VIRTIO_BLK_F_DISCARD: u32 = 13;
const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;
const VIRTIO_BLK_F_SECURE_ERASE: u32 = 16;
const VIRTIO_BLK_F_ZONED: u32 = 17;
/// Virtio device ids.
const VIRTIO_ID_NET: u32 = 1;
const VIRTIO_ID_BLOCK: u32 = 2;
const VIRTIO_ID_CONSOLE: u32 = 3;
const VIRTIO_ID_VSOCK: u32 = 19;
/// virtio-net feature bits that extend its config space.
const VIRTIO_NET_F_MTU: u32 = 3;
const VIRTIO_NET_F_STATUS: u32 = 16;
const VIRTIO_NET_F_MQ: u32 = 22;
const VIRTIO_NET_F_SPEED_DUPLEX: u32 = 63;
/// virtio-console feature bits that extend its config space.
const VIRTIO_CONSOLE_F_MULTIPORT: u32 = 1;
const VIRTIO_CONSOLE_F_EMERG_WRITE: u32 = 2;

/// The config-space size of a device of `device_type` offering `features` (at most the
/// 256 bytes a vhost-user message carries).
pub fn config_size(device_type: u32, features: u64) -> usize {
    match device_type {
        VIRTIO_ID_BLOCK => blk_config_size(features),
        VIRTIO_ID_NET => sized_by(
            features,
            6,
            &[
                (VIRTIO_NET_F_STATUS, 8),
                (VIRTIO_NET_F_MQ, 10),
                (VIRTIO_NET_F_MTU, 12),
                (VIRTIO_NET_F_SPEED_DUPLEX, 17),
            ],
        ),
        VIRTIO_ID_CONSOLE => sized_by(
            features,
            4,
            &[
                (VIRTIO_CONSOLE_F_MULTIPORT, 8),
                (VIRTIO_CONSOLE_F_EMERG_WRITE, 12),
            ],
        ),
        // guest_cid (le64), whatever the features.
        VIRTIO_ID_VSOCK => 8,
        _ => 256,
    }
}

/// `base` bytes, extended to the end of the last field a feature in `features` brings.
fn sized_by(features: u64, base: usize, extents: &[(u32, usize)]) -> usize {
    extents
        .iter()
        .filter(|(bit, _)| features & (1 << bit) != 0)
        .map(|(_, end)| *end)
        .fold(base, usize::max)
}

/// `struct virtio_blk_config` up to the last field the features use (as QEMU sizes it).
fn blk_config_size(features: u64) -> usize {
    let has = |bit: u32| features & (1 << bit) != 0;
    let mut size = 36; // through num_queues
    if has(VIRTIO_BLK_F_DISCARD) {
        size = size.max(48); // through discard_sector_alignment
    }
    if has(VIRTIO_BLK_F_WRITE_ZEROES) {
        size = size.max(57); // through write_zeroes_may_unmap
    }
    if has(VIRTIO_BLK_F_SECURE_ERASE) {
        size = size.max(72); // through secure_erase_sector_alignment
    }
    if has(VIRTIO_BLK_F_ZONED) {
        size = size.max(96); // through the zoned characteristics
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_and_console_sizes_follow_features() {
        assert_eq!(config_size(1, 0), 6);
        assert_eq!(config_size(1, (1 << 16) | (1 << 22) | (1 << 3)), 12);
        assert_eq!(config_size(3, 1), 4);
        assert_eq!(config_size(3, 1 << 2), 12);
    }

    #[test]
    fn blk_sizes_follow_features() {
        assert_eq!(config_size(2, 0), 36);
        assert_eq!(config_size(2, 1 << 13), 48);
        assert_eq!(config_size(2, (1 << 13) | (1 << 14)), 57);
        assert_eq!(config_size(2, 1 << 17), 96);
        assert_eq!(config_size(9, 0), 256);
    }
}
