//! Which network namespace a jailed process gets: a new empty one (only `lo`, down), the
//! one at a path (e.g. `/run/netns/NAME`, holding a net backend's TAP), or the jailer's own.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

/// The network namespace of a jailed process.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetNs {
    /// A new, empty network namespace.
    #[default]
    New,
    /// Join the namespace at this path (a bind mount such as `/run/netns/NAME`).
    Join(PathBuf),
    /// Stay in the jailer's namespace (not confined on this axis).
    Host,
}

/// What the child needs: a clone flag, or a namespace fd to `setns` into.
#[derive(Debug)]
pub(crate) struct PreparedNetNs {
    /// CLONE_NEWNET or 0.
    pub clone_flag: u64,
    /// The namespace to join, opened before clone.
    pub join: Option<OwnedFd>,
}

/// Why a network namespace could not be prepared.
#[derive(Debug, thiserror::Error)]
#[error("opening network namespace {path}: {source}")]
pub struct NetNsError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

impl NetNs {
    /// Opens what the child will need (before clone: the child cannot open files).
    pub(crate) fn prepare(&self) -> Result<PreparedNetNs, NetNsError> {
        Ok(match self {
            NetNs::New => PreparedNetNs {
                clone_flag: libc::CLONE_NEWNET as u64,
                join: None,
            },
            NetNs::Join(path) => PreparedNetNs {
                clone_flag: 0,
                join: Some(
                    File::open(path)
                        .map_err(|source| NetNsError {
                            path: path.clone(),
                            source,
                        })?
                        .into(),
                ),
            },
            NetNs::Host => PreparedNetNs {
                clone_flag: 0,
                join: None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepares_flag_or_fd() {
        assert_eq!(
            NetNs::New.prepare().unwrap().clone_flag,
            libc::CLONE_NEWNET as u64
        );
        let host = NetNs::Host.prepare().unwrap();
        assert_eq!((host.clone_flag, host.join.is_none()), (0, true));
        let own = NetNs::Join("/proc/self/ns/net".into()).prepare().unwrap();
        assert!(own.join.is_some());
        let err = NetNs::Join("/nonexistent/netns".into())
            .prepare()
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/netns"), "{err}");
    }
}
