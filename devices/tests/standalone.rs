//! Backends as their own processes (copies of this test binary, every thread under its
//! seccomp filter, enforce): a standalone `bulkhead-console --socket-path` serves two
//! frontends one after the other, bytes in order both ways each time, and on SIGTERM
//! exits 0 and removes its socket; the launcher's `Shutdown` ends `bulkhead-blk` (after a
//! flush) and `bulkhead-console` with `Exited{code: 0}` and status 0, at once rather than
//! after the launcher's grace period.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use bulkhead_protocol::{LauncherChannel, ToLauncher, ToProcess};
use common::{guest_memory, Mem, Ring, PROTOCOL_FEATURES_BIT};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::Frontend;
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempdir::TempDir;
use vmm_sys_util::tempfile::TempFile;

const MEM_SIZE: usize = 1 << 20;
const QUEUE_SIZE: u16 = 64;

/// Set in a copy of this test binary that runs a backend as its own process: the program
/// (`blk` or `console`), then its arguments, separated by spaces.
const CHILD_ENV: &str = "BULKHEAD_STANDALONE_TEST_CHILD";

/// Not a test of its own: the body of the process [`backend`] starts.
#[test]
fn child_backend() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut words = spec.split(' ').map(str::to_string);
    let program = words.next().unwrap();
    let mut args = vec![
        format!("bulkhead-{program}"),
        "--landlock".into(),
        "off".into(),
        "--seccomp".into(),
        "enforce".into(),
    ];
    args.extend(words);
    let code = match program.as_str() {
        "blk" => bulkhead_devices::block::main_with_args(args),
        "console" => bulkhead_devices::console::main_with_args(args),
        other => panic!("no backend {other}"),
    };
    std::process::exit(code);
}

/// `program` with `args` in a process of its own; `inherit` are descriptors it inherits
/// (their numbers appear in `args`). Its stderr is piped (RUST_LOG=info).
fn backend(program: &str, args: &str, inherit: &[RawFd]) -> Child {
    common::child::spawn(CHILD_ENV, &format!("{program} {args}"), inherit)
}

/// Waits (at most 10 s) for `child`; its status and stderr.
fn finish(child: Child) -> (std::process::ExitStatus, String) {
    common::child::finish(child, Duration::from_secs(10))
}

/// A console frontend: negotiated, memory shared, both queues running.
struct Console {
    _fe: Frontend,
    mem: Mem,
    _memfd: std::fs::File,
    rx: Ring,
    tx: Ring,
}

