//! The API server loop: one thread polling the listening socket and every connection
//! (non-blocking), so a client that stalls half-way through a request only loses its own
//! connection after [`STALL_TIMEOUT`]; connections stay open between requests (keep-alive,
//! as the Go SDK's pooled clients expect). The loop ends when the VM's launcher exits, or
//! on a stop signal (see [`super::stop`]).

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::http::{self, Parsed, Response};
use super::instance::Instance;
use super::routes;

/// How long a client may take to finish a request it began.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed on arrival.
const MAX_CONNECTIONS: usize = 32;
/// Poll interval (also how soon the launcher's exit is seen).
const TICK_MS: u16 = 100;

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    /// When the unfinished request in `buf` began.
    since: Option<Instant>,
    /// Whether `100 Continue` was sent for the unfinished request.
    continued: bool,
}

/// Serves `listener` for `vm` until its launcher exits (its status) or a stop signal is
/// caught (128 + the signal, once the VM is stopped).
pub fn serve(listener: &UnixListener, vm: &mut Instance, max_body: usize) -> i32 {
    let _ = listener.set_nonblocking(true);
    let mut conns: Vec<Conn> = Vec::new();
    loop {
        if let Some(code) = vm.launcher.as_mut().and_then(|l| l.exited()) {
            vm.logger.info(
                "server",
                &format!("the VM stopped: bulkhead run exited with {code}"),
            );
            return code;
        }
        if let Some(signal) = vm.stop.requested() {
            return super::stop::stop(vm, signal);
        }
        // The stop signals' pipe last, so the connections keep their indices (i + 1).
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd> = std::iter::once(listener.as_fd())
                .chain(conns.iter().map(|c| c.stream.as_fd()))
                .chain(vm.stop.fd())
                .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
                .collect();
            if nix::poll::poll(&mut fds, PollTimeout::from(TICK_MS)).is_err() {
                continue;
            }
            // nix shows no flags when the kernel sets one it cannot name: ready all the same.
            fds.iter()
                .map(|p| p.revents().is_none_or(|r| !r.is_empty()))
                .collect()
        };
        let polled = conns.len();
        if ready[0] {
            while let Ok((stream, _)) = listener.accept() {
                if conns.len() >= MAX_CONNECTIONS || stream.set_nonblocking(true).is_err() {
                    vm.logger
                        .error("server", "too many API connections: one refused");
                    continue;
                }
                conns.push(Conn {
                    stream,
                    buf: Vec::new(),
                    since: None,
                    continued: false,
                });
            }
        }
        let now = Instant::now();
        let mut keep = Vec::with_capacity(conns.len());
        for (i, mut c) in conns.into_iter().enumerate() {
            let readable = i < polled && ready.get(i + 1).is_some_and(|&r| r);
            let open = if readable {
                serve_conn(&mut c, vm, max_body)
            } else {
                true
            };
            let stalled = c
                .since
                .is_some_and(|t| now.duration_since(t) > STALL_TIMEOUT);
            if stalled {
                vm.logger
                    .error("server", "an API client stalled mid-request: closed");
                let r = Response::fault(
                    408,
                    "Request timed out: the request was not completed in time.",
                );
                let _ = c.stream.write_all(&r.to_bytes(true));
            }
            if open && !stalled {
                keep.push(c);
            }
        }
        conns = keep;
    }
}

/// Reads what `c` sent and answers every whole request in it; false to close it.
fn serve_conn(c: &mut Conn, vm: &mut Instance, max_body: usize) -> bool {
    let limit = http::MAX_HEADER_BYTES + max_body + 1;
    let mut chunk = [0u8; 4096];
    loop {
        match c.stream.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => {
                c.buf.extend_from_slice(&chunk[..n]);
                if c.buf.len() > limit {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    loop {
        match http::parse(&c.buf, max_body) {
            Parsed::ExpectsContinue => {
                c.since.get_or_insert_with(Instant::now);
                if !c.continued {
                    c.continued = true;
                    if c.stream
                        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                        .is_err()
                    {
                        return false;
                    }
                }
                return true;
            }
            Parsed::Partial => {
                if c.buf.is_empty() {
                    c.since = None;
                } else if c.since.is_none() {
                    c.since = Some(Instant::now());
                }
                return true;
            }
            Parsed::Refused(msg) => {
                vm.logger.error("server", &msg);
                vm.metrics.requests_failed += 1;
                let _ = c
                    .stream
                    .write_all(&Response::bad_request(&msg).to_bytes(true));
                return false;
            }
            Parsed::Complete(req, used) => {
                c.buf.drain(..used);
                c.since = None;
                c.continued = false;
                let answer = routes::handle(vm, &req);
                // A client that does not read its answers loses its connection, nobody else.
                if c.stream.write_all(&answer.to_bytes(req.close)).is_err() || req.close {
                    return false;
                }
            }
        }
    }
}
