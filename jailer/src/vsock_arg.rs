//! `--vsock cid=N,uds=PATH`: a virtio-vsock device served by a `bulkhead-vsock` process,
//! reached from the host through Firecracker's hybrid vsock convention. A host program
//! connects to the Unix socket `uds` and sends `CONNECT <port>\n` to reach the guest's
//! port; a guest connecting to CID 2 port P reaches a host listener at `<uds>_P`.

use std::path::PathBuf;

/// The guest CIDs that mean something else (any, hypervisor, local, host) and the
/// reserved `u32::MAX`; a guest's CID is above them.
const FIRST_GUEST_CID: u32 = 3;

/// One `--vsock`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockArg {
    /// The guest's context id (3 or more).
    pub cid: u32,
    /// The Unix socket host programs connect to; guest-initiated connections go to
    /// `<uds>_<port>`.
    pub uds: PathBuf,
    /// What to do when its `bulkhead-vsock` dies.
    pub restart: crate::restart::RestartPolicy,
}

/// Parses a `--vsock` value.
pub fn parse(s: &str) -> Result<VsockArg, String> {
    let (mut cid, mut uds) = (None, None);
    let mut restart = crate::restart::DEFAULT;
    for part in s.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected key=value (cid=N,uds=PATH)"))?;
        match key {
            "cid" => {
                cid = Some(
                    value
                        .parse::<u32>()
                        .ok()
                        .filter(|c| (FIRST_GUEST_CID..u32::MAX).contains(c))
                        .ok_or_else(|| {
                            format!(
                                "cid={value}: expected {FIRST_GUEST_CID} to {}",
                                u32::MAX - 1
                            )
                        })?,
                )
            }
            "uds" if !value.is_empty() => uds = Some(PathBuf::from(value)),
            "uds" => return Err("uds= needs a path".into()),
            "restart" => restart = crate::restart::parse(value)?,
            _ => return Err(format!("unknown key {key:?} (expected cid, uds, restart)")),
        }
    }
    Ok(VsockArg {
        cid: cid.ok_or("cid=N is missing")?,
        uds: uds.ok_or("uds=PATH is missing")?,
        restart,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cid_and_uds() {
        assert_eq!(
            parse("cid=3,uds=/run/v.sock"),
            Ok(VsockArg {
                cid: 3,
                uds: "/run/v.sock".into(),
                restart: crate::restart::DEFAULT,
            })
        );
        assert_eq!(
            parse("cid=3,uds=/a,restart=off").map(|v| v.restart),
            Ok(crate::restart::RestartPolicy::Off)
        );
        assert!(parse("cid=3,uds=/a,restart=0").is_err());
        assert_eq!(parse("uds=/a,cid=52").map(|v| v.cid), Ok(52));
    }

    #[test]
    fn refuses_bad_values() {
        for bad in [
            "cid=2,uds=/a",
            "cid=0,uds=/a",
            "cid=4294967295,uds=/a",
            "cid=x,uds=/a",
            "cid=3",
            "uds=/a",
            "cid=3,uds=",
            "cid=3,uds=/a,port=1",
            "cid",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
