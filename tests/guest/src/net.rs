//! A minimal IPv4 stack over Ethernet frames: Ethernet II, ARP, IPv4 (no options out, no
//! fragments), ICMP echo and UDP, as pure functions over byte slices so that the host unit
//! tests check them against known-good packets.
//!
//! [`parse`] classifies a received frame (checking lengths and every checksum);
//! [`answer`] builds what the guest sends back for it (ARP reply, ICMP echo reply, UDP
//! echo); [`build_arp_request`] and [`build_udp`] build what it sends on its own. Frames
//! are built without the 4-byte FCS (the TAP adds none and wants none); ARP frames are
//! padded to the 60-byte Ethernet minimum.

use core::fmt;

/// A MAC address.
pub type Mac = [u8; 6];
/// An IPv4 address.
pub type Ip = [u8; 4];

/// ff:ff:ff:ff:ff:ff.
pub const BROADCAST: Mac = [0xff; 6];
/// Ethernet header bytes.
pub const ETH_HDR: usize = 14;
/// IPv4 header bytes (no options).
pub const IP_HDR: usize = 20;
/// UDP header bytes.
pub const UDP_HDR: usize = 8;
/// ICMP echo header bytes.
pub const ICMP_HDR: usize = 8;
/// ARP packet bytes (Ethernet/IPv4).
pub const ARP_LEN: usize = 28;
/// Smallest Ethernet frame without FCS.
pub const MIN_FRAME: usize = 60;
/// The MTU assumed (IP packet bytes).
pub const MTU: usize = 1500;
/// Largest UDP payload in one unfragmented datagram at [`MTU`].
pub const MAX_UDP_PAYLOAD: usize = MTU - IP_HDR - UDP_HDR;
/// Largest frame built or accepted (without FCS).
pub const MAX_FRAME: usize = ETH_HDR + MTU;

/// EtherType IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// IP protocol ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol UDP.
pub const PROTO_UDP: u8 = 17;
/// ARP request.
pub const ARP_REQUEST: u16 = 1;
/// ARP reply.
pub const ARP_REPLY: u16 = 2;
/// ICMP echo request.
pub const ICMP_ECHO_REQUEST: u8 = 8;
/// ICMP echo reply.
pub const ICMP_ECHO_REPLY: u8 = 0;

/// The guest's interface: its addresses and its one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Iface {
    /// Our MAC.
    pub mac: Mac,
    /// Our IPv4 address.
    pub ip: Ip,
    /// Prefix length of our network.
    pub prefix: u8,
    /// The peer (the host end of the TAP).
    pub peer: Ip,
}

/// Display a MAC as `xx:xx:xx:xx:xx:xx`.
pub struct MacFmt(pub Mac);

impl fmt::Display for MacFmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Display an IPv4 address dotted.
pub struct IpFmt(pub Ip);

impl fmt::Display for IpFmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.0;
        write!(f, "{}.{}.{}.{}", a[0], a[1], a[2], a[3])
    }
}

/// Parse `xx:xx:xx:xx:xx:xx` (hex, either case).
pub fn parse_mac(s: &[u8]) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(|&c| c == b':');
    for byte in mac.iter_mut() {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        let text = core::str::from_utf8(part).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Parse `A.B.C.D` (decimal, no leading `+`).
pub fn parse_ip(s: &[u8]) -> Option<Ip> {
    let mut ip = [0u8; 4];
    let mut parts = s.split(|&c| c == b'.');
    for byte in ip.iter_mut() {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let value = part.iter().fold(0u32, |n, &c| n * 10 + u32::from(c - b'0'));
        *byte = u8::try_from(value).ok()?;
    }
    parts.next().is_none().then_some(ip)
}

/// Parse `A.B.C.D/NN` (NN 1..=30); `A.B.C.D` alone means /24.
pub fn parse_cidr(s: &[u8]) -> Option<(Ip, u8)> {
    match s.iter().position(|&c| c == b'/') {
        None => Some((parse_ip(s)?, 24)),
        Some(slash) => {
            let ip = parse_ip(&s[..slash])?;
            let digits = &s[slash + 1..];
            if digits.is_empty() || digits.len() > 2 || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let prefix = digits.iter().fold(0u8, |n, &c| n * 10 + (c - b'0'));
            (1..=30).contains(&prefix).then_some((ip, prefix))
        }
    }
}

/// Add `data` as big-endian 16-bit words to a 32-bit ones'-complement accumulator (an odd
/// last byte is padded with zero).
pub fn sum_words(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([w[0], w[1]])));
        // Fold early so that long buffers never overflow.
        if acc >= 0x8000_0000 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        acc = acc.wrapping_add(u32::from(*last) << 8);
    }
    acc
}

