//! Starting a device process or the vmm: its fds placed, its stderr relayed, its control
//! socket made, then through the jailer (namespaces, cgroup, rlimits, no environment) or,
//! with `--jail off`, as a plain child in a session of its own that dies with the launcher.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;

use bulkhead_protocol::LauncherChannel;

use super::plain::PlainChild;
use super::{
    confine, confinement, stderr, trace, Child, Confinement, DeviceProcess, LaunchError, Needs,
    FIRST_EXTRA_FD, MAX_PASSED_FDS, READY_TIMEOUT, SOCKET_FD,
};

/// Starts `cmd` as the process of device `name` (or the vmm), confined as [`confine`]
/// says and as `needs` asks: its end of a new socket pair becomes fd 3 (`SOCKET_FD`), `fds`
/// become 4, 5, ... in order; standard input is inherited when `inherit_stdin`, else
/// /dev/null; it runs in a session of its own and dies with the launcher. Returns the
/// process and the launcher's end of the socket.
pub(crate) fn spawn(
    name: &str,
    cmd: Command,
    fds: Vec<OwnedFd>,
    inherit_stdin: bool,
    needs: &Needs,
) -> Result<(DeviceProcess, UnixStream), LaunchError> {
    spawn_with(name, cmd, fds, inherit_stdin, needs, &confinement())
}

/// [`spawn`] with the given confinement.
pub(super) fn spawn_with(
    name: &str,
    cmd: Command,
    fds: Vec<OwnedFd>,
    inherit_stdin: bool,
    needs: &Needs,
    c: &Confinement,
) -> Result<(DeviceProcess, UnixStream), LaunchError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let pair = UnixStream::pair().map_err(|source| LaunchError::Spawn {
        name: name.to_owned(),
        program,
        source,
    })?;
    spawn_as(name, name, cmd, fds, inherit_stdin, needs, c, pair)
}

/// [`spawn_with`] in a jail (and cgroup) named after `jail_name` (a restarted process's
/// is not its first one's), on the vhost-user socket pair `(ours, theirs)` (made by the
/// caller: a device's may be made before its process, so that the vmm can start first).
#[allow(clippy::too_many_arguments)]
pub(super) fn spawn_as(
    name: &str,
    jail_name: &str,
    cmd: Command,
    fds: Vec<OwnedFd>,
    inherit_stdin: bool,
    needs: &Needs,
    c: &Confinement,
    (ours, theirs): (UnixStream, UnixStream),
) -> Result<(DeviceProcess, UnixStream), LaunchError> {
    let program = Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let spawn_err = |source| LaunchError::Spawn {
        name: name.to_owned(),
        program: program.clone(),
        source,
    };
    if fds.len() + 1 > MAX_PASSED_FDS {
        return Err(spawn_err(std::io::Error::from_raw_os_error(libc::E2BIG)));
    }
    let mut pairs = vec![(theirs.as_raw_fd(), SOCKET_FD)];
    pairs.extend(
        fds.iter()
            .zip(FIRST_EXTRA_FD..)
            .map(|(f, to)| (f.as_raw_fd(), to)),
    );
    let (errors, heard) = stderr::relay(name).map_err(spawn_err)?;
    let mut cmd = cmd;
    // Every program of ours takes the launcher's seccomp mode.
    cmd.args([
        "--seccomp",
        &bulkhead_seccomp::mode::children_mode().to_string(),
    ]);
    let mut control = None;
    if needs.reports {
        let (launcher_end, process_end) = UnixStream::pair().map_err(spawn_err)?;
        let fd = FIRST_EXTRA_FD + pairs.len() as RawFd - 1;
        cmd.args(["--control-fd", &fd.to_string()]);
        pairs.push((process_end.as_raw_fd(), fd));
        control = Some((launcher_end, process_end));
    }
    let child = if c.jail {
        spawn_jailed(
            name,
            jail_name,
            &cmd,
            &pairs,
            inherit_stdin,
            &errors,
            needs,
            c,
        )?
    } else {
        spawn_plain(name, cmd, &pairs, inherit_stdin, &errors, c, spawn_err)?
    };
    drop(errors);
    let control = match control {
        Some((launcher_end, process_end)) => {
            drop(process_end);
            let channel = LauncherChannel::new(launcher_end, name);
            channel
                .set_timeouts(Some(READY_TIMEOUT), Some(READY_TIMEOUT))
                .map_err(|e| spawn_err(std::io::Error::other(e.to_string())))?;
            Some(channel)
        }
        None => None,
    };
    drop(theirs);
    drop(fds);
    let process = DeviceProcess {
        name: name.to_owned(),
        program,
        reported: false,
        child,
        heard,
        control,
        ready: false,
        shaken: false,
        watched: true,
        settled: false,
        file_size_limit: if c.jail { needs.max_file_size } else { None },
        recipe: None,
    };
    match &process.child {
        Child::Jailed(c) => trace::spawned(name, &c.timings()),
        Child::Plain(_) => trace::mark(name, "executing"),
    }
    log::info!(
        "{name}: started {} (pid {}){}",
        process.program,
        process.pid(),
        if c.jail {
            ", jailed"
        } else {
            ", not jailed (--jail off)"
        }
    );
    Ok((process, ours))
}

