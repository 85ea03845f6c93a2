//! A hostile or broken vhost-user peer: the frontend's handshake fails with an error that
//! names the device and the request — never a panic, never a hang past the reply timeout.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bulkhead_vmm::memory::GuestMemory;
use bulkhead_vmm::virtio::interrupts::Interrupts;
use bulkhead_vmm::virtio::vhost_user::{
    BackendSocket, SharedMemory, VhostUserDevice, REPLY_TIMEOUT,
};
use std::os::fd::AsRawFd;
use vmm_sys_util::eventfd::EventFd;

/// Connects a frontend for `disk0` to a peer played by `peer` on a thread.
fn connect_to(peer: impl FnOnce(UnixStream) + Send + 'static) -> Result<VhostUserDevice, String> {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || peer(theirs));
    let memory = GuestMemory::new(1 << 20).unwrap();
    let shared = SharedMemory {
        mem: memory.mem.clone(),
        memfd: memory.file.as_raw_fd(),
    };
    let result = VhostUserDevice::connect(
        "disk0",
        2,
        BackendSocket::Connected(ours),
        vec![EventFd::new(0).unwrap()],
        |n| Interrupts::shared(EventFd::new(0)?, n),
        shared,
    )
    .map_err(|e| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        msg
    });
    let _ = t.join();
    result
}

/// Reads one request header (and its body) from the frontend; returns the request code.
fn read_request(s: &mut UnixStream) -> Option<u32> {
    let mut hdr = [0u8; 12];
    s.read_exact(&mut hdr).ok()?;
    let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
    let mut body = vec![0u8; size];
    s.read_exact(&mut body).ok()?;
    Some(u32::from_le_bytes(hdr[0..4].try_into().unwrap()))
}

fn reply_u64(s: &mut UnixStream, request: u32, value: u64) {
    let mut m = Vec::new();
    m.extend_from_slice(&request.to_le_bytes());
    m.extend_from_slice(&0x5u32.to_le_bytes()); // version 1 | reply
    m.extend_from_slice(&8u32.to_le_bytes());
    m.extend_from_slice(&value.to_le_bytes());
    let _ = s.write_all(&m);
}

#[test]
fn peer_that_hangs_up_at_once() {
    let e = connect_to(drop).err().expect("connect must fail");
    assert!(e.starts_with("disk0: vhost-user"), "{e}");
}

