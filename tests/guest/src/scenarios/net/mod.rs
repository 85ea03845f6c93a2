//! The virtio-net scenarios (`net-*`) on the device `bulkhead.net.nic` names (default the
//! first virtio-net device), and what they share: the error type, the identify line, and
//! [`Stack`], which polls the receive ring and answers ARP, ICMP echo and (in `net-serve`)
//! UDP echo, handing other UDP datagrams for our address to the scenario.

pub mod bench;
pub mod identify;
pub mod macswap;
pub mod probe;
pub mod send;
pub mod serve;
pub mod soak;

use crate::cmdline::NetOptions;
use crate::net::{self, Answer, Iface, Ip, IpFmt, Mac, MacFmt, Packet};
use crate::nics::{DevError, Nic};
use crate::time::Deadline;
use crate::virtio::bufs::RingError;
use crate::virtio::mmio::InitError;
use crate::virtio::net::feature;
use crate::virtio::Transport;
use core::fmt;

/// Our MAC when the device offers none and `bulkhead.net.mac` gives none.
pub const DEFAULT_MAC: Mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// How long ARP resolution of the peer may take.
pub const ARP_TIMEOUT_MS: u64 = 3000;
/// ARP requests are repeated this often while resolving.
pub const ARP_RETRY_MS: u64 = 250;
/// How long the device may take to consume every frame queued.
pub const TX_TIMEOUT_MS: u64 = 5000;

/// Why a network or console scenario failed.
#[derive(Debug)]
pub enum Error {
    /// The device could not be used.
    Dev(DevError),
    /// The device broke a ring.
    Ring(RingError),
    /// `bulkhead.net.mac` disagrees with the device.
    Mac {
        /// Expected.
        expected: Mac,
        /// Reported by the device.
        found: Mac,
    },
    /// No ARP reply from the peer in time.
    NoPeer(Ip),
    /// Frames or bytes queued were not consumed in time.
    Timeout(&'static str),
    /// Nothing was sent at all.
    NothingSent,
    /// The console's configuration space could not be read consistently.
    ConsoleConfig(InitError),
    /// `console-resize` saw fewer size changes than `bulkhead.console.resizes` in time.
    TooFewResizes {
        /// Changes seen.
        seen: u32,
        /// Changes wanted.
        wanted: u32,
        /// How long it watched.
        ms: u64,
    },
    /// `console-resize` on virtio-pci: size changes seen, but no configuration-change
    /// interrupt (MSI-X) came.
    NoConfigInterrupt(u32),
    /// `net-macswap`: a frame did not come back as sent.
    Macswap(bulkhead_guest::macswap::Mismatch),
}

impl From<DevError> for Error {
    fn from(e: DevError) -> Self {
        Self::Dev(e)
    }
}

impl From<RingError> for Error {
    fn from(e: RingError) -> Self {
        Self::Ring(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dev(e) => e.fmt(f),
            Self::Ring(e) => e.fmt(f),
            Self::Mac { expected, found } => write!(
                f,
                "device MAC is {}, bulkhead.net.mac says {}",
                MacFmt(*found),
                MacFmt(*expected)
            ),
            Self::NoPeer(ip) => write!(
                f,
                "timeout waiting for an ARP reply from {} ({ARP_TIMEOUT_MS} ms)",
                IpFmt(*ip)
            ),
            Self::Timeout(what) => write!(f, "timeout waiting for {what}"),
            Self::NothingSent => write!(f, "no frame could be queued"),
            Self::ConsoleConfig(e) => write!(f, "reading console0's configuration: {e}"),
            Self::TooFewResizes { seen, wanted, ms } => write!(
                f,
                "timeout waiting for console0 size changes: saw {seen} of {wanted} in {ms} ms"
            ),
            Self::Macswap(m) => m.fmt(f),
            Self::NoConfigInterrupt(seen) => write!(
                f,
                "console0 (virtio-pci) changed size {seen} times but sent no configuration-change interrupt"
            ),
        }
    }
}

/// Our interface: the device's MAC if it offers one, else `bulkhead.net.mac`, else
/// [`DEFAULT_MAC`]; addresses from the options.
pub fn iface(nic: &Nic, opts: &NetOptions) -> Iface {
    let mac = if nic.net.transport().offered() & feature::MAC != 0 {
        nic.net.config.mac
    } else {
        opts.mac.unwrap_or(DEFAULT_MAC)
    };
    Iface {
        mac,
        ip: opts.ip,
        prefix: opts.prefix,
        peer: opts.peer,
    }
}

/// Print the identify line of a NIC.
pub fn identify(nic: &Nic, opts: &NetOptions) {
    let c = nic.net.config;
    let t = nic.net.transport();
    crate::say!(
        "net{} mac={} status={} mtu={} features={:#x} accepted={:#x} queue_pairs={} rx_queue={} tx_queue={} base={:#x} irq={}",
        nic.index,
        MacFmt(iface(nic, opts).mac),
        c.status,
        c.mtu,
        t.offered(),
        t.accepted(),
        c.max_queue_pairs,
        nic.net.rx.queue.size(),
        nic.net.tx.queue.size(),
        nic.place.base(),
        nic.place.irq()
    );
}

/// What [`Stack`] did so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// ARP requests for our address answered.
    pub arp: u64,
    /// ICMP echo requests answered.
    pub icmp: u64,
    /// UDP datagrams echoed.
    pub udp: u64,
    /// Frames dropped: malformed, merged over several buffers, or no transmit buffer
    /// free for the answer.
    pub dropped: u64,
    /// Frames not for us or nothing to answer.
    pub ignored: u64,
}

