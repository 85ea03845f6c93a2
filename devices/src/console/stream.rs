//! The console's stream: opened from a [`StreamSpec`], split into the output half that the
//! transmit thread writes ([`Port`]) and the input side that the I/O thread reads
//! ([`Source`]); terminal handling (raw mode, size).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bulkhead_protocol::capped::CappedFile;
use log::warn;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{getsockopt, sockopt};
use nix::sys::termios::{self, SetArg, Termios};

use super::config::StreamSpec;
use super::device::Output;
use crate::daemon::connection::take_fd;

/// Why the stream can't be opened.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// `--stream-fd` is not an open descriptor.
    #[error("--stream-fd {fd}: {source}")]
    BadFd {
        /// The descriptor.
        fd: RawFd,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Opening the file, socket or pty failed.
    #[error("{what}: {source}")]
    Open {
        /// What was being opened.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn open_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> StreamError {
    let what = what.into();
    move |source| StreamError::Open { what, source }
}

/// The output half, shared by the transmit thread (which writes guest output) and the I/O
/// thread (which swaps the client in and out in socket mode).
#[derive(Debug, Default)]
pub struct Port {
    state: Mutex<OutState>,
    /// Guest output bytes that could not be delivered (no client, or a write error).
    pub dropped: AtomicU64,
    /// Failed writes.
    pub write_errors: AtomicU64,
    /// Warnings logged about failed writes: one per outage (a run of failures ended by a
    /// successful write or a new client), however many writes fail.
    pub write_error_reports: AtomicU64,
}

#[derive(Debug, Default)]
struct OutState {
    out: Option<Out>,
    failing: bool,
}

/// The output: a stream, or a regular file capped at its `--max-size`.
#[derive(Debug)]
enum Out {
    Stream(File),
    Capped(CappedFile),
}

impl Out {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Out::Stream(f) => f.write_all(bytes),
            Out::Capped(c) => c.write_all(bytes),
        }
    }
}

impl Port {
    /// A port writing to `out` (none: output is dropped and counted).
    pub fn new(out: Option<File>) -> Port {
        Port::with(out.map(Out::Stream))
    }

    /// A port appending to regular file `file`, which stops growing at `max_size` bytes
    /// (what it held already included): later output is dropped, logged once.
    pub fn capped(file: File, max_size: u64) -> io::Result<Port> {
        let capped = CappedFile::new(file, max_size, "the console file".into())?;
        Ok(Port::with(Some(Out::Capped(capped))))
    }

    fn with(out: Option<Out>) -> Port {
        Port {
            state: Mutex::new(OutState {
                out,
                failing: false,
            }),
            ..Port::default()
        }
    }

    /// Replaces the output (a client connected or went away).
    pub fn set_output(&self, out: Option<File>) {
        let mut state = self.lock();
        state.out = out.map(Out::Stream);
        state.failing = false;
    }

    /// The writer for one transmit round.
    pub fn writer(&self) -> PortWriter<'_> {
        PortWriter {
            state: self.lock(),
            port: self,
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Holds the output for a transmit round.
pub struct PortWriter<'a> {
    state: MutexGuard<'a, OutState>,
    port: &'a Port,
}

impl Output for PortWriter<'_> {
    fn output(&mut self, bytes: &[u8]) {
        let len = bytes.len() as u64;
        let state = &mut *self.state;
        let Some(out) = state.out.as_mut() else {
            self.port.dropped.fetch_add(len, Ordering::Relaxed);
            return;
        };
        match out.write_all(bytes) {
            Ok(()) => state.failing = false,
            Err(e) => {
                // Logged once per outage: a stream that keeps failing would otherwise log
                // every byte the guest prints.
                if !std::mem::replace(&mut state.failing, true) {
                    self.port
                        .write_error_reports
                        .fetch_add(1, Ordering::Relaxed);
                    warn!("writing guest output to the console stream: {e}; dropping output until a write succeeds");
                }
                self.port.write_errors.fetch_add(1, Ordering::Relaxed);
                self.port.dropped.fetch_add(len, Ordering::Relaxed);
            }
        }
    }
}

/// Where input comes from, as the I/O thread sees it.
#[derive(Debug)]
pub enum Source {
    /// A fixed input, or none (a file: output only).
    Fixed(Option<File>),
    /// A listening socket and the client being served, if any.
    Listener {
        /// The listener.
        listener: UnixListener,
        /// The client.
        client: Option<UnixStream>,
    },
    /// A pty master (we also hold a slave descriptor so the master never sees a hang-up:
    /// closing the terminal program and reopening `/dev/pts/N` just works).
    Pty {
        /// The slave's path, `/dev/pts/N`.
        name: String,
        /// The master.
        master: File,
        /// Our slave descriptor.
        _slave: File,
    },
}

/// An opened stream.
#[derive(Debug)]
pub struct Opened {
    /// The input side.
    pub source: Source,
    /// The output, if there is one from the start.
    pub output: Option<File>,
    /// Terminal size (cols, rows), if the stream is a terminal.
    pub size: Option<(u16, u16)>,
    /// That terminal, to read its size again when it changes.
    pub terminal: Option<File>,
    /// Restores the terminal when dropped.
    pub raw: Option<RawMode>,
}