impl Console {
    fn connect(stream: UnixStream) -> Console {
        let mut fe = Frontend::from_stream(stream, 2);
        let (mem, memfd) = guest_memory(MEM_SIZE);
        let want = (1 << VIRTIO_F_VERSION_1) | PROTOCOL_FEATURES_BIT;
        let needed = VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK;
        common::negotiate(&mut fe, &mem, &memfd, want, needed, |_| want);
        let rx = Ring::new(0, 0, QUEUE_SIZE);
        let tx = Ring::new(1, 0x4000, QUEUE_SIZE);
        rx.set_up(&mut fe, &mem);
        tx.set_up(&mut fe, &mem);
        Console {
            _fe: fe,
            mem,
            _memfd: memfd,
            rx,
            tx,
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        let at = 0x10000;
        self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
        let head = self.tx.add_one(&self.mem, at, bytes.len() as u32, false);
        assert_eq!(
            self.tx.kick_and_wait(&self.mem, 1),
            vec![(u32::from(head), 0)]
        );
    }

    fn read(&mut self, len: u32) -> Vec<u8> {
        let at = 0x20000;
        let head = self.rx.add_one(&self.mem, at, len, true);
        let used = self.rx.kick_and_wait(&self.mem, 1);
        assert_eq!(used[0].0, u32::from(head));
        let mut v = vec![0u8; used[0].1 as usize];
        self.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }
}

/// Connects to `path`, retrying while the backend is starting (at most 10 s).
fn connect(path: &Path) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("connecting to {path:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn a_standalone_console_serves_two_frontends_in_a_row() {
    let dir = TempDir::new().unwrap();
    let path = dir.as_path().join("console.sock");
    let (mut host, stream) = UnixStream::pair().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let stream_fd = stream.into_raw_fd();
    let child = backend(
        "console",
        &format!("--socket-path {} --stream-fd {stream_fd}", path.display()),
        &[stream_fd],
    );
    // SAFETY: our copy of the stream's end, which the child inherited.
    unsafe { libc::close(stream_fd) };

    for round in ["one", "two"] {
        let mut guest = Console::connect(connect(&path));
        let line = format!("frontend {round}\n");
        guest.write(line.as_bytes());
        let mut got = vec![0u8; line.len()];
        host.read_exact(&mut got).unwrap();
        assert_eq!(got, line.as_bytes(), "guest to host, frontend {round}");
        let typed = format!("typed to {round}");
        host.write_all(typed.as_bytes()).unwrap();
        let mut got = Vec::new();
        while got.len() < typed.len() {
            got.extend(guest.read(64));
        }
        assert_eq!(got, typed.as_bytes(), "host to guest, frontend {round}");
        drop(guest);
    }

    sigterm(&child);
    let (status, stderr) = finish(child);
    assert!(status.success(), "{status:?}\n{stderr}");
    assert_eq!(
        stderr.matches("serving a frontend on").count(),
        2,
        "one process, two frontends:\n{stderr}"
    );
    // The socket keeper removes it once the backend is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while path.exists() {
        assert!(Instant::now() < deadline, "{path:?} still there\n{stderr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM to the backend's `signals` thread. Only the backend's threads block SIGTERM in
/// this copy of the test binary (libtest's own threads do not, unlike a backend binary's
/// main thread), so a signal to the whole process would end it at once; the binary's own
/// SIGTERM is tested on bulkhead-blk in tests/blk_standalone.rs.
fn sigterm(child: &Child) {
    let pid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(5);
    let tid = loop {
        let found = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(Result::ok)
            .find(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "signals")
            })
            .and_then(|t| t.file_name().to_str()?.parse::<i32>().ok());
        match found {
            Some(tid) => break tid,
            None if Instant::now() > deadline => panic!("no signals thread in {pid}"),
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    // SAFETY: tgkill with our child's pid, one of its thread ids and a valid signal.
    let ret = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGTERM) };
    assert_eq!(ret, 0, "tgkill: {}", std::io::Error::last_os_error());
}

/// The launcher's end of a backend's control socket, after the handshake and `Ready`.
fn launcher(ours: UnixStream) -> LauncherChannel {
    let mut channel = LauncherChannel::new(ours, "backend");
    channel
        .set_timeouts(Some(Duration::from_secs(10)), Some(Duration::from_secs(10)))
        .unwrap();
    channel.handshake().unwrap();
    match channel.recv().unwrap().0 {
        ToLauncher::Ready { .. } => channel,
        other => panic!("expected Ready, got {other:?}"),
    }
}

/// Starts `program` on a connected vhost-user socket (the launcher's way) with a control
/// socket; sends Shutdown once a frontend is set up; the backend must answer Exited{0}
/// and exit 0 well within the launcher's 2 s grace.
fn shut_down(
    program: &str,
    extra: &str,
    extra_fds: &[RawFd],
    set_up: impl FnOnce(UnixStream),
) -> String {
    let (fe_end, be_end) = UnixStream::pair().unwrap();
    let (ctl_ours, ctl_theirs) = UnixStream::pair().unwrap();
    let (be, ctl) = (be_end.as_raw_fd(), ctl_theirs.as_raw_fd());
    let mut inherit = vec![be, ctl];
    inherit.extend_from_slice(extra_fds);
    let child = backend(
        program,
        &format!("--fd {be} --control-fd {ctl} {extra}"),
        &inherit,
    );
    drop((be_end, ctl_theirs));
    let mut channel = launcher(ctl_ours);
    set_up(fe_end);
    let asked = Instant::now();
    channel.send(&ToProcess::Shutdown, &[]).unwrap();
    let reply = channel.recv().map(|(m, _)| m);
    let (status, stderr) = finish(child);
    let took = asked.elapsed();
    assert!(
        matches!(reply, Ok(ToLauncher::Exited { code: 0 })),
        "{reply:?}\n{stderr}"
    );
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(
        took < Duration::from_millis(1500),
        "took {took:?}\n{stderr}"
    );
    assert!(
        stderr.contains("asked this process to shut down"),
        "{stderr}"
    );
    stderr
}

#[test]
fn shutdown_ends_bulkhead_blk_after_a_flush() {
    let img = TempFile::new().unwrap();
    img.as_file().set_len(1 << 20).unwrap();
    let mut kept = None;
    let stderr = shut_down(
        "blk",
        &format!("--blk-file {}", img.as_path().display()),
        &[],
        |fe_end| {
            let mut fe = Frontend::from_stream(fe_end, 1);
            let (mem, memfd) = guest_memory(MEM_SIZE);
            let want = (1 << VIRTIO_F_VERSION_1) | PROTOCOL_FEATURES_BIT;
            let needed = VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK;
            common::negotiate(&mut fe, &mem, &memfd, want, needed, |_| want);
            Ring::new(0, 0, QUEUE_SIZE).set_up(&mut fe, &mem);
            kept = Some((fe, mem, memfd));
        },
    );
    assert!(stderr.contains("image flushed"), "{stderr}");
}

#[test]
fn shutdown_ends_bulkhead_console() {
    let (_host, stream) = UnixStream::pair().unwrap();
    let stream_fd = stream.as_raw_fd();
    let mut kept = None;
    shut_down(
        "console",
        &format!("--stream-fd {stream_fd}"),
        &[stream_fd],
        |fe_end| {
            let mut guest = Console::connect(fe_end);
            guest.write(b"before the shutdown\n");
            kept = Some(guest);
        },
    );
}