/// A tiny host: answers ARP and ICMP echo, optionally echoes UDP.
pub struct Stack {
    /// Our addresses.
    pub iface: Iface,
    /// UDP port echoed (`net-serve`), if any.
    pub echo_port: Option<u16>,
    /// Counts.
    pub counters: Counters,
    /// The peer's MAC, once learned from its ARP packets.
    pub peer_mac: Option<Mac>,
    /// IP identification of the next datagram sent.
    pub ip_id: u16,
    scratch: [u8; net::MAX_FRAME + 64],
}

/// Most frames taken per [`Stack::poll`] before publishing buffers again.
const BATCH: usize = 64;

impl Stack {
    /// A stack for `iface`.
    pub fn new(iface: Iface, echo_port: Option<u16>) -> Self {
        Self {
            iface,
            echo_port,
            counters: Counters::default(),
            peer_mac: None,
            ip_id: 1,
            scratch: [0; net::MAX_FRAME + 64],
        }
    }

    /// Queue the answer in the scratch buffer; a full transmit ring drops it.
    fn reply(&mut self, nic: &mut Nic, len: usize) -> Result<bool, Error> {
        let frame = &self.scratch[..len];
        let sent = nic.net.send(|buf| {
            buf[..frame.len()].copy_from_slice(frame);
            frame.len()
        })?;
        self.ip_id = self.ip_id.wrapping_add(1);
        if !sent {
            self.counters.dropped += 1;
        }
        Ok(sent)
    }

