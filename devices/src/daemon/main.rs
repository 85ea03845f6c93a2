//! The `main` every backend shares: parse its arguments, set up logging, answer
//! `--print-capabilities`, run, and turn the outcome into an exit status (0 when the
//! frontend disconnected or a termination signal came, or for `--help`, `--version`,
//! `--print-capabilities`; 1 with one line on stderr for any error).

use std::ffi::OsString;
use std::fmt::Display;

use clap::Parser;

use super::Ended;

/// What a backend tells [`backend_main`] about itself.
pub struct Backend<'a> {
    /// Program name for messages (`bulkhead-blk`).
    pub program: &'a str,
    /// Its `--print-capabilities` JSON.
    pub capabilities: &'a str,
}

/// Runs a backend whose arguments are `A` with `args` (the first is the program name):
/// `wants_capabilities` says whether `--print-capabilities` was given, `run` does the rest.
pub fn backend_main<A, E, I, T>(
    backend: Backend<'_>,
    args: I,
    wants_capabilities: impl FnOnce(&A) -> bool,
    run: impl FnOnce(A) -> Result<Ended, E>,
) -> i32
where
    A: Parser,
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
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .try_init();
    if wants_capabilities(&args) {
        println!("{}", backend.capabilities);
        return 0;
    }
    match run(args) {
        Ok(ended) => {
            log::info!("exiting: {ended:?}");
            0
        }
        Err(e) => {
            eprintln!("{}: {e}", backend.program);
            1
        }
    }
}
