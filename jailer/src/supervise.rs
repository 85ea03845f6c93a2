//! Supervising a running VM: the launcher's event loop over the vmm's control channel, the
//! stop signals and the API socket, until the vmm says how the VM ended (or dies), then the
//! exit status and the user's message.
//!
//! SIGINT, SIGTERM or SIGHUP to the launcher asks the vmm to shut down (`Shutdown`); a vmm
//! that has not ended within [`STOP_GRACE`] is killed. The processes run in sessions of
//! their own (see `launch::spawn`), so a Ctrl-C on the terminal reaches only the launcher,
//! which stops everything in order.
//!
//! Every device process's pidfd is watched too: one that dies is restarted as its
//! `restart=` policy says (see [`restarts`]).

mod answer;
mod restarts;

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bulkhead_protocol::{
    ApiReply, ApiRequest, ChannelError, DeviceState, DeviceStatus, LauncherChannel, ToLauncher,
    ToProcess,
};
use bulkhead_vmm::process::EXIT_BULKHEAD_FAILED;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::api::ApiSocket;
use crate::devices::Devices;
use crate::launch::{DeviceProcess, VMM};
use crate::stop_signals::{Caught, StopSignals};
use crate::untrusted::sanitize;

/// How long the vmm gets to end after being asked to stop.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long the vmm gets for the handshake and for answering a request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// What the vmm said about the VM's end.
#[derive(Default)]
struct Report {
    ready: bool,
    device_failed: Option<(String, String)>,
    error: Option<String>,
    exited: Option<i32>,
}

/// The launcher's view of a running VM.
pub struct Supervisor<'a> {
    vmm: DeviceProcess,
    channel: LauncherChannel,
    devices: &'a mut Devices,
    api: Option<ApiSocket>,
    /// The device whose config follows this terminal's size (the console on stdio).
    resize: Option<String>,
    report: Report,
    signal: Option<i32>,
    stop_deadline: Option<Instant>,
    /// `--restart-on-sigsys`: a seccomp kill is restarted like any death.
    restart_on_sigsys: bool,
    /// Devices given up (budget spent, restart failed): the VM goes on without them.
    given_up: Vec<String>,
    /// `DeviceLost`s that came while another device was being reconnected.
    pending_lost: Vec<(String, String)>,
    /// The vmm's channel failed while a device was being reconnected.
    channel_gone: bool,
}

/// The launcher's end of the vmm's control socket `control`, with our `Hello` sent as
/// soon as the vmm is started: the vmm reads it once jailed and goes on to its devices
/// while the launcher still waits for the backends ([`Supervisor::new`] reads its answer).
pub fn hello(control: UnixStream) -> Result<LauncherChannel, ChannelError> {
    let mut channel = LauncherChannel::new(control, VMM);
    channel.set_timeouts(Some(REPLY_TIMEOUT), Some(REPLY_TIMEOUT))?;
    channel.send_hello()?;
    Ok(channel)
}

