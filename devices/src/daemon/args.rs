//! The flags every backend takes: where its frontend is (the conventions of QEMU's
//! vhost-user backends), `--print-capabilities`, and what a launcher tells it
//! ([`LauncherArgs`]). Each backend flattens [`CommonArgs`] into its own arguments.

use std::os::fd::RawFd;
use std::path::PathBuf;

use super::{Endpoint, LauncherArgs};

/// The flags every backend takes.
#[derive(Clone, Debug, clap::Args)]
pub struct CommonArgs {
    /// Create a Unix socket at PATH and serve frontends on it, one after the other, until
    /// SIGTERM/SIGINT (then remove it); with `--once`, the first frontend only.
    #[arg(long, value_name = "PATH", conflicts_with = "fd")]
    pub socket_path: Option<PathBuf>,

    /// Serve the frontend on inherited descriptor N: a listening Unix socket (accept
    /// frontends on it one after the other, QEMU's convention) or an already-connected one
    /// (a socketpair end: one frontend, `--once` implied).
    #[arg(long, value_name = "N")]
    pub fd: Option<RawFd>,

    /// Serve one frontend, then exit (status 0) when it disconnects, instead of waiting
    /// for the next one. Implied for a connected `--fd`.
    #[arg(long)]
    pub once: bool,

    /// Print this backend's capabilities as JSON (QEMU's vhost-user.json) and exit.
    #[arg(long)]
    pub print_capabilities: bool,

    /// Seccomp, landlock and the jail's last steps.
    #[command(flatten)]
    pub launcher: LauncherArgs,
}

impl CommonArgs {
    /// The frontend's socket, if one was given (`--socket-path` wins over `--fd`).
    pub fn endpoint(&self) -> Option<Endpoint> {
        match (&self.socket_path, self.fd) {
            (Some(path), _) => Some(Endpoint::Path(path.clone())),
            (None, Some(fd)) => Some(Endpoint::Fd(fd)),
            (None, None) => None,
        }
    }
}

/// A backend's arguments: its own, with [`CommonArgs`] flattened in.
pub trait BackendArgs: clap::Parser {
    /// The flags every backend takes.
    fn common(&self) -> &CommonArgs;
}