/// Opens the stream. Call before the daemon starts, so that `--socket` already listens
/// when the frontend connects.
pub fn open(spec: &StreamSpec) -> Result<Opened, StreamError> {
    match spec {
        StreamSpec::File(path) => {
            let f = OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .map_err(open_error(format!("opening {} for append", path.display())))?;
            Ok(fixed(None, Some(f), None, None))
        }
        StreamSpec::Fd(fd) => {
            let owned = take_fd(*fd).map_err(|source| StreamError::BadFd { fd: *fd, source })?;
            from_fd(owned, *fd)
        }
        StreamSpec::Stdio => {
            let dup = |fd: std::os::fd::BorrowedFd<'_>, name: &str| {
                nix::unistd::dup(fd)
                    .map(File::from)
                    .map_err(|e| open_error(format!("duplicating {name}"))(e.into()))
            };
            let input = dup(io::stdin().as_fd(), "stdin")?;
            let output = dup(io::stdout().as_fd(), "stdout")?;
            let raw = if is_tty(&input) {
                Some(RawMode::enter(&input).map_err(open_error("putting stdin in raw mode"))?)
            } else {
                None
            };
            let terminal = [&output, &input]
                .into_iter()
                .find(|f| winsize(*f).is_some())
                .and_then(|f| f.try_clone().ok());
            let mut opened = fixed(Some(input), Some(output), None, raw);
            opened.size = terminal.as_ref().and_then(winsize);
            opened.terminal = terminal;
            Ok(opened)
        }
        StreamSpec::Socket(path) => listen(path),
        StreamSpec::Pty => open_pty(),
    }
}

fn fixed(
    input: Option<File>,
    output: Option<File>,
    size: Option<(u16, u16)>,
    raw: Option<RawMode>,
) -> Opened {
    Opened {
        source: Source::Fixed(input),
        output,
        size,
        terminal: None,
        raw,
    }
}

/// An inherited descriptor: a regular file or a write-only descriptor is output only, a
/// read-only one input only, anything else (socket, terminal, pipe end opened O_RDWR) both.
/// A terminal is put in raw mode and its size reported.
fn from_fd(owned: OwnedFd, fd: RawFd) -> Result<Opened, StreamError> {
    let bad = |source| StreamError::BadFd { fd, source };
    let file = File::from(owned);
    let meta = file.metadata().map_err(bad)?;
    let flags = fcntl(&file, FcntlArg::F_GETFL).map_err(|e| bad(e.into()))?;
    let access = OFlag::from_bits_retain(flags) & OFlag::O_ACCMODE;
    let size = winsize(&file);
    // A terminal (the user's, or a pty either side) carries a console's bytes untouched:
    // raw mode, as for --stdio, restored on exit.
    let raw = if is_tty(&file) {
        Some(RawMode::enter(&file).map_err(bad)?)
    } else {
        None
    };
    if meta.file_type().is_socket() && is_listening(&file) {
        // A socket the launcher bound (where the user's path said, checked there).
        return Ok(Opened {
            source: Source::Listener {
                listener: UnixListener::from(OwnedFd::from(file)),
                client: None,
            },
            output: None,
            size: None,
            terminal: None,
            raw: None,
        });
    }
    if meta.file_type().is_file() || access == OFlag::O_WRONLY {
        return Ok(fixed(None, Some(file), size, raw));
    }
    if access == OFlag::O_RDONLY {
        return Ok(fixed(Some(file), None, size, raw));
    }
    let output = file.try_clone().map_err(bad)?;
    let terminal = size.and(file.try_clone().ok());
    let mut opened = fixed(Some(file), Some(output), size, raw);
    opened.terminal = terminal;
    Ok(opened)
}

/// Whether socket `file` is listening (SO_ACCEPTCONN).
fn is_listening(file: &File) -> bool {
    getsockopt(file, sockopt::AcceptConn).unwrap_or(false)
}

fn listen(path: &PathBuf) -> Result<Opened, StreamError> {
    // A socket left by an earlier run would make bind fail; anything else at the path is
    // left alone (and bind reports it).
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
    let listener = UnixListener::bind(path).map_err(open_error(format!(
        "listening on console socket {}",
        path.display()
    )))?;
    Ok(Opened {
        source: Source::Listener {
            listener,
            client: None,
        },
        output: None,
        size: None,
        terminal: None,
        raw: None,
    })
}

