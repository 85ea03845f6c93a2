//! The vmm's end of its control channel to the launcher (`bulkhead-protocol`): the
//! handshake, `Ready` once the VM is built, the launcher's requests (shutdown, pause,
//! resume, status, a restarted device backend to reconnect or give up) served on a thread
//! of their own, the backend monitor's `DeviceLost` reports, and the closing messages.

use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead_protocol::{ProcessChannel, ToLauncher, ToProcess, VmState, VmStatus};

use bulkhead_seccomp::mode::process_mode;
use bulkhead_seccomp::thread::spawn_confined;
use bulkhead_seccomp::Role;

use super::fds::check_socket;
use crate::devices::VmStop;
use crate::virtio::ReconnectError;
use crate::vm::VmHandle;

/// How long the launcher gets to answer the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long vCPUs get to park when pausing.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The facts a status reply gives.
#[derive(Clone, Debug)]
pub struct StatusInfo {
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory in bytes.
    pub memory_bytes: u64,
}

/// The control channel.
pub struct Control {
    sender: Arc<Mutex<ProcessChannel>>,
    stream: UnixStream,
    /// Whether the handshake was done (nothing is sent before it).
    shaken: bool,
}

impl Control {
    /// Adopts inherited socket `fd`; nothing is read or sent yet (see [`Control::handshake`]).
    pub fn adopt(fd: RawFd) -> Result<Control, String> {
        let fd = check_socket("control", fd).map_err(|e| e.to_string())?;
        // SAFETY: an inherited fd given to the vmm for its control channel alone, checked to
        // be an open socket; nothing else in this process owns it.
        let stream = unsafe { UnixStream::from_raw_fd(fd) };
        let receiving = stream
            .try_clone()
            .map_err(|e| format!("control socket: {e}"))?;
        Ok(Control {
            sender: Arc::new(Mutex::new(ProcessChannel::new(stream, "launcher"))),
            stream: receiving,
            shaken: false,
        })
    }

    /// Shakes hands with the launcher: the first bytes read from it, so called once the
    /// vmm is jailed.
    pub fn handshake(&mut self) -> Result<(), String> {
        let mut channel = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        channel
            .set_timeouts(Some(HANDSHAKE_TIMEOUT), Some(HANDSHAKE_TIMEOUT))
            .and_then(|()| channel.handshake())
            .and_then(|()| channel.set_timeouts(None, Some(HANDSHAKE_TIMEOUT)))
            .map_err(|e| format!("control channel: {e}"))?;
        self.shaken = true;
        Ok(())
    }

    /// Whether the handshake was done, so that messages can be sent.
    pub fn is_open(&self) -> bool {
        self.shaken
    }

    /// Sends `msg`; a failure is logged (the launcher will see the exit status anyway).
    pub fn send(&self, msg: ToLauncher) {
        send(&self.sender, msg)
    }

    /// Where the backend monitor reports a restartable device's lost backend: a
    /// [`ToLauncher::DeviceLost`] to the launcher, which restarts it.
    pub fn lost_reporter(&self) -> crate::virtio::monitor::Report {
        let sender = self.sender.clone();
        Box::new(move |lost: crate::virtio::monitor::Lost| {
            send(
                &sender,
                ToLauncher::DeviceLost {
                    device: lost.device,
                    reason: lost.reason,
                },
            )
        })
    }

    /// Serves the launcher's requests on a thread until the channel closes; a closed
    /// channel (the launcher is gone) stops the VM.
    pub fn serve(&self, vm: VmHandle, info: StatusInfo) {
        let stream = match self.stream.try_clone() {
            Ok(s) => s,
            Err(e) => {
                log::error!("control socket: {e}; the launcher cannot control this VM");
                return;
            }
        };
        let sender = self.sender.clone();
        let started = spawn_confined("vmm-control", Role::VmmMain, process_mode(), move || {
            serve(ProcessChannel::new(stream, "launcher"), &sender, &vm, &info)
        });
        if let Err(e) = started {
            log::error!("starting the control thread: {e}");
        }
    }
}

