//! What a backend's main thread does between installing its whole-process filter and
//! narrowing itself to `vhost-user`: vhost-user-backend creating its queue threads' epoll
//! sets and exit eventfds and starting them.

use libc::*;

use super::Rule;

/// The start-up rules.
pub const RULES: &[Rule] = &[
    Rule::any(SYS_epoll_create1, "an epoll set per queue thread"),
    Rule::any(SYS_eventfd2, "each queue thread's exit event"),
];
