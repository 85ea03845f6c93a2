//! Both virtio transports for one end-to-end test: a test written once as
//! `fn name(t: Transport)` becomes two, `mmio::name` and `pci::name`, through
//! [`on_both_transports!`](crate::on_both_transports), and starts its VM with
//! [`bulkhead_run`] (`bulkhead run --transport mmio|pci`).
//!
//! `cargo test mmio::` or `cargo test pci::` runs one transport's half.
//!
//! A test passing on `pci` proves nothing if the guest reached its devices over virtio-mmio
//! all the same, so each checks, with [`assert_guest_used`], what the guest printed at boot.

use std::process::Command;

pub use bulkhead_vmm::config::Transport;

#[path = "../../jailer/src/bench/guest_transport.rs"]
pub mod guest_transport;

/// `bulkhead run --transport T`, ready for the test's own flags.
pub fn bulkhead_run(t: Transport) -> Command {
    let mut cmd = super::bulkhead();
    cmd.args(["run", "--transport", t.as_str()]);
    cmd
}

/// The flags that choose `t`, for tests that build the rest of the command themselves.
pub fn flags(t: Transport) -> [&'static str; 2] {
    ["--transport", t.as_str()]
}

/// Asserts from the guest's serial output `stdout` that its devices were offered on
/// transport `t` alone (see [`guest_transport::check`]).
pub fn assert_guest_used(t: Transport, stdout: &str) {
    if let Err(e) = guest_transport::check(t, stdout) {
        panic!("{e}; the guest's output:\n{stdout}");
    }
}

/// For each function named, taking a [`Transport`], a test per transport:
/// `mmio::NAME` and `pci::NAME`.
///
/// ```ignore
/// fn guest_writes_land_in_the_image(t: Transport) { ... }
/// on_both_transports!(guest_writes_land_in_the_image);
/// ```
#[macro_export]
macro_rules! on_both_transports {
    ($($name:ident),+ $(,)?) => {
        /// The tests on virtio-mmio.
        mod mmio {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::common::transport::Transport::Mmio)
                }
            )+
        }
        /// The tests on virtio-pci.
        mod pci {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::common::transport::Transport::Pci)
                }
            )+
        }
    };
}
