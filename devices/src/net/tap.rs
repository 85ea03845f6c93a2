//! The TAP interface: opening it (or taking inherited descriptors), the virtio-net header
//! size, offload probing and setting, and the errors that mean it has gone.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use super::virtio::NET_HDR_SIZE;

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOR('T', 210, unsigned int)`.
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
/// `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `_IOW('T', 217, int)`.
const TUNSETQUEUE: libc::c_ulong = 0x4004_54d9;

// The TUN ioctls, by number (nix's `_bad` macros: TUNSETIFF is declared as taking an int but
// reads and writes a `struct ifreq`).
nix::ioctl_readwrite_bad!(tunsetiff, TUNSETIFF, IfReq);
// TUNSETOFFLOAD, `_IOW('T', 208, unsigned int)` = 0x4004_54d0, takes its flags by value (as an
// unsigned long).
nix::ioctl_write_int!(tunsetoffload, b'T', 208);
nix::ioctl_read_bad!(tungetiff, TUNGETIFF, IfReq);
nix::ioctl_write_ptr_bad!(tunsetvnethdrsz, TUNSETVNETHDRSZ, libc::c_int);
nix::ioctl_write_ptr_bad!(tunsetqueue, TUNSETQUEUE, IfReq);

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_ATTACH_QUEUE: libc::c_short = 0x0200;
const IFF_DETACH_QUEUE: libc::c_short = 0x0400;

/// `TUNSETOFFLOAD` flags.
pub const TUN_F_CSUM: u32 = 0x01;
/// TSOv4.
pub const TUN_F_TSO4: u32 = 0x02;
/// TSOv6.
pub const TUN_F_TSO6: u32 = 0x04;
/// TSO with ECN.
pub const TUN_F_TSO_ECN: u32 = 0x08;
/// UFO.
pub const TUN_F_UFO: u32 = 0x10;

