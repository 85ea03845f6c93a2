//! Firecracker's hybrid vsock, host side: a host program connects to the Unix socket and
//! sends `CONNECT <port>\n`; once the guest accepts, it reads `OK <hostport>\n` and the
//! socket is the stream. [`Pending`] collects that first line, a byte at a time as it
//! arrives, never more than [`MAX_LINE`] bytes.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;

/// The longest CONNECT line accepted ("CONNECT 4294967295\n" is 19 bytes).
pub const MAX_LINE: usize = 32;

/// What a host program's first line came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// Not complete yet.
    More,
    /// Connect to this guest port.
    Connect(u32),
    /// Closed, broken, too long or not a CONNECT: drop the client.
    Bad,
}

/// A host program that connected and has not finished its CONNECT line.
#[derive(Debug)]
pub struct Pending {
    /// Its socket (non-blocking).
    pub stream: UnixStream,
    line: Vec<u8>,
    /// When it connected.
    pub since: std::time::Instant,
}

impl Pending {
    /// A client on `stream`.
    pub fn new(stream: UnixStream) -> Pending {
        Pending {
            stream,
            line: Vec::with_capacity(MAX_LINE),
            since: std::time::Instant::now(),
        }
    }

    /// Reads what arrived, a byte at a time so nothing after the line is consumed.
    pub fn read(&mut self) -> Line {
        loop {
            let mut b = [0u8; 1];
            match self.stream.read(&mut b) {
                Ok(0) => return Line::Bad,
                Ok(_) if b[0] == b'\n' => return parse(&self.line),
                Ok(_) if self.line.len() >= MAX_LINE => return Line::Bad,
                Ok(_) => self.line.push(b[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Line::More,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Line::Bad,
            }
        }
    }
}

/// Parses a CONNECT line without its newline.
pub fn parse(line: &[u8]) -> Line {
    let Ok(s) = std::str::from_utf8(line) else {
        return Line::Bad;
    };
    let s = s.strip_suffix('\r').unwrap_or(s);
    match s.strip_prefix("CONNECT ").map(|p| p.trim().parse::<u32>()) {
        Some(Ok(port)) => Line::Connect(port),
        _ => Line::Bad,
    }
}

/// The answer once the guest accepted.
pub fn ok_line(host_port: u32) -> String {
    format!("OK {host_port}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn lines() {
        assert_eq!(parse(b"CONNECT 5000"), Line::Connect(5000));
        assert_eq!(parse(b"CONNECT 52\r"), Line::Connect(52));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT x",
            b"connect 1",
            b"CONNECT 99999999999",
            b"\xff",
        ] {
            assert_eq!(parse(bad), Line::Bad, "{bad:?}");
        }
        assert_eq!(ok_line(1073741824), "OK 1073741824\n");
    }

    #[test]
    fn a_line_in_pieces_and_nothing_after_it_consumed() {
        let (ours, mut client) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut p = Pending::new(ours);
        assert_eq!(p.read(), Line::More);
        client.write_all(b"CONN").unwrap();
        assert_eq!(p.read(), Line::More);
        client.write_all(b"ECT 5000\ndata").unwrap();
        assert_eq!(p.read(), Line::Connect(5000));
        let mut rest = [0u8; 4];
        p.stream.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"data");
    }

    #[test]
    fn endless_lines_and_closed_clients_are_dropped() {
        let (ours, mut client) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut p = Pending::new(ours);
        client.write_all(&[b'A'; MAX_LINE + 1]).unwrap();
        assert_eq!(p.read(), Line::Bad);
        let (ours, client) = UnixStream::pair().unwrap();
        drop(client);
        assert_eq!(Pending::new(ours).read(), Line::Bad);
    }
}
