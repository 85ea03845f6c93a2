//! The vhost-user frontend: a virtio device whose queues are served by another process.
//!
//! At build time [`VhostUserDevice::connect`] does the handshake (owner, features,
//! protocol features, queue count). When the driver sets DRIVER_OK, [`activate`] sends the
//! memory table (the guest memfd), the negotiated features, and per queue its size, ring
//! addresses (translated to this process's virtual addresses, as the protocol wants), base,
//! kick fd (the queue's ioeventfd) and call fd (the queue's irqfd), then enables the rings.
//! Config space reads and writes become GET_CONFIG/SET_CONFIG. Every reply is awaited with
//! a timeout, so a backend that stops answering fails the operation instead of hanging a
//! vCPU.
//!
//! [`activate`]: VirtioBackend::activate

use bulkhead_ratelimit::{debug_limited, info_limited, warn_limited};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::backend::{ActivateError, QueueConfig, VirtioBackend};
use super::config_size::config_size;
use super::interrupts::Interrupts;
use super::local_config::{self, LocalNetConfig};
use super::net_ctrl::{CtrlQueue, CTRL_QUEUE_SIZE, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ};

/// How long to wait for any reply from a backend.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Bit 30 of the virtio features: the backend speaks vhost-user protocol features. Never
/// offered to the guest.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// Queue size the vmm offers the driver.
pub const QUEUE_SIZE: u16 = 256;
/// virtio-net's device type.
const VIRTIO_ID_NET: u32 = 1;
/// virtio-console's device type.
const VIRTIO_ID_CONSOLE: u32 = 3;
/// Largest config space read or write forwarded (the vhost-user limit is 256 bytes).
const MAX_CONFIG: usize = 256;

