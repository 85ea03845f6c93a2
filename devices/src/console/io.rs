//! The I/O thread (`console-io`): waits for input on the stream (and, in socket mode, for
//! a client), and moves it into receive buffers, one read per readable event. When the
//! guest has no receive buffer it stops watching the stream, leaving bytes in the kernel's
//! buffer, until a receiveq kick wakes it (through the backend's wake eventfd).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bulkhead_seccomp::mode::process_mode;
use bulkhead_seccomp::thread::spawn_confined;
use bulkhead_seccomp::Role;
use std::time::Duration;

use log::{info, warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::backend::ConsoleBackend;
use super::device::RxEnd;
use super::stream::Source;

/// How long a `--socket` client may stall guest output before it is dropped (counted).
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// The running I/O thread.
#[derive(Debug)]
pub struct IoThread {
    backend: Arc<ConsoleBackend>,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Option<()>>,
}

impl IoThread {
    /// Starts the thread.
    pub fn spawn(backend: Arc<ConsoleBackend>, source: Source) -> io::Result<IoThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (Arc::clone(&backend), Arc::clone(&stop));
        // Confined as a console worker: it writes stream input into guest buffers.
        let handle = spawn_confined(
            "console-io",
            Role::ConsoleWorker,
            process_mode(),
            move || Loop::new(b, source, s).run(),
        )?;
        Ok(IoThread {
            backend,
            stop,
            handle,
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.backend.wake.write(1);
        let _ = self.handle.join();
    }
}

struct Loop {
    backend: Arc<ConsoleBackend>,
    source: Source,
    stop: Arc<AtomicBool>,
    /// The guest may have receive buffers: watch the stream.
    want_input: bool,
}

/// What the second poll entry is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Watch {
    Nothing,
    Accept,
    Input,
}

impl Loop {
    fn new(backend: Arc<ConsoleBackend>, source: Source, stop: Arc<AtomicBool>) -> Loop {
        Loop {
            backend,
            source,
            stop,
            want_input: true,
        }
    }

    fn watch(&self) -> (Watch, Option<BorrowedFd<'_>>) {
        match &self.source {
            Source::Listener {
                listener,
                client: None,
            } => (Watch::Accept, Some(listener.as_fd())),
            Source::Listener {
                client: Some(c), ..
            } if self.want_input => (Watch::Input, Some(c.as_fd())),
            Source::Fixed(Some(f)) if self.want_input => (Watch::Input, Some(f.as_fd())),
            Source::Pty { master, .. } if self.want_input => (Watch::Input, Some(master.as_fd())),
            _ => (Watch::Nothing, None),
        }
    }

    fn run(mut self) {
        loop {
            let (watch, fd) = self.watch();
            let wake = crate::sys::event_fd(&self.backend.wake);
            let mut fds = [
                PollFd::new(wake, PollFlags::POLLIN),
                PollFd::new(fd.unwrap_or(wake), PollFlags::POLLIN),
            ];
            let n = if fd.is_some() { 2 } else { 1 };
            match poll(&mut fds[..n], PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    warn!("console I/O thread: poll: {e}; stopping console input");
                    return;
                }
            }
            // Anything reported (a flag nix does not know reads as None) counts.
            let woke = |p: &PollFd| p.revents().is_none_or(|r| !r.is_empty());
            let (woken, ready) = (woke(&fds[0]), n == 2 && woke(&fds[1]));
            if woken {
                let _ = self.backend.wake.read();
                if self.stop.load(Ordering::SeqCst) {
                    return;
                }
                self.want_input = true;
            }
            if ready {
                match watch {
                    Watch::Accept => self.accept(),
                    Watch::Input => self.input(),
                    Watch::Nothing => {}
                }
            }
        }
    }

    fn accept(&mut self) {
        let Source::Listener { listener, client } = &mut self.source else {
            return;
        };
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                warn!("accepting a console client: {e}");
                return;
            }
        };
        let _ = stream.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT));
        match stream.try_clone() {
            Ok(out) => {
                info!("console client connected");
                self.backend
                    .port()
                    .set_output(Some(File::from(OwnedFd::from(out))));
                *client = Some(stream);
                self.want_input = true;
            }
            Err(e) => warn!("console client: {e}"),
        }
    }

    fn input(&mut self) {
        let end = {
            let reader: &mut dyn Read = match &mut self.source {
                Source::Listener {
                    client: Some(c), ..
                } => c,
                Source::Fixed(Some(f)) => f,
                Source::Pty { master, .. } => master,
                _ => return,
            };
            self.backend.receive(reader)
        };
        match end {
            RxEnd::Delivered(_) | RxEnd::Skipped => {}
            RxEnd::NoBuffers | RxEnd::Unusable => self.want_input = false,
            RxEnd::Error(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            RxEnd::Eof => self.input_ended(None),
            RxEnd::Error(e) => self.input_ended(Some(e)),
        }
    }

    fn input_ended(&mut self, error: Option<io::Error>) {
        let why = error.map_or_else(|| "end of file".to_string(), |e| e.to_string());
        match &mut self.source {
            Source::Listener { client, .. } => {
                info!("console client went away ({why}); dropping output until the next one");
                self.backend.port().set_output(None);
                *client = None;
            }
            Source::Fixed(input) => {
                info!("console input ended ({why})");
                *input = None;
            }
            Source::Pty { .. } => {
                warn!("console pty: {why}; no more input");
                self.source = Source::Fixed(None);
            }
        }
    }
}
