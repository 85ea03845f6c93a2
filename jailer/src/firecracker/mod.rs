//! `bulkhead-firecracker`: Firecracker's command line, REST API (HTTP/1.1 on a Unix socket)
//! and config file, over `bulkhead run`'s launch path: `InstanceStart` starts `bulkhead
//! run` with the configured VM as its flags, so the VM has the same processes and jails.

pub mod cli;
pub mod http;
pub mod instance;
pub mod jailed;
pub mod launcher;
pub mod log;
pub mod main;
pub mod model;
pub mod routes;
pub mod run_args;
pub mod server;
pub mod stop;