/// Fold an accumulator to 16 bits and complement it: the Internet checksum (RFC 1071).
pub fn finish(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum_words(data, 0))
}

/// The UDP checksum of a datagram (`udp` = header + payload, checksum field included as
/// it is) between `src` and `dst`: 0 comes out as 0xffff (RFC 768).
pub fn udp_checksum(src: Ip, dst: Ip, udp: &[u8]) -> u16 {
    let mut acc = sum_words(&src, 0);
    acc = sum_words(&dst, acc);
    acc = acc.wrapping_add(u32::from(PROTO_UDP));
    acc = acc.wrapping_add(udp.len() as u32);
    match finish(sum_words(udp, acc)) {
        0 => 0xffff,
        c => c,
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn ip_at(b: &[u8], at: usize) -> Ip {
    [b[at], b[at + 1], b[at + 2], b[at + 3]]
}

fn mac_at(b: &[u8], at: usize) -> Mac {
    [b[at], b[at + 1], b[at + 2], b[at + 3], b[at + 4], b[at + 5]]
}

/// A received frame, classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// ARP (Ethernet/IPv4).
    Arp {
        /// Request or reply.
        op: u16,
        /// Sender MAC.
        sha: Mac,
        /// Sender IP.
        spa: Ip,
        /// Target IP.
        tpa: Ip,
    },
    /// ICMP echo request.
    EchoRequest {
        /// Sender MAC (Ethernet source).
        src_mac: Mac,
        /// Sender IP.
        src: Ip,
        /// Destination IP.
        dst: Ip,
        /// Identifier.
        id: u16,
        /// Sequence number.
        seq: u16,
        /// Data after the echo header.
        data: &'a [u8],
    },
    /// UDP.
    Udp {
        /// Sender MAC (Ethernet source).
        src_mac: Mac,
        /// Sender IP.
        src: Ip,
        /// Destination IP.
        dst: Ip,
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// Payload.
        payload: &'a [u8],
    },
    /// Something valid this stack does not handle (IPv6, other ICMP types, TCP, ...).
    Other,
}

/// Why a received frame was dropped as malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than the headers it announces.
    Short,
    /// IPv4 header checksum wrong.
    IpChecksum,
    /// ICMP checksum wrong.
    IcmpChecksum,
    /// UDP checksum wrong.
    UdpChecksum,
    /// IP version not 4, header length below 20, or a fragment.
    BadIp,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Short => "truncated",
            Self::IpChecksum => "bad IPv4 header checksum",
            Self::IcmpChecksum => "bad ICMP checksum",
            Self::UdpChecksum => "bad UDP checksum",
            Self::BadIp => "unsupported IPv4 header or fragment",
        })
    }
}

/// Classify a received Ethernet frame (no FCS; trailing padding allowed).
pub fn parse(frame: &[u8]) -> Result<Packet<'_>, Malformed> {
    if frame.len() < ETH_HDR {
        return Err(Malformed::Short);
    }
    let src_mac = mac_at(frame, 6);
    let body = &frame[ETH_HDR..];
    match be16(frame, 12) {
        ETHERTYPE_ARP => {
            if body.len() < ARP_LEN {
                return Err(Malformed::Short);
            }
            // Ethernet (1), IPv4 (0x0800), 6-byte and 4-byte addresses.
            if be16(body, 0) != 1 || be16(body, 2) != ETHERTYPE_IPV4 || body[4] != 6 || body[5] != 4
            {
                return Ok(Packet::Other);
            }
            Ok(Packet::Arp {
                op: be16(body, 6),
                sha: mac_at(body, 8),
                spa: ip_at(body, 14),
                tpa: ip_at(body, 24),
            })
        }
        ETHERTYPE_IPV4 => parse_ipv4(src_mac, body),
        _ => Ok(Packet::Other),
    }
}

