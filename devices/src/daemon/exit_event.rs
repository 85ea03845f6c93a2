//! The exit event of a vhost-user-backend queue thread (`VhostUserBackend::exit_event`),
//! the same for every backend.

use log::warn;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

/// A new non-blocking, close-on-exec exit event pair; `None` (logged) when it cannot be
/// made, which leaves the thread without an exit event as the trait allows.
pub fn exit_event() -> Option<(EventConsumer, EventNotifier)> {
    match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
        Ok(pair) => Some(pair),
        Err(e) => {
            warn!("creating a worker exit event: {e}");
            None
        }
    }
}
