//! `bulkhead-jailer`: starts one program confined, in the manner of Firecracker's jailer,
//! for people who wrap their own processes. It clones the program into new namespaces and a
//! cgroup, keeps only the given fds, clears the environment, and either finishes the jail
//! itself and executes a static binary (`--static`, the default) or lets the program finish
//! it (`--finish-by-program`: the program is given `--jail-uid --jail-gid --landlock`).
//! It waits for the program, forwards SIGTERM/SIGINT/SIGHUP to it (SIGKILL if it has not
//! ended 5 s later: as pid 1 of its namespace it ignores signals it does not handle),
//! removes its cgroup and exits with its status (128 + the signal number on a signal).
//!
//! Given Firecracker's jailer's command line (a flag only that jailer has, such as
//! `--chroot-base-dir` or `--cgroup`, or an `--exec-file` named `bulkhead-firecracker` or
//! `firecracker`), it keeps Firecracker's jailer's contract instead and starts
//! `bulkhead-firecracker` in a chroot directory ([`fc_jailer`], the README's section).

use std::ffi::OsString;
use std::os::fd::{AsFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use bulkhead::jail::{
    exit_code, CgroupLimits, ChildFailure, ChildStep, Finish, Jail, JailedChild, NetNs, Rlimits,
    SpawnErrorKind,
};
use bulkhead_seccomp::jail::{finish_jail, JailArgs};
use bulkhead_seccomp::landlock::LandlockMode;
use clap::Parser;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;

#[path = "../fc_jailer/mod.rs"]
mod fc_jailer;
/// The part of `bulkhead-firecracker` that both binaries read: the jail's environment.
#[allow(dead_code)]
#[path = "../firecracker/jailed.rs"]
mod jailed;
mod firecracker {
    pub(crate) use super::jailed;
}

/// How long a forwarded signal may take to end the program before SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// Start a program confined: namespaces, empty root, unprivileged identity, cgroup, rlimits.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Names the jail (its cgroup is bulkhead/ID): letters, digits, '-', '_'.
    #[arg(long)]
    id: String,
    /// The program to execute.
    #[arg(long)]
    exec_file: PathBuf,
    /// The unprivileged uid to run as.
    #[arg(long)]
    uid: u32,
    /// The unprivileged gid to run as.
    #[arg(long)]
    gid: u32,
    /// Join this network namespace (e.g. /run/netns/NAME) instead of a new empty one.
    #[arg(long, conflicts_with = "host_netns")]
    netns: Option<PathBuf>,
    /// A new empty network namespace (the default).
    #[arg(long, conflicts_with_all = ["netns", "host_netns"])]
    new_netns: bool,
    /// Stay in the host's network namespace.
    #[arg(long)]
    host_netns: bool,
    /// Memory limit of the cgroup, in bytes.
    #[arg(long, value_name = "BYTES")]
    cgroup_memory: Option<u64>,
    /// CPU limit of the cgroup, in CPUs (e.g. 0.5).
    #[arg(long, value_name = "CPUS")]
    cgroup_cpus: Option<f64>,
    /// Limit on processes and threads in the cgroup.
    #[arg(long, value_name = "N")]
    pids_max: Option<u64>,
    /// RLIMIT_NOFILE.
    #[arg(long, value_name = "N")]
    rlimit_nofile: Option<u64>,
    /// RLIMIT_FSIZE, in bytes.
    #[arg(long, value_name = "BYTES")]
    rlimit_fsize: Option<u64>,
    /// RLIMIT_NPROC.
    #[arg(long, value_name = "N")]
    rlimit_nproc: Option<u64>,
    /// Keep this fd (same number) besides 0, 1 and 2; repeatable.
    #[arg(long, value_name = "FD")]
    keep_fd: Vec<RawFd>,
    /// Set this variable (NAME=VALUE) in the otherwise empty environment; repeatable.
    #[arg(long, value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// The program is a static binary: the jailer pivots, drops identity and applies
    /// landlock itself, then executes it from an fd (the default).
    #[arg(long = "static", conflicts_with = "finish_by_program")]
    static_binary: bool,
    /// The program finishes its own jail once its resources are open (bulkhead's own
    /// binaries); it is given --jail-uid, --jail-gid and --landlock before ARGS.
    #[arg(long)]
    finish_by_program: bool,
    /// Landlock: enforce (deny all filesystem access) or off.
    #[arg(long, value_enum, default_value_t = LandlockMode::Enforce)]
    landlock: LandlockMode,
    /// Arguments of the program.
    #[arg(last = true)]
    args: Vec<OsString>,
}

/// `--selftest-finish`: a program that finishes its own jail, for the jailer's tests.
#[derive(Debug, Parser)]
struct Selftest {
    #[arg(long)]
    selftest_finish: bool,
    #[command(flatten)]
    jail: JailArgs,
    /// Seconds to stay alive after reporting, to be inspected from outside.
    #[arg(long, default_value_t = 5)]
    sleep: u64,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    if fc_jailer::wanted(&argv) {
        std::process::exit(fc_jailer::main(&argv));
    }
    // Only before "--": after it, the flag is an argument for the program.
    let selftest = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--selftest-finish");
    let result = if selftest {
        selftest_main()
    } else {
        jailer_main()
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // Each error names its cause in its own message (the crate convention).
            eprintln!("bulkhead-jailer: {e}");
            std::process::exit(1);
        }
    }
}

