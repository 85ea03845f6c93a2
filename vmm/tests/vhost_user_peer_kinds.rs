//! Hostile or broken vhost-user peers behind net and console devices (what an external
//! backend, `--net vhost-user=` or `--console vhost-user=`, may be): the set-up fails with
//! an error naming the device and the request, never a panic, never a hang past the reply
//! timeout; what a peer offers reaches the driver only as far as the vmm can honour it;
//! config reads from a lying or silent peer come back as zeros in bounded time.
//!
//! vhost 0.18's `Endpoint` retries a read that timed out, so the reply timeout is the
//! frontend's own watchdog (`vhost_user/watchdog.rs`), which shuts a late exchange's socket
//! down: a peer that stays silent, or answers with fewer bytes than asked, fails its request
//! within the timeout instead of blocking a vCPU until it hangs up.

#[path = "common/peer.rs"]
mod peer;

use std::time::{Duration, Instant};

use bulkhead_vmm::virtio::vhost_user::REPLY_TIMEOUT;
use bulkhead_vmm::virtio::VirtioBackend;
use peer::{connect_kind, Misbehave, Script, F_PROTOCOL, F_VERSION_1, P_CONFIG, P_MQ, P_REPLY_ACK};

const NET: u32 = 1;
const CONSOLE: u32 = 3;
const MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x42];
/// The kinds: name, virtio type, queues, the MAC the launcher gives (net only).
const KINDS: [(&str, u32, usize, Option<[u8; 6]>); 2] =
    [("net0", NET, 2, Some(MAC)), ("console0", CONSOLE, 2, None)];

fn good() -> Script {
    Script::new(F_VERSION_1 | F_PROTOCOL, P_MQ | P_REPLY_ACK | P_CONFIG, 2)
}

/// Each kind against `script` with misbehaviour `how` at request `at`: the error.
fn each_kind_fails(at: usize, how: Misbehave) -> Vec<(String, String)> {
    KINDS
        .iter()
        .map(|&(name, ty, queues, mac)| {
            let mut script = good();
            script.misbehave_at = Some((at, how));
            let e = connect_kind(name, ty, queues, mac, None, move |s| script.play(s))
                .err()
                .unwrap_or_else(|| panic!("{name}: connect must fail ({how:?} at {at})"));
            (name.to_owned(), e)
        })
        .collect()
}

/// A console whose peer does `how` from the first GET_CONFIG on (the set-up takes 5
/// requests): what `reads` config reads of 4 bytes at offset 0 gave, and how long they took.
fn config_reads(how: Misbehave, reads: usize) -> ([u8; 4], Duration) {
    let mut s = good();
    s.misbehave_at = Some((5, how));
    let mut dev = connect_kind("console0", CONSOLE, 2, None, None, move |p| s.play(p)).unwrap();
    let start = Instant::now();
    let mut data = [0xffu8; 4];
    for _ in 0..reads {
        dev.read_config(0, &mut data);
    }
    (data, start.elapsed())
}

#[test]
fn peers_that_hang_up_at_each_step_are_named() {
    // SET_OWNER, GET_FEATURES, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM.
    for at in 0..5 {
        for (name, e) in each_kind_fails(at, Misbehave::HangUp) {
            assert!(e.starts_with(&format!("{name}: vhost-user")), "{at}: {e}");
        }
    }
}

#[test]
fn peers_that_answer_garbage_or_the_wrong_request_are_named() {
    for how in [Misbehave::Garbage, Misbehave::WrongReply] {
        for (name, e) in each_kind_fails(1, how) {
            assert!(
                e.starts_with(&format!("{name}: vhost-user GET_FEATURES")),
                "{how:?}: {e}"
            );
        }
    }
}

#[test]
fn peers_that_stop_answering_then_hang_up_are_named() {
    let silent = Misbehave::Silence(1);
    for (at, what) in [(1, "GET_FEATURES"), (4, "GET_QUEUE_NUM")] {
        for (name, e) in each_kind_fails(at, silent) {
            assert!(e.starts_with(&format!("{name}: vhost-user {what}")), "{e}");
        }
    }
}

#[test]
fn peers_that_stop_answering_time_out() {
    let start = Instant::now();
    let silent = Misbehave::Silence(REPLY_TIMEOUT.as_secs() + 20);
    let results: Vec<_> = [(1, "GET_FEATURES"), (4, "GET_QUEUE_NUM")]
        .into_iter()
        .map(|(at, what)| std::thread::spawn(move || (what, each_kind_fails(at, silent))))
        .collect();
    for r in results {
        let (what, errors) = r.join().unwrap();
        for (name, e) in errors {
            assert!(
                e.starts_with(&format!(
                    "{name}: the vhost-user backend did not answer {what} within"
                )),
                "{e}"
            );
        }
    }
    // Two kinds one after the other, two steps in parallel.
    let bound = 2 * (REPLY_TIMEOUT + Duration::from_secs(2));
    assert!(start.elapsed() < bound, "took {:?}", start.elapsed());
}

#[test]
fn peers_with_fewer_queues_than_asked_are_refused() {
    for &(name, ty, queues, mac) in &KINDS {
        let mut script = good();
        script.queues = 1;
        let e = connect_kind(name, ty, queues, mac, None, move |s| script.play(s))
            .err()
            .expect("connect must fail");
        assert!(
            e.contains(&format!(
                "{name}: the vhost-user backend serves 1 queues, 2"
            )),
            "{e}"
        );
    }
}

