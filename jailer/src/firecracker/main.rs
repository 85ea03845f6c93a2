//! What `bulkhead-firecracker` does, in order: its command line, the logger, the config
//! file (which starts the VM at once, as in Firecracker), the API socket and its loop.
//! The process exits when the VM does, with `bulkhead run`'s status, or on SIGTERM, SIGINT
//! or SIGHUP with 128 + the signal once the VM is stopped (see [`super::stop`]); either way
//! the API socket and the private directory are removed.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use super::cli::{self, EXIT_ARG_PARSING, EXIT_BAD_CONFIGURATION};
use super::instance::Instance;
use super::model::FullConfig;
use super::stop::Stop;

/// Runs the program; returns its exit status.
pub fn main() -> i32 {
    // First: a stop signal from here on waits its turn (see `stop`) instead of killing the
    // process with its private directory and API socket left behind.
    let stop = match Stop::catch() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bulkhead-firecracker: error: cannot catch termination signals: {e}");
            return 1;
        }
    };
    let argv: Vec<String> = match std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect()
    {
        Ok(v) => v,
        Err(a) => {
            eprintln!("Arguments parsing error: argument {a:?} is not UTF-8.");
            return EXIT_ARG_PARSING;
        }
    };
    let args = match cli::parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("Arguments parsing error: {e}\n\nFor more information try --help.");
            return EXIT_ARG_PARSING;
        }
    };
    if args.help {
        print!("{}", cli::HELP);
        return 0;
    }
    if args.version {
        println!(
            "Firecracker v{} (bulkhead-firecracker {})",
            super::routes::FIRECRACKER_API_VERSION,
            env!("CARGO_PKG_VERSION")
        );
        return 0;
    }
    if args.metadata.is_some() {
        eprintln!("bulkhead-firecracker: error: --metadata: MMDS is not supported yet");
        return EXIT_BAD_CONFIGURATION;
    }
    let dir = match private_dir(&args.id) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("bulkhead-firecracker: error: {e}");
            return 1;
        }
    };
    let code = run(&args, &dir, stop);
    let _ = std::fs::remove_dir_all(&dir.0);
    code
}

/// A directory of this process's own, removed at exit (the launcher's API socket).
struct PrivateDir(PathBuf);

fn private_dir(id: &str) -> Result<PrivateDir, String> {
    let dir =
        std::env::temp_dir().join(format!("bulkhead-firecracker-{id}-{}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    // Under Firecracker's jailer the launcher binds its socket here as the jail identity
    // (`--open-as`): the directory is that identity's.
    if let Some((uid, gid)) = super::jailed::open_as().and_then(|v| {
        let (u, g) = v.split_once(':')?;
        Some((u.parse().ok()?, g.parse().ok()?))
    }) {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .map_err(|e| format!("changing owner of {}: {e}", dir.display()))?;
    }
    Ok(PrivateDir(dir))
}

fn run(args: &cli::FcArgs, dir: &PrivateDir, stop: Stop) -> i32 {
    let mut vm = Instance::new(&args.id, dir.0.join("ctl.sock"));
    vm.stop = stop;
    vm.pci = args.enable_pci;
    if args.log_path.is_some() || args.level.is_some() {
        if let Err(e) = vm.logger.configure(
            args.log_path.as_deref(),
            args.level.as_deref(),
            args.show_level,
            args.show_log_origin,
        ) {
            eprintln!("bulkhead-firecracker: error: logger: {e}");
            return EXIT_BAD_CONFIGURATION;
        }
    }
    if let Some(path) = &args.metrics_path {
        if let Err(e) = vm.metrics.configure(path) {
            eprintln!("bulkhead-firecracker: error: metrics: {e}");
            return EXIT_BAD_CONFIGURATION;
        }
    }
    if args.boot_timer {
        vm.logger.info(
            "main",
            "--boot-timer: bulkhead has no boot-timer device; time to the first guest line is \
             measured by `bulkhead bench` instead",
        );
    }
    vm.logger
        .info("main", "Running Firecracker's API over bulkhead");
    // The API socket before the VM, as Firecracker (a client may wait for the file).
    let listener = if args.no_api {
        None
    } else {
        match bind(&args.api_sock) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("bulkhead-firecracker: error: {e}");
                return 1;
            }
        }
    };
    if let Some(file) = &args.config_file {
        let started = read_config(file)
            .and_then(|c| vm.configure(c))
            .and_then(|()| vm.start());
        if let Err(e) = started {
            if let Some(signal) = vm.stop.requested() {
                // Stopped while starting: the launcher is already stopped.
                remove_socket(&args.api_sock, listener.is_some());
                return super::stop::stop(&mut vm, signal);
            }
            eprintln!(
                "bulkhead-firecracker: error: config file {}: {e}",
                file.display()
            );
            vm.logger.error("main", &e);
            remove_socket(&args.api_sock, listener.is_some());
            return EXIT_BAD_CONFIGURATION;
        }
    }
    let code = match &listener {
        Some(l) => super::server::serve(l, &mut vm, args.max_payload),
        None => wait(&mut vm),
    };
    remove_socket(&args.api_sock, listener.is_some());
    code
}

fn wait(vm: &mut Instance) -> i32 {
    loop {
        if let Some(code) = vm.launcher.as_mut().and_then(|l| l.exited()) {
            return code;
        }
        if let Some(signal) = vm.stop.requested() {
            return super::stop::stop(vm, signal);
        }
        vm.stop.wait(std::time::Duration::from_millis(50));
    }
}

fn read_config(path: &Path) -> Result<FullConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("not a Firecracker configuration: {e}"))
}

fn bind(path: &Path) -> Result<UnixListener, String> {
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("API socket {}: binding: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("API socket {}: {e}", path.display()))?;
    Ok(listener)
}

fn remove_socket(path: &Path, ours: bool) {
    if ours {
        let _ = std::fs::remove_file(path);
    }
}
