//! Backends someone else started: `vhost-user=PATH[,listen=on][,connect-timeout=SECS]`, the
//! same spelling on `--disk`, `--net` and `--console` (`--disk socket=PATH` is the old
//! spelling of `--disk vhost-user=PATH`).
//!
//! Without `listen=on` the launcher connects to PATH, under the rule for paths a user names.
//! With `listen=on` it binds PATH itself (mode 0600, removed when the VM has ended), says
//! `net0: waiting for a vhost-user backend on PATH`, and accepts one connection within the
//! timeout (30 s by default) before the vmm starts: the way a backend that connects out works
//! (`dpdk-testpmd --vdev net_vhost0,iface=PATH,client=1`, Open vSwitch's
//! `dpdkvhostuserclient` ports). Either way the vmm gets a connected socket and never
//! accepts. bulkhead starts no process for such a device and restarts none.

use std::path::PathBuf;
/// How long `listen=on` waits for the backend by default.
pub const DEFAULT_CONNECT_TIMEOUT: u64 = 30;
/// Longest `connect-timeout=` accepted, in seconds.
const MAX_CONNECT_TIMEOUT: u64 = 3600;
/// Largest `queue-size=` (the vmm's own queue size).
const MAX_QUEUE_SIZE: u16 = 256;

/// A backend someone else started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalBackend {
    /// Its vhost-user socket.
    pub path: PathBuf,
    /// bulkhead listens on `path` and the backend connects (`listen=on`).
    pub listen: bool,
    /// How long to wait for it to connect, with `listen=on` (seconds).
    pub connect_timeout: u64,
    /// The largest queue size it takes (`queue-size=`; the vmm offers 256 otherwise, and
    /// vhost-user has no message to ask a backend).
    pub queue_size: Option<u16>,
}

impl ExternalBackend {
    /// A backend listening on `path` (bulkhead connects).
    pub fn new(path: impl Into<PathBuf>) -> ExternalBackend {
        ExternalBackend {
            path: path.into(),
            listen: false,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            queue_size: None,
        }
    }

    /// The backend named by the first item of a value (`vhost-user=PATH`), if it is one.
    pub fn from_first(item: &str) -> Option<Result<ExternalBackend, String>> {
        let path = item.strip_prefix("vhost-user=")?;
        Some(if path.is_empty() {
            Err("vhost-user= needs the path of a vhost-user socket".into())
        } else {
            Ok(ExternalBackend::new(path))
        })
    }

    /// Takes `listen=`, `connect-timeout=` and `queue-size=`; `Ok(false)` for any other key.
    pub fn key(&mut self, key: &str, value: &str) -> Result<bool, String> {
        match key {
            "listen" => {
                self.listen = match value {
                    "on" | "true" | "yes" => true,
                    "off" | "false" | "no" => false,
                    _ => return Err(format!("listen={value}: expected on or off")),
                }
            }
            "connect-timeout" => {
                self.connect_timeout = value
                    .parse()
                    .ok()
                    .filter(|s| (1..=MAX_CONNECT_TIMEOUT).contains(s))
                    .ok_or_else(|| {
                        format!(
                            "connect-timeout={value}: expected 1 to {MAX_CONNECT_TIMEOUT} seconds"
                        )
                    })?
            }
            "queue-size" => {
                self.queue_size = Some(
                    value
                        .parse::<u16>()
                        .ok()
                        .filter(|n| n.is_power_of_two() && *n <= MAX_QUEUE_SIZE)
                        .ok_or_else(|| {
                            format!(
                            "queue-size={value}: expected a power of two up to {MAX_QUEUE_SIZE}"
                        )
                        })?,
                )
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Checks the keys given together: `connect-timeout=` goes with `listen=on`.
    pub fn check(&self, timeout_given: bool) -> Result<(), String> {
        if timeout_given && !self.listen {
            return Err("connect-timeout= goes with listen=on".into());
        }
        Ok(())
    }
}

/// Parses a whole `vhost-user=PATH[,listen=on][,connect-timeout=SECS]` value (the console's;
/// net and disk take more keys), if it is one.
pub fn parse_alone(s: &str) -> Option<Result<ExternalBackend, String>> {
    let mut items = s.split(',');
    let first = ExternalBackend::from_first(items.next().unwrap_or_default())?;
    Some(first.and_then(|mut ext| {
        let mut timeout_given = false;
        for item in items {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?}: expected key=value"))?;
            timeout_given |= key == "connect-timeout";
            if !ext.key(key, value)? {
                return Err(format!(
                    "unknown key {key:?} (expected listen, connect-timeout, queue-size)"
                ));
            }
        }
        ext.check(timeout_given)?;
        Ok(ext)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spelling() {
        assert_eq!(parse_alone("stdio"), None);
        assert_eq!(
            parse_alone("vhost-user=/run/c.sock"),
            Some(Ok(ExternalBackend::new("/run/c.sock")))
        );
        let e = parse_alone("vhost-user=/s,listen=on,connect-timeout=5,queue-size=128")
            .unwrap()
            .unwrap();
        assert!(e.listen);
        assert_eq!((e.connect_timeout, e.queue_size), (5, Some(128)));
        for bad in [
            "vhost-user=",
            "vhost-user=/s,listen=maybe",
            "vhost-user=/s,connect-timeout=5",
            "vhost-user=/s,listen=on,connect-timeout=0",
            "vhost-user=/s,colour=red",
            "vhost-user=/s,listen",
            "vhost-user=/s,queue-size=100",
            "vhost-user=/s,queue-size=512",
            "vhost-user=/s,queue-size=0",
        ] {
            assert!(parse_alone(bad).unwrap().is_err(), "{bad} accepted");
        }
    }
}
