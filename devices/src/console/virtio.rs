//! virtio-console constants and the configuration space (virtio 1.2, 5.3), port 0 only.

/// The virtio device ID of a console.
pub const VIRTIO_ID_CONSOLE: u32 = 3;
/// Feature bit: `cols` and `rows` in the configuration space are valid.
pub const VIRTIO_CONSOLE_F_SIZE: u32 = 0;

/// Queue 0: receiveq of port 0 (host to guest).
pub const RX_QUEUE: u16 = 0;
/// Queue 1: transmitq of port 0 (guest to host).
pub const TX_QUEUE: u16 = 1;
/// Queues of a single-port console (no MULTIPORT, so no control queues).
pub const NUM_QUEUES: usize = 2;
/// Largest queue we accept.
pub const MAX_QUEUE_SIZE: u16 = 256;

/// Bytes of the configuration space: cols u16, rows u16, max_nr_ports u32, emerg_wr u32.
pub const CONFIG_SPACE_SIZE: usize = 12;

/// The configuration space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigSpace {
    /// Terminal columns (0 when unknown).
    pub cols: u16,
    /// Terminal rows (0 when unknown).
    pub rows: u16,
}

impl ConfigSpace {
    /// The little-endian bytes the guest reads. `max_nr_ports` is 1 (it is only meaningful
    /// with MULTIPORT, which we don't offer); `emerg_wr` reads as 0 (we don't offer
    /// EMERG_WRITE).
    pub fn bytes(&self) -> [u8; CONFIG_SPACE_SIZE] {
        let mut b = [0u8; CONFIG_SPACE_SIZE];
        b[0..2].copy_from_slice(&self.cols.to_le_bytes());
        b[2..4].copy_from_slice(&self.rows.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b
    }

    /// `size` bytes from `offset`; an empty vector when the range is outside the space
    /// (vhost-user-backend then fails the GET_CONFIG).
    pub fn read(&self, offset: u32, size: u32) -> Vec<u8> {
        let bytes = self.bytes();
        let (Ok(start), Ok(len)) = (usize::try_from(offset), usize::try_from(size)) else {
            return Vec::new();
        };
        match start.checked_add(len) {
            Some(end) if end <= bytes.len() => bytes[start..end].to_vec(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_bounds() {
        let c = ConfigSpace { cols: 80, rows: 24 };
        assert_eq!(c.bytes(), [80, 0, 24, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(c.read(2, 2), vec![24, 0]);
        assert_eq!(c.read(0, 12).len(), 12);
        assert!(c.read(8, 8).is_empty());
        assert!(c.read(u32::MAX, 2).is_empty());
    }
}
