//! Files the guest's output is appended to (`--serial file=`, `--console file=`), capped
//! at a size (`max-size=`): the vmm's serial writer and the console backend's file stream
//! both write through [`CappedFile`], so a guest that prints forever loses its output, not
//! the host's disk. Also the parser of `max-size=` values, shared by the launcher and the
//! processes' command lines.

use std::fs::File;
use std::io::{self, Write};

/// `max-size` when none is given: 16 MiB.
pub const DEFAULT_MAX_SIZE: u64 = 16 << 20;

/// Parses a size: a number of bytes with an optional K, M or G suffix (powers of 1024);
/// 0 is refused (a file that may hold nothing is not an output).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, shift) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().map_err(|_| {
        format!("max-size={s}: expected a number of bytes with an optional K, M or G suffix")
    })?;
    let bytes = n
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("max-size={s}: too large"))?;
    if bytes == 0 {
        return Err(format!("max-size={s}: must be above 0"));
    }
    Ok(bytes)
}

/// Ignores SIGXFSZ in this process: a write past RLIMIT_FSIZE (the backstop under the cap)
/// then fails with EFBIG instead of killing the process. [`CappedFile`] stops below that
/// limit itself; this is for a file whose size changed under it.
pub fn ignore_sigxfsz() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
    // Cannot fail: SIGXFSZ is a valid signal that may be ignored.
    let _ = unsafe { signal(Signal::SIGXFSZ, SigHandler::SigIgn) };
}

/// An append-only file that stops growing at `max` bytes: writes past it are dropped
/// (counted, and logged once), and report success so the writer carries on.
#[derive(Debug)]
pub struct CappedFile {
    file: File,
    what: String,
    size: u64,
    max: u64,
    dropped: u64,
}

impl CappedFile {
    /// Caps `file` (opened for append; its current size counts) at `max` bytes; `what`
    /// names it in the message.
    pub fn new(file: File, max: u64, what: String) -> io::Result<CappedFile> {
        let size = file.metadata()?.len();
        Ok(CappedFile {
            file,
            what,
            size,
            max,
            dropped: 0,
        })
    }

    /// The file's size as this writer counts it.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Guest output bytes dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl Write for CappedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = usize::try_from(self.max.saturating_sub(self.size)).unwrap_or(usize::MAX);
        let take = buf.len().min(room);
        if take < buf.len() {
            if self.dropped == 0 {
                // Once: a guest printing forever would otherwise log every byte.
                log::warn!(
                    "{} reached its max-size of {} bytes; further guest output is dropped",
                    self.what,
                    self.max
                );
            }
            self.dropped += (buf.len() - take) as u64;
        }
        if take == 0 {
            return Ok(buf.len());
        }
        let written = self.file.write(&buf[..take])?;
        self.size += written as u64;
        // The dropped tail counts as written, but only once all that fits is.
        Ok(if written == take { buf.len() } else { written })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        for bad in ["0", "0K", "", "K", "-1", "1T", "99999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stops_at_max_counting_what_was_there() {
        let path = std::env::temp_dir().join(format!("bulkhead-capped-{}", std::process::id()));
        std::fs::write(&path, b"0123").unwrap();
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        let mut c = CappedFile::new(file, 10, "test file".into()).unwrap();
        c.write_all(b"abcd").unwrap();
        c.write_all(b"efghij").unwrap();
        c.write_all(b"k").unwrap();
        assert_eq!(c.dropped(), 5);
        let mut got = String::new();
        File::open(&path).unwrap().read_to_string(&mut got).unwrap();
        assert_eq!(got, "0123abcdef");
        let _ = std::fs::remove_file(&path);
    }
}
