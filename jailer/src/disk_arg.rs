//! `--disk` values: `path=PATH[,format=raw|qcow2][,lock=on|off][,readonly=on|off][,serial=ID][,queues=N][,direct=on][,restart=off|N/SECS]`
//! for a disk served by a `bulkhead-blk` process bulkhead starts (restarted as `restart=`
//! says when it dies, see [`crate::restart`]; `format=` absent: probed, a file that looks
//! like a qcow2 refused, see `bulkhead_devices::image::format`; `lock=off` takes no
//! QEMU-compatible image locks, see `bulkhead_devices::image::lock`), or `vhost-user=PATH[,queues=N][,listen=on]`
//! for a vhost-user-blk backend someone else started (qemu-storage-daemon, for one; see
//! `external`; never restarted by bulkhead). `socket=PATH` is the old spelling of
//! `vhost-user=PATH`, still accepted.

use std::path::PathBuf;

use bulkhead_devices::image::ImageFormat;

use crate::external_arg::ExternalBackend;

/// Longest serial a virtio-blk GET_ID answer holds.
pub const MAX_SERIAL: usize = 20;

/// Where a disk's backend comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskBackend {
    /// bulkhead starts `bulkhead-blk` on this image.
    Image {
        /// Image file or block device.
        path: PathBuf,
        /// Refuse writes.
        readonly: bool,
        /// GET_ID answer.
        serial: Option<String>,
        /// Bypass the host page cache (O_DIRECT).
        direct: bool,
        /// The image's format as the user said (`None`: probed, raw only).
        format: Option<ImageFormat>,
        /// Take QEMU-compatible locks on every file of the image's chain.
        lock: bool,
    },
    /// An external vhost-user-blk backend (`vhost-user=PATH`, or the old `socket=PATH`).
    Socket(ExternalBackend),
}

/// One `--disk`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskArg {
    /// The backend.
    pub backend: DiskBackend,
    /// Queues to offer the guest.
    pub queues: u16,
    /// What to do when its `bulkhead-blk` dies (`Off` for `socket=`: not ours to restart).
    pub restart: crate::restart::RestartPolicy,
}

/// Parses a `--disk` value.
pub fn parse(s: &str) -> Result<DiskArg, String> {
    let (mut path, mut socket, mut readonly, mut serial, mut queues) =
        (None, None, false, None, 1u16);
    let mut direct = false;
    let (mut format, mut lock) = (None, None);
    let mut restart = None;
    // listen=, connect-timeout=, queue-size=: the external backend's (see `external_arg`).
    let mut external_keys = Vec::new();
    for part in s.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected key=value"))?;
        match key {
            "path" if !value.is_empty() => path = Some(PathBuf::from(value)),
            "socket" | "vhost-user" if !value.is_empty() && socket.is_none() => {
                socket = Some(PathBuf::from(value))
            }
            "socket" | "vhost-user" if !value.is_empty() => {
                return Err("give socket= (the old spelling) or vhost-user=, once".into())
            }
            "listen" | "connect-timeout" | "queue-size" => external_keys.push((key, value)),
            "readonly" | "ro" => readonly = on_off(key, value)?,
            "direct" => direct = on_off(key, value)?,
            "format" => format = Some(value.parse::<ImageFormat>()?),
            "lock" => lock = Some(on_off(key, value)?),
            "serial" => {
                if value.len() > MAX_SERIAL || !value.is_ascii() {
                    return Err(format!(
                        "serial={value}: at most {MAX_SERIAL} ASCII characters"
                    ));
                }
                serial = Some(value.to_owned());
            }
            "queues" => {
                queues = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| format!("queues={value}: expected 1 to 64"))?;
            }
            "restart" => restart = Some(crate::restart::parse(value)?),
            "path" | "socket" | "vhost-user" => return Err(format!("{key}= needs a value")),
            _ => {
                return Err(format!(
                    "unknown key {key:?} (expected path, format, lock, vhost-user, readonly, serial, queues, direct, restart, listen)"
                ))
            }
        }
    }
    if let (Some((key, _)), None) = (external_keys.first(), &socket) {
        return Err(format!("{key}= goes with vhost-user="));
    }
    let backend = match (path, socket) {
        (Some(path), None) => DiskBackend::Image {
            path,
            readonly,
            serial,
            direct,
            format,
            lock: lock.unwrap_or(true),
        },
        (None, Some(sock)) => {
            if restart.is_some() {
                return Err(
                    "restart= is for disks bulkhead serves (path=): a vhost-user= backend is not bulkhead's to restart"
                        .into(),
                );
            }
            if readonly || direct || serial.is_some() || format.is_some() || lock.is_some() {
                return Err(
                    "readonly=, direct=, serial=, format= and lock= belong to the backend when vhost-user= is used"
                        .into(),
                );
            }
            let mut ext = ExternalBackend::new(sock);
            for (key, value) in &external_keys {
                ext.key(key, value)?;
            }
            ext.check(external_keys.iter().any(|(k, _)| *k == "connect-timeout"))?;
            DiskBackend::Socket(ext)
        }
        (Some(_), Some(_)) => return Err("give path= or vhost-user=, not both".into()),
        (None, None) => return Err("needs path=IMAGE or vhost-user=PATH".into()),
    };
    let restart = match backend {
        DiskBackend::Image { .. } => restart.unwrap_or_default(),
        DiskBackend::Socket(_) => crate::restart::RestartPolicy::Off,
    };
    Ok(DiskArg {
        backend,
        queues,
        restart,
    })
}

