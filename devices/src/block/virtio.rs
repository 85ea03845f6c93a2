//! The virtio-blk pieces this backend needs on top of `virtio-bindings`: the limits it
//! advertises, the request header, and the device configuration space as bytes.
//!
//! Field offsets come from `virtio_bindings`' `virtio_blk_config` (checked against the
//! virtio 1.2 layout in the tests below); values are written little-endian, as virtio 1.x
//! requires, so the bytes are right whatever the host's endianness.

use std::mem::{offset_of, size_of};

use virtio_bindings::bindings::virtio_blk::{
    virtio_blk_config, virtio_blk_discard_write_zeroes, virtio_blk_outhdr, VIRTIO_BLK_ID_BYTES,
};

pub use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};

/// virtio-blk addresses the disk in 512-byte sectors, whatever its logical block size.
pub const SECTOR_SIZE: u64 = 512;
/// `log2(SECTOR_SIZE)`.
pub const SECTOR_SHIFT: u32 = 9;

/// Size of `struct virtio_blk_outhdr` (type, reserved/ioprio, sector).
pub const HEADER_SIZE: usize = size_of::<virtio_blk_outhdr>();
/// Size of one `struct virtio_blk_discard_write_zeroes` segment.
pub const DISCARD_SEGMENT_SIZE: usize = size_of::<virtio_blk_discard_write_zeroes>();
/// Length of the GET_ID answer (a serial, zero-padded, not necessarily NUL-terminated).
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

/// Data segments per request we accept and advertise in `seg_max`. Descriptors per chain
/// are bounded by `SEG_MAX + 2` (header and status may sit in descriptors of their own).
pub const SEG_MAX: u32 = 126;
/// Most descriptors one request may use: its data segments, the header and the status.
pub const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;
/// Largest queue a driver may configure (`SET_VRING_NUM` above this is refused).
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// Most queues `--queues` accepts (one worker thread each).
pub const MAX_QUEUES: u16 = 64;

/// Sectors one DISCARD segment may cover (2 GiB), advertised in `max_discard_sectors`.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Sectors one WRITE_ZEROES segment may cover (2 GiB), in `max_write_zeroes_sectors`.
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 22;
/// Segments per DISCARD / WRITE_ZEROES request (`max_discard_seg`, `max_write_zeroes_seg`):
/// one, like QEMU, because `fallocate(2)` takes one range at a time.
pub const MAX_DISCARD_SEGMENTS: u32 = 1;
/// Hole-punching granularity hint (`discard_sector_alignment`): a 4 KiB file-system block.
pub const DISCARD_ALIGNMENT_BYTES: u32 = 4096;

/// The request header, decoded (the `ioprio` word is ignored, as virtio 1.x reserves it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    /// `VIRTIO_BLK_T_*`.
    pub request_type: u32,
    /// First 512-byte sector.
    pub sector: u64,
}

impl RequestHeader {
    /// Decodes the 16 little-endian header bytes.
    pub fn from_bytes(bytes: &[u8; HEADER_SIZE]) -> Self {
        let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = *bytes;
        RequestHeader {
            request_type: u32::from_le_bytes([t0, t1, t2, t3]),
            sector: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
        }
    }
}

/// One DISCARD / WRITE_ZEROES segment, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeSegment {
    /// First sector.
    pub sector: u64,
    /// Number of sectors.
    pub num_sectors: u32,
    /// `VIRTIO_BLK_WRITE_ZEROES_FLAG_*`.
    pub flags: u32,
}

impl RangeSegment {
    /// Decodes the 16 little-endian segment bytes.
    pub fn from_bytes(bytes: &[u8; DISCARD_SEGMENT_SIZE]) -> Self {
        let [s0, s1, s2, s3, s4, s5, s6, s7, n0, n1, n2, n3, f0, f1, f2, f3] = *bytes;
        RangeSegment {
            sector: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
            num_sectors: u32::from_le_bytes([n0, n1, n2, n3]),
            flags: u32::from_le_bytes([f0, f1, f2, f3]),
        }
    }
}

/// What goes into the device configuration space.
#[derive(Clone, Copy, Debug)]
pub struct ConfigInfo {
    /// Disk size in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Logical block size in bytes (512 or 4096).
    pub logical_block_size: u32,
    /// Number of request queues.
    pub num_queues: u16,
}

/// Size of the configuration space we serve: the whole of today's `struct virtio_blk_config`
/// (fields we don't offer read as zero), so a frontend that asks for all of it gets it.
pub const CONFIG_SPACE_SIZE: usize = size_of::<virtio_blk_config>();

/// The device configuration space, as the guest reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigSpace([u8; CONFIG_SPACE_SIZE]);

