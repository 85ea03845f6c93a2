//! A typed, framed control connection over a Unix stream socket, with fd passing.
//!
//! `Channel<S, R>` sends messages of type `S` and receives messages of type `R`; the four
//! aliases below name the two ends of the two conversations. A message's fds travel as
//! `SCM_RIGHTS` with the first byte of its frame.
//!
//! A channel that met a bad frame (truncated, oversize, bad magic, undecodable payload,
//! missing or too many fds, wrong version) logs an error naming the peer, shuts the socket
//! down and refuses every later call with "connection closed after bad frame": once a
//! stream has lost its place there is no trustworthy way back into step.

use crate::channel_error::{ChannelError, ChannelErrorKind};
use crate::codec;
use crate::frame::{self, FrameError};
use crate::message::PROTOCOL_VERSION;
use crate::message::{ApiReply, ApiRequest, Message, ToLauncher, ToProcess, MAX_FDS};
use crate::scm;
#[cfg(test)]
use std::io::Write;
use std::io::{self, Read};
use std::marker::PhantomData;
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// The launcher's end of its connection with a vmm or device process.
pub type LauncherChannel = Channel<ToProcess, ToLauncher>;
/// A vmm or device process's end of its connection with the launcher.
pub type ProcessChannel = Channel<ToLauncher, ToProcess>;
/// The launcher's end of an API socket connection.
pub type ApiServerChannel = Channel<ApiReply, ApiRequest>;
/// `bulkhead ctl`'s end of an API socket connection.
pub type ApiClientChannel = Channel<ApiRequest, ApiReply>;

/// A control connection that sends `S` and receives `R`.
#[derive(Debug)]
pub struct Channel<S, R> {
    stream: UnixStream,
    peer: String,
    /// Why the connection was closed after a bad frame, if it was.
    broken: Option<&'static str>,
    _messages: PhantomData<fn(S) -> R>,
}

impl<S: Message, R: Message> Channel<S, R> {
    /// Wraps a connected stream; `peer` names the other end in errors and logs
    /// (e.g. "bulkhead-blk blk0 (pid 4242)").
    pub fn new(stream: UnixStream, peer: impl Into<String>) -> Self {
        Self {
            stream,
            peer: peer.into(),
            broken: None,
            _messages: PhantomData,
        }
    }

    /// The peer's name as given to [`Channel::new`].
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Limits how long [`recv`](Self::recv) waits for a frame and [`send`](Self::send) for
    /// room in the socket (`None`: forever). A receive that times out before a frame starts
    /// returns a retryable timeout; one that times out inside a frame breaks the channel.
    pub fn set_timeouts(
        &self,
        read: Option<Duration>,
        write: Option<Duration>,
    ) -> Result<(), ChannelError> {
        self.stream.set_read_timeout(read).map_err(|source| {
            self.err(ChannelErrorKind::SocketOption {
                option: "SO_RCVTIMEO",
                source,
            })
        })?;
        self.stream.set_write_timeout(write).map_err(|source| {
            self.err(ChannelErrorKind::SocketOption {
                option: "SO_SNDTIMEO",
                source,
            })
        })
    }

    /// Exchanges `Hello` with the peer and checks that both speak [`PROTOCOL_VERSION`].
    /// Either side may call it first; both must call it before anything else.
    pub fn handshake(&mut self) -> Result<(), ChannelError> {
        self.handshake_as(PROTOCOL_VERSION)
    }

    /// [`handshake`](Self::handshake) announcing `version` instead of ours (for tests of
    /// version mismatches).
    #[doc(hidden)]
    pub fn handshake_as(&mut self, version: u32) -> Result<(), ChannelError> {
        self.send(&S::hello(version), &[])?;
        self.receive_hello(version)
    }

    /// The first half of [`handshake`](Self::handshake): sends our `Hello`, so that a peer
    /// waiting for it goes on while we do something else; [`Self::finish_handshake`]
    /// then reads the peer's.
    pub fn send_hello(&mut self) -> Result<(), ChannelError> {
        self.send(&S::hello(PROTOCOL_VERSION), &[])
    }

