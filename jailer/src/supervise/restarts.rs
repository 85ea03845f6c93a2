//! The supervisor's side of restartable devices: what happens when a device process ends
//! (its pidfd became readable), when the vmm says it lost a device (`DeviceLost`), and
//! when `bulkhead ctl restart` asks for a new process.
//!
//! A death is reaped first. Death by SIGSYS (seccomp) is a security event: reported with
//! the call seccomp refused, not restarted, and the VM stops, unless
//! `--restart-on-sigsys`. Any other death within the device's budget ([`crate::restart`])
//! starts a new process from the device's recipe (same fds, uid, namespace and limits),
//! waits until it is ready, hands the vmm its socket (`Reconnect`) and waits for
//! `Reconnected`; one line on stderr says which process ended and how, the new pid, which
//! restart of the budget it was and how long the device was unavailable (from the launcher
//! seeing the death to the vmm's `Reconnected`). Beyond the budget the vmm is told to give
//! the device up (`GiveUp`: the guest sees NEEDS_RESET) and the VM goes on. Nothing is
//! restarted while the VM is stopping, nor before the vmm said it is ready.

use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use bulkhead_protocol::{ToLauncher, ToProcess};

use super::Supervisor;
use crate::launch::DeviceProcess;
use crate::restart::{RestartPolicy, Spent};
use crate::untrusted::sanitize;

/// How long the vmm gets to replay a device's set-up to its new backend.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process the vmm lost gets to turn out dead before it is killed.
const LOST_GRACE: Duration = Duration::from_millis(250);
/// How long a process replaced by `ctl restart` gets to stop when asked.
const REPLACE_GRACE: Duration = Duration::from_secs(2);

/// Why a device's process is being replaced.
enum Cause {
    /// It died (or the vmm lost it and it was killed): counted in the budget.
    Died {
        status: ExitStatus,
        /// How it ended, for the report (`killed by signal 9 (SIGKILL)`).
        how: String,
    },
    /// `bulkhead ctl restart`: not counted.
    Asked,
}