impl ConfigSpace {
    /// Lays out the configuration space for a disk.
    pub fn new(info: ConfigInfo) -> Self {
        let mut space = ConfigSpace([0; CONFIG_SPACE_SIZE]);
        space.put(
            offset_of!(virtio_blk_config, capacity),
            &info.capacity_sectors.to_le_bytes(),
        );
        space.put(
            offset_of!(virtio_blk_config, seg_max),
            &SEG_MAX.to_le_bytes(),
        );
        space.put(
            offset_of!(virtio_blk_config, blk_size),
            &info.logical_block_size.to_le_bytes(),
        );
        space.put(
            offset_of!(virtio_blk_config, num_queues),
            &info.num_queues.to_le_bytes(),
        );
        space.put(
            offset_of!(virtio_blk_config, max_discard_sectors),
            &MAX_DISCARD_SECTORS.to_le_bytes(),
        );
        space.put(
            offset_of!(virtio_blk_config, max_discard_seg),
            &MAX_DISCARD_SEGMENTS.to_le_bytes(),
        );
        let alignment = DISCARD_ALIGNMENT_BYTES.max(info.logical_block_size) >> SECTOR_SHIFT;
        space.put(
            offset_of!(virtio_blk_config, discard_sector_alignment),
            &alignment.to_le_bytes(),
        );
        space.put(
            offset_of!(virtio_blk_config, max_write_zeroes_sectors),
            &MAX_WRITE_ZEROES_SECTORS.to_le_bytes(),
        );
        space.put(
            offset_of!(virtio_blk_config, max_write_zeroes_seg),
            &MAX_DISCARD_SEGMENTS.to_le_bytes(),
        );
        space.put(offset_of!(virtio_blk_config, write_zeroes_may_unmap), &[1]);
        space
    }

    fn put(&mut self, offset: usize, bytes: &[u8]) {
        // Offsets are compile-time field offsets inside the array: in bounds by construction.
        self.0[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// The whole space.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// `size` bytes from `offset`, as `VHOST_USER_GET_CONFIG` must answer: bytes past the end
    /// of the structure read as zero (the vhost-user library refuses anything but exactly
    /// `size` bytes, and a zero answer is what a virtio device gives for an absent field).
    pub fn read(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut out = vec![0u8; size as usize];
        let start = (offset as usize).min(CONFIG_SPACE_SIZE);
        let end = (offset as usize)
            .saturating_add(size as usize)
            .min(CONFIG_SPACE_SIZE);
        out[..end - start].copy_from_slice(&self.0[start..end]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le32(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn config_space_fields_at_virtio_offsets() {
        let space = ConfigSpace::new(ConfigInfo {
            capacity_sectors: 0x1122_3344_5566,
            logical_block_size: 4096,
            num_queues: 4,
        });
        let b = space.as_bytes();
        // Offsets from the virtio 1.2 specification, section 5.2.4, written out by hand.
        assert_eq!(&b[0..8], &0x1122_3344_5566u64.to_le_bytes());
        assert_eq!(le32(b, 8), 0, "size_max: feature not offered");
        assert_eq!(le32(b, 12), SEG_MAX);
        assert_eq!(&b[16..20], &[0; 4], "geometry: not offered");
        assert_eq!(le32(b, 20), 4096);
        assert_eq!(u16::from_le_bytes([b[34], b[35]]), 4);
        assert_eq!(le32(b, 36), MAX_DISCARD_SECTORS);
        assert_eq!(le32(b, 40), 1);
        assert_eq!(le32(b, 44), 8);
        assert_eq!(le32(b, 48), MAX_WRITE_ZEROES_SECTORS);
        assert_eq!(le32(b, 52), 1);
        assert_eq!(b[56], 1);
        assert!(b[57..].iter().all(|&x| x == 0));
        assert_eq!(CONFIG_SPACE_SIZE, 96);
    }

    #[test]
    fn config_read_pads_with_zeros() {
        let space = ConfigSpace::new(ConfigInfo {
            capacity_sectors: 8,
            logical_block_size: 512,
            num_queues: 1,
        });
        assert_eq!(space.read(0, 8), 8u64.to_le_bytes().to_vec());
        assert_eq!(space.read(12, 4), SEG_MAX.to_le_bytes().to_vec());
        let tail = space.read(90, 20);
        assert_eq!(tail.len(), 20);
        assert!(tail.iter().all(|&x| x == 0));
        assert_eq!(space.read(4000, 16), vec![0; 16]);
        assert_eq!(space.read(u32::MAX, 4), vec![0; 4]);
    }

    #[test]
    fn header_and_segment_decode_little_endian() {
        let mut h = [0u8; HEADER_SIZE];
        h[0..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
        h[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        h[8..16].copy_from_slice(&77u64.to_le_bytes());
        assert_eq!(
            RequestHeader::from_bytes(&h),
            RequestHeader {
                request_type: VIRTIO_BLK_T_OUT,
                sector: 77
            }
        );
        let mut s = [0u8; DISCARD_SEGMENT_SIZE];
        s[0..8].copy_from_slice(&9u64.to_le_bytes());
        s[8..12].copy_from_slice(&3u32.to_le_bytes());
        s[12..16].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            RangeSegment::from_bytes(&s),
            RangeSegment {
                sector: 9,
                num_sectors: 3,
                flags: 1
            }
        );
    }
}
