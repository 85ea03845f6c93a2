//! The transport-independent state of a virtio device, shared by the virtio-mmio and
//! virtio-pci transports: feature selection and negotiation, the queues' configuration,
//! the status handshake (with its FAILED and DEVICE_NEEDS_RESET rules), starting the
//! backend at most once per reset, and the reset itself. A transport maps its registers
//! onto these operations and adds its own interrupt reporting.

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use bulkhead_ratelimit::{error_limited, warn_limited};

use super::backend::{QueueConfig, ReconnectError, VirtioBackend};

/// Transport features the vmm can offer on top of device-specific bits 0..=23.
const TRANSPORT_FEATURES: u64 =
    (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << VIRTIO_F_VERSION_1);
/// Device-specific feature bits.
const DEVICE_FEATURES_MASK: u64 = (1 << 24) - 1;
/// Status bits of the driver's handshake: once set, only a reset clears them.
const HANDSHAKE_BITS: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_DRIVER_OK;
/// Status bits the device sets (FAILED too, on a DRIVER_OK out of order); kept until reset
/// whatever the driver writes.
const DEVICE_BITS: u32 = VIRTIO_CONFIG_S_FAILED | VIRTIO_CONFIG_S_NEEDS_RESET;

/// The features of `offered` that the transport passes on to a guest.
pub fn transport_filter(offered: u64) -> u64 {
    offered & (DEVICE_FEATURES_MASK | TRANSPORT_FEATURES)
}

/// One queue as the driver configures it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Queue {
    /// Largest size the device accepts.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// Whether the driver enabled it (QueueReady / queue_enable).
    pub ready: bool,
    /// Descriptor table.
    pub desc: u64,
    /// Available (driver) ring.
    pub avail: u64,
    /// Used (device) ring.
    pub used: u64,
}

impl Queue {
    fn new(max_size: u16) -> Queue {
        Queue {
            max_size,
            size: max_size,
            ..Default::default()
        }
    }
}

/// A virtio device's state, whatever the transport.
pub struct DeviceState {
    backend: Box<dyn VirtioBackend>,
    /// Which 32 bits of the device features the driver reads.
    pub device_features_sel: u32,
    /// Which 32 bits of the driver features the driver writes.
    pub driver_features_sel: u32,
    driver_features: u64,
    /// The queue the queue registers address.
    pub queue_sel: u32,
    queues: Vec<Queue>,
    status: u32,
    /// Whether the backend was started (asked to activate) since the last reset: it is
    /// started at most once per reset, and a reset stops it whatever the status says.
    activated: bool,
    config_generation: u32,
}

impl DeviceState {
    /// The state of `backend` after a reset.
    pub fn new(backend: Box<dyn VirtioBackend>) -> Self {
        let queues = backend
            .queue_max_sizes()
            .iter()
            .map(|&m| Queue::new(m))
            .collect();
        DeviceState {
            backend,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            status: 0,
            activated: false,
            config_generation: 0,
        }
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        self.backend.name()
    }

    /// The device behind the transport.
    pub fn backend(&mut self) -> &mut dyn VirtioBackend {
        self.backend.as_mut()
    }

    /// Its virtio device type.
    pub fn device_type(&self) -> u32 {
        self.backend.device_type()
    }

    /// The features offered to the driver.
    pub fn offered_features(&self) -> u64 {
        transport_filter(self.backend.features())
    }

    /// The 32 bits of the offered features that `device_features_sel` selects.
    pub fn device_features_word(&self) -> u32 {
        match self.device_features_sel {
            0 => self.offered_features() as u32,
            1 => (self.offered_features() >> 32) as u32,
            _ => 0,
        }
    }

    /// The 32 bits of the driver's features that `driver_features_sel` selects.
    pub fn driver_features_word(&self) -> u32 {
        match self.driver_features_sel {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        }
    }

