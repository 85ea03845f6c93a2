//! `bulkhead`: the command-line front of the launcher.
//!
//! `bulkhead run` boots a microVM, `bulkhead check` reports whether this host can run one,
//! and `bulkhead bench` measures start-up time and memory overhead.

mod api;
mod bench;
mod check;
mod cli;
mod config_file;
mod ctl;
mod demo;
mod devices;
mod disk_arg;
mod external;
mod external_arg;
mod identity;
mod ifconfig;
mod launch;
mod liveness;
mod net_arg;
mod netns;
mod open_as;
mod restart;
mod run;
mod run_dir;
mod safe_open;
mod stale;
mod stop_signals;
mod supervise;
mod tap;
mod untrusted;
mod vsock_arg;

use clap::Parser;

fn main() {
    // Every log call site limited: what the VM's processes report must not flood the logs.
    if let Err(e) = bulkhead_ratelimit::init_env_logger() {
        eprintln!("bulkhead: setting up logging: {e}");
    }
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut demo = None;
    if argv.get(1).is_some_and(|a| a == "run") {
        let rest = argv.split_off(2);
        let rest = if let Some(transport) = demo::wanted(&rest) {
            match demo::Demo::create() {
                Ok((d, flags)) => {
                    demo = Some(d);
                    flags.into_iter().map(Into::into).chain(transport).collect()
                }
                Err(e) => fail(&e.to_string()),
            }
        } else {
            config_file::expand(rest).unwrap_or_else(|e| fail(&e))
        };
        argv.extend(rest);
    }
    let cli = cli::Cli::parse_from(argv);
    let code = match cli.command {
        cli::Command::Run(args) => run::main(args),
        cli::Command::Ctl(args) => ctl::main(args),
        cli::Command::Check => check::main(),
        cli::Command::Bench(args) => bench::main(args),
    };
    drop(demo);
    std::process::exit(code);
}

/// Reports an error found before the command line could be parsed.
fn fail(msg: &str) -> ! {
    eprintln!("bulkhead: error: {msg}");
    std::process::exit(2);
}
