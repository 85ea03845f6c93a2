//! `--net` values: `tap=NAME[,mac=MAC][,queues=N]` attaches to a TAP (created if missing and
//! allowed); `auto[,mac=MAC][,host-ip=CIDR][,guest-ip=CIDR][,queues=N]` makes a network
//! namespace with a TAP in it, the host side addressed, both removed when the VM ends.
//! `queues=N` (1 to 16) opens a multi-queue TAP, one queue per virtio-net queue pair; the
//! guest starts on one pair and asks for more on the control queue the vmm serves.
//! `vhost-user=PATH[,mac=MAC][,queues=N][,listen=on][,connect-timeout=SECS]`: a vhost-user-net
//! backend someone else started (see `external`); the vmm serves the device's config.

use crate::external_arg::ExternalBackend;

/// A MAC address.
pub type Mac = [u8; 6];

/// Where the network device's TAP comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetBackend {
    /// An existing (or creatable) TAP in bulkhead's own namespace.
    Tap(String),
    /// A TAP in a new namespace bulkhead creates.
    Auto {
        /// Address (with prefix) of the TAP's host side.
        host_ip: String,
        /// Address (with prefix) the guest is meant to use (told on its command line).
        guest_ip: String,
    },
    /// A vhost-user backend someone else started.
    VhostUser(ExternalBackend),
}

/// One `--net`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetArg {
    /// The backend.
    pub backend: NetBackend,
    /// MAC address (random, locally administered, if not given).
    pub mac: Option<Mac>,
    /// Queue pairs.
    pub queues: u16,
    /// What to do when its `bulkhead-net` dies.
    pub restart: crate::restart::RestartPolicy,
}

/// Most queue pairs a `--net` may have (`bulkhead-net`'s limit).
pub const MAX_QUEUES: u16 = 16;

/// Default host-side address in `auto` mode.
pub const DEFAULT_HOST_IP: &str = "10.0.2.1/24";
/// Default guest address in `auto` mode.
pub const DEFAULT_GUEST_IP: &str = "10.0.2.2/24";

/// Parses a `--net` value.
pub fn parse(s: &str) -> Result<NetArg, String> {
    let mut parts = s.split(',');
    let first = parts.next().unwrap_or_default();
    let mut tap = None;
    let mut auto = false;
    let mut external = match ExternalBackend::from_first(first) {
        Some(e) => Some(e?),
        None => None,
    };
    let mut timeout_given = false;
    match first.split_once('=') {
        _ if external.is_some() => {}
        Some(("tap", name)) => {
            crate::tap::check_name(name).map_err(|e| e.to_string())?;
            tap = Some(name.to_owned());
        }
        None if first == "auto" => auto = true,
        _ => {
            return Err(format!(
                "{first:?}: expected tap=NAME, auto or vhost-user=PATH first"
            ))
        }
    }
    let (mut mac, mut queues) = (None, 1u16);
    let mut restart = None;
    let (mut host_ip, mut guest_ip) = (DEFAULT_HOST_IP.to_owned(), DEFAULT_GUEST_IP.to_owned());
    for part in parts {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected key=value"))?;
        if let Some(ext) = external.as_mut() {
            timeout_given |= key == "connect-timeout";
            if ext.key(key, value)? {
                continue;
            }
        }
        match key {
            "mac" => mac = Some(parse_mac(value)?),
            "queues" => {
                queues = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_QUEUES).contains(n))
                    .ok_or_else(|| format!("queues={value}: expected 1 to {MAX_QUEUES}"))?
            }
            "host-ip" if auto => host_ip = check_cidr(value)?,
            "guest-ip" if auto => guest_ip = check_cidr(value)?,
            "host-ip" | "guest-ip" => return Err(format!("{key}= goes with auto only")),
            "restart" => restart = Some(crate::restart::parse(value)?),
            _ => {
                return Err(format!(
                    "unknown key {key:?} (expected mac, queues, host-ip, guest-ip, restart)"
                ))
            }
        }
    }
    let backend = match (tap, external) {
        (_, Some(ext)) => {
            ext.check(timeout_given)?;
            if restart.is_some() {
                return Err(
                    "restart= is for NICs bulkhead serves (tap=, auto): a vhost-user= backend is not bulkhead's to restart"
                        .into(),
                );
            }
            NetBackend::VhostUser(ext)
        }
        (Some(name), None) => NetBackend::Tap(name),
        (None, None) => NetBackend::Auto { host_ip, guest_ip },
    };
    let restart = match backend {
        NetBackend::VhostUser(_) => crate::restart::RestartPolicy::Off,
        _ => restart.unwrap_or(crate::restart::DEFAULT),
    };
    Ok(NetArg {
        backend,
        mac,
        queues,
        restart,
    })
}

