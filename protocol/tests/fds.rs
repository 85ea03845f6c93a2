//! File descriptors passed with a message arrive, work, and are close-on-exec.

mod common;

use bulkhead_protocol::{ChannelErrorKind, ToLauncher, ToProcess};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::thread;

/// A pipe: (read end, write end).
fn pipe() -> (File, File) {
    let mut fds = [-1; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

fn is_cloexec(fd: &OwnedFd) -> bool {
    // SAFETY: F_GETFD on an fd we own has no memory effects.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
    flags >= 0 && flags & libc::FD_CLOEXEC != 0
}

#[test]
fn passed_fds_arrive_in_order_and_work() {
    let (mut launcher, mut process) = common::channel_pair::<ToProcess, ToLauncher>();
    let (mut read0, write0) = pipe();
    let (mut read1, write1) = pipe();
    let names = vec!["first".to_string(), "second".to_string()];
    let msg = ToProcess::Resources {
        names: names.clone(),
    };
    let receiver = thread::spawn(move || {
        process.handshake().unwrap();
        let (got, fds) = process.recv().unwrap();
        assert_eq!(got, ToProcess::Resources { names });
        assert_eq!(fds.len(), 2);
        assert!(
            fds.iter().all(is_cloexec),
            "received fds must be close-on-exec"
        );
        for (fd, text) in fds.into_iter().zip(["through fd 0", "through fd 1"]) {
            File::from(fd).write_all(text.as_bytes()).unwrap();
        }
        process
            .send(
                &ToLauncher::Ready {
                    role: "blk".into(),
                    pid: 1,
                },
                &[],
            )
            .unwrap();
    });
    launcher.handshake().unwrap();
    launcher
        .send(&msg, &[write0.as_fd(), write1.as_fd()])
        .unwrap();
    // Our copies stay open after send; close them so the pipes reach EOF once the
    // receiver's copies are closed too.
    drop((write0, write1));
    let (ready, fds) = launcher.recv().unwrap();
    assert!(matches!(ready, ToLauncher::Ready { .. }));
    assert!(fds.is_empty());
    receiver.join().unwrap();
    let mut text = String::new();
    read0.read_to_string(&mut text).unwrap();
    assert_eq!(text, "through fd 0");
    text.clear();
    read1.read_to_string(&mut text).unwrap();
    assert_eq!(text, "through fd 1");
}

#[test]
fn send_refuses_a_different_fd_count_than_the_message_declares() {
    let (mut launcher, mut process) = common::channel_pair::<ToProcess, ToLauncher>();
    let (_read, write) = pipe();
    let err = launcher
        .send(&ToProcess::Shutdown, &[write.as_fd()])
        .unwrap_err();
    assert!(
        matches!(
            err.kind,
            ChannelErrorKind::FdCountMismatch {
                message: "Shutdown",
                expected: 0,
                given: 1
            }
        ),
        "{err}"
    );
    let two = ToProcess::Resources {
        names: vec!["a".into(), "b".into()],
    };
    let err = launcher.send(&two, &[write.as_fd()]).unwrap_err();
    assert!(
        matches!(
            err.kind,
            ChannelErrorKind::FdCountMismatch {
                expected: 2,
                given: 1,
                ..
            }
        ),
        "{err}"
    );
    // A caller's mistake sends nothing and does not break the channel.
    launcher.send(&ToProcess::Pause, &[]).unwrap();
    assert_eq!(process.recv().unwrap().0, ToProcess::Pause);
}
