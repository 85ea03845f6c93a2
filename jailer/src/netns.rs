//! `--net auto`: a network namespace of bulkhead's own holding the VM's TAP, its host side
//! addressed, named so the user can reach the guest (`ip netns exec NAME ping ...`), and
//! deleted when the VM ends. Made in this process (a thread's `unshare`, a bind mount,
//! ioctls), as iproute2 makes them; [`ip`] remains for the benchmarks' own set-up.

use std::ffi::CStr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::ifconfig::Ifconfig;
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
    /// Making it (or its mount point) failed.
    #[error("{what} network namespace {name}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The namespace.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Configuring an interface in it failed.
    #[error(transparent)]
    If(#[from] crate::ifconfig::IfError),
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
    /// Creates namespace `name` holding TAP `tap` (created, with `queues` queues), its
    /// loopback and the TAP up and `host_ip` on the TAP; returns it and the TAP's fds. All
    /// of it in this process, as `ip netns add` and `ip addr` would do it: the namespace is
    /// a thread's own (`unshare`: a thread's network namespace is its own, so bulkhead's
    /// stays as it was), bind-mounted at `/run/netns/NAME` so that `ip netns exec` finds it,
    /// and the interfaces are configured with ioctls from that thread ([`Ifconfig`]).
    pub fn create_with_tap(
        name: &str,
        tap: &str,
        queues: u16,
        host_ip: &str,
    ) -> Result<(NetNs, Vec<OwnedFd>), NetNsError> {
        let io_err = |what: &'static str| {
            let name = name.to_owned();
            move |source| NetNsError::Io { what, name, source }
        };
        shared_run_dir().map_err(io_err("preparing /run/netns for"))?;
        let file = path(name);
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&file)
            .map_err(io_err("creating the mount point of"))?;
        // From here on, dropping `ns` removes what was made.
        let ns = NetNs {
            name: name.to_owned(),
        };
        let (tap, host_ip) = (tap.to_owned(), host_ip.to_owned());
        let made = std::thread::spawn(move || -> Result<Vec<OwnedFd>, NetNsError> {
            let ns_name = file.to_string_lossy().into_owned();
            let io_err = |what: &'static str| {
                let name = ns_name.clone();
                move |source| NetNsError::Io { what, name, source }
            };
            // Affects only this thread.
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| io_err("creating")(std::io::Error::from(e)))?;
            bind(c"/proc/thread-self/ns/net", &file).map_err(io_err("bind-mounting"))?;
            let taps = tap::open(&tap, queues)?;
            let ifc = Ifconfig::new().map_err(io_err("opening an ioctl socket in"))?;
            ifc.up("lo")?;
            ifc.address(&tap, &host_ip)?;
            ifc.up(&tap)?;
            Ok(taps)
        })
        .join()
        .unwrap_or_else(|_| {
            Err(NetNsError::Enter {
                name: name.to_owned(),
                source: std::io::Error::other("the thread making it panicked"),
            })
        })?;
        Ok((ns, made))
    }
}

/// Deletes named namespace `name` as `ip netns del` does: its bind mount is detached and
/// the mount point removed (the kernel frees the namespace once nothing else holds it).
pub fn delete(name: &str) -> std::io::Result<()> {
    let file = path(name);
    // EINVAL: not mounted, which is fine.
    if let Err(e) = umount2(&file, MntFlags::MNT_DETACH) {
        let e = std::io::Error::from(e);
        if e.raw_os_error() != Some(libc::EINVAL) && e.kind() != std::io::ErrorKind::NotFound {
            return Err(e);
        }
    }
    std::fs::remove_file(&file)
}

/// Makes /run/netns and makes it a shared mount (a bind mount of itself first if it is
/// none), as iproute2 does, so that namespaces mounted there show in every mount namespace.
fn shared_run_dir() -> std::io::Result<()> {
    std::fs::create_dir_all(NETNS_DIR)?;
    let dir = c"/run/netns";
    let mut bound = false;
    loop {
        // Only propagation flags change.
        let e = match mount(
            Some(c""),
            dir,
            Some(c"none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&CStr>,
        ) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if e != Errno::EINVAL || bound {
            return Err(e.into());
        }
        // Not a mount point yet: a recursive bind mount of the directory onto itself.
        mount(
            Some(dir),
            dir,
            Some(c"none"),
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&CStr>,
        )?;
        bound = true;
    }
}

/// Bind-mounts `source` on `target`.
fn bind(source: &CStr, target: &std::path::Path) -> std::io::Result<()> {
    mount(
        Some(source),
        target,
        Some(c"none"),
        MsFlags::MS_BIND,
        None::<&CStr>,
    )?;
    Ok(())
}

/// Moves the calling thread (only it: a thread's network namespace is its own) into the
/// network namespace at `path` (e.g. /run/netns/NAME).
pub fn enter_thread(path: &str) -> std::io::Result<()> {
    let ns = std::fs::File::open(path)?;
    // CLONE_NEWNET changes only the calling thread's network namespace.
    setns(&ns, CloneFlags::CLONE_NEWNET)?;
    Ok(())
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = delete(&self.name) {
            log::warn!("deleting network namespace {}: {e}", self.name);
        }
    }
}
