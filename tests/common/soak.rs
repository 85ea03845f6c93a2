//! The test guest's soak scenarios (`blk-soak`, `net-soak`, `console-soak`) from the host:
//! a VM running one ([`SoakVm`]), the UDP echo `net-soak` talks to ([`Echo`]), and the
//! checks of what the guest left behind: the disk image ([`check_blk_image`]), the console
//! output ([`check_console_lines`]), the PASS line's counts ([`pass_counts`]) and the stall
//! lines ([`stalls`]). The formats are tests/guest/src/soak.rs's.

use super::disk::Image;
use super::transport::{bulkhead_run, Transport};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Which soak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Blk,
    Net,
    Console,
}

impl Kind {
    /// The scenario's name.
    pub fn scenario(self) -> &'static str {
        match self {
            Kind::Blk => "blk-soak",
            Kind::Net => "net-soak",
            Kind::Console => "console-soak",
        }
    }

    /// The launcher's name of the device, as `ctl status` and `ctl restart` take it.
    pub fn device(self) -> &'static str {
        match self {
            Kind::Blk => "disk0",
            Kind::Net => "net0",
            Kind::Console => "console0",
        }
    }

    /// The device process's program.
    pub fn program(self) -> &'static str {
        match self {
            Kind::Blk => "bulkhead-blk",
            Kind::Net => "bulkhead-net",
            Kind::Console => "bulkhead-console",
        }
    }
}

/// The host's end of `net-soak`: host-ip and guest-ip of `--net auto`, and the port.
pub const HOST_IP: &str = "10.0.2.1";
pub const GUEST_IP: &str = "10.0.2.2";
pub const SOAK_PORT: u16 = 7000;
/// `max-size=` of `console-soak`'s file. The console file stops at its max-size (16 MiB by
/// default), cut mid-line at exactly that byte, by design (`tests/output_limits.rs`); the
/// soak writes about 20 bytes a line at over 100,000 lines a second here (1.5 to 1.9
/// million lines, 32 to 40 MB, in the 15 s of `tests/restart.rs`), so under the default
/// every such soak ended with a cut line (`console-soak 844416` whole, then `consol`).
/// The file is removed when the test ends.
pub const CONSOLE_MAX_SIZE: &str = "1G";
/// What the console process says when its file reached its max-size.
pub const CONSOLE_FULL: &str = "the console file reached its max-size";
/// Sectors `blk-soak` writes over on the images here (min(capacity, 2048)).
pub const AREA: u64 = 2048;
/// The image: twice the area, so the half after it must stay untouched.
pub const IMAGE_BYTES: usize = 2 * 2048 * 512;

/// A VM running one soak, its output read as it comes.
pub struct SoakVm {
    pub kind: Kind,
    pub transport: Transport,
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every stdout line so far (those [`wait_line`](Self::wait_line) took too).
    pub stdout: Vec<String>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    pub image: Option<Image>,
    pub console_log: Option<PathBuf>,
    /// `--net auto`'s namespace.
    pub ns: Option<String>,
    pub echo: Option<Echo>,
    pub api_socket: PathBuf,
}

impl SoakVm {
    /// `bulkhead run --transport T` with the soak's device (its `--disk`/`--net`/`--console`
    /// value followed by `device_extra`, e.g. `,restart=off`), an API socket, `args`, and
    /// the guest running `kind`'s soak for `soak_ms`. For net, the echo is started in the
    /// namespace as soon as it exists.
    pub fn start(
        kind: Kind,
        t: Transport,
        soak_ms: u64,
        device_extra: &str,
        args: &[&str],
    ) -> SoakVm {
        SoakVm::start_then(kind, t, soak_ms, device_extra, args, "")
    }