impl Supervisor<'_> {
    /// Whether the VM is on its way out: a process ending now is no crash.
    pub(super) fn stopping(&self) -> bool {
        self.report.exited.is_some() || self.stop_deadline.is_some() || self.signal.is_some()
    }

    /// The index of device `name`'s process.
    fn process_index(&self, name: &str) -> Option<usize> {
        self.devices.processes.iter().position(|p| p.name == name)
    }

    /// Device process `i`'s pidfd became readable: it ended.
    pub(super) fn device_ended(&mut self, i: usize) {
        let Some(p) = self.devices.processes.get_mut(i) else {
            return;
        };
        let Some(status) = p.exited() else {
            return;
        };
        p.watched = false;
        let name = p.name.clone();
        log::debug!("{name}: {} (pid {}) ended: {status:?}", p.program, p.pid());
        let how = describe_for_report(p, status);
        if self.stopping() || !self.report.ready {
            // The vmm's word (or the VM's end) explains it, as before restarts.
            return;
        }
        if status.success() {
            // A clean exit: the backend saw its connection end. The vmm says whether that
            // was the VM ending or the device lost (DeviceLost).
            return;
        }
        if !self.policy(&name).restarts() {
            // restart=off: the vmm stops the VM (DeviceFailed), as before restarts.
            return;
        }
        let _ = self.replace(i, Cause::Died { status, how }, None, Instant::now());
    }

    /// The vmm lost device `device` (its backend hung up, answered garbage or timed out):
    /// the process is killed if it still runs, then handled as a death.
    pub(super) fn device_lost(&mut self, device: &str, reason: &str) {
        let seen = Instant::now();
        let (device, reason) = (sanitize(device), sanitize(reason));
        if self.stopping() {
            return;
        }
        let Some(i) = self.process_index(&device) else {
            log::warn!("the vmm lost {device} ({reason}), which has no process of bulkhead's");
            return;
        };
        if self.given_up.contains(&device) {
            return;
        }
        let p = &mut self.devices.processes[i];
        // A process that died is reapable a moment after the vmm saw its socket close.
        let status = match p.wait_for_end(LOST_GRACE) {
            Some(status) => {
                let how = describe_for_report(p, status);
                (status, how)
            }
            None => {
                log::warn!(
                    "{device}: the vmm lost {} (pid {}): {reason}; killing it",
                    p.program,
                    p.pid()
                );
                p.kill();
                let status = p
                    .wait_for_end(Duration::from_secs(5))
                    .unwrap_or(ExitStatus::from_raw(libc::SIGKILL));
                (status, format!("lost by the vmm ({reason}), killed"))
            }
        };
        p.watched = false;
        let (status, how) = status;
        let _ = self.replace(i, Cause::Died { status, how }, None, seen);
    }

    /// `bulkhead ctl restart DEVICE [--exec PATH]`: the old process is asked to stop
    /// (killed after a grace period), a new one started and reconnected; `Ok` once the vmm
    /// reconnected the device.
    pub(super) fn restart_asked(&mut self, device: &str, exec: Option<&str>) -> Result<(), String> {
        if self.stopping() || !self.report.ready {
            return Err("the VM is not running (it is starting, stopping or has ended)".into());
        }
        let Some(i) = self.process_index(device) else {
            let names: Vec<&str> = self
                .devices
                .processes
                .iter()
                .map(|p| p.name.as_str())
                .collect();
            return Err(format!(
                "{device}: no such device process (the VM's are: {})",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ));
        };
        let policy = self.policy(device);
        if !policy.restarts() {
            return Err(format!(
                "{device} has restart=off: the vmm would not reconnect it, so its process \
                 cannot be replaced"
            ));
        }
        if self.given_up.iter().any(|d| d == device) || !self.devices.processes[i].watched {
            return Err(format!(
                "{device}: its process has ended and was not restarted"
            ));
        }
        let exec = match exec {
            Some(path) => Some(check_program(device, path)?),
            None => None,
        };
        let asked = Instant::now();
        let p = &mut self.devices.processes[i];
        p.watched = false;
        log::info!(
            "{device}: replacing {} (pid {}) as asked",
            p.program,
            p.pid()
        );
        let _ = p.stop_as_asked(REPLACE_GRACE);
        self.replace(i, Cause::Asked, exec, asked)
    }

    /// Device `name`'s restart policy (`Off` for a device without a process of ours).
    fn policy(&mut self, name: &str) -> RestartPolicy {
        self.devices
            .budget(name)
            .map_or(RestartPolicy::Off, |b| b.policy())
    }

    /// Replaces device process `i`, which has ended, for `cause`: the SIGSYS rule and the
    /// budget for a death, then a new process from its recipe (`exec`: another program
    /// from now on), reconnected by the vmm; the report on stderr, with the time from
    /// `seen` (the death seen, or the stop asked for) to the vmm's `Reconnected`.
    fn replace(
        &mut self,
        i: usize,
        cause: Cause,
        exec: Option<PathBuf>,
        seen: Instant,
    ) -> Result<(), String> {
        let p = &mut self.devices.processes[i];
        let (name, program, pid) = (p.name.clone(), p.program.clone(), p.pid());
        let _ = p.wait_for_end(Duration::ZERO); // its cgroup goes before the new one comes
        let what = match &cause {
            Cause::Died { how, .. } => format!("{program} (pid {pid}) {how}"),
            Cause::Asked => format!("{program} (pid {pid}) replaced as asked (ctl restart)"),
        };
        let mut which = String::from("not counted in the restart budget");
        if let (Cause::Asked, Some(budget)) = (&cause, self.devices.budget(&name)) {
            budget.count_asked();
        }
        if let Cause::Died { status, how } = &cause {
            if status.signal() == Some(libc::SIGSYS) && !self.restart_on_sigsys {
                eprintln!(
                    "bulkhead: {name}: security event: {what}; not restarted (a seccomp kill is \
                     not a crash; --restart-on-sigsys restarts it); stopping the VM"
                );
                self.devices.processes[i].reported = true;
                self.report
                    .device_failed
                    .get_or_insert((name, format!("{program} (pid {pid}) {how}")));
                self.shut_down();
                return Err("stopped".into());
            }
            let policy = self.policy(&name);
            match self.devices.budget(&name).map(|b| b.take(seen)) {
                Some(Ok(n)) => {
                    if let RestartPolicy::Budget {
                        restarts,
                        window_secs,
                    } = policy
                    {
                        which = format!("restart {n} of {restarts} within {window_secs} s");
                    }
                }
                Some(Err(Spent)) | None => {
                    let why =
                        format!("not restarted: its restart budget (restart={policy}) is spent");
                    self.give_up(i, &what, &why);
                    return Err(why);
                }
            }
        }
        let Some(mut recipe) = self.devices.processes[i].take_recipe() else {
            let why = "not restarted: bulkhead keeps no recipe for it".to_owned();
            self.give_up(i, &what, &why);
            return Err(why);
        };
        let old_program = recipe.program().to_owned();
        if let Some(exec) = exec {
            recipe.set_program(exec);
        }
        let mut started = start_ready(&mut recipe);
        if started.is_err() && recipe.program() != old_program {
            // A new build that does not start: the old program serves on.
            if let Err(e) = &started {
                eprintln!(
                    "bulkhead: {name}: the new program {} did not start ({}); starting {} again",
                    recipe.program().display(),
                    crate::run::chain(e),
                    old_program.display()
                );
            }
            recipe.set_program(old_program);
            started = start_ready(&mut recipe);
        }
        let (mut new, socket) = match started {
            Ok(started) => started,
            Err(e) => {
                self.devices.processes[i].keep_recipe(recipe);
                let why = format!("restarting it failed: {}", crate::run::chain(&e));
                self.give_up(i, &what, &why);
                return Err(why);
            }
        };
        new.keep_recipe(recipe);
        let new_pid = new.pid();
        let old = std::mem::replace(&mut self.devices.processes[i], new);
        drop(old);
        if let Err(e) = self.channel.send(
            &ToProcess::Reconnect {
                device: name.clone(),
            },
            &[socket.as_fd()],
        ) {
            let why = format!("handing its new process to the vmm failed: {e}");
            eprintln!("bulkhead: {name}: {what}; {why}");
            return Err(why);
        }
        drop(socket);
        match self.await_reconnected(&name) {
            Ok(()) => {
                let unavailable = seen.elapsed().as_millis();
                eprintln!(
                    "bulkhead: {name}: {what}; restarted as pid {new_pid} ({which}); \
                     unavailable {unavailable} ms"
                );
                Ok(())
            }
            Err(why) => {
                eprintln!(
                    "bulkhead: {name}: {what}; restarted as pid {new_pid}, but the vmm could \
                     not reconnect it: {why}; {name} is stopped (the guest sees it needs a \
                     reset), the VM goes on"
                );
                self.settle(i);
                Err(why)
            }
        }
    }

    /// Gives device process `i`'s device up: reported, the vmm told (`GiveUp`: NEEDS_RESET
    /// for the guest), the VM goes on.
    fn give_up(&mut self, i: usize, what: &str, why: &str) {
        let name = self.devices.processes[i].name.clone();
        eprintln!(
            "bulkhead: {name}: {what}; {why}; {name} is stopped (the guest sees it needs a \
             reset), the VM goes on"
        );
        self.settle(i);
        let give_up = ToProcess::GiveUp {
            device: name.clone(),
            reason: why.to_owned(),
        };
        if let Err(e) = self.channel.send(&give_up, &[]) {
            log::warn!("telling the vmm to give {name} up: {e}");
        }
    }

    /// Device process `i` is given up: no longer watched, and not a failure of the VM.
    fn settle(&mut self, i: usize) {
        let p = &mut self.devices.processes[i];
        p.watched = false;
        p.settled = true;
        p.reported = true;
        if !self.given_up.contains(&p.name) {
            self.given_up.push(p.name.clone());
        }
    }

    /// Waits for the vmm's answer to `Reconnect` for `device`; other messages meanwhile
    /// are recorded (a `DeviceLost` for `device` is about its old process: ignored).
    fn await_reconnected(&mut self, device: &str) -> Result<(), String> {
        let deadline = Instant::now() + RECONNECT_TIMEOUT;
        loop {
            let msg = match self.channel.recv() {
                Ok((msg, _)) => msg,
                Err(e) if e.is_timeout() && Instant::now() < deadline => continue,
                Err(e) if e.is_timeout() => {
                    return Err(format!("no answer within {RECONNECT_TIMEOUT:?}"))
                }
                Err(e) => {
                    self.channel_gone = true;
                    return Err(format!("the vmm's channel: {e}"));
                }
            };
            match msg {
                ToLauncher::Reconnected { device: d } if d == device => return Ok(()),
                ToLauncher::DeviceStopped { device: d, reason } if d == device => {
                    return Err(sanitize(&reason))
                }
                ToLauncher::DeviceLost { device: d, .. } if d == device => {
                    log::debug!("{device}: DeviceLost for its old process");
                }
                ToLauncher::DeviceLost { device: d, reason } => {
                    self.pending_lost.push((d, reason));
                }
                ToLauncher::Exited { code } => {
                    self.report.exited = Some(code);
                    return Err("the VM has ended".into());
                }
                other => self.record(other),
            }
        }
    }
}

