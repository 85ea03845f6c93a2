//! A bulkhead-net queue thread (`net-q<n>`, TX and RX kicks) and the RX thread it starts
//! (`net-rx<n>`, which inherits this filter): frames between the TAP and guest buffers.

use libc::*;

use super::consts::TUNSETQUEUE;
use super::{Arg, Rule};

/// The net worker's own rules.
pub const RULES: &[Rule] = &[
    Rule::any(
        SYS_epoll_wait,
        "the queue thread waits for kicks and its exit event",
    ),
    Rule::any(SYS_read, "consuming kick and wake eventfds"),
    Rule::any(SYS_writev, "TX: a frame from guest buffers to the TAP"),
    Rule::any(SYS_readv, "RX: a frame from the TAP into guest buffers"),
    Rule::any(
        SYS_poll,
        "the RX thread waits for the TAP and its wake eventfd",
    ),
    Rule::when(
        SYS_ioctl,
        &[Arg::Eq32(1, TUNSETQUEUE)],
        "a pair's TAP queue attached when its rings are used, detached when disabled",
    ),
    Rule::any(
        SYS_shutdown,
        "a TAP that went away stops the backend: the frontend's connection is shut down",
    ),
];