    /// [`start`](Self::start), the guest running the scenarios `then` (`,a,b`) after the
    /// soak.
    pub fn start_then(
        kind: Kind,
        t: Transport,
        soak_ms: u64,
        device_extra: &str,
        args: &[&str],
        then: &str,
    ) -> SoakVm {
        let tag = format!("soak-{}-{t}-{}", kind.scenario(), unique());
        let api_socket = std::env::temp_dir().join(format!("bulkhead-{tag}.api"));
        let _ = std::fs::remove_file(&api_socket);
        let mut cmd = bulkhead_run(t);
        let (mut image, mut console_log) = (None, None);
        match kind {
            Kind::Blk => {
                let img = Image::new(&tag, IMAGE_BYTES);
                cmd.arg("--disk").arg(img.disk_arg(device_extra));
                image = Some(img);
            }
            Kind::Net => {
                cmd.arg("--net").arg(format!(
                    "auto,host-ip={HOST_IP}/24,guest-ip={GUEST_IP}/24{device_extra}"
                ));
            }
            Kind::Console => {
                let log = std::env::temp_dir().join(format!("bulkhead-{tag}.log"));
                let _ = std::fs::remove_file(&log);
                cmd.arg("--console").arg(format!(
                    "file={},max-size={CONSOLE_MAX_SIZE}{device_extra}",
                    log.display()
                ));
                console_log = Some(log);
            }
        }
        cmd.arg("--api-socket").arg(&api_socket).args(args).args([
            "--cmdline",
            &format!(
                "bulkhead.test={}{then} bulkhead.soak-ms={soak_ms} bulkhead.net.ip={GUEST_IP}/24 \
                 bulkhead.net.peer={HOST_IP} bulkhead.net.soak-port={SOAK_PORT}",
                kind.scenario()
            ),
        ]);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting bulkhead");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().expect("piped");
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut vm = SoakVm {
            kind,
            transport: t,
            child,
            lines,
            stdout: Vec::new(),
            stderr,
            stderr_reader: Some(stderr_reader),
            image,
            console_log,
            ns: None,
            echo: None,
            api_socket,
        };
        if kind == Kind::Net {
            let ns = format!("bulkhead-{}-net0", vm.child.id());
            let end = Instant::now() + Duration::from_secs(30);
            while !std::path::Path::new("/run/netns").join(&ns).exists() {
                if Instant::now() > end || vm.child.try_wait().ok().flatten().is_some() {
                    panic!("no namespace {ns}; stderr:\n{}", vm.stderr());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            vm.echo = Some(Echo::start(&ns, SOAK_PORT));
            vm.ns = Some(ns);
        }
        vm
    }

    /// The launcher's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the launcher wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits (at most `bound`) for a stdout line containing `needle`; panics with the output
    /// so far.
    pub fn wait_line(&mut self, needle: &str, bound: Duration) -> String {
        let end = Instant::now() + bound;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!(
            "no line with {needle:?}; stdout:\n{}\nstderr:\n{}",
            self.stdout.join("\n"),
            self.stderr()
        );
    }

    /// Takes the stdout lines that came so far (into [`stdout`](Self::stdout)).
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.stdout.push(line);
        }
    }

    /// Waits for the soak to start (its first line: `... soak` / `soaking`).
    pub fn wait_started(&mut self) {
        let needle = match self.kind {
            Kind::Blk => "blk0 soak area=",
            Kind::Net => "net0 soaking peer=",
            Kind::Console => "console0 soak ms=",
        };
        self.wait_line(needle, Duration::from_secs(60));
    }

    /// The device process's pid, from `bulkhead ctl status` (`process: <name> (<program>)
    /// pid N running`); `None` if no such line (yet).
    pub fn device_pid(&self) -> Option<u32> {
        device_pid(&self.ctl(&["status"]).0, self.kind.device())
    }

    /// `bulkhead ctl --api-socket S ARGS`: (stdout, stderr, success).
    pub fn ctl(&self, args: &[&str]) -> (String, String, bool) {
        let out = super::bulkhead()
            .arg("ctl")
            .arg("--api-socket")
            .arg(&self.api_socket)
            .args(args)
            .output()
            .expect("running bulkhead ctl");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.success(),
        )
    }

    /// Waits for the launcher to end (at most `bound`): its exit code (`None`: killed at
    /// the bound), all of stdout and stderr.
    pub fn finish(mut self, bound: Duration) -> Finished {
        let status = super::wait_until(&mut self.child, Instant::now() + bound);
        // The reader thread ends at EOF, which comes when the launcher's pipes close.
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => self.stdout.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() > end => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        if let Some(r) = self.stderr_reader.take() {
            let _ = r.join();
        }
        let echoed = self.echo.take().map(Echo::stop);
        Finished {
            code: status.and_then(|s| s.code()),
            stdout: self.stdout.join("\n"),
            stderr: self.stderr(),
            image: self.image.take(),
            console: self
                .console_log
                .as_ref()
                .map(|p| std::fs::read_to_string(p).unwrap_or_default()),
            echoed,
            ns: self.ns.clone(),
        }
    }
}

