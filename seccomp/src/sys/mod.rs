//! Every raw libc call of this crate's production code, grouped by the reason it can't go
//! through nix or the landlock crate:
//!
//! | module | calls | why raw |
//! |---|---|---|
//! | [`pre_exec`] | landlock create_ruleset/add_rule/restrict_self, setgroups, setresgid, setresuid, capset, capget, prctl(PR_CAP_AMBIENT, PR_CAPBSET_DROP), close | a jailer's child runs them between clone and exec, where nothing may allocate (the landlock crate does) and libc's set*id wrappers would signal the parent's threads; nix has no capset/capget or capability prctls |
//! | [`signal_handler`] | prctl(PR_GET_NAME), tgkill, getauxval(AT_EXECFN) | the SIGSYS handler must be async-signal-safe and not allocate (nix's get_name returns a CString); nix has no tgkill or getauxval |
//!
//! Other modules call the safe functions here (or an `unsafe fn` with its contract).

/// The raw system calls kept for a jailer's child between clone and exec.
pub(crate) mod pre_exec;
/// The raw calls of the SIGSYS report handler.
pub(crate) mod signal_handler;
