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
//! A device keeps what a new backend process needs ([`Activation`], the inflight region,
//! the kick and call eventfds, the guest memfd) so that, when its backend dies, a new one
//! can take over ([`replay`]); while none serves it, config reads come from a cache and
//! the driver's set-up is recorded for the replay.
//!
//! [`activate`]: VirtioBackend::activate

mod inflight;
mod link;
pub mod replay;
mod watchdog;

pub use link::Link;

use bulkhead_ratelimit::{debug_limited, info_limited, warn_limited};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::backend::{ActivateError, QueueConfig, ReconnectError, VirtioBackend};
use super::config_size::config_size;
use super::interrupts::Interrupts;
use super::local_config::{self, LocalNetConfig};
use super::net_ctrl::{CtrlQueue, CTRL_QUEUE_SIZE, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ};
use inflight::Inflight;

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
    /// What the first backend offered: what the guest is offered, whichever backend
    /// serves it later.
    backend_features: u64,
    /// The protocol features acked with the first backend; every later one must offer them.
    protocol_features: VhostUserProtocolFeatures,
    queue_sizes: Vec<u16>,
    kicks: Vec<EventFd>,
    interrupts: Interrupts,
    memory: SharedMemory,
    config_size: usize,
    /// Some set-up reached the backend since the last reset (a reset must undo it).
    active: bool,
    /// The driver's set-up since the last reset, as a new backend must get it.
    activation: Option<Activation>,
    /// The inflight region (GET_INFLIGHT_FD after the first SET_FEATURES), kept for every
    /// later backend until a reset.
    inflight: Option<Inflight>,
    /// The last config space read from a backend, served while none answers.
    config_cache: Option<Vec<u8>>,
    /// The connection's state, shared with the backend monitor.
    link: Arc<Link>,
    /// No backend will serve the device again (why): it needs a reset.
    stopped: Option<String>,
    /// virtio-net with several queue pairs: the vmm serves the control queue (the last
    /// queue) and enables pairs as the driver asks.
    net_ctrl: Option<NetCtrl>,
    /// A net device whose config space the vmm serves (see `local_config`).
    local: Option<LocalNetConfig>,
}

/// The driver's set-up of a running device: what a new backend is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Activation {
    /// The features the driver acked.
    pub features: u64,
    /// Each data queue's configuration (`None`: not enabled by the driver).
    pub queues: Vec<Option<QueueConfig>>,
    /// How many data queues are enabled (a multiqueue net device enables its pairs as
    /// the driver asks; every other device all of them).
    pub enabled: usize,
}

/// Why starting a backend failed.
enum StartError {
    /// The driver's set-up is not valid (a bad queue size or address): its fault.
    Driver(String),
    /// The backend refused a request, answered garbage, lied or went away.
    Backend(String),
}

impl StartError {
    /// The same, saying so if the exchange was cut short by its deadline.
    fn timed_out(self, guard: &watchdog::Guard) -> StartError {
        match self {
            StartError::Backend(s) => StartError::Backend(timed_out_text(s, guard)),
            driver => driver,
        }
    }