impl Drop for SoakVm {
    /// A failed assertion must not leave the VM running: kill the launcher (by pid).
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(log) = &self.console_log {
            let _ = std::fs::remove_file(log);
        }
        let _ = std::fs::remove_file(&self.api_socket);
    }
}

/// What a soak VM left.
pub struct Finished {
    /// Exit code; `None` if it had to be killed.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub image: Option<Image>,
    /// The console file's content.
    pub console: Option<String>,
    /// Datagrams the host echoed.
    pub echoed: Option<u64>,
    pub ns: Option<String>,
}

impl Finished {
    /// Everything, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "exit code {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// Checks the console file after `console-soak` ([`check_console_lines`]), first that
    /// it was not cut at its max-size (which would fail the check on a cut last line).
    pub fn console_lines(&self, expected: u64) -> Result<ConsoleLines, String> {
        if self.stderr.contains(CONSOLE_FULL) {
            return Err(format!(
                "{CONSOLE_FULL} ({CONSOLE_MAX_SIZE}): the soak wrote more than the test allows \
                 for; raise CONSOLE_MAX_SIZE"
            ));
        }
        check_console_lines(self.console.as_deref().unwrap_or_default(), expected)
    }

    /// The counts of `PASS <scenario> k=v ...`; panics with the output if there is none.
    pub fn pass(&self, kind: Kind) -> HashMap<String, u64> {
        pass_counts(&self.stdout, kind.scenario())
            .unwrap_or_else(|| panic!("no PASS {}:\n{}", kind.scenario(), self.dump()))
    }
}

