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
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use bulkhead_protocol::{ToLauncher, ToProcess};
use nix::poll::PollTimeout;

use super::answer::{self, Heard};
use super::Supervisor;
use crate::launch::DeviceProcess;
use crate::restart::{RestartPolicy, Spent};
use crate::untrusted::sanitize;

/// How long the vmm gets to replay a device's set-up to its new backend.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the vmm gets to answer `Reconnect` once the new process has died (its own
/// watchdog ends an exchange after 5 s).
const ANSWER_AFTER_DEATH: Duration = Duration::from_secs(10);
/// How long a process the vmm lost gets to turn out dead before it is killed.
const LOST_GRACE: Duration = Duration::from_millis(250);
/// How long a process replaced by `ctl restart` gets to stop when asked.
const REPLACE_GRACE: Duration = Duration::from_secs(2);

/// Why a device's process is being replaced.
enum Cause {
    /// It died (or the vmm lost it and it was killed): counted in the budget.
    Died {
        /// Whether seccomp killed it (SIGSYS): a security event.
        sigsys: bool,
        /// How it ended, for the report (`killed by signal 9 (SIGKILL)`); empty for a
        /// new process that did not start (the report says so).
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
        let sigsys = status.signal() == Some(libc::SIGSYS);
        let _ = self.replace(i, Cause::Died { sigsys, how }, None, Instant::now());
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
        let (status, how) = self.end_lost(i, &reason);
        let sigsys = status.signal() == Some(libc::SIGSYS);
        let _ = self.replace(i, Cause::Died { sigsys, how }, None, seen);
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
    ///
    /// A new process that does not start, or that the vmm loses during the replay (or that
    /// dies before the vmm answered), is another death of the device: reported, counted in
    /// the budget and replaced while the budget allows, else the device is given up. Every
    /// way out without `Reconnected` while the VM runs leaves the device stopped by the
    /// vmm: its `DeviceStopped`, or a `GiveUp` sent here.
    fn replace(
        &mut self,
        i: usize,
        cause: Cause,
        exec: Option<PathBuf>,
        seen: Instant,
    ) -> Result<(), String> {
        let (mut cause, mut exec) = (cause, exec);
        let p = &mut self.devices.processes[i];
        let (name, program, pid) = (p.name.clone(), p.program.clone(), p.pid());
        let _ = p.wait_for_end(Duration::ZERO); // its cgroup goes before the new one comes
        let mut what = match &cause {
            Cause::Died { how, .. } => format!("{program} (pid {pid}) {how}"),
            Cause::Asked => format!("{program} (pid {pid}) replaced as asked (ctl restart)"),
        };
        if let (Cause::Asked, Some(budget)) = (&cause, self.devices.budget(&name)) {
            budget.count_asked();
        }
        // When the death being handled was seen (the budget counts deaths by it).
        let mut died_at = seen;
        // New processes that failed in a row here (see `admit`).
        let mut failed_in_a_row = 0;
        loop {
            let which = self.admit(i, &cause, &what, died_at, failed_in_a_row)?;
            let Some(mut recipe) = self.devices.processes[i].take_recipe() else {
                let why = "not restarted: bulkhead keeps no recipe for it".to_owned();
                self.give_up(i, &what, &why);
                return Err(why);
            };
            let (mut new, socket) = match start_new(&name, &mut recipe, exec.take()) {
                Ok(started) => started,
                Err(NotStarted { why, sigsys }) => {
                    // Counted as a death of the device: tried again within the budget.
                    let failed = recipe
                        .program()
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    self.devices.processes[i].keep_recipe(recipe);
                    eprintln!("bulkhead: {name}: {what}; restarting it ({which}) failed: {why}");
                    what = format!("the new {failed} did not start");
                    cause = Cause::Died {
                        sigsys,
                        how: String::new(),
                    };
                    died_at = Instant::now();
                    failed_in_a_row += 1;
                    continue;
                }
            };
            new.keep_recipe(recipe);
            let (new_pid, new_program) = (new.pid(), new.program.clone());
            let old = std::mem::replace(&mut self.devices.processes[i], new);
            drop(old);
            if let Err(e) = self.channel.send(
                &ToProcess::Reconnect {
                    device: name.clone(),
                },
                &[socket.as_fd()],
            ) {
                // The vmm's channel is broken: the VM is ending, nobody to tell.
                let why = format!("handing its new process to the vmm failed: {e}");
                eprintln!("bulkhead: {name}: {what}; {why}");
                return Err(why);
            }
            drop(socket);
            let restarted = format!("restarted as pid {new_pid} ({which})");
            match self.await_reconnected(i) {
                Answer::Reconnected => {
                    let unavailable = seen.elapsed().as_millis();
                    eprintln!(
                        "bulkhead: {name}: {what}; {restarted}; unavailable {unavailable} ms"
                    );
                    return Ok(());
                }
                Answer::Lost { status, how } => {
                    eprintln!(
                        "bulkhead: {name}: {what}; {restarted}, but it was lost before the vmm \
                         reconnected it"
                    );
                    what = format!("{new_program} (pid {new_pid}) {how}");
                    cause = Cause::Died {
                        sigsys: status.signal() == Some(libc::SIGSYS),
                        how,
                    };
                    died_at = Instant::now();
                    failed_in_a_row += 1;
                }
                Answer::Stopped(why) => {
                    // The vmm stopped the device itself (NEEDS_RESET): no GiveUp needed.
                    eprintln!(
                        "bulkhead: {name}: {what}; {restarted}, but the vmm could not \
                         reconnect it: {why}; {name} is stopped (the guest sees it needs a \
                         reset), the VM goes on"
                    );
                    self.settle(i);
                    return Err(why);
                }
                Answer::TimedOut(why) => {
                    let p = &mut self.devices.processes[i];
                    p.kill();
                    let _ = p.wait_for_end(Duration::from_secs(5));
                    let why = format!("{restarted}, but the vmm could not reconnect it: {why}");
                    self.give_up(i, &what, &why);
                    return Err(why);
                }
                Answer::Ended(why) => {
                    eprintln!("bulkhead: {name}: {what}; {restarted}, but {why}");
                    self.settle(i);
                    return Err(why);
                }
            }
        }
    }

    /// Whether the device of process `i` may have another process after `cause` (the
    /// death seen at `at`, after `failed_in_a_row` new processes failed in this
    /// replacement): the SIGSYS rule (a refusal stops the VM) and the budget (a refusal
    /// gives the device up). Returns which restart this is, for the report.
    ///
    /// At most as many new processes in a row as the policy allows restarts, whatever
    /// its window: a window shorter than a failed start would let the budget refill, and
    /// the VM's supervision would wait on this replacement forever.
    fn admit(
        &mut self,
        i: usize,
        cause: &Cause,
        what: &str,
        at: Instant,
        failed_in_a_row: u32,
    ) -> Result<String, String> {
        let Cause::Died { sigsys, how } = cause else {
            return Ok("not counted in the restart budget".into());
        };
        let name = self.devices.processes[i].name.clone();
        if *sigsys && !self.restart_on_sigsys {
            eprintln!(
                "bulkhead: {name}: security event: {what}; not restarted (a seccomp kill is \
                 not a crash; --restart-on-sigsys restarts it); stopping the VM"
            );
            let p = &mut self.devices.processes[i];
            p.reported = true;
            let failed = if how.is_empty() {
                what.to_owned()
            } else {
                format!("{} (pid {}) {how}", p.program, p.pid())
            };
            self.report.device_failed.get_or_insert((name, failed));
            self.shut_down();
            return Err("stopped".into());
        }
        let policy = self.policy(&name);
        match self.devices.budget(&name).map(|b| b.take(at)) {
            Some(Ok(n)) => match policy {
                RestartPolicy::Budget { restarts, .. } if failed_in_a_row >= restarts => {
                    let why = format!(
                        "not restarted: {failed_in_a_row} new processes in a row did not start \
                         or were lost (restart={policy})"
                    );
                    self.give_up(i, what, &why);
                    Err(why)
                }
                RestartPolicy::Budget {
                    restarts,
                    window_secs,
                } => Ok(format!("restart {n} of {restarts} within {window_secs} s")),
                RestartPolicy::Off => Ok("not counted in the restart budget".into()),
            },
            Some(Err(Spent)) | None => {
                let why = format!("not restarted: its restart budget (restart={policy}) is spent");
                self.give_up(i, what, &why);
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

    /// Process `i`, which the vmm lost: its end if it comes within [`LOST_GRACE`], else it
    /// is killed. Returns how it ended, for the report.
    fn end_lost(&mut self, i: usize, reason: &str) -> (ExitStatus, String) {
        let p = &mut self.devices.processes[i];
        p.watched = false;
        // A process that died is reapable a moment after the vmm saw its socket close.
        if let Some(status) = p.wait_for_end(LOST_GRACE) {
            return (status, describe_for_report(p, status));
        }
        log::warn!(
            "{}: the vmm lost {} (pid {}): {reason}; killing it",
            p.name,
            p.program,
            p.pid()
        );
        p.kill();
        let status = p
            .wait_for_end(Duration::from_secs(5))
            .unwrap_or(ExitStatus::from_raw(libc::SIGKILL));
        (status, format!("lost by the vmm ({reason}), killed"))
    }

    /// Waits for the vmm's answer to `Reconnect` for device process `i` (just started),
    /// watching the process meanwhile; other messages are recorded. A `DeviceLost` about
    /// the device's previous process is set aside (see [`answer`]), and handled after
    /// `Reconnected` if the new process has ended by then.
    fn await_reconnected(&mut self, i: usize) -> Answer {
        let device = self.devices.processes[i].name.clone();
        let mut deadline = Instant::now() + RECONNECT_TIMEOUT;
        // How the new process ended, once its pidfd said so.
        let mut died: Option<ExitStatus> = None;
        let mut lost_before: Option<String> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let p = &mut self.devices.processes[i];
                return match died {
                    // Dead, and the vmm said nothing: it is lost; another may be tried.
                    Some(status) => {
                        p.watched = false;
                        let _ = p.wait_for_end(Duration::ZERO);
                        Answer::Lost {
                            status,
                            how: format!("{} during the reconnect", describe_for_report(p, status)),
                        }
                    }
                    None => Answer::TimedOut(format!("no answer within {RECONNECT_TIMEOUT:?}")),
                };
            }
            let pidfd = match died {
                None => self.devices.processes[i].pidfd(),
                Some(_) => None, // (not polled)
            };
            let fds = [Some(self.channel.as_fd()), pidfd];
            let ms = PollTimeout::from(left.as_millis().clamp(1, 1000) as u16);
            let ready = match super::poll_in(&fds, ms) {
                Ok(ready) if ready.contains(&true) => ready,
                _ => continue,
            };
            if ready[1] {
                if let Some(status) = self.devices.processes[i].exited() {
                    // The vmm sees the hang-up too and answers; if it does not soon, the
                    // death is handled without its answer.
                    log::info!("{device}: its new process ended during the reconnect: {status:?}");
                    died = Some(status);
                    deadline = deadline.min(Instant::now() + ANSWER_AFTER_DEATH);
                }
            }
            if !ready[0] {
                continue;
            }
            let msg = match self.channel.recv() {
                Ok((msg, _)) => msg,
                Err(e) if e.is_timeout() => continue,
                Err(e) => {
                    self.channel_gone = true;
                    return Answer::Ended(format!("the vmm's channel failed: {e}"));
                }
            };
            match answer::classify(&device, msg) {
                Heard::Reconnected => {
                    // A loss reported just before the answer may be the new process's:
                    // handled as any loss if that process has ended.
                    if let Some(reason) = lost_before {
                        if self.devices.processes[i].exited().is_some() {
                            self.pending_lost.push((device, reason));
                        }
                    }
                    return Answer::Reconnected;
                }
                Heard::Stopped(reason) => return Answer::Stopped(sanitize(&reason)),
                Heard::LostInReplay(reason) => {
                    let reason = sanitize(&reason);
                    let (status, how) = self.end_lost(i, &reason);
                    return Answer::Lost {
                        status,
                        how: format!("{how} during the reconnect"),
                    };
                }
                Heard::LostBefore(reason) => {
                    log::debug!("{device}: DeviceLost before the reconnect: {reason}");
                    lost_before = Some(reason);
                }
                Heard::Exited(code) => {
                    self.report.exited = Some(code);
                    return Answer::Ended("the VM has ended".into());
                }
                Heard::Other(ToLauncher::DeviceLost { device: d, reason }) => {
                    self.pending_lost.push((d, reason));
                }
                Heard::Other(other) => self.record(other),
            }
        }
    }
}

/// The vmm's answer to `Reconnect`, as the launcher takes it.
enum Answer {
    /// `Reconnected`.
    Reconnected,
    /// The new process was lost (the vmm's `DeviceLost` during the replay, or its death
    /// without an answer): how it ended. The device waits for another `Reconnect`.
    Lost { status: ExitStatus, how: String },
    /// `DeviceStopped`: the vmm's reason (defused).
    Stopped(String),
    /// No answer in time: the device must be given up (`GiveUp`).
    TimedOut(String),
    /// The VM ended or its channel broke meanwhile.
    Ended(String),
}

/// Starts a process for `name` from `recipe`, with program `exec` from now on if given
/// (one that does not start leaves the old program in the recipe, started again), and
/// waits until it is ready.
fn start_new(
    name: &str,
    recipe: &mut crate::launch::Recipe,
    exec: Option<PathBuf>,
) -> Result<(DeviceProcess, UnixStream), NotStarted> {
    let Some(exec) = exec else {
        return start_ready(recipe);
    };
    let old_program = recipe.program().to_owned();
    recipe.set_program(exec);
    match start_ready(recipe) {
        Ok(started) => Ok(started),
        Err(NotStarted { why, .. }) => {
            // A new build that does not start: the old program serves on.
            eprintln!(
                "bulkhead: {name}: the new program {} did not start ({why}); starting {} again",
                recipe.program().display(),
                old_program.display()
            );
            recipe.set_program(old_program);
            start_ready(recipe)
        }
    }
}

/// Starts a process from `recipe` and waits until it is ready; one that is not is stopped
/// (and its cgroup removed).
fn start_ready(
    recipe: &mut crate::launch::Recipe,
) -> Result<(DeviceProcess, UnixStream), NotStarted> {
    let (mut new, socket) = recipe.start().map_err(|e| NotStarted {
        why: crate::run::chain(&e),
        sigsys: false,
    })?;
    match new.wait_ready() {
        Ok(()) => Ok((new, socket)),
        Err(e) => {
            let status = new.stop();
            let _ = new.wait_for_end(Duration::ZERO);
            Err(NotStarted {
                why: crate::run::chain(&e),
                sigsys: status.and_then(|s| s.signal()) == Some(libc::SIGSYS),
            })
        }
    }
}

/// Why a new process did not start.
struct NotStarted {
    /// The error, with its causes.
    why: String,
    /// Whether seccomp killed it (SIGSYS).
    sigsys: bool,
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