/// `struct ifreq` as far as the TUN ioctls use it: name, then flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// What went wrong with the TAP.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` could not be opened.
    #[error("opening /dev/net/tun for TAP {name}: {source}")]
    OpenTun {
        /// The interface.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An ioctl failed.
    #[error("{what} on TAP {name}: {source}")]
    Ioctl {
        /// Which ioctl.
        what: &'static str,
        /// The interface.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An inherited TAP descriptor opened without the flags we need.
    #[error("TAP {name} was opened with flags {flags:#x}: IFF_TAP, IFF_NO_PI and IFF_VNET_HDR are needed")]
    Flags {
        /// The interface.
        name: String,
        /// Its `IFF_*` flags.
        flags: u16,
    },
    /// An inherited descriptor is not usable.
    #[error("--tap-fd {fd}: {source}")]
    Fd {
        /// The descriptor.
        fd: RawFd,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// A TAP interface: one descriptor per queue pair, all non-blocking.
#[derive(Debug)]
pub struct Tap {
    name: String,
    fds: Vec<OwnedFd>,
    /// The `TUN_F_*` offloads the interface accepted when probed.
    offloads: u32,
}

impl Tap {
    /// Opens (or creates, given CAP_NET_ADMIN) interface `name` with `queue_pairs` queues.
    pub fn open(name: &str, queue_pairs: u16) -> Result<Tap, TapError> {
        let mut fds = Vec::new();
        for _ in 0..queue_pairs.max(1) {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open("/dev/net/tun")
                .map_err(|source| TapError::OpenTun {
                    name: name.to_string(),
                    source,
                })?;
            let mut req = IfReq {
                name: [0; libc::IFNAMSIZ],
                flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
                _pad: [0; 22],
            };
            if queue_pairs > 1 {
                req.flags |= IFF_MULTI_QUEUE;
            }
            let len = name.len().min(libc::IFNAMSIZ - 1);
            req.name[..len].copy_from_slice(&name.as_bytes()[..len]);
            // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is laid out
            // as and outlives the call; the descriptor is ours.
            if let Err(e) = unsafe { tunsetiff(file.as_raw_fd(), &mut req) } {
                return Err(TapError::Ioctl {
                    what: "TUNSETIFF",
                    name: name.to_string(),
                    source: e.into(),
                });
            }
            fds.push(OwnedFd::from(file));
        }
        Tap::from_fds(fds, name.to_string())
    }

    /// Takes inherited descriptors (already attached to a TAP with `IFF_VNET_HDR`), one
    /// per queue pair. `name` is used in messages when the kernel can't tell us the
    /// interface's name.
    pub fn from_fds(fds: Vec<OwnedFd>, name: String) -> Result<Tap, TapError> {
        let name = fds
            .first()
            .and_then(|fd| interface(fd.as_raw_fd()))
            .map(|(name, _)| name)
            .unwrap_or(name);
        for fd in &fds {
            // Without IFF_VNET_HDR every frame would lose (TX) or lack (RX) its header;
            // without IFF_NO_PI each would carry 4 more bytes: refuse rather than garble.
            if let Some((_, flags)) = interface(fd.as_raw_fd()) {
                if flags & (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
                    != IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
                {
                    return Err(TapError::Flags {
                        name,
                        flags: flags as u16,
                    });
                }
            }
            set_nonblocking(fd.as_fd()).map_err(|source| TapError::Fd {
                fd: fd.as_raw_fd(),
                source,
            })?;
            let size: libc::c_int = NET_HDR_SIZE as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads an int from a pointer valid for the call.
            if let Err(e) = unsafe { tunsetvnethdrsz(fd.as_raw_fd(), &size) } {
                return Err(TapError::Ioctl {
                    what: "TUNSETVNETHDRSZ 12",
                    name,
                    source: e.into(),
                });
            }
        }
        let mut tap = Tap {
            name,
            fds,
            offloads: 0,
        };
        tap.offloads = tap.probe_offloads();
        Ok(tap)
    }

    /// Which offloads the interface accepts: each tried alone with TUNSETOFFLOAD, then all
    /// switched off until the driver negotiates them.
    fn probe_offloads(&self) -> u32 {
        let mut accepted = 0;
        for flags in [
            TUN_F_CSUM,
            TUN_F_CSUM | TUN_F_TSO4,
            TUN_F_CSUM | TUN_F_TSO6,
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO_ECN,
            TUN_F_CSUM | TUN_F_UFO,
        ] {
            if self.set_offload(flags).is_ok() {
                accepted |= flags;
            }
        }
        let _ = self.set_offload(0);
        accepted
    }

    /// Sets the offloads the TAP may hand us (what the driver accepts on its RX queue).
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        match self.fds.first() {
            Some(fd) => set_offload(fd.as_raw_fd(), flags),
            None => Ok(()),
        }
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The offloads probed at start.
    pub fn offloads(&self) -> u32 {
        self.offloads
    }

    /// The descriptors, one per queue pair.
    pub fn into_fds(self) -> Vec<OwnedFd> {
        self.fds
    }

    /// The descriptors, one per queue pair.
    pub fn fds(&self) -> &[OwnedFd] {
        &self.fds
    }
}

/// Sets the offloads a TAP descriptor's interface may hand us (all its queues share them).
pub fn set_offload(fd: RawFd, flags: u32) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
    unsafe { tunsetoffload(fd, libc::c_ulong::from(flags)) }?;
    Ok(())
}

/// Attaches the queue of a multi-queue TAP descriptor to its interface again, or detaches
/// it (`TUNSETQUEUE`). A detached queue gets no frames (the kernel steers flows over the
/// attached ones and drops what was waiting in it) and reading or writing it fails with
/// EBADFD; it needs no capability either way. EINVAL: already in that state, or not a
/// multi-queue TAP.
pub fn set_queue_attached(fd: RawFd, attached: bool) -> io::Result<()> {
    let req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: if attached {
            IFF_ATTACH_QUEUE
        } else {
            IFF_DETACH_QUEUE
        },
        _pad: [0; 22],
    };
    // SAFETY: TUNSETQUEUE reads a `struct ifreq`, which `req` is laid out as and outlives
    // the call; the descriptor is borrowed for the call only.
    unsafe { tunsetqueue(fd, &req) }?;
    Ok(())
}

/// The interface a TAP descriptor is attached to and its `IFF_*` flags, if the kernel says.
fn interface(fd: RawFd) -> Option<(String, libc::c_short)> {
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: TUNGETIFF writes a `struct ifreq` into `req`, valid for the call.
    unsafe { tungetiff(fd, &mut req) }.ok()?;
    let end = req
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(req.name.len());
    Some((
        String::from_utf8_lossy(&req.name[..end]).into_owned(),
        req.flags,
    ))
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Whether an error reading or writing the TAP means it has gone for good (the interface
/// was deleted, or the descriptor detached from it) rather than a frame-sized problem.
pub fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADFD | libc::ENODEV | libc::ENXIO | libc::EBADF | libc::EPIPE)
    )
}

/// The `TUN_F_*` offloads matching the driver's negotiated `GUEST_*` features.
pub fn offloads_for(features: u64) -> u32 {
    use super::virtio::{
        VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO,
    };
    let has = |bit: u32| features & (1u64 << bit) != 0;
    let mut flags = 0;
    if has(VIRTIO_NET_F_GUEST_CSUM) {
        flags |= TUN_F_CSUM;
        if has(VIRTIO_NET_F_GUEST_TSO4) {
            flags |= TUN_F_TSO4;
        }
        if has(VIRTIO_NET_F_GUEST_TSO6) {
            flags |= TUN_F_TSO6;
        }
        if has(VIRTIO_NET_F_GUEST_ECN) {
            flags |= TUN_F_TSO_ECN;
        }
        if has(VIRTIO_NET_F_GUEST_UFO) {
            flags |= TUN_F_UFO;
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::virtio::{
        VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    };

    #[test]
    fn tunsetoffload_has_the_kernels_number() {
        // <linux/if_tun.h>: _IOW('T', 208, unsigned int).
        let code = nix::request_code_write!(b'T', 208, std::mem::size_of::<libc::c_int>());
        assert_eq!(code as u64, 0x4004_54d0);
    }

    #[test]
    fn guest_offloads_need_guest_csum() {
        let tso = 1u64 << VIRTIO_NET_F_GUEST_TSO4 | 1u64 << VIRTIO_NET_F_GUEST_TSO6;
        assert_eq!(offloads_for(tso), 0);
        assert_eq!(
            offloads_for(tso | 1u64 << VIRTIO_NET_F_GUEST_CSUM),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
        );
    }

    #[test]
    fn gone_errors() {
        assert!(is_gone(&io::Error::from_raw_os_error(libc::EBADFD)));
        assert!(!is_gone(&io::Error::from_raw_os_error(libc::EAGAIN)));
        assert!(!is_gone(&io::Error::from_raw_os_error(libc::EINVAL)));
    }

    #[test]
    fn a_socket_is_not_a_tap() {
        let (a, _b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let err = Tap::from_fds(vec![OwnedFd::from(a)], "fake".into()).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("TUNSETVNETHDRSZ 12 on TAP fake"));
    }
}
