//! `bulkhead bench restart`: what a device process's death costs the guest. The test guest
//! runs `blk-soak` (one request at a time: write, read back, FLUSH every 16) on a scratch
//! disk whose restart budget allows every kill; `bulkhead-blk` is killed (`kill -9`)
//! `--kills` times at random moments, each once the launcher reported the previous
//! restart. Figures, per kill and as median and worst:
//!
//! - kill to the first completed request after it: the guest's stall line
//!   (`blk-soak: stall <ms> ms`, the gap between two consecutive completions measured on
//!   its TSC) that reaches the host between this kill and the next (within 2 s; `-` if
//!   none: the figures say over how many kills they are); the gap starts at the
//!   last completion before the kill, at most one request's time (tens of µs) earlier;
//! - the launcher's `unavailable <ms>` (it saw the death to the vmm's `Reconnected`);
//! - requests the new `bulkhead-blk` resubmitted from the inflight region (its
//!   `resubmitted N in-flight request(s)` lines).
//!
//! Printed figures only, no timed assertions; the run fails if the soak does not pass.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::median;
use super::report_line;
use crate::cli::RestartBenchArgs as BenchArgs;

/// The budget given to the disk: more restarts than any run kills.
const POLICY: &str = "restart=1000/60";
/// How long after a kill its stall line may arrive (to be counted as its).
const WINDOW: Duration = Duration::from_secs(2);
/// How long a restart may take to be reported.
const REPORT_BOUND: Duration = Duration::from_secs(30);
/// The soak's length per kill: a random pause (200..800 ms) and the restart.
const MS_PER_KILL: u64 = 1500;

/// One kill's figures.
#[derive(Clone, Copy, Debug, Default)]
struct Kill {
    /// Kill to the first completion after it (the guest's stall), ms; `None`: no stall line.
    first_completion_ms: Option<f64>,
    /// The launcher's unavailable figure, ms.
    unavailable_ms: Option<f64>,
}

/// Runs the benchmark; returns the exit status.
pub fn main(args: BenchArgs) -> i32 {
    super::exit_status(run(&args))
}

/// A line and when it reached us.
type Stamped = (Instant, String);

/// The VM under test, its output collected as it comes.
struct Vm {
    child: Child,
    stdout: Arc<Mutex<Vec<Stamped>>>,
    stderr: Arc<Mutex<Vec<Stamped>>>,
    api: std::path::PathBuf,
    exe: std::path::PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.api);
    }
}

fn collect<R: std::io::Read + Send + 'static>(r: R) -> Arc<Mutex<Vec<Stamped>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((Instant::now(), line));
        }
    });
    lines
}

