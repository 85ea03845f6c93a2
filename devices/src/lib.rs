//! vhost-user device backends, each run as its own process: block today (net and console
//! to come). Device logic knows nothing of vhost and is tested with mock queues.

pub mod block;
pub mod console;
pub mod daemon;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
pub mod image;
pub mod net;
pub mod sys;
pub mod vsock;
