//! What the soak scenarios (`blk-soak`, `net-soak`, `console-soak`) write and check, and
//! how they count; pure functions, unit-tested on the host. The scenarios themselves are
//! in the binary (`src/scenarios/blk/soak.rs`, `net/soak.rs`, `console_soak.rs`).
//!
//! - Block: write `n` (from 1) goes to sector `(n - 1) % area` of the first
//!   `area = min(capacity, 2048)` sectors: bytes 0..8 [`BLK_MAGIC`], 8..16 `n` (u64 LE),
//!   16..24 the sector (u64 LE), byte `i >= 24` = `(n * 31 + i) as u8`. The host checks
//!   the last `area` writes in the image the same way.
//! - Net: datagram `seq` is [`NET_MAGIC`], `seq` (u64 LE), then byte `i >= 12` =
//!   `(seq * 13 + i * 7) as u8`, [`net_len`]`(seq)` bytes in all; the host echoes it. A
//!   [`SeqTracker`] counts what came back: received (distinct), duplicates, and at the end
//!   lost = sent - received.
//! - Console: line `console-soak <seq>\n` ([`console_line`]).
//! - [`Stalls`]: the gaps between consecutive completed operations.

use core::fmt;

/// The first 8 bytes of every sector `blk-soak` writes.
pub const BLK_MAGIC: [u8; 8] = *b"BHSOAK\0\0";
/// Sector size.
pub const SECTOR: usize = 512;
/// Most sectors `blk-soak` writes over.
pub const BLK_AREA_MAX: u64 = 2048;
/// A FLUSH after every this many writes (and one at the end).
pub const FLUSH_EVERY: u64 = 16;

/// The sectors `blk-soak` cycles over on a disk of `capacity` sectors.
pub fn blk_area(capacity: u64) -> u64 {
    capacity.min(BLK_AREA_MAX)
}

/// Where write `n` (from 1) goes in an area of `area` sectors (both at least 1).
pub fn blk_sector(n: u64, area: u64) -> u64 {
    n.wrapping_sub(1) % area.max(1)
}

/// Byte `i` of the sector write `n` puts at sector `sector`.
pub fn blk_byte(n: u64, sector: u64, i: usize) -> u8 {
    match i {
        0..8 => BLK_MAGIC[i],
        8..16 => n.to_le_bytes()[i - 8],
        16..24 => sector.to_le_bytes()[i - 16],
        _ => n.wrapping_mul(31).wrapping_add(i as u64) as u8,
    }
}

/// Fill `buf` (one sector) with write `n` to `sector`.
pub fn fill_blk(buf: &mut [u8], n: u64, sector: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = blk_byte(n, sector, i);
    }
}

/// The first byte of `buf` that is not write `n` to `sector`: (index, expected, found).
pub fn check_blk(buf: &[u8], n: u64, sector: u64) -> Option<(usize, u8, u8)> {
    buf.iter()
        .enumerate()
        .find(|&(i, &b)| b != blk_byte(n, sector, i))
        .map(|(i, &b)| (i, blk_byte(n, sector, i), b))
}

/// The first 4 bytes of every `net-soak` datagram.
pub const NET_MAGIC: [u8; 4] = *b"BHNS";
/// Magic and sequence number.
pub const NET_HEADER: usize = 12;
/// The sequence number of the warm-up datagram (sent until the host echoes it; not
/// counted).
pub const NET_HELLO: u64 = u64::MAX;

/// The payload length of datagram `seq`: 64 to 1384 bytes, changing with `seq`.
pub fn net_len(seq: u64) -> usize {
    64 + (seq % 16) as usize * 88
}

/// Byte `i` of datagram `seq`.
pub fn net_byte(seq: u64, i: usize) -> u8 {
    match i {
        0..4 => NET_MAGIC[i],
        4..12 => seq.to_le_bytes()[i - 4],
        _ => seq.wrapping_mul(13).wrapping_add(i as u64 * 7) as u8,
    }
}

