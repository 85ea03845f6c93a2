//! End to end: the vmm finishes its jail before it reads anything from a peer. The test is
//! the vhost-user backend of a `--disk socket=PATH`: when the vmm's first message arrives
//! (GET_FEATURES), the test finds the vmm (a child of the launcher, which connected the
//! socket and passed it on) and looks at it from outside — it must already run
//! as the unprivileged uid, with no capabilities, `no_new_privs` and its empty root. (The
//! kernel image is read later still, in the same step as the vhost-user set-up.)

mod common;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// VHOST_USER_GET_FEATURES.
const GET_FEATURES: u32 = 1;
/// VHOST_USER_SET_OWNER.
const SET_OWNER: u32 = 3;

/// The pid of the process that connected `stream` (SO_PEERCRED, in our pid namespace).
fn peer_pid(stream: &UnixStream) -> i32 {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a ucred of that size.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "SO_PEERCRED: {}", std::io::Error::last_os_error());
    cred.pid
}

/// The whitespace-separated values of field `name` (`"Uid:"`) in a /proc status file.
fn field<'a>(status: &'a str, name: &str) -> Vec<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.split_whitespace().collect())
        .unwrap_or_default()
}

fn accept_within(listener: &UnixListener, limit: Duration) -> UnixStream {
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).expect("blocking stream");
                return s;
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("the vmm never connected: {e}"),
        }
    }
}

#[test]
fn the_vmm_is_jailed_before_its_first_vhost_user_message() {
    require_kvm!();
    let path =
        std::env::temp_dir().join(format!("bulkhead-jail-order-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("binding the backend socket");
    let mut cmd = common::bulkhead();
    cmd.arg("run")
        .args(["--disk", &format!("socket={}", path.display())])
        .args(["--cmdline", "bulkhead.test=blk-probe"]);
    let run = std::thread::spawn(move || common::run(cmd, Duration::from_secs(60)));
    let mut stream = accept_within(&listener, Duration::from_secs(30));
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    // The vmm's messages up to GET_FEATURES (SET_OWNER comes first and wants no reply);
    // each header is request, flags, size (u32 LE each), then `size` bytes.
    let mut requests = Vec::new();
    let got = (|| -> std::io::Result<()> {
        while requests.last() != Some(&GET_FEATURES) && requests.len() < 4 {
            let mut header = [0u8; 12];
            stream.read_exact(&mut header)?;
            let word = |i: usize| {
                u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]])
            };
            let mut payload = vec![0u8; word(8) as usize];
            stream.read_exact(&mut payload)?;
            requests.push(word(0));
        }
        Ok(())
    })();
    // Looked at while the vmm waits for our reply. The launcher connected the socket (and
    // passed it to the vmm): the vmm is its child.
    let launcher = peer_pid(&stream);
    let pid = common::running::children(launcher as u32)
        .into_iter()
        .find(|(_, name)| name == "bulkhead-vmm")
        .map_or(0, |(pid, _)| pid);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let root_entries = std::fs::read_dir(format!("/proc/{pid}/root"))
        .map(|d| d.count())
        .unwrap_or(usize::MAX);
    // No reply: the vmm gives up on the disk and bulkhead ends.
    drop(stream);
    let out = run.join().expect("bulkhead thread");
    let _ = std::fs::remove_file(&path);
    out.assert_no_panic();
    got.unwrap_or_else(|e| panic!("no message from the vmm: {e}\n{out:#?}"));
    assert_eq!(requests, [SET_OWNER, GET_FEATURES], "the first messages");
    assert!(
        exe.file_name().is_some_and(|n| n == "bulkhead-vmm"),
        "peer {pid} is {exe:?}"
    );
    let uids = field(&status, "Uid:");
    assert_eq!(uids.len(), 4, "{status}");
    assert!(
        uids.iter().all(|u| *u != "0" && *u == uids[0]),
        "the vmm still had uid 0 when it spoke vhost-user: Uid {uids:?}"
    );
    assert_eq!(field(&status, "CapEff:"), ["0000000000000000"], "{status}");
    assert_eq!(field(&status, "CapPrm:"), ["0000000000000000"], "{status}");
    assert_eq!(field(&status, "NoNewPrivs:"), ["1"], "{status}");
    assert_eq!(root_entries, 0, "the vmm's root is not the empty one yet");
}
