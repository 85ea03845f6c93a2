//! `--net auto`: a network namespace of bulkhead's own holding the VM's TAP, its host side
//! addressed, named so the user can reach the guest (`ip netns exec NAME ping ...`), and
//! deleted when the VM ends. Uses iproute2's `ip` for the namespace and addresses.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};

use crate::tap;

/// Errors while setting up the namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// An `ip` command failed.
    #[error("{what}: `{command}` failed: {output}")]
    Ip {
        /// What was being done.
        what: String,
        /// The command.
        command: String,
        /// What it said.
        output: String,
    },
    /// Entering the namespace failed.
    #[error("entering network namespace {name}")]
    Enter {
        /// The namespace.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TAP could not be opened inside it.
    #[error(transparent)]
    Tap(#[from] tap::TapError),
}

/// Where `ip netns` keeps named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The path of named network namespace `name`.
pub fn path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(NETNS_DIR).join(name)
}

/// A named network namespace, deleted on drop.
pub struct NetNs {
    /// Its name (under /run/netns).
    pub name: String,
}

/// Runs `ip ARGS`; `what` says what for, in the error.
pub fn ip(what: &str, args: &[&str]) -> Result<(), NetNsError> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetNsError::Ip {
            what: what.to_owned(),
            command: command.clone(),
            output: format!("{e} (is iproute2 installed?)"),
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(NetNsError::Ip {
        what: what.to_owned(),
        command,
        output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

impl NetNs {
    /// Creates namespace `name`.
    pub fn create(name: &str) -> Result<NetNs, NetNsError> {
        ip("creating a network namespace", &["netns", "add", name])?;
        Ok(NetNs {
            name: name.to_owned(),
        })
    }

    /// Opens TAP `tap` (creating it) inside the namespace, from a thread that enters it (a
    /// thread's network namespace is its own, so bulkhead's stays as it was).
    pub fn open_tap(&self, tap: &str, queues: u16) -> Result<Vec<OwnedFd>, NetNsError> {
        let path = path(&self.name).to_string_lossy().into_owned();
        let name = self.name.clone();
        let tap = tap.to_owned();
        // The thread ends right after opening the TAP.
        let enter = move || -> Result<Vec<OwnedFd>, NetNsError> {
            enter_thread(&path).map_err(|source| NetNsError::Enter { name, source })?;
            Ok(tap::open(&tap, queues)?)
        };
        std::thread::spawn(enter).join().unwrap_or_else(|_| {
            Err(NetNsError::Enter {
                name: self.name.clone(),
                source: std::io::Error::other("the thread entering it panicked"),
            })
        })
    }

    /// Brings up loopback and `tap` with `host_ip` on it.
    pub fn configure(&self, tap: &str, host_ip: &str) -> Result<(), NetNsError> {
        let ns = self.name.as_str();
        ip(
            "bringing up loopback",
            &["-n", ns, "link", "set", "lo", "up"],
        )?;
        ip(
            "addressing the TAP",
            &["-n", ns, "addr", "add", host_ip, "dev", tap],
        )?;
        ip("bringing up the TAP", &["-n", ns, "link", "set", tap, "up"])
    }
}

/// Moves the calling thread (only it: a thread's network namespace is its own) into the
/// network namespace at `path` (e.g. /run/netns/NAME).
pub fn enter_thread(path: &str) -> std::io::Result<()> {
    let ns = std::fs::File::open(path)?;
    // SAFETY: setns on an fd we own, with CLONE_NEWNET, which changes only the calling
    // thread's network namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(
            "deleting the network namespace",
            &["netns", "del", &self.name],
        ) {
            log::warn!("{e}");
        }
    }
}