    /// The second half of [`handshake`](Self::handshake), after [`Self::send_hello`]:
    /// reads the peer's `Hello` and checks its version.
    pub fn finish_handshake(&mut self) -> Result<(), ChannelError> {
        self.receive_hello(PROTOCOL_VERSION)
    }

    fn receive_hello(&mut self, version: u32) -> Result<(), ChannelError> {
        let (hello, fds) = self.recv()?;
        if !fds.is_empty() {
            log::warn!(
                "control channel with {}: closing {} unexpected fds sent with Hello",
                self.peer,
                fds.len()
            );
        }
        match hello.hello_version() {
            Some(theirs) if theirs == version => Ok(()),
            Some(theirs) => Err(self.fail(
                "version mismatch",
                ChannelErrorKind::Version {
                    ours: version,
                    theirs,
                },
            )),
            None => Err(self.fail("no Hello", ChannelErrorKind::NotHello { got: hello.name() })),
        }
    }

    /// Sends `msg` with `fds`, which must be exactly as many as the message declares
    /// ([`Message::fds_carried`]). The fds stay open on our side.
    pub fn send(&mut self, msg: &S, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        self.check_usable()?;
        let expected = msg.fds_carried();
        if fds.len() != expected || expected > MAX_FDS {
            return Err(self.err(ChannelErrorKind::FdCountMismatch {
                message: msg.name(),
                expected,
                given: fds.len(),
            }));
        }
        let payload = codec::encode(msg).map_err(|e| self.err(ChannelErrorKind::Codec(e)))?;
        let bytes = frame::frame(&payload).map_err(|e| self.err(ChannelErrorKind::Frame(e)))?;
        let mut sent = 0;
        while sent < bytes.len() {
            // In bounds: the loop runs only while sent < bytes.len().
            let rest = &bytes[sent..];
            let with = if sent == 0 { fds } else { &[] };
            match scm::send(self.stream.as_fd(), rest, with) {
                Ok(0) => {
                    let source = io::Error::from(io::ErrorKind::WriteZero);
                    return Err(self.fail(
                        "short write",
                        ChannelErrorKind::Send {
                            message: msg.name(),
                            source,
                        },
                    ));
                }
                Ok(n) => sent += n,
                Err(e) if sent == 0 && is_timeout(&e) => {
                    return Err(self.err(ChannelErrorKind::Timeout))
                }
                Err(e) if sent == 0 && is_peer_gone(&e) => {
                    return Err(self.err(ChannelErrorKind::Closed))
                }
                Err(source) => {
                    return Err(self.fail(
                        "send failed",
                        ChannelErrorKind::Send {
                            message: msg.name(),
                            source,
                        },
                    ))
                }
            }
        }
        Ok(())
    }

    /// Receives the next message and the fds that came with it (exactly as many as it
    /// declares; extra ones are closed and logged).
    pub fn recv(&mut self) -> Result<(R, Vec<OwnedFd>), ChannelError> {
        self.check_usable()?;
        let mut reader = FdReader {
            sock: self.stream.as_fd(),
            fds: Vec::new(),
            truncated: false,
        };
        let result = frame::read_frame(&mut reader);
        let (mut fds, truncated) = (reader.fds, reader.truncated);
        if truncated {
            drop(fds);
            return Err(self.fail(
                "fds truncated",
                ChannelErrorKind::ControlTruncated { max: MAX_FDS },
            ));
        }
        let payload = match result {
            Ok(payload) => payload,
            Err(FrameError::Closed) => return Err(self.err(ChannelErrorKind::Closed)),
            Err(e) if e.is_idle_timeout() => return Err(self.err(ChannelErrorKind::Timeout)),
            Err(FrameError::Io { got: 0, source }) if is_peer_gone(&source) => {
                return Err(self.err(ChannelErrorKind::Closed))
            }
            Err(e) => return Err(self.fail("bad frame", ChannelErrorKind::Frame(e))),
        };
        let msg: R = match codec::decode(&payload) {
            Ok(msg) => msg,
            Err(e) => return Err(self.fail("undecodable payload", ChannelErrorKind::Codec(e))),
        };
        let expected = msg.fds_carried();
        if fds.len() < expected {
            let got = fds.len();
            drop(fds);
            return Err(self.fail(
                "missing fds",
                ChannelErrorKind::MissingFds {
                    message: msg.name(),
                    expected,
                    got,
                },
            ));
        }
        if fds.len() > expected {
            log::warn!(
                "control channel with {}: closing {} unexpected fds sent with {}",
                self.peer,
                fds.len() - expected,
                msg.name()
            );
            fds.truncate(expected);
        }
        Ok((msg, fds))
    }

