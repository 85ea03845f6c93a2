//! The launcher's start-up trace, in the manner of Firecracker's `--boot-timer`: which step
//! of `bulkhead run` happened when, per process, up to the guest's first line. On with
//! `bulkhead run --boot-timer` or `BULKHEAD_BOOT_TRACE=1` in the environment (passed on to
//! the vmm, which traces its own steps: `bulkhead_vmm::trace`). Times are CLOCK_MONOTONIC
//! nanoseconds, shared by every process of the host, so a reader (`bulkhead bench boot`)
//! can put the launcher's lines, the vmm's and its own clock on one axis.
//!
//! Lines on stderr: `bulkhead-trace: <ns> <process> <step>`. The launcher prints its own
//! once the VM is running (the vmm said `Ready`) or failed to start; the vmm prints its
//! own when it exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use bulkhead::jail::{now_ns, SpawnTimings};

pub use bulkhead_vmm::trace::ENV;

static ON: AtomicBool = AtomicBool::new(false);
static MARKS: Mutex<Vec<(u64, String, &'static str)>> = Mutex::new(Vec::new());

/// Turns the trace on if `flag` (`--boot-timer`) or the environment asks; the environment
/// is then set so that the vmm traces too.
pub fn init(flag: bool) {
    if flag && !bulkhead_vmm::trace::wanted() {
        // On the main thread, before the launcher starts any other thread.
        std::env::set_var(ENV, "1");
    }
    ON.store(bulkhead_vmm::trace::wanted(), Ordering::Relaxed);
}

/// Whether the trace is on.
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Records `step` of `process` at time `ns`.
pub fn mark_at(ns: u64, process: &str, step: &'static str) {
    if on() && ns != 0 {
        MARKS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((ns, process.to_owned(), step));
    }
}

/// Records `step` of `process` now.
pub fn mark(process: &str, step: &'static str) {
    if on() {
        mark_at(now_ns(), process, step);
    }
}

/// Records the jailer's steps of one start.
pub fn spawned(process: &str, t: &SpawnTimings) {
    mark_at(t.start, process, "spawn");
    mark_at(t.cgroup_made, process, "cgroup-created");
    mark_at(t.cloned, process, "cloned+in-cgroup");
    mark_at(t.executing, process, "executing");
}

/// The marks so far as trace lines, in time order; they are taken (printed once).
pub fn take_lines() -> Vec<String> {
    let mut marks = std::mem::take(&mut *MARKS.lock().unwrap_or_else(|e| e.into_inner()));
    marks.sort();
    marks
        .into_iter()
        .map(|(t, process, step)| format!("bulkhead-trace: {t} {process} {step}"))
        .collect()
}

/// Prints the marks so far to stderr (nothing when the trace is off).
pub fn print() {
    for line in take_lines() {
        eprintln!("{line}");
    }
}

/// A trace line read back: (time in ns, process, step); `None` for any other line. The
/// vmm's lines arrive through the launcher's relay, prefixed `vmm| `.
pub fn parse(line: &str) -> Option<(u64, &str, &str)> {
    let rest = &line[line.find("bulkhead-trace: ")? + "bulkhead-trace: ".len()..];
    let mut words = rest.split_whitespace();
    let t = words.next()?.parse().ok()?;
    let process = words.next()?;
    let step = words.next()?;
    Some((t, process, step))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_come_in_time_order() {
        ON.store(true, Ordering::Relaxed);
        mark_at(20, "disk0", "ready");
        mark_at(10, "launcher", "config");
        mark_at(0, "launcher", "never");
        let lines = take_lines();
        assert_eq!(
            lines,
            [
                "bulkhead-trace: 10 launcher config",
                "bulkhead-trace: 20 disk0 ready"
            ]
        );
        assert_eq!(parse(&lines[1]), Some((20, "disk0", "ready")));
        assert_eq!(
            parse("vmm| bulkhead-trace: 5 vmm first-kvm-run"),
            Some((5, "vmm", "first-kvm-run"))
        );
        assert_eq!(parse("vmm| something else"), None);
        assert!(take_lines().is_empty(), "printed once");
    }
}
