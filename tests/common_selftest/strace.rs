//! Unit tests of tests/common/strace.rs, on lines as strace 6.1 prints them.

use crate::common::strace::Log;

const LOG: &str = r#"100 execve("/x/bulkhead", ["bulkhead"], 0x1 /* 3 vars */) = 0
100 clone3({flags=CLONE_PIDFD|CLONE_NEWPID, exit_signal=SIGCHLD}, 88 <unfinished ...>
101 execve("/x/bulkhead-vmm", ["bulkhead-vmm"], 0x2 /* 0 vars */ <unfinished ...>
100 <... clone3 resumed>) = 101
101 <... execve resumed>)             = 0
101 clone3({flags=CLONE_VM|CLONE_THREAD}, 88) = 2 /* 102 in strace's PID NS */
102 write(1, "o", 1)                  = 1
102 write(1, "k\n", 2)                = 2
102 write(1, "\x41\102\t\"\n", 5)     = 5
"#;

#[test]
fn programs_follow_execve_and_clone_across_pid_namespaces() {
    let log = Log::parse(LOG);
    assert_eq!(log.program(100), Some("bulkhead"));
    assert_eq!(log.program(101), Some("bulkhead-vmm"));
    assert_eq!(log.program(102), Some("bulkhead-vmm"));
    let mut vmm = log.pids_of("bulkhead-vmm");
    vmm.sort();
    assert_eq!(vmm, [101, 102]);
}

#[test]
fn padded_returns_and_resumed_calls_are_whole() {
    let log = Log::parse(LOG);
    let execve = log
        .calls
        .iter()
        .find(|c| c.pid == 101 && c.name == "execve");
    assert_eq!(execve.map(|c| c.ret.as_str()), Some("0"));
    let write = log
        .calls
        .iter()
        .find(|c| c.name == "write")
        .expect("a write");
    assert_eq!((write.fd(), write.ret.as_str()), (Some(1), "1"));
    assert_eq!(write.last_number(), Some(1));
}

#[test]
fn console_lines_are_put_together_from_escaped_bytes() {
    let log = Log::parse(LOG);
    let lines: Vec<String> = log
        .console_lines(&[102])
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(lines, ["ok", "AB\t\""]);
    assert!(log.console_lines(&[100]).is_empty());
}
