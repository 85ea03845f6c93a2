//! `net-soak`: sequenced UDP datagrams to the host, which echoes them, for
//! `bulkhead.soak-ms` (default 5000), on the NIC `bulkhead.net.nic`.
//!
//! Resolves the peer (`bulkhead.net.peer`) by ARP, then sends the warm-up datagram
//! ([`NET_HELLO`]) every [`HELLO_RETRY_MS`] until its echo comes back (the host's echo is
//! up), and prints `net<N> soaking peer=<ip>:<port> ms=<ms>`. Then datagram `seq` = 0, 1,
//! ... ([`crate::soak::fill_net`]) from and to UDP port `bulkhead.net.soak-port` (default
//! 7000), at most [`WINDOW`] unanswered at a time; a datagram unanswered for [`GIVE_UP_MS`]
//! no longer holds the window (its echo still counts if it comes). Meanwhile ARP and ICMP
//! echo requests are answered, so the host can ping. A corrupt echo, an echo of a datagram
//! never sent, DEVICE_NEEDS_RESET, or no echo at all for
//! [`PATIENCE_MS`](crate::scenarios::soak::PATIENCE_MS) fails it.
//!
//! At the end it waits up to [`TAIL_MS`] for the echoes still due, and passes with
//! `PASS net-soak sent=S received=R lost=L duplicates=D max-stall-ms=M` (lost = sent -
//! distinct echoes). Stall lines: `net-soak: stall <ms> ms` between consecutive new
//! echoes.

use super::{iface, Stack};
use crate::machine::Machine;
use crate::net::{self, IpFmt, Mac, Route};
use crate::nics::{self, Nic};
use crate::scenarios::soak::{Dev, Error, Patience, Watch};
use crate::soak::{
    check_net, fill_net, net_len, Arrival, NeverSent, SeqTracker, Summary, NET_HELLO,
};
use crate::time::{self, Deadline};

/// Datagrams unanswered at most.
pub const WINDOW: u64 = 32;
/// A datagram unanswered this long no longer holds the window (the window spans
/// [`WINDOW`] sequence numbers from the oldest unanswered one, so a lost datagram pauses
/// sending about this long: it shows as a stall of about this much).
pub const GIVE_UP_MS: u64 = 100;
/// The warm-up datagram is sent again this often until it is echoed.
pub const HELLO_RETRY_MS: u64 = 100;
/// How long the warm-up may take (the host's echo may start after the VM).
pub const HELLO_MS: u64 = 30_000;
/// How long the end waits for echoes still due.
pub const TAIL_MS: u64 = 1000;

/// What the receive side saw.
struct Echoes {
    port: u16,
    tracker: SeqTracker,
    hello: bool,
    new: u64,
    error: Option<Error>,
}

impl Echoes {
    fn datagram(&mut self, dport: u16, payload: &[u8]) {
        if dport != self.port || self.error.is_some() {
            return;
        }
        match check_net(payload) {
            Ok(NET_HELLO) => self.hello = true,
            Ok(seq) => match self.tracker.arrived(seq) {
                Ok(Arrival::New) => self.new += 1,
                Ok(Arrival::Duplicate | Arrival::Late) => {}
                Err(NeverSent(seq)) => self.error = Some(Error::NeverSent(seq)),
            },
            Err(e) => self.error = Some(Error::NetCorrupt(e)),
        }
    }
}

/// Queue datagram `seq`; whether there was a free transmit buffer.
fn send(
    nic: &mut Nic,
    stack: &mut Stack,
    route: &Route,
    port: u16,
    seq: u64,
) -> Result<bool, Error> {
    let id = stack.ip_id;
    let queued = nic.net.send(|buf| {
        net::build_udp(buf, route, port, port, net_len(seq), id, |p| {
            fill_net(p, seq)
        })
        .unwrap_or(0)
    })?;
    if queued {
        stack.ip_id = id.wrapping_add(1);
    }
    Ok(queued)
}