    fn what(self) -> String {
        match self {
            StartError::Driver(s) | StartError::Backend(s) => s,
        }
    }
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
        let watch = stream
            .try_clone()
            .map_err(|source| VhostUserError::Interrupts {
                name: name.to_owned(),
                source,
            })?;
        let mut frontend = Frontend::from_stream(stream, kicks.len() as u64);
        let guard = watchdog::arm(frontend.as_raw_fd(), REPLY_TIMEOUT);
        let (backend_features, protocol_features) =
            handshake(name, device_type, &mut frontend, None, kicks.len())
                .map_err(|e| timed_out(e, &guard))?;
        drop(guard);
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
        let link = Link::new(name).map_err(|source| VhostUserError::Interrupts {
            name: name.to_owned(),
            source,
        })?;
        link.connected(watch.into());
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
            activation: None,
            inflight: None,
            config_cache: None,
            link: Arc::new(link),
            stopped: None,
            net_ctrl,
            local: None,
        })
    }

    /// The connection's state, for the backend monitor.
    pub fn link(&self) -> Arc<Link> {
        self.link.clone()
    }

    /// Marks the device restartable (`restart=on`): a backend that goes away is waited
    /// for, not a failure.
    pub fn set_restartable(&self, on: bool) {
        self.link.set_restartable(on);
    }

    /// The driver's set-up a new backend would be given (tests, messages).
    pub fn activation(&self) -> Option<&Activation> {
        self.activation.as_ref()
    }

    /// A deadline on the exchange that follows, until the guard is dropped.
    fn guard(&self) -> watchdog::Guard {
        watchdog::arm(self.frontend.as_raw_fd(), REPLY_TIMEOUT)
    }

    /// Whether a backend serves the device now.
    fn reachable(&self) -> bool {
        self.stopped.is_none() && self.link.is_up()
    }

    /// A request to the backend failed: for a restartable device the backend is lost
    /// (the monitor reports it and the launcher restarts it). Returns whether it is.
    fn backend_failed(&self, what: &str, e: &dyn std::fmt::Display) -> bool {
        self.link.fail(format!("{what}: {e}"))
    }

    /// Reads the whole config space from the backend into the cache; `None` if it failed.
    fn fetch_config(&mut self) -> Option<&[u8]> {
        let size = self.config_size;
        if size == 0 {
            return None;
        }
        let request = vec![0u8; size];
        let guard = self.guard();
        match self
            .frontend
            .get_config(0, size as u32, VhostUserConfigFlags::WRITABLE, &request)
        {
            Ok((_, payload)) if payload.len() == size => {
                self.config_cache = Some(payload);
                self.config_cache.as_deref()
            }
            Ok(_) => {
                warn_limited!("{}: GET_CONFIG reply of the wrong size", self.name);
                self.backend_failed("GET_CONFIG", &"a reply of the wrong size");
                None
            }
            Err(e) => {
                let e = timed_out_text(e, &guard);
                warn_limited!("{}: reading config space: {e}", self.name);
                self.backend_failed("GET_CONFIG", &e);
                None
            }
        }
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

    /// Sends the driver's set-up to the backend: features, the inflight region (fetched
    /// from the backend the first time, handed to every later one), the memory table, and
    /// each ready queue. A first start begins each ring at 0; a `replay` to a new backend
    /// begins it where the used ring stands in guest memory.
    fn start(&mut self, act: &Activation, replay: bool) -> Result<(), StartError> {
        let backend =
            |what: &'static str| move |e: vhost::Error| StartError::Backend(format!("{what}: {e}"));
        let regions = self.regions().map_err(StartError::Driver)?;
        // Every queue is checked before anything reaches the backend.
        let mut rings = Vec::new();
        for (i, q) in act.queues.iter().enumerate().take(self.kicks.len()) {
            let Some(q) = q else { continue };
            let max = self.queue_sizes.get(i).copied().unwrap_or(QUEUE_SIZE);
            if q.size == 0 || q.size > max || !q.size.is_power_of_two() {
                return Err(StartError::Driver(format!(
                    "queue {i}: bad size {}",
                    q.size
                )));
            }
            let config = VringConfigData {
                queue_max_size: max,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: self
                    .host_addr(q.desc, "descriptor table")
                    .map_err(StartError::Driver)?,
                used_ring_addr: self
                    .host_addr(q.used, "used ring")
                    .map_err(StartError::Driver)?,
                avail_ring_addr: self
                    .host_addr(q.avail, "available ring")
                    .map_err(StartError::Driver)?,
                log_addr: None,
            };
            let base = if replay {
                replay::ring_base(&self.memory.mem, i, q)?
            } else {
                0
            };
            rings.push((i, q.size, config, base));
        }
        // A net device whose config the vmm serves: only the backend's own bits go to it.
        let features = match &self.local {
            Some(local) => local.to_backend(act.features, self.backend_features),
            None => act.features,
        };
        self.frontend
            .set_features(features | (self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES))
            .map_err(backend("SET_FEATURES"))?;
        if self
            .protocol_features
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
        {
            match &self.inflight {
                Some(region) => self
                    .frontend
                    .set_inflight_fd(&region.info, region.file.as_raw_fd())
                    .map_err(backend("SET_INFLIGHT_FD"))?,
                None => {
                    let wanted = inflight::request(self.kicks.len(), QUEUE_SIZE);
                    let (info, file) = self
                        .frontend
                        .get_inflight_fd(&wanted)
                        .map_err(backend("GET_INFLIGHT_FD"))?;
                    self.inflight = Some(
                        Inflight::check(&wanted, info, file)
                            .map_err(|e| StartError::Backend(format!("GET_INFLIGHT_FD: {e}")))?,
                    );
                }
            }
        }
        self.frontend
            .set_mem_table(&regions)
            .map_err(backend("SET_MEM_TABLE"))?;
        for (i, size, config, base) in rings {
            self.frontend
                .set_vring_num(i, size)
                .map_err(backend("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(i, &config)
                .map_err(backend("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(i, base)
                .map_err(backend("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(i, &self.interrupts.queues[i])
                .map_err(backend("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(i, &self.kicks[i])
                .map_err(backend("SET_VRING_KICK"))?;
            self.frontend
                .set_vring_enable(i, i < act.enabled)
                .map_err(backend("SET_VRING_ENABLE"))?;
        }
        Ok(())
    }

    /// The driver's set-up from `features` and `queues`, before any pair of a multiqueue
    /// net device beyond the first is enabled.
    fn activation_of(&self, features: u64, queues: &[Option<QueueConfig>]) -> Activation {
        let data_queues = self.kicks.len();
        Activation {
            features,
            queues: queues.iter().take(data_queues).copied().collect(),
            // A multiqueue net device starts on its first pair; the driver asks for more
            // on the control queue (only if it negotiated MQ).
            enabled: if self.net_ctrl.is_some() {
                2
            } else {
                data_queues
            },
        }
    }
}

/// `e`, saying so if the exchange was cut short by its deadline.
fn timed_out_text(e: impl std::fmt::Display, guard: &watchdog::Guard) -> String {
    if guard.fired() {
        format!("{e} (no reply within {REPLY_TIMEOUT:?}: the connection was shut down)")
    } else {
        e.to_string()
    }
}

/// A handshake error, saying so if it was cut short by its deadline.
fn timed_out(e: VhostUserError, guard: &watchdog::Guard) -> VhostUserError {
    match e {
        VhostUserError::Protocol { name, what, source } if guard.fired() => {
            VhostUserError::Unsuitable {
                name,
                what: format!(
                    "did not answer {what} within {REPLY_TIMEOUT:?} ({source}); the connection was shut down"
                ),
            }
        }
        other => other,
    }
}

/// Does the handshake on a new connection: SET_OWNER, features, protocol features and the
/// queue count. The first time (`before` is `None`) it takes what the backend offers of
/// what the vmm uses; for a later backend, `before` is (the virtio features it must offer,
/// the protocol features acked the first time), which it must offer again and is given.
/// Returns the backend's features and the acked protocol features.
fn handshake(
    name: &str,
    device_type: u32,
    frontend: &mut Frontend,
    before: Option<(u64, VhostUserProtocolFeatures)>,
    queues: usize,
) -> Result<(u64, VhostUserProtocolFeatures), VhostUserError> {
    let proto = |what| {
        let name = name.to_owned();
        move |source| VhostUserError::Protocol { name, what, source }
    };
    let unsuitable = |what: String| VhostUserError::Unsuitable {
        name: name.to_owned(),
        what,
    };
    frontend.set_owner().map_err(proto("SET_OWNER"))?;
    let backend_features = frontend.get_features().map_err(proto("GET_FEATURES"))?;
    if backend_features & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
        return Err(unsuitable(
            "does not offer VHOST_USER_F_PROTOCOL_FEATURES".into(),
        ));
    }
    if let Some((required, _)) = before {
        let missing = required & !backend_features;
        if missing != 0 {
            return Err(unsuitable(format!(
                "offers features {backend_features:#x}, without {missing:#x} that were negotiated"
            )));
        }
    }
    let offered = frontend
        .get_protocol_features()
        .map_err(proto("GET_PROTOCOL_FEATURES"))?;
    if before.is_none() {
        info_limited!(
            "{name}: the backend offers features {backend_features:#x}, protocol features {:#x}",
            offered.bits()
        );
    }
    let protocol_features = match before {
        None => {
            offered
                & (VhostUserProtocolFeatures::CONFIG
                    | VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::INFLIGHT_SHMFD)
        }
        Some((_, acked)) if !offered.contains(acked) => {
            return Err(unsuitable(format!(
                "offers protocol features {:#x}, without {:#x} that were negotiated",
                offered.bits(),
                (acked - offered).bits()
            )));
        }
        Some((_, acked)) => acked,
    };
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
        return Err(unsuitable(
            "does not offer the CONFIG protocol feature (config space)".into(),
        ));
    }
    // Without MQ a backend serves its device type's usual queues (one for block, a pair
    // for net and console), which is what is asked for then.
    if protocol_features.contains(VhostUserProtocolFeatures::MQ) {
        let max = frontend.get_queue_num().map_err(proto("GET_QUEUE_NUM"))?;
        if (max as usize) < queues {
            return Err(unsuitable(format!(
                "serves {max} queues, {queues} were asked for"
            )));
        }
    }
    Ok((backend_features, protocol_features))
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
        // While no backend answers (a restartable device's backend is being replaced),
        // the last config space one gave: a vCPU must neither fail nor wait for a timeout.
        // A device that is not restartable reads zeros when its backend fails, as before.
        let fresh = self.reachable() && self.fetch_config().is_some();
        if !fresh && (self.reachable() || !self.link.restartable()) {
            return;
        }
        if let Some(config) = &self.config_cache {
            data.copy_from_slice(&config[offset as usize..end]);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if self.local.is_some() {
            return debug_limited!("{}: config write ignored (the vmm serves it)", self.name);
        }
        let Ok(off) = u32::try_from(offset) else {
            return;
        };
        if !self.reachable() {
            warn_limited!(
                "{}: config write at {offset:#x} while no backend serves the device; dropped",
                self.name
            );
            return;
        }
        let guard = self.guard();
        if let Err(e) = self
            .frontend
            .set_config(off, VhostUserConfigFlags::WRITABLE, data)
        {
            let e = timed_out_text(e, &guard);
            warn_limited!("{}: writing config space at {offset:#x}: {e}", self.name);
            self.backend_failed("SET_CONFIG", &e);
        }
    }

    fn activate(
        &mut self,
        features: u64,
        queues: &[Option<QueueConfig>],
    ) -> Result<(), ActivateError> {
        let name = self.name.clone();
        let error = |what| ActivateError {
            device: name.clone(),
            what,
        };
        if let Some(why) = &self.stopped {
            return Err(error(format!("no backend serves it: {why}")));
        }
        // The control queue of a multiqueue net device is the vmm's own, whatever the
        // backend does.
        if let Some(ctrl) = &mut self.net_ctrl {
            ctrl.queue = match queues.get(ctrl.index as usize) {
                Some(Some(q)) => {
                    Some(CtrlQueue::new(q, features).map_err(|e| error(e.to_string()))?)
                }
                _ => None,
            };
        }
        let act = self.activation_of(features, queues);
        if !self.link.is_up() {
            // Its backend is being restarted: the new one gets this set-up.
            info_limited!(
                "{}: driver started the device while its backend restarts",
                self.name
            );
            self.activation = Some(act);
            return Ok(());
        }
        // Whatever part of the set-up reaches the backend (a started ring) is undone by
        // the next reset, even if a later step fails.
        self.active = true;
        let guard = self.guard();
        let started = self.start(&act, false).map_err(|e| e.timed_out(&guard));
        drop(guard);
        match started {
            Ok(()) => {}
            Err(StartError::Backend(what)) if self.backend_failed("starting", &what) => {
                // Lost: the launcher restarts the backend, and the new one gets the set-up.
                self.activation = Some(act);
                return Ok(());
            }
            Err(e) => return Err(error(e.what())),
        }
        self.activation = Some(act);
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
        let reachable = self.stopped.is_none() && self.link.is_up();
        let _guard = watchdog::arm(self.frontend.as_raw_fd(), REPLY_TIMEOUT);
        let (frontend, name, link) = (&mut self.frontend, &self.name, &self.link);
        let mut enabled = None;
        let interrupt = cq.process(&self.memory.mem, |pairs| {
            if pairs == 0 || pairs > pairs_max {
                return false;
            }
            // While the backend restarts, the new one gets the pairs with the replay.
            for i in (0..usize::from(pairs_max) * 2).filter(|_| reachable) {
                if let Err(e) = frontend.set_vring_enable(i, i < usize::from(pairs) * 2) {
                    warn_limited!("{name}: enabling queue {i}: {e}");
                    if !link.fail(format!("SET_VRING_ENABLE: {e}")) {
                        return false;
                    }
                    break;
                }
            }
            info_limited!("{name}: the driver uses {pairs} queue pairs");
            enabled = Some(usize::from(pairs) * 2);
            true
        });
        if let (Some(n), Some(act)) = (enabled, self.activation.as_mut()) {
            act.enabled = n;
        }
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
        self.activation = None;
        // A new region for the next start: nothing is in flight after a reset.
        self.inflight = None;
        if !std::mem::take(&mut self.active) || !self.reachable() {
            return;
        }
        // Stop every ring: GET_VRING_BASE makes the backend stop processing it.
        let _guard = self.guard();
        for i in 0..self.kicks.len() {
            if let Err(e) = self.frontend.set_vring_enable(i, false) {
                warn_limited!("{}: disabling queue {i}: {e}", self.name);
            }
            if let Err(e) = self.frontend.get_vring_base(i) {
                warn_limited!("{}: stopping queue {i}: {e}", self.name);
                if self.backend_failed("GET_VRING_BASE", &e) {
                    return;
                }
            }
        }
    }

    fn reconnect(&mut self, socket: UnixStream) -> Result<(), ReconnectError> {
        replay::reconnect(self, socket)
    }

    fn stop(&mut self, why: &str) {
        self.stopped = Some(why.to_owned());
    }
}

impl AsRawFd for VhostUserDevice {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.frontend.as_raw_fd()
    }
}
