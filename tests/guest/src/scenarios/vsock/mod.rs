//! The virtio-vsock scenarios, on the first virtio-vsock device (either transport).
//!
//! - `vsock-probe` (default self-test): `vsock0 transport=<mmio|pci> guest_cid=<cid> ...`;
//!   fails when the CID is not a guest CID (below 3, or `u32::MAX` and above). Passes when
//!   there is no device.
//! - `vsock-echo`: listens on port [`ECHO_PORT`] and echoes every stream (many at once)
//!   until the host closes it; passes once `bulkhead.vsock-streams` streams ended.
//! - `vsock-connect`: connects to the host (CID 2) port [`HOST_PORT`], sends
//!   `bulkhead.vsock-bytes` bytes of [`pattern`] and checks the same bytes coming back.
//! - `vsock-latency`: ping-pong of [`PING`] bytes with the host's port [`HOST_PORT`].
//! - `vsock-hostile`: malformed packets, then a normal connection must work.

pub mod connect;
pub mod echo;
pub mod hostile;
pub mod latency;
pub mod probe;

use crate::time::{self, Deadline};
use crate::virtio::vsock::{Event, VsockError, MAX_PAYLOAD};
use crate::virtio::Transport;
use crate::vsocks::{Sock, VsockDevError};
use core::fmt;

/// Port `vsock-echo` listens on.
pub const ECHO_PORT: u32 = 5000;
/// Host port `vsock-connect`, `vsock-latency` and `vsock-hostile` connect to.
pub const HOST_PORT: u32 = 6000;
/// Bytes per `vsock-latency` round.
pub const PING: usize = 64;
/// How long a connect may take.
const CONNECT_MS: u64 = 5000;

/// Byte `i` of the payload `vsock-connect` sends.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(7).wrapping_add(3)) as u8
}

/// Why a vsock scenario failed.
#[derive(Debug)]
pub enum Error {
    /// The device could not be used.
    Dev(VsockDevError),
    /// The driver failed.
    Vsock(VsockError),
    /// The guest CID is not one a guest may have.
    BadCid(u64),
    /// The host refused (RST) a connect to this port.
    Refused(u32),
    /// The host closed the connection early.
    ClosedEarly {
        /// Bytes sent.
        sent: u64,
        /// Bytes received.
        received: u64,
    },
    /// A byte read back differs from what was sent.
    Mismatch {
        /// Offset in the stream.
        at: u64,
        /// Read.
        got: u8,
        /// Expected.
        want: u8,
    },
    /// Something did not happen in time.
    Timeout(&'static str, u64),
    /// `vsock-echo` ran out of time before enough streams ended.
    TooFewStreams {
        /// Streams that ended.
        ended: u32,
        /// `bulkhead.vsock-streams`.
        wanted: u32,
    },
    /// The device reports an error status.
    DeviceStatus(u32),
    /// No Ctrl+Alt+Del recogniser result: the reset did not stop the VM.
    ResetIgnored,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dev(e) => e.fmt(f),
            Self::Vsock(e) => write!(f, "vsock0: {e}"),
            Self::BadCid(c) => write!(f, "vsock0: guest_cid {c} is not a guest CID (3..2^32-1)"),
            Self::Refused(p) => write!(f, "vsock0: the host refused a connect to port {p} (RST)"),
            Self::ClosedEarly { sent, received } => write!(
                f,
                "vsock0: the host closed the stream early (sent {sent}, received {received})"
            ),
            Self::Mismatch { at, got, want } => write!(
                f,
                "vsock0: byte {at} read back is {got:#04x}, expected {want:#04x}"
            ),
            Self::Timeout(what, ms) => write!(f, "timeout waiting for {what} ({ms} ms)"),
            Self::TooFewStreams { ended, wanted } => write!(
                f,
                "timeout waiting for vsock streams to end: {ended} of {wanted}"
            ),
            Self::DeviceStatus(s) => {
                write!(f, "vsock0: device status {s:#x} (needs reset or failed)")
            }
            Self::ResetIgnored => write!(
                f,
                "the i8042 reset (0xfe to port 0x64) did not stop the VM within 1000 ms"
            ),
        }
    }
}