impl Vm {
    fn lines(which: &Arc<Mutex<Vec<Stamped>>>) -> Vec<Stamped> {
        which.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until a line of `which` satisfies `want` (at most `bound`).
    fn wait(
        &self,
        which: &Arc<Mutex<Vec<Stamped>>>,
        bound: Duration,
        what: &str,
        want: impl Fn(&[Stamped]) -> bool,
    ) -> Result<(), String> {
        let end = Instant::now() + bound;
        loop {
            if want(&Vm::lines(which)) {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(format!("no {what} within {bound:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The `bulkhead-blk` pid: the last restart report's, else `ctl status`'s.
    fn blk_pid(&self) -> Result<u32, String> {
        let restarted = Vm::lines(&self.stderr)
            .iter()
            .rev()
            .find_map(|(_, l)| restarted_pid(l));
        if let Some(pid) = restarted {
            return Ok(pid);
        }
        let out = Command::new(&self.exe)
            .arg("ctl")
            .arg("--api-socket")
            .arg(&self.api)
            .arg("status")
            .output()
            .map_err(|e| format!("bulkhead ctl status: {e}"))?;
        let status = String::from_utf8_lossy(&out.stdout);
        status
            .lines()
            .find(|l| l.starts_with("process: disk0 ("))
            .and_then(|l| l.split(" pid ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("no disk0 process in ctl status:\n{status}"))
    }
}

/// The new pid of a `disk0: ... restarted as pid N` report.
fn restarted_pid(line: &str) -> Option<u32> {
    if !line.starts_with("bulkhead: disk0: ") {
        return None;
    }
    report_line::restarted_as(line)
}

/// `unavailable N ms` of a report line.
fn unavailable_ms(line: &str) -> Option<f64> {
    line.split("; unavailable ")
        .nth(1)?
        .strip_suffix(" ms")?
        .parse()
        .ok()
}

/// N of a `resubmitted N in-flight request(s)` line.
fn resubmitted(line: &str) -> Option<u64> {
    line.split("resubmitted ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The value of a `blk-soak: stall N ms` line.
fn stall_ms(line: &str) -> Option<f64> {
    line.split("blk-soak: stall ")
        .nth(1)?
        .strip_suffix(" ms")?
        .parse()
        .ok()
}

/// A small xorshift for the random moments (seeded from the clock).
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn run(args: &BenchArgs) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding the bulkhead binary: {e}"))?;
    let dir = std::env::temp_dir();
    let tag = format!("bulkhead-bench-restart-{}", std::process::id());
    let image = dir.join(format!("{tag}.img"));
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(16 << 20))
        .map_err(|e| format!("creating {}: {e}", image.display()))?;
    let result = bench(args, &exe, &image, &dir.join(format!("{tag}.api")));
    let _ = std::fs::remove_file(&image);
    result
}

fn bench(args: &BenchArgs, exe: &Path, image: &Path, api: &Path) -> Result<(), String> {
    let soak_ms = u64::from(args.kills) * MS_PER_KILL + 3000;
    println!(
        "bulkhead bench restart: blk-soak on {} for up to {soak_ms} ms, bulkhead-blk killed \
         (SIGKILL) {} times at random moments ({POLICY})",
        args.transport, args.kills
    );
    let _ = std::fs::remove_file(api);
    let mut child = Command::new(exe)
        .args(["run", "--transport", args.transport.as_str()])
        .arg("--disk")
        .arg(format!("path={},{POLICY}", image.display()))
        .arg("--api-socket")
        .arg(api)
        .args([
            "--cmdline",
            &format!("bulkhead.test=blk-soak bulkhead.soak-ms={soak_ms}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting bulkhead run: {e}"))?;
    let stdout = collect(child.stdout.take().ok_or("no stdout pipe")?);
    let stderr = collect(child.stderr.take().ok_or("no stderr pipe")?);
    let vm = Vm {
        child,
        stdout,
        stderr,
        api: api.to_owned(),
        exe: exe.to_owned(),
    };
    vm.wait(&vm.stdout, Duration::from_secs(60), "blk-soak start", |l| {
        l.iter().any(|(_, l)| l.contains("soak area="))
    })?;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut kills: Vec<(Instant, Kill)> = Vec::new();
    for i in 0..args.kills as usize {
        let pause = 200 + next_random(&mut seed) % 600;
        std::thread::sleep(Duration::from_millis(pause));
        let pid = vm.blk_pid()?;
        let exe_name = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if exe_name.file_name().and_then(|n| n.to_str()) != Some("bulkhead-blk") {
            return Err(format!(
                "pid {pid} is {}, not bulkhead-blk",
                exe_name.display()
            ));
        }
        // The pid is this run's bulkhead-blk (checked by its executable just above).
        let target = nix::unistd::Pid::from_raw(pid as i32);
        if let Err(e) = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL) {
            return Err(format!("kill -9 {pid}: {}", std::io::Error::from(e)));
        }
        let at = Instant::now();
        vm.wait(&vm.stderr, REPORT_BOUND, "restart report", |l| {
            l.iter().filter(|(_, l)| restarted_pid(l).is_some()).count() > i
        })?;
        let report = Vm::lines(&vm.stderr)
            .into_iter()
            .filter(|(_, l)| restarted_pid(l).is_some())
            .nth(i)
            .map(|(_, l)| l)
            .unwrap_or_default();
        kills.push((
            at,
            Kill {
                first_completion_ms: None,
                unavailable_ms: unavailable_ms(&report),
            },
        ));
    }
    // Give the last stall line time to arrive, then wait for the soak's end.
    let mut vm = vm;
    let status = wait_end(&mut vm.child, Duration::from_millis(soak_ms + 60_000))?;
    let out = Vm::lines(&vm.stdout);
    let err = Vm::lines(&vm.stderr);
    // Each kill's stall: the longest stall line that arrived between it and the next kill,
    // at most WINDOW after it (the soak's own stalls after the last kill are not its).
    for k in 0..kills.len() {
        let from = kills[k].0;
        let mut to = from + WINDOW;
        if let Some(next) = kills.get(k + 1) {
            to = to.min(next.0);
        }
        kills[k].1.first_completion_ms = out
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .filter_map(|(_, l)| stall_ms(l))
            .reduce(f64::max);
    }
    let pass = out
        .iter()
        .find(|(_, l)| l.contains("PASS blk-soak"))
        .map(|(_, l)| l.clone());
    let resubmitted_lines: Vec<u64> = err.iter().filter_map(|(_, l)| resubmitted(l)).collect();
    println!("  kill  kill->first completion  unavailable (launcher)");
    for (i, (_, k)) in kills.iter().enumerate() {
        let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0} ms"));
        println!(
            "  {:>4}  {:>22}  {:>22}",
            i + 1,
            show(k.first_completion_ms),
            show(k.unavailable_ms)
        );
    }
    let summary = |name: &str, v: Vec<f64>| {
        let worst = v.iter().copied().reduce(f64::max);
        match worst {
            Some(w) => println!(
                "  {name}: median {:.0} ms, worst {w:.0} ms (over {} kills)",
                median(&v),
                v.len()
            ),
            None => println!("  {name}: no figures"),
        }
    };
    summary(
        "kill -> first completed request",
        kills
            .iter()
            .filter_map(|(_, k)| k.first_completion_ms)
            .collect(),
    );
    summary(
        "unavailable (launcher: death seen -> vmm reconnected)",
        kills.iter().filter_map(|(_, k)| k.unavailable_ms).collect(),
    );
    println!(
        "  requests resubmitted from the inflight region: {} (in {} line(s) of bulkhead-blk)",
        resubmitted_lines.iter().sum::<u64>(),
        resubmitted_lines.len()
    );
    match pass {
        Some(line) if status == Some(0) => {
            println!("  guest: {}", line.trim_start_matches("bulkhead-guest: "));
            Ok(())
        }
        _ => {
            let tail: Vec<&str> = out.iter().rev().take(5).map(|(_, l)| l.as_str()).collect();
            Err(format!(
                "the soak did not pass (exit status {status:?}); last lines: {tail:?}"
            ))
        }
    }
}

/// Waits for the VM to end (killing it at `bound`); its exit code.
fn wait_end(child: &mut Child, bound: Duration) -> Result<Option<i32>, String> {
    let end = Instant::now() + bound;
    loop {
        if let Some(s) = child.try_wait().map_err(|e| format!("waiting: {e}"))? {
            // Let the readers take the last lines.
            std::thread::sleep(Duration::from_millis(200));
            return Ok(s.code());
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the VM did not end within {bound:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_are_read() {
        let line = "bulkhead: disk0: bulkhead-blk (pid 812) killed by signal 9 (SIGKILL); \
                    restarted as pid 840 (restart 1 of 5 within 60 s); unavailable 95 ms";
        assert_eq!(restarted_pid(line), Some(840));
        assert_eq!(unavailable_ms(line), Some(95.0));
        assert_eq!(restarted_pid(&line.replace("disk0", "net0")), None);
        assert_eq!(
            resubmitted("disk0| bulkhead-blk: queue 0: resubmitted 3 in-flight request(s)"),
            Some(3)
        );
        assert_eq!(
            stall_ms("bulkhead-guest: blk-soak: stall 127 ms"),
            Some(127.0)
        );
        assert_eq!(stall_ms("bulkhead-guest: net-soak: stall 127 ms"), None);
    }
}
