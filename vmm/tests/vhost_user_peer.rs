//! A hostile or broken vhost-user peer: the frontend's handshake fails with an error that
//! names the device and the request — never a panic, never a hang past the reply timeout.

#[path = "common/peer.rs"]
mod peer;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bulkhead_vmm::memory::GuestMemory;
use bulkhead_vmm::virtio::interrupts::Interrupts;
use bulkhead_vmm::virtio::vhost_user::{BackendSocket, VhostUserDevice, REPLY_TIMEOUT};
use peer::{chain, read_request, reply, shared};
use vmm_sys_util::eventfd::EventFd;

/// Connects a frontend for `disk0` to a peer played by `peer` on a thread.
fn connect_to(peer: impl FnOnce(UnixStream) + Send + 'static) -> Result<VhostUserDevice, String> {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || peer(theirs));
    let memory = GuestMemory::new(1 << 20).unwrap();
    let result = VhostUserDevice::connect(
        "disk0",
        2,
        BackendSocket::Connected(ours),
        vec![EventFd::new(0).unwrap()],
        |n| Interrupts::shared(EventFd::new(0)?, n),
        shared(&memory),
    )
    .map_err(|e| chain(&e));
    let _ = t.join();
    result
}

/// Reads one request from the frontend; its code (0 if the frontend hung up).
fn read_code(s: &mut UnixStream) -> u32 {
    read_request(s).map_or(0, |r| r.code)
}

