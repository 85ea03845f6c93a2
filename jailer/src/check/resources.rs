//! Checks of the host resources a VM's processes are given: TAP devices for the net backend,
//! vhost-net (informational: bulkhead's net device is a vhost-user process), hugepages, and
//! memfd for guest memory.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{describe_errno, read_trimmed, Fact, Status};

nix::ioctl_read_bad!(tun_get_features, libc::TUNGETFEATURES, libc::c_uint);

/// Opens `/dev/net/tun` and asks which TAP features the driver supports
/// (`TUNGETFEATURES` needs no interface, so nothing is created).
pub fn tap() -> Fact {
    let tun = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
    {
        Ok(f) => f,
        Err(e) => return tap_fact(Err(e), None),
    };
    let mut features: libc::c_uint = 0;
    // SAFETY: `tun` is an open /dev/net/tun descriptor owned by this function, and
    // TUNGETFEATURES writes one unsigned int through the pointer, which points at a live local.
    let features = unsafe { tun_get_features(tun.as_raw_fd(), &mut features) }
        .map(|_| features)
        .map_err(io::Error::from);
    tap_fact(Ok(()), Some(features))
}

fn tap_fact(open: io::Result<()>, features: Option<io::Result<libc::c_uint>>) -> Fact {
    if let Err(e) = open {
        return Fact::new(
            Status::Warn,
            "tap",
            format!(
                "cannot open /dev/net/tun: {}: no net device",
                describe_errno(&e)
            ),
        );
    }
    let flags = match features {
        Some(Ok(flags)) => flags,
        Some(Err(e)) => {
            return Fact::new(
                Status::Ok,
                "tap",
                format!(
                    "/dev/net/tun opened; TUNGETFEATURES failed: {}",
                    describe_errno(&e)
                ),
            )
        }
        None => return Fact::new(Status::Ok, "tap", "/dev/net/tun opened"),
    };
    let has = |flag: libc::c_int| flags & (flag as libc::c_uint) != 0;
    let named = [
        ("tap", has(libc::IFF_TAP)),
        ("no_pi", has(libc::IFF_NO_PI)),
        ("vnet_hdr", has(libc::IFF_VNET_HDR)),
        ("multi_queue", has(libc::IFF_MULTI_QUEUE)),
    ];
    let present: Vec<&str> = named.iter().filter(|(_, p)| *p).map(|(n, _)| *n).collect();
    let missing: Vec<&str> = named.iter().filter(|(_, p)| !*p).map(|(n, _)| *n).collect();
    let mut evidence = format!(
        "/dev/net/tun opened; features {} (TUNGETFEATURES {flags:#x})",
        if present.is_empty() {
            "none".to_string()
        } else {
            present.join(", ")
        }
    );
    if missing.is_empty() {
        Fact::new(Status::Ok, "tap", evidence)
    } else {
        evidence.push_str(&format!("; missing {}", missing.join(", ")));
        Fact::new(Status::Warn, "tap", evidence)
    }
}

/// Whether `/dev/vhost-net` exists (informational only).
pub fn vhost_net() -> Fact {
    vhost_net_fact(Path::new("/dev/vhost-net").exists())
}

fn vhost_net_fact(present: bool) -> Fact {
    let evidence = if present {
        "/dev/vhost-net present (not used: the net device is a vhost-user backend process)"
    } else {
        "no /dev/vhost-net (not needed: the net device is a vhost-user backend process)"
    };
    Fact::new(Status::Info, "vhost-net", evidence)
}

/// How many hugepages are reserved (`/proc/sys/vm/nr_hugepages`) and their size.
pub fn hugepages() -> Fact {
    let nr = read_trimmed("/proc/sys/vm/nr_hugepages");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let size = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Hugepagesize:"))
        .map(|s| s.trim().to_string());
    hugepages_fact(nr, size.as_deref())
}

fn hugepages_fact(nr: io::Result<String>, size: Option<&str>) -> Fact {
    let size = size.map(|s| format!(" of {s}")).unwrap_or_default();
    match nr {
        Ok(n) if n == "0" => Fact::new(
            Status::Info,
            "hugepages",
            "none reserved (/proc/sys/vm/nr_hugepages=0): guest memory uses normal pages",
        ),
        Ok(n) => Fact::new(
            Status::Info,
            "hugepages",
            format!("{n} reserved{size} (/proc/sys/vm/nr_hugepages)"),
        ),
        Err(e) => Fact::new(
            Status::Info,
            "hugepages",
            format!(
                "cannot read /proc/sys/vm/nr_hugepages: {}",
                describe_errno(&e)
            ),
        ),
    }
}

/// Creates (and drops) a sealable memfd: guest memory is a memfd shared with the backends.
pub fn memfd() -> Fact {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let made = memfd_create(
        c"bulkhead-check",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .and_then(|fd| nix::unistd::ftruncate(fd, 1 << 20));
    memfd_fact(made.map_err(io::Error::from))
}

fn memfd_fact(result: io::Result<()>) -> Fact {
    match result {
        Ok(()) => Fact::new(
            Status::Ok,
            "memfd",
            "memfd_create(MFD_CLOEXEC | MFD_ALLOW_SEALING) and ftruncate(1 MiB) succeeded",
        ),
        Err(e) => Fact::new(
            Status::Fail,
            "memfd",
            format!(
                "memfd_create or ftruncate failed: {}: guest memory is a memfd",
                describe_errno(&e)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_unopenable_warns_with_errno() {
        let f = tap_fact(Err(io::Error::from_raw_os_error(libc::EACCES)), None);
        assert_eq!(
            f.to_string(),
            "warn  tap: cannot open /dev/net/tun: EACCES (Permission denied): no net device"
        );
    }

    #[test]
    fn tap_features_are_named() {
        let all = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE)
            as libc::c_uint;
        let f = tap_fact(Ok(()), Some(Ok(all)));
        assert_eq!(f.status, Status::Ok);
        assert_eq!(
            f.evidence,
            "/dev/net/tun opened; features tap, no_pi, vnet_hdr, multi_queue \
             (TUNGETFEATURES 0x5102)"
        );
        let some = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_uint;
        let f = tap_fact(Ok(()), Some(Ok(some)));
        assert_eq!(f.status, Status::Warn);
        assert!(f.evidence.ends_with("; missing vnet_hdr, multi_queue"));
    }

    #[test]
    fn vhost_net_is_info_either_way() {
        assert_eq!(vhost_net_fact(true).status, Status::Info);
        assert!(vhost_net_fact(false)
            .evidence
            .starts_with("no /dev/vhost-net"));
    }

    #[test]
    fn hugepages_are_info() {
        let f = hugepages_fact(Ok("0".into()), Some("2048 kB"));
        assert_eq!(
            f.to_string(),
            "info  hugepages: none reserved (/proc/sys/vm/nr_hugepages=0): guest memory uses \
             normal pages"
        );
        let f = hugepages_fact(Ok("512".into()), Some("2048 kB"));
        assert_eq!(
            f.evidence,
            "512 reserved of 2048 kB (/proc/sys/vm/nr_hugepages)"
        );
    }

    #[test]
    fn memfd_failure_is_fatal() {
        let f = memfd_fact(Err(io::Error::from_raw_os_error(libc::ENOSYS)));
        assert_eq!(f.status, Status::Fail);
        assert_eq!(memfd_fact(Ok(())).status, Status::Ok);
    }
}