impl From<VsockDevError> for Error {
    fn from(e: VsockDevError) -> Self {
        Self::Dev(e)
    }
}

impl From<VsockError> for Error {
    fn from(e: VsockError) -> Self {
        Self::Vsock(e)
    }
}

/// Fail if the device reports DEVICE_NEEDS_RESET or FAILED.
pub fn check_status(sock: &Sock) -> Result<(), Error> {
    let s = sock.vsock.transport().status();
    if s & (crate::virtio::status::DEVICE_NEEDS_RESET | crate::virtio::status::FAILED) != 0 {
        return Err(Error::DeviceStatus(s));
    }
    Ok(())
}

/// Connect to the host's `port` and wait for the answer.
pub fn connect(sock: &mut Sock, port: u32) -> Result<usize, Error> {
    let v = &mut sock.vsock;
    let id = v.connect(crate::virtio::vsock::hdr::HOST_CID, port)?;
    let deadline = Deadline::after_ms(CONNECT_MS);
    loop {
        match v.poll()? {
            Some(Event::Connected(c)) if c == id => return Ok(id),
            Some(Event::Closed(c)) if c == id => return Err(Error::Refused(port)),
            Some(_) => {}
            None if deadline.passed() => {
                let _ = v.reset(id);
                return Err(Error::Timeout(
                    "the host to accept a vsock connect",
                    CONNECT_MS,
                ));
            }
            None => core::hint::spin_loop(),
        }
    }
}

/// Close `id` politely (SHUTDOWN both ways, wait for the RST a while, else RST).
pub fn close(sock: &mut Sock, id: usize) -> Result<(), Error> {
    let v = &mut sock.vsock;
    if v.shutdown(id, crate::virtio::vsock::hdr::shutdown::BOTH)
        .is_err()
    {
        return Ok(());
    }
    let deadline = Deadline::after_ms(1000);
    loop {
        match v.poll()? {
            Some(Event::Closed(c)) if c == id => return Ok(()),
            Some(_) => {}
            None if deadline.passed() => {
                let _ = v.reset(id);
                return Ok(());
            }
            None => core::hint::spin_loop(),
        }
    }
}

/// Send `bytes` bytes of [`pattern`] on `id` and check the same coming back (the host
/// echoes); returns the TSC cycles from the first send to the last byte back.
pub fn round_trip(sock: &mut Sock, id: usize, bytes: u64, ms: u64) -> Result<u64, Error> {
    let v = &mut sock.vsock;
    let deadline = Deadline::after_ms(ms);
    let start = time::now();
    let (mut sent, mut received) = (0u64, 0u64);
    let mut chunk = [0u8; MAX_PAYLOAD];
    let mut buf = [0u8; MAX_PAYLOAD];
    let mut stalled_since = time::now();
    while received < bytes {
        let mut progress = false;
        if sent < bytes {
            let n = (bytes - sent).min(MAX_PAYLOAD as u64) as usize;
            for (i, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern(sent + i as u64);
            }
            let m = v.send(id, &chunk[..n])?;
            sent += m as u64;
            progress |= m > 0;
        }
        while let Some(ev) = v.poll()? {
            if ev == Event::Closed(id) {
                return Err(Error::ClosedEarly { sent, received });
            }
        }
        loop {
            let n = v.recv(id, &mut buf)?;
            if n == 0 {
                break;
            }
            for (i, &got) in buf[..n].iter().enumerate() {
                let at = received + i as u64;
                if got != pattern(at) || at >= bytes {
                    return Err(Error::Mismatch {
                        at,
                        got,
                        want: pattern(at),
                    });
                }
            }
            received += n as u64;
            progress = true;
        }
        if progress {
            stalled_since = time::now();
        } else if time::now().wrapping_sub(stalled_since) > time::ms(200) {
            // No credit and no update for a while: ask (the peer may have missed ours).
            let _ = v.request_credit(id);
            stalled_since = time::now();
        }
        if deadline.passed() {
            return Err(Error::Timeout("vsock bytes to come back", ms));
        }
    }
    Ok(time::now().wrapping_sub(start))
}
