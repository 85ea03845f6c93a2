//! End to end: the virtio console is a separate `bulkhead-console` process; what the guest
//! writes reaches the host stream in order, and what the host writes reaches the guest;
//! on both transports (`mmio::`, `pci::`).

mod common;

use common::transport::{assert_guest_used, bulkhead_run, Transport};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

fn guest_output_lands_in_the_console_file_in_order(t: Transport) {
    require_kvm!();
    let path =
        std::env::temp_dir().join(format!("bulkhead-console-{t}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let mut cmd = bulkhead_run(t);
    cmd.args(["--console", &format!("file={}", path.display())])
        .args([
            "--cmdline",
            "bulkhead.test=console-write bulkhead.console.lines=50",
        ]);
    let out = common::run(cmd, Duration::from_secs(60));
    out.assert_no_panic();
    let log = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.code(), 0, "{out:#?}");
    assert_guest_used(t, &out.stdout);
    let expected: Vec<String> = (0..50)
        .map(|n| format!("bulkhead-guest console: hello {n}"))
        .collect();
    let lines: Vec<&str> = log.lines().map(str::trim_end).collect();
    assert_eq!(lines, expected, "console file:\n{log}");
}

fn host_input_reaches_the_guest_and_comes_back(t: Transport) {
    require_kvm!();
    let socket =
        std::env::temp_dir().join(format!("bulkhead-console-{t}-{}.sock", std::process::id()));
    let (child, mut stream) = echo_on_socket(t, &socket);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let sent: Vec<u8> = (0..2000u32).map(|i| b'a' + (i % 26) as u8).collect();
    stream.write_all(&sent).unwrap();
    let mut back = vec![0u8; sent.len()];
    let got = stream.read_exact(&mut back);
    stream.write_all(&[0x04]).unwrap(); // Ctrl-D ends the echo
    let out = child.join().expect("bulkhead thread");
    // The launcher made the socket file; it removes it when the VM has ended.
    let left = std::fs::symlink_metadata(&socket).is_ok();
    let _ = std::fs::remove_file(&socket);
    out.assert_no_panic();
    got.unwrap_or_else(|e| panic!("reading the echo: {e}\n{out:#?}"));
    assert!(back == sent, "echo differs");
    assert_eq!(out.code(), 0, "{out:#?}");
    assert_guest_used(t, &out.stdout);
    assert!(!left, "the console socket {} is left", socket.display());
}

#[test]
fn a_file_that_replaced_the_console_socket_is_kept() {
    require_kvm!();
    let socket = std::env::temp_dir().join(format!(
        "bulkhead-console-replaced-{}.sock",
        std::process::id()
    ));
    let (child, mut stream) = echo_on_socket(Transport::Mmio, &socket);
    // Someone puts another file at the path while the VM runs.
    let other = socket.with_extension("other");
    std::fs::write(&other, b"someone else's").unwrap();
    std::fs::rename(&other, &socket).unwrap();
    stream.write_all(&[0x04]).unwrap(); // Ctrl-D ends the echo
    let out = child.join().expect("bulkhead thread");
    let kept = std::fs::symlink_metadata(&socket)
        .ok()
        .filter(|m| m.is_file())
        .and_then(|_| std::fs::read(&socket).ok());
    let _ = std::fs::remove_file(&socket);
    out.assert_no_panic();
    assert_eq!(out.code(), 0, "{out:#?}");
    assert_eq!(
        kept.as_deref(),
        Some(&b"someone else's"[..]),
        "the file at {} was not kept",
        socket.display()
    );
}

/// Starts a VM on transport `t` whose guest echoes its console (`console-echo`) on a
/// console socket at `socket` (removing what an earlier run left there), and connects to
/// it: the running bulkhead (its output once it ends) and the connection.
fn echo_on_socket(
    t: Transport,
    socket: &std::path::Path,
) -> (std::thread::JoinHandle<common::Output>, UnixStream) {
    let _ = std::fs::remove_file(socket);
    let mut cmd = bulkhead_run(t);
    cmd.args(["--console", &format!("socket={}", socket.display())])
        .args([
            "--cmdline",
            "bulkhead.test=console-echo bulkhead.console.echo-ms=20000",
        ]);
    let child = std::thread::spawn(move || common::run(cmd, Duration::from_secs(60)));
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("connecting to the console socket: {e}"),
        }
    };
    (child, stream)
}

/// A pseudo-terminal of `cols` x `rows`: (master, slave).
fn pty(cols: u16, rows: u16) -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (0, 0);
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two new fds and reads the winsize; no name or termios.
    let ret = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    assert_eq!(ret, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: two fresh fds nothing else owns.
    unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    }
}

fn a_terminal_resize_reaches_the_guest(t: Transport) {
    use std::io::BufRead;
    use std::os::fd::AsRawFd;
    require_kvm!();
    let (master, slave) = pty(100, 30);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["run", "--console", "stdio"])
        .args(common::transport::flags(t))
        .arg("--cmdline")
        .arg("bulkhead.test=console-resize bulkhead.console.resize-ms=20000")
        .stdin(slave.try_clone().unwrap())
        .stdout(slave)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting bulkhead");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = master.try_clone().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line.trim_end_matches('\r').to_owned()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                seen.push(line.clone());
                if line.ends_with(want) {
                    return true;
                }
            }
        }
        false
    };
    let started = wait_for("console0 size cols=100 rows=30");
    if started {
        let ws = libc::winsize {
            ws_row: 43,
            ws_col: 132,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize.
        let set = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(set, 0);
        // What the terminal sends its foreground process when resized.
        // SAFETY: SIGWINCH to the bulkhead process this test started.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGWINCH) }, 0);
    }
    let resized = started && wait_for("console0 size cols=132 rows=43");
    let passed = resized && wait_for("PASS console-resize");
    let status = common::wait_until(&mut child, Instant::now() + Duration::from_secs(30));
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(
        passed,
        "guest lines:\n{}\nstderr:\n{stderr}",
        seen.join("\n")
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{stderr}");
    assert_guest_used(t, &seen.join("\n"));
}

fn console_output_reaches_a_stdout_redirected_to_a_file(t: Transport) {
    require_kvm!();
    // `bulkhead run > out.txt`: the console on stdio writes to the user's file, which no
    // file-size limit of the console process may cut (it once had FSIZE 0: EFBIG). The
    // serial console goes there too: its boot lines say which transport the guest used.
    let out = std::env::temp_dir().join(format!(
        "bulkhead-console-stdout-{t}-{}.txt",
        std::process::id()
    ));
    let file = std::fs::File::create(&out).expect("creating the stdout file");
    let mut child = bulkhead_run(t)
        .args(["--console", "stdio", "--serial", "stdio"])
        .stdout(file)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting bulkhead");
    let status = common::wait_until(&mut child, Instant::now() + Duration::from_secs(60));
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let written = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{stderr}");
    assert!(
        written.contains("bulkhead-guest console-probe: port 0 transmits"),
        "stdout file: {written:?}\nstderr: {stderr}"
    );
    assert!(!stderr.contains("File too large"), "{stderr}");
    assert_guest_used(t, &written);
}

on_both_transports!(
    guest_output_lands_in_the_console_file_in_order,
    host_input_reaches_the_guest_and_comes_back,
    a_terminal_resize_reaches_the_guest,
    console_output_reaches_a_stdout_redirected_to_a_file,
);