/// Fill `payload` (of [`net_len`]`(seq)` bytes) with datagram `seq`.
pub fn fill_net(payload: &mut [u8], seq: u64) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b = net_byte(seq, i);
    }
}

/// Why an echoed datagram is not one that was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetCorrupt {
    /// Shorter than the header (its length).
    Short(usize),
    /// The first 4 bytes are not [`NET_MAGIC`].
    Magic([u8; 4]),
    /// A length other than [`net_len`] of its sequence number.
    Length {
        /// The sequence number.
        seq: u64,
        /// The right length.
        expected: usize,
        /// The length received.
        found: usize,
    },
    /// A payload byte differs.
    Byte {
        /// The sequence number.
        seq: u64,
        /// Its index.
        at: usize,
        /// What was sent.
        expected: u8,
        /// What came back.
        found: u8,
    },
}

impl fmt::Display for NetCorrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Short(n) => write!(f, "an echoed datagram of {n} bytes (no header)"),
            Self::Magic(m) => write!(f, "an echoed datagram starts {m:02x?}, not \"BHNS\""),
            Self::Length {
                seq,
                expected,
                found,
            } => write!(
                f,
                "echo of datagram {seq} is {found} bytes long, {expected} were sent"
            ),
            Self::Byte {
                seq,
                at,
                expected,
                found,
            } => write!(
                f,
                "echo of datagram {seq}: byte {at} is {found:#04x}, {expected:#04x} was sent"
            ),
        }
    }
}

/// Check an echoed payload; its sequence number if it is intact.
pub fn check_net(payload: &[u8]) -> Result<u64, NetCorrupt> {
    let header = payload
        .get(..NET_HEADER)
        .ok_or(NetCorrupt::Short(payload.len()))?;
    let magic = [header[0], header[1], header[2], header[3]];
    if magic != NET_MAGIC {
        return Err(NetCorrupt::Magic(magic));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&header[4..12]);
    let seq = u64::from_le_bytes(seq);
    if payload.len() != net_len(seq) {
        return Err(NetCorrupt::Length {
            seq,
            expected: net_len(seq),
            found: payload.len(),
        });
    }
    match payload
        .iter()
        .enumerate()
        .skip(NET_HEADER)
        .find(|&(i, &b)| b != net_byte(seq, i))
    {
        None => Ok(seq),
        Some((at, &found)) => Err(NetCorrupt::Byte {
            seq,
            at,
            expected: net_byte(seq, at),
            found,
        }),
    }
}

/// Sequence numbers a [`SeqTracker`] remembers (a window behind the newest sent).
pub const TRACKED: u64 = 8192;

/// What arrived of the datagrams sent, by sequence number.
pub struct SeqTracker {
    /// Datagrams sent: sequence numbers `0..sent`.
    sent: u64,
    /// Bit per sequence number `seq % TRACKED`, for `seq` in `sent - TRACKED..sent`.
    seen: [u64; (TRACKED / 64) as usize],
    received: u64,
    duplicates: u64,
    late: u64,
}

/// What an arrival was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// First echo of this datagram.
    New,
    /// It came back before.
    Duplicate,
    /// Older than the window: counted as a duplicate (it may also be the first echo of a
    /// datagram given up long ago).
    Late,
}

/// An echo of a datagram that was never sent (its sequence number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeverSent(pub u64);

impl Default for SeqTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl SeqTracker {
    /// Nothing sent yet.
    pub const fn new() -> Self {
        Self {
            sent: 0,
            seen: [0; (TRACKED / 64) as usize],
            received: 0,
            duplicates: 0,
            late: 0,
        }
    }

    /// The sequence number of the next datagram, now counted as sent.
    pub fn send(&mut self) -> u64 {
        let seq = self.sent;
        // Its slot last held seq - TRACKED, which falls out of the window.
        self.set(seq, false);
        self.sent += 1;
        seq
    }

    fn bit(seq: u64) -> (usize, u64) {
        let slot = seq % TRACKED;
        ((slot / 64) as usize, 1 << (slot % 64))
    }

