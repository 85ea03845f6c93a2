//! Which transport the test guest had its devices on, from what it printed at boot: a
//! figure or a test labelled `pci` means nothing if the guest reached its devices over
//! virtio-mmio all the same. Shared by `bulkhead bench` and the end-to-end tests
//! (`tests/common/transport.rs`, by `#[path]`), so it needs only std and the vmm's config.

use bulkhead_vmm::config::Transport;

/// Whether the guest's serial output `stdout` shows its devices offered on transport `t`
/// alone: on mmio its command line announces virtio-mmio devices and it lists no virtio
/// function on PCI; on pci its command line announces none, the ACPI DSDT describes none
/// and it lists virtio functions on PCI bus 0. The error says what was seen instead.
pub fn check(t: Transport, stdout: &str) -> Result<(), String> {
    let guest: Vec<&str> = guest_lines(stdout).collect();
    let cmdline = guest
        .iter()
        .find_map(|l| l.strip_prefix("boot cmdline="))
        .ok_or("no `boot cmdline=` line in the guest's output")?;
    let mmio_on_cmdline = cmdline.matches("virtio_mmio.device=").count();
    let mmio_in_acpi = guest
        .iter()
        .filter(|l| l.starts_with("acpi virtio-mmio uid="))
        .count();
    let pci = virtio_pci_functions(stdout);
    match t {
        Transport::Mmio if mmio_on_cmdline == 0 => Err(format!(
            "mmio: no virtio-mmio device on the guest's command line {cmdline}"
        )),
        Transport::Mmio if !pci.is_empty() => Err(format!(
            "mmio: the guest lists virtio functions on PCI: {pci:?}"
        )),
        Transport::Pci if mmio_on_cmdline + mmio_in_acpi > 0 => Err(format!(
            "pci: the guest was offered virtio-mmio devices ({mmio_on_cmdline} on its \
             command line, {mmio_in_acpi} in ACPI)"
        )),
        Transport::Pci if pci.is_empty() => {
            Err("pci: the guest lists no virtio function on PCI".into())
        }
        _ => Ok(()),
    }
}

/// The virtio functions (vendor 0x1af4) the guest lists on PCI bus 0, one
/// `bulkhead-guest: pci 00:dd.f ...` line each, without the prefix.
pub fn virtio_pci_functions(stdout: &str) -> Vec<String> {
    guest_lines(stdout)
        .filter_map(|l| l.strip_prefix("pci "))
        .filter(|l| l.contains("0x1af4"))
        .map(str::to_owned)
        .collect()
}

/// The guest's lines (`bulkhead-guest: ...`) without the prefix (and a terminal's `\r`).
fn guest_lines(stdout: &str) -> impl Iterator<Item = &str> {
    stdout
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter_map(|l| l.strip_prefix("bulkhead-guest: "))
}