#[test]
fn peer_that_never_answers_times_out() {
    let start = Instant::now();
    let e = connect_to(|mut s| {
        let _ = read_request(&mut s); // SET_OWNER (no reply expected)
        let _ = read_request(&mut s); // GET_FEATURES: never answered
        std::thread::sleep(REPLY_TIMEOUT + Duration::from_secs(1));
    })
    .err()
    .expect("connect must fail");
    assert!(e.contains("GET_FEATURES"), "{e}");
    assert!(
        start.elapsed() < REPLY_TIMEOUT + Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn peer_that_never_answers_and_stays_connected_times_out() {
    // The frontend's socket timeout alone would not end this: vhost retries a read that
    // timed out. The watchdog shuts the connection down at the deadline.
    let start = Instant::now();
    let e = connect_to(move |mut s| {
        let _ = read_request(&mut s); // SET_OWNER
        let _ = read_request(&mut s); // GET_FEATURES: never answered
                                      // Connected until the frontend ends the connection (or 4 timeouts).
        s.set_read_timeout(Some(REPLY_TIMEOUT * 4)).unwrap();
        let _ = s.read_to_end(&mut Vec::new());
    });
    let e = e.err().expect("connect must fail");
    assert!(e.contains("GET_FEATURES") && e.contains("within"), "{e}");
    assert!(
        start.elapsed() < REPLY_TIMEOUT + Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn peer_that_answers_garbage() {
    let e = connect_to(|mut s| {
        let _ = read_request(&mut s);
        let _ = read_request(&mut s);
        let _ = s.write_all(&[0xff; 64]);
    })
    .err()
    .expect("connect must fail");
    assert!(e.contains("GET_FEATURES"), "{e}");
}

#[test]
fn peer_that_answers_the_wrong_request() {
    let e = connect_to(|mut s| {
        let _ = read_request(&mut s);
        let _ = read_request(&mut s);
        reply_u64(&mut s, 15, 0); // a GET_PROTOCOL_FEATURES reply to GET_FEATURES
    })
    .err()
    .expect("connect must fail");
    assert!(e.contains("GET_FEATURES"), "{e}");
}

#[test]
fn peer_without_protocol_features_is_refused() {
    let e = connect_to(|mut s| {
        let _ = read_request(&mut s);
        let req = read_request(&mut s).unwrap_or(0);
        reply_u64(&mut s, req, 1 << 32); // VERSION_1 only
    })
    .err()
    .expect("connect must fail");
    assert!(
        e.contains("does not offer VHOST_USER_F_PROTOCOL_FEATURES"),
        "{e}"
    );
}

#[test]
fn peer_without_config_space_is_refused() {
    let e = connect_to(|mut s| {
        let _ = read_request(&mut s); // SET_OWNER
        let req = read_request(&mut s).unwrap_or(0); // GET_FEATURES
        reply_u64(&mut s, req, (1 << 32) | (1 << 30));
        let req = read_request(&mut s).unwrap_or(0); // GET_PROTOCOL_FEATURES
        reply_u64(&mut s, req, 0);
        let _ = read_request(&mut s); // SET_PROTOCOL_FEATURES
    })
    .err()
    .expect("connect must fail");
    assert!(e.contains("CONFIG"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Reconnection (issue 12): peers that die mid-set-up, come back with fewer features, lie
// about ring positions or the inflight region, or never answer during a replay. The vmm
// refuses what it must (the device needs a reset, the VM goes on) and never hangs.

mod reconnect {
    use super::*;
    use bulkhead_vmm::devices::bus::BusDevice;
    use bulkhead_vmm::virtio::mmio::MmioTransport;
    use bulkhead_vmm::virtio::{QueueConfig, ReconnectError, VirtioBackend};
    use std::fs::File;
    use std::sync::{Arc, Mutex};
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;

    const SET_OWNER: u32 = 3;
    const GET_FEATURES: u32 = 1;
    const SET_FEATURES: u32 = 2;
    const SET_MEM_TABLE: u32 = 5;
    const SET_VRING_NUM: u32 = 8;
    const SET_VRING_ADDR: u32 = 9;
    const SET_VRING_BASE: u32 = 10;
    const GET_VRING_BASE: u32 = 11;
    const SET_VRING_KICK: u32 = 12;
    const SET_VRING_CALL: u32 = 13;
    const GET_PROTOCOL_FEATURES: u32 = 15;
    const SET_PROTOCOL_FEATURES: u32 = 16;
    const GET_QUEUE_NUM: u32 = 17;
    const SET_VRING_ENABLE: u32 = 18;
    const GET_CONFIG: u32 = 24;
    const GET_INFLIGHT_FD: u32 = 31;
    const SET_INFLIGHT_FD: u32 = 32;

    const VERSION_1: u64 = 1 << 32;
    const EVENT_IDX: u64 = 1 << 29;
    const PROTOCOL_FEATURES: u64 = 1 << 30;
    const BLK_F_FLUSH: u64 = 1 << 9;
    const P_MQ: u64 = 1 << 0;
    const P_REPLY_ACK: u64 = 1 << 3;
    const P_CONFIG: u64 = 1 << 9;
    const P_INFLIGHT: u64 = 1 << 12;

    /// What the driver acked in these tests.
    const ACKED: u64 = VERSION_1 | EVENT_IDX | BLK_F_FLUSH;
    /// Where the one queue's rings are (guest-physical).
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    /// How the inflight region is answered.
    #[derive(Clone, Copy)]
    enum Region {
        /// A sealed memfd of the size claimed.
        Sound,
        /// Claims more than its memfd holds.
        Short,
    }

    /// How a scripted peer behaves.
    #[derive(Clone)]
    struct Script {
        features: u64,
        protocol: u64,
        region: Region,
        /// Hangs up on receiving this request.
        die_on: Option<u32>,
        /// Never answers this request (waits until the frontend gives up).
        silent_on: Option<u32>,
        /// Refuses this request (a non-zero REPLY_ACK).
        nack_on: Option<u32>,
    }

    impl Default for Script {
        fn default() -> Self {
            Script {
                features: ACKED | PROTOCOL_FEATURES | (1 << 6),
                protocol: P_MQ | P_REPLY_ACK | P_CONFIG | P_INFLIGHT,
                region: Region::Sound,
                die_on: None,
                silent_on: None,
                nack_on: None,
            }
        }
    }

    /// One request as the peer received it.
    #[derive(Debug)]
    struct Seen {
        code: u32,
        flags: u32,
        body: Vec<u8>,
        fd: bool,
    }

    type Log = Arc<Mutex<Vec<Seen>>>;

    fn recv(s: &mut UnixStream) -> Option<(Seen, Option<File>)> {
        let mut hdr = [0u8; 12];
        let (n, file) = s.recv_with_fd(&mut hdr).ok()?;
        if n == 0 {
            return None;
        }
        s.read_exact(&mut hdr[n..]).ok()?;
        let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
        let mut body = vec![0u8; size];
        s.read_exact(&mut body).ok()?;
        let code = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
        let flags = u32::from_le_bytes(hdr[4..8].try_into().unwrap());
        let fd = file.is_some();
        Some((
            Seen {
                code,
                flags,
                body,
                fd,
            },
            file,
        ))
    }

    fn reply(s: &mut UnixStream, code: u32, body: &[u8], fd: Option<&File>) {
        let mut m = Vec::new();
        m.extend_from_slice(&code.to_le_bytes());
        m.extend_from_slice(&0x5u32.to_le_bytes());
        m.extend_from_slice(&(body.len() as u32).to_le_bytes());
        m.extend_from_slice(body);
        match fd {
            Some(f) => {
                let _ = s.send_with_fd(&m[..], f.as_raw_fd());
            }
            None => {
                let _ = s.write_all(&m);
            }
        }
    }

    fn memfd(size: u64, seal: bool) -> File {
        // SAFETY: memfd_create reads the NUL-terminated name and returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(c"peer-inflight".as_ptr(), libc::MFD_ALLOW_SEALING) };
        assert!(fd >= 0);
        // SAFETY: a fresh fd nothing else owns.
        let f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        f.set_len(size).unwrap();
        if seal {
            // SAFETY: fcntl(F_ADD_SEALS) on our own memfd.
            unsafe {
                libc::fcntl(
                    fd,
                    libc::F_ADD_SEALS,
                    libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
                )
            };
        }
        f
    }

    /// Serves `script` on `s`, recording every request, until the frontend hangs up.
    fn serve(mut s: UnixStream, script: Script, log: Log) {
        while let Some((seen, _file)) = recv(&mut s) {
            let code = seen.code;
            let need_reply = seen.flags & 0x8 != 0;
            let body = seen.body.clone();
            log.lock().unwrap().push(seen);
            if script.die_on == Some(code) {
                return;
            }
            if script.silent_on == Some(code) {
                // Until the frontend hangs up.
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink);
                return;
            }
            match code {
                GET_FEATURES => reply(&mut s, code, &script.features.to_le_bytes(), None),
                GET_PROTOCOL_FEATURES => reply(&mut s, code, &script.protocol.to_le_bytes(), None),
                GET_QUEUE_NUM => reply(&mut s, code, &4u64.to_le_bytes(), None),
                GET_CONFIG => {
                    // The request echoed, its payload a pattern.
                    let mut b = body;
                    for (i, x) in b.iter_mut().enumerate().skip(12) {
                        *x = (i - 12) as u8;
                    }
                    reply(&mut s, code, &b, None)
                }
                GET_VRING_BASE => reply(&mut s, code, &body, None),
                GET_INFLIGHT_FD => {
                    let size = 4160u64;
                    let file = match script.region {
                        Region::Sound => memfd(size, true),
                        Region::Short => memfd(size / 2, true),
                    };
                    let mut b = Vec::new();
                    b.extend_from_slice(&size.to_le_bytes());
                    b.extend_from_slice(&0u64.to_le_bytes());
                    // The queue count and size asked for, echoed.
                    b.extend_from_slice(body.get(16..24).unwrap_or(&[0u8; 8]));
                    reply(&mut s, code, &b, Some(&file))
                }
                _ if need_reply => {
                    let refused = u64::from(script.nack_on == Some(code));
                    reply(&mut s, code, &refused.to_le_bytes(), None)
                }
                _ => {}
            }
        }
    }

    /// A peer on a thread; its log.
    fn peer(script: Script) -> (UnixStream, Log, std::thread::JoinHandle<()>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let log: Log = Arc::default();
        let l = log.clone();
        let t = std::thread::spawn(move || serve(theirs, script, l));
        (ours, log, t)
    }

    fn codes(log: &Log) -> Vec<u32> {
        log.lock().unwrap().iter().map(|s| s.code).collect()
    }

    /// A device `disk0` (one queue) on a first peer, the guest memory, the kick eventfd
    /// and the call eventfd (the vmm's own handles on them).
    struct Rig {
        device: VhostUserDevice,
        memory: GuestMemory,
        kick: EventFd,
        call: EventFd,
        first: Log,
    }

    fn rig(script: Script, restartable: bool) -> Rig {
        let (ours, first, _t) = peer(script);
        let memory = GuestMemory::new(1 << 20).unwrap();
        let shared = SharedMemory {
            mem: memory.mem.clone(),
            memfd: memory.file.as_raw_fd(),
        };
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let call2 = call.try_clone().unwrap();
        let device = VhostUserDevice::connect(
            "disk0",
            2,
            BackendSocket::Connected(ours),
            vec![kick.try_clone().unwrap()],
            move |n| Interrupts::shared(call2, n),
            shared,
        )
        .unwrap();
        device.set_restartable(restartable);
        Rig {
            device,
            memory,
            kick,
            call,
            first,
        }
    }

    fn queue() -> Vec<Option<QueueConfig>> {
        vec![Some(QueueConfig {
            size: 256,
            desc: DESC,
            avail: AVAIL,
            used: USED,
        })]
    }

    impl Rig {
        fn rings(&self, avail: u16, used: u16) {
            self.memory
                .mem
                .write_obj(avail, GuestAddress(AVAIL + 2))
                .unwrap();
            self.memory
                .mem
                .write_obj(used, GuestAddress(USED + 2))
                .unwrap();
        }

        /// Reconnects to a new peer playing `script`: the outcome, how long it took, and
        /// what the peer saw.
        fn reconnect(&mut self, script: Script) -> (Result<(), ReconnectError>, Duration, Log) {
            let (ours, log, t) = peer(script);
            let start = Instant::now();
            let r = self.device.reconnect(ours);
            let took = start.elapsed();
            drop(t);
            (r, took, log)
        }
    }

    /// Gives a peer's thread the time to log what it received last (it is still
    /// running: it ends when the frontend hangs up).
    fn settle(_log: &Log) {
        std::thread::sleep(Duration::from_millis(50));
    }

    #[test]
    fn the_replay_order_and_what_the_new_backend_is_given() {
        let mut r = rig(Script::default(), true);
        r.device.activate(ACKED, &queue()).unwrap();
        settle(&r.first);
        assert_eq!(
            codes(&r.first),
            [
                SET_OWNER,
                GET_FEATURES,
                GET_PROTOCOL_FEATURES,
                SET_PROTOCOL_FEATURES,
                GET_QUEUE_NUM,
                SET_FEATURES,
                GET_INFLIGHT_FD,
                SET_MEM_TABLE,
                SET_VRING_NUM,
                SET_VRING_ADDR,
                SET_VRING_BASE,
                SET_VRING_CALL,
                SET_VRING_KICK,
                SET_VRING_ENABLE,
            ],
            "first start: the region is asked for once, after SET_FEATURES"
        );
        // The old backend took requests up to 9 and completed up to 7, then died.
        r.rings(9, 7);
        let (result, _, log) = r.reconnect(Script::default());
        result.unwrap();
        settle(&log);
        assert_eq!(
            codes(&log),
            [
                SET_OWNER,
                GET_FEATURES,
                GET_PROTOCOL_FEATURES,
                SET_PROTOCOL_FEATURES,
                GET_QUEUE_NUM,
                SET_FEATURES,
                SET_INFLIGHT_FD,
                SET_MEM_TABLE,
                SET_VRING_NUM,
                SET_VRING_ADDR,
                SET_VRING_BASE,
                SET_VRING_CALL,
                SET_VRING_KICK,
                SET_VRING_ENABLE,
                GET_CONFIG,
            ]
        );
        let log = log.lock().unwrap();
        let find = |code| log.iter().find(|s| s.code == code).unwrap();
        // SET_FEATURES: what the driver acked (and the protocol-features bit).
        assert_eq!(
            u64::from_le_bytes(find(SET_FEATURES).body[..8].try_into().unwrap()),
            ACKED | PROTOCOL_FEATURES
        );
        // SET_PROTOCOL_FEATURES: exactly what was acked the first time.
        assert_eq!(
            u64::from_le_bytes(find(SET_PROTOCOL_FEATURES).body[..8].try_into().unwrap()),
            P_MQ | P_REPLY_ACK | P_CONFIG | P_INFLIGHT
        );
        // The base is where the used ring stands.
        let base = &find(SET_VRING_BASE).body;
        assert_eq!(u32::from_le_bytes(base[0..4].try_into().unwrap()), 0);
        assert_eq!(u32::from_le_bytes(base[4..8].try_into().unwrap()), 7);
        for code in [
            SET_INFLIGHT_FD,
            SET_MEM_TABLE,
            SET_VRING_CALL,
            SET_VRING_KICK,
        ] {
            assert!(find(code).fd, "request {code} carries its fd");
        }
        // The region handed on is the one the first backend handed out.
        let inflight = &find(SET_INFLIGHT_FD).body;
        assert_eq!(u64::from_le_bytes(inflight[0..8].try_into().unwrap()), 4160);
        assert_eq!(u16::from_le_bytes(inflight[16..18].try_into().unwrap()), 1);
        assert_eq!(
            u16::from_le_bytes(inflight[18..20].try_into().unwrap()),
            256
        );
        // The ring was kicked and the driver signalled.
        assert_eq!(r.kick.read().unwrap(), 1);
        assert!(r.call.read().unwrap() >= 1);
    }

    #[test]
    fn a_reset_drops_the_region_and_a_later_backend_is_not_given_it() {
        let mut r = rig(Script::default(), true);
        r.device.activate(ACKED, &queue()).unwrap();
        r.device.reset();
        let (result, _, log) = r.reconnect(Script::default());
        result.unwrap();
        settle(&log);
        let codes = codes(&log);
        assert!(!codes.contains(&SET_INFLIGHT_FD), "{codes:?}");
        assert!(!codes.contains(&SET_MEM_TABLE), "not started: {codes:?}");
        // The next start asks the new backend for a new region.
        r.device.activate(ACKED, &queue()).unwrap();
    }

    #[test]
    fn a_peer_that_dies_mid_set_up_is_lost_and_the_next_one_gets_the_set_up() {
        let mut r = rig(
            Script {
                die_on: Some(SET_MEM_TABLE),
                ..Script::default()
            },
            true,
        );
        // The driver's start is kept for the next backend, not failed.
        r.device.activate(ACKED, &queue()).unwrap();
        assert!(r.device.activation().is_some());
        r.rings(3, 3);
        let (result, _, log) = r.reconnect(Script::default());
        result.unwrap();
        settle(&log);
        assert!(codes(&log).contains(&SET_VRING_ENABLE));
        assert!(
            !codes(&log).contains(&GET_INFLIGHT_FD) || !codes(&log).contains(&SET_INFLIGHT_FD),
            "one or the other"
        );
    }

    #[test]
    fn without_restart_a_peer_that_dies_mid_set_up_fails_the_start() {
        let mut r = rig(
            Script {
                die_on: Some(SET_MEM_TABLE),
                ..Script::default()
            },
            false,
        );
        let e = r.device.activate(ACKED, &queue()).unwrap_err();
        assert!(e.to_string().contains("SET_MEM_TABLE"), "{e}");
    }

    #[test]
    fn a_peer_that_dies_during_the_replay_is_lost_again() {
        let mut r = rig(Script::default(), true);
        r.device.activate(ACKED, &queue()).unwrap();
        let (result, took, _) = r.reconnect(Script {
            die_on: Some(SET_VRING_ADDR),
            ..Script::default()
        });
        match result {
            Err(ReconnectError::Lost(why)) => assert!(why.starts_with("disk0: "), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(took < Duration::from_secs(2), "{took:?}");
        // And the one after it takes over.
        let (result, _, _) = r.reconnect(Script::default());
        result.unwrap();
    }

    #[test]
    fn a_peer_offering_fewer_features_is_refused() {
        let mut r = rig(Script::default(), true);
        r.device.activate(ACKED, &queue()).unwrap();
        let (result, _, log) = r.reconnect(Script {
            features: VERSION_1 | PROTOCOL_FEATURES,
            ..Script::default()
        });
        match result {
            Err(ReconnectError::Refused(why)) => {
                assert!(why.contains("without 0x20000200"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        settle(&log);
        assert!(!codes(&log).contains(&SET_FEATURES));
        // Fewer protocol features (no inflight region) is refused too.
        let (result, _, _) = r.reconnect(Script {
            protocol: P_MQ | P_REPLY_ACK | P_CONFIG,
            ..Script::default()
        });
        match result {
            Err(ReconnectError::Refused(why)) => {
                assert!(why.contains("protocol features"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn before_the_driver_starts_the_device_every_offered_feature_is_required() {
        let mut r = rig(Script::default(), true);
        let (result, _, _) = r.reconnect(Script {
            features: Script::default().features & !(1 << 6),
            ..Script::default()
        });
        assert!(
            matches!(result, Err(ReconnectError::Refused(_))),
            "{result:?}"
        );
        // More features are fine (the guest is offered what the first backend offered).
        let (result, _, _) = r.reconnect(Script {
            features: Script::default().features | (1 << 10),
            ..Script::default()
        });
        result.unwrap();
    }

    #[test]
    fn a_peer_that_refuses_the_kept_region_is_refused() {
        let mut r = rig(Script::default(), true);
        r.device.activate(ACKED, &queue()).unwrap();
        let (result, took, log) = r.reconnect(Script {
            nack_on: Some(SET_INFLIGHT_FD),
            ..Script::default()
        });
        match result {
            Err(ReconnectError::Refused(why)) => assert!(why.contains("SET_INFLIGHT_FD"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(took < Duration::from_secs(2), "{took:?}");
        settle(&log);
        assert!(
            !codes(&log).contains(&SET_MEM_TABLE),
            "nothing after the refusal"
        );
    }

    #[test]
    fn a_used_ring_position_that_cannot_be_is_refused() {
        let mut r = rig(Script::default(), true);
        r.device.activate(ACKED, &queue()).unwrap();
        // 300 requests taken and not completed, in a 256-entry ring.
        r.rings(300, 0);
        let (result, _, log) = r.reconnect(Script::default());
        match result {
            Err(ReconnectError::Refused(why)) => assert!(why.contains("ring position"), "{why}"),
            other => panic!("{other:?}"),
        }
        settle(&log);
        assert!(!codes(&log).contains(&SET_VRING_BASE), "nothing started");
        // The used index ahead of the available one is as wrong.
        r.rings(5, 6);
        let (result, _, _) = r.reconnect(Script::default());
        assert!(
            matches!(result, Err(ReconnectError::Refused(_))),
            "{result:?}"
        );
    }

    #[test]
    fn a_lie_about_the_inflight_region_is_refused() {
        let mut r = rig(
            Script {
                region: Region::Short,
                ..Script::default()
            },
            false,
        );
        let e = r.device.activate(ACKED, &queue()).unwrap_err();
        assert!(e.to_string().contains("GET_INFLIGHT_FD"), "{e}");
        assert!(e.to_string().contains("its file has 2080"), "{e}");
    }

    #[test]
    fn a_peer_that_never_answers_during_the_replay_times_out() {
        let mut r = rig(Script::default(), true);
        r.device.activate(ACKED, &queue()).unwrap();
        let (result, took, _) = r.reconnect(Script {
            silent_on: Some(GET_PROTOCOL_FEATURES),
            ..Script::default()
        });
        match result {
            Err(ReconnectError::Refused(why)) => {
                assert!(why.contains("GET_PROTOCOL_FEATURES"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        assert!(took < REPLY_TIMEOUT + Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn config_reads_during_an_outage_come_from_the_cache_at_once() {
        let (ours, _log, t) = peer(Script::default());
        let memory = GuestMemory::new(1 << 20).unwrap();
        let shared = SharedMemory {
            mem: memory.mem.clone(),
            memfd: memory.file.as_raw_fd(),
        };
        let mut device = VhostUserDevice::connect(
            "disk0",
            2,
            BackendSocket::Connected(ours),
            vec![EventFd::new(0).unwrap()],
            |n| Interrupts::shared(EventFd::new(0)?, n),
            shared,
        )
        .unwrap();
        device.set_restartable(true);
        let mut before = [0u8; 8];
        device.read_config(0, &mut before);
        assert_eq!(before, [0, 1, 2, 3, 4, 5, 6, 7]);
        // The backend dies (the frontend hangs up on it: the peer thread ends).
        let link = device.link();
        assert!(link.fail("test: the backend is gone".into()));
        drop(t);
        let start = Instant::now();
        for _ in 0..100 {
            let mut during = [0xffu8; 8];
            device.read_config(0, &mut during);
            assert_eq!(during, before);
        }
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
    }

    /// A two-pair net device: the driver enables its second pair on the vmm's control
    /// queue; a new backend gets both pairs enabled.
    #[test]
    fn the_net_pairs_the_driver_enabled_are_replayed() {
        const NET_F_CTRL_VQ: u64 = 1 << 17;
        const NET_F_MQ: u64 = 1 << 22;
        let script = Script {
            features: VERSION_1 | PROTOCOL_FEATURES | NET_F_MQ,
            ..Script::default()
        };
        let (ours, first, _t) = peer(script.clone());
        let memory = GuestMemory::new(1 << 20).unwrap();
        let shared = SharedMemory {
            mem: memory.mem.clone(),
            memfd: memory.file.as_raw_fd(),
        };
        let mut device = VhostUserDevice::connect(
            "net0",
            1,
            BackendSocket::Connected(ours),
            (0..4)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
                .collect(),
            |n| Interrupts::shared(EventFd::new(libc::EFD_NONBLOCK)?, n),
            shared,
        )
        .unwrap();
        device.set_restartable(true);
        assert_eq!(
            device.queue_max_sizes().len(),
            5,
            "4 data queues and control"
        );
        let ring = |i: u64| QueueConfig {
            size: 64,
            desc: 0x1_0000 + i * 0x1000,
            avail: 0x1_0800 + i * 0x1000,
            used: 0x1_0c00 + i * 0x1000,
        };
        let queues: Vec<_> = (0..5).map(|i| Some(ring(i))).collect();
        let features = VERSION_1 | NET_F_MQ | NET_F_CTRL_VQ;
        device.activate(features, &queues).unwrap();
        assert_eq!(device.activation().unwrap().enabled, 2, "the first pair");
        // The driver's VQ_PAIRS_SET(2) on the control queue: a command (class MQ, 0),
        // the pair count, a status byte.
        let m = &memory.mem;
        let ctrl = ring(4);
        let (cmd, pairs, status) = (0x8_0000u64, 0x8_0010u64, 0x8_0020u64);
        m.write_obj([4u8, 0u8], GuestAddress(cmd)).unwrap();
        m.write_obj(2u16, GuestAddress(pairs)).unwrap();
        m.write_obj(0xffu8, GuestAddress(status)).unwrap();
        let desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
            let at = ctrl.desc + i * 16;
            m.write_obj(addr, GuestAddress(at)).unwrap();
            m.write_obj(len, GuestAddress(at + 8)).unwrap();
            m.write_obj(flags, GuestAddress(at + 12)).unwrap();
            m.write_obj(next, GuestAddress(at + 14)).unwrap();
        };
        desc(0, cmd, 2, 1, 1);
        desc(1, pairs, 2, 1, 2);
        desc(2, status, 1, 2, 0);
        m.write_obj(0u16, GuestAddress(ctrl.avail + 4)).unwrap();
        m.write_obj(1u16, GuestAddress(ctrl.avail + 2)).unwrap();
        device.notify(4);
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(status)).unwrap(),
            0,
            "VIRTIO_NET_OK"
        );
        assert_eq!(device.activation().unwrap().enabled, 4);
        settle(&first);
        let enables = |log: &Log| -> Vec<(u32, u32)> {
            log.lock()
                .unwrap()
                .iter()
                .filter(|s| s.code == SET_VRING_ENABLE)
                .map(|s| {
                    let v = |a: usize| u32::from_le_bytes(s.body[a..a + 4].try_into().unwrap());
                    (v(0), v(4))
                })
                .collect()
        };
        assert_eq!(
            enables(&first)[4..],
            [(0, 1), (1, 1), (2, 1), (3, 1)],
            "after the start's (1,1,0,0)"
        );
        let (ours, log, _t2) = peer(script);
        device.reconnect(ours).unwrap();
        settle(&log);
        assert_eq!(enables(&log), [(0, 1), (1, 1), (2, 1), (3, 1)]);
    }

    #[test]
    fn without_restart_a_gone_backend_reads_zeros_at_once() {
        let mut r = rig(Script::default(), false);
        let mut before = [0u8; 4];
        r.device.read_config(0, &mut before);
        assert_eq!(before, [0, 1, 2, 3]);
        // A peer that hangs up on the first config read.
        let mut dying = rig(
            Script {
                die_on: Some(GET_CONFIG),
                ..Script::default()
            },
            false,
        );
        let start = Instant::now();
        let mut during = [0xffu8; 4];
        dying.device.read_config(0, &mut during);
        assert_eq!(during, [0, 0, 0, 0], "zeros, as before the cache");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn a_refused_reconnection_marks_the_device_needs_reset_and_tells_the_driver() {
        let r = rig(Script::default(), true);
        let mut t = MmioTransport::new(Box::new(r.device));
        let wr = |t: &mut MmioTransport, off: u64, v: u32| {
            t.write(off, &v.to_le_bytes());
        };
        let rd = |t: &mut MmioTransport, off: u64| {
            let mut d = [0u8; 4];
            t.read(off, &mut d);
            u32::from_le_bytes(d)
        };
        // The driver's handshake (virtio-mmio registers), one queue.
        wr(&mut t, 0x70, 1);
        wr(&mut t, 0x70, 3);
        wr(&mut t, 0x24, 0);
        wr(&mut t, 0x20, ACKED as u32);
        wr(&mut t, 0x24, 1);
        wr(&mut t, 0x20, (ACKED >> 32) as u32);
        wr(&mut t, 0x70, 0xb);
        wr(&mut t, 0x30, 0);
        wr(&mut t, 0x38, 256);
        wr(&mut t, 0x80, DESC as u32);
        wr(&mut t, 0x90, AVAIL as u32);
        wr(&mut t, 0xa0, USED as u32);
        wr(&mut t, 0x44, 1);
        wr(&mut t, 0x70, 0xf);
        assert_eq!(rd(&mut t, 0x70), 0xf);
        let (ours, _log, _t) = peer(Script {
            features: VERSION_1 | PROTOCOL_FEATURES,
            ..Script::default()
        });
        let _ = r.call.read();
        let result = t.reconnect(ours);
        assert!(
            matches!(result, Err(ReconnectError::Refused(_))),
            "{result:?}"
        );
        assert_eq!(rd(&mut t, 0x70), 0xf | 0x40, "DEVICE_NEEDS_RESET");
        assert_eq!(
            rd(&mut t, 0x60) & 2,
            2,
            "a configuration change is signalled"
        );
        assert!(r.call.read().unwrap() >= 1, "the interrupt was raised");
        // A driver reset clears it; starting again fails (no backend), asking for a reset.
        wr(&mut t, 0x70, 0);
        assert_eq!(rd(&mut t, 0x70), 0);
        // Given up: the same for a device whose launcher has no new backend.
        let r2 = rig(Script::default(), true);
        let mut t2 = MmioTransport::new(Box::new(r2.device));
        t2.give_up("restart budget spent");
        wr(&mut t2, 0x70, 1);
        assert_ne!(rd(&mut t2, 0x70) & 0x40, 0);
    }
}
