//! The vmm as a process of its own (`bulkhead-vmm`), as `bulkhead run` starts it: its
//! command line ([`args`]), its control channel to the launcher ([`control`]) and how it
//! ended ([`outcome`]).
//!
//! The launcher opens everything a device needs and passes the vmm its end of each
//! backend's vhost-user socket as an inherited fd, and one control socket. The vmm shakes
//! hands, builds the VM, says `Ready`, serves the launcher's requests while the VM runs,
//! and ends with `Exited` (after `DeviceFailed` or `Error` when something went wrong).
//! Without a control socket (run by hand) it prints the problem itself.

pub mod args;
pub mod control;
mod fds;
pub mod outcome;
mod run;
mod signals;

pub use outcome::{Outcome, EXIT_BULKHEAD_FAILED};
pub use run::{chain, main, status_kib};
