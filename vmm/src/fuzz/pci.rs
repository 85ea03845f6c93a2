//! PCI configuration and BAR accesses: ECAM and 0xCF8/0xCFC accesses of any width at any
//! offset of any function (the host bridge, two virtio functions, absent ones), and BAR0
//! accesses at the BARs wherever the guest moved them, on a bus whose KVM is the checking
//! fake of [`super::fake_kvm`].

use std::sync::{Arc, Mutex};

use bulkhead_devices::fuzz::input::Input;
use vmm_sys_util::eventfd::EventFd;

use super::fake_kvm::FakeHost;
use crate::devices::bus::BusDevice;
use crate::pci::bus::{Bdf, PciBus};
use crate::pci::config_ports::ConfigPorts;
use crate::pci::ecam::Ecam;
use crate::pci::host_bridge::HostBridge;
use crate::virtio::backend::{ActivateError, QueueConfig, VirtioBackend};
use crate::virtio::interrupts::Interrupts;
use crate::virtio::pci::VirtioPciFunction;

/// A device with two queues and 8 bytes of config; it checks it is started once per reset.
struct Fake {
    sizes: Vec<u16>,
    started: bool,
}

impl VirtioBackend for Fake {
    fn name(&self) -> &str {
        "fuzz0"
    }
    fn device_type(&self) -> u32 {
        2
    }
    fn features(&self) -> u64 {
        (1 << 32) | 0x42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn config_size(&self) -> usize {
        8
    }
    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, _: u64, queues: &[Option<QueueConfig>]) -> Result<(), ActivateError> {
        assert!(!self.started, "activated twice without a reset");
        assert_eq!(queues.len(), 2);
        self.started = true;
        Ok(())
    }
    fn reset(&mut self) {
        self.started = false;
    }
    fn interrupt(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where the vmm puts the two functions' BAR0s.
pub const BARS: [u64; 2] = [0xc000_0000, 0xc000_8000];
/// ECAM offset of a device's function 0.
fn ecam(dev: u8, reg: u16) -> u64 {
    (u64::from(dev) << 15) | u64::from(reg & 0xfff)
}

/// Width of an access.
fn width(selector: u8) -> usize {
    [4, 4, 2, 1, 4, 2, 1, 8, 3, 0, 5, 16, 4, 4, 2, 1][usize::from(selector & 15)]
}

/// Runs the accesses the input encodes. Panics if the fake KVM sees a call KVM would
/// refuse or that breaks the irqfd/route order, if a device starts twice without a reset,
/// or if a function's identity changes. Returns the number of irqfds assigned at the end.
pub fn fuzz_pci(data: &[u8]) -> usize {
    let mut input = Input::new(data);
    let host = Arc::new(FakeHost::default());
    let mut bus = PciBus::default();
    bus.insert(0, Arc::new(Mutex::new(HostBridge::default())));
    for (i, bar) in BARS.into_iter().enumerate() {
        let kicks = (0..2 - i)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"))
            .collect();
        let fake = Fake {
            sizes: vec![256, 64],
            started: false,
        };
        let f = VirtioPciFunction::new(
            Box::new(fake),
            kicks,
            Interrupts::per_queue(2).expect("eventfds"),
            host.clone(),
            24 + 3 * i as u32,
            bar,
        )
        .expect("a function");
        bus.insert(i as u8 + 1, Arc::new(Mutex::new(f)));
    }
    let bus = Arc::new(bus);
    let mut ecam_dev = Ecam::new(bus.clone());
    let mut ports = ConfigPorts::new(bus.clone());
    for _ in 0..512 {
        if input.is_empty() {
            break;
        }
        let kind = input.u8();
        let sel = input.u8();
        let off = input.u16();
        let mut buf = vec![0u8; width(kind >> 4)];
        let value = input.u64().to_le_bytes();
        for (b, v) in buf.iter_mut().zip(value.iter().cycle()) {
            *b = *v;
        }
        let dev = sel & 3;
        let port_len = buf.len().min(4);
        match kind & 7 {
            0 => {
                ecam_dev.write(ecam(dev, off), &buf);
            }
            1 => ecam_dev.read(ecam(dev, off), &mut buf),
            2 => {
                ports.write(u64::from(sel & 7), &buf[..port_len]);
            }
            3 => ports.read(u64::from(sel & 7), &mut buf[..port_len]),
            4 | 5 => {
                let addr = match sel >> 6 {
                    0 => BARS[0] + u64::from(off & 0x7fff),
                    1 => BARS[1] + u64::from(off & 0x7fff),
                    2 => 0xc000_0000 + (u64::from(off) << 8),
                    _ => u64::from_le_bytes(value),
                };
                if kind & 7 == 4 {
                    bus.bar_write(addr, &buf);
                } else {
                    bus.bar_read(addr, &mut buf);
                }
            }
            _ => {
                // The 0xCF8 address register set to a function's register.
                let a = 0x8000_0000u32 | (u32::from(dev) << 11) | u32::from(off & 0xfc);
                ports.write(0, &a.to_le_bytes());
            }
        }
        let mut id = [0u8; 4];
        for (dev, want) in [(0u8, 0x0008_1b36u32), (1, 0x1042_1af4), (2, 0x1042_1af4)] {
            bus.config_read(
                Bdf {
                    device: dev,
                    function: 0,
                },
                0,
                &mut id,
            );
            assert_eq!(
                u32::from_le_bytes(id),
                want,
                "00:{dev:02x}.0's identity changed"
            );
        }
    }
    let irqfds = host
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .irqfds
        .len();
    irqfds
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_devices::fuzz::stable::{run_bounded, Rng};

    /// One access as the harness decodes it.
    fn op(out: &mut Vec<u8>, kind: u8, width_sel: u8, sel: u8, off: u16, value: u64) {
        out.push(kind | (width_sel << 4));
        out.push(sel);
        out.extend(off.to_le_bytes());
        out.extend(value.to_le_bytes());
    }

    /// A driver's bring-up of function 1: bus mastering on, MSI-X enabled and programmed, vectors set, the
    /// handshake; sometimes BAR0 moved first.
    fn valid(rng: &mut Rng) -> Vec<u8> {
        let mut out = Vec::new();
        let bar = if rng.below(2) == 0 { 0 } else { 1 };
        let (dev, base_sel) = (1, bar << 6);
        if bar == 1 {
            // Function 1's BAR0 onto function 2's (the guest may).
            op(&mut out, 0, 0, dev, 0x10, BARS[1]);
        }
        // Memory decoding and bus mastering (MSIs are memory writes).
        op(&mut out, 0, 2, dev, 0x04, 0x6);
        // MSI-X enable: control word of the capability at 0x98 (after the virtio ones).
        op(&mut out, 0, 2, dev, 0x9a, 0x8000);
        for v in 0..3u16 {
            op(&mut out, 4, 0, base_sel, 0x4000 + v * 16, 0xfee0_0000);
            op(
                &mut out,
                4,
                0,
                base_sel,
                0x4008 + v * 16,
                0x40 + u64::from(v),
            );
            op(
                &mut out,
                4,
                0,
                base_sel,
                0x400c + v * 16,
                rng.below(2) as u64,
            );
        }
        for (reg, v, w) in [
            (0x14u16, 0u64, 3u8),
            (0x14, 1, 3),
            (0x14, 3, 3),
            (0x08, 1, 0),
        ] {
            op(&mut out, 4, w, base_sel, reg, v);
        }
        op(&mut out, 4, 0, base_sel, 0x0c, 1);
        op(&mut out, 4, 3, base_sel, 0x14, 0xb);
        op(&mut out, 4, 2, base_sel, 0x10, 0);
        for q in 0..2u64 {
            op(&mut out, 4, 2, base_sel, 0x16, q);
            op(&mut out, 4, 2, base_sel, 0x1a, q + 1);
            op(&mut out, 4, 7, base_sel, 0x20, 0x1000);
            op(&mut out, 4, 2, base_sel, 0x1c, 1);
        }
        op(&mut out, 4, 3, base_sel, 0x14, 0xf);
        if rng.below(2) == 1 {
            op(&mut out, 4, 3, base_sel, 0x14, 0);
        }
        out
    }

    #[test]
    fn the_bring_up_assigns_irqfds() {
        let mut rng = Rng::new(3);
        let mut assigned = 0;
        for _ in 0..16 {
            assigned += fuzz_pci(&valid(&mut rng));
        }
        assert!(assigned > 0, "no bring-up got an irqfd");
    }

    #[test]
    fn bounded_fuzz_of_pci_accesses() {
        run_bounded("pci", valid, fuzz_pci);
    }
}
