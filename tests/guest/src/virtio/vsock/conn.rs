//! One stream connection's bookkeeping: who it is with, its state, and the two credit
//! windows (virtio 1.2, 5.10.6.3). Counters are the spec's wrapping u32 byte counts.
//!
//! - Sending: the peer has `peer_buf_alloc` bytes of receive buffer and has consumed
//!   `peer_fwd_cnt` of what we sent; we have sent `tx_cnt`. We may send at most
//!   `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)` more ([`Conn::credit`]).
//! - Receiving: we advertise [`super::BUF_ALLOC`] and `fwd_cnt`, the bytes the application
//!   consumed from the connection's receive ring; `rx_cnt - fwd_cnt` bytes wait there.

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Slot unused.
    Free,
    /// We sent REQUEST, waiting for RESPONSE.
    Connecting,
    /// Data may flow.
    Established,
    /// We sent SHUTDOWN with both flags, waiting for the peer's RST.
    Closing,
}

/// A connection slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    /// State.
    pub state: State,
    /// Our port.
    pub local_port: u32,
    /// The peer's CID.
    pub peer_cid: u64,
    /// The peer's port.
    pub peer_port: u32,
    /// The peer's receive buffer (from its last header).
    pub peer_buf_alloc: u32,
    /// What the peer consumed of ours (from its last header).
    pub peer_fwd_cnt: u32,
    /// Payload bytes we sent.
    pub tx_cnt: u32,
    /// Payload bytes received into our ring.
    pub rx_cnt: u32,
    /// Payload bytes the application consumed from our ring.
    pub fwd_cnt: u32,
    /// The `fwd_cnt` last advertised to the peer.
    pub fwd_sent: u32,
    /// SHUTDOWN flags the peer sent.
    pub peer_shutdown: u32,
    /// SHUTDOWN flags we sent.
    pub our_shutdown: u32,
    /// We connected (rather than accepted).
    pub outgoing: bool,
    /// RW packets dropped because the peer overran the credit we gave it.
    pub overruns: u32,
}

impl Conn {
    /// An unused slot.
    pub const FREE: Self = Self {
        state: State::Free,
        local_port: 0,
        peer_cid: 0,
        peer_port: 0,
        peer_buf_alloc: 0,
        peer_fwd_cnt: 0,
        tx_cnt: 0,
        rx_cnt: 0,
        fwd_cnt: 0,
        fwd_sent: 0,
        peer_shutdown: 0,
        our_shutdown: 0,
        outgoing: false,
        overruns: 0,
    };

    /// A fresh connection.
    pub fn new(state: State, local_port: u32, peer_cid: u64, peer_port: u32) -> Self {
        Self {
            state,
            local_port,
            peer_cid,
            peer_port,
            ..Self::FREE
        }
    }

    /// Is this slot the connection (ours, theirs)?
    pub fn matches(&self, local_port: u32, peer_cid: u64, peer_port: u32) -> bool {
        self.state != State::Free
            && self.local_port == local_port
            && self.peer_cid == peer_cid
            && self.peer_port == peer_port
    }

    /// Bytes we may still send: the peer's buffer minus what is in flight. A peer whose
    /// counters make no sense (it claims to have consumed more than we sent, or to hold
    /// more than its buffer) gets no credit rather than a huge one.
    pub fn credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Take the peer's credit fields from a header it sent.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
    }

    /// Bytes waiting in our receive ring.
    pub fn pending(&self) -> u32 {
        self.rx_cnt.wrapping_sub(self.fwd_cnt)
    }

    /// Room in our receive ring of `buf_alloc` bytes.
    pub fn room(&self, buf_alloc: u32) -> u32 {
        buf_alloc.saturating_sub(self.pending())
    }

    /// Consumed bytes not yet advertised.
    pub fn unadvertised(&self) -> u32 {
        self.fwd_cnt.wrapping_sub(self.fwd_sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Conn {
        Conn::new(State::Established, 5000, 2, 1234)
    }

    #[test]
    fn credit_is_buffer_minus_in_flight() {
        let mut c = conn();
        assert_eq!(c.credit(), 0);
        c.update_peer_credit(1000, 0);
        assert_eq!(c.credit(), 1000);
        c.tx_cnt = 600;
        assert_eq!(c.credit(), 400);
        c.update_peer_credit(1000, 500);
        assert_eq!(c.credit(), 900);
    }

    #[test]
    fn credit_wraps_with_the_counters() {
        let mut c = conn();
        c.tx_cnt = 10;
        c.update_peer_credit(100, u32::MAX - 19);
        // 30 in flight across the wrap.
        assert_eq!(c.credit(), 70);
    }

    #[test]
    fn nonsense_peer_counters_give_no_credit() {
        let mut c = conn();
        c.tx_cnt = 100;
        // Claims to have consumed more than we sent.
        c.update_peer_credit(1000, 200);
        assert_eq!(c.credit(), 0);
        // Shrinks its buffer below what is in flight.
        c.update_peer_credit(50, 0);
        assert_eq!(c.credit(), 0);
    }

    #[test]
    fn receive_side_counts() {
        let mut c = conn();
        c.rx_cnt = 300;
        c.fwd_cnt = 100;
        assert_eq!(c.pending(), 200);
        assert_eq!(c.room(1024), 824);
        assert_eq!(c.unadvertised(), 100);
        c.fwd_sent = 100;
        assert_eq!(c.unadvertised(), 0);
    }

    #[test]
    fn matches_only_live_slots() {
        let c = conn();
        assert!(c.matches(5000, 2, 1234));
        assert!(!c.matches(5000, 2, 1235));
        assert!(!c.matches(5000, 3, 1234));
        assert!(!Conn::FREE.matches(0, 0, 0));
    }
}
