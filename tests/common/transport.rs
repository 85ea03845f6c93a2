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
/// transport `t` alone: on mmio its command line announces virtio-mmio devices; on pci it
/// announces none, the ACPI DSDT describes none, and the guest lists virtio functions on
/// PCI bus 0.
pub fn assert_guest_used(t: Transport, stdout: &str) {
    let guest: Vec<&str> = stdout
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter_map(|l| l.strip_prefix("bulkhead-guest: "))
        .collect();
    let cmdline = guest
        .iter()
        .find_map(|l| l.strip_prefix("boot cmdline="))
        .unwrap_or_else(|| panic!("no boot line in the guest's output:\n{stdout}"));
    let mmio_on_cmdline = cmdline.matches("virtio_mmio.device=").count();
    let mmio_in_acpi = guest
        .iter()
        .filter(|l| l.starts_with("acpi virtio-mmio uid="))
        .count();
    let pci = virtio_pci_functions(stdout);
    match t {
        Transport::Mmio => {
            assert!(
                mmio_on_cmdline > 0,
                "mmio: no virtio-mmio device on the command line {cmdline}"
            );
            assert!(pci.is_empty(), "mmio: virtio functions on PCI: {pci:?}");
        }
        Transport::Pci => {
            assert_eq!(
                (mmio_on_cmdline, mmio_in_acpi),
                (0, 0),
                "pci: virtio-mmio devices offered (command line, ACPI):\n{stdout}"
            );
            assert!(
                !pci.is_empty(),
                "pci: the guest lists no virtio function on PCI:\n{stdout}"
            );
        }
    }
}

/// The virtio functions (vendor 0x1af4) the guest lists on PCI bus 0, one
/// `bulkhead-guest: pci 00:dd.f ...` line each.
pub fn virtio_pci_functions(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter_map(|l| l.strip_prefix("bulkhead-guest: pci "))
        .filter(|l| l.contains("0x1af4"))
        .map(str::to_owned)
        .collect()
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
