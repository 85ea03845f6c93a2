//! Unit tests of tests/common/skip.rs: the skip policy.

use crate::common::skip::{skip_line, skip_or_fail_as, test_name, SkipKind};

#[test]
fn one_spelling_naming_the_test() {
    assert_eq!(
        skip_line("blk::discard", "no qemu-storage-daemon"),
        "SKIPPED: blk::discard: no qemu-storage-daemon"
    );
    // libtest names the thread after the test, module path included.
    assert_eq!(test_name(), "skip::one_spelling_naming_the_test");
}

#[test]
fn outside_ci_every_kind_is_a_skip() {
    for kind in [
        SkipKind::MissingTool,
        SkipKind::DownloadFailed,
        SkipKind::NotPermitted,
        SkipKind::NoHardwareVirt,
    ] {
        skip_or_fail_as(kind, "reason", false);
    }
}

#[test]
fn under_ci_missing_hardware_virtualisation_stays_a_skip() {
    skip_or_fail_as(SkipKind::NoHardwareVirt, "no /dev/kvm", true);
}

#[test]
fn under_ci_what_ci_provides_is_a_failure() {
    for kind in [
        SkipKind::MissingTool,
        SkipKind::DownloadFailed,
        SkipKind::NotPermitted,
    ] {
        let failed = std::panic::catch_unwind(|| skip_or_fail_as(kind, "reason", true));
        assert!(failed.is_err(), "{kind:?} under CI did not fail");
    }
}
