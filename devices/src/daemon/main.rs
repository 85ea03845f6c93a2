//! The `main` every backend shares: parse its arguments, set up logging, answer
//! `--print-capabilities`, run, and turn the outcome into an exit status (0 when the
//! frontend disconnected or a termination signal came, or for `--help`, `--version`,
//! `--print-capabilities`; 1 with one line on stderr for any error).

use std::ffi::OsString;
use std::fmt::Display;

use super::thread_name::{arm_self_test, SelfTest};
use super::Ended;
use super::{BackendArgs, LauncherArgs};

/// What a backend tells [`backend_main`] about itself.
pub struct Backend<'a> {
    /// Program name for messages (`bulkhead-blk`).
    pub program: &'a str,
    /// Its `--print-capabilities` JSON.
    pub capabilities: &'a str,
}

/// Runs a backend whose arguments are `A` with `args` (the first is the program name):
/// answers `--print-capabilities`, makes the launcher's flags the process's settings (the
/// seccomp mode the threads read as they confine themselves, the jail's last steps
/// [`super::serve`] applies once the resources are open, the control socket), and `run`
/// does the rest.
pub fn backend_main<A, E, I, T>(
    backend: Backend<'_>,
    args: I,
    run: impl FnOnce(A) -> Result<Ended, E>,
) -> i32
where
    A: BackendArgs,
    E: Display,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match A::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 1 } else { 0 };
        }
    };
    // A second initialisation (several daemons in one test process) is harmless.
    // Every log call site limited: a guest (or the frontend) must not flood the host's logs.
    let _ = bulkhead_ratelimit::init_env_logger();
    if args.common().print_capabilities {
        println!("{}", backend.capabilities);
        return 0;
    }
    let LauncherArgs {
        control_fd,
        seccomp,
        jail,
        seccomp_selftest,
    } = args.common().launcher.clone();
    if let Some(fd) = control_fd {
        if let Err(e) = super::control::connect(fd) {
            eprintln!("{}: {e}", backend.program);
            return 1;
        }
    }
    super::set_once(args.common().once);
    bulkhead_seccomp::mode::set_process_mode(seccomp);
    super::confine::set_jail(jail);
    arm_self_test(seccomp_selftest.or_else(self_test_from_env));
    let code = match run(args) {
        Ok(ended) => {
            log::info!("exiting: {ended:?}");
            0
        }
        Err(e) => {
            eprintln!("{}: {e}", backend.program);
            super::control::error(e.to_string());
            1
        }
    };
    super::control::finish();
    super::control::exited(code);
    code
}

/// Test only: `BULKHEAD_SECCOMP_SELFTEST=main|worker|worker-narrowed` does what
/// `--seccomp-selftest` does,
/// for backends started by the launcher (which passes no test flags).
fn self_test_from_env() -> Option<SelfTest> {
    match std::env::var_os(SELF_TEST_ENV)?.to_str()? {
        "main" => Some(SelfTest::Main),
        "worker" => Some(SelfTest::Worker),
        "worker-narrowed" => Some(SelfTest::WorkerNarrowed),
        _ => None,
    }
}

/// The environment variable [`self_test_from_env`] reads.
pub const SELF_TEST_ENV: &str = "BULKHEAD_SECCOMP_SELFTEST";
