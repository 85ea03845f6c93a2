//! Reading what `strace -f` logged of a VM's processes: which program each thread runs
//! (from `execve` and `clone`), their completed system calls in the order strace saw them, and the
//! console as the vmm wrote it (the serial port writes one byte per `write(1, ...)`).
//!
//! The order is causal across processes: a traced call's exit is logged before the tracee
//! runs on, so anything another process does because of it is logged later.

use std::collections::HashMap;

/// One completed system call.
#[derive(Clone, Debug)]
pub struct Call {
    /// Its position in the log.
    pub at: usize,
    /// The calling thread.
    pub pid: u32,
    /// The system call's name.
    pub name: String,
    /// Its arguments as strace printed them (between the outer parentheses).
    pub args: String,
    /// Its return value as printed (`0`, `512`, `-1 EIO (...)`).
    pub ret: String,
}

impl Call {
    /// The first argument as a number (the fd of fd calls).
    pub fn fd(&self) -> Option<i32> {
        self.args.split(',').next()?.trim().parse().ok()
    }

    /// The last argument as a number (the offset of `pwritev`, `pwrite64`).
    pub fn last_number(&self) -> Option<u64> {
        self.args.rsplit(',').next()?.trim().parse().ok()
    }
}

/// A parsed `strace -f -qq --pidns-translation` log.
pub struct Log {
    /// Every completed call, in log order.
    pub calls: Vec<Call>,
    /// Program name (file name of `execve`'s path) of each thread id, inherited through
    /// `clone`.
    programs: HashMap<u32, String>,
}

impl Log {
    /// Parses `text` (`strace -f -qq --pidns-translation -o`, pids first on each line).
    pub fn parse(text: &str) -> Log {
        let mut pending: HashMap<u32, String> = HashMap::new();
        let mut calls = Vec::new();
        let mut programs = HashMap::new();
        for (at, line) in text.lines().enumerate() {
            let Some((pid, rest)) = line.split_once(' ') else {
                continue;
            };
            let Ok(pid) = pid.trim().parse::<u32>() else {
                continue;
            };
            let rest = rest.trim_start();
            let full = if let Some(head) = rest.strip_suffix("<unfinished ...>") {
                pending.insert(pid, head.trim_end().to_string());
                continue;
            } else if let Some(tail) = rest.strip_prefix("<... ") {
                // `<... name resumed>tail`
                let Some((_, tail)) = tail.split_once("resumed>") else {
                    continue;
                };
                format!("{}{}", pending.remove(&pid).unwrap_or_default(), tail)
            } else {
                rest.to_string()
            };
            let Some((name, after)) = full.split_once('(') else {
                continue;
            };
            let Some((args, ret)) = split_return(after) else {
                continue;
            };
            let call = Call {
                at,
                pid,
                name: name.to_string(),
                args: args.to_string(),
                ret: ret.trim().to_string(),
            };
            if call.name == "execve" && call.ret == "0" {
                if let Some(path) = call.args.split('"').nth(1) {
                    let program = path.rsplit('/').next().unwrap_or(path).to_string();
                    programs.insert(pid, program);
                }
            }
            // A new thread or process runs its creator's program until it executes one
            // (its own execve may be logged before its creator's clone returns).
            if matches!(call.name.as_str(), "clone" | "clone3" | "fork" | "vfork") {
                if let (Some(child), Some(program)) =
                    (created_tid(&call.ret), programs.get(&pid).cloned())
                {
                    programs.entry(child).or_insert(program);
                }
            }
            calls.push(call);
        }
        Log { calls, programs }
    }

    /// The program thread `pid` runs.
    pub fn program(&self, pid: u32) -> Option<&str> {
        self.programs.get(&pid).map(String::as_str)
    }

    /// The thread ids that run `program`.
    pub fn pids_of(&self, program: &str) -> Vec<u32> {
        self.programs
            .iter()
            .filter(|(_, p)| p.as_str() == program)
            .map(|(pid, _)| *pid)
            .collect()
    }

    /// The console lines the vmm's threads (`vmm_threads`) wrote to fd 1 (the serial port
    /// writes a byte at a time), each with the log position of the write that ended it.
    pub fn console_lines(&self, vmm_threads: &[u32]) -> Vec<(usize, String)> {
        let mut lines = Vec::new();
        let mut current = Vec::new();
        for c in &self.calls {
            if c.name != "write" || c.fd() != Some(1) || !vmm_threads.contains(&c.pid) {
                continue;
            }
            for b in unescape(c.args.split_once(", \"").map_or("", |(_, s)| s)) {
                if b == b'\n' {
                    lines.push((c.at, String::from_utf8_lossy(&current).into_owned()));
                    current.clear();
                } else {
                    current.push(b);
                }
            }
        }
        lines
    }
}

/// The thread id a `clone` returned, as strace's namespace sees it: the creator may be in a
/// pid namespace of its own (our processes are), so the log must come from
/// `strace --pidns-translation`, which adds `/* N in strace's PID NS */`.
fn created_tid(ret: &str) -> Option<u32> {
    match ret.split_once("/* ") {
        Some((_, translated)) => translated.split_whitespace().next()?.parse().ok(),
        None => ret.split_whitespace().next()?.parse().ok(),
    }
}

/// Splits `args) = ret` (strace pads with spaces before `=` to align the returns) at the
/// last `)` followed by blanks and `= `.
fn split_return(after: &str) -> Option<(&str, &str)> {
    after.rmatch_indices(')').find_map(|(i, _)| {
        let rest = &after[i + 1..];
        let ret = rest.trim_start_matches(' ');
        (ret.len() < rest.len()).then_some(())?;
        ret.strip_prefix("= ").map(|ret| (&after[..i], ret))
    })
}

/// The bytes of a C string strace printed, from just after its opening quote (the rest of
/// the arguments after the closing quote is ignored).
fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut bytes = s.bytes().peekable();
    while let Some(b) = bytes.next() {
        match b {
            b'"' => break,
            b'\\' => match bytes.next() {
                Some(b'n') => out.push(b'\n'),
                Some(b't') => out.push(b'\t'),
                Some(b'r') => out.push(b'\r'),
                Some(b'v') => out.push(0x0b),
                Some(b'f') => out.push(0x0c),
                Some(b'x') => {
                    let hex: String = (0..2)
                        .filter_map(|_| bytes.next().map(char::from))
                        .collect();
                    out.push(u8::from_str_radix(&hex, 16).unwrap_or(0));
                }
                Some(d @ b'0'..=b'7') => {
                    let mut v = u32::from(d - b'0');
                    for _ in 0..2 {
                        match bytes.peek() {
                            Some(&n @ b'0'..=b'7') => {
                                v = v * 8 + u32::from(n - b'0');
                                bytes.next();
                            }
                            _ => break,
                        }
                    }
                    out.push(v as u8);
                }
                Some(other) => out.push(other),
                None => break,
            },
            _ => out.push(b),
        }
    }
    out
}
