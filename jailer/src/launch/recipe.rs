//! What a second copy of a device process needs: its program and arguments, what it needs
//! of its jail, its standard input, and a copy (dup) of every resource fd it was given
//! (the disk image, TAP queues, the console's stream or listener, the vsock listener).
//! The launcher keeps one per device process it starts, so that a process that died (or
//! that `bulkhead ctl restart` replaces) starts again with the same resources, the same
//! uid (the launcher holds the VM's uid for the VM's life), the same network namespace and
//! the same limits. Each start gets a new vhost-user socket pair (the vmm is handed its
//! end in `Reconnect`) and a new control socket; a vsock process also a new broker pair.
//!
//! The resource fds are shared open files: a restarted `bulkhead-blk` writes to the same
//! open image (the one a disk swap put in, see [`Recipe::replace_fd`]), a restarted
//! console accepts on the same listening socket.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{confinement, spawn_as, Confinement, DeviceProcess, LaunchError, Needs};

/// How to start (again) the process of one device.
#[derive(Debug)]
pub struct Recipe {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    needs: Needs,
    inherit_stdin: bool,
    fds: Vec<OwnedFd>,
    /// For `bulkhead-vsock`: the `uds` path; each start gets a new broker pair (its end
    /// last among the fds) and a broker thread answering on it.
    broker: Option<PathBuf>,
    /// Starts so far (the first is 0); a later start's jail (and cgroup) is named with it.
    generation: u32,
}

impl Recipe {
    /// The recipe of device `name`'s process: `cmd`'s program and arguments, `fds` (kept:
    /// each start gets copies), standard input inherited when `inherit_stdin`.
    pub(super) fn new(
        name: &str,
        cmd: &Command,
        fds: Vec<OwnedFd>,
        inherit_stdin: bool,
        needs: Needs,
    ) -> Recipe {
        Recipe {
            name: name.to_owned(),
            program: PathBuf::from(cmd.get_program()),
            args: cmd.get_args().map(OsString::from).collect(),
            needs,
            inherit_stdin,
            fds,
            broker: None,
            generation: 0,
        }
    }

    /// For `bulkhead-vsock`: each start gets a broker for `uds` (see [`super::vsock`]).
    pub(super) fn with_broker(mut self, uds: &Path) -> Recipe {
        self.broker = Some(uds.to_owned());
        self
    }

    /// The program started.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Starts `program` from now on (`ctl restart --exec`).
    pub fn set_program(&mut self, program: PathBuf) {
        self.program = program;
    }

    /// Replaces resource fd `index` (0: the first after the socket, fd 4 in the process)
    /// from now on, e.g. the image a disk swap put in. False if there is no such fd.
    pub fn replace_fd(&mut self, index: usize, fd: OwnedFd) -> bool {
        match self.fds.get_mut(index) {
            Some(slot) => {
                *slot = fd;
                true
            }
            None => false,
        }
    }

    /// Raises the file size limit later starts get (a larger image swapped in).
    pub fn allow_file_size(&mut self, size: u64) {
        if let Some(limit) = self.needs.max_file_size.as_mut() {
            *limit = (*limit).max(size);
        }
    }

    /// The jail (and cgroup) name of the next start: the device's name, then
    /// `NAME-rN` for the N-th restart, so that a cgroup the kernel has not let go of yet
    /// cannot be in the way.
    fn jail_name(&self) -> String {
        match self.generation {
            0 => self.name.clone(),
            n => format!("{}-r{n}", self.name),
        }
    }

    /// Starts a process from the recipe, which stays here (move it into the process with
    /// [`DeviceProcess::keep_recipe`]). Returns the process and the vmm's end of its new
    /// vhost-user socket.
    pub fn start(&mut self) -> Result<(DeviceProcess, UnixStream), LaunchError> {
        self.start_with(&confinement())
    }

    /// [`Recipe::start`] under confinement `c`.
    fn start_with(&mut self, c: &Confinement) -> Result<(DeviceProcess, UnixStream), LaunchError> {
        let pair = UnixStream::pair().map_err(|e| self.spawn_err(e))?;
        self.start_on(c, pair)
    }

    fn spawn_err(&self, source: std::io::Error) -> LaunchError {
        LaunchError::Spawn {
            name: self.name.clone(),
            program: self.program.display().to_string(),
            source,
        }
    }

    /// [`Recipe::start_with`] on the vhost-user socket pair `(ours, theirs)`.
    fn start_on(
        &mut self,
        c: &Confinement,
        pair: (UnixStream, UnixStream),
    ) -> Result<(DeviceProcess, UnixStream), LaunchError> {
        let spawn_err = |source| LaunchError::Spawn {
            name: self.name.clone(),
            program: self.program.display().to_string(),
            source,
        };
        let mut fds = self
            .fds
            .iter()
            .map(OwnedFd::try_clone)
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(spawn_err)?;
        let broker = match &self.broker {
            Some(uds) => {
                let (ours, theirs) = UnixStream::pair().map_err(spawn_err)?;
                fds.push(theirs.into());
                Some((ours, uds.clone()))
            }
            None => None,
        };
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        let started = spawn_as(
            &self.name,
            &self.jail_name(),
            cmd,
            fds,
            self.inherit_stdin,
            &self.needs,
            c,
            pair,
        )?;
        self.generation += 1;
        if let Some((ours, uds)) = broker {
            super::vsock::start_broker(&self.name, ours, uds).map_err(spawn_err)?;
        }
        Ok(started)
    }
}

