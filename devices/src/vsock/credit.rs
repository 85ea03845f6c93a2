//! Credit-based flow control of one stream, both ways (virtio 1.2 section 5.10.6.3).
//!
//! Guest to host: we advertise a receive buffer of [`BUF_ALLOC`] bytes and count in
//! `fwd_cnt` what we have written to the host socket; the guest may have at most
//! `buf_alloc - (rx_cnt - fwd_cnt)` bytes in flight, and a packet beyond that is a credit
//! overrun (the stream is reset). Host to guest: we never send more than the guest's
//! `buf_alloc - (tx_cnt - fwd_cnt)`, and read nothing from the host socket while that is 0.
//! All counters wrap, as the spec's do.

/// The receive buffer we advertise per stream, and hold at most (bytes from the guest not
/// yet written to the host socket).
pub const BUF_ALLOC: u32 = 256 * 1024;

/// Send a CREDIT_UPDATE once this much was forwarded since the guest last heard.
const UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;

/// A stream's credit state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Credit {
    /// Bytes received from the guest, ever.
    rx_cnt: u32,
    /// Bytes of those written to the host socket, ever.
    fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    fwd_cnt_told: u32,
    /// Bytes sent to the guest, ever.
    tx_cnt: u32,
    /// The guest's receive buffer for this stream.
    peer_buf_alloc: u32,
    /// Bytes the guest has consumed, ever.
    peer_fwd_cnt: u32,
}

/// The guest sent more than it had credit for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("credit overrun: {len} bytes with {free} bytes of credit")]
pub struct Overrun {
    /// The packet's length.
    pub len: u32,
    /// The credit it had.
    pub free: u32,
}

impl Credit {
    /// What every packet from the guest tells us about its buffer.
    pub fn peer(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
    }

    /// How many bytes the guest can take now. A guest whose fwd_cnt runs ahead of what
    /// it was sent (lying) gets none.
    pub fn peer_free(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// `n` bytes were sent to the guest.
    pub fn sent(&mut self, n: u32) {
        self.tx_cnt = self.tx_cnt.wrapping_add(n);
    }

    /// Bytes from the guest held, not yet written to the host socket.
    pub fn held(&self) -> u32 {
        self.rx_cnt.wrapping_sub(self.fwd_cnt)
    }

    /// Takes `len` bytes from the guest, unless that overruns what we advertised.
    pub fn receive(&mut self, len: u32) -> Result<(), Overrun> {
        let free = BUF_ALLOC.saturating_sub(self.held());
        if len > free {
            return Err(Overrun { len, free });
        }
        self.rx_cnt = self.rx_cnt.wrapping_add(len);
        Ok(())
    }

    /// `n` bytes were written to the host socket.
    pub fn forwarded(&mut self, n: u32) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n);
    }

    /// Whether the guest should be told our credit now (enough was freed since).
    pub fn update_due(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.fwd_cnt_told) >= UPDATE_THRESHOLD
    }

    /// Our (buf_alloc, fwd_cnt) for a packet to the guest, which then knows them.
    pub fn tell(&mut self) -> (u32, u32) {
        self.fwd_cnt_told = self.fwd_cnt;
        (BUF_ALLOC, self.fwd_cnt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_more_than_the_guest_granted() {
        let mut c = Credit::default();
        assert_eq!(c.peer_free(), 0, "nothing before the guest says its buffer");
        c.peer(1000, 0);
        assert_eq!(c.peer_free(), 1000);
        c.sent(600);
        assert_eq!(c.peer_free(), 400);
        c.sent(400);
        assert_eq!(c.peer_free(), 0);
        c.peer(1000, 500);
        assert_eq!(c.peer_free(), 500);
        // A lying fwd_cnt (more consumed than sent) wraps in_flight huge: no credit.
        c.peer(1000, 5000);
        assert_eq!(c.peer_free(), 0);
    }

    #[test]
    fn counters_wrap() {
        let mut c = Credit::default();
        c.sent(u32::MAX - 10);
        c.peer(100, u32::MAX - 10);
        c.sent(50);
        assert_eq!(c.peer_free(), 50);
    }

    #[test]
    fn overrun_is_refused() {
        let mut c = Credit::default();
        assert_eq!(c.receive(BUF_ALLOC), Ok(()));
        assert_eq!(c.receive(1), Err(Overrun { len: 1, free: 0 }));
        c.forwarded(10);
        assert_eq!(c.held(), BUF_ALLOC - 10);
        assert_eq!(c.receive(10), Ok(()));
        assert!(c.receive(u32::MAX).is_err());
    }

    #[test]
    fn update_after_a_quarter_is_forwarded() {
        let mut c = Credit::default();
        c.receive(BUF_ALLOC).unwrap();
        c.forwarded(UPDATE_THRESHOLD - 1);
        assert!(!c.update_due());
        c.forwarded(1);
        assert!(c.update_due());
        assert_eq!(c.tell(), (BUF_ALLOC, UPDATE_THRESHOLD));
        assert!(!c.update_due());
    }
}
