//! Hostile or broken peers: every bad frame is a typed error naming the peer, is logged,
//! closes the connection, and leaves the channel refusing further calls. No panics.

mod common;

use bulkhead_protocol::codec::{encode, CodecError};
use bulkhead_protocol::frame::{frame, FrameError, MAGIC};
use bulkhead_protocol::PROTOCOL_VERSION;
use bulkhead_protocol::{
    ChannelError, ChannelErrorKind, ProcessChannel, ToLauncher, ToProcess, MAX_FRAME,
};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn header(magic: &[u8; 4], len: u32) -> Vec<u8> {
    let mut h = magic.to_vec();
    h.extend_from_slice(&len.to_le_bytes());
    h
}

/// Feeds `bytes` (then hangs up if `close`) to a process-side channel named `peer`, and
/// returns what `recv` made of it, after checking the aftermath every bad frame must have.
fn feed(peer: &str, bytes: &[u8], close: bool) -> ChannelError {
    common::capture_logs();
    let (mut ch, mut raw): (ProcessChannel, UnixStream) = common::raw_peer(peer);
    raw.write_all(bytes).unwrap();
    if close {
        raw.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let err = ch.recv().unwrap_err();
    assert_eq!(err.peer, peer);
    assert!(
        err.to_string()
            .starts_with(&format!("control channel with {peer}: ")),
        "{err}"
    );
    aftermath(peer, &mut ch, &mut raw);
    err
}

/// After a bad frame: an error log naming the peer, the socket shut down (the raw peer reads
/// end-of-stream), and later calls refused.
fn aftermath(peer: &str, ch: &mut ProcessChannel, raw: &mut UnixStream) {
    let logs = common::logged(peer);
    assert!(
        logs.iter()
            .any(|l| l.starts_with("ERROR control channel with")
                && l.contains("closing the connection")),
        "no error logged for {peer}: {logs:?}"
    );
    let mut buf = [0u8; 64];
    assert_eq!(
        raw.read(&mut buf).unwrap(),
        0,
        "connection to {peer} still open"
    );
    let later = ch.recv().unwrap_err();
    assert!(matches!(later.kind, ChannelErrorKind::Broken(_)), "{later}");
    assert!(
        later
            .to_string()
            .contains("connection closed after bad frame"),
        "{later}"
    );
    let later = ch.send(&ToLauncher::Exited { code: 0 }, &[]).unwrap_err();
    assert!(matches!(later.kind, ChannelErrorKind::Broken(_)), "{later}");
}

#[test]
fn wrong_magic() {
    let mut bytes = header(b"HTTP", 4);
    bytes.extend_from_slice(&[1, 0, 0, 0]);
    let err = feed("peer-magic", &bytes, false);
    assert!(
        matches!(err.kind, ChannelErrorKind::Frame(FrameError::BadMagic { found }) if &found == b"HTTP"),
        "{err}"
    );
}

#[test]
fn zero_length() {
    let err = feed("peer-zero", &header(&MAGIC, 0), false);
    assert!(
        matches!(err.kind, ChannelErrorKind::Frame(FrameError::Empty)),
        "{err}"
    );
}

#[test]
fn oversize_length_is_refused_before_the_payload_arrives() {
    // Nothing after the header: the error must come from the header alone.
    let err = feed("peer-huge", &header(&MAGIC, u32::MAX), false);
    assert!(
        matches!(
            err.kind,
            ChannelErrorKind::Frame(FrameError::Oversize {
                len: 0xffff_ffff,
                max: MAX_FRAME
            })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("oversize"), "{err}");
    let err = feed(
        "peer-huge-by-one",
        &header(&MAGIC, MAX_FRAME as u32 + 1),
        false,
    );
    assert!(
        matches!(
            err.kind,
            ChannelErrorKind::Frame(FrameError::Oversize { .. })
        ),
        "{err}"
    );
}

#[test]
fn truncated_header() {
    let err = feed("peer-short-header", b"BKH", true);
    assert!(
        matches!(
            err.kind,
            ChannelErrorKind::Frame(FrameError::Truncated { got: 3, wanted: 8 })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn peer_closes_mid_frame() {
    let mut bytes = header(&MAGIC, 100);
    bytes.extend_from_slice(&[0; 10]);
    let err = feed("peer-mid-frame", &bytes, true);
    assert!(
        matches!(
            err.kind,
            ChannelErrorKind::Frame(FrameError::Truncated {
                got: 18,
                wanted: 108
            })
        ),
        "{err}"
    );
}

#[test]
fn valid_header_garbage_payload() {
    let mut bytes = header(&MAGIC, 6);
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x13, 0x37]);
    let err = feed("peer-garbage", &bytes, false);
    assert!(
        matches!(err.kind, ChannelErrorKind::Codec(CodecError::Decode { .. })),
        "{err}"
    );
}

#[test]
fn hostile_length_inside_payload() {
    // Resources{names} with a Vec length of 2^61: refused by the codec's limit.
    let mut payload = vec![5, 0, 0, 0];
    payload.extend_from_slice(&(1u64 << 61).to_le_bytes());
    let err = feed("peer-vec-len", &frame(&payload).unwrap(), false);
    assert!(
        matches!(err.kind, ChannelErrorKind::Codec(CodecError::Decode { .. })),
        "{err}"
    );
}

#[test]
fn trailing_bytes_after_a_message() {
    let mut payload = encode(&ToProcess::Pause).unwrap();
    payload.push(0);
    let err = feed("peer-trailing", &frame(&payload).unwrap(), false);
    assert!(
        matches!(
            err.kind,
            ChannelErrorKind::Codec(CodecError::Trailing { extra: 1, .. })
        ),
        "{err}"
    );
}

#[test]
fn random_bytes() {
    // Deterministic noise; the first byte is not 'B', so it cannot start a frame.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Vec<u8> = (0..4096)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i == 0 {
                b'Z'
            } else {
                x as u8
            }
        })
        .collect();
    let err = feed("peer-noise", &bytes, false);
    assert!(
        matches!(
            err.kind,
            ChannelErrorKind::Frame(FrameError::BadMagic { .. })
        ),
        "{err}"
    );
}

