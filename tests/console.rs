//! End to end: the virtio console is a separate `bulkhead-console` process; what the guest
//! writes reaches the host stream in order, and what the host writes reaches the guest.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

#[test]
fn guest_output_lands_in_the_console_file_in_order() {
    require_kvm!();
    let path = std::env::temp_dir().join(format!("bulkhead-console-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let mut cmd = common::bulkhead();
    cmd.arg("run")
        .args(["--console", &format!("file={}", path.display())])
        .args([
            "--cmdline",
            "bulkhead.test=console-write bulkhead.console.lines=50",
        ]);
    let out = common::run(cmd, Duration::from_secs(60));
    out.assert_no_panic();
    let log = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.code(), 0, "{out:#?}");
    let expected: Vec<String> = (0..50)
        .map(|n| format!("bulkhead-guest console: hello {n}"))
        .collect();
    let lines: Vec<&str> = log.lines().map(str::trim_end).collect();
    assert_eq!(lines, expected, "console file:\n{log}");
}

#[test]
fn host_input_reaches_the_guest_and_comes_back() {
    require_kvm!();
    let socket = std::env::temp_dir().join(format!("bulkhead-console-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let mut cmd = common::bulkhead();
    cmd.arg("run")
        .args(["--console", &format!("socket={}", socket.display())])
        .args([
            "--cmdline",
            "bulkhead.test=console-echo bulkhead.console.echo-ms=20000",
        ]);
    let child = std::thread::spawn(move || common::run(cmd, Duration::from_secs(60)));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = loop {
        match UnixStream::connect(&socket) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("connecting to the console socket: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let sent: Vec<u8> = (0..2000u32).map(|i| b'a' + (i % 26) as u8).collect();
    stream.write_all(&sent).unwrap();
    let mut back = vec![0u8; sent.len()];
    let got = stream.read_exact(&mut back);
    stream.write_all(&[0x04]).unwrap(); // Ctrl-D ends the echo
    let out = child.join().expect("bulkhead thread");
    let _ = std::fs::remove_file(&socket);
    out.assert_no_panic();
    got.unwrap_or_else(|e| panic!("reading the echo: {e}\n{out:#?}"));
    assert!(back == sent, "echo differs");
    assert_eq!(out.code(), 0, "{out:#?}");
}