/// The only environment a jailed process gets from the launcher's: logging, the seccomp
/// self-test trigger of the tests, and the start-up trace switch.
const PASSED_ENV: [&str; 3] = ["RUST_LOG", "BULKHEAD_SECCOMP_SELFTEST", trace::ENV];

/// Through the jailer: namespaces, cgroup, rlimits, only the given fds, no environment but
/// [`PASSED_ENV`]; the program finishes its jail itself (the flags from
/// `Jail::finish_flags`).
#[allow(clippy::too_many_arguments)]
fn spawn_jailed(
    name: &str,
    jail_name: &str,
    cmd: &Command,
    pairs: &[(RawFd, RawFd)],
    inherit_stdin: bool,
    errors: &OwnedFd,
    needs: &Needs,
    c: &Confinement,
) -> Result<Child, LaunchError> {
    let jail = confine::jail_for(jail_name, needs, c);
    let mut args: Vec<OsString> = cmd.get_args().map(OsString::from).collect();
    args.extend(jail.finish_flags().into_iter().map(OsString::from));
    let (_null, stdio) = standard_fds(name, inherit_stdin, errors)?;
    let mut all = stdio.to_vec();
    all.extend_from_slice(pairs);
    let env: Vec<(OsString, OsString)> = PASSED_ENV
        .iter()
        .filter_map(|name| std::env::var_os(name).map(|v| (OsString::from(name), v)))
        .collect();
    // Not waiting for the exec: confirmed by `DeviceProcess::executed` (the next process
    // starts meanwhile).
    let child = jail
        .start(Path::new(cmd.get_program()), &args, &all, &env)
        .map_err(|e| LaunchError::Jail {
            name: name.to_owned(),
            source: Box::new(e),
        })?;
    Ok(Child::Jailed(child))
}

/// Plainly (`--jail off`): the fds placed, a session of its own, the parent-death signal
/// ([`PlainChild::start`]).
fn spawn_plain(
    name: &str,
    mut cmd: Command,
    pairs: &[(RawFd, RawFd)],
    inherit_stdin: bool,
    errors: &OwnedFd,
    c: &Confinement,
    spawn_err: impl Fn(std::io::Error) -> LaunchError,
) -> Result<Child, LaunchError> {
    cmd.arg("--landlock").arg(c.landlock.as_flag());
    let (_null, stdio) = standard_fds(name, inherit_stdin, errors)?;
    // The launcher's own stdin (when inherited) and stdout stay as they are.
    let mut all: Vec<_> = stdio.into_iter().filter(|(from, to)| from != to).collect();
    all.extend_from_slice(pairs);
    Ok(Child::Plain(
        PlainChild::start(&cmd, &all).map_err(spawn_err)?,
    ))
}

/// Stdin, stdout and stderr as `(from, to)` pairs.
type StdioPairs = [(RawFd, RawFd); 3];

/// A process's standard fds as `(from, to)` pairs: stdin from /dev/null (the file is
/// returned, to be kept open until the process starts) unless `inherit_stdin`, stdout the
/// launcher's, stderr `errors` (the relay).
fn standard_fds(
    name: &str,
    inherit_stdin: bool,
    errors: &OwnedFd,
) -> Result<(Option<File>, StdioPairs), LaunchError> {
    let null = if inherit_stdin {
        None
    } else {
        Some(
            File::open("/dev/null").map_err(|source| LaunchError::OpenDisk {
                what: "standard input",
                name: name.to_owned(),
                path: "/dev/null".into(),
                source,
            })?,
        )
    };
    let stdin = null.as_ref().map_or(0, |f| f.as_raw_fd());
    Ok((null, [(stdin, 0), (1, 1), (errors.as_raw_fd(), 2)]))
}

// The plain child's fds (the passed ones, the socket, the control socket, stdin and
// stderr) are placed by `sys::place_fds`, which takes that many.
const _: () = assert!(MAX_PASSED_FDS + 4 <= bulkhead::sys::MAX_PLACED_FDS);
