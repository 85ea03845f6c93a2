//! The devices of `bulkhead run`: for each `--disk`, `--net`, `--console` and `--vsock`, the process
//! that serves it (started through `launch`) and the vmm's side of its connection, in the
//! order they get virtio-mmio slots (disks, network devices, the console, then vsock).
//!
//! In two steps, so that the vmm (whose set-up is the longest way to the guest) starts
//! first: [`Devices::plan`] does what the vmm's command line needs (images opened and
//! locked, namespaces and TAPs, each device's socket pair), [`Devices::launch`] then
//! starts the processes, which the vmm meets on their sockets once they serve.

use std::os::unix::process::ExitStatusExt;

use bulkhead_vmm::config::VirtioDeviceConfig;
use bulkhead_vmm::virtio::vhost_user::BackendSocket;

use crate::disk_arg::{DiskArg, DiskBackend};
use crate::launch::console::ConsoleStream;
use crate::launch::recipe::Planned;
use crate::launch::{self, wait_briefly, DeviceProcess, LaunchError};
use crate::net_arg::{format_mac, random_mac, NetArg, NetBackend};
use crate::netns::{NetNs as NamedNetNs, NetNsError};
use crate::restart::{Budget, RestartPolicy};
use crate::safe_open::SocketFile;
use crate::tap::TapError;
use crate::vsock_arg::VsockArg;
use bulkhead::jail::NetNs;

/// Virtio device ids.
const VIRTIO_ID_NET: u32 = 1;
const VIRTIO_ID_BLOCK: u32 = 2;
const VIRTIO_ID_CONSOLE: u32 = 3;
const VIRTIO_ID_VSOCK: u32 = 19;
/// The virtio console's device name.
pub const CONSOLE: &str = "console0";
/// The vsock device's name.
pub const VSOCK: &str = "vsock0";
/// Name of the TAP bulkhead creates in its own namespace (`--net auto`).
const AUTO_TAP: &str = "tap0";

/// Errors while starting devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A backend process could not be started.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// A TAP could not be opened.
    #[error("{device}: {source}")]
    Tap {
        /// Device name.
        device: String,
        /// The cause.
        #[source]
        source: TapError,
    },
    /// An external backend could not be reached.
    #[error(transparent)]
    External(#[from] crate::external::ExternalError),
    /// `--net auto`'s namespace could not be set up.
    #[error("{device}: {source}")]
    NetNs {
        /// Device name.
        device: String,
        /// The cause.
        #[source]
        source: NetNsError,
    },
}

/// A disk served by a `bulkhead-blk` of ours, as its image was opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedImage {
    /// Device name (`disk0`).
    pub name: String,
    /// How its image is opened (a swapped-in image is opened alike).
    pub options: launch::ImageOptions,
    /// O_DIRECT.
    pub direct: bool,
}

/// The planned or started devices; call [`Devices::stop`] when the VM has ended (or did
/// not start).
#[derive(Default)]
pub struct Devices {
    /// The vmm's side, in slot order.
    pub configs: Vec<VirtioDeviceConfig>,
    /// The backend processes bulkhead started.
    pub processes: Vec<DeviceProcess>,
    /// The backend processes planned and not started yet, in slot order.
    planned: Vec<Planned>,
    /// Namespaces to delete after the processes are gone.
    namespaces: Vec<NamedNetNs>,
    /// The disks served by a `bulkhead-blk` of ours (for swapping their image on a
    /// running VM).
    pub images: Vec<ServedImage>,
    /// Socket files bulkhead bound for its devices (`--console socket=`), removed after
    /// the processes are gone.
    socket_files: Vec<SocketFile>,
    /// The restart budget of each device whose process bulkhead started, by name.
    pub budgets: Vec<(String, Budget)>,
}

impl Devices {
    /// Plans every device (see the module's doc), starting no process (see
    /// [`Devices::launch`]); on error, undoes what was done.
    pub fn plan(
        disks: &[DiskArg],
        nets: &[NetArg],
        console: Option<(&ConsoleStream, RestartPolicy)>,
        vsock: Option<&VsockArg>,
    ) -> Result<Devices, DeviceError> {
        let mut devices = Devices::default();
        match devices.plan_all(disks, nets, console, vsock) {
            Ok(()) => Ok(devices),
            Err(e) => {
                devices.stop();
                Err(e)
            }
        }
    }

    /// Starts the planned processes in slot order, without waiting for any to be ready
    /// (see [`Devices::wait_ready`]; with `BULKHEAD_START=serial`, waiting for each before
    /// the next starts). On error, the caller stops the devices ([`Devices::stop`]): the
    /// processes not started yet are dropped with their sockets (a vmm started already
    /// reads the end of those connections).
    pub fn launch(&mut self) -> Result<(), DeviceError> {
        for planned in std::mem::take(&mut self.planned) {
            self.processes.push(planned.launch()?);
            if launch::confine::serial_start() {
                if let Some(p) = self.processes.last_mut() {
                    p.wait_ready()?;
                }
            }
        }
        Ok(())
    }

