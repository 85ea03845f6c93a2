//! What the virtio-mmio transport needs from the device behind it.

/// A queue as the driver configured it (guest-physical addresses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueConfig {
    /// Number of descriptors.
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available ("driver") ring.
    pub avail: u64,
    /// Used ("device") ring.
    pub used: u64,
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
#[error("{device}: {what}")]
pub struct ActivateError {
    /// The device's name.
    pub device: String,
    /// What failed.
    pub what: String,
}

/// Why a new backend could not take over a device ([`VirtioBackend::reconnect`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconnectError {
    /// The new backend hung up during the replay: lost again, waiting for another one.
    #[error("{0}")]
    Lost(String),
    /// The new backend cannot take over (it lacks what was negotiated, refused a request,
    /// did not answer in time, or the state to hand over is not sound): the device is
    /// stopped and needs a reset.
    #[error("{0}")]
    Refused(String),
}

/// A virtio device as seen by its transport.
pub trait VirtioBackend: Send {
    /// Name for messages (e.g. `disk0`).
    fn name(&self) -> &str;
    /// Virtio device id (2 for block).
    fn device_type(&self) -> u32;
    /// Feature bits offered to the driver.
    fn features(&self) -> u64;
    /// Largest size of each queue; the count is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Size of the device config space in bytes.
    fn config_size(&self) -> usize {
        256
    }
    /// Reads device config space at `offset`.
    fn read_config(&mut self, offset: u64, data: &mut [u8]);
    /// Writes device config space at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with the driver's features and its ready queues (`None` for a
    /// queue the driver did not enable).
    fn activate(
        &mut self,
        features: u64,
        queues: &[Option<QueueConfig>],
    ) -> Result<(), ActivateError>;
    /// Stops the device (driver reset); it may be activated again.
    fn reset(&mut self);
    /// The driver notified queue `queue` and no ioeventfd caught it (queues the vmm serves
    /// itself, such as virtio-net's control queue).
    fn notify(&mut self, _queue: u32) {}
    /// Raises the device's interrupt (for a config change the vmm signals).
    fn interrupt(&mut self) -> std::io::Result<()>;
    /// A new backend process for the device, connected through `socket`: the device's
    /// set-up is replayed to it.
    fn reconnect(&mut self, _socket: std::os::unix::net::UnixStream) -> Result<(), ReconnectError> {
        Err(ReconnectError::Refused(format!(
            "{}: not served by a backend process",
            self.name()
        )))
    }
    /// No backend will serve the device again (`why`): it stops talking to one.
    fn stop(&mut self, _why: &str) {}
}
