//! `bulkhead ctl --api-socket PATH status|pause|resume|shutdown|disk NAME --path IMAGE|
//! restart NAME [--exec PATH]`:
//! one request to a running VM's API socket, the answer printed.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use bulkhead_protocol::{ApiClientChannel, ApiReply, ApiRequest, DeviceState, VmState, VmStatus};

use crate::cli::{CtlAction, CtlArgs};
use crate::untrusted::sanitize;

/// How long the VM gets to answer.
const TIMEOUT: Duration = Duration::from_secs(15);
/// How long a `restart` may take: the old process's grace period, the new one's start
/// (jail, handshake, Ready) and the vmm's reconnection.
const RESTART_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `bulkhead ctl`; returns the exit status (0 done, 1 the VM refused, 125 no answer).
pub fn main(args: CtlArgs) -> i32 {
    let request = match &args.action {
        CtlAction::Status => ApiRequest::Status,
        CtlAction::Pause => ApiRequest::Pause,
        CtlAction::Resume => ApiRequest::Resume,
        CtlAction::Shutdown => ApiRequest::Shutdown,
        CtlAction::Disk { name, path } => match absolute(path) {
            Ok(path) => ApiRequest::SwapDisk {
                device: name.clone(),
                path,
            },
            Err(code) => return code,
        },
        CtlAction::Restart { name, exec } => ApiRequest::Restart {
            device: name.clone(),
            exec: match exec.as_deref().map(absolute).transpose() {
                Ok(exec) => exec,
                Err(code) => return code,
            },
        },
    };
    let at = args.api_socket.display();
    match ask(&args, &request) {
        Ok(ApiReply::Ok) => 0,
        Ok(ApiReply::Status(status)) => {
            print!("{}", describe(&status));
            0
        }
        // Whatever answers on the socket (a launcher relaying its vmm, or anything else
        // there) does not drive this terminal.
        Ok(ApiReply::Error(e)) => {
            eprintln!("bulkhead: the VM at {at} refused: {}", sanitize(&e));
            1
        }
        Ok(other) => {
            eprintln!(
                "bulkhead: the VM at {at} answered {}",
                sanitize(&format!("{other:?}"))
            );
            125
        }
        Err(e) => {
            eprintln!("bulkhead: error: API socket {at}: {}", sanitize(&e));
            125
        }
    }
}

/// `path` made absolute (the launcher runs elsewhere: a relative path is ours), as UTF-8;
/// else the error is printed and the exit status returned.
fn absolute(path: &std::path::Path) -> Result<String, i32> {
    let path = std::path::absolute(path).map_err(|e| {
        eprintln!("bulkhead: error: {}: {e}", path.display());
        125
    })?;
    match path.to_str() {
        Some(p) => Ok(p.to_owned()),
        None => {
            eprintln!("bulkhead: error: {}: not UTF-8", path.display());
            Err(125)
        }
    }
}

fn ask(args: &CtlArgs, request: &ApiRequest) -> Result<ApiReply, String> {
    let stream = UnixStream::connect(&args.api_socket).map_err(|e| e.to_string())?;
    let mut channel = ApiClientChannel::new(stream, "the VM");
    let timeout = match request {
        ApiRequest::Restart { .. } => RESTART_TIMEOUT,
        _ => TIMEOUT,
    };
    channel
        .set_timeouts(Some(timeout), Some(TIMEOUT))
        .and_then(|()| channel.handshake())
        .and_then(|()| channel.send(request, &[]))
        .map_err(|e| e.to_string())?;
    let (reply, _) = channel.recv().map_err(|e| e.to_string())?;
    Ok(reply)
}

/// The status as lines of `key: value`.
pub fn describe(s: &VmStatus) -> String {
    let state = match s.state {
        VmState::Running => "running",
        VmState::Paused => "paused",
        VmState::ShuttingDown => "shutting down",
    };
    let mut out = format!(
        "state: {state}\nvcpus: {}\nmemory: {} MiB\n",
        s.vcpus,
        s.memory_bytes >> 20
    );
    for d in &s.devices {
        let state = match d.state {
            DeviceState::Starting => "starting",
            DeviceState::Ready => "running",
            DeviceState::Failed => "failed",
            DeviceState::Exited => "exited",
        };
        out.push_str(&format!(
            "process: {} pid {} {state}\n",
            sanitize(&d.name),
            d.pid
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_protocol::DeviceStatus;

    #[test]
    fn status_lines() {
        let s = VmStatus {
            state: VmState::Paused,
            vcpus: 2,
            memory_bytes: 512 << 20,
            devices: vec![
                DeviceStatus {
                    name: "disk0 (bulkhead-blk)".into(),
                    pid: 42,
                    state: DeviceState::Ready,
                },
                DeviceStatus {
                    name: "x\x1b[2J\nstate: running".into(),
                    pid: 43,
                    state: DeviceState::Failed,
                },
            ],
        };
        assert_eq!(
            describe(&s),
            "state: paused\nvcpus: 2\nmemory: 512 MiB\nprocess: disk0 (bulkhead-blk) pid 42 running\nprocess: x\\x1b[2J\\x0astate: running pid 43 failed\n"
        );
    }
}
