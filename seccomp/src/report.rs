//! The one line a process writes on stderr when a filter stops a call, and its parser
//! (for the launcher, to name the call in its failure message):
//!
//! `seccomp: <program> thread <thread> (role <role>) made syscall <nr> (<name>) outside its allowlist; killing the process`
//!
//! [`Line`] formats it in a stack buffer without allocating, so that the SIGSYS handler
//! can use it.

use crate::names;

/// What the launcher learns from a report line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The program (`bulkhead-blk`).
    pub program: String,
    /// The thread's name (`blk-q0`).
    pub thread: String,
    /// The role whose filter stopped it (`inherited` for a thread that got its filter
    /// from the thread that started it).
    pub role: String,
    /// The system call number.
    pub nr: i64,
    /// Its name (`unknown` if not in [`names`]).
    pub name: String,
}

const PREFIX: &str = "seccomp: ";
const THREAD: &str = " thread ";
const ROLE: &str = " (role ";
const MADE: &str = ") made syscall ";
const SUFFIX: &str = ") outside its allowlist; killing the process";

/// Reads a report line (a trailing newline is ignored); `None` for any other line.
pub fn parse(line: &str) -> Option<Violation> {
    let rest = line.trim_end_matches(['\n', '\r']).strip_prefix(PREFIX)?;
    let rest = rest.strip_suffix(SUFFIX)?;
    let (head, call) = rest.rsplit_once(MADE)?;
    let (nr, name) = call.split_once(" (")?;
    let (who, role) = head.rsplit_once(ROLE)?;
    let (program, thread) = who.split_once(THREAD)?;
    Some(Violation {
        program: program.to_owned(),
        thread: thread.to_owned(),
        role: role.to_owned(),
        nr: nr.parse().ok()?,
        name: name.to_owned(),
    })
}

/// A report line being formatted in a fixed buffer (too long a line is cut short, never
/// overflows).
pub struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    /// The line for call `nr` by `thread` of `program` under `role`, newline included.
    pub fn new(program: &[u8], thread: &[u8], role: &str, nr: i64) -> Line {
        let mut line = Line {
            buf: [0; 256],
            len: 0,
        };
        line.push(PREFIX.as_bytes());
        line.push(program);
        line.push(THREAD.as_bytes());
        line.push(thread);
        line.push(ROLE.as_bytes());
        line.push(role.as_bytes());
        line.push(MADE.as_bytes());
        line.push_number(nr);
        line.push(b" (");
        line.push(names::name(nr).as_bytes());
        line.push(SUFFIX.as_bytes());
        line.push(b"\n");
        line
    }

    /// The formatted bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len == self.buf.len() {
                return;
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    fn push_number(&mut self, n: i64) {
        if n < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = n.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_formatted_line_parses_back() {
        let line = Line::new(b"bulkhead-blk", b"blk-q0", "blk-worker", libc::SYS_ptrace);
        let text = std::str::from_utf8(line.as_bytes()).unwrap();
        assert_eq!(
            text,
            "seccomp: bulkhead-blk thread blk-q0 (role blk-worker) made syscall 101 (ptrace) \
             outside its allowlist; killing the process\n"
        );
        assert_eq!(
            parse(text),
            Some(Violation {
                program: "bulkhead-blk".into(),
                thread: "blk-q0".into(),
                role: "blk-worker".into(),
                nr: 101,
                name: "ptrace".into(),
            })
        );
    }

    #[test]
    fn odd_names_and_numbers_survive() {
        let line = Line::new(b"a b", b"x (role y", "vcpu", 99_999);
        let v = parse(std::str::from_utf8(line.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            (v.program.as_str(), v.thread.as_str()),
            ("a b", "x (role y")
        );
        assert_eq!(
            (v.role.as_str(), v.nr, v.name.as_str()),
            ("vcpu", 99_999, "unknown")
        );
        let long = [b'z'; 400];
        assert_eq!(Line::new(&long, b"t", "vcpu", 1).as_bytes().len(), 256);
    }

    #[test]
    fn other_lines_are_not_reports() {
        assert_eq!(
            parse("bulkhead-blk: --disk-fd 3: Bad file descriptor"),
            None
        );
        assert_eq!(parse("seccomp: truncated"), None);
        assert_eq!(
            parse("seccomp: p thread t (role r) made syscall x (y) outside its allowlist; killing the process"),
            None
        );
    }
}