    /// The driver writes the 32 bits of its features that `driver_features_sel` selects;
    /// ignored once FEATURES_OK is set.
    pub fn write_driver_features_word(&mut self, value: u32) {
        if self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            warn_limited!(
                "{}: driver changed features after FEATURES_OK; ignored",
                self.name()
            );
            return;
        }
        let f = &mut self.driver_features;
        match self.driver_features_sel {
            0 => *f = (*f & !0xffff_ffff) | u64::from(value),
            1 => *f = (*f & 0xffff_ffff) | (u64::from(value) << 32),
            _ => {}
        }
    }

    /// The device status.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the driver set DRIVER_OK (queues are frozen from then on).
    pub fn driver_ok(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
    }

    /// The configuration generation counter.
    pub fn config_generation(&self) -> u32 {
        self.config_generation
    }

    /// A new configuration generation (the config space changed).
    pub fn bump_config_generation(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
    }

    /// The queues.
    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }

    /// The queue `queue_sel` selects, if it exists.
    pub fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    /// Changes the selected queue's configuration; only before DRIVER_OK (the backend runs
    /// on the addresses it was given).
    pub fn configure_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if self.driver_ok() {
            return;
        }
        if let Some(q) = self.queues.get_mut(self.queue_sel as usize) {
            f(q);
        }
    }

    /// A queue notification that reached the vmm (no ioeventfd caught it).
    pub fn notify(&mut self, queue: u32) {
        if self.driver_ok() {
            self.backend.notify(queue);
        }
    }

    /// Reads the device-specific configuration space.
    pub fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        self.backend.read_config(offset, data);
    }

    /// Writes the device-specific configuration space (a new generation).
    pub fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.backend.write_config(offset, data);
        self.bump_config_generation();
    }

    /// A write to the status register. The driver only ever adds bits; a write of 0 is
    /// the one way to take them away (a reset). A write that clears a handshake bit
    /// otherwise is a driver bug (virtio 1.2, 2.1.2: "The driver MUST NOT clear a device
    /// status bit"): it is ignored and the device asks for a reset (DEVICE_NEEDS_RESET),
    /// so that clearing DRIVER_OK and setting it again never starts the backend a second
    /// time, and the reset that follows always reaches it.
    pub fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let cleared = self.status & HANDSHAKE_BITS & !value;
        if cleared != 0 {
            warn_limited!(
                "{}: driver wrote status {value:#x} over {:#x}, clearing {cleared:#x} without a reset; ignored, the device needs a reset",
                self.name(),
                self.status
            );
            self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
            return;
        }
        // What the device set (FAILED, DEVICE_NEEDS_RESET) stays until the reset.
        let sticky = self.status & DEVICE_BITS;
        let new_bits = value & !self.status;
        if new_bits & VIRTIO_CONFIG_S_FEATURES_OK != 0 && !self.features_acceptable() {
            warn_limited!(
                "{}: driver features {:#x} not acceptable (offered {:#x}); FEATURES_OK refused",
                self.name(),
                self.driver_features,
                self.offered_features()
            );
            self.status = (value & !VIRTIO_CONFIG_S_FEATURES_OK) | sticky;
            return;
        }
        self.status = value | sticky;
        if new_bits & VIRTIO_CONFIG_S_DRIVER_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        let extra = self.driver_features & !self.offered_features();
        extra == 0 && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0
    }

    fn activate(&mut self) {
        let required =
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        if self.status & required != required {
            warn_limited!(
                "{}: DRIVER_OK without ACKNOWLEDGE/DRIVER/FEATURES_OK",
                self.name()
            );
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        let queues: Vec<Option<QueueConfig>> = self
            .queues
            .iter()
            .map(|q| {
                q.ready.then_some(QueueConfig {
                    size: q.size,
                    desc: q.desc,
                    avail: q.avail,
                    used: q.used,
                })
            })
            .collect();
        // From here the backend may hold state (a memory table, started rings) even if
        // it fails: the next reset must reach it.
        self.activated = true;
        if let Err(e) = self.backend.activate(self.driver_features, &queues) {
            error_limited!("starting virtio device {e}");
            self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        }
    }

    /// Hands the device to a new backend process connected through `socket` (its old one
    /// died or is being replaced). If the new one cannot take over, the device is marked
    /// DEVICE_NEEDS_RESET ([`DeviceState::stop`]); a new backend that hung up during the
    /// replay leaves the device waiting for another. Returns whether the driver must be
    /// told (a config-change notification) along with the outcome.
    pub fn reconnect(
        &mut self,
        socket: std::os::unix::net::UnixStream,
    ) -> (bool, Result<(), ReconnectError>) {
        let result = self.backend.reconnect(socket);
        let notify = match &result {
            Err(ReconnectError::Refused(why)) => self.stop(why),
            _ => false,
        };
        (notify, result)
    }

    /// No backend will serve the device any more (`why`): the device is marked
    /// DEVICE_NEEDS_RESET, which stays until the driver resets it (virtio 1.2, 2.1.2).
    /// Returns whether a driver is running, which the transport then sends a
    /// configuration-change notification.
    pub fn stop(&mut self, why: &str) -> bool {
        error_limited!("{}: stopped, it needs a reset: {why}", self.name());
        self.backend.stop(why);
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        self.driver_ok()
    }

    /// Resets the device: the backend is stopped if it was started, and every register
    /// takes its initial value.
    pub fn reset(&mut self) {
        if std::mem::take(&mut self.activated) {
            self.backend.reset();
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            *q = Queue::new(q.max_size);
        }
    }
}