#[test]
fn peers_without_protocol_features_are_refused() {
    for &(name, ty, queues, mac) in &KINDS {
        let script = Script::new(F_VERSION_1, 0, 2);
        let e = connect_kind(name, ty, queues, mac, None, move |s| script.play(s))
            .err()
            .expect("connect must fail");
        assert!(
            e.contains("does not offer VHOST_USER_F_PROTOCOL_FEATURES"),
            "{e}"
        );
    }
}

#[test]
fn config_space_is_required_of_a_console_and_of_a_net_peer_without_a_mac() {
    let no_config = || Script::new(F_VERSION_1 | F_PROTOCOL, P_MQ | P_REPLY_ACK, 2);
    let s = no_config();
    let e = connect_kind("console0", CONSOLE, 2, None, None, move |p| s.play(p))
        .err()
        .expect("a console needs CONFIG");
    assert!(e.contains("console0") && e.contains("CONFIG"), "{e}");
    let s = no_config();
    let e = connect_kind("net0", NET, 2, None, None, move |p| s.play(p))
        .err()
        .expect("a net device without CONFIG needs a MAC");
    assert!(e.contains("net0") && e.contains("no MAC was given"), "{e}");
    // With the MAC (an external net backend), the vmm serves the config itself.
    let s = no_config();
    let mut dev = connect_kind("net0", NET, 2, Some(MAC), None, move |p| s.play(p))
        .expect("an external net backend without CONFIG");
    let mut config = [0xffu8; 10];
    dev.read_config(0, &mut config);
    assert_eq!(
        config,
        [2, 0, 0, 0, 0, 0x42, 1, 0, 1, 0],
        "mac, LINK_UP, 1 pair"
    );
    dev.write_config(0, &[0xaa; 6]);
    dev.read_config(0, &mut config[..6]);
    assert_eq!(config[..6], MAC, "config writes are ignored");
}

#[test]
fn every_feature_bit_offered_reaches_the_driver_only_as_far_as_honoured() {
    // A peer offering every bit (and every protocol feature).
    let all = || Script::new(u64::MAX, u64::MAX, 2);
    let s = all();
    let net = connect_kind("net0", NET, 2, Some(MAC), None, move |p| s.play(p)).unwrap();
    let f = net.features();
    let honoured: u64 = (1 << 0)
        | (1 << 1)
        | (0x1ff << 7) // GUEST_TSO4 .. MRG_RXBUF
        | (1 << 5)
        | (1 << 16)
        | (1 << 28)
        | (1 << 29)
        | (1 << 32);
    assert_eq!(f & !honoured, 0, "net offers {f:#x}, beyond {honoured:#x}");
    assert_eq!(f & (1 << 22), 0, "no MQ with one pair (no control queue)");
    assert_eq!(f & F_PROTOCOL, 0);
    let s = all();
    let console = connect_kind("console0", CONSOLE, 2, None, None, move |p| s.play(p)).unwrap();
    assert_eq!(console.features() & 0b10, 0, "MULTIPORT masked");
    assert_eq!(console.features() & F_PROTOCOL, 0);
}

#[test]
fn queue_sizes_follow_queue_size_and_bad_ones_are_refused() {
    let s = good();
    let dev = connect_kind("console0", CONSOLE, 2, None, Some(128), move |p| s.play(p)).unwrap();
    assert_eq!(dev.queue_max_sizes(), &[128, 128]);
    for bad in [0, 100, 512] {
        let s = good();
        let e = connect_kind("console0", CONSOLE, 2, None, Some(bad), move |p| s.play(p))
            .err()
            .expect("a bad queue size");
        assert!(e.contains(&format!("queue size {bad}")), "{e}");
    }
}

#[test]
fn config_reads_from_a_peer_sending_less_than_it_promised_are_zeros_in_bounded_time() {
    let (data, took) = config_reads(Misbehave::ShortConfig(REPLY_TIMEOUT.as_secs() + 20), 1);
    assert_eq!(data, [0; 4]);
    assert!(took < REPLY_TIMEOUT + Duration::from_secs(2), "{took:?}");
}

#[test]
fn config_reads_from_an_honest_peer_are_used() {
    // An honest answer is, at an offset.
    let mut s = good();
    s.config = (1..=16).collect();
    let mut dev = connect_kind("console0", CONSOLE, 2, None, None, move |p| s.play(p)).unwrap();
    let mut data = [0u8; 2];
    dev.read_config(2, &mut data);
    assert_eq!(data, [3, 4]);
}

#[test]
fn config_reads_from_a_silent_peer_are_zeros_in_bounded_time() {
    // Silent from the first GET_CONFIG on (the set-up takes 5 requests).
    let (data, took) = config_reads(Misbehave::Silence(REPLY_TIMEOUT.as_secs() + 20), 1);
    assert_eq!(data, [0; 4]);
    assert!(took < REPLY_TIMEOUT + Duration::from_secs(2), "{took:?}");
}

#[test]
fn config_reads_from_a_gone_peer_are_zeros_at_once() {
    // Gone after the set-up.
    let (data, took) = config_reads(Misbehave::HangUp, 2);
    assert_eq!(data, [0; 4]);
    assert!(took < Duration::from_secs(2), "{took:?}");
}
