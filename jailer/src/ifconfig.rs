//! Bringing an interface up and giving it an IPv4 address with the classic ioctls
//! (`SIOCSIFFLAGS`, `SIOCSIFADDR`, `SIOCSIFNETMASK`) on the calling thread's network
//! namespace: what `ip link set up` and `ip addr add` did for `--net auto`, without
//! starting a process each (4 `ip` runs cost 17–25 ms of a VM's start on the CI host).

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};

/// `struct ifreq` with its flags member.
#[repr(C)]
struct IfReqFlags {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// `struct ifreq` with its address member.
#[repr(C)]
struct IfReqAddr {
    name: [u8; 16],
    addr: libc::sockaddr_in,
    _pad: [u8; 8],
}

/// Why an interface could not be configured.
#[derive(Debug, thiserror::Error)]
#[error("{what} of interface {name}")]
pub struct IfError {
    what: &'static str,
    name: String,
    #[source]
    source: std::io::Error,
}

/// A socket to issue interface ioctls on, in the calling thread's network namespace.
pub struct Ifconfig {
    socket: OwnedFd,
}

impl Ifconfig {
    /// Opens the ioctl socket (an unbound UDP socket).
    pub fn new() -> std::io::Result<Ifconfig> {
        use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
        let socket = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        Ok(Ifconfig { socket })
    }

    /// Sets IFF_UP on interface `name`.
    pub fn up(&self, name: &str) -> Result<(), IfError> {
        let err = |what, source| IfError {
            what,
            name: name.to_owned(),
            source,
        };
        let mut req = IfReqFlags {
            name: ifname(name).map_err(|e| err("the name", e))?,
            flags: 0,
            _pad: [0; 22],
        };
        self.ioctl(libc::SIOCGIFFLAGS, &mut req)
            .map_err(|e| err("reading the flags", e))?;
        req.flags |= libc::IFF_UP as libc::c_short;
        self.ioctl(libc::SIOCSIFFLAGS, &mut req)
            .map_err(|e| err("bringing up", e))
    }

    /// Gives interface `name` the address `cidr` (`a.b.c.d/prefix`).
    pub fn address(&self, name: &str, cidr: &str) -> Result<(), IfError> {
        let err = |what, source| IfError {
            what,
            name: name.to_owned(),
            source,
        };
        let (ip, mask) = parse_cidr(cidr).map_err(|e| err("the address", e))?;
        let ifname = ifname(name).map_err(|e| err("the name", e))?;
        for (request, value, what) in [
            (libc::SIOCSIFADDR, ip, "setting the address"),
            (libc::SIOCSIFNETMASK, mask, "setting the netmask"),
        ] {
            let mut req = IfReqAddr {
                name: ifname,
                addr: libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: 0,
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(value).to_be(),
                    },
                    sin_zero: [0; 8],
                },
                _pad: [0; 8],
            };
            self.ioctl(request, &mut req).map_err(|e| err(what, e))?;
        }
        Ok(())
    }

    fn ioctl<T>(&self, request: libc::c_ulong, req: &mut T) -> std::io::Result<()> {
        // SAFETY: `req` is one of the `struct ifreq` layouts above (40 bytes, the kernel's
        // size), valid for reading and writing across the call; the socket is ours.
        unsafe { bulkhead::sys::files::ioctl_mut(self.socket.as_fd(), request, req) }
    }
}

/// An interface name as `ifr_name` (NUL-terminated, at most 15 bytes).
fn ifname(name: &str) -> std::io::Result<[u8; 16]> {
    let mut out = [0u8; 16];
    if name.is_empty() || name.len() > 15 || name.contains('\0') {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    out[..name.len()].copy_from_slice(name.as_bytes());
    Ok(out)
}

/// `a.b.c.d/prefix` as the address and its netmask.
fn parse_cidr(cidr: &str) -> std::io::Result<(Ipv4Addr, Ipv4Addr)> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidInput, cidr.to_owned());
    let (ip, prefix) = cidr.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let prefix: u32 = prefix.parse().map_err(|_| bad())?;
    if !(1..=32).contains(&prefix) {
        return Err(bad());
    }
    let mask = u32::MAX << (32 - prefix);
    Ok((ip, Ipv4Addr::from(mask)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_kernel_size() {
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
        assert_eq!(std::mem::size_of::<IfReqAddr>(), 40);
    }

    #[test]
    fn cidrs_give_address_and_mask() {
        let (ip, mask) = parse_cidr("10.0.2.1/24").unwrap();
        assert_eq!(ip, Ipv4Addr::new(10, 0, 2, 1));
        assert_eq!(mask, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(parse_cidr("1.2.3.4/32").unwrap().1, Ipv4Addr::BROADCAST);
        for bad in ["1.2.3.4", "1.2.3.4/0", "1.2.3.4/33", "x/8"] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
        assert!(ifname("sixteen-chars-xx").is_err());
    }
}