    fn set(&mut self, seq: u64, on: bool) {
        let (word, bit) = Self::bit(seq);
        if on {
            self.seen[word] |= bit;
        } else {
            self.seen[word] &= !bit;
        }
    }

    /// Whether datagram `seq` (sent, in the window) came back.
    pub fn seen(&self, seq: u64) -> bool {
        let (word, bit) = Self::bit(seq);
        seq < self.sent && seq + TRACKED >= self.sent && self.seen[word] & bit != 0
    }

    /// Count the echo of datagram `seq`.
    pub fn arrived(&mut self, seq: u64) -> Result<Arrival, NeverSent> {
        if seq >= self.sent {
            return Err(NeverSent(seq));
        }
        if seq + TRACKED < self.sent {
            self.duplicates += 1;
            self.late += 1;
            return Ok(Arrival::Late);
        }
        if self.seen(seq) {
            self.duplicates += 1;
            return Ok(Arrival::Duplicate);
        }
        self.set(seq, true);
        self.received += 1;
        Ok(Arrival::New)
    }

    /// Datagrams sent.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Distinct datagrams that came back.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Echoes of datagrams that had come back already (or came back later than the
    /// window).
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Datagrams sent that never came back (so far).
    pub fn lost(&self) -> u64 {
        self.sent - self.received
    }
}

/// Longest console line (`console-soak 18446744073709551615\n` is 34 bytes).
pub const CONSOLE_LINE_MAX: usize = 40;

/// Line `seq` of `console-soak`, newline included, in `buf`; its length.
pub fn console_line(seq: u64, buf: &mut [u8; CONSOLE_LINE_MAX]) -> usize {
    const PREFIX: &[u8] = b"console-soak ";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 20];
    let mut n = seq;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut at = PREFIX.len();
    for &d in digits[..len].iter().rev() {
        buf[at] = d;
        at += 1;
    }
    buf[at] = b'\n';
    at + 1
}

/// The gaps between consecutive completed operations, in whatever unit the caller's clock
/// ticks.
pub struct Stalls {
    threshold: u64,
    last: u64,
    max: u64,
}

impl Stalls {
    /// Gaps of at least `threshold` ticks are stalls; the first gap is measured from
    /// `start`.
    pub fn new(threshold: u64, start: u64) -> Self {
        Self {
            threshold,
            last: start,
            max: 0,
        }
    }

    /// An operation completed at `now`: the gap since the last one if it is a stall.
    pub fn completed(&mut self, now: u64) -> Option<u64> {
        let gap = now.saturating_sub(self.last);
        self.last = now;
        self.max = self.max.max(gap);
        (gap >= self.threshold).then_some(gap)
    }

    /// Measure the next gap from `now` (after time spent on something other than the
    /// device, such as printing a stall line).
    pub fn resume(&mut self, now: u64) {
        self.last = self.last.max(now);
    }

    /// The longest gap so far.
    pub fn max(&self) -> u64 {
        self.max
    }
}