fn parse_ipv4(src_mac: Mac, ip: &[u8]) -> Result<Packet<'_>, Malformed> {
    if ip.len() < IP_HDR {
        return Err(Malformed::Short);
    }
    let ihl = usize::from(ip[0] & 0xf) * 4;
    if ip[0] >> 4 != 4 || ihl < IP_HDR {
        return Err(Malformed::BadIp);
    }
    let total = usize::from(be16(ip, 2));
    if total < ihl || ip.len() < total {
        return Err(Malformed::Short);
    }
    if checksum(&ip[..ihl]) != 0 {
        return Err(Malformed::IpChecksum);
    }
    // More-fragments flag or a fragment offset: not reassembled here.
    if be16(ip, 6) & 0x3fff != 0 {
        return Err(Malformed::BadIp);
    }
    let (src, dst) = (ip_at(ip, 12), ip_at(ip, 16));
    let body = &ip[ihl..total];
    match ip[9] {
        PROTO_ICMP => {
            if body.len() < ICMP_HDR {
                return Err(Malformed::Short);
            }
            if checksum(body) != 0 {
                return Err(Malformed::IcmpChecksum);
            }
            if body[0] != ICMP_ECHO_REQUEST || body[1] != 0 {
                return Ok(Packet::Other);
            }
            Ok(Packet::EchoRequest {
                src_mac,
                src,
                dst,
                id: be16(body, 4),
                seq: be16(body, 6),
                data: &body[ICMP_HDR..],
            })
        }
        PROTO_UDP => {
            if body.len() < UDP_HDR {
                return Err(Malformed::Short);
            }
            let len = usize::from(be16(body, 4));
            if len < UDP_HDR || len > body.len() {
                return Err(Malformed::Short);
            }
            let udp = &body[..len];
            if be16(udp, 6) != 0 && udp_checksum(src, dst, udp) != 0xffff {
                return Err(Malformed::UdpChecksum);
            }
            Ok(Packet::Udp {
                src_mac,
                src,
                dst,
                sport: be16(udp, 0),
                dport: be16(udp, 2),
                payload: &udp[UDP_HDR..],
            })
        }
        _ => Ok(Packet::Other),
    }
}

fn put_eth(out: &mut [u8], dst: Mac, src: Mac, ethertype: u16) {
    out[0..6].copy_from_slice(&dst);
    out[6..12].copy_from_slice(&src);
    put16(out, 12, ethertype);
}

/// Build an ARP packet in `out` (at least [`MIN_FRAME`] bytes); returns the frame length
/// (60: padded with zeroes).
#[allow(clippy::too_many_arguments)]
pub fn build_arp(
    out: &mut [u8],
    op: u16,
    eth_dst: Mac,
    sha: Mac,
    spa: Ip,
    tha: Mac,
    tpa: Ip,
) -> usize {
    out[..MIN_FRAME].fill(0);
    put_eth(out, eth_dst, sha, ETHERTYPE_ARP);
    let a = &mut out[ETH_HDR..];
    put16(a, 0, 1);
    put16(a, 2, ETHERTYPE_IPV4);
    a[4] = 6;
    a[5] = 4;
    put16(a, 6, op);
    a[8..14].copy_from_slice(&sha);
    a[14..18].copy_from_slice(&spa);
    a[18..24].copy_from_slice(&tha);
    a[24..28].copy_from_slice(&tpa);
    MIN_FRAME
}

/// A broadcast ARP request from `iface` for `target`.
pub fn build_arp_request(out: &mut [u8], iface: &Iface, target: Ip) -> usize {
    build_arp(
        out,
        ARP_REQUEST,
        BROADCAST,
        iface.mac,
        iface.ip,
        [0; 6],
        target,
    )
}

/// Write an IPv4 header (no options, DF set, TTL 64) for `payload` bytes of `proto`.
fn put_ipv4(out: &mut [u8], proto: u8, src: Ip, dst: Ip, payload: usize, id: u16) {
    let h = &mut out[..IP_HDR];
    h[0] = 0x45;
    h[1] = 0;
    put16(h, 2, (IP_HDR + payload) as u16);
    put16(h, 4, id);
    put16(h, 6, 0x4000);
    h[8] = 64;
    h[9] = proto;
    put16(h, 10, 0);
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let sum = checksum(h);
    put16(h, 10, sum);
}

/// Addresses of one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Ethernet source.
    pub src_mac: Mac,
    /// Ethernet destination.
    pub dst_mac: Mac,
    /// IP source.
    pub src: Ip,
    /// IP destination.
    pub dst: Ip,
}

