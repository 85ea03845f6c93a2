//! Every message survives codec + frame, and a real channel, unchanged.

mod common;

use bulkhead_protocol::codec::{decode, encode};
use bulkhead_protocol::frame::{frame, read_frame};
use bulkhead_protocol::{ApiReply, ApiRequest, Message, ToLauncher, ToProcess};
use std::thread;

fn through_bytes<M: Message + PartialEq>(msgs: &[M]) {
    let mut stream = Vec::new();
    for msg in msgs {
        stream.extend_from_slice(&frame(&encode(msg).unwrap()).unwrap());
    }
    let mut reader = &stream[..];
    for msg in msgs {
        let payload = read_frame(&mut reader).unwrap();
        assert_eq!(&decode::<M>(&payload).unwrap(), msg);
    }
    assert!(reader.is_empty());
}

#[test]
fn every_message_round_trips_through_codec_and_frames() {
    through_bytes(&common::to_launcher());
    through_bytes(&common::to_process());
    through_bytes(&common::api_requests());
    through_bytes(&common::api_replies());
}

/// Handshake on both ends, then `msgs` from a to b, all compared.
fn through_channel<S, R>(msgs: Vec<S>)
where
    S: Message + PartialEq + Clone + Send + 'static,
    R: Message + Send + 'static,
{
    let (mut a, mut b) = common::channel_pair::<S, R>();
    let expected = msgs.clone();
    let sender = thread::spawn(move || {
        a.handshake().unwrap();
        for msg in &msgs {
            a.send(msg, &[]).unwrap();
        }
        a
    });
    b.handshake().unwrap();
    for want in &expected {
        let (got, fds): (S, _) = b.recv().unwrap();
        assert_eq!(&got, want);
        assert!(fds.is_empty());
    }
    drop(sender.join().unwrap());
    // The peer hung up between frames: a clean close, not an error about frames.
    let err = b.recv().unwrap_err();
    assert!(err.is_closed(), "{err}");
}

#[test]
fn every_message_round_trips_through_a_channel() {
    through_channel::<ToLauncher, ToProcess>(common::to_launcher());
    through_channel::<ToProcess, ToLauncher>(common::to_process());
    through_channel::<ApiRequest, ApiReply>(common::api_requests());
    through_channel::<ApiReply, ApiRequest>(common::api_replies());
}

#[test]
fn api_conversation() {
    let (mut client, mut server) = common::channel_pair::<ApiRequest, ApiReply>();
    let server = thread::spawn(move || {
        server.handshake().unwrap();
        let (req, _) = server.recv().unwrap();
        assert_eq!(req, ApiRequest::Status);
        server
            .send(&ApiReply::Status(common::status()), &[])
            .unwrap();
    });
    client.handshake().unwrap();
    client.send(&ApiRequest::Status, &[]).unwrap();
    let (reply, _) = client.recv().unwrap();
    assert_eq!(reply, ApiReply::Status(common::status()));
    server.join().unwrap();
}
