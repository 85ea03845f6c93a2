//! The virtio-mmio transport (virtio 1.x, register layout version 2).
//!
//! ## The interrupt-status register
//! The backend signals used buffers by writing its call fd, which is an irqfd: the interrupt
//! reaches the guest without passing through the vmm, so the vmm cannot know whether a
//! used-buffer notification is pending. InterruptStatus therefore always reads with
//! `VIRTIO_MMIO_INT_VRING` set (plus `VIRTIO_MMIO_INT_CONFIG` while a config change the vmm
//! raised is unacknowledged), and InterruptACK only clears the config bit. A driver that
//! reads the status on a spurious interrupt finds nothing new in its used rings, which the
//! virtio spec allows; Linux's virtio_mmio driver handles it the same way as a shared line.
//! Firecracker and Cloud Hypervisor answer the register the same way for vhost-user devices.

use virtio_bindings::virtio_mmio::*;

use bulkhead_ratelimit::debug_limited;

use super::backend::VirtioBackend;
use super::state::DeviceState;
use crate::devices::bus::BusDevice;
use crate::devices::VmStop;

pub use super::state::transport_filter;

/// "virt" in little endian.
const MAGIC: u32 = 0x7472_6976;
/// Register layout version 2: virtio 1.x ("modern").
const VERSION: u32 = 2;
/// Vendor id: "BKHD".
const VENDOR_ID: u32 = 0x4448_4b42;

/// A virtio device on the MMIO bus.
pub struct MmioTransport {
    state: DeviceState,
    /// Interrupt bits the vmm itself raised (config change).
    interrupt_status: u32,
}

impl MmioTransport {
    /// Puts `backend` behind a virtio-mmio register window.
    pub fn new(backend: Box<dyn VirtioBackend>) -> Self {
        MmioTransport {
            state: DeviceState::new(backend),
            interrupt_status: 0,
        }
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        self.state.name()
    }

    /// Tells the driver the configuration space changed: a new ConfigGeneration, the
    /// config bit in InterruptStatus until acknowledged, and an interrupt. Nothing before
    /// the driver is running (it reads the configuration when it starts).
    pub fn config_changed(&mut self) -> std::io::Result<()> {
        if !self.state.driver_ok() {
            return Ok(());
        }
        self.state.bump_config_generation();
        self.interrupt_status |= VIRTIO_MMIO_INT_CONFIG;
        self.state.backend().interrupt()
    }

    /// The device state this transport serves (for [`super::ConfigChange`]).
    pub(super) fn device_state(&mut self) -> &mut DeviceState {
        &mut self.state
    }