impl<'a> Supervisor<'a> {
    /// Finishes the handshake with the vmm over `channel` (made by [`hello`], which sent
    /// ours); on failure returns the exit status after saying how the vmm ended.
    pub fn new(
        vmm: DeviceProcess,
        channel: Result<LauncherChannel, ChannelError>,
        devices: &'a mut Devices,
        api: Option<ApiSocket>,
        resize: Option<String>,
    ) -> Result<Supervisor<'a>, i32> {
        let shaken = channel.and_then(|mut channel| channel.finish_handshake().map(|()| channel));
        let channel = match shaken {
            Ok(channel) => channel,
            Err(e) => return Err(vmm_died(vmm, &format!("no handshake: {e}"))),
        };
        Ok(Supervisor {
            vmm,
            channel,
            devices,
            api,
            resize,
            report: Report::default(),
            signal: None,
            stop_deadline: None,
            restart_on_sigsys: false,
            given_up: Vec::new(),
            pending_lost: Vec::new(),
            channel_gone: false,
        })
    }

    /// `--restart-on-sigsys`: restart a process seccomp killed like any other.
    pub fn restart_on_sigsys(mut self, on: bool) -> Self {
        self.restart_on_sigsys = on;
        self
    }

    /// Runs until the VM has ended; returns the exit status, having told the user what
    /// went wrong if anything did.
    pub fn run(mut self, signals: &StopSignals) -> i32 {
        while self.report.exited.is_none() {
            if !self.wait_once(signals) {
                break;
            }
        }
        self.conclude()
    }

    /// Waits for one event and handles it; false when the vmm's channel is gone.
    fn wait_once(&mut self, signals: &StopSignals) -> bool {
        while let Some((device, reason)) = self.pending_lost.pop() {
            self.device_lost(&device, &reason);
        }
        if self.channel_gone {
            return false;
        }
        let mut fds = vec![Some(self.channel.as_fd()), Some(signals.as_fd())];
        if let Some(api) = &self.api {
            fds.push(Some(api.listener_fd()));
        }
        // Then each watched device process's pidfd: (index in fds, index of the process).
        let first_pidfd = fds.len();
        let mut watched = Vec::new();
        for (i, p) in self.devices.processes.iter().enumerate() {
            if let Some(fd) = p.pidfd().filter(|_| p.watched) {
                fds.push(Some(fd));
                watched.push(i);
            }
        }
        let timeout = self.stop_deadline.map_or(PollTimeout::NONE, |d| {
            PollTimeout::try_from(d.saturating_duration_since(Instant::now()))
                .unwrap_or(PollTimeout::MAX)
        });
        let ready = match poll_in(&fds, timeout) {
            Ok(ready) => ready,
            Err(e) => return e == Errno::EINTR,
        };
        drop(fds);
        if !ready.contains(&true) {
            log::warn!("the vmm did not stop within {STOP_GRACE:?}; killing it");
            self.kill_vmm();
            self.stop_deadline = None;
            return true;
        }
        if ready[0] {
            return self.receive();
        }
        if ready[1] {
            match signals.next() {
                Some(Caught::Resized) => self.terminal_resized(),
                Some(Caught::Stop(s)) if self.signal.is_none() => {
                    self.signal = Some(s);
                    eprintln!("bulkhead: signal {s}: stopping the VM");
                    self.shut_down();
                }
                _ => {}
            }
            return true;
        }
        if self.api.is_some() && ready[2] {
            self.serve_api();
            return true;
        }
        // The vmm's messages and stop signals first (a device ending as the VM ends is no
        // crash); a pidfd stays readable, so it is seen again on the next round.
        if let Some(k) = ready[first_pidfd..].iter().position(|&r| r) {
            self.device_ended(watched[k]);
        }
        true
    }

    /// SIGKILL to the vmm, our own unreaped child (so its pid is still its).
    fn kill_vmm(&self) {
        let _ = kill(Pid::from_raw(self.vmm.pid() as i32), Signal::SIGKILL);
    }

    /// Asks the vmm to shut down, killing it if it has not ended within [`STOP_GRACE`].
    fn shut_down(&mut self) {
        if let Err(e) = self.channel.send(&ToProcess::Shutdown, &[]) {
            log::warn!("asking the vmm to stop: {e}; killing it");
            self.kill_vmm();
        }
        self.stop_deadline
            .get_or_insert(Instant::now() + STOP_GRACE);
    }

    /// The terminal was resized: the console's driver is told its config changed (the
    /// console process reads the new size when the guest asks).
    fn terminal_resized(&mut self) {
        if let Some(device) = self.resize.clone() {
            if let Err(e) = self.channel.send(&ToProcess::ConfigChanged { device }, &[]) {
                log::warn!("telling the vmm the terminal was resized: {e}");
            }
        }
    }

    /// Receives and records one message from the vmm; false when the channel is gone.
    fn receive(&mut self) -> bool {
        match self.channel.recv() {
            Ok((msg, _fds)) => {
                self.record(msg);
                true
            }
            Err(e) => {
                log::info!("control channel: {e}");
                false
            }
        }
    }

    fn record(&mut self, msg: ToLauncher) {
        match msg {
            ToLauncher::Ready { role, pid } => {
                let c = crate::launch::confinement();
                let identity = if c.jail {
                    format!(", the VM's processes run as uid {} gid {}", c.uid, c.gid)
                } else {
                    String::new()
                };
                log::info!("{} (pid {pid}) ready{identity}", sanitize(&role));
                crate::launch::trace::mark(VMM, "ready");
                crate::run::vm_ready();
                crate::launch::trace::print();
                self.report.ready = true;
                self.vmm.ready = true;
            }
            ToLauncher::DeviceFailed { device, reason } => {
                self.report
                    .device_failed
                    .get_or_insert((sanitize(&device), sanitize(&reason)));
            }
            ToLauncher::Error { message } => {
                self.report.error.get_or_insert(sanitize(&message));
            }
            ToLauncher::Exited { code } => self.report.exited = Some(code),
            ToLauncher::DeviceLost { device, reason } => {
                self.pending_lost.push((device, reason));
            }
            ToLauncher::Reconnected { device } | ToLauncher::DeviceStopped { device, .. } => {
                log::info!("the vmm says {} unprompted", sanitize(&device));
            }
            other => log::warn!(
                "the vmm said {} unprompted; ignored",
                sanitize(&format!("{other:?}"))
            ),
        }
    }

    /// Sends `request` to the vmm and waits for its answer (`Status` or `Error`); other
    /// messages arriving meanwhile are recorded.
    fn ask(&mut self, request: ToProcess) -> Result<ToLauncher, String> {
        self.channel
            .send(&request, &[])
            .map_err(|e| e.to_string())?;
        loop {
            let (msg, _) = self.channel.recv().map_err(|e| e.to_string())?;
            match msg {
                ToLauncher::Status(_) | ToLauncher::Error { .. } => return Ok(msg),
                other => {
                    let ended = matches!(other, ToLauncher::Exited { .. });
                    self.record(other);
                    if ended {
                        return Err("the VM has ended".into());
                    }
                }
            }
        }
    }

    /// Serves one connection on the API socket.
    fn serve_api(&mut self) {
        let Some(mut client) = self.api.as_ref().and_then(ApiSocket::accept) else {
            return;
        };
        let reply = match client.request() {
            Ok(ApiRequest::Status) => self.status(ToProcess::QueryStatus),
            Ok(ApiRequest::Pause) => self.status(ToProcess::Pause),
            Ok(ApiRequest::Resume) => self.status(ToProcess::Resume),
            Ok(ApiRequest::CtrlAltDel) => self.status(ToProcess::CtrlAltDel),
            Ok(ApiRequest::Shutdown) => {
                eprintln!("bulkhead: shutdown requested on the API socket: stopping the VM");
                self.shut_down();
                ApiReply::Ok
            }
            Ok(ApiRequest::SwapDisk { device, path }) => {
                match self.swap_disk(&device, std::path::Path::new(&path)) {
                    Ok(()) => ApiReply::Ok,
                    Err(e) => ApiReply::Error(sanitize(&e)),
                }
            }
            Ok(ApiRequest::Restart { device, exec }) => {
                match self.restart_asked(&device, exec.as_deref()) {
                    Ok(()) => ApiReply::Ok,
                    Err(e) => ApiReply::Error(sanitize(&e)),
                }
            }
            Ok(ApiRequest::Hello { .. }) => ApiReply::Error("a second Hello".into()),
            Err(e) => {
                log::warn!("API socket: {}", sanitize(&e));
                return;
            }
        };
        client.reply(reply);
    }

    /// Serves disk `device` from the image at `path` from now on: the launcher opens it by
    /// the path rules (and `--open-as`) as at start-up, hands the fd to the disk's
    /// `bulkhead-blk`, which swaps between requests, then has the vmm raise the
    /// config-change interrupt so the guest re-reads the capacity. Any refusal leaves the
    /// VM running on the old image.
    pub fn swap_disk(&mut self, device: &str, path: &std::path::Path) -> Result<(), String> {
        if self.report.exited.is_some() || self.stop_deadline.is_some() {
            return Err("the VM is not running (it is stopping or has ended)".into());
        }
        let Some(served) = self.devices.images.iter().find(|d| d.name == device) else {
            let disks: Vec<&str> = self
                .devices
                .images
                .iter()
                .map(|d| d.name.as_str())
                .collect();
            return Err(format!(
                "{device}: not a disk served by bulkhead-blk (the disks are: {})",
                if disks.is_empty() {
                    "none".to_owned()
                } else {
                    disks.join(", ")
                }
            ));
        };
        if served.direct {
            return Err(format!(
                "{device}: a disk opened with direct=on cannot have its image swapped yet"
            ));
        }
        let (options, read_only) = (served.options, served.options.readonly);
        // Locked as at start; the old image's locks go with its last descriptors (the
        // recipe's, replaced below, and the backend's, closed once it swapped).
        let image = crate::launch::open_swap_image(device, path, options).map_err(|e| chain(&e))?;
        let process = self
            .devices
            .processes
            .iter_mut()
            .find(|p| p.name == device)
            .ok_or_else(|| format!("{device}: its process is gone"))?;
        if process.exited().is_some() {
            return Err(format!("{device}: its process has ended"));
        }
        if !image.block_device {
            // RLIMIT_FSIZE does not apply to block devices.
            process.allow_file_size(image.size)?;
        }
        let request = ToProcess::SwapDisk {
            name: path.display().to_string(),
            size: image.size,
            read_only,
            block_device: image.block_device,
        };
        // A restarted process gets the new image (and its size limit) from now on.
        let kept = image
            .file
            .try_clone()
            .map_err(|e| format!("{device}: {e}"))?;
        let capacity = match process.ask(&request, &[image.file.as_fd()])? {
            ToLauncher::DiskSwapped { capacity_sectors } => capacity_sectors,
            ToLauncher::Error { message } => {
                return Err(format!("{device}: {}", sanitize(&message)))
            }
            other => {
                return Err(format!(
                    "{device} answered {}",
                    sanitize(&format!("{other:?}"))
                ))
            }
        };
        drop(image);
        if let Some(recipe) = process.recipe_mut() {
            recipe.replace_fd(0, kept.into());
        }
        log::info!(
            "{device}: now serving {} ({capacity} sectors)",
            path.display()
        );
        self.channel
            .send(
                &ToProcess::ConfigChanged {
                    device: device.to_owned(),
                },
                &[],
            )
            .map_err(|e| format!("{device}: swapped, but telling the vmm: {e}"))
    }

    /// Forwards `request` to the vmm; the reply with every process's state filled in.
    fn status(&mut self, request: ToProcess) -> ApiReply {
        match self.ask(request) {
            Ok(ToLauncher::Status(mut status)) => {
                status.devices = self.processes();
                ApiReply::Status(status)
            }
            Ok(other) => refusal(other),
            Err(e) => ApiReply::Error(sanitize(&e)),
        }
    }

    /// The state of every process of the VM, the vmm first.
    fn processes(&mut self) -> Vec<DeviceStatus> {
        let state = |p: &mut DeviceProcess| match p.exited() {
            None if !p.ready => DeviceState::Starting,
            None => DeviceState::Ready,
            Some(s) if s.success() => DeviceState::Exited,
            Some(_) => DeviceState::Failed,
        };
        let mut all = vec![DeviceStatus {
            name: VMM.into(),
            pid: self.vmm.pid(),
            state: state(&mut self.vmm),
        }];
        for p in self.devices.processes.iter_mut() {
            let restarts = self
                .devices
                .budgets
                .iter()
                .find_map(|(n, b)| (*n == p.name).then_some(b.total))
                .unwrap_or(0);
            let name = match restarts {
                0 => format!("{} ({})", p.name, p.program),
                1 => format!("{} ({}, restarted once)", p.name, p.program),
                n => format!("{} ({}, restarted {n} times)", p.name, p.program),
            };
            all.push(DeviceStatus {
                name,
                pid: p.pid(),
                state: state(p),
            });
        }
        all
    }

    /// After the vmm's channel closed: reap it and turn what it said into the exit status,
    /// explaining a device failure by how its process ended.
    fn conclude(self) -> i32 {
        let Supervisor {
            mut vmm,
            devices,
            report,
            signal,
            ..
        } = self;
        let Some(code) = report.exited else {
            return vmm_died(vmm, "ended without saying why");
        };
        let _ = vmm.stop();
        if let Some((device, why)) = report.device_failed {
            let why = devices.how_it_ended(&device).unwrap_or(why);
            eprintln!("bulkhead: {device} failed: {why}; VM stopped");
            return EXIT_BULKHEAD_FAILED;
        }
        // A backend that died while the guest was ending (the guest may notice first and
        // exit with a failure of its own) is the failure to report.
        if report.ready && report.error.is_none() {
            if let Some((device, how)) = devices.failed() {
                eprintln!("bulkhead: {device} failed: {how}; VM stopped");
                return EXIT_BULKHEAD_FAILED;
            }
        }
        match report.error {
            // Before Ready: the VM could not be built. A backend that failed at start-up
            // shows up as a broken socket: say how its process ended, which names the
            // real cause.
            Some(msg) if !report.ready => match devices.exited() {
                Some((device, how)) => eprintln!(
                    "bulkhead: error: {device}: {how}; it could not serve the device ({msg})"
                ),
                None => eprintln!("bulkhead: error: {msg}"),
            },
            Some(msg) => eprintln!("bulkhead: {msg}"),
            None => {}
        }
        match signal {
            // As shells report a command ended by a signal.
            Some(signal) if code == 0 => 128 + signal,
            _ => code,
        }
    }
}

