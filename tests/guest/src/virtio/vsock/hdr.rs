//! The virtio-vsock packet header (virtio 1.2, 5.10.6): 44 bytes, little endian, in front
//! of every packet on the receive and transmit queues.

/// Header bytes.
pub const HDR_LEN: usize = 44;

/// The well-known CID of the host.
pub const HOST_CID: u64 = 2;

/// `type`: stream socket (the only type this driver speaks).
pub const TYPE_STREAM: u16 = 1;
/// `type`: seqpacket socket (needs VIRTIO_VSOCK_F_SEQPACKET; refused here).
pub const TYPE_SEQPACKET: u16 = 2;

/// Operations (`op`).
pub mod op {
    /// Connect.
    pub const REQUEST: u16 = 1;
    /// Accept a connect.
    pub const RESPONSE: u16 = 2;
    /// Reset: the connection is gone (or never was).
    pub const RST: u16 = 3;
    /// No more receiving and/or sending (flags).
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// Here is my buffer space and how much I consumed.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Please send a CREDIT_UPDATE.
    pub const CREDIT_REQUEST: u16 = 7;

    /// A short name for messages.
    pub fn name(op: u16) -> &'static str {
        match op {
            REQUEST => "REQUEST",
            RESPONSE => "RESPONSE",
            RST => "RST",
            SHUTDOWN => "SHUTDOWN",
            RW => "RW",
            CREDIT_UPDATE => "CREDIT_UPDATE",
            CREDIT_REQUEST => "CREDIT_REQUEST",
            _ => "unknown",
        }
    }
}

/// SHUTDOWN flags.
pub mod shutdown {
    /// The sender will receive no more.
    pub const RCV: u32 = 1;
    /// The sender will send no more.
    pub const SEND: u32 = 2;
    /// Both.
    pub const BOTH: u32 = RCV | SEND;
}

/// A packet header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hdr {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload bytes after the header.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags (SHUTDOWN).
    pub flags: u32,
    /// The sender's receive buffer for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from it, ever (wrapping).
    pub fwd_cnt: u32,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | u64::from(u32_at(b, at + 4)) << 32
}

impl Hdr {
    /// The header at the start of `bytes`, if there are at least [`HDR_LEN`] of them.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let b = bytes.get(..HDR_LEN)?;
        Some(Self {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            type_: u16_at(b, 28),
            op: u16_at(b, 30),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        })
    }

    /// Write the header into the first [`HDR_LEN`] bytes of `out` (which must hold them).
    pub fn write(&self, out: &mut [u8]) {
        let o = &mut out[..HDR_LEN];
        o[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        o[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        o[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        o[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        o[24..28].copy_from_slice(&self.len.to_le_bytes());
        o[28..30].copy_from_slice(&self.type_.to_le_bytes());
        o[30..32].copy_from_slice(&self.op.to_le_bytes());
        o[32..36].copy_from_slice(&self.flags.to_le_bytes());
        o[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        o[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
    }

    /// The header as bytes.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        self.write(&mut b);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_the_specs() {
        let h = Hdr {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0x1122_3344,
            dst_port: 5000,
            len: 7,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 3,
            buf_alloc: 0x10000,
            fwd_cnt: 0xdead_beef,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[8..16], &[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[16..20], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&b[20..24], &5000u32.to_le_bytes());
        assert_eq!(&b[24..28], &[7, 0, 0, 0]);
        assert_eq!(&b[28..30], &[1, 0]);
        assert_eq!(&b[30..32], &[5, 0]);
        assert_eq!(&b[32..36], &[3, 0, 0, 0]);
        assert_eq!(&b[36..40], &[0, 0, 1, 0]);
        assert_eq!(&b[40..44], &[0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(Hdr::parse(&b), Some(h));
    }

    #[test]
    fn short_header_is_none() {
        assert_eq!(Hdr::parse(&[0u8; HDR_LEN - 1]), None);
        assert_eq!(Hdr::parse(&[]), None);
        assert!(Hdr::parse(&[0u8; HDR_LEN + 5]).is_some());
    }
}