fn on_off(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{key}={value}: expected on or off")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_disks() {
        assert_eq!(
            parse("path=/d.img,readonly=on,serial=abc,queues=4,direct=on"),
            Ok(DiskArg {
                backend: DiskBackend::Image {
                    path: "/d.img".into(),
                    readonly: true,
                    serial: Some("abc".into()),
                    direct: true,
                    format: None,
                    lock: true,
                },
                queues: 4,
                restart: crate::restart::DEFAULT,
            })
        );
        assert_eq!(parse("path=/d.img").unwrap().queues, 1);
        use crate::restart::RestartPolicy;
        assert_eq!(
            parse("path=/d.img,restart=off").unwrap().restart,
            RestartPolicy::Off
        );
        assert_eq!(
            parse("path=/d.img,restart=2/10").unwrap().restart,
            RestartPolicy::Budget {
                restarts: 2,
                window_secs: 10
            }
        );
        let e = parse("path=/d.img,restart=lots").unwrap_err();
        assert!(e.contains("restart=lots") && e.contains("N/SECS"), "{e}");
    }

    #[test]
    fn format_and_lock() {
        let image = |s: &str| match parse(s).unwrap().backend {
            DiskBackend::Image { format, lock, .. } => (format, lock),
            DiskBackend::Socket(_) => panic!("{s}: not an image"),
        };
        assert_eq!(image("path=/d"), (None, true));
        assert_eq!(
            image("path=/d.qcow2,format=qcow2,lock=off"),
            (Some(ImageFormat::Qcow2), false)
        );
        assert_eq!(
            image("path=/d,format=raw,lock=on"),
            (Some(ImageFormat::Raw), true)
        );
        let e = parse("path=/d,format=vmdk").unwrap_err();
        assert!(e.contains("format=vmdk: expected raw or qcow2"), "{e}");
        assert!(parse("path=/d,lock=maybe").is_err());
        assert!(parse("vhost-user=/s,format=qcow2").is_err());
        assert!(parse("vhost-user=/s,lock=off").is_err());
    }

    #[test]
    fn socket_disks() {
        assert_eq!(
            parse("socket=/run/qsd.sock").unwrap().backend,
            DiskBackend::Socket(ExternalBackend::new("/run/qsd.sock"))
        );
        assert_eq!(
            parse("vhost-user=/run/qsd.sock,queues=2").unwrap(),
            parse("socket=/run/qsd.sock,queues=2").unwrap()
        );
        let DiskBackend::Socket(ext) = parse("vhost-user=/s,listen=on,connect-timeout=9")
            .unwrap()
            .backend
        else {
            panic!("not a socket disk")
        };
        assert!(ext.listen && ext.connect_timeout == 9);
        assert!(parse("vhost-user=/s,socket=/t").is_err());
        assert!(parse("path=/a,listen=on").is_err());
        assert!(parse("vhost-user=/s,connect-timeout=9").is_err());
        assert!(parse("socket=/s,readonly=on").is_err());
        assert!(parse("socket=/s,direct=on").is_err());
        // An external backend is never restarted by bulkhead.
        assert_eq!(
            parse("socket=/s").unwrap().restart,
            crate::restart::RestartPolicy::Off
        );
        let e = parse("socket=/s,restart=3").unwrap_err();
        assert!(e.contains("not bulkhead's to restart"), "{e}");
    }

    #[test]
    fn bad_values() {
        for bad in [
            "",
            "path=",
            "path=/a,socket=/b",
            "readonly=on",
            "path=/a,readonly=maybe",
            "path=/a,colour=red",
            "path=/a,queues=0",
            "path=/a,queues=x",
            "path=/a,serial=123456789012345678901",
            "path",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
