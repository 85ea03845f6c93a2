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

mod handshake;
mod inflight;
mod link;
pub mod replay;
mod virtio_backend;
mod watchdog;

use handshake::{handshake, timed_out};
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

impl AsRawFd for VhostUserDevice {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.frontend.as_raw_fd()
    }
}
