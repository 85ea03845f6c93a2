//! What a thread needs to install a further, narrower filter on itself: the whole-process
//! roles (`blk-process`, ...) allow it, so that threads born under them (the queue threads
//! vhost-user-backend starts) can narrow themselves to their own role. A filter added can
//! only take rights away (the kernel applies the strictest answer of all of a thread's
//! filters), so a compromised thread gains nothing from these.

use libc::*;

use super::{Arg, Rule};

/// `seccomp(SECCOMP_SET_MODE_FILTER)`.
const SET_MODE_FILTER: u32 = 1;

/// The narrowing rules.
pub const RULES: &[Rule] = &[
    Rule::when(
        SYS_prctl,
        &[Arg::Eq32(0, PR_SET_NO_NEW_PRIVS as u32)],
        "installing a narrower filter: no_new_privs first, as the kernel requires",
    ),
    Rule::when(
        SYS_seccomp,
        &[Arg::Eq32(0, SET_MODE_FILTER)],
        "installing a narrower filter (filters only ever take rights away)",
    ),
];