    fn read_register(&mut self, offset: u32) -> u32 {
        let s = &self.state;
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => s.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => s.device_features_word(),
            VIRTIO_MMIO_QUEUE_NUM_MAX => s
                .selected_queue()
                .map(|q| u32::from(q.max_size))
                .unwrap_or(0),
            VIRTIO_MMIO_QUEUE_READY => s.selected_queue().map(|q| u32::from(q.ready)).unwrap_or(0),
            VIRTIO_MMIO_INTERRUPT_STATUS => VIRTIO_MMIO_INT_VRING | self.interrupt_status,
            VIRTIO_MMIO_STATUS => s.status(),
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX, // no shared memory
            VIRTIO_MMIO_CONFIG_GENERATION => s.config_generation(),
            _ => {
                debug_limited!("{}: read of register {offset:#x}", self.name());
                0
            }
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        let set_low = |field: &mut u64| *field = (*field & !0xffff_ffff) | u64::from(value);
        let set_high = |field: &mut u64| *field = (*field & 0xffff_ffff) | (u64::from(value) << 32);
        let s = &mut self.state;
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => s.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => s.driver_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => s.write_driver_features_word(value),
            VIRTIO_MMIO_QUEUE_SEL => s.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM => {
                s.configure_queue(|q| q.size = value.min(u32::from(u16::MAX)) as u16)
            }
            VIRTIO_MMIO_QUEUE_READY => s.configure_queue(|q| q.ready = value == 1),
            VIRTIO_MMIO_QUEUE_DESC_LOW => s.configure_queue(|q| set_low(&mut q.desc)),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => s.configure_queue(|q| set_high(&mut q.desc)),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => s.configure_queue(|q| set_low(&mut q.avail)),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => s.configure_queue(|q| set_high(&mut q.avail)),
            VIRTIO_MMIO_QUEUE_USED_LOW => s.configure_queue(|q| set_low(&mut q.used)),
            VIRTIO_MMIO_QUEUE_USED_HIGH => s.configure_queue(|q| set_high(&mut q.used)),
            // Queues served by a backend have an ioeventfd that catches this before it
            // exits; the ones that reach the vmm are served here.
            VIRTIO_MMIO_QUEUE_NOTIFY => s.notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => {
                self.interrupt_status &= !value;
            }
            VIRTIO_MMIO_STATUS => {
                s.set_status(value);
                if value == 0 {
                    self.interrupt_status = 0;
                }
            }
            VIRTIO_MMIO_SHM_SEL => {}
            _ => debug_limited!(
                "{}: write {value:#x} to register {offset:#x} ignored",
                self.name()
            ),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.state
                .read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            debug_limited!(
                "{}: {}-byte read at {offset:#x} ignored",
                self.name(),
                data.len()
            );
            data.fill(0);
            return;
        }
        let value = self.read_register(offset as u32);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmStop> {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.state
                .write_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return None;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            debug_limited!(
                "{}: {}-byte write at {offset:#x} ignored",
                self.name(),
                data.len()
            );
            return None;
        };
        if offset % 4 == 0 {
            self.write_register(offset as u32, u32::from_le_bytes(bytes));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::backend::{ActivateError, QueueConfig};
    use super::*;
    use std::sync::{Arc, Mutex};
    use virtio_bindings::virtio_config::{
        VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
        VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    };

    #[derive(Default)]
    struct Log {
        activated: Option<(u64, Vec<Option<QueueConfig>>)>,
        activations: u32,
        resets: u32,
        config_writes: Vec<(u64, Vec<u8>)>,
        notified: Vec<u32>,
        interrupts: u32,
    }

    struct Fake {
        log: Arc<Mutex<Log>>,
        sizes: Vec<u16>,
        fail: bool,
    }

    impl VirtioBackend for Fake {
        fn name(&self) -> &str {
            "fake0"
        }
        fn device_type(&self) -> u32 {
            2
        }
        fn features(&self) -> u64 {
            // VERSION_1, EVENT_IDX, bit 30 (vhost-user protocol features), packed ring (34)
            (1 << 32) | (1 << 29) | (1 << 30) | (1 << 34) | 0x42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.sizes
        }
        fn read_config(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.log
                .lock()
                .unwrap()
                .config_writes
                .push((offset, data.to_vec()));
        }
        fn activate(
            &mut self,
            features: u64,
            queues: &[Option<QueueConfig>],
        ) -> Result<(), ActivateError> {
            if self.fail {
                return Err(ActivateError {
                    device: "fake0".into(),
                    what: "no".into(),
                });
            }
            let mut log = self.log.lock().unwrap();
            log.activated = Some((features, queues.to_vec()));
            log.activations += 1;
            Ok(())
        }
        fn reset(&mut self) {
            self.log.lock().unwrap().resets += 1;
        }
        fn notify(&mut self, queue: u32) {
            self.log.lock().unwrap().notified.push(queue);
        }
        fn interrupt(&mut self) -> std::io::Result<()> {
            self.log.lock().unwrap().interrupts += 1;
            Ok(())
        }
    }

    fn transport(fail: bool) -> (MmioTransport, Arc<Mutex<Log>>) {
        let log = Arc::new(Mutex::new(Log::default()));
        let fake = Fake {
            log: log.clone(),
            sizes: vec![256, 128],
            fail,
        };
        (MmioTransport::new(Box::new(fake)), log)
    }

    fn rd(t: &mut MmioTransport, off: u32) -> u32 {
        let mut d = [0u8; 4];
        t.read(u64::from(off), &mut d);
        u32::from_le_bytes(d)
    }

    fn wr(t: &mut MmioTransport, off: u32, v: u32) {
        t.write(u64::from(off), &v.to_le_bytes());
    }

    /// The driver handshake of the virtio spec, section 3.1.1.
    fn bring_up(t: &mut MmioTransport, features: u64) {
        wr(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        wr(
            t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
        wr(t, VIRTIO_MMIO_STATUS, 0xb);
        wr(t, VIRTIO_MMIO_QUEUE_SEL, 0);
        wr(t, VIRTIO_MMIO_QUEUE_NUM, 64);
        wr(t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
        wr(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 1);
        wr(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2000);
        wr(t, VIRTIO_MMIO_QUEUE_USED_LOW, 0x3000);
        wr(t, VIRTIO_MMIO_QUEUE_READY, 1);
        wr(t, VIRTIO_MMIO_STATUS, 0xf);
    }

    #[test]
    fn identification_registers() {
        let (mut t, _) = transport(false);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_MAGIC_VALUE), MAGIC);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_ID), 2);
        wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 128);
        wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 7);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0, "no such queue");
    }

    #[test]
    fn vhost_user_and_unsupported_transport_bits_are_hidden() {
        let (mut t, _) = transport(false);
        wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), (1 << 29) | 0x42);
        wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES),
            1,
            "VERSION_1 only, no packed ring"
        );
    }

    #[test]
    fn driver_ok_activates_with_the_queue_addresses() {
        let (mut t, log) = transport(false);
        bring_up(&mut t, (1 << 32) | 0x2);
        let (features, queues) = log.lock().unwrap().activated.clone().expect("activated");
        assert_eq!(features, (1 << 32) | 0x2);
        assert_eq!(
            queues[0],
            Some(QueueConfig {
                size: 64,
                desc: 0x1_0000_1000,
                avail: 0x2000,
                used: 0x3000
            })
        );
        assert_eq!(queues[1], None);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0xf);
    }

    #[test]
    fn features_not_offered_are_refused() {
        let (mut t, log) = transport(false);
        bring_up(&mut t, (1 << 32) | (1 << 30));
        assert_eq!(
            rd(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
            0
        );
        assert!(log.lock().unwrap().activated.is_none());
        let (mut t, log) = transport(false);
        bring_up(&mut t, 0x2); // no VERSION_1: legacy drivers are not served
        assert!(log.lock().unwrap().activated.is_none());
    }

    #[test]
    fn failed_activation_asks_for_reset_and_reset_stops_the_backend() {
        let (mut t, log) = transport(true);
        bring_up(&mut t, 1 << 32);
        assert_ne!(
            rd(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
            0
        );
        wr(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(log.lock().unwrap().resets, 1);
        let (mut t, log) = transport(false);
        wr(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(
            log.lock().unwrap().resets,
            0,
            "nothing to stop before DRIVER_OK"
        );
    }

    #[test]
    fn clearing_driver_ok_never_restarts_the_backend_and_the_reset_reaches_it() {
        let (mut t, log) = transport(false);
        bring_up(&mut t, 1 << 32);
        assert_eq!(log.lock().unwrap().activations, 1);
        // DRIVER_OK cleared (and every other bit) without a reset, then set again.
        for clearing in [0x7, 0xb, 0x4] {
            wr(&mut t, VIRTIO_MMIO_STATUS, clearing);
            let status = rd(&mut t, VIRTIO_MMIO_STATUS);
            assert_eq!(status, 0xf | VIRTIO_CONFIG_S_NEEDS_RESET, "{clearing:#x}");
        }
        // The queue registers stay frozen: the backend runs on the old addresses.
        wr(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0xdead);
        wr(&mut t, VIRTIO_MMIO_STATUS, 0xf);
        assert_eq!(log.lock().unwrap().activations, 1, "not started twice");
        assert_eq!(log.lock().unwrap().resets, 0);
        wr(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(
            log.lock().unwrap().resets,
            1,
            "the reset reached the backend"
        );
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
        // And the device comes up again after it, once.
        bring_up(&mut t, 1 << 32);
        assert_eq!(log.lock().unwrap().activations, 2);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0xf);
    }

    #[test]
    fn driver_ok_out_of_order_fails_without_starting_the_backend() {
        let (mut t, log) = transport(false);
        for _ in 0..3 {
            wr(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER_OK);
            assert_eq!(
                rd(&mut t, VIRTIO_MMIO_STATUS),
                VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED
            );
            wr(&mut t, VIRTIO_MMIO_STATUS, 0);
        }
        let log = log.lock().unwrap();
        assert_eq!((log.activations, log.resets), (0, 0));
    }

    #[test]
    fn queue_registers_are_frozen_after_driver_ok() {
        let (mut t, _) = transport(false);
        bring_up(&mut t, 1 << 32);
        wr(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0xdead);
        assert_eq!(t.state.queues()[0].desc, 0x1_0000_1000);
    }

    #[test]
    fn a_config_change_reaches_a_running_driver_only() {
        let (mut t, log) = transport(false);
        t.config_changed().unwrap();
        assert_eq!(log.lock().unwrap().interrupts, 0, "no driver yet");
        assert_eq!(rd(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), 0);
        bring_up(&mut t, 1 << 32);
        t.config_changed().unwrap();
        assert_eq!(log.lock().unwrap().interrupts, 1);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), 1);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 3);
        wr(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(
            rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_VRING
        );
    }

    #[test]
    fn interrupt_status_always_reports_the_vring() {
        let (mut t, _) = transport(false);
        assert_eq!(
            rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_VRING
        );
        t.interrupt_status = VIRTIO_MMIO_INT_CONFIG;
        assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 3);
        wr(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 3);
        assert_eq!(
            rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_VRING
        );
    }

    #[test]
    fn config_space_goes_to_the_backend() {
        let (mut t, log) = transport(false);
        let mut d = [0u8; 8];
        t.read(0x104, &mut d);
        assert_eq!(d, [4, 5, 6, 7, 8, 9, 10, 11]);
        let g = rd(&mut t, VIRTIO_MMIO_CONFIG_GENERATION);
        t.write(0x110, &[1, 2]);
        assert_eq!(log.lock().unwrap().config_writes, vec![(0x10, vec![1, 2])]);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), g.wrapping_add(1));
    }

    #[test]
    fn notifies_that_reach_the_vmm_go_to_the_backend_once_running() {
        let (mut t, log) = transport(false);
        wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        assert!(
            log.lock().unwrap().notified.is_empty(),
            "not before DRIVER_OK"
        );
        bring_up(&mut t, 1 << 32);
        wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        assert_eq!(log.lock().unwrap().notified, vec![1]);
    }

    #[test]
    fn odd_sized_register_accesses_are_harmless() {
        let (mut t, _) = transport(false);
        let mut d = [0xffu8; 2];
        t.read(0x70, &mut d);
        assert_eq!(d, [0, 0]);
        assert_eq!(t.write(0x70, &[0xf]), None);
        assert_eq!(t.state.status(), 0);
        t.read(0x71, &mut [0u8; 4]);
    }
}