/// Parses `aa:bb:cc:dd:ee:ff` (unicast only).
pub fn parse_mac(s: &str) -> Result<Mac, String> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok().filter(|_| b.len() == 2))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("mac={s}: expected six hex bytes like 02:00:00:00:00:01"))?;
    let mac: Mac = bytes
        .try_into()
        .map_err(|_| format!("mac={s}: expected six hex bytes"))?;
    if mac[0] & 1 != 0 {
        return Err(format!("mac={s}: a multicast address cannot be a device's"));
    }
    Ok(mac)
}

/// Formats a MAC address.
pub fn format_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn check_cidr(s: &str) -> Result<String, String> {
    let (ip, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("{s}: expected ADDRESS/PREFIX, e.g. 10.0.2.1/24"))?;
    ip.parse::<std::net::Ipv4Addr>()
        .map_err(|e| format!("{s}: {e}"))?;
    prefix
        .parse::<u8>()
        .ok()
        .filter(|p| (1..=30).contains(p))
        .ok_or_else(|| format!("{s}: prefix must be 1 to 30"))?;
    Ok(s.to_owned())
}

/// A random locally administered unicast MAC.
pub fn random_mac() -> Mac {
    let mut mac = [0u8; 6];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut mac));
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_and_auto() {
        let a = parse("tap=tap0,mac=02:00:00:00:00:01,queues=1").unwrap();
        assert_eq!(a.backend, NetBackend::Tap("tap0".into()));
        assert_eq!(a.mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(a.queues, 1);
        assert_eq!(parse("tap=tap0,queues=2").unwrap().queues, 2);
        assert_eq!(parse("auto,queues=16").unwrap().queues, 16);
        assert!(parse("auto,queues=17").unwrap_err().contains("1 to 16"));
        let a = parse("auto,guest-ip=192.168.7.2/24,host-ip=192.168.7.1/24").unwrap();
        assert_eq!(
            a.backend,
            NetBackend::Auto {
                host_ip: "192.168.7.1/24".into(),
                guest_ip: "192.168.7.2/24".into()
            }
        );
        assert_eq!(
            parse("auto").unwrap().backend,
            NetBackend::Auto {
                host_ip: DEFAULT_HOST_IP.into(),
                guest_ip: DEFAULT_GUEST_IP.into()
            }
        );
        assert_eq!(parse("auto").unwrap().restart, crate::restart::DEFAULT);
        assert_eq!(
            parse("tap=t0,restart=1/1").unwrap().restart,
            crate::restart::RestartPolicy::Budget {
                restarts: 1,
                window_secs: 1
            }
        );
    }

    #[test]
    fn vhost_user() {
        let a = parse("vhost-user=/run/n.sock,mac=02:00:00:00:00:01,queues=2,listen=on").unwrap();
        let mut ext = ExternalBackend::new("/run/n.sock");
        ext.listen = true;
        assert_eq!(a.backend, NetBackend::VhostUser(ext));
        assert_eq!((a.mac, a.queues), (Some([2, 0, 0, 0, 0, 1]), 2));
        for bad in [
            "vhost-user=",
            "vhost-user=/s,host-ip=1.2.3.4/24",
            "vhost-user=/s,connect-timeout=3",
            "vhost-user=/s,listen=often",
            "tap=t,listen=on",
            "vhost-user=/s,restart=3",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bad_values() {
        for bad in [
            "",
            "tap=",
            "tap=a/b",
            "bridge=br0",
            "auto,mac=01:00:00:00:00:01",
            "auto,mac=zz",
            "tap=t,host-ip=1.2.3.4/24",
            "auto,host-ip=1.2.3.4",
            "auto,host-ip=1.2.3.4/31",
            "auto,queues=0",
            "auto,queues=17",
            "auto,queues=x",
            "auto,colour=red",
            "auto,restart=on",
            "auto,restart=",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn macs() {
        assert_eq!(format_mac(&[2, 0xab, 0, 0, 0, 0x10]), "02:ab:00:00:00:10");
        let m = random_mac();
        assert_eq!(m[0] & 3, 2, "locally administered unicast");
    }
}