    /// Gives back the socket.
    pub fn into_inner(self) -> UnixStream {
        self.stream
    }

    fn check_usable(&self) -> Result<(), ChannelError> {
        match self.broken {
            Some(why) => Err(self.err(ChannelErrorKind::Broken(why))),
            None => Ok(()),
        }
    }

    fn err(&self, kind: ChannelErrorKind) -> ChannelError {
        ChannelError {
            peer: self.peer.clone(),
            kind,
        }
    }

    /// Records a bad frame: logs it, shuts the connection down and breaks the channel.
    fn fail(&mut self, why: &'static str, kind: ChannelErrorKind) -> ChannelError {
        let err = self.err(kind);
        log::error!("{}; closing the connection", error_chain(&err));
        // Already-closed sockets fail here; nothing more to do about it.
        let _ = self.stream.shutdown(Shutdown::Both);
        self.broken = Some(why);
        err
    }
}

impl<S, R> AsFd for Channel<S, R> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

/// `err` and its sources, joined by ": ".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn is_peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// `Read` over `recvmsg` that keeps every fd arriving while one frame is read, at most
/// [`MAX_FDS`] in all: a peer that sends a frame a byte at a time, each byte with fds,
/// would otherwise fill this process's fd table before the frame ends.
struct FdReader<'a> {
    sock: BorrowedFd<'a>,
    fds: Vec<OwnedFd>,
    truncated: bool,
}

