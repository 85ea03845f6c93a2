//! The API socket of a running VM (`bulkhead run --api-socket PATH`): one request per
//! connection, `bulkhead ctl` being the client. The launcher serves it from its supervision
//! loop; the socket file is created mode 0600 and removed when the VM ends.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_protocol::{ApiReply, ApiRequest, ApiServerChannel};

use crate::safe_open::SocketFile;

/// How long a client gets to say what it wants.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors creating the API socket.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Something is already there.
    #[error("API socket {0}: already exists (another VM's? remove it if it is stale)")]
    Exists(PathBuf),
    /// Its directory was refused or it cannot be made (see [`crate::safe_open`]).
    #[error("API socket")]
    Dir(#[source] crate::safe_open::SafeOpenError),
    /// Binding failed.
    #[error("API socket {path}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The listening API socket; its file is removed on drop if the path still names it.
pub struct ApiSocket {
    listener: UnixListener,
    /// The socket's file, bound in its directory resolved once under the rule for paths a
    /// user names; removed on drop only if it is still this socket (another file someone
    /// put there meanwhile is kept).
    _file: SocketFile,
}

impl ApiSocket {
    /// Creates the socket at `path` (refusing to replace anything there).
    pub fn bind(path: &Path) -> Result<ApiSocket, ApiError> {
        let bound = crate::safe_open::bind_socket(path, false).map_err(|e| {
            if e.io_kind() == Some(std::io::ErrorKind::AddrInUse) {
                ApiError::Exists(path.to_owned())
            } else {
                ApiError::Dir(e)
            }
        })?;
        // On an error below, `file` going out of scope removes the socket again. Its mode is
        // 0600 from bind on (`bind_socket`).
        let (listener, file) = bound.removed_on_drop(path);
        listener
            .set_nonblocking(true)
            .map_err(|source| ApiError::Bind {
                path: path.to_owned(),
                source,
            })?;
        Ok(ApiSocket {
            listener,
            _file: file,
        })
    }

    /// The fd to poll for connections.
    pub fn listener_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.listener)
    }

    /// Accepts a waiting connection, if there is one.
    pub fn accept(&self) -> Option<ApiClient> {
        let (stream, _) = self.listener.accept().ok()?;
        let _ = stream.set_nonblocking(false);
        let channel = ApiServerChannel::new(stream, "API client");
        channel
            .set_timeouts(Some(CLIENT_TIMEOUT), Some(CLIENT_TIMEOUT))
            .ok()?;
        Some(ApiClient { channel })
    }
}

/// One connection on the API socket.
pub struct ApiClient {
    channel: ApiServerChannel,
}

impl ApiClient {
    /// Shakes hands and reads the request.
    pub fn request(&mut self) -> Result<ApiRequest, String> {
        self.channel.handshake().map_err(|e| e.to_string())?;
        let (request, _) = self.channel.recv().map_err(|e| e.to_string())?;
        Ok(request)
    }

    /// Sends the reply (a client that went away is only logged).
    pub fn reply(&mut self, reply: ApiReply) {
        if let Err(e) = self.channel.send(&reply, &[]) {
            log::warn!("API socket: replying: {e}");
        }
    }
}
