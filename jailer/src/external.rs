//! Reaching a backend someone else started (`vhost-user=PATH`, parsed in `external_arg`):
//! connecting to it, or with `listen=on` binding PATH and accepting its connection.

use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

pub use crate::external_arg::ExternalBackend;
use crate::safe_open::{SafeOpenError, SocketFile};

/// Errors reaching an external backend.
#[derive(Debug, thiserror::Error)]
pub enum ExternalError {
    /// The socket could not be connected or bound.
    #[error("{device}: opening vhost-user socket")]
    Open {
        /// Device name.
        device: String,
        /// Why (names the path).
        #[source]
        source: SafeOpenError,
    },
    /// Waiting for the backend's connection failed.
    #[error("{device}: waiting for a vhost-user backend on {path}")]
    Accept {
        /// Device name.
        device: String,
        /// The socket.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No backend connected in time.
    #[error(
        "{device}: no vhost-user backend connected to {path} within {secs} s (connect-timeout=)"
    )]
    Timeout {
        /// Device name.
        device: String,
        /// The socket.
        path: String,
        /// The timeout.
        secs: u64,
    },
}

/// Reaches device `device`'s backend: the connected socket for the vmm and, with
/// `listen=on`, the socket file bulkhead bound (removed when dropped, after the VM).
pub fn connect(
    device: &str,
    backend: &ExternalBackend,
) -> Result<(UnixStream, Option<SocketFile>), ExternalError> {
    let open_err = |source| ExternalError::Open {
        device: device.to_owned(),
        source,
    };
    if !backend.listen {
        let stream = crate::safe_open::connect_socket(&backend.path).map_err(open_err)?;
        return Ok((stream, None));
    }
    let (listener, file) = crate::safe_open::bind_socket(&backend.path, true)
        .map(|bound| bound.removed_on_drop(&backend.path))
        .map_err(open_err)?;
    eprintln!(
        "bulkhead: {device}: waiting for a vhost-user backend on {}",
        backend.path.display()
    );
    let timeout = Duration::from_secs(backend.connect_timeout);
    let stream = accept_within(&listener, timeout).map_err(|e| match e {
        None => ExternalError::Timeout {
            device: device.to_owned(),
            path: backend.path.display().to_string(),
            secs: backend.connect_timeout,
        },
        Some(source) => ExternalError::Accept {
            device: device.to_owned(),
            path: backend.path.display().to_string(),
            source,
        },
    })?;
    Ok((stream, Some(file)))
}

/// One connection on `listener` within `timeout` (`Err(None)` on timeout), blocking; the
/// listener is polled every 10 ms (a once-per-run wait, so no poll(2) is needed).
fn accept_within(
    listener: &UnixListener,
    timeout: Duration,
) -> Result<UnixStream, Option<std::io::Error>> {
    listener.set_nonblocking(true).map_err(Some)?;
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).map_err(Some)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(None);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Some(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_accepts_one_backend_or_times_out() {
        let dir = std::env::temp_dir().join(format!("bulkhead-ext-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let mut ext = ExternalBackend::new(&path);
        ext.listen = true;
        ext.connect_timeout = 1;
        let started = Instant::now();
        let err = connect("net0", &ext).unwrap_err();
        assert!(
            matches!(err, ExternalError::Timeout { secs: 1, .. }),
            "{err}"
        );
        assert!(started.elapsed() >= Duration::from_secs(1));
        assert!(!path.exists(), "the socket file is removed");
        let p = path.clone();
        let backend = std::thread::spawn(move || {
            for _ in 0..100 {
                if let Ok(s) = UnixStream::connect(&p) {
                    return s;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!("never connected");
        });
        let (stream, file) = connect("net0", &ext).unwrap();
        let mut peer = backend.join().unwrap();
        std::io::Write::write_all(&mut peer, b"hi").unwrap();
        let mut got = [0u8; 2];
        std::io::Read::read_exact(&mut &stream, &mut got).unwrap();
        assert_eq!(&got, b"hi");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(file);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
