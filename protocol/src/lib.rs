//! Control messages between the bulkhead launcher and the processes it starts, and between
//! `bulkhead ctl` and the launcher's API socket.
//!
//! # Layers
//! - [`message`]: what is said — one serde enum per direction of each conversation.
//! - [`codec`]: message ⇄ bytes (bincode, fixed configuration; the only bincode user).
//! - [`frame`]: bytes on a stream — magic, u32 LE length, payload of at most [`MAX_FRAME`].
//! - [`channel`]: a typed connection over a `UnixStream`: handshake, send/receive with
//!   `SCM_RIGHTS` fds, timeouts, and "a bad frame closes the connection".
//!
//! # The conversations
//! Launcher and each process (the launcher made the socketpair and passed one end down):
//! ```text
//! launcher                                  process (vmm, blk, net, console)
//!    | -- ToProcess::Hello{version} --------> |   both send Hello first, then each checks
//!    | <------- ToLauncher::Hello{version} -- |   the other's version (handshake())
//!    | <-- ToLauncher::Ready{role, pid} ----- |   confined and serving
//!    |                 ...                    |
//!    | -- QueryStatus / Pause / Resume -----> |   (vmm only)
//!    | <----------- ToLauncher::Status(..) -- |   the VM's state after the request
//!    | <-- DeviceFailed{device, reason} ----- |   (vmm, unprompted) a backend died/misbehaved
//!    | -- Resources{names} + fds ----------> |   fds handed over after start-up
//!    | -- ConfigChanged{device} ------------> |   (vmm only) e.g. the terminal was resized
//!    | <-------- ToLauncher::Error{message} - |   a request could not be carried out
//!    | -- ToProcess::Shutdown --------------> |
//!    | <--------- ToLauncher::Exited{code} -- |   last message, then the process exits
//! ```
//! A process may also send `Exited` unprompted (the guest powered off) and then exit.
//!
//! `bulkhead ctl --api-socket PATH status|pause|resume|shutdown`, one request per connection:
//! ```text
//! ctl                                       launcher (API socket)
//!    | -- ApiRequest::Hello{version} -------> |
//!    | <--------- ApiReply::Hello{version} -- |
//!    | -- ApiRequest::Status ---------------> |   or Pause / Resume / Shutdown
//!    | <----- ApiReply::Status(..) / Ok / Error(text)
//! ```
//!
//! # Hostile input
//! A process may be compromised by its guest, so everything received is checked: frames
//! with a bad magic, a zero or oversize length, a truncated body, a payload that is not a
//! message, a version other than ours, or the wrong number of fds are typed errors, logged
//! with the peer's name; the connection is then shut down. Nothing here panics on received
//! bytes; [`fuzz::fuzz_decode`] is the fuzzing entry point (see `protocol/fuzz/README.md`).

/// Guest-output files capped at `max-size=` (serial and console files).
pub mod capped;
pub mod channel;
pub mod channel_error;
pub mod codec;
pub mod frame;
pub mod fuzz;
pub mod message;
mod scm;

pub use channel::{ApiClientChannel, ApiServerChannel, Channel, LauncherChannel, ProcessChannel};
pub use channel_error::{ChannelError, ChannelErrorKind};
pub use frame::MAX_FRAME;
pub use message::{
    ApiReply, ApiRequest, DeviceState, DeviceStatus, Message, ToLauncher, ToProcess, VmState,
    VmStatus, MAX_FDS, PROTOCOL_VERSION,
};
