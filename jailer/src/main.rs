//! `bulkhead`: the command-line front of the launcher.
//!
//! `bulkhead run` boots a microVM, `bulkhead check` reports whether this host can run one,
//! and `bulkhead bench` measures start-up time and memory overhead.

mod bench;
mod check;
mod cli;
mod devices;
mod disk_arg;
mod launch;
mod net_arg;
mod netns;
mod run;
mod supervise;
mod tap;

use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    let cli = cli::Cli::parse();
    let code = match cli.command {
        cli::Command::Run(args) => run::main(args),
        cli::Command::Check => check::main(),
        cli::Command::Bench(args) => bench::main(args),
    };
    std::process::exit(code);
}
