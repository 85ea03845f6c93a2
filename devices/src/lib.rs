//! vhost-user device backends, each run as its own process: block today (net and console
//! to come). Device logic knows nothing of vhost and is tested with mock queues.

pub mod block;
pub mod console;
pub mod daemon;
pub mod net;