/// Starts a process from `recipe` and waits until it is ready; one that is not is stopped.
fn start_ready(
    recipe: &mut crate::launch::Recipe,
) -> Result<(DeviceProcess, std::os::unix::net::UnixStream), crate::launch::LaunchError> {
    let (mut new, socket) = recipe.start()?;
    match new.wait_ready() {
        Ok(()) => Ok((new, socket)),
        Err(e) => {
            let _ = new.stop();
            Err(e)
        }
    }
}

/// How `p` ended, for a report line: `killed by signal 9 (SIGKILL)`, `exited with status
/// 3`, with the call seccomp refused for SIGSYS.
fn describe_for_report(p: &DeviceProcess, status: ExitStatus) -> String {
    let how = p.describe(status);
    how.strip_prefix("was ").map(str::to_owned).unwrap_or(how)
}

/// The program `path` (`ctl restart --exec`), checked under the rule for paths a user
/// names: it opens as a regular file owned as the rule requires, and is executable.
fn check_program(device: &str, path: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let path = PathBuf::from(path);
    let file = crate::launch::open_named(device, "program", &path, crate::safe_open::Access::Read)
        .map_err(|e| crate::run::chain(&e))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("{device}: program {}: {e}", path.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "{device}: program {}: not an executable file",
            path.display()
        ));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_program_to_exec_must_be_an_executable_file() {
        let dir = std::env::temp_dir().join(format!("bulkhead-exec-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let program = dir.join("prog");
        std::fs::write(&program, "#!/bin/sh\n").unwrap();
        let path = program.to_str().unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_program("disk0", path).unwrap_err();
        assert!(
            e.contains("not an executable file") && e.contains(path),
            "{e}"
        );
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(check_program("disk0", path), Ok(program.clone()));
        let e = check_program("disk0", dir.to_str().unwrap()).unwrap_err();
        assert!(e.starts_with("disk0: "), "{e}");
        let missing = dir.join("missing");
        let e = check_program("disk0", missing.to_str().unwrap()).unwrap_err();
        assert!(
            e.contains("disk0: opening program") && e.contains("missing"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
