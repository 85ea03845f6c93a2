//! Opening TAP devices for the net backend: `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, one fd
//! per queue pair (`IFF_MULTI_QUEUE` when more than one), optionally inside a network
//! namespace.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

// TUNSETIFF is declared `_IOW('T', 202, int)` but takes a `struct ifreq`: the number as is.
nix::ioctl_readwrite_bad!(tun_set_iff, TUNSETIFF, IfReq);
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
/// Longest interface name (IFNAMSIZ without the NUL).
pub const MAX_NAME: usize = 15;

/// `struct ifreq` as TUNSETIFF reads it: a name and flags (the union's other members are
/// larger, hence the padding).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Errors while opening a TAP.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is unusable.
    #[error("TAP name {0:?}: 1 to {MAX_NAME} characters, no '/', ' ' or ':'")]
    BadName(String),
    /// /dev/net/tun cannot be opened.
    #[error("opening /dev/net/tun for TAP {name}")]
    Open {
        /// The TAP.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// TUNSETIFF failed (no such TAP and no right to create it, or busy, or the queue
    /// count does not match how it was created).
    #[error("attaching to TAP {name} (TUNSETIFF, queue {queue})")]
    Attach {
        /// The TAP.
        name: String,
        /// Which queue.
        queue: usize,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Checks a TAP name.
pub fn check_name(name: &str) -> Result<(), TapError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.contains(['/', ' ', ':', '\0'])
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(TapError::BadName(name.to_owned()))
    }
}

/// Opens (creating it if it does not exist and we may) TAP `name` with `queues` queues.
pub fn open(name: &str, queues: u16) -> Result<Vec<OwnedFd>, TapError> {
    check_name(name)?;
    let mut flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if queues > 1 {
        flags |= IFF_MULTI_QUEUE;
    }
    let mut fds = Vec::new();
    for queue in 0..usize::from(queues) {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|source| TapError::Open {
                name: name.to_owned(),
                source,
            })?;
        let mut req = IfReq {
            name: [0; 16],
            flags,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads (and writes back) a `struct ifreq`; `req` is one
        // (repr(C), 40 bytes, the size of ifreq on x86-64) and lives across the call; the
        // fd is ours.
        if let Err(e) = unsafe { tun_set_iff(file.as_raw_fd(), &mut req) } {
            return Err(TapError::Attach {
                name: name.to_owned(),
                queue,
                source: e.into(),
            });
        }
        fds.push(OwnedFd::from(file));
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernel_size() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }

    #[test]
    fn names() {
        assert!(check_name("tap0").is_ok());
        assert!(check_name("bulkhead-tap012").is_ok());
        for bad in ["", "a/b", "a b", "x:1", "sixteen-chars-xx", "..", "."] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