    /// Handle up to a batch of received frames: answer what [`net::answer`] answers, learn
    /// the peer's MAC, pass the UDP datagrams to our address that are not echoed to
    /// `udp(dport, payload)`. Publishes reposted buffers and answers. Returns the frames
    /// taken.
    pub fn poll(&mut self, nic: &mut Nic, mut udp: impl FnMut(u16, &[u8])) -> Result<usize, Error> {
        let mut taken = 0;
        while taken < BATCH {
            let rx = match nic.net.poll_rx()? {
                None => break,
                Some(Err(_)) => {
                    taken += 1;
                    self.counters.dropped += 1;
                    continue;
                }
                Some(Ok(rx)) => rx,
            };
            taken += 1;
            let frame = nic.net.frame(&rx);
            let mut answer = None;
            match net::parse(frame) {
                Ok(Packet::Udp {
                    dst,
                    dport,
                    payload,
                    ..
                }) if dst == self.iface.ip && Some(dport) != self.echo_port => {
                    udp(dport, payload);
                }
                Ok(packet) => {
                    if let Packet::Arp { sha, spa, .. } = packet {
                        if spa == self.iface.peer {
                            self.peer_mac = Some(sha);
                        }
                    }
                    answer = Some(net::answer(
                        &self.iface,
                        frame,
                        self.echo_port.unwrap_or(0),
                        &mut self.scratch,
                        self.ip_id,
                    ));
                }
                Err(_) => self.counters.dropped += 1,
            }
            nic.net.recycle(rx)?;
            let reply = match answer {
                Some(Answer::Arp(n)) => Some((n, 0)),
                Some(Answer::Icmp(n)) => Some((n, 1)),
                Some(Answer::Udp(n)) => Some((n, 2)),
                _ => None,
            };
            if let Some((n, kind)) = reply {
                if self.reply(nic, n)? {
                    let c = &mut self.counters;
                    *[&mut c.arp, &mut c.icmp, &mut c.udp][kind] += 1;
                }
            }
            match answer {
                Some(Answer::Learned(..)) | Some(Answer::Ignored) => self.counters.ignored += 1,
                Some(Answer::Dropped(_)) => self.counters.dropped += 1,
                _ => {}
            }
        }
        if taken > 0 {
            nic.net.kick_rx();
        }
        nic.net.kick_tx();
        Ok(taken)
    }

    /// Find the peer's MAC: broadcast ARP requests every [`ARP_RETRY_MS`] until a reply
    /// (or a request) from the peer comes, for at most [`ARP_TIMEOUT_MS`]; answers what
    /// comes meanwhile.
    pub fn resolve(&mut self, nic: &mut Nic) -> Result<Mac, Error> {
        let deadline = Deadline::after_ms(ARP_TIMEOUT_MS);
        loop {
            if let Some(mac) = self.peer_mac {
                return Ok(mac);
            }
            if deadline.passed() {
                return Err(Error::NoPeer(self.iface.peer));
            }
            let n = net::build_arp_request(&mut self.scratch, &self.iface, self.iface.peer);
            self.reply(nic, n)?;
            nic.net.kick_tx();
            let retry = Deadline::after_ms(ARP_RETRY_MS);
            while self.peer_mac.is_none() && !retry.passed() && !deadline.passed() {
                self.poll(nic, |_, _| {})?;
            }
        }
    }
}

/// Wait until the device has consumed every frame queued (answering nothing meanwhile).
pub fn drain_tx(nic: &mut Nic) -> Result<(), Error> {
    nic.net.kick_tx();
    let deadline = Deadline::after_ms(TX_TIMEOUT_MS);
    loop {
        nic.net.tx.reclaim()?;
        if nic.net.tx.queue.outstanding() == 0 {
            return Ok(());
        }
        if deadline.passed() {
            return Err(Error::Timeout("the device to send every frame queued"));
        }
        core::hint::spin_loop();
    }
}

/// Rates of a run: (packets per second, Gbit/s of UDP payload with 3 decimals as
/// (whole, thousandths)).
pub fn rates(packets: u64, payload: u64, cycles: u64) -> (u64, u64, u64) {
    let us = crate::time::cycles_to_us(cycles).max(1);
    let pps = packets.saturating_mul(1_000_000) / us;
    // bits per microsecond = Mbit/s; / 1000 = Gbit/s.
    let mbps = (u128::from(packets) * u128::from(payload) * 8 / u128::from(us)) as u64;
    (pps, mbps / 1000, mbps % 1000)
}