/// What an API client is told when the vmm did not answer with its status: the vmm's
/// words go to the client's terminal, so they are defused and capped.
fn refusal(answer: ToLauncher) -> ApiReply {
    match answer {
        ToLauncher::Error { message } => ApiReply::Error(sanitize(&message)),
        other => ApiReply::Error(format!(
            "the vmm answered {}",
            sanitize(&format!("{other:?}"))
        )),
    }
}

/// `e` and its causes, `: `-separated (the path rules' refusal names the path and why).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// Polls each of `fds` for reading (a `None` is skipped); which are ready (readable, in
/// error or hung up), in the order given; none on timeout.
fn poll_in(fds: &[Option<BorrowedFd<'_>>], timeout: PollTimeout) -> nix::Result<Vec<bool>> {
    let mut polls: Vec<PollFd> = fds
        .iter()
        .flatten()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    nix::poll::poll(&mut polls, timeout)?;
    // nix shows no flags when the kernel sets one it cannot name: ready all the same.
    let mut ready = polls
        .iter()
        .map(|p| p.revents().is_none_or(|r| !r.is_empty()));
    Ok(fds
        .iter()
        .map(|fd| fd.is_some() && ready.next().unwrap_or(false))
        .collect())
}

/// Reports that the vmm process ended without a proper goodbye; returns the exit status.
fn vmm_died(mut vmm: DeviceProcess, what: &str) -> i32 {
    let (program, pid) = (vmm.program.clone(), vmm.pid());
    match vmm.stop() {
        Some(status) => eprintln!(
            "bulkhead: {VMM} failed: {program} (pid {pid}) {}; VM stopped",
            vmm.describe(status)
        ),
        None => eprintln!("bulkhead: {VMM} failed: {program} (pid {pid}) {what}; VM stopped"),
    }
    EXIT_BULKHEAD_FAILED
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::untrusted::MAX_MESSAGE;

    #[test]
    fn what_the_vmm_says_reaches_a_client_defused_and_capped() {
        let hostile = format!("\x1b]0;pwned\x07\u{9b}2J{}", "a".repeat(100_000));
        let ApiReply::Error(e) = refusal(ToLauncher::Error { message: hostile }) else {
            panic!("not an error reply");
        };
        assert!(e.starts_with("\\x1b]0;pwned\\x07\\x9b2Jaaa"), "{e}");
        assert!(e.len() <= MAX_MESSAGE + 3 && e.ends_with("..."));
        let ApiReply::Error(e) = refusal(ToLauncher::DeviceFailed {
            device: "disk0\x1b[2J".into(),
            reason: "x".repeat(100_000),
        }) else {
            panic!("not an error reply");
        };
        assert!(!e.contains('\x1b') && e.len() <= "the vmm answered ".len() + MAX_MESSAGE + 3);
    }
}
