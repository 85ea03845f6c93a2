//! A started process's standard error goes through the launcher: each line is copied to
//! the launcher's own stderr as it comes, prefixed with the process's name (`disk0| `) and
//! with its control characters defused, within a byte budget per process ([`LIMITS`]); a
//! seccomp report line (the process's last words before SIGSYS) is kept so the launcher
//! can say which call was refused. A compromised process can neither drive the user's
//! terminal, nor pass its text off as the launcher's (whose lines start `bulkhead: `), nor
//! fill the user's screen or log.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_ratelimit::TokenBucket;
use bulkhead_seccomp::report::{self, Violation};

use crate::untrusted;

/// What a process said on stderr that the launcher wants to know.
#[derive(Clone, Default)]
pub struct Heard {
    violation: Arc<Mutex<Option<Violation>>>,
    ended: Arc<AtomicBool>,
}

impl Heard {
    /// The seccomp violation the process reported, if it did; waits up to `wait` for the
    /// relay to reach the end of what a dead process wrote.
    pub fn violation(&self, wait: Duration) -> Option<Violation> {
        let deadline = Instant::now() + wait;
        while !self.ended.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.violation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Longest line kept whole; a process (perhaps compromised) writing more without a newline
/// has it passed on in pieces, each a line of its own, so the launcher's memory stays
/// bounded.
const MAX_LINE: usize = 4096;

/// How much of a process's output is printed: `burst` bytes at once, then `per_sec` a
/// second, and `total` bytes over its whole life. Bytes are counted as printed (escaped,
/// with the prefix).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes printed at once before the rate applies.
    pub burst: u64,
    /// Bytes a second after that.
    pub per_sec: u64,
    /// Bytes printed in all; past it the output is read and discarded.
    pub total: u64,
}

/// The limits of every process of the VM: its start-up and a few failures print whole,
/// debug logging (`RUST_LOG=debug`) keeps most of its lines, and a process that floods is
/// cut to a trickle and then off.
pub const LIMITS: Limits = Limits {
    burst: 1 << 20,
    per_sec: 16 << 10,
    total: 16 << 20,
};

/// Copies `input` to `output` line by line (pieces of at most [`MAX_LINE`] bytes), each
/// line prefixed with `name| ` and its control characters defused (`untrusted::line`),
/// within `limits`; keeps the last seccomp report seen (also in lines not printed). Reads
/// to the end whatever it prints, so the process never blocks on its stderr.
fn relay_lines(
    input: impl Read,
    mut output: impl Write,
    heard: &Heard,
    name: &str,
    limits: Limits,
) {
    let prefix = format!("{name}| ");
    let mut reader = BufReader::new(input);
    let mut line = Vec::with_capacity(256);
    let mut budget = TokenBucket::new(limits.burst, limits.per_sec, Instant::now());
    let mut printed = 0u64;
    let mut cut_off = false;
    let mut dropped = (0u64, 0u64); // lines, bytes
    loop {
        line.clear();
        let got = (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line);
        match got {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if let Some(v) = report::parse(&String::from_utf8_lossy(&line)) {
            *heard.violation.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
        }
        if cut_off {
            continue;
        }
        let text = untrusted::line(&prefix, &line);
        let size = text.len() as u64;
        if printed.saturating_add(size) > limits.total {
            let _ = writeln!(
                output,
                "bulkhead: output of {name} suppressed after {printed} bytes"
            );
            cut_off = true;
            continue;
        }
        if !budget.take(size, Instant::now()) {
            dropped = (dropped.0 + 1, dropped.1 + line.len() as u64);
            continue;
        }
        if dropped.0 > 0 {
            printed += say_dropped(&mut output, name, dropped, limits);
            dropped = (0, 0);
        }
        let _ = output.write_all(text.as_bytes());
        printed += size;
    }
    if dropped.0 > 0 && !cut_off {
        say_dropped(&mut output, name, dropped, limits);
    }
}

/// Says how much of `name`'s output the rate limit dropped; returns the bytes printed.
fn say_dropped(output: &mut impl Write, name: &str, (lines, bytes): (u64, u64), l: Limits) -> u64 {
    let note = format!(
        "bulkhead: {lines} lines ({bytes} bytes) of output of {name} suppressed (more than {} KiB at once, then {} KiB/s)\n",
        l.burst >> 10,
        l.per_sec >> 10
    );
    let _ = output.write_all(note.as_bytes());
    note.len() as u64
}

/// A pipe for a process's stderr: give it the write end; the read end is relayed to the
/// launcher's stderr within [`LIMITS`] by a thread named after the process until the
/// process (and every copy of the write end) is gone.
pub fn relay(name: &str) -> std::io::Result<(OwnedFd, Heard)> {
    relay_into(name, std::io::stderr(), LIMITS)
}

/// [`relay`] to `output` within `limits`.
fn relay_into(
    name: &str,
    output: impl Write + Send + 'static,
    limits: Limits,
) -> std::io::Result<(OwnedFd, Heard)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let heard = Heard::default();
    let keep = heard.clone();
    let name = name.to_owned();
    std::thread::Builder::new()
        .name(format!("stderr-{name}"))
        .spawn(move || {
            relay_lines(std::fs::File::from(read), output, &keep, &name, limits);
            keep.ended.store(true, Ordering::Release);
        })?;
    Ok((write, heard))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn relayed(input: &[u8], limits: Limits) -> (String, Heard) {
        let heard = Heard::default();
        let mut out = Vec::new();
        relay_lines(input, &mut out, &heard, "disk0", limits);
        (String::from_utf8(out).expect("UTF-8 out"), heard)
    }

    #[test]
    fn a_report_line_is_kept_and_an_endless_line_is_cut() {
        let report = "seccomp: bulkhead-blk thread blk-q0 (role blk-worker) made syscall 101 (ptrace) outside its allowlist; killing the process\n";
        let (out, heard) = relayed(report.as_bytes(), LIMITS);
        assert_eq!(out, format!("disk0| {report}"), "passed on, prefixed");
        let v = heard.violation(Duration::ZERO).expect("report kept");
        assert_eq!((v.nr, v.thread.as_str()), (101, "blk-q0"));

        // 1 MiB without a newline goes through whole (with room for it), in lines of
        // MAX_LINE bytes, and is no report.
        let flood = vec![b'x'; 1 << 20];
        let roomy = Limits {
            burst: 2 << 20,
            ..LIMITS
        };
        let (out, heard) = relayed(&flood, roomy);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), (1 << 20) / MAX_LINE);
        assert!(lines
            .iter()
            .all(|l| *l == format!("disk0| {}", "x".repeat(MAX_LINE))));
        assert!(heard.violation(Duration::ZERO).is_none());
    }

    #[test]
    fn forged_text_cannot_pass_for_the_launchers_own() {
        let hostile =
            b"\x1b]0;pwned\x07\x1b[2J\x1b[H\rbulkhead: VM finished cleanly\n\xc2\x9b31mred\n";
        let (out, _) = relayed(hostile, LIMITS);
        assert!(!out.bytes().any(|b| b == 0x1b || b == 0x07 || b == b'\r'));
        assert!(!out.contains('\u{9b}'));
        assert_eq!(
            out,
            "disk0| \\x1b]0;pwned\\x07\\x1b[2J\\x1b[H\\x0dbulkhead: VM finished cleanly\ndisk0| \\x9b31mred\n"
        );
        assert!(!out.lines().any(|l| l.starts_with("bulkhead:")));
    }

    #[test]
    fn the_rate_limit_drops_lines_and_says_how_many() {
        let limits = Limits {
            burst: 100,
            per_sec: 1,
            total: 1 << 20,
        };
        let input = "0123456789\n".repeat(1000);
        let (out, _) = relayed(input.as_bytes(), limits);
        let lines: Vec<&str> = out.lines().collect();
        // "disk0| 0123456789\n" is 18 bytes: five fit the burst of 100.
        assert_eq!(lines[..5], ["disk0| 0123456789"; 5]);
        assert_eq!(
            lines[5..],
            ["bulkhead: 995 lines (10945 bytes) of output of disk0 suppressed (more than 0 KiB at once, then 0 KiB/s)"]
        );
    }

    #[test]
    fn past_the_total_one_line_says_so_and_the_rest_is_drained() {
        let limits = Limits {
            burst: 1 << 30,
            per_sec: 1 << 30,
            total: 1000,
        };
        let mut input = "0123456789\n".repeat(1000);
        // A report after the cut is still heard.
        input.push_str("seccomp: bulkhead-blk thread blk-q0 (role blk-worker) made syscall 101 (ptrace) outside its allowlist; killing the process\n");
        let (out, heard) = relayed(input.as_bytes(), limits);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1000 / 18 + 1);
        assert_eq!(
            lines.last().copied(),
            Some("bulkhead: output of disk0 suppressed after 990 bytes")
        );
        assert!(out.len() <= 1000 + 100);
        assert!(heard.violation(Duration::ZERO).is_some());
    }

    /// The relay on a real process, as the launcher runs it: a child writes an OSC title,
    /// a screen clear, a forged launcher line and 50 MB; what comes out is defused and
    /// bounded, and the child is never blocked (it ends on its own, quickly).
    #[test]
    fn a_hostile_process_is_defused_bounded_and_never_blocked() {
        let out = Shared::default();
        let (write, heard) = relay_into("vmm", out.clone(), LIMITS).unwrap();
        let script = r#"printf '\033]0;pwned\007\033[2J\033[Hbulkhead: VM finished cleanly\n' >&2
            head -c 50000000 /dev/zero | tr '\000' x >&2
            printf '\nthe end\n' >&2"#;
        let started = Instant::now();
        let mut child = Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(write))
            .spawn()
            .unwrap();
        let status = child.wait().unwrap();
        let took = started.elapsed();
        assert!(status.success(), "{status:?}");
        assert!(
            took < Duration::from_secs(60),
            "the child was held up: {took:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !heard.ended.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(heard.ended.load(Ordering::Acquire), "relay still reading");
        let bytes = out.0.lock().unwrap().clone();
        eprintln!(
            "relayed {} bytes of 50 MB; the child took {took:?}",
            bytes.len()
        );
        assert!(
            !bytes.contains(&0x1b) && !bytes.contains(&0x07),
            "raw escapes passed"
        );
        // The burst, what the rate added while the child ran, the notes.
        let bound = LIMITS.burst + LIMITS.per_sec * (took.as_secs() + 2) + 4096;
        assert!(
            (bytes.len() as u64) < bound,
            "{} bytes relayed of 50 MB, bound {bound}",
            bytes.len()
        );
        let text = String::from_utf8(bytes).unwrap();
        assert!(text
            .starts_with("vmm| \\x1b]0;pwned\\x07\\x1b[2J\\x1b[Hbulkhead: VM finished cleanly\n"));
        assert!(
            text.lines()
                .filter(|l| l.starts_with("bulkhead: "))
                .all(|l| l.contains("of output of vmm suppressed")),
            "only the launcher's notes start like the launcher's lines"
        );
        assert!(text.contains("of output of vmm suppressed"), "no note");
        assert!(
            text.lines()
                .all(|l| l.starts_with("vmm| ") || l.starts_with("bulkhead: ")),
            "every line is attributed"
        );
    }
}
