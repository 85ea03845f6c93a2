//! `bulkhead-firecracker`'s command line: Firecracker's flags, parsed as Firecracker parses
//! them (`--name value`, never `--name=value`; a value may not start with `--`; a flag
//! given twice, an unknown flag or a stray word is refused, exit status 153).

use std::path::PathBuf;

/// Firecracker's exit status for a command line it refuses.
pub const EXIT_ARG_PARSING: i32 = 153;
/// Firecracker's exit status for a configuration it refuses.
pub const EXIT_BAD_CONFIGURATION: i32 = 152;
/// Firecracker's default API socket.
pub const DEFAULT_API_SOCK: &str = "/run/firecracker.socket";
/// Firecracker's default instance id.
pub const DEFAULT_ID: &str = "anonymous-instance";
/// Firecracker's default bound on a request body, in bytes.
pub const DEFAULT_MAX_PAYLOAD: usize = 51200;

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FcArgs {
    /// `--api-sock`.
    pub api_sock: PathBuf,
    /// `--id`.
    pub id: String,
    /// `--config-file`.
    pub config_file: Option<PathBuf>,
    /// `--no-api` (needs `--config-file`).
    pub no_api: bool,
    /// `--level`.
    pub level: Option<String>,
    /// `--log-path`.
    pub log_path: Option<PathBuf>,
    /// `--show-level`.
    pub show_level: bool,
    /// `--show-log-origin`.
    pub show_log_origin: bool,
    /// `--metrics-path`.
    pub metrics_path: Option<PathBuf>,
    /// `--boot-timer` (accepted; bulkhead has no boot-timer device: see the README).
    pub boot_timer: bool,
    /// `--metadata` (MMDS content: refused, MMDS is not supported yet).
    pub metadata: Option<PathBuf>,
    /// `--http-api-max-payload-size`.
    pub max_payload: usize,
    /// `--enable-pci`: the devices on virtio-pci (`bulkhead run --transport pci`).
    pub enable_pci: bool,
    /// `--help`.
    pub help: bool,
    /// `--version`.
    pub version: bool,
}

/// Flags that take a value.
const VALUED: &[&str] = &[
    "api-sock",
    "id",
    "config-file",
    "level",
    "log-path",
    "metrics-path",
    "metadata",
    "http-api-max-payload-size",
    "module",
    "seccomp-filter",
    "start-time-us",
    "start-time-cpu-us",
    "parent-cpu-time-us",
    "mmds-size-limit",
];
/// Flags that take none.
const SWITCHES: &[&str] = &[
    "no-api",
    "show-level",
    "show-log-origin",
    "boot-timer",
    "no-seccomp",
    "enable-pci",
    "help",
    "version",
];

/// Parses `args` (without the program name); the error is Firecracker's wording.
pub fn parse(args: &[String]) -> Result<FcArgs, String> {
    let mut out = FcArgs {
        api_sock: DEFAULT_API_SOCK.into(),
        id: DEFAULT_ID.into(),
        config_file: None,
        no_api: false,
        level: None,
        log_path: None,
        show_level: false,
        show_log_origin: false,
        metrics_path: None,
        boot_timer: false,
        metadata: None,
        max_payload: DEFAULT_MAX_PAYLOAD,
        enable_pci: false,
        help: false,
        version: false,
    };
    // --help and --version win over everything else, as in Firecracker.
    if args.iter().any(|a| a == "--help") {
        out.help = true;
        return Ok(out);
    }
    if args.iter().any(|a| a == "--version") {
        out.version = true;
        return Ok(out);
    }
    let mut seen: Vec<String> = Vec::new();
    let mut it = args.iter().peekable();
    while let Some(arg) = it.next() {
        let unexpected = || {
            format!("Found argument '{arg}' which wasn't expected, or isn't valid in this context.")
        };
        let name = arg.strip_prefix("--").ok_or_else(unexpected)?;
        if seen.iter().any(|s| s == name) {
            return Err(format!(
                "The argument '{name}' was provided more than once."
            ));
        }
        if SWITCHES.contains(&name) {
            seen.push(name.to_owned());
            match name {
                "no-api" => out.no_api = true,
                "show-level" => out.show_level = true,
                "show-log-origin" => out.show_log_origin = true,
                "boot-timer" => out.boot_timer = true,
                "enable-pci" => out.enable_pci = true,
                _ => {}
            }
            continue;
        }
        if !VALUED.contains(&name) {
            return Err(format!(
                "Found argument '{name}' which wasn't expected, or isn't valid in this context."
            ));
        }
        let value = it.next_if(|v| !v.starts_with("--")).ok_or_else(|| {
            format!("The argument '{name}' requires a value, but none was supplied")
        })?;
        seen.push(name.to_owned());
        match name {
            "api-sock" => out.api_sock = value.into(),
            "id" => out.id = check_id(value)?,
            "config-file" => out.config_file = Some(value.into()),
            "level" => out.level = Some(super::log::check_level(value)?),
            "log-path" => out.log_path = Some(value.into()),
            "metrics-path" => out.metrics_path = Some(value.into()),
            "metadata" => out.metadata = Some(value.into()),
            "http-api-max-payload-size" => {
                out.max_payload = value
                    .parse()
                    .map_err(|_| format!("Invalid value for http-api-max-payload-size: {value}"))?
            }
            // Accepted for compatibility; see the README for what each means here.
            _ => {}
        }
    }
    if out.no_api && out.config_file.is_none() {
        return Err("Argument 'config-file' required by 'no-api'.".into());
    }
    Ok(out)
}