fn send(sender: &Mutex<ProcessChannel>, msg: ToLauncher) {
    let mut channel = sender.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = channel.send(&msg, &[]) {
        log::warn!("telling the launcher {msg:?}: {e}");
    }
}

/// Replays device `device`'s set-up to the new backend behind `fd`; the answer to the
/// launcher: `Reconnected`, `DeviceStopped` (it cannot take over: the device needs a
/// reset, the VM goes on), or `DeviceLost` (the new backend hung up during the replay:
/// the device waits for another).
fn reconnect(vm: &VmHandle, device: String, fd: std::os::fd::OwnedFd) -> ToLauncher {
    let started = std::time::Instant::now();
    match vm.reconnect(&device, UnixStream::from(fd)) {
        Ok(()) => {
            log::info!(
                "{device}: reconnected to its new backend in {} ms",
                started.elapsed().as_millis()
            );
            ToLauncher::Reconnected { device }
        }
        Err(ReconnectError::Lost(reason)) => {
            log::warn!("{reason}");
            ToLauncher::DeviceLost { device, reason }
        }
        Err(ReconnectError::Refused(reason)) => {
            log::error!("{reason}; the device is stopped, the VM goes on");
            ToLauncher::DeviceStopped { device, reason }
        }
    }
}

fn serve(
    mut receiving: ProcessChannel,
    sender: &Mutex<ProcessChannel>,
    vm: &VmHandle,
    info: &StatusInfo,
) {
    let status = |state| {
        ToLauncher::Status(VmStatus {
            state,
            vcpus: info.vcpus,
            memory_bytes: info.memory_bytes,
            devices: Vec::new(),
        })
    };
    loop {
        let (request, mut fds) = match receiving.recv() {
            Ok(received) => received,
            Err(e) => {
                if !e.is_closed() {
                    log::error!("control channel: {e}");
                }
                let _ = vm.stop.send(VmStop::Shutdown {
                    why: "the launcher closed the control channel".into(),
                });
                return;
            }
        };
        let reply = match request {
            ToProcess::Shutdown => {
                let _ = vm.stop.send(VmStop::Shutdown {
                    why: "the launcher asked".into(),
                });
                continue;
            }
            ToProcess::Pause if vm.pause.pause(PAUSE_TIMEOUT) => status(VmState::Paused),
            ToProcess::Pause => ToLauncher::Error {
                message: format!("the vCPUs did not pause within {PAUSE_TIMEOUT:?}"),
            },
            ToProcess::Resume => {
                vm.pause.resume();
                status(VmState::Running)
            }
            ToProcess::ConfigChanged { device } => {
                if let Err(e) = vm.config_changed(&device) {
                    log::warn!("config change: {e}");
                }
                continue;
            }
            ToProcess::Reconnect { device } => match fds.pop() {
                Some(fd) => reconnect(vm, device, fd),
                None => ToLauncher::Error {
                    message: "Reconnect came without its socket".into(),
                },
            },
            ToProcess::GiveUp { device, reason } => match vm.give_up(&device, &reason) {
                Ok(()) => ToLauncher::DeviceStopped { device, reason },
                Err(message) => ToLauncher::Error { message },
            },
            ToProcess::CtrlAltDel => {
                let pressed = vm
                    .keyboard
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .press_ctrl_alt_del();
                match pressed {
                    Ok(()) if vm.pause.is_paused() => status(VmState::Paused),
                    Ok(()) => status(VmState::Running),
                    Err(message) => ToLauncher::Error { message },
                }
            }
            ToProcess::QueryStatus if vm.pause.is_paused() => status(VmState::Paused),
            ToProcess::QueryStatus => status(VmState::Running),
            other => ToLauncher::Error {
                message: format!("the vmm does not take {other:?} now"),
            },
        };
        send(sender, reply);
    }
}