fn open_pty() -> Result<Opened, StreamError> {
    fn err(what: &'static str) -> impl FnOnce(nix::Error) -> StreamError {
        move |e| open_error(format!("opening a pty: {what}"))(io::Error::from(e))
    }
    let pty = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(err("posix_openpt"))?;
    nix::pty::grantpt(&pty).map_err(err("grantpt"))?;
    nix::pty::unlockpt(&pty).map_err(err("unlockpt"))?;
    let name = nix::pty::ptsname_r(&pty).map_err(err("ptsname_r"))?;
    // SAFETY: into_raw_fd hands over the master's descriptor, which nothing else owns, so
    // the File is its only owner (nix's PtyMaster converts into no OwnedFd).
    let master = unsafe { File::from_raw_fd(pty.into_raw_fd()) };
    let slave = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&name)
        .map_err(open_error(format!("opening {name}")))?;
    // A console pty is raw: no echo of guest output back to us, no line editing.
    set_raw(&slave).map_err(open_error(format!("setting {name} raw")))?;
    // Non-blocking master: with nobody reading the slave, guest output fills the pty's
    // buffer; then writes fail (EAGAIN: output dropped and counted) instead of blocking
    // the transmit queue.
    let _ = fcntl(&master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    let output = master
        .try_clone()
        .map_err(open_error("duplicating the pty master"))?;
    Ok(Opened {
        source: Source::Pty {
            name,
            master,
            _slave: slave,
        },
        output: Some(output),
        size: None,
        terminal: None,
        raw: None,
    })
}

use std::os::unix::fs::OpenOptionsExt;

fn is_tty(f: &File) -> bool {
    nix::unistd::isatty(f).unwrap_or(false)
}

nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);

/// The terminal size (cols, rows) of `f`, if it is a terminal that knows it.
pub fn winsize(f: &impl std::os::fd::AsRawFd) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws` and reads nothing else of ours.
    let ret = unsafe { tiocgwinsz(f.as_raw_fd(), &mut ws) };
    (ret.is_ok() && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

fn set_raw(f: &File) -> io::Result<Termios> {
    let saved = termios::tcgetattr(f)?;
    let mut t = saved.clone();
    termios::cfmakeraw(&mut t);
    termios::tcsetattr(f, SetArg::TCSANOW, &t)?;
    Ok(saved)
}

/// A terminal in raw mode; dropping it restores the previous settings (on every way out
/// of `run`, SIGTERM included: the signal ends the daemon, `run` returns, this drops).
#[derive(Debug)]
pub struct RawMode {
    fd: File,
    saved: Termios,
}

impl RawMode {
    fn enter(f: &File) -> io::Result<RawMode> {
        let fd = f.try_clone()?;
        let saved = set_raw(&fd)?;
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(&self.fd, SetArg::TCSANOW, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{poll, PollFd, PollFlags};
    use std::io::Read;

    #[test]
    fn port_drops_and_counts_without_output_and_after_errors() {
        let port = Port::new(None);
        port.writer().output(b"lost");
        assert_eq!(port.dropped.load(Ordering::Relaxed), 4);

        let (a, mut b) = UnixStream::pair().unwrap();
        port.set_output(Some(File::from(OwnedFd::from(a))));
        port.writer().output(b"seen");
        let mut got = [0u8; 4];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"seen");
        drop(b);
        // Peer gone: EPIPE (SIGPIPE is ignored in Rust programs), counted, logged once.
        port.writer().output(b"12");
        port.writer().output(b"345");
        assert_eq!(port.dropped.load(Ordering::Relaxed), 9);
        assert_eq!(port.write_errors.load(Ordering::Relaxed), 2);
        assert_eq!(
            port.write_error_reports.load(Ordering::Relaxed),
            1,
            "logged once"
        );
        // A new output ends the outage: output flows again.
        let (a, mut b) = UnixStream::pair().unwrap();
        port.set_output(Some(File::from(OwnedFd::from(a))));
        port.writer().output(b"back");
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"back");
        assert_eq!(port.dropped.load(Ordering::Relaxed), 9);
    }

    #[test]
    fn regular_file_fd_is_output_only_and_socket_fd_is_both() {
        let f = vmm_sys_util::tempfile::TempFile::new().unwrap();
        let n = f.into_file().into_raw_fd();
        let o = open(&StreamSpec::Fd(n)).unwrap();
        assert!(matches!(o.source, Source::Fixed(None)));
        assert!(o.output.is_some());

        let (a, _b) = UnixStream::pair().unwrap();
        let o = open(&StreamSpec::Fd(a.into_raw_fd())).unwrap();
        assert!(matches!(o.source, Source::Fixed(Some(_))));
        assert!(o.output.is_some());
        assert_eq!(o.size, None);

        let err = open(&StreamSpec::Fd(987_655)).unwrap_err();
        assert!(err.to_string().starts_with("--stream-fd 987655: "), "{err}");
    }

    #[test]
    fn pty_carries_bytes_and_survives_its_terminal_closing() {
        let o = open(&StreamSpec::Pty).unwrap();
        let Source::Pty {
            name, mut master, ..
        } = o.source
        else {
            panic!("not a pty");
        };
        let port = Port::new(o.output);
        for round in 0..2 {
            // A terminal program opens the slave, sees guest output, types.
            let mut term = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(&name)
                .unwrap();
            port.writer().output(b"out\n");
            let mut got = [0u8; 4];
            term.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"out\n", "round {round}: raw, no echo, no CR added");
            term.write_all(b"in").unwrap();
            let mut pfd = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
            assert_eq!(poll(&mut pfd, 5000u16).unwrap(), 1);
            let mut got = [0u8; 2];
            master.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"in");
            // The terminal closes; the next round reopens it.
        }
        assert_eq!(port.dropped.load(Ordering::Relaxed), 0);
    }
}
