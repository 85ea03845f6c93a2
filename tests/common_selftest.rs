//! The unit tests of the helpers in `tests/common/`, in one binary so that they run once:
//! every end-to-end binary compiles `tests/common` (`mod common;`) without them.

mod common;

#[path = "common_selftest/debian_kernel.rs"]
mod debian_kernel;
#[path = "common_selftest/initramfs.rs"]
mod initramfs;
#[path = "common_selftest/output.rs"]
mod output;
#[path = "common_selftest/skip.rs"]
mod skip;
#[path = "common_selftest/soak.rs"]
mod soak;
#[path = "common_selftest/strace.rs"]
mod strace;
