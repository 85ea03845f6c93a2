//! `sendmsg`/`recvmsg` on a Unix stream socket with file descriptors as `SCM_RIGHTS`,
//! through nix's socket API.
//!
//! A receiver must close *every* descriptor the kernel installed, including when the
//! control buffer was too small (`MSG_CTRUNC`: the kernel installs the fds that fit and
//! drops the rest). nix refuses to iterate the control messages in that case, so the
//! truncated control area is read here as bytes ([`rights_in`]) to take those fds too.

use crate::message::MAX_FDS;
use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Size of one fd in a control message.
const FD_SIZE: usize = std::mem::size_of::<RawFd>();

/// `CMSG_ALIGN`: Linux aligns control headers and data to the size of a `size_t`.
const fn cmsg_align(len: usize) -> usize {
    let word = std::mem::size_of::<usize>();
    len.saturating_add(word - 1) & !(word - 1)
}

/// `CMSG_LEN(0)`: bytes of a control header before its data.
const HEADER_LEN: usize = cmsg_align(std::mem::size_of::<libc::cmsghdr>());

/// `CMSG_SPACE(MAX_FDS * FD_SIZE)`: room for one `SCM_RIGHTS` message of [`MAX_FDS`]
/// descriptors and no more.
const CONTROL_LEN: usize = HEADER_LEN + cmsg_align(MAX_FDS * FD_SIZE);

/// Receive-side control buffer, aligned for `cmsghdr` (nix reads headers in place).
#[repr(C, align(8))]
struct Control([u8; CONTROL_LEN]);

/// What one `recvmsg` brought.
pub(crate) struct Received {
    /// Data bytes read into the buffer (0: end of stream).
    pub bytes: usize,
    /// Every descriptor the kernel installed, now owned (close-on-exec).
    pub fds: Vec<OwnedFd>,
    /// The kernel had more control data than fitted (`MSG_CTRUNC`): fds were dropped.
    pub truncated: bool,
}

/// Sends `data` with `fds` attached (to its first byte). Returns the bytes sent, which may
/// be fewer than `data.len()`; the fds went with them if the count is not zero.
/// The channel keeps `fds.len() <= MAX_FDS`; tests send more to check the receiver.
pub(crate) fn send(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
    let iov = [IoSlice::new(data)];
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(Errno::EINTR) => continue,
            result => return result.map_err(io::Error::from),
        }
    }
}

/// Receives into `buf`, taking ownership of any descriptors that came with the bytes.
pub(crate) fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let mut control = Control([0; CONTROL_LEN]);
    let mut iov = [IoSliceMut::new(buf)];
    let (bytes, truncated, raw) = loop {
        let msg = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut control.0),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            result => result.map_err(io::Error::from)?,
        };
        let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
        // nix answers ENOBUFS rather than iterate a truncated area; read below instead.
        let raw: Vec<RawFd> = match msg.cmsgs() {
            Ok(cmsgs) => cmsgs
                .filter_map(|c| match c {
                    ControlMessageOwned::ScmRights(fds) => Some(fds),
                    _ => None,
                })
                .flatten()
                .collect(),
            Err(_) => Vec::new(),
        };
        break (msg.bytes, truncated, raw);
    };
    let raw = if truncated {
        rights_in(&control.0)
    } else {
        raw
    };
    Ok(Received {
        bytes,
        fds: own(raw),
        truncated,
    })
}

/// The fds in the `SCM_RIGHTS` messages of a control area a successful `recvmsg` filled
/// (the rest of it still zero), read as bytes: a `cmsghdr` is a `size_t` length (header
/// included) then level and type as `int`s, its data at [`HEADER_LEN`], the next header at
/// the aligned end. A length that overruns the area is cut to it.
fn rights_in(control: &[u8]) -> Vec<RawFd> {
    const WORD: usize = std::mem::size_of::<usize>();
    let field = |at: usize, len: usize| control.get(at..at.checked_add(len)?);
    let int = |at: usize| {
        field(at, 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, i32::from_ne_bytes)
    };
    let mut fds = Vec::new();
    let mut at = 0;
    while let Some(len) = field(at, WORD)
        .and_then(|b| b.try_into().ok())
        .map(usize::from_ne_bytes)
    {
        if len < HEADER_LEN {
            break;
        }
        let end = at.saturating_add(len).min(control.len());
        if int(at + WORD) == libc::SOL_SOCKET && int(at + WORD + 4) == libc::SCM_RIGHTS {
            let data = control.get(at + HEADER_LEN..end).unwrap_or(&[]);
            fds.extend(
                data.chunks_exact(FD_SIZE)
                    .filter_map(|b| b.try_into().ok())
                    .map(RawFd::from_ne_bytes),
            );
        }
        at = at.saturating_add(cmsg_align(len));
    }
    fds
}

/// Takes ownership of descriptors the kernel just installed for this process.
fn own(raw: Vec<RawFd>) -> Vec<OwnedFd> {
    raw.into_iter()
        .filter(|fd| *fd >= 0)
        // SAFETY: each fd came in an SCM_RIGHTS message of a successful recvmsg: the kernel
        // installed it in this process for us alone, and nothing else has wrapped it.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_sizes_match_the_c_macros() {
        // SAFETY: CMSG_LEN/CMSG_SPACE are pure arithmetic on their argument.
        let (len, space) = unsafe { (libc::CMSG_LEN(0), libc::CMSG_SPACE((MAX_FDS * 4) as _)) };
        assert_eq!(HEADER_LEN, len as usize);
        assert_eq!(CONTROL_LEN, space as usize);
    }

    #[test]
    fn rights_read_from_bytes_stop_at_the_area_end() {
        let mut area = [0u8; CONTROL_LEN];
        // A header claiming more than the area holds: only the fds inside it count.
        area[..8].copy_from_slice(&usize::MAX.to_ne_bytes());
        area[8..12].copy_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
        area[12..16].copy_from_slice(&libc::SCM_RIGHTS.to_ne_bytes());
        area[16..20].copy_from_slice(&7i32.to_ne_bytes());
        let fds = rights_in(&area);
        assert_eq!(fds.len(), MAX_FDS);
        assert_eq!(fds[0], 7);
        // An all-zero area (no control message) holds none.
        assert!(rights_in(&[0u8; CONTROL_LEN]).is_empty());
    }
}