#[test]
fn fds_declared_but_not_sent() {
    let payload = encode(&ToProcess::Resources {
        names: vec!["disk".into()],
    })
    .unwrap();
    let err = feed("peer-no-fds", &frame(&payload).unwrap(), false);
    assert!(
        matches!(
            err.kind,
            ChannelErrorKind::MissingFds {
                message: "Resources",
                expected: 1,
                got: 0
            }
        ),
        "{err}"
    );
}

#[test]
fn wrong_version_is_refused_with_both_versions_named() {
    let (mut process, mut launcher) = common::channel_pair::<ToLauncher, ToProcess>();
    let other =
        std::thread::spawn(move || launcher.handshake_as(PROTOCOL_VERSION + 1).unwrap_err());
    let err = process.handshake().unwrap_err();
    assert!(
        matches!(err.kind, ChannelErrorKind::Version { ours, theirs }
            if ours == PROTOCOL_VERSION && theirs == PROTOCOL_VERSION + 1),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!(
            "we speak version {PROTOCOL_VERSION}, the peer speaks version {}",
            PROTOCOL_VERSION + 1
        )),
        "{err}"
    );
    let theirs = other.join().unwrap();
    assert!(
        matches!(
            theirs.kind,
            ChannelErrorKind::Version { ours, theirs }
                if ours == PROTOCOL_VERSION + 1 && theirs == PROTOCOL_VERSION
        ),
        "{theirs}"
    );
    // The connection is over for both.
    assert!(matches!(
        process.recv().unwrap_err().kind,
        ChannelErrorKind::Broken(_)
    ));
}

#[test]
fn handshake_refuses_anything_but_hello() {
    common::capture_logs();
    let (mut ch, mut raw): (ProcessChannel, _) = common::raw_peer("peer-no-hello");
    raw.write_all(&frame(&encode(&ToProcess::Shutdown).unwrap()).unwrap())
        .unwrap();
    let err = ch.handshake().unwrap_err();
    assert!(
        matches!(err.kind, ChannelErrorKind::NotHello { got: "Shutdown" }),
        "{err}"
    );
    // Our Hello went out before the refusal.
    let mut reader = &mut raw;
    let hello = bulkhead_protocol::frame::read_frame(&mut reader).unwrap();
    assert_eq!(
        hello,
        encode(&ToLauncher::Hello {
            version: bulkhead_protocol::PROTOCOL_VERSION
        })
        .unwrap()
    );
    aftermath("peer-no-hello", &mut ch, &mut raw);
}

#[test]
fn idle_timeout_is_retryable_but_a_stall_mid_frame_breaks_the_channel() {
    common::capture_logs();
    let (mut ch, mut raw): (ProcessChannel, _) = common::raw_peer("peer-stall");
    let short = Some(Duration::from_millis(100));
    ch.set_timeouts(short, short).unwrap();
    let err = ch.recv().unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // Still in step: a whole frame now arrives fine.
    raw.write_all(&frame(&encode(&ToProcess::Resume).unwrap()).unwrap())
        .unwrap();
    assert_eq!(ch.recv().unwrap().0, ToProcess::Resume);
    // Half a header, then silence.
    raw.write_all(b"BKHD\x04").unwrap();
    let err = ch.recv().unwrap_err();
    assert!(
        matches!(
            err.kind,
            ChannelErrorKind::Frame(FrameError::Io { got: 5, .. })
        ),
        "{err}"
    );
    aftermath("peer-stall", &mut ch, &mut raw);
}

#[test]
fn clean_close_between_frames_is_not_a_bad_frame() {
    let (mut ch, raw): (ProcessChannel, _) = common::raw_peer("peer-bye");
    drop(raw);
    let err = ch.recv().unwrap_err();
    assert!(err.is_closed(), "{err}");
    assert_eq!(
        err.to_string(),
        "control channel with peer-bye: peer closed the connection"
    );
}