/// The first process of a device, planned but not started yet: its recipe and the
/// backend's end of its vhost-user socket pair (the vmm's end is handed out by [`plan`]),
/// so that the vmm can be started before it. Dropped unstarted, the vmm's end reads the
/// end of the connection.
#[derive(Debug)]
pub struct Planned {
    recipe: Recipe,
    pair: (UnixStream, UnixStream),
}

impl Planned {
    /// Starts the process, which keeps the recipe.
    pub fn launch(self) -> Result<DeviceProcess, LaunchError> {
        self.launch_with(&confinement())
    }

    fn launch_with(self, c: &Confinement) -> Result<DeviceProcess, LaunchError> {
        let Planned { mut recipe, pair } = self;
        let (mut process, _) = recipe.start_on(c, pair)?;
        process.keep_recipe(recipe);
        Ok(process)
    }
}

/// Plans the first process of `recipe`: makes its socket pair; returns the plan and the
/// vmm's end of the socket (a clone of the one the plan keeps).
pub(super) fn plan(recipe: Recipe) -> Result<(Planned, UnixStream), LaunchError> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| recipe.spawn_err(e))?;
    let vmm_end = ours.try_clone().map_err(|e| recipe.spawn_err(e))?;
    Ok((
        Planned {
            recipe,
            pair: (ours, theirs),
        },
        vmm_end,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::time::Duration;

    fn plain() -> Confinement {
        Confinement {
            jail: false,
            ..Confinement::default()
        }
    }

    fn wait(process: &mut DeviceProcess) -> std::process::ExitStatus {
        loop {
            if let Some(s) = process.exited() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn every_start_gets_the_same_resources_and_a_new_socket() {
        let path = std::env::temp_dir().join(format!("bulkhead-recipe-{}", std::process::id()));
        let mut file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let mut cmd = Command::new("sh");
        // Each copy appends a line to the file it got as fd 4 and checks fd 3 is a socket.
        cmd.args(["-c", "test -S /proc/self/fd/3 && echo started >&4"]);
        let fd = OwnedFd::from(file.try_clone().unwrap());
        let mut recipe = Recipe::new("test7", &cmd, vec![fd], false, Needs::default());
        let mut sockets = Vec::new();
        for _ in 0..3 {
            let (mut p, s) = recipe.start_with(&plain()).unwrap();
            assert!(wait(&mut p).success());
            sockets.push(s);
        }
        assert_eq!(recipe.generation, 3);
        assert_eq!(recipe.jail_name(), "test7-r3");
        let mut text = String::new();
        file.rewind().unwrap();
        file.read_to_string(&mut text).unwrap();
        assert_eq!(text, "started\nstarted\nstarted\n");
        // The recipe's copy is a dup of the same open file: still usable here.
        file.write_all(b"x").unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_planned_process_gets_the_socket_handed_out_before_it_started() {
        use std::io::{BufRead, BufReader};
        // The process answers on fd 3 once started; the vmm's end was handed out before.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo served >&3"]);
        let recipe = Recipe::new("test9", &cmd, vec![], false, Needs::default());
        let (planned, vmm_end) = plan(recipe).unwrap();
        vmm_end
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut p = planned.launch_with(&plain()).unwrap();
        assert!(wait(&mut p).success());
        assert!(p.take_recipe().is_some(), "the process keeps its recipe");
        let mut line = String::new();
        BufReader::new(&vmm_end).read_line(&mut line).unwrap();
        assert_eq!(line, "served\n");
        // Everything else of the pair is closed: the vmm reads the end.
        assert_eq!(BufReader::new(&vmm_end).read_line(&mut line).unwrap(), 0);

        // A plan dropped unstarted (a device before it failed): the vmm reads the end.
        let recipe = Recipe::new("test10", &cmd, vec![], false, Needs::default());
        let (planned, vmm_end) = plan(recipe).unwrap();
        drop(planned);
        let mut buf = [0u8; 1];
        assert_eq!((&vmm_end).read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn a_replaced_fd_and_program_are_used_from_then_on() {
        let mut recipe = Recipe::new(
            "test8",
            &Command::new("/nonexistent/prog"),
            vec![OwnedFd::from(std::fs::File::open("/dev/null").unwrap())],
            false,
            Needs {
                max_file_size: Some(10),
                ..Needs::default()
            },
        );
        assert!(
            recipe.start_with(&plain()).is_err(),
            "a missing program is refused"
        );
        let zero = OwnedFd::from(std::fs::File::open("/dev/zero").unwrap());
        assert!(recipe.replace_fd(0, zero));
        assert!(!recipe.replace_fd(1, OwnedFd::from(std::fs::File::open("/").unwrap())));
        recipe.set_program("sh".into());
        recipe.args = vec!["-c".into(), "test -c /proc/self/fd/4".into()];
        let (mut p, _s) = recipe.start_with(&plain()).unwrap();
        assert!(wait(&mut p).success());
        recipe.allow_file_size(4);
        assert_eq!(recipe.needs.max_file_size, Some(10));
        recipe.allow_file_size(100);
        assert_eq!(recipe.needs.max_file_size, Some(100));
    }
}