/// `pid N` of `process: <device> (...) pid N ...` in `ctl status` output.
pub fn device_pid(status: &str, device: &str) -> Option<u32> {
    let prefix = format!("process: {device} (");
    status
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.split(" pid ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
}

/// The counts of the guest's `PASS <scenario> k=v ...` line.
pub fn pass_counts(stdout: &str, scenario: &str) -> Option<HashMap<String, u64>> {
    let prefix = format!("bulkhead-guest: PASS {scenario} ");
    let line = stdout.lines().find(|l| l.starts_with(&prefix))?;
    line[prefix.len()..]
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The guest's stall lines of `scenario`, in ms.
pub fn stalls(stdout: &str, scenario: &str) -> Vec<u64> {
    let prefix = format!("bulkhead-guest: {scenario}: stall ");
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| rest.strip_suffix(" ms"))
        .filter_map(|ms| ms.parse().ok())
        .collect()
}

/// Byte `i` of the sector `blk-soak`'s write `n` puts at `sector`.
pub fn blk_byte(n: u64, sector: u64, i: usize) -> u8 {
    match i {
        0..8 => b"BHSOAK\0\0"[i],
        8..16 => n.to_le_bytes()[i - 8],
        16..24 => sector.to_le_bytes()[i - 16],
        _ => n.wrapping_mul(31).wrapping_add(i as u64) as u8,
    }
}

/// Checks the image after `blk-soak`: for n in max(1, last - area + 1)..=last, sector
/// `(n - 1) % area` holds write n; every byte after the area is as it was in `before`.
pub fn check_blk_image(now: &[u8], before: &[u8], last: u64, area: u64) -> Result<(), String> {
    if now.len() != before.len() {
        return Err(format!(
            "the image changed size: {} -> {}",
            before.len(),
            now.len()
        ));
    }
    for n in last.saturating_sub(area).saturating_add(1).max(1)..=last {
        let sector = (n - 1) % area;
        let at = (sector * 512) as usize;
        let got = now
            .get(at..at + 512)
            .ok_or(format!("sector {sector} is past the image's end"))?;
        if let Some(i) = (0..512).find(|&i| got[i] != blk_byte(n, sector, i)) {
            let mut held = [0u8; 8];
            held.copy_from_slice(&got[8..16]);
            return Err(format!(
                "sector {sector} does not hold write {n} (byte {i} is {:#04x}, expected {:#04x}; \
                 its bytes 8..16 say write {})",
                got[i],
                blk_byte(n, sector, i),
                u64::from_le_bytes(held)
            ));
        }
    }
    let end = (area * 512) as usize;
    if let Some(o) = (end..now.len()).find(|&o| now[o] != before[o]) {
        return Err(format!(
            "byte {o} (sector {}) outside the area changed",
            o / 512
        ));
    }
    Ok(())
}

/// How the console output went: lines, and lines written again after a restart.
#[derive(Debug, PartialEq, Eq)]
pub struct ConsoleLines {
    /// Distinct lines (0..lines).
    pub lines: u64,
    /// Lines that came again (a restarted backend rewriting what was in flight).
    pub repeated: u64,
}

/// Most lines a repeat may go back: the guest's transmit buffers (64).
pub const MAX_REPEAT: u64 = 64;

/// Checks `console-soak`'s output: `console-soak <seq>` lines, seq 0..expected in order;
/// after a line, the next is the one after it or (a repeat after a restart) an earlier one
/// at most [`MAX_REPEAT`] back, from which the lines go on one by one again. A gap, a
/// reordering, a line that is not one of them, a last line without its newline (a cut
/// line: `console-soak 12` cut from `console-soak 123` would otherwise pass as line 12),
/// or a missing end fails.
pub fn check_console_lines(log: &str, expected: u64) -> Result<ConsoleLines, String> {
    let mut next = 0u64; // the highest line seen + 1
    let mut last: Option<u64> = None;
    let mut repeated = 0u64;
    let whole = match log.rfind('\n') {
        Some(end) => &log[..=end],
        None => "",
    };
    let tail = &log[whole.len()..];
    if !tail.is_empty() {
        return Err(format!(
            "the output ends mid-line: {tail:?} after {} whole lines ({} bytes in all: a \
             write cut short, or the file's max-size reached)",
            whole.lines().count(),
            log.len()
        ));
    }
    for (i, line) in whole.lines().enumerate() {
        let seq: u64 = line
            .strip_prefix("console-soak ")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("line {} is not a soak line: {line:?}", i + 1))?;
        let follows = last.map_or(seq == 0, |l| seq == l + 1);
        if follows && seq == next {
            next += 1;
        } else if follows && seq < next {
            repeated += 1;
        } else if seq < next && seq + MAX_REPEAT >= next {
            // A repeat starts.
            repeated += 1;
        } else {
            return Err(format!(
                "line {} is {line:?} after {}: a gap or reordering (highest so far {})",
                i + 1,
                last.map_or("nothing".to_string(), |l| format!("console-soak {l}")),
                next as i64 - 1
            ));
        }
        last = Some(seq);
    }
    if next != expected {
        return Err(format!(
            "the output ends at line {} of {expected} (last line {last:?})",
            next as i64 - 1
        ));
    }
    Ok(ConsoleLines {
        lines: next,
        repeated,
    })
}

/// A UDP echo on the host's end of the TAP, in a network namespace.
pub struct Echo {
    stop: Arc<AtomicBool>,
    echoed: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Echo {
    /// Echoes every datagram to `port` in namespace `ns` back to its sender.
    pub fn start(ns: &str, port: u16) -> Echo {
        // The name may be there a moment before the namespace is mounted on it (EINVAL).
        let end = Instant::now() + Duration::from_secs(10);
        let sock = loop {
            match super::netns::in_netns(ns, move || UdpSocket::bind(("0.0.0.0", port))) {
                Ok(bound) => break bound.expect("binding the echo socket"),
                Err(e) if Instant::now() > end => panic!("entering namespace {ns}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicU64::new(0));
        let (s, e) = (stop.clone(), echoed.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    if sock.send_to(&buf[..n], from).is_ok() {
                        e.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Echo {
            stop,
            echoed,
            thread,
        }
    }

    /// Datagrams echoed so far.
    pub fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }

    /// Stops; the datagrams echoed.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.echoed.load(Ordering::Relaxed)
    }
}

/// A number unique within this test process, for file names.
fn unique() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