/// Resolve the peer, retrying for as long as patience lasts.
fn resolve(nic: &mut Nic, stack: &mut Stack, dev: Dev) -> Result<Mac, Error> {
    let mut patience = Patience::new(dev);
    loop {
        match stack.resolve(nic) {
            Ok(mac) => return Ok(mac),
            Err(super::Error::NoPeer(_)) => patience.idle(nic.net.transport(), "an ARP reply")?,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Run the scenario.
pub fn run_soak(machine: &mut Machine) -> Result<Summary, Error> {
    let opts = machine.config.net;
    let soak = machine.config.soak;
    let port = opts.soak_port;
    let mut registry = nics::lock();
    let nic = registry.nic(&machine.config.devices, &mut machine.frames, opts.nic)?;
    let dev = Dev("net", nic.index);
    let mut stack = Stack::new(iface(nic, &opts), None);
    let peer_mac = resolve(nic, &mut stack, dev)?;
    let route = Route {
        src_mac: stack.iface.mac,
        dst_mac: peer_mac,
        src: stack.iface.ip,
        dst: stack.iface.peer,
    };
    let mut echoes = Echoes {
        port,
        tracker: SeqTracker::new(),
        hello: false,
        new: 0,
        error: None,
    };
    // Warm-up: until the host echoes.
    let hello_end = Deadline::after_ms(HELLO_MS);
    while !echoes.hello {
        if hello_end.passed() {
            return Err(Error::NoEcho { port, ms: HELLO_MS });
        }
        send(nic, &mut stack, &route, port, NET_HELLO)?;
        nic.net.kick_tx();
        let retry = Deadline::after_ms(HELLO_RETRY_MS);
        while !echoes.hello && !retry.passed() {
            stack.poll(nic, |dport, payload| echoes.datagram(dport, payload))?;
        }
        if let Some(e) = echoes.error.take() {
            return Err(e);
        }
    }
    crate::say!(
        "net{} soaking peer={}:{port} ms={}",
        nic.index,
        IpFmt(route.dst),
        soak.ms
    );
    let mut watch = Watch::new("net-soak", soak.stall_ms);
    let mut patience = Patience::new(dev);
    let end = Deadline::after_ms(soak.ms);
    let give_up = time::ms(GIVE_UP_MS);
    // Send times of the datagrams in the window, by seq % WINDOW.
    let mut sent_at = [0u64; WINDOW as usize];
    // The oldest datagram that still holds the window.
    let mut oldest = 0u64;
    let mut tail: Option<Deadline> = None;
    loop {
        let before = echoes.new;
        stack.poll(nic, |dport, payload| echoes.datagram(dport, payload))?;
        if let Some(e) = echoes.error.take() {
            return Err(e);
        }
        if echoes.new > before {
            watch.completed();
            patience.progress();
        }
        let now = time::now();
        while oldest < echoes.tracker.sent()
            && (echoes.tracker.seen(oldest)
                || now.saturating_sub(sent_at[(oldest % WINDOW) as usize]) >= give_up)
        {
            oldest += 1;
        }
        if tail.is_none() && end.passed() {
            tail = Some(Deadline::after_ms(TAIL_MS));
        }
        match tail {
            Some(t) => {
                // Every echo still due gets the whole tail, not only GIVE_UP_MS: the last
                // window given up after 100 ms counted as lost when the host was busy for
                // that long at the very end (lost=32, one window, with no stall).
                if echoes.tracker.lost() == 0 || t.passed() {
                    break;
                }
            }
            None => {
                let mut queued = false;
                while echoes.tracker.sent() - oldest < WINDOW {
                    let seq = echoes.tracker.sent();
                    if !send(nic, &mut stack, &route, port, seq)? {
                        break;
                    }
                    echoes.tracker.send();
                    sent_at[(seq % WINDOW) as usize] = time::now();
                    queued = true;
                }
                if queued {
                    nic.net.kick_tx();
                }
            }
        }
        if echoes.new == before {
            patience.idle(nic.net.transport(), "echoes from the host")?;
        }
    }
    let t = &echoes.tracker;
    Ok(Summary::Net {
        sent: t.sent(),
        received: t.received(),
        lost: t.lost(),
        duplicates: t.duplicates(),
        max_stall_ms: watch.max_ms(),
    })
}