    fn plan_all(
        &mut self,
        disks: &[DiskArg],
        nets: &[NetArg],
        console: Option<(&ConsoleStream, RestartPolicy)>,
        vsock: Option<&VsockArg>,
    ) -> Result<(), DeviceError> {
        for (i, disk) in disks.iter().enumerate() {
            self.start_disk(&format!("disk{i}"), disk)?;
        }
        for (i, net) in nets.iter().enumerate() {
            self.start_net(&format!("net{i}"), net)?;
        }
        if let Some((ConsoleStream::VhostUser(ext), _)) = console {
            self.start_external(CONSOLE, VIRTIO_ID_CONSOLE, 2, ext, None)?;
        } else if let Some((stream, policy)) = console {
            let (process, socket, file) = launch::start_console(CONSOLE, stream)?;
            self.budgets.push((CONSOLE.into(), Budget::new(policy)));
            self.socket_files.extend(file);
            self.add(
                CONSOLE,
                VIRTIO_ID_CONSOLE,
                2,
                BackendSocket::Connected(socket),
                Some(process),
            );
        }
        // Last, so that no other device moves.
        if let Some(arg) = vsock {
            let (process, socket, file) = launch::start_vsock(VSOCK, arg)?;
            self.budgets.push((VSOCK.into(), Budget::new(arg.restart)));
            self.socket_files.push(file);
            self.add(
                VSOCK,
                VIRTIO_ID_VSOCK,
                3,
                BackendSocket::Connected(socket),
                Some(process),
            );
        }
        Ok(())
    }

    /// Device `name` served by a backend someone else started: connected (or accepted,
    /// with `listen=on`) here, under the rule for paths a user names; the vmm gets the
    /// connected socket; no process is started. A net device's MAC goes to the vmm, which
    /// serves its config space.
    fn start_external(
        &mut self,
        name: &str,
        device_type: u32,
        queues: u16,
        backend: &crate::external::ExternalBackend,
        mac: Option<bulkhead_vmm::virtio::local_config::Mac>,
    ) -> Result<(), DeviceError> {
        let (socket, file) = crate::external::connect(name, backend)?;
        self.socket_files.extend(file);
        self.add(
            name,
            device_type,
            queues,
            BackendSocket::Connected(socket),
            None,
        );
        if let Some(config) = self.configs.last_mut() {
            config.local_mac = mac;
            config.queue_size = backend.queue_size;
        }
        Ok(())
    }

    fn add(
        &mut self,
        name: &str,
        device_type: u32,
        queues: u16,
        socket: BackendSocket,
        process: Option<Planned>,
    ) {
        self.configs.push(VirtioDeviceConfig {
            name: name.to_owned(),
            device_type,
            queues,
            socket,
            restartable: false,
            local_mac: None,
            queue_size: None,
        });
        self.planned.extend(process);
    }

    fn start_disk(&mut self, name: &str, disk: &DiskArg) -> Result<(), DeviceError> {
        match &disk.backend {
            DiskBackend::Image {
                path,
                readonly,
                serial,
                direct,
                format,
                lock,
            } => {
                let options = launch::ImageOptions {
                    readonly: *readonly,
                    format: *format,
                    lock: *lock,
                };
                let (process, socket) = launch::start_blk(
                    name,
                    path,
                    options,
                    serial.as_deref(),
                    disk.queues,
                    *direct,
                )?;
                self.images.push(ServedImage {
                    name: name.to_owned(),
                    options,
                    direct: *direct,
                });
                self.budgets
                    .push((name.to_owned(), Budget::new(disk.restart)));
                self.add(
                    name,
                    VIRTIO_ID_BLOCK,
                    disk.queues,
                    BackendSocket::Connected(socket),
                    Some(process),
                );
            }
            DiskBackend::Socket(ext) => {
                self.start_external(name, VIRTIO_ID_BLOCK, disk.queues, ext, None)?;
            }
        }
        Ok(())
    }

