//! One stream between a guest port and a host Unix socket: its state, its credit, and the
//! bytes from the guest the host socket has not taken yet (at most [`BUF_ALLOC`]).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use super::credit::{Credit, Overrun, BUF_ALLOC};

/// Where a stream is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    /// Data flows.
    Established,
}

/// What writing to the host socket came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything held was written (or the socket is full for now).
    Ok,
    /// The host socket is gone: reset the stream.
    Broken,
}

/// A stream.
#[derive(Debug)]
pub struct Connection {
    /// The host side (non-blocking).
    pub stream: UnixStream,
    /// Where it is.
    pub state: State,
    /// Flow control.
    pub credit: Credit,
    /// Bytes from the guest not yet written to the host socket.
    held: VecDeque<u8>,
    /// The guest sends no more (SHUTDOWN with SEND).
    pub guest_done_sending: bool,
    /// The guest receives no more (SHUTDOWN with RCV): stop reading the host socket.
    pub guest_done_receiving: bool,
    /// The host socket reached end of file (SHUTDOWN with SEND was queued).
    pub host_eof: bool,
    /// The host socket's write side was shut down (after the guest's SHUTDOWN).
    host_write_shut: bool,
    /// The host socket may have bytes to read (edge-triggered: set by epoll, cleared when
    /// a read would block).
    pub readable: bool,
    /// When it was made (a host-initiated stream waits for the guest's answer from then).
    pub since: std::time::Instant,
}

impl Connection {
    /// A stream over `stream` in `state`.
    pub fn new(stream: UnixStream, state: State) -> Connection {
        Connection {
            stream,
            state,
            credit: Credit::default(),
            held: VecDeque::new(),
            guest_done_sending: false,
            guest_done_receiving: false,
            host_eof: false,
            host_write_shut: false,
            readable: true,
            since: std::time::Instant::now(),
        }
    }

    /// Takes `data` from the guest (an RW packet), within the credit we advertised.
    pub fn take(&mut self, data: &[u8]) -> Result<(), Overrun> {
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        self.credit.receive(len)?;
        self.held.extend(data);
        debug_assert!(self.held.len() <= BUF_ALLOC as usize);
        Ok(())
    }

    /// Bytes held for the host socket.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Writes what is held to the host socket, as far as it takes it; once the guest is
    /// done sending and everything is written, shuts the socket's write side.
    pub fn flush(&mut self) -> Flushed {
        while !self.held.is_empty() {
            let (a, _) = self.held.as_slices();
            match self.stream.write(a) {
                Ok(0) => return Flushed::Broken,
                Ok(n) => {
                    self.held.drain(..n);
                    self.credit.forwarded(u32::try_from(n).unwrap_or(u32::MAX));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flushed::Ok,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Flushed::Broken,
            }
        }
        if self.guest_done_sending && !self.host_write_shut {
            self.host_write_shut = true;
            // A peer already gone is found by the next read.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Flushed::Ok
    }

    /// Whether both sides are done: the stream can be reset and forgotten.
    pub fn finished(&self) -> bool {
        self.guest_done_sending
            && self.held.is_empty()
            && (self.host_eof || self.guest_done_receiving)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn held_bytes_reach_the_host_in_order_and_count_as_forwarded() {
        let (ours, mut host) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut c = Connection::new(ours, State::Established);
        c.take(b"hello ").unwrap();
        c.take(b"world").unwrap();
        assert_eq!(c.flush(), Flushed::Ok);
        assert_eq!(c.held(), 0);
        c.guest_done_sending = true;
        assert_eq!(c.flush(), Flushed::Ok);
        let mut got = String::new();
        host.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello world");
        assert_eq!(c.credit.tell(), (BUF_ALLOC, 11));
    }

    #[test]
    fn more_than_the_buffer_is_an_overrun() {
        let (ours, _host) = UnixStream::pair().unwrap();
        let mut c = Connection::new(ours, State::Established);
        c.take(&vec![0u8; BUF_ALLOC as usize]).unwrap();
        assert!(c.take(b"x").is_err());
        assert_eq!(c.held(), BUF_ALLOC as usize);
    }

    #[test]
    fn a_gone_host_is_broken() {
        let (ours, host) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        drop(host);
        let mut c = Connection::new(ours, State::Established);
        c.take(b"x").unwrap();
        assert_eq!(c.flush(), Flushed::Broken);
    }
}
