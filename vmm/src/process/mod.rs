//! The vmm as a process of its own (`bulkhead-vmm`), as `bulkhead run` starts it: its
//! command line ([`args`]), and how it tells the launcher why the VM stopped ([`outcome`]).
//!
//! The launcher opens everything a device needs and passes the vmm its end of each
//! backend's vhost-user socket as an inherited fd, and one control socket. The vmm builds
//! the VM, runs it, and writes one [`outcome::Outcome`] line on the control socket before
//! it exits; the launcher turns that into the user's message and exit status. Without a
//! control socket (run by hand) the vmm prints the outcome itself.

pub mod args;
pub mod outcome;
mod run;

pub use run::{chain, exit_code, exit_status, fail, main, EXIT_BULKHEAD_FAILED};
