//! `bulkhead bench`: benchmarks that print figures beside a baseline measured in the same
//! run (never timed assertions): `boot` (start-up time, memory overhead), `blk` (guest
//! block I/O through bulkhead-blk, through qemu-storage-daemon, and the host's own I/O),
//! `net` (UDP throughput beside a veth pair), `vsock` (stream throughput and round trips
//! beside a Unix socket pair), `confine` (what confinement costs) and `restart` (what a
//! killed bulkhead-blk costs the guest), `density` (many idle confined VMs started at once:
//! start latency, memory and CPU per VM, nothing left after). `blk`
//! and `net` run the guest on both virtio transports and show them side by side.

mod blk;
mod boot;
mod confine;
mod density;
mod guest_transport;
mod host_io;
mod net;
mod qsd;
mod report_line;
mod restart;
mod runs;
mod vsock;

use crate::cli::{BenchArgs, BenchWhat};

/// Runs the chosen benchmark; returns the exit status.
pub fn main(args: BenchArgs) -> i32 {
    match args.what {
        BenchWhat::Boot(a) => boot::main(a),
        BenchWhat::Blk(a) => blk::main(a),
        BenchWhat::Net(a) => net::main(a),
        BenchWhat::Confine(a) => confine::main(a),
        BenchWhat::Vsock(a) => vsock::main(a),
        BenchWhat::Restart(a) => restart::main(a),
        BenchWhat::Density(a) => density::main(a),
    }
}

/// The exit status of a benchmark that ended with `result`, saying why it failed.
fn exit_status(result: Result<(), String>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bulkhead bench: {e}");
            crate::run::EXIT_BULKHEAD_FAILED
        }
    }
}

/// The median of `v` (0 for none).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    /// What the test guest prints at boot, with `cmdline` and `extra` lines.
    fn boot(cmdline: &str, extra: &[&str]) -> String {
        let mut s = format!("bulkhead-guest: boot cmdline=\"{cmdline}\"\n");
        for l in extra {
            s += &format!("bulkhead-guest: {l}\n");
        }
        s
    }

    #[test]
    fn the_guests_transport_is_read_from_its_output() {
        use bulkhead_vmm::config::Transport::{Mmio, Pci};
        let mmio = boot(
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5",
            &[
                "acpi virtio-mmio uid=0 base=0xd0000000 size=0x1000 rw irq=5 edge active-high",
                "acpi mcfg none: no MCFG table",
                "blk0: virtio-mmio 0xd0000000",
            ],
        );
        let pci = boot(
            "console=ttyS0",
            &[
                "acpi virtio-mmio devices=0",
                "acpi mcfg base=0xe0000000 buses=0..=0",
                "blk0: virtio-pci 00:01.0",
                "net0: virtio-pci 00:02.0",
            ],
        );
        assert_eq!(guest_transport::check(Mmio, &mmio), Ok(()));
        assert_eq!(guest_transport::check(Pci, &pci), Ok(()));
        // The wrong transport either way, and a guest that said nothing.
        let e = guest_transport::check(Pci, &mmio).unwrap_err();
        assert!(e.contains("virtio-mmio") || e.contains("elsewhere"), "{e}");
        assert!(guest_transport::check(Mmio, &pci).is_err());
        assert!(guest_transport::check(Pci, &boot("console=ttyS0", &[])).is_err());
        assert!(guest_transport::check(Mmio, "").is_err());
        // Offered PCI, but a device found on mmio all the same.
        let mixed = pci.replace("virtio-pci 00:02.0", "virtio-mmio 0xd0001000");
        assert!(guest_transport::check(Pci, &mixed)
            .unwrap_err()
            .contains("net0 on mmio"));
        let found = guest_transport::devices(&pci);
        assert_eq!(
            found,
            [
                ("blk0".to_string(), Pci, "00:01.0".to_string()),
                ("net0".to_string(), Pci, "00:02.0".to_string())
            ]
        );
    }
}