impl Read for FdReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let got = scm::recv(self.sock, buf)?;
        self.fds.extend(got.fds);
        self.truncated |= got.truncated;
        if self.fds.len() > MAX_FDS {
            // Closed now, not once the frame is read; the channel fails as truncated.
            self.fds.clear();
            self.truncated = true;
            return Err(io::Error::other("more fds than one message may carry"));
        }
        Ok(got.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode;
    use crate::frame::frame;

    /// A socket pair whose `kept` end reads end-of-stream once every copy of `given` is
    /// closed: handing `given` to a peer and dropping ours shows whether the peer closed it.
    fn witness() -> (UnixStream, UnixStream) {
        let (kept, given) = UnixStream::pair().unwrap();
        kept.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (kept, given)
    }

    fn all_closed(kept: &mut [UnixStream]) -> bool {
        kept.iter_mut()
            .all(|k| matches!(k.read(&mut [0u8; 1]), Ok(0)))
    }

    fn process_end() -> (ProcessChannel, UnixStream) {
        let (ours, raw) = UnixStream::pair().unwrap();
        let ch = Channel::new(ours, "unit peer");
        ch.set_timeouts(Some(Duration::from_secs(5)), None).unwrap();
        (ch, raw)
    }

    #[test]
    fn unexpected_fds_are_closed_and_the_message_delivered() {
        let (mut ch, raw) = process_end();
        let (mut kept, given): (Vec<_>, Vec<_>) = (0..3).map(|_| witness()).unzip();
        let bytes = frame(&encode(&ToProcess::Pause).unwrap()).unwrap();
        let borrowed: Vec<_> = given.iter().map(|g| g.as_fd()).collect();
        assert_eq!(
            scm::send(raw.as_fd(), &bytes, &borrowed).unwrap(),
            bytes.len()
        );
        drop(given);
        let (msg, fds) = ch.recv().unwrap();
        assert_eq!(msg, ToProcess::Pause);
        assert!(fds.is_empty());
        assert!(all_closed(&mut kept), "unexpected fds were kept open");
        // Extra fds are not a framing error: the channel goes on.
        scm::send(raw.as_fd(), &bytes, &[]).unwrap();
        assert_eq!(ch.recv().unwrap().0, ToProcess::Pause);
    }

    #[test]
    fn surplus_fds_beyond_the_declared_count_are_closed() {
        let (mut ch, raw) = process_end();
        let (mut kept, given): (Vec<_>, Vec<_>) = (0..3).map(|_| witness()).unzip();
        let msg = ToProcess::Resources {
            names: vec!["disk".into()],
        };
        let bytes = frame(&encode(&msg).unwrap()).unwrap();
        let borrowed: Vec<_> = given.iter().map(|g| g.as_fd()).collect();
        scm::send(raw.as_fd(), &bytes, &borrowed).unwrap();
        drop(given);
        let (got, fds) = ch.recv().unwrap();
        assert_eq!(got, msg);
        assert_eq!(fds.len(), 1);
        // The first fd is the one kept: writing through it reaches the first witness.
        let mut first = UnixStream::from(fds.into_iter().next().unwrap());
        first.write_all(b"disk").unwrap();
        let mut buf = [0u8; 4];
        kept[0].read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"disk");
        drop(first);
        assert!(all_closed(&mut kept), "surplus fds were kept open");
    }

    /// `ch`'s next receive fails as truncated, and every fd the peer sent is closed.
    fn assert_truncated_and_closed(ch: &mut ProcessChannel, kept: &mut [UnixStream]) {
        let err = ch.recv().unwrap_err();
        assert!(
            matches!(
                err.kind,
                ChannelErrorKind::ControlTruncated { max: MAX_FDS }
            ),
            "{err}"
        );
        assert!(all_closed(kept), "fds of a refused frame were kept open");
    }

    #[test]
    fn fds_spread_over_a_frame_s_bytes_are_counted_together() {
        // The frame a byte at a time, each byte with MAX_FDS fds: the reader stops at the
        // second byte, not at the frame's end.
        let (mut ch, raw) = process_end();
        let msg = ToProcess::Resources {
            names: vec!["x".into(); 2],
        };
        let bytes = frame(&encode(&msg).unwrap()).unwrap();
        let (mut kept, given): (Vec<_>, Vec<_>) = (0..MAX_FDS).map(|_| witness()).unzip();
        let borrowed: Vec<_> = given.iter().map(|g| g.as_fd()).collect();
        for byte in &bytes[..2] {
            scm::send(raw.as_fd(), std::slice::from_ref(byte), &borrowed).unwrap();
        }
        drop(given);
        assert_truncated_and_closed(&mut ch, &mut kept);
    }

    #[test]
    fn too_many_fds_break_the_channel_and_all_are_closed() {
        let (mut ch, mut raw) = process_end();
        let (mut kept, given): (Vec<_>, Vec<_>) = (0..MAX_FDS + 4).map(|_| witness()).unzip();
        let msg = ToProcess::Resources {
            names: vec!["x".into(); MAX_FDS + 4],
        };
        let bytes = frame(&encode(&msg).unwrap()).unwrap();
        let borrowed: Vec<_> = given.iter().map(|g| g.as_fd()).collect();
        scm::send(raw.as_fd(), &bytes, &borrowed).unwrap();
        drop(given);
        assert_truncated_and_closed(&mut ch, &mut kept);
        assert!(matches!(
            ch.recv().unwrap_err().kind,
            ChannelErrorKind::Broken(_)
        ));
        assert!(
            matches!(raw.read(&mut [0u8; 1]), Ok(0)),
            "connection not closed"
        );
    }
}