/// Build a UDP datagram in `out` with a `len`-byte payload that `fill` writes; returns the
/// frame length, or `None` if it does not fit `out` or the MTU.
pub fn build_udp(
    out: &mut [u8],
    route: &Route,
    sport: u16,
    dport: u16,
    len: usize,
    id: u16,
    fill: impl FnOnce(&mut [u8]),
) -> Option<usize> {
    let frame = ETH_HDR + IP_HDR + UDP_HDR + len;
    if len > MAX_UDP_PAYLOAD || frame > out.len() {
        return None;
    }
    put_eth(out, route.dst_mac, route.src_mac, ETHERTYPE_IPV4);
    put_ipv4(
        &mut out[ETH_HDR..],
        PROTO_UDP,
        route.src,
        route.dst,
        UDP_HDR + len,
        id,
    );
    let udp = &mut out[ETH_HDR + IP_HDR..frame];
    put16(udp, 0, sport);
    put16(udp, 2, dport);
    put16(udp, 4, (UDP_HDR + len) as u16);
    put16(udp, 6, 0);
    fill(&mut udp[UDP_HDR..]);
    let sum = udp_checksum(route.src, route.dst, udp);
    put16(udp, 6, sum);
    Some(frame)
}

/// An ICMP echo reply to a request, in `out`; `None` if it does not fit.
#[allow(clippy::too_many_arguments)]
pub fn build_echo_reply(
    out: &mut [u8],
    route: &Route,
    id: u16,
    seq: u16,
    data: &[u8],
    ip_id: u16,
) -> Option<usize> {
    let icmp_len = ICMP_HDR + data.len();
    let frame = ETH_HDR + IP_HDR + icmp_len;
    if IP_HDR + icmp_len > MTU || frame > out.len() {
        return None;
    }
    put_eth(out, route.dst_mac, route.src_mac, ETHERTYPE_IPV4);
    put_ipv4(
        &mut out[ETH_HDR..],
        PROTO_ICMP,
        route.src,
        route.dst,
        icmp_len,
        ip_id,
    );
    let icmp = &mut out[ETH_HDR + IP_HDR..frame];
    icmp[0] = ICMP_ECHO_REPLY;
    icmp[1] = 0;
    put16(icmp, 2, 0);
    put16(icmp, 4, id);
    put16(icmp, 6, seq);
    icmp[ICMP_HDR..].copy_from_slice(data);
    let sum = checksum(icmp);
    put16(icmp, 2, sum);
    Some(frame)
}

/// What [`answer`] made of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Answered an ARP request for our address: reply of this length in `out`.
    Arp(usize),
    /// Answered an ICMP echo request: reply of this length in `out`.
    Icmp(usize),
    /// Echoed a UDP datagram to the echo port: datagram of this length in `out`.
    Udp(usize),
    /// An ARP packet (request or reply) told us the MAC of this IP (no reply needed).
    Learned(Ip, Mac),
    /// Not for us, or nothing to answer.
    Ignored,
    /// Malformed.
    Dropped(Malformed),
}

/// Answer a received frame as `net-serve` does: ARP requests for our IP, ICMP echo requests
/// to our IP, UDP datagrams to our IP and `echo_port` (sent back to where they came from,
/// ports swapped). `ip_id` is the IP identification of the answer.
pub fn answer(iface: &Iface, frame: &[u8], echo_port: u16, out: &mut [u8], ip_id: u16) -> Answer {
    let packet = match parse(frame) {
        Ok(p) => p,
        Err(e) => return Answer::Dropped(e),
    };
    match packet {
        Packet::Arp {
            op: ARP_REQUEST,
            sha,
            spa,
            tpa,
        } if tpa == iface.ip => Answer::Arp(build_arp(
            out, ARP_REPLY, sha, iface.mac, iface.ip, sha, spa,
        )),
        Packet::Arp { sha, spa, .. } if spa != [0; 4] => Answer::Learned(spa, sha),
        Packet::EchoRequest {
            src_mac,
            src,
            dst,
            id,
            seq,
            data,
        } if dst == iface.ip => {
            let route = Route {
                src_mac: iface.mac,
                dst_mac: src_mac,
                src: iface.ip,
                dst: src,
            };
            build_echo_reply(out, &route, id, seq, data, ip_id)
                .map_or(Answer::Ignored, Answer::Icmp)
        }
        Packet::Udp {
            src_mac,
            src,
            dst,
            sport,
            dport,
            payload,
        } if dst == iface.ip && dport == echo_port => {
            let route = Route {
                src_mac: iface.mac,
                dst_mac: src_mac,
                src: iface.ip,
                dst: src,
            };
            build_udp(out, &route, dport, sport, payload.len(), ip_id, |p| {
                p.copy_from_slice(payload)
            })
            .map_or(Answer::Ignored, Answer::Udp)
        }
        _ => Answer::Ignored,
    }
}

