//! The one skip policy of the test suite: a test that cannot run here says why, in one
//! spelling, on stderr: `SKIPPED: <test>: <reason>`.
//!
//! Under `CI=true` (`.ci/run` sets it) a skip is a failure when CI should have made the
//! test runnable: it installs every tool the tests call, can download, and runs as root.
//! Only missing hardware virtualisation (no `/dev/kvm`, or emulated guest kernel code where
//! a test needs hardware speed) stays a skip there, since CI cannot conjure it.
//!
//! Shared by `tests/common` and `devices/tests/common` (by `#[path]`), so it needs nothing
//! but std.

// Every test binary compiles this file; not all of them use every kind.
#![allow(dead_code)]

/// Why a test cannot run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipKind {
    /// A program or package the test calls is not installed (`.ci/run` installs it).
    MissingTool,
    /// Fetching or unpacking something the test needs failed (the stock kernel).
    DownloadFailed,
    /// The test needs root, or a kernel facility root has (namespaces, `/dev/net/tun`).
    NotPermitted,
    /// No KVM here, or only KVM that emulates guest kernel code (shared/host-kvm.md).
    NoHardwareVirt,
}

impl SkipKind {
    /// Whether CI provides what is missing, so that under `CI=true` the skip is a failure.
    pub fn ci_provides(self) -> bool {
        !matches!(self, SkipKind::NoHardwareVirt)
    }
}

/// Whether the tests run under CI (`CI=true`, as `.ci/run` and most CI services set it).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The name of the running test (libtest names each test's thread after it).
pub fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string()
}

/// The line a skip prints.
pub fn skip_line(test: &str, reason: &str) -> String {
    format!("SKIPPED: {test}: {reason}")
}

/// Says why the calling test cannot run; the caller then returns. Under `CI=true` a skip
/// of a kind CI provides for panics instead, failing the test.
pub fn skip_or_fail(kind: SkipKind, reason: &str) {
    skip_or_fail_as(kind, reason, under_ci());
}

/// [`skip_or_fail`] with the CI decision given (for the policy's own tests).
pub fn skip_or_fail_as(kind: SkipKind, reason: &str, ci: bool) {
    let test = test_name();
    if ci && kind.ci_provides() {
        panic!("{test}: cannot run under CI=true ({kind:?}, which CI provides): {reason}");
    }
    eprintln!("{}", skip_line(&test, reason));
}

/// Skips the calling test (returns from it) after [`skip_or_fail`]:
/// `skip!(SkipKind::MissingTool, "no {tool}")`.
#[macro_export]
macro_rules! skip {
    ($kind:expr, $($fmt:tt)+) => {{
        $crate::common::skip::skip_or_fail($kind, &format!($($fmt)+));
        return;
    }};
}
