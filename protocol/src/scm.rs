//! `sendmsg`/`recvmsg` on a Unix stream socket with file descriptors as `SCM_RIGHTS`.
//!
//! Written on libc rather than nix because a receiver must close *every* descriptor the
//! kernel installed, including when the control buffer was too small (`MSG_CTRUNC`): nix
//! refuses to iterate the control messages in that case, which would leak them.

use crate::message::MAX_FDS;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Size of one fd in a control message.
const FD_SIZE: usize = std::mem::size_of::<RawFd>();

/// Control buffer size in 8-byte words for one `SCM_RIGHTS` message of `fds` descriptors;
/// u64 words give the buffer the alignment `cmsghdr` needs.
const fn control_words(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument (it is `unsafe` only because
    // libc declares every CMSG_* function so).
    let bytes = unsafe { libc::CMSG_SPACE((fds * FD_SIZE) as libc::c_uint) } as usize;
    bytes.div_ceil(8)
}

/// Receive-side control buffer: room for [`MAX_FDS`] descriptors and no more.
const CONTROL_WORDS: usize = control_words(MAX_FDS);

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
    let mut control = vec![0u64; control_words(fds.len())];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is its "no address, no control" state.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let payload = (fds.len() * FD_SIZE) as libc::c_uint;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: pure arithmetic; the result is at most control.len() * 8 bytes.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(payload) } as _;
        // SAFETY: msg_control points at `control`, which is aligned for cmsghdr and at
        // least msg_controllen bytes long, so the first header lies inside it.
        let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        if cmsg.is_null() {
            return Err(io::Error::other("control buffer too small for SCM_RIGHTS"));
        }
        // SAFETY: cmsg points at the start of `control` (checked non-null above), which has
        // room for the header and CMSG_LEN(payload) bytes of data; the fds are copied with
        // unaligned writes into that data area.
        unsafe {
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    loop {
        // SAFETY: msg points at iov (valid for data.len() bytes of `data`) and at `control`,
        // both alive for the call; the fds in it are borrowed, hence open.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Receives into `buf`, taking ownership of any descriptors that came with the bytes.
pub(crate) fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let mut control = [0u64; CONTROL_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is its "no address, no control" state.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    let n = loop {
        // SAFETY: msg points at iov (buf.len() writable bytes of `buf`) and at `control`
        // (msg_controllen writable bytes), both alive and exclusively borrowed for the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    Ok(Received {
        bytes: n,
        // SAFETY: `msg` was just filled by a successful recvmsg and its control area lives
        // in `control`.
        fds: unsafe { take_fds(&msg) },
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// Takes ownership of every fd in the `SCM_RIGHTS` messages of `msg`'s control area.
///
/// # Safety
/// `msg` must have been filled by a successful `recvmsg` and its control buffer still be
/// alive: the kernel then wrote well-formed headers within `msg_controllen` bytes, and each
/// fd in them is newly installed in this process and owned by nobody else.
unsafe fn take_fds(msg: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: by the contract above, the control area holds kernel-written headers.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return null or a header inside the control area.
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: pure arithmetic.
            let empty = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (header.cmsg_len as usize).saturating_sub(empty) / FD_SIZE;
            // SAFETY: the header's data area holds `count` fds (the kernel sized cmsg_len
            // to what it wrote, truncated to the buffer if MSG_CTRUNC).
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: i < count, inside the data area; unaligned read of a plain int.
                let raw = unsafe { data.add(i).read_unaligned() };
                if raw >= 0 {
                    // SAFETY: the kernel installed this fd for us alone; we are its owner.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
        // SAFETY: cmsg is a header inside msg's control area (see above).
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
    fds
}