/// The `net-send` payload pattern: byte `i` of a datagram of `size` bytes.
pub fn pattern_byte(i: usize, size: usize) -> u8 {
    i.wrapping_mul(7).wrapping_add(size) as u8
}

/// Fill a payload with the `net-send` pattern for its size.
pub fn fill_pattern(payload: &mut [u8]) {
    let size = payload.len();
    for (i, b) in payload.iter_mut().enumerate() {
        *b = pattern_byte(i, size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    const GUEST_MAC: Mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const HOST_MAC: Mac = [0x02, 0x00, 0x00, 0xaa, 0xbb, 0xcc];

    fn iface() -> Iface {
        Iface {
            mac: GUEST_MAC,
            ip: [10, 0, 2, 2],
            prefix: 24,
            peer: [10, 0, 2, 1],
        }
    }

    #[test]
    fn rfc1071_and_wikipedia_vectors() {
        // RFC 1071, 3: the words 0001 f203 f4f5 f6f7 sum (folded) to ddf2.
        let data = hex("0001 f203 f4f5 f6f7");
        assert_eq!(finish(sum_words(&data, 0)), !0xddf2);
        // The classic IPv4 header example (Wikipedia, "IPv4 header checksum"): b861.
        let mut h = hex("4500 0073 0000 4000 4011 0000 c0a8 0001 c0a8 00c7");
        assert_eq!(checksum(&h), 0xb861);
        h[10..12].copy_from_slice(&[0xb8, 0x61]);
        assert_eq!(checksum(&h), 0);
        // Odd length: the last byte is the high half of a word.
        assert_eq!(checksum(&[0x01]), !0x0100);
        assert_eq!(checksum(&[]), 0xffff);
    }

    #[test]
    fn udp_checksum_of_a_captured_datagram() {
        // 192.168.1.100:54729 -> 8.8.8.8:53, 9 payload bytes (odd length); the expected
        // checksum was computed independently (a few lines of Python after RFC 768).
        let src = [192, 168, 1, 100];
        let dst = [8, 8, 8, 8];
        let mut udp = hex("d5c9 0035 0011 0000 6162 6364 6566 6768 69");
        let sum = udp_checksum(src, dst, &udp);
        udp[6..8].copy_from_slice(&sum.to_be_bytes());
        // A correct checksum sums (with the pseudo-header) to all ones.
        let mut acc = sum_words(&src, 0);
        acc = sum_words(&dst, acc) + 17 + udp.len() as u32;
        assert_eq!(finish(sum_words(&udp, acc)), 0);
        assert_eq!(sum, 0x5d1b);
    }

    #[test]
    fn addresses_parse_and_print() {
        assert_eq!(parse_ip(b"10.0.2.2"), Some([10, 0, 2, 2]));
        assert_eq!(parse_ip(b"255.255.255.255"), Some([255; 4]));
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4.5",
            "256.0.0.1",
            "1..2.3",
            "a.b.c.d",
            "1.2.3.0004",
        ] {
            assert_eq!(parse_ip(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(parse_cidr(b"10.0.2.2/24"), Some(([10, 0, 2, 2], 24)));
        assert_eq!(parse_cidr(b"192.168.7.9/30"), Some(([192, 168, 7, 9], 30)));
        assert_eq!(parse_cidr(b"10.0.2.2"), Some(([10, 0, 2, 2], 24)));
        for bad in [
            "10.0.2.2/",
            "10.0.2.2/0",
            "10.0.2.2/31",
            "10.0.2.2/x",
            "/24",
        ] {
            assert_eq!(parse_cidr(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(parse_mac(b"52:54:00:12:34:56"), Some(GUEST_MAC));
        assert_eq!(
            parse_mac(b"52:54:00:AB:cd:EF"),
            Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef])
        );
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "5:54:00:12:34:56",
            "52-54-00-12-34-56",
            "gg:54:00:12:34:56",
        ] {
            assert_eq!(parse_mac(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(MacFmt(GUEST_MAC).to_string(), "52:54:00:12:34:56");
        assert_eq!(IpFmt([10, 0, 2, 1]).to_string(), "10.0.2.1");
    }

    #[test]
    fn arp_request_from_the_host_is_answered() {
        // A request as Linux sends it: who has 10.0.2.2? tell 10.0.2.1.
        let mut req = [0u8; 60];
        build_arp(
            &mut req,
            ARP_REQUEST,
            BROADCAST,
            HOST_MAC,
            [10, 0, 2, 1],
            [0; 6],
            [10, 0, 2, 2],
        );
        assert_eq!(
            &req[12..22],
            &hex("0806 0001 0800 0604 0001")[..],
            "ethertype, htype, ptype, hlen, plen, op"
        );
        let mut out = [0u8; 1600];
        let Answer::Arp(n) = answer(&iface(), &req, 7, &mut out, 0) else {
            panic!("no ARP reply");
        };
        assert_eq!(n, 60);
        let reply = &out[..n];
        assert_eq!(&reply[0..6], &HOST_MAC);
        assert_eq!(&reply[6..12], &GUEST_MAC);
        assert_eq!(
            parse(reply),
            Ok(Packet::Arp {
                op: ARP_REPLY,
                sha: GUEST_MAC,
                spa: [10, 0, 2, 2],
                tpa: [10, 0, 2, 1]
            })
        );
        assert_eq!(&reply[ETH_HDR + 18..ETH_HDR + 24], &HOST_MAC, "tha");
        // Requests for other addresses teach us the sender, nothing more.
        build_arp(
            &mut req,
            ARP_REQUEST,
            BROADCAST,
            HOST_MAC,
            [10, 0, 2, 1],
            [0; 6],
            [10, 0, 2, 9],
        );
        assert_eq!(
            answer(&iface(), &req, 7, &mut out, 0),
            Answer::Learned([10, 0, 2, 1], HOST_MAC)
        );
    }

    #[test]
    fn our_arp_request_is_broadcast() {
        let mut out = [0u8; 64];
        let n = build_arp_request(&mut out, &iface(), [10, 0, 2, 1]);
        assert_eq!(n, 60);
        assert_eq!(
            &out[..42],
            &hex("ffffffffffff 525400123456 0806 0001 0800 06 04 0001 \
                 525400123456 0a000202 000000000000 0a000201")[..]
        );
        assert!(out[42..60].iter().all(|&b| b == 0));
    }

    /// A ping as iputils sends it: 10.0.2.1 -> 10.0.2.2, id 0x1234, seq 1, 56 data bytes.
    fn ping() -> Vec<u8> {
        let mut icmp = hex("0800 0000 1234 0001");
        icmp.extend((0..56u8).map(|i| i + 0x10));
        let sum = checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut frame = Vec::new();
        frame.extend(GUEST_MAC);
        frame.extend(HOST_MAC);
        frame.extend(hex("0800"));
        let mut ip = hex("4500 0000 abcd 4000 4001 0000 0a000201 0a000202");
        ip[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
        let sum = checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        frame.extend(ip);
        frame.extend(icmp);
        frame
    }

    #[test]
    fn ping_is_answered_with_the_same_data() {
        let req = ping();
        let mut out = [0u8; 1600];
        let Answer::Icmp(n) = answer(&iface(), &req, 7, &mut out, 99) else {
            panic!("no echo reply");
        };
        assert_eq!(n, req.len());
        let reply = &out[..n];
        assert_eq!(&reply[0..6], &HOST_MAC);
        assert_eq!(&reply[6..12], &GUEST_MAC);
        let ip = &reply[ETH_HDR..];
        assert_eq!(checksum(&ip[..20]), 0);
        assert_eq!(
            (ip[9], ip_at(ip, 12), ip_at(ip, 16)),
            (1, [10, 0, 2, 2], [10, 0, 2, 1])
        );
        let icmp = &ip[20..];
        assert_eq!(checksum(icmp), 0);
        assert_eq!(&icmp[..2], &[0, 0], "echo reply, code 0");
        assert_eq!(
            &icmp[4..],
            &req[ETH_HDR + 20 + 4..],
            "id, seq and data unchanged"
        );
        // The reply differs from the request only in type: its checksum moves by 0x0800.
        let req_sum = be16(&req, ETH_HDR + 22);
        assert_eq!(be16(icmp, 2), req_sum.wrapping_add(0x0800));
    }

    #[test]
    fn corrupted_packets_are_dropped() {
        let mut out = [0u8; 1600];
        let mut bad = ping();
        bad[ETH_HDR + 8] ^= 1; // TTL: IP checksum now wrong
        assert_eq!(
            answer(&iface(), &bad, 7, &mut out, 0),
            Answer::Dropped(Malformed::IpChecksum)
        );
        let mut bad = ping();
        *bad.last_mut().unwrap() ^= 0x40;
        assert_eq!(
            answer(&iface(), &bad, 7, &mut out, 0),
            Answer::Dropped(Malformed::IcmpChecksum)
        );
        let bad = &ping()[..40];
        assert_eq!(parse(bad), Err(Malformed::Short));
        assert_eq!(parse(&[0u8; 10]), Err(Malformed::Short));
        let mut frag = ping();
        frag[ETH_HDR + 6] = 0x20; // more fragments
        let sum = {
            frag[ETH_HDR + 10..ETH_HDR + 12].fill(0);
            checksum(&frag[ETH_HDR..ETH_HDR + 20])
        };
        frag[ETH_HDR + 10..ETH_HDR + 12].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(parse(&frag), Err(Malformed::BadIp));
        // A ping to someone else is ignored; IPv6 is other.
        let mut other = ping();
        other[ETH_HDR + 19] = 3;
        other[ETH_HDR + 10..ETH_HDR + 12].fill(0);
        let sum = checksum(&other[ETH_HDR..ETH_HDR + 20]);
        other[ETH_HDR + 10..ETH_HDR + 12].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(answer(&iface(), &other, 7, &mut out, 0), Answer::Ignored);
        let mut v6 = ping();
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(parse(&v6), Ok(Packet::Other));
    }

    #[test]
    fn udp_round_trip_and_echo() {
        let route = Route {
            src_mac: HOST_MAC,
            dst_mac: GUEST_MAC,
            src: [10, 0, 2, 1],
            dst: [10, 0, 2, 2],
        };
        let mut frame = [0u8; 1600];
        let n = build_udp(&mut frame, &route, 40000, 7, 100, 1, fill_pattern).unwrap();
        assert_eq!(n, 14 + 20 + 8 + 100);
        // Padded to the Ethernet minimum or not, it parses the same.
        let Ok(Packet::Udp {
            sport,
            dport,
            payload,
            src,
            ..
        }) = parse(&frame[..n + 4])
        else {
            panic!("not UDP");
        };
        assert_eq!((sport, dport, src), (40000, 7, [10, 0, 2, 1]));
        assert_eq!(payload.len(), 100);
        assert!(payload
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern_byte(i, 100)));
        let mut out = [0u8; 1600];
        let Answer::Udp(m) = answer(&iface(), &frame[..n], 7, &mut out, 5) else {
            panic!("not echoed");
        };
        assert_eq!(m, n);
        let Ok(Packet::Udp {
            sport,
            dport,
            payload,
            src,
            dst,
            src_mac,
        }) = parse(&out[..m])
        else {
            panic!("echo not UDP");
        };
        assert_eq!(
            (sport, dport, src, dst, src_mac),
            (7, 40000, [10, 0, 2, 2], [10, 0, 2, 1], GUEST_MAC)
        );
        assert_eq!(payload, &frame[42..n]);
        // Other ports are not echoed; a zero checksum means none; a wrong one drops.
        assert_eq!(
            answer(&iface(), &frame[..n], 8, &mut out, 5),
            Answer::Ignored
        );
        frame[40..42].fill(0);
        assert!(matches!(parse(&frame[..n]), Ok(Packet::Udp { .. })));
        frame[40..42].copy_from_slice(&[0x12, 0x34]);
        assert_eq!(parse(&frame[..n]), Err(Malformed::UdpChecksum));
        // Sizes up to the MTU only.
        assert!(build_udp(&mut frame, &route, 1, 2, MAX_UDP_PAYLOAD, 0, |_| {}).is_some());
        assert!(build_udp(&mut frame, &route, 1, 2, MAX_UDP_PAYLOAD + 1, 0, |_| {}).is_none());
        assert!(build_udp(&mut frame[..100], &route, 1, 2, 100, 0, |_| {}).is_none());
    }

    #[test]
    fn pattern_is_documented() {
        assert_eq!(pattern_byte(0, 64), 64);
        assert_eq!(pattern_byte(1, 64), 71);
        assert_eq!(pattern_byte(100, 1472), ((700 + 1472) % 256) as u8);
    }
}
