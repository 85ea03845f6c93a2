//! Firecracker's logger and metrics sinks (`PUT /logger`, `PUT /metrics`, `--log-path`,
//! `--metrics-path`): a file or FIFO opened for appending without blocking (a FIFO nobody
//! reads does not stall the API), lines in Firecracker's shape.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Levels, most severe first (Firecracker's names; `Warn` is taken for `Warning`).
const LEVELS: &[&str] = &["Off", "Error", "Warning", "Info", "Debug", "Trace"];

/// The level's canonical name, or Firecracker's refusal.
pub fn check_level(level: &str) -> Result<String, String> {
    let l = if level.eq_ignore_ascii_case("warn") {
        "Warning"
    } else {
        level
    };
    LEVELS
        .iter()
        .find(|n| n.eq_ignore_ascii_case(l))
        .map(|n| (*n).to_owned())
        .ok_or_else(|| format!("Invalid log level: {level}"))
}

/// Opens `path` (a file or a FIFO) for appending; read-write, so that a FIFO whose reader
/// has not opened it yet is opened all the same (as Firecracker opens it).
pub fn open_sink(path: &Path) -> Result<File, String> {
    // Under Firecracker's jailer the path is inside the chroot.
    let path = &super::jailed::resolve(path);
    std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(false)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("Failed to open target file: {e} ({})", path.display()))
}

/// The logger.
pub struct Logger {
    file: Option<File>,
    id: String,
    level: usize,
    show_level: bool,
    show_origin: bool,
}

impl Logger {
    /// A logger writing nowhere until configured.
    pub fn new(id: &str) -> Logger {
        Logger {
            file: None,
            id: id.to_owned(),
            level: 3,
            show_level: false,
            show_origin: false,
        }
    }

    /// Configures it (`PUT /logger` or the command line).
    pub fn configure(
        &mut self,
        path: Option<&Path>,
        level: Option<&str>,
        show_level: bool,
        show_origin: bool,
    ) -> Result<(), String> {
        let level = match level {
            Some(l) => {
                let name = check_level(l)?;
                LEVELS.iter().position(|n| *n == name).unwrap_or(3)
            }
            None => self.level,
        };
        if let Some(path) = path {
            self.file = Some(open_sink(path)?);
        }
        self.level = level;
        self.show_level = show_level;
        self.show_origin = show_origin;
        Ok(())
    }

    /// Writes a line at `level` (an index into the levels) if it is enabled.
    fn write(&mut self, level: usize, origin: &str, msg: &str) {
        if level > self.level {
            return;
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let mut line = format!("{} [{}:fc_api", timestamp(), self.id);
        if self.show_level {
            line.push(':');
            line.push_str(&LEVELS[level].to_uppercase());
        }
        if self.show_origin {
            line.push(':');
            line.push_str(origin);
        }
        line.push_str("] ");
        line.push_str(&crate::untrusted::sanitize(msg));
        line.push('\n');
        // A full FIFO drops the line rather than stalling the API.
        let _ = file.write_all(line.as_bytes());
    }

    /// An informational line.
    pub fn info(&mut self, origin: &str, msg: &str) {
        self.write(3, origin, msg);
    }

    /// An error line.
    pub fn error(&mut self, origin: &str, msg: &str) {
        self.write(1, origin, msg);
    }
}

/// Counters `FlushMetrics` writes, one JSON object per line.
#[derive(Default)]
pub struct Metrics {
    file: Option<File>,
    /// Requests answered with success.
    pub requests_ok: u64,
    /// Requests refused.
    pub requests_failed: u64,
}

impl Metrics {
    /// Configures the sink.
    pub fn configure(&mut self, path: &Path) -> Result<(), String> {
        self.file = Some(open_sink(path)?);
        Ok(())
    }

    /// Writes one line of counters.
    pub fn flush(&mut self, state: &str) -> Result<(), String> {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let line = serde_json::json!({
            "utc_timestamp_ms": ms as u64,
            "api_server": { "requests_ok": self.requests_ok, "requests_failed": self.requests_failed },
            "vmm": { "state": state },
        });
        let file = self
            .file
            .as_mut()
            .ok_or("Metrics system not initialized: configure it with PUT /metrics")?;
        file.write_all(format!("{line}\n").as_bytes())
            .map_err(|e| format!("Failed to write metrics: {e}"))
    }
}

fn timestamp() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}
