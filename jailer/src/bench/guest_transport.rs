//! Which transport the test guest had its devices on, from what it printed: a figure or a
//! test labelled `pci` means nothing if the guest reached its devices over virtio-mmio all
//! the same. Shared by `bulkhead bench` and the end-to-end tests
//! (`tests/common/transport.rs`, by `#[path]`), so it needs only std and the vmm's config.

use bulkhead_vmm::config::Transport;

/// Whether the guest's serial output `stdout` shows its devices offered on transport `t`
/// alone, from the lines it prints at boot whatever it runs: on mmio its command line
/// announces virtio-mmio devices and ACPI has no MCFG (so no PCI); on pci its command line
/// and ACPI DSDT announce no virtio-mmio device and it found the ECAM through the MCFG.
/// Devices the guest lists (`blk0: virtio-pci 00:01.0`, from its probes) must be on `t`.
/// The error says what was seen instead.
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
    let ecam = guest.iter().find(|l| l.starts_with("acpi mcfg base="));
    let elsewhere: Vec<String> = devices(stdout)
        .into_iter()
        .filter(|(_, on, _)| *on != t)
        .map(|(name, on, at)| format!("{name} on {on} at {at}"))
        .collect();
    if !elsewhere.is_empty() {
        return Err(format!(
            "{t}: the guest found devices elsewhere: {elsewhere:?}"
        ));
    }
    match t {
        Transport::Mmio if mmio_on_cmdline == 0 => Err(format!(
            "mmio: no virtio-mmio device on the guest's command line {cmdline}"
        )),
        Transport::Mmio => match ecam {
            Some(l) => Err(format!("mmio: the guest was offered a PCI ECAM: {l}")),
            None => Ok(()),
        },
        Transport::Pci if mmio_on_cmdline + mmio_in_acpi > 0 => Err(format!(
            "pci: the guest was offered virtio-mmio devices ({mmio_on_cmdline} on its \
             command line, {mmio_in_acpi} in ACPI)"
        )),
        Transport::Pci if ecam.is_none() => {
            Err("pci: the guest found no ECAM (`acpi mcfg base=` line) through ACPI".into())
        }
        Transport::Pci => Ok(()),
    }
}

/// The devices the guest's probes list, in its order: (name, transport, where), from lines
/// like `blk0: virtio-pci 00:01.0` and `net0: virtio-mmio 0xd0001000`.
pub fn devices(stdout: &str) -> Vec<(String, Transport, String)> {
    guest_lines(stdout)
        .filter_map(|l| {
            let (name, place) = l.split_once(": virtio-")?;
            let known = ["blk", "net", "console", "other"];
            let number = known.iter().find_map(|k| name.strip_prefix(k))?;
            if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let (kind, at) = place.split_once(' ')?;
            let t = kind.parse::<Transport>().ok()?;
            Some((name.to_owned(), t, at.to_owned()))
        })
        .collect()
}

/// The guest's lines (`bulkhead-guest: ...`) without the prefix (and a terminal's `\r`).
fn guest_lines(stdout: &str) -> impl Iterator<Item = &str> {
    stdout
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter_map(|l| l.strip_prefix("bulkhead-guest: "))
}