/// What a soak scenario that passed counts, after `PASS <name> ` on its result line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Summary {
    /// `blk-soak`.
    Blk {
        /// Writes completed.
        writes: u64,
        /// Reads completed (each write read back).
        reads: u64,
        /// FLUSHes completed.
        flushes: u64,
        /// The number of the last write.
        last: u64,
        /// Longest gap between completions, ms.
        max_stall_ms: u64,
    },
    /// `net-soak`.
    Net {
        /// Datagrams sent.
        sent: u64,
        /// Distinct datagrams echoed.
        received: u64,
        /// Never echoed.
        lost: u64,
        /// Echoed more than once.
        duplicates: u64,
        /// Longest gap between echoes, ms.
        max_stall_ms: u64,
    },
    /// `console-soak`.
    Console {
        /// Lines the device took.
        lines: u64,
        /// Longest gap between completions, ms.
        max_stall_ms: u64,
    },
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Blk {
                writes,
                reads,
                flushes,
                last,
                max_stall_ms,
            } => write!(
                f,
                "writes={writes} reads={reads} flushes={flushes} last={last} max-stall-ms={max_stall_ms}"
            ),
            Self::Net {
                sent,
                received,
                lost,
                duplicates,
                max_stall_ms,
            } => write!(
                f,
                "sent={sent} received={received} lost={lost} duplicates={duplicates} max-stall-ms={max_stall_ms}"
            ),
            Self::Console {
                lines,
                max_stall_ms,
            } => write!(f, "lines={lines} max-stall-ms={max_stall_ms}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blk_sector_layout_is_the_contract() {
        let mut buf = [0u8; SECTOR];
        fill_blk(&mut buf, 0x0102_0304_0506_0708, 2047);
        assert_eq!(&buf[..8], b"BHSOAK\0\0");
        assert_eq!(&buf[8..16], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&buf[16..24], &2047u64.to_le_bytes());
        let n = 0x0102_0304_0506_0708u64;
        for (i, &b) in buf.iter().enumerate().skip(24) {
            assert_eq!(b, (n.wrapping_mul(31) + i as u64) as u8, "byte {i}");
        }
        assert_eq!(check_blk(&buf, n, 2047), None);
        // A small n, by hand: byte 24 of write 1 is 31 + 24.
        fill_blk(&mut buf, 1, 0);
        assert_eq!(buf[24], 55);
        assert_eq!(buf[511], (31 + 511) as u8);
    }

    #[test]
    fn blk_check_names_the_first_wrong_byte() {
        let mut buf = [0u8; SECTOR];
        fill_blk(&mut buf, 7, 6);
        // Another write's data, or the same data at another sector, is refused.
        assert_eq!(check_blk(&buf, 8, 6), Some((8, 8, 7)));
        assert_eq!(check_blk(&buf, 7, 5), Some((16, 5, 6)));
        buf[300] ^= 0x10;
        let expected = blk_byte(7, 6, 300);
        assert_eq!(
            check_blk(&buf, 7, 6),
            Some((300, expected, expected ^ 0x10))
        );
        buf[0] = b'X';
        assert_eq!(check_blk(&buf, 7, 6), Some((0, b'B', b'X')));
    }

    #[test]
    fn blk_writes_cycle_over_the_area() {
        assert_eq!(blk_area(1 << 20), 2048);
        assert_eq!(blk_area(100), 100);
        assert_eq!(blk_sector(1, 2048), 0);
        assert_eq!(blk_sector(2048, 2048), 2047);
        assert_eq!(blk_sector(2049, 2048), 0);
        assert_eq!(blk_sector(5, 1), 0);
        assert_eq!(blk_sector(5, 0), 0);
    }

    #[test]
    fn net_datagrams_round_trip_and_vary_in_length() {
        let mut buf = [0u8; 1500];
        for seq in [0u64, 1, 15, 16, 12345, NET_HELLO] {
            let len = net_len(seq);
            assert!((64..=1472).contains(&len), "{len}");
            fill_net(&mut buf[..len], seq);
            assert_eq!(&buf[..4], b"BHNS");
            assert_eq!(check_net(&buf[..len]), Ok(seq));
        }
        assert_ne!(net_len(0), net_len(1));
    }

    #[test]
    fn net_corruption_is_refused() {
        let mut buf = [0u8; 1500];
        let len = net_len(3);
        fill_net(&mut buf[..len], 3);
        assert_eq!(check_net(&buf[..5]), Err(NetCorrupt::Short(5)));
        assert_eq!(
            check_net(&buf[..len - 1]),
            Err(NetCorrupt::Length {
                seq: 3,
                expected: len,
                found: len - 1
            })
        );
        buf[100] ^= 1;
        let e = check_net(&buf[..len]).unwrap_err();
        assert_eq!(
            e,
            NetCorrupt::Byte {
                seq: 3,
                at: 100,
                expected: net_byte(3, 100),
                found: net_byte(3, 100) ^ 1
            }
        );
        assert!(e.to_string().contains("datagram 3: byte 100"), "{e}");
        buf[100] ^= 1;
        buf[1] = b'X';
        assert!(matches!(check_net(&buf[..len]), Err(NetCorrupt::Magic(_))));
        // A sequence number changed in flight: the length or the bytes no longer fit.
        fill_net(&mut buf[..len], 3);
        buf[4] = 19; // seq 19 has the same length as 3 (19 % 16 == 3)
        assert!(matches!(
            check_net(&buf[..len]),
            Err(NetCorrupt::Byte { seq: 19, .. })
        ));
    }

    #[test]
    fn tracker_counts_received_duplicates_and_lost() {
        let mut t = SeqTracker::new();
        for expected in 0..10 {
            assert_eq!(t.send(), expected);
        }
        assert_eq!(t.arrived(3), Ok(Arrival::New));
        assert_eq!(t.arrived(0), Ok(Arrival::New));
        assert_eq!(t.arrived(3), Ok(Arrival::Duplicate));
        assert_eq!(t.arrived(10), Err(NeverSent(10)));
        assert!(t.seen(3) && !t.seen(4));
        assert_eq!(
            (t.sent(), t.received(), t.duplicates(), t.lost()),
            (10, 2, 1, 8)
        );
    }

    #[test]
    fn tracker_window_moves_with_what_is_sent() {
        let mut t = SeqTracker::new();
        t.send();
        assert_eq!(t.arrived(0), Ok(Arrival::New));
        for _ in 0..TRACKED {
            t.send();
        }
        // Seq 0's slot now belongs to seq TRACKED, which has not come back.
        assert!(!t.seen(TRACKED));
        assert_eq!(t.arrived(TRACKED), Ok(Arrival::New));
        assert_eq!(t.arrived(0), Ok(Arrival::Late));
        assert_eq!(t.arrived(1), Ok(Arrival::New));
        assert_eq!(t.received(), 3);
        assert_eq!(t.duplicates(), 1);
        assert_eq!(t.lost(), TRACKED + 1 - 3);
    }

    #[test]
    fn console_lines() {
        let mut buf = [0u8; CONSOLE_LINE_MAX];
        let n = console_line(0, &mut buf);
        assert_eq!(&buf[..n], b"console-soak 0\n");
        let n = console_line(1234567, &mut buf);
        assert_eq!(&buf[..n], b"console-soak 1234567\n");
        let n = console_line(u64::MAX, &mut buf);
        assert_eq!(&buf[..n], b"console-soak 18446744073709551615\n");
    }

    #[test]
    fn stalls_are_gaps_at_or_over_the_threshold() {
        let mut s = Stalls::new(20, 100);
        assert_eq!(s.completed(110), None);
        assert_eq!(s.completed(130), Some(20));
        assert_eq!(s.completed(131), None);
        assert_eq!(s.completed(500), Some(369));
        assert_eq!(s.completed(505), None);
        assert_eq!(s.max(), 369);
        // A clock that goes back counts as no gap.
        assert_eq!(s.completed(400), None);
        // Time spent elsewhere is not a gap.
        s.resume(1000);
        assert_eq!(s.completed(1010), None);
        s.resume(900);
        assert_eq!(s.completed(1030), Some(20));
    }

    #[test]
    fn summaries_read_as_the_contract_says() {
        let b = Summary::Blk {
            writes: 10,
            reads: 10,
            flushes: 1,
            last: 10,
            max_stall_ms: 3,
        };
        assert_eq!(
            b.to_string(),
            "writes=10 reads=10 flushes=1 last=10 max-stall-ms=3"
        );
        let n = Summary::Net {
            sent: 5,
            received: 4,
            lost: 1,
            duplicates: 0,
            max_stall_ms: 7,
        };
        assert_eq!(
            n.to_string(),
            "sent=5 received=4 lost=1 duplicates=0 max-stall-ms=7"
        );
        let c = Summary::Console {
            lines: 9,
            max_stall_ms: 0,
        };
        assert_eq!(c.to_string(), "lines=9 max-stall-ms=0");
    }
}