    fn start_net(&mut self, name: &str, net: &NetArg) -> Result<(), DeviceError> {
        let mac = net.mac.unwrap_or_else(random_mac);
        if let NetBackend::VhostUser(ext) = &net.backend {
            eprintln!(
                "bulkhead: {name}: vhost-user backend on {}, guest MAC {}",
                ext.path.display(),
                format_mac(&mac)
            );
            return self.start_external(name, VIRTIO_ID_NET, 2 * net.queues, ext, Some(mac));
        }
        let tap_err = |source| DeviceError::Tap {
            device: name.to_owned(),
            source,
        };
        let ns_err = |source| DeviceError::NetNs {
            device: name.to_owned(),
            source,
        };
        let (taps, netns) = match &net.backend {
            NetBackend::Tap(tap) => (
                crate::tap::open(tap, net.queues).map_err(tap_err)?,
                NetNs::Host,
            ),
            NetBackend::VhostUser(_) => return Ok(()),
            NetBackend::Auto { host_ip, guest_ip } => {
                let (ns, taps) = NamedNetNs::create_with_tap(
                    &format!("bulkhead-{}-{name}", std::process::id()),
                    AUTO_TAP,
                    net.queues,
                    host_ip,
                )
                .map_err(ns_err)?;
                crate::launch::trace::mark(name, "netns+tap");
                let ns_name = ns.name.clone();
                self.namespaces.push(ns);
                let guest = guest_ip.split('/').next().unwrap_or(guest_ip);
                eprintln!(
                    "bulkhead: {name}: {AUTO_TAP} in network namespace {ns_name}, host side {host_ip}, guest MAC {}; \
                     reach the guest at {guest} with `ip netns exec {ns_name} ...`",
                    format_mac(&mac)
                );
                (taps, NetNs::Join(crate::netns::path(&ns_name)))
            }
        };
        let (process, socket) = launch::start_net(name, taps, &mac, netns)?;
        self.budgets
            .push((name.to_owned(), Budget::new(net.restart)));
        self.add(
            name,
            VIRTIO_ID_NET,
            2 * net.queues,
            BackendSocket::Connected(socket),
            Some(process),
        );
        Ok(())
    }

    /// Waits until every backend process is confined and serving, in one loop.
    pub fn wait_ready(&mut self) -> Result<(), DeviceError> {
        Ok(launch::ready::wait_all(&mut self.processes)?)
    }

    /// The first backend process that has ended (waiting briefly for one that is ending),
    /// with how it ended; marks it reported.
    pub fn exited(&mut self) -> Option<(String, String)> {
        wait_briefly(50, || {
            self.processes
                .iter_mut()
                .find_map(|p| ended(p).map(|how| (p.name.clone(), how)))
        })
    }

    /// The devices the vmm is to reconnect when their process is restarted (`restart=on`
    /// in its `--device`): those whose policy restarts them.
    pub fn restartable(&self) -> Vec<String> {
        self.budgets
            .iter()
            .filter(|(_, b)| b.policy().restarts())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Device `name`'s restart budget, if bulkhead started its process.
    pub fn budget(&mut self, name: &str) -> Option<&mut Budget> {
        self.budgets
            .iter_mut()
            .find_map(|(n, b)| (n == name).then_some(b))
    }

    /// The first backend process that has already ended badly (a signal or a non-zero
    /// status; not waiting for any), with how it ended; marks it reported. A process whose
    /// end the supervisor settled (its device was given up, the VM going on) is not one.
    pub fn failed(&mut self) -> Option<(String, String)> {
        self.processes.iter_mut().find_map(|p| {
            if p.settled {
                return None;
            }
            let status = p.exited()?;
            if status.success() {
                return None;
            }
            ended(p).map(|how| (p.name.clone(), how))
        })
    }

    /// How device `name`'s process ended, if bulkhead started it and it has (waiting
    /// briefly: a hang-up can arrive a moment before the process is reapable); marks it
    /// reported.
    pub fn how_it_ended(&mut self, name: &str) -> Option<String> {
        let p = self.processes.iter_mut().find(|p| p.name == name)?;
        wait_briefly(100, || ended(p))
    }

    /// Stops every backend process (reporting any that had ended badly and was not
    /// reported yet), then deletes bulkhead's network namespaces.
    pub fn stop(&mut self) {
        for mut p in self.processes.drain(..) {
            let (name, program, pid, reported) =
                (p.name.clone(), p.program.clone(), p.pid(), p.reported);
            match p.stop() {
                _ if reported => {}
                Some(s) if s.success() || s.signal() == Some(libc::SIGTERM) => {}
                Some(s) => log::warn!("{name}: {program} (pid {pid}) {}", p.describe(s)),
                None => log::warn!("{name}: {program} (pid {pid}) could not be reaped"),
            }
        }
        self.planned.clear();
        self.namespaces.clear();
        self.socket_files.clear();
    }
}

/// How `p` ended, if it has; marks it reported.
fn ended(p: &mut DeviceProcess) -> Option<String> {
    let status = p.exited()?;
    p.reported = true;
    Some(format!(
        "{} (pid {}) {}",
        p.program,
        p.pid(),
        p.describe(status)
    ))
}