fn jailer_main() -> anyhow::Result<i32> {
    let cli = Cli::parse();
    let mut jail = Jail::new(&cli.id, cli.uid, cli.gid);
    jail.netns = match (&cli.netns, cli.host_netns) {
        (Some(path), _) => NetNs::Join(path.clone()),
        (None, true) => NetNs::Host,
        (None, false) => NetNs::New,
    };
    jail.cgroup = CgroupLimits {
        memory_max: cli.cgroup_memory,
        cpus: cli.cgroup_cpus,
        pids_max: cli.pids_max,
    };
    jail.rlimits = Rlimits {
        nofile: cli.rlimit_nofile,
        fsize: cli.rlimit_fsize,
        nproc: cli.rlimit_nproc,
    };
    jail.finish = if cli.finish_by_program {
        Finish::ByProgram
    } else {
        Finish::InChild
    };
    jail.landlock = cli.landlock;
    let mut args: Vec<OsString> = Vec::new();
    if jail.finish == Finish::ByProgram {
        args.extend(jail.finish_flags().into_iter().map(OsString::from));
    }
    args.extend(cli.args.iter().cloned());
    let mut fds: Vec<(RawFd, RawFd)> = vec![(0, 0), (1, 1), (2, 2)];
    fds.extend(cli.keep_fd.iter().map(|&fd| (fd, fd)));
    let mut env = Vec::new();
    for var in &cli.env {
        let Some((name, value)) = var.split_once('=') else {
            bail!("--env {var}: expected NAME=VALUE");
        };
        env.push((OsString::from(name), OsString::from(value)));
    }
    // Blocked before the clone (the child restores its mask), read from a signalfd.
    let signals = block_signals().map_err(|e| anyhow!("blocking SIGTERM/SIGINT/SIGHUP: {e}"))?;
    let mut child = jail
        .spawn(&cli.exec_file, &args, &fds, &env)
        .map_err(|e| {
            let dynamic = matches!(
                e.kind,
                SpawnErrorKind::Child(ChildFailure::Child {
                    step: ChildStep::Exec,
                    errno: libc::ENOENT
                })
            );
            let hint = if dynamic && jail.finish == Finish::InChild {
                " (in the empty root only a statically linked program can start; a dynamically linked one must finish its own jail: --finish-by-program)"
            } else {
                ""
            };
            anyhow!("{e}{hint}")
        })?;
    match child.cgroup_version() {
        Some(version) => log::info!(
            "jail {}: cgroup {version:?} {:?}",
            cli.id,
            child.cgroup_paths()
        ),
        None => log::info!("jail {}: no cgroup", cli.id),
    }
    let status = supervise(&mut child, &signals)?;
    child.cleanup()?;
    Ok(exit_code(status))
}

/// Waits for the child, forwarding signals; SIGKILL after [`GRACE`].
fn supervise(
    child: &mut JailedChild,
    signals: &SignalFd,
) -> anyhow::Result<std::process::ExitStatus> {
    let mut deadline: Option<Instant> = None;
    loop {
        let mut polls = [
            PollFd::new(child.pidfd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        let timeout = deadline.map_or(PollTimeout::NONE, |d| {
            PollTimeout::try_from(d.saturating_duration_since(Instant::now()))
                .unwrap_or(PollTimeout::MAX)
        });
        match nix::poll::poll(&mut polls, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => bail!("polling the jailed process: {}", std::io::Error::from(e)),
        }
        let ready = |p: &PollFd| p.revents().is_none_or(|r| !r.is_empty());
        let (exited, signalled) = (ready(&polls[0]), ready(&polls[1]));
        if exited {
            return Ok(child.wait()?);
        }
        if signalled {
            let signal = read_signal(signals)?;
            log::info!("forwarding signal {signal} to pid {}", child.pid());
            child.kill(signal)?;
            deadline.get_or_insert(Instant::now() + GRACE);
        } else if deadline.is_some_and(|d| Instant::now() >= d) {
            log::warn!(
                "pid {} still runs {GRACE:?} after a signal: SIGKILL",
                child.pid()
            );
            child.kill(libc::SIGKILL)?;
            deadline = None;
        }
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the (single-threaded) jailer, so that the signalfd
/// returned receives them.
fn block_signals() -> std::io::Result<SignalFd> {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(signal);
    }
    set.thread_block()?;
    Ok(SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC)?)
}

fn read_signal(signals: &SignalFd) -> anyhow::Result<i32> {
    match signals.read_signal() {
        Ok(Some(info)) => Ok(info.ssi_signo as i32),
        Ok(None) => bail!("reading the signalfd: nothing to read"),
        Err(e) => bail!("reading the signalfd: {}", std::io::Error::from(e)),
    }
}

/// Opens /etc (as a directory fd) while it can, finishes the jail, then reports what
/// opening /etc/passwd (empty root) and `passwd` under the early fd (landlock) give, and
/// stays alive to be inspected.
fn selftest_main() -> anyhow::Result<i32> {
    let cli = Selftest::parse();
    let etc =
        std::fs::File::open("/etc").map_err(|e| anyhow!("opening /etc before the jail: {e}"))?;
    finish_jail(&cli.jail)?;
    println!(
        "path: {}",
        outcome(std::fs::File::open("/etc/passwd").map(drop))
    );
    let under_fd = nix::fcntl::openat(
        &etc,
        c"passwd",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(drop)
    .map_err(std::io::Error::from);
    println!("under-fd: {}", outcome(under_fd));
    std::thread::sleep(Duration::from_secs(cli.sleep));
    Ok(0)
}

fn outcome(result: std::io::Result<()>) -> &'static str {
    match result.map_err(|e| e.raw_os_error()) {
        Ok(()) => "opened",
        Err(Some(libc::EACCES)) => "EACCES",
        Err(Some(libc::ENOENT)) => "ENOENT",
        Err(Some(libc::EPERM)) => "EPERM",
        Err(_) => "other error",
    }
}
