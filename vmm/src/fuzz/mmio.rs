//! virtio-mmio register sequences: reads and writes of any offset and width, decoded from
//! the input, against the transport with a recording fake device behind it.

use std::sync::{Arc, Mutex};

use bulkhead_devices::fuzz::input::Input;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_MAGIC_VALUE, VIRTIO_MMIO_VERSION};

use crate::devices::bus::BusDevice;
use crate::virtio::backend::{ActivateError, QueueConfig, VirtioBackend};
use crate::virtio::mmio::MmioTransport;

/// What the fake device saw.
#[derive(Debug, Default)]
struct Seen {
    activations: usize,
    failed_activations: usize,
    /// Activations tried since the last reset reached the device: at most one (a driver
    /// that clears DRIVER_OK and sets it again must not start the backend twice).
    since_reset: usize,
}

/// A device offering features with bits the transport must filter (vhost-user's bit 30,
/// the packed ring), two queues, an 8-byte config space; activation fails on request.
struct Fake {
    seen: Arc<Mutex<Seen>>,
    sizes: Vec<u16>,
    config: [u8; 8],
    fail: bool,
}

const OFFERED: u64 = (1 << 32) | (1 << 29) | (1 << 30) | (1 << 34) | (1 << 28) | 0x42;
/// What of [`OFFERED`] a guest may get (said here, not taken from the transport under
/// test): device bits 0..=23, INDIRECT_DESC (28), EVENT_IDX (29), VERSION_1 (32).
const NEGOTIABLE: u64 = OFFERED & (((1 << 24) - 1) | (1 << 28) | (1 << 29) | (1 << 32));

impl VirtioBackend for Fake {
    fn name(&self) -> &str {
        "fuzz0"
    }
    fn device_type(&self) -> u32 {
        2
    }
    fn features(&self) -> u64 {
        OFFERED
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *b = at.and_then(|at| self.config.get(at)).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            if let Some(slot) = at.and_then(|at| self.config.get_mut(at)) {
                *slot = *b;
            }
        }
    }
    fn activate(
        &mut self,
        features: u64,
        queues: &[Option<QueueConfig>],
    ) -> Result<(), ActivateError> {
        assert_eq!(
            features & !NEGOTIABLE,
            0,
            "activated with features {features:#x} that were not offered"
        );
        assert_ne!(
            features & (1 << VIRTIO_F_VERSION_1),
            0,
            "activated without VERSION_1"
        );
        assert_eq!(queues.len(), self.sizes.len(), "one entry per queue");
        let mut seen = self.seen.lock().expect("not poisoned");
        seen.since_reset += 1;
        assert_eq!(seen.since_reset, 1, "activated again without a reset");
        if self.fail {
            seen.failed_activations += 1;
            return Err(ActivateError {
                device: "fuzz0".into(),
                what: "refused by the fuzzer".into(),
            });
        }
        seen.activations += 1;
        Ok(())
    }
    fn reset(&mut self) {
        self.seen.lock().expect("not poisoned").since_reset = 0;
    }
    fn notify(&mut self, _queue: u32) {}
    fn interrupt(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Width of an access: mostly the 4 bytes registers take, sometimes anything.
fn width(selector: u8) -> usize {
    [4, 4, 4, 4, 1, 2, 8, 3, 0, 5, 16, 4, 4, 4, 4, 4][usize::from(selector & 15)]
}

/// Decodes (kind, offset, width, value) accesses from the input and performs them on a
/// transport. Panics if the device is activated with features not offered (or without
/// VERSION_1), or if the identification registers ever read differently. Returns the
/// number of activations.
pub fn fuzz_mmio(data: &[u8]) -> usize {
    let mut input = Input::new(data);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let fake = Fake {
        seen: Arc::clone(&seen),
        sizes: vec![256, u16::from(input.u8())],
        config: [0; 8],
        fail: input.u8() == 0xff,
    };
    let mut transport = MmioTransport::new(Box::new(fake));
    for _ in 0..512 {
        if input.is_empty() {
            break;
        }
        let kind = input.u8();
        let offset = match input.u8() {
            // Registers (and the first of config space), aligned.
            sel @ 0..=0xcf => u64::from(sel) * 4 % 0x110,
            _ => u64::from(input.u16() & 0xfff),
        };
        let mut buf = vec![0u8; width(kind >> 4)];
        match kind & 3 {
            0 | 1 => {
                for b in buf.iter_mut() {
                    *b = input.u8();
                }
                let _ = transport.write(offset, &buf);
            }
            2 => transport.read(offset, &mut buf),
            _ => {
                let _ = transport.config_changed();
            }
        }
        let mut word = [0u8; 4];
        transport.read(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut word);
        assert_eq!(&word, b"virt", "the magic value changed");
        transport.read(u64::from(VIRTIO_MMIO_VERSION), &mut word);
        assert_eq!(u32::from_le_bytes(word), 2, "the version changed");
    }
    let seen = seen.lock().expect("not poisoned");
    seen.activations + seen.failed_activations
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_devices::fuzz::stable::{run_bounded, Rng};
    use virtio_bindings::virtio_mmio::*;

    /// The driver handshake of the virtio spec (3.1.1) as accesses, with a random queue set-up.
    fn valid(rng: &mut Rng) -> Vec<u8> {
        let mut out = vec![128, 0];
        let write = |out: &mut Vec<u8>, reg: u32, value: u32| {
            out.push(0);
            out.push((reg / 4) as u8);
            out.extend(value.to_le_bytes());
        };
        write(&mut out, VIRTIO_MMIO_STATUS, 1);
        write(&mut out, VIRTIO_MMIO_STATUS, 3);
        write(&mut out, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        write(&mut out, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        write(&mut out, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        write(
            &mut out,
            VIRTIO_MMIO_DRIVER_FEATURES,
            rng.below(0x100) as u32 & 0x42,
        );
        write(&mut out, VIRTIO_MMIO_STATUS, 0xb);
        write(&mut out, VIRTIO_MMIO_QUEUE_SEL, rng.below(3) as u32);
        write(&mut out, VIRTIO_MMIO_QUEUE_NUM, 1 << rng.below(10));
        write(&mut out, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
        write(&mut out, VIRTIO_MMIO_QUEUE_READY, 1);
        write(&mut out, VIRTIO_MMIO_STATUS, 0xf);
        if rng.below(2) == 1 {
            // DRIVER_OK cleared without a reset, then set again: must not start it twice.
            write(&mut out, VIRTIO_MMIO_STATUS, 0xb);
            write(&mut out, VIRTIO_MMIO_STATUS, 0xf);
        }
        if rng.below(2) == 1 {
            write(&mut out, VIRTIO_MMIO_STATUS, 0);
        }
        out
    }

    #[test]
    fn the_handshake_activates() {
        let mut rng = Rng::new(11);
        let activations: usize = (0..16).map(|_| fuzz_mmio(&valid(&mut rng))).sum();
        assert!(
            activations >= 4,
            "{activations} activations in 16 handshakes"
        );
    }

    #[test]
    fn bounded_fuzz_of_mmio_registers() {
        run_bounded("mmio", valid, fuzz_mmio);
    }
}
