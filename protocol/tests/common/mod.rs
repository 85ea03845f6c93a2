//! Shared by the protocol's integration tests: one sample of every message, socket pairs.

#![allow(dead_code)] // each test file uses a different part

use bulkhead_protocol::{
    ApiReply, ApiRequest, Channel, DeviceState, DeviceStatus, Message, ToLauncher, ToProcess,
    VmState, VmStatus,
};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, Once};
use std::time::Duration;

/// A status with every device state in it.
pub fn status() -> VmStatus {
    VmStatus {
        state: VmState::Paused,
        vcpus: 2,
        memory_bytes: 256 << 20,
        devices: vec![
            DeviceStatus {
                name: "blk0".into(),
                pid: 4242,
                state: DeviceState::Ready,
            },
            DeviceStatus {
                name: "net0".into(),
                pid: 4243,
                state: DeviceState::Starting,
            },
            DeviceStatus {
                name: "console".into(),
                pid: 4244,
                state: DeviceState::Failed,
            },
            DeviceStatus {
                name: "blk1".into(),
                pid: u32::MAX,
                state: DeviceState::Exited,
            },
        ],
    }
}

/// Every process → launcher variant.
pub fn to_launcher() -> Vec<ToLauncher> {
    vec![
        ToLauncher::Hello { version: 1 },
        ToLauncher::Ready {
            role: "blk".into(),
            pid: 17,
        },
        ToLauncher::Status(status()),
        ToLauncher::Status(VmStatus {
            state: VmState::ShuttingDown,
            vcpus: 0,
            memory_bytes: u64::MAX,
            devices: vec![],
        }),
        ToLauncher::DeviceFailed {
            device: "net0".into(),
            reason: "vhost-user socket closed: é ✓".into(),
        },
        ToLauncher::Exited { code: -9 },
        ToLauncher::Error {
            message: String::new(),
        },
    ]
}

/// Every launcher → process variant (Resources without fds, so it can travel anywhere).
pub fn to_process() -> Vec<ToProcess> {
    vec![
        ToProcess::Hello { version: u32::MAX },
        ToProcess::Shutdown,
        ToProcess::Pause,
        ToProcess::Resume,
        ToProcess::QueryStatus,
        ToProcess::Resources { names: vec![] },
        ToProcess::ConfigChanged {
            device: "console0".into(),
        },
    ]
}

/// Every API request.
pub fn api_requests() -> Vec<ApiRequest> {
    vec![
        ApiRequest::Hello { version: 1 },
        ApiRequest::Status,
        ApiRequest::Pause,
        ApiRequest::Resume,
        ApiRequest::Shutdown,
    ]
}

/// Every API reply.
pub fn api_replies() -> Vec<ApiReply> {
    vec![
        ApiReply::Hello { version: 1 },
        ApiReply::Ok,
        ApiReply::Status(VmStatus {
            state: VmState::Running,
            ..status()
        }),
        ApiReply::Error("cannot pause: shutting down".into()),
    ]
}

/// Two connected channel ends, `a` sends what `b` receives and back. A timeout keeps a
/// broken test from hanging.
pub fn channel_pair<S: Message, R: Message>() -> (Channel<S, R>, Channel<R, S>) {
    let (x, y) = UnixStream::pair().expect("socketpair");
    let a = Channel::new(x, "test peer a");
    let b = Channel::new(y, "test peer b");
    let five = Some(Duration::from_secs(5));
    a.set_timeouts(five, five).expect("timeouts");
    b.set_timeouts(five, five).expect("timeouts");
    (a, b)
}

/// A channel whose peer, named `peer`, is a raw socket the test writes arbitrary bytes to.
pub fn raw_peer<S: Message, R: Message>(peer: &str) -> (Channel<S, R>, UnixStream) {
    let (x, y) = UnixStream::pair().expect("socketpair");
    let ch = Channel::new(x, peer);
    ch.set_timeouts(Some(Duration::from_secs(5)), Some(Duration::from_secs(5)))
        .expect("timeouts");
    y.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    (ch, y)
}

/// Log records captured by [`logged`], as "LEVEL message".
static RECORDS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{} {}", record.level(), record.args());
        RECORDS.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }
    fn flush(&self) {}
}

/// Installs the capturing logger (once per test binary).
pub fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::set_logger(&Capture).expect("no other logger in this test binary");
        log::set_max_level(log::LevelFilter::Trace);
    });
}

/// Captured log lines that contain `needle` (tests run in parallel: use a unique peer name).
pub fn logged(needle: &str) -> Vec<String> {
    RECORDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|line| line.contains(needle))
        .cloned()
        .collect()
}
