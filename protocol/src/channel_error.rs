//! What can go wrong on a [`Channel`](crate::Channel), always with the peer's name.

use crate::codec::CodecError;
use crate::frame::FrameError;
use std::fmt;

/// An error on the control channel with `peer`.
#[derive(Debug)]
pub struct ChannelError {
    /// The peer as named when the channel was made, e.g. "bulkhead-blk blk0 (pid 4242)".
    pub peer: String,
    /// What went wrong.
    pub kind: ChannelErrorKind,
}

/// What went wrong on a channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelErrorKind {
    /// The peer closed the connection between frames.
    #[error("peer closed the connection")]
    Closed,
    /// A timeout expired before anything arrived (or could be sent); the channel is intact.
    #[error("timed out")]
    Timeout,
    /// An earlier frame was bad and the connection was closed; nothing more can be said.
    #[error("connection closed after bad frame ({0})")]
    Broken(&'static str),
    /// A frame could not be read (truncated, oversize, bad magic, read error).
    #[error(transparent)]
    Frame(FrameError),
    /// A message could not be encoded, or a payload was not a valid message.
    #[error(transparent)]
    Codec(CodecError),
    /// Writing a frame failed.
    #[error("sending {message}")]
    Send {
        /// Variant name of the message.
        message: &'static str,
        /// The write error.
        #[source]
        source: std::io::Error,
    },
    /// Setting a socket option (timeouts) failed.
    #[error("setting {option} on the socket")]
    SocketOption {
        /// The option.
        option: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The peer attached more fds than a frame may carry; the kernel dropped the rest
    /// (`MSG_CTRUNC`) and the ones received were closed.
    #[error(
        "more than {max} file descriptors with one frame (control data truncated); all closed"
    )]
    ControlTruncated {
        /// [`MAX_FDS`](crate::MAX_FDS).
        max: usize,
    },
    /// A message that carries fds arrived with fewer than it declares.
    #[error("{message} declares {expected} file descriptors but {got} arrived")]
    MissingFds {
        /// Variant name of the message.
        message: &'static str,
        /// Fds the message declares.
        expected: usize,
        /// Fds that arrived.
        got: usize,
    },
    /// [`send`](crate::Channel::send) was given a different number of fds than the message
    /// declares (a bug in the caller; nothing was sent).
    #[error("{message} carries {expected} file descriptors but {given} were given")]
    FdCountMismatch {
        /// Variant name of the message.
        message: &'static str,
        /// Fds the message declares.
        expected: usize,
        /// Fds passed to `send`.
        given: usize,
    },
    /// The handshake found a different protocol version.
    #[error(
        "protocol version mismatch: we speak version {ours}, the peer speaks version {theirs}"
    )]
    Version {
        /// Our [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
        ours: u32,
        /// The version in the peer's `Hello`.
        theirs: u32,
    },
    /// The handshake's first message was not a `Hello`.
    #[error("expected Hello to open the conversation, got {got}")]
    NotHello {
        /// Variant name of what arrived.
        got: &'static str,
    },
}

impl ChannelError {
    /// True if the peer closed the connection cleanly between frames.
    pub fn is_closed(&self) -> bool {
        matches!(self.kind, ChannelErrorKind::Closed)
    }

    /// True if a timeout expired with nothing lost: the call may be retried.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, ChannelErrorKind::Timeout)
    }
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "control channel with {}: {}", self.peer, self.kind)
    }
}

impl std::error::Error for ChannelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The kind's text is already part of our Display; continue the chain below it.
        std::error::Error::source(&self.kind)
    }
}