/// Errors while connecting to a backend.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    /// The socket could not be connected or set up.
    #[error("{name}: connecting to the vhost-user backend at {path}")]
    Connect {
        /// Device name.
        name: String,
        /// Socket path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A vhost-user request failed (backend gone, refused, malformed reply or timeout).
    #[error("{name}: vhost-user {what}")]
    Protocol {
        /// Device name.
        name: String,
        /// The request.
        what: &'static str,
        /// The cause.
        #[source]
        source: vhost::Error,
    },
    /// The interrupt eventfds could not be created or registered.
    #[error("{name}: setting up its interrupts")]
    Interrupts {
        /// Device name.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The backend lacks something required.
    #[error("{name}: the vhost-user backend {what}")]
    Unsuitable {
        /// Device name.
        name: String,
        /// What it lacks.
        what: String,
    },
}

/// How to reach a backend.
#[derive(Debug)]
pub enum BackendSocket {
    /// A Unix socket path a backend listens on (e.g. qemu-storage-daemon's export).
    Path(std::path::PathBuf),
    /// An already-connected socket (the launcher's socketpair end).
    Connected(UnixStream),
}

/// The host-side facts about guest memory a backend needs to map it.
#[derive(Clone)]
pub struct SharedMemory {
    /// The guest memory as mapped here.
    pub mem: GuestMemoryMmap,
    /// The memfd's raw fd (owned by the VM's `GuestMemory`, alive as long as the VM).
    pub memfd: std::os::fd::RawFd,
}

/// A virtio device served by a vhost-user backend.
pub struct VhostUserDevice {
    name: String,
    device_type: u32,
    frontend: Frontend,
    backend_features: u64,
    protocol_features: VhostUserProtocolFeatures,
    queue_sizes: Vec<u16>,
    kicks: Vec<EventFd>,
    interrupts: Interrupts,
    memory: SharedMemory,
    config_size: usize,
    active: bool,
    /// virtio-net with several queue pairs: the vmm serves the control queue (the last
    /// queue) and enables pairs as the driver asks.
    net_ctrl: Option<NetCtrl>,
    /// A net device whose config space the vmm serves (see `local_config`).
    local: Option<LocalNetConfig>,
}

/// The vmm-served control queue of a multiqueue net device.
struct NetCtrl {
    /// Its queue index (after the data queues).
    index: u32,
    /// Set up at activation when the driver enabled it.
    queue: Option<CtrlQueue>,
}

impl VhostUserDevice {
    /// Connects to a backend and does the handshake. `kicks` (one per queue) are the
    /// queues' ioeventfds (registered by the transport). Once the device knows how many
    /// queues it has (the data queues, plus the control queue of a multiqueue net device),
    /// `interrupts` makes its call and config eventfds for that count.
    pub fn connect(
        name: &str,
        device_type: u32,
        socket: BackendSocket,
        kicks: Vec<EventFd>,
        interrupts: impl FnOnce(usize) -> std::io::Result<Interrupts>,
        memory: SharedMemory,
    ) -> Result<Self, VhostUserError> {
        let stream = open(name, socket)?;
        let proto = |what| {
            let name = name.to_owned();
            move |source| VhostUserError::Protocol { name, what, source }
        };
        let mut frontend = Frontend::from_stream(stream, kicks.len() as u64);
        frontend.set_owner().map_err(proto("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(proto("GET_FEATURES"))?;
        if backend_features & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
            return Err(VhostUserError::Unsuitable {
                name: name.to_owned(),
                what: "does not offer VHOST_USER_F_PROTOCOL_FEATURES".into(),
            });
        }
        let offered = frontend
            .get_protocol_features()
            .map_err(proto("GET_PROTOCOL_FEATURES"))?;
        let wanted = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK;
        let protocol_features = offered & wanted;
        info_limited!(
            "{name}: the backend offers features {backend_features:#x}, protocol features {:#x}",
            offered.bits()
        );
        frontend
            .set_protocol_features(protocol_features)
            .map_err(proto("SET_PROTOCOL_FEATURES"))?;
        if protocol_features.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        // A net backend may lack it: the vmm then serves the config (`with_local`).
        if !protocol_features.contains(VhostUserProtocolFeatures::CONFIG)
            && device_type != VIRTIO_ID_NET
        {
            return Err(VhostUserError::Unsuitable {
                name: name.to_owned(),
                what: "does not offer the CONFIG protocol feature (config space)".into(),
            });
        }
        // Without MQ a backend serves its device type's usual queues (one for block, a pair
        // for net and console), which is what is asked for then.
        if protocol_features.contains(VhostUserProtocolFeatures::MQ) {
            let max = frontend.get_queue_num().map_err(proto("GET_QUEUE_NUM"))?;
            if (max as usize) < kicks.len() {
                return Err(VhostUserError::Unsuitable {
                    name: name.to_owned(),
                    what: format!("serves {max} queues, {} were asked for", kicks.len()),
                });
            }
        }
        // virtio-net with more than one pair: a control queue the vmm serves (MQ needs it).
        let multiqueue_net = device_type == VIRTIO_ID_NET
            && kicks.len() > 2
            && backend_features & (1 << VIRTIO_NET_F_MQ) != 0;
        let mut queue_sizes = vec![QUEUE_SIZE; kicks.len()];
        let net_ctrl = multiqueue_net.then(|| {
            queue_sizes.push(CTRL_QUEUE_SIZE);
            NetCtrl {
                index: kicks.len() as u32,
                queue: None,
            }
        });
        let interrupts =
            interrupts(queue_sizes.len()).map_err(|source| VhostUserError::Interrupts {
                name: name.to_owned(),
                source,
            })?;
        if interrupts.queues.len() != queue_sizes.len() {
            return Err(VhostUserError::Interrupts {
                name: name.to_owned(),
                source: std::io::Error::other("one call eventfd per queue is needed"),
            });
        }
        Ok(VhostUserDevice {
            name: name.to_owned(),
            device_type,
            frontend,
            backend_features,
            protocol_features,
            queue_sizes,
            kicks,
            interrupts,
            memory,
            config_size: config_size(device_type, backend_features).min(MAX_CONFIG),
            active: false,
            net_ctrl,
            local: None,
        })
    }

    /// Settings the launcher gives for an external backend: a net device's MAC (the vmm
    /// then serves its config space, see `local_config`; a net backend without CONFIG
    /// needs one), and the largest queue size the backend takes (`queue_size`, at most
    /// [`QUEUE_SIZE`]; vhost-user has no message to ask it).
    pub fn with_local(
        mut self,
        mac: Option<local_config::Mac>,
        queue_size: Option<u16>,
    ) -> Result<Self, VhostUserError> {
        if let Some(size) = queue_size {
            if size == 0 || size > QUEUE_SIZE || !size.is_power_of_two() {
                return Err(VhostUserError::Unsuitable {
                    name: self.name,
                    what: format!("queue size {size}: expected a power of two up to {QUEUE_SIZE}"),
                });
            }
            let data = self.kicks.len();
            for s in self.queue_sizes.iter_mut().take(data) {
                *s = size;
            }
        }
        let has_config = self
            .protocol_features
            .contains(VhostUserProtocolFeatures::CONFIG);
        match mac {
            Some(mac) if self.device_type == VIRTIO_ID_NET => {
                let pairs = (self.kicks.len() / 2).max(1) as u16;
                self.local = Some(LocalNetConfig { mac, pairs });
                self.config_size = local_config::NET_CONFIG_SIZE;
            }
            None if !has_config => {
                return Err(VhostUserError::Unsuitable {
                    name: self.name,
                    what: "does not offer the CONFIG protocol feature (config space), and no MAC was given for the vmm to serve one".into(),
                })
            }
            _ => {}
        }
        Ok(self)
    }

    fn regions(&self) -> Result<Vec<VhostUserMemoryRegionInfo>, String> {
        let mut out = Vec::new();
        for region in self.memory.mem.iter() {
            let file_offset = region
                .file_offset()
                .ok_or("guest memory is not file-backed")?
                .start();
            let host = self
                .memory
                .mem
                .get_host_address(region.start_addr())
                .map_err(|e| format!("locating guest memory: {e}"))?;
            out.push(VhostUserMemoryRegionInfo {
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
                mmap_offset: file_offset,
                mmap_handle: self.memory.memfd,
            });
        }
        Ok(out)
    }

    /// A guest-physical address as a host virtual address of this process (what
    /// SET_VRING_ADDR carries).
    fn host_addr(&self, gpa: u64, what: &str) -> Result<u64, String> {
        self.memory
            .mem
            .get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(|_| format!("the driver put the {what} at {gpa:#x}, outside guest memory"))
    }

    fn start(&mut self, features: u64, queues: &[Option<QueueConfig>]) -> Result<(), String> {
        let fail = |what: &'static str| move |e: vhost::Error| format!("{what}: {e}");
        let regions = self.regions()?;
        let features = match &self.local {
            Some(local) => local.to_backend(features, self.backend_features),
            None => features,
        };
        self.frontend
            .set_features(features | (self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES))
            .map_err(fail("SET_FEATURES"))?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(fail("SET_MEM_TABLE"))?;
        let data_queues = self.kicks.len();
        // A multiqueue net device starts on its first pair; the driver asks for more on the
        // control queue (only if it negotiated MQ).
        let enabled = if self.net_ctrl.is_some() {
            2
        } else {
            data_queues
        };
        for (i, q) in queues.iter().enumerate().take(data_queues) {
            let Some(q) = q else { continue };
            let max = self.queue_sizes.get(i).copied().unwrap_or(QUEUE_SIZE);
            if q.size == 0 || q.size > max || !q.size.is_power_of_two() {
                return Err(format!("queue {i}: bad size {}", q.size));
            }
            let config = VringConfigData {
                queue_max_size: max,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: self.host_addr(q.desc, "descriptor table")?,
                used_ring_addr: self.host_addr(q.used, "used ring")?,
                avail_ring_addr: self.host_addr(q.avail, "available ring")?,
                log_addr: None,
            };
            self.frontend
                .set_vring_num(i, q.size)
                .map_err(fail("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(i, &config)
                .map_err(fail("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(i, 0)
                .map_err(fail("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(i, &self.interrupts.queues[i])
                .map_err(fail("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(i, &self.kicks[i])
                .map_err(fail("SET_VRING_KICK"))?;
            self.frontend
                .set_vring_enable(i, i < enabled)
                .map_err(fail("SET_VRING_ENABLE"))?;
        }
        if let Some(ctrl) = &mut self.net_ctrl {
            ctrl.queue = match queues.get(ctrl.index as usize) {
                Some(Some(q)) => Some(CtrlQueue::new(q, features).map_err(|e| e.to_string())?),
                _ => None,
            };
        }
        Ok(())
    }
}

/// Connects (or adopts) device `name`'s backend socket and sets its timeouts; sends
/// nothing.
pub(crate) fn open(name: &str, socket: BackendSocket) -> Result<UnixStream, VhostUserError> {
    let (stream, path) = match socket {
        BackendSocket::Connected(s) => (Ok(s), "a socket passed in".to_owned()),
        BackendSocket::Path(p) => (UnixStream::connect(&p), path_str(&p)),
    };
    let err = |source| VhostUserError::Connect {
        name: name.to_owned(),
        path: path.clone(),
        source,
    };
    let stream = stream.map_err(err)?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(err)?;
    stream.set_write_timeout(Some(REPLY_TIMEOUT)).map_err(err)?;
    Ok(stream)
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

impl VirtioBackend for VhostUserDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn device_type(&self) -> u32 {
        self.device_type
    }

    fn features(&self) -> u64 {
        let mut features = self.backend_features & !VHOST_USER_F_PROTOCOL_FEATURES;
        if self.net_ctrl.is_some() {
            // The vmm serves the control queue MQ needs.
            features |= 1 << VIRTIO_NET_F_CTRL_VQ;
        } else if self.device_type == VIRTIO_ID_NET && features & (1 << VIRTIO_NET_F_CTRL_VQ) == 0 {
            // virtio-net's MQ requires CTRL_VQ: without one, one pair only.
            features &= !(1 << VIRTIO_NET_F_MQ);
        }
        if let Some(local) = &self.local {
            features = local.features(features, self.net_ctrl.is_some());
        } else if self.device_type == VIRTIO_ID_CONSOLE {
            features = local_config::console_features(features, self.kicks.len());
        }
        features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(local) = &self.local {
            return local.read(offset, data);
        }
        data.fill(0);
        // The whole config space from offset 0: see config_size.rs for why.
        let size = self.config_size;
        let Some(end) = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(data.len()))
        else {
            return;
        };
        if end > size {
            debug_limited!(
                "{}: config read at {offset:#x} past its {size} bytes",
                self.name
            );
            return;
        }
        let request = vec![0u8; size];
        match self
            .frontend
            .get_config(0, size as u32, VhostUserConfigFlags::WRITABLE, &request)
        {
            Ok((_, payload)) if payload.len() == size => {
                data.copy_from_slice(&payload[offset as usize..end]);
            }
            Ok(_) => warn_limited!("{}: GET_CONFIG reply of the wrong size", self.name),
            Err(e) => warn_limited!("{}: reading config space: {e}", self.name),
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if self.local.is_some() {
            return debug_limited!("{}: config write ignored (the vmm serves it)", self.name);
        }
        let Ok(off) = u32::try_from(offset) else {
            return;
        };
        if let Err(e) = self
            .frontend
            .set_config(off, VhostUserConfigFlags::WRITABLE, data)
        {
            warn_limited!("{}: writing config space at {offset:#x}: {e}", self.name);
        }
    }

    fn activate(
        &mut self,
        features: u64,
        queues: &[Option<QueueConfig>],
    ) -> Result<(), ActivateError> {
        // Whatever part of the set-up reaches the backend (a started ring) is undone by
        // the next reset, even if a later step fails.
        self.active = true;
        self.start(features, queues).map_err(|what| ActivateError {
            device: self.name.clone(),
            what,
        })?;
        info_limited!(
            "{}: started, features {features:#x}, protocol features {:#x}",
            self.name,
            self.protocol_features.bits()
        );
        Ok(())
    }

    fn notify(&mut self, queue: u32) {
        let Some(ctrl) = &mut self.net_ctrl else {
            debug_limited!("{}: queue notify {queue} reached the vmm", self.name);
            return;
        };
        let (Some(cq), true) = (ctrl.queue.as_mut(), queue == ctrl.index) else {
            return;
        };
        let pairs_max = (self.kicks.len() / 2) as u16;
        let (frontend, name) = (&mut self.frontend, &self.name);
        let interrupt = cq.process(&self.memory.mem, |pairs| {
            if pairs == 0 || pairs > pairs_max {
                return false;
            }
            for i in 0..usize::from(pairs_max) * 2 {
                if let Err(e) = frontend.set_vring_enable(i, i < usize::from(pairs) * 2) {
                    warn_limited!("{name}: enabling queue {i}: {e}");
                    return false;
                }
            }
            info_limited!("{name}: the driver uses {pairs} queue pairs");
            true
        });
        let call = self.interrupts.queues.get(queue as usize);
        if let (true, Some(call)) = (interrupt, call) {
            if let Err(e) = call.write(1) {
                warn_limited!("{}: control queue interrupt: {e}", self.name);
            }
        }
    }

    fn interrupt(&mut self) -> std::io::Result<()> {
        self.interrupts.config.write(1)
    }

    fn config_size(&self) -> usize {
        self.config_size
    }

    fn reset(&mut self) {
        if let Some(ctrl) = &mut self.net_ctrl {
            ctrl.queue = None;
        }
        if !self.active {
            return;
        }
        // Stop every ring: GET_VRING_BASE makes the backend stop processing it.
        for i in 0..self.kicks.len() {
            if let Err(e) = self.frontend.set_vring_enable(i, false) {
                warn_limited!("{}: disabling queue {i}: {e}", self.name);
            }
            if let Err(e) = self.frontend.get_vring_base(i) {
                warn_limited!("{}: stopping queue {i}: {e}", self.name);
            }
        }
        self.active = false;
    }
}

impl AsRawFd for VhostUserDevice {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.frontend.as_raw_fd()
    }
}