/// Firecracker's instance ids: 1 to 64 alphanumerics or hyphens.
fn check_id(id: &str) -> Result<String, String> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(format!("Invalid instance ID: {id}"));
    }
    Ok(id.to_owned())
}

/// The help text.
pub const HELP: &str = "bulkhead-firecracker: Firecracker's API, command line and config file \
over bulkhead's confined device processes.

optional arguments:
  --api-sock <api-sock>        Path to the Unix socket of the API. [default: \"/run/firecracker.socket\"]
  --id <id>                    MicroVM unique identifier. [default: \"anonymous-instance\"]
  --config-file <config-file>  Path to a file with the microVM configuration in JSON.
  --no-api                     Start the microVM from --config-file without an API socket.
  --level <level>              Logger level (Error, Warning, Info, Debug, Trace, Off).
  --log-path <log-path>        Path to a fifo or file for the log.
  --show-level                 Print the level in log lines.
  --show-log-origin            Print the file and line of log lines' origin.
  --metrics-path <path>        Path to a fifo or file for metrics.
  --boot-timer                 Accepted (bulkhead has no boot-timer device).
  --metadata <metadata>        MMDS contents: refused (no MMDS yet).
  --http-api-max-payload-size <n>  Largest request body in bytes. [default: \"51200\"]
  --enable-pci                 The devices on virtio-pci instead of virtio-mmio.
  --help, --version

Exit status: the VM's (bulkhead run's) when it stops by itself; 128 + the signal on
SIGTERM, SIGINT or SIGHUP (143, 130, 129), once the VM is stopped and the API socket
removed; 153 for a refused command line, 152 for a refused config file.
";

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[&str]) -> Result<FcArgs, String> {
        parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn firecrackers_flags_parse() {
        let a = p(&[
            "--api-sock",
            "/tmp/a.sock",
            "--id",
            "vm-1",
            "--level",
            "Debug",
            "--show-level",
            "--show-log-origin",
            "--boot-timer",
            "--log-path",
            "/tmp/l",
        ])
        .unwrap();
        assert_eq!(a.api_sock, PathBuf::from("/tmp/a.sock"));
        assert_eq!(a.id, "vm-1");
        assert!(a.show_level && a.show_log_origin && a.boot_timer && !a.no_api);
        assert_eq!(p(&[]).unwrap().api_sock, PathBuf::from(DEFAULT_API_SOCK));
    }

    #[test]
    fn what_firecracker_refuses_is_refused() {
        for bad in [
            &["--bogus"][..],
            &["api-sock"],
            &["--api-sock=/x"],
            &["--api-sock"],
            &["--api-sock", "--id", "x"],
            &["--id", "a", "--id", "b"],
            &["--no-api"],
            &["--id", "bad id!"],
            &["--level", "loud"],
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
        let e = p(&["--bogus"]).unwrap_err();
        assert!(e.contains("'bogus' which wasn't expected"), "{e}");
        assert!(p(&["--no-api", "--config-file", "/c.json"]).unwrap().no_api);
        assert!(p(&["--enable-pci"]).unwrap().enable_pci);
    }
}