fn reply_u64(s: &mut UnixStream, request: u32, value: u64) {
    reply(s, request, &value.to_le_bytes());
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
        let req = read_code(&mut s);
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
        let req = read_code(&mut s); // GET_FEATURES
        reply_u64(&mut s, req, (1 << 32) | (1 << 30));
        let req = read_code(&mut s); // GET_PROTOCOL_FEATURES
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
    use super::peer::*;
    use super::*;
    use bulkhead_vmm::devices::bus::BusDevice;
    use bulkhead_vmm::virtio::mmio::MmioTransport;
    use bulkhead_vmm::virtio::{ConfigChange, QueueConfig, ReconnectError, VirtioBackend};
    use vm_memory::{Bytes, GuestAddress};

    /// Where the one queue's rings are (guest-physical).
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

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
        let (ours, first, _t) = spawn(script);
        let memory = GuestMemory::new(1 << 20).unwrap();
        let shared = shared(&memory);
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
            let (ours, log, t) = spawn(script);
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

    /// A restartable disk whose driver started it, on a well-behaved first peer.
    fn started() -> Rig {
        let mut r = rig(Script::disk(), true);
        r.device.activate(ACKED, &queue()).unwrap();
        r
    }

    /// Why the reconnection was refused (panics on any other outcome).
    fn refused(result: Result<(), ReconnectError>) -> String {
        match result {
            Err(ReconnectError::Refused(why)) => why,
            other => panic!("{other:?}"),
        }
    }

    /// Why the new backend was lost (panics on any other outcome).
    fn lost(result: Result<(), ReconnectError>) -> String {
        match result {
            Err(ReconnectError::Lost(why)) => why,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_replay_order_and_what_the_new_backend_is_given() {
        let mut r = started();
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
        let (result, _, log) = r.reconnect(Script::disk());
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
            ACKED | F_PROTOCOL
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
        let mut r = started();
        r.device.reset();
        let (result, _, log) = r.reconnect(Script::disk());
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
                ..Script::disk()
            },
            true,
        );
        // The driver's start is kept for the next backend, not failed.
        r.device.activate(ACKED, &queue()).unwrap();
        assert!(r.device.activation().is_some());
        r.rings(3, 3);
        let (result, _, log) = r.reconnect(Script::disk());
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
                ..Script::disk()
            },
            false,
        );
        let e = r.device.activate(ACKED, &queue()).unwrap_err();
        assert!(e.to_string().contains("SET_MEM_TABLE"), "{e}");
    }

    #[test]
    fn a_peer_that_dies_during_the_replay_is_lost_again() {
        let mut r = started();
        let (result, took, _) = r.reconnect(Script {
            die_on: Some(SET_VRING_ADDR),
            ..Script::disk()
        });
        let why = lost(result);
        assert!(why.starts_with("disk0: "), "{why}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        // And the one after it takes over.
        let (result, _, _) = r.reconnect(Script::disk());
        result.unwrap();
    }

    #[test]
    fn a_peer_offering_fewer_features_is_refused() {
        let mut r = started();
        let (result, _, log) = r.reconnect(Script {
            features: F_VERSION_1 | F_PROTOCOL,
            ..Script::disk()
        });
        let why = refused(result);
        assert!(why.contains("without 0x20000200"), "{why}");
        settle(&log);
        assert!(!codes(&log).contains(&SET_FEATURES));
        // Fewer protocol features (no inflight region) is refused too.
        let (result, _, _) = r.reconnect(Script {
            protocol: P_MQ | P_REPLY_ACK | P_CONFIG,
            ..Script::disk()
        });
        let why = refused(result);
        assert!(why.contains("protocol features"), "{why}");
    }

    #[test]
    fn before_the_driver_starts_the_device_every_offered_feature_is_required() {
        let mut r = rig(Script::disk(), true);
        let (result, _, _) = r.reconnect(Script {
            features: Script::disk().features & !(1 << 6),
            ..Script::disk()
        });
        refused(result);
        // More features are fine (the guest is offered what the first backend offered).
        let (result, _, _) = r.reconnect(Script {
            features: Script::disk().features | (1 << 10),
            ..Script::disk()
        });
        result.unwrap();
    }

    #[test]
    fn a_peer_that_refuses_the_kept_region_is_refused() {
        let mut r = started();
        let (result, took, log) = r.reconnect(Script {
            nack_on: Some(SET_INFLIGHT_FD),
            ..Script::disk()
        });
        let why = refused(result);
        assert!(why.contains("SET_INFLIGHT_FD"), "{why}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        settle(&log);
        assert!(
            !codes(&log).contains(&SET_MEM_TABLE),
            "nothing after the refusal"
        );
    }

    #[test]
    fn a_used_ring_position_that_cannot_be_is_refused() {
        let mut r = started();
        // 300 requests taken and not completed, in a 256-entry ring.
        r.rings(300, 0);
        let (result, _, log) = r.reconnect(Script::disk());
        let why = refused(result);
        assert!(why.contains("ring position"), "{why}");
        settle(&log);
        assert!(!codes(&log).contains(&SET_VRING_BASE), "nothing started");
        // The used index ahead of the available one is as wrong.
        r.rings(5, 6);
        let (result, _, _) = r.reconnect(Script::disk());
        refused(result);
    }

    #[test]
    fn a_lie_about_the_inflight_region_is_refused() {
        let mut r = rig(
            Script {
                region: Region::Short,
                ..Script::disk()
            },
            false,
        );
        let e = r.device.activate(ACKED, &queue()).unwrap_err();
        assert!(e.to_string().contains("GET_INFLIGHT_FD"), "{e}");
        assert!(e.to_string().contains("its file has 2080"), "{e}");
    }

    #[test]
    fn a_peer_that_never_answers_during_the_replay_times_out() {
        let mut r = started();
        let (result, took, _) = r.reconnect(Script {
            silent_on: Some(GET_PROTOCOL_FEATURES),
            ..Script::disk()
        });
        let why = refused(result);
        assert!(why.contains("GET_PROTOCOL_FEATURES"), "{why}");
        assert!(took < REPLY_TIMEOUT + Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn config_reads_during_an_outage_come_from_the_cache_at_once() {
        let (ours, _log, t) = spawn(Script::disk());
        let memory = GuestMemory::new(1 << 20).unwrap();
        let shared = shared(&memory);
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
            features: F_VERSION_1 | F_PROTOCOL | NET_F_MQ,
            ..Script::disk()
        };
        let (ours, first, _t) = spawn(script.clone());
        let memory = GuestMemory::new(1 << 20).unwrap();
        let shared = shared(&memory);
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
        let features = F_VERSION_1 | NET_F_MQ | NET_F_CTRL_VQ;
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
        let (ours, log, _t2) = spawn(script);
        device.reconnect(ours).unwrap();
        settle(&log);
        assert_eq!(enables(&log), [(0, 1), (1, 1), (2, 1), (3, 1)]);
    }

    #[test]
    fn without_restart_a_gone_backend_reads_zeros_at_once() {
        let mut r = rig(Script::disk(), false);
        let mut before = [0u8; 4];
        r.device.read_config(0, &mut before);
        assert_eq!(before, [0, 1, 2, 3]);
        // A peer that hangs up on the first config read.
        let mut dying = rig(
            Script {
                die_on: Some(GET_CONFIG),
                ..Script::disk()
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
        let r = rig(Script::disk(), true);
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
        let (ours, _log, _t) = spawn(Script {
            features: F_VERSION_1 | F_PROTOCOL,
            ..Script::disk()
        });
        let _ = r.call.read();
        let result = t.reconnect(ours);
        refused(result);
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
        let r2 = rig(Script::disk(), true);
        let mut t2 = MmioTransport::new(Box::new(r2.device));
        t2.give_up("restart budget spent");
        wr(&mut t2, 0x70, 1);
        assert_ne!(rd(&mut t2, 0x70) & 0x40, 0);
    }
}
