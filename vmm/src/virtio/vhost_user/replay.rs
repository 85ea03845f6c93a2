//! Handing a device to a new backend process (after its old one died, or for a live
//! replacement): the vhost-user set-up is replayed on the new connection.
//!
//! 1. SET_OWNER, GET_FEATURES (it must offer every feature the driver acked, or, before
//!    the driver started the device, every feature the guest was offered), the protocol
//!    features acked the first time (it must offer them all), GET_QUEUE_NUM.
//! 2. If the driver started the device: SET_FEATURES, SET_INFLIGHT_FD (the region the
//!    first backend handed out), SET_MEM_TABLE, then per ready queue SET_VRING_NUM,
//!    SET_VRING_ADDR, SET_VRING_BASE, SET_VRING_CALL, SET_VRING_KICK, SET_VRING_ENABLE.
//!    The base is where the used ring stands in guest memory ("restore last avail from
//!    used", as QEMU does): what the old backend took and did not complete is taken
//!    again (a block backend knows which from the inflight region).
//! 3. A write to every ready queue's kick eventfd (what the guest queued meanwhile) and
//!    call eventfd (the old backend may have completed requests without signalling).
//!
//! The kick and call eventfds stay the same (registered with KVM); the new backend gets
//! duplicates over the socket. Every reply is awaited with the socket's timeout.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::Shutdown;
use vhost::vhost_user::Frontend;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::sys::{peer_hung_up, POLLRDHUP};

use super::{
    handshake, StartError, VhostUserDevice, VhostUserError, QUEUE_SIZE, REPLY_TIMEOUT,
    VHOST_USER_F_PROTOCOL_FEATURES,
};
use crate::virtio::backend::{QueueConfig, ReconnectError};

/// Replays `dev`'s set-up to the backend connected through `socket`.
pub(super) fn reconnect(
    dev: &mut VhostUserDevice,
    socket: UnixStream,
) -> Result<(), ReconnectError> {
    // From here the old connection's hang-up is not news.
    dev.link.begin_reconnect();
    let name = dev.name.clone();
    let refused = |what: &str, e: std::io::Error| {
        ReconnectError::Refused(format!("{name}: the new backend's socket: {what}: {e}"))
    };
    socket
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(|e| refused("setting its timeout", e))?;
    socket
        .set_write_timeout(Some(REPLY_TIMEOUT))
        .map_err(|e| refused("setting its timeout", e))?;
    let watch = OwnedFd::from(
        socket
            .try_clone()
            .map_err(|e| refused("duplicating it", e))?,
    );
    // The old connection (if it was still open) is closed here.
    dev.frontend = Frontend::from_stream(socket, dev.kicks.len() as u64);
    let guard = super::watchdog::arm(dev.frontend.as_raw_fd(), REPLY_TIMEOUT);
    let result = replay(dev, &guard);
    let timed_out = guard.fired();
    drop(guard);
    match result {
        Ok(()) => {
            dev.link.connected(watch);
            dev.stopped = None;
            info_log(dev);
            // A fresh cache (the new backend's view of the config space).
            dev.fetch_config();
            Ok(())
        }
        Err(why) => {
            // (A timeout shut the socket down itself: that is no hang-up of the backend.)
            let hung_up = !timed_out && hung_up(&watch);
            // A refused backend is told by the end of its connection.
            let _ = nix::sys::socket::shutdown(watch.as_raw_fd(), Shutdown::Both);
            let why = format!("{name}: {why}");
            Err(if hung_up {
                ReconnectError::Lost(format!("{why} (the new backend hung up)"))
            } else {
                ReconnectError::Refused(why)
            })
        }
    }
}

fn info_log(dev: &VhostUserDevice) {
    bulkhead_ratelimit::info_limited!(
        "{}: a new backend took over{}",
        dev.name,
        if dev.activation.is_some() {
            ", its rings restarted where the used rings stand"
        } else {
            ""
        }
    );
}

/// The handshake, the driver's set-up, then the kicks and calls.
fn replay(dev: &mut VhostUserDevice, guard: &super::watchdog::Guard) -> Result<(), String> {
    let required = match &dev.activation {
        // The bits the driver acked that a backend provides (the vmm adds CTRL_VQ).
        Some(act) => {
            (act.features & dev.backend_features)
                | (dev.backend_features & VHOST_USER_F_PROTOCOL_FEATURES)
        }
        None => dev.backend_features,
    };
    handshake(
        &dev.name,
        dev.device_type,
        &mut dev.frontend,
        Some((required, dev.protocol_features)),
        dev.kicks.len(),
    )
    .map_err(|e| super::timed_out_text(without_name(&e), guard))?;
    let Some(act) = dev.activation.clone() else {
        return Ok(());
    };
    dev.active = true;
    dev.start(&act, true)
        .map_err(|e| e.timed_out(guard).what())?;
    for (i, q) in act.queues.iter().enumerate() {
        if q.is_none() {
            continue;
        }
        if let Err(e) = dev.kicks[i].write(1) {
            return Err(format!("kicking queue {i}: {e}"));
        }
        if let Err(e) = dev.interrupts.queues[i].write(1) {
            return Err(format!("signalling queue {i}: {e}"));
        }
    }
    Ok(())
}

/// Where queue `index`'s ring starts for a new backend: the used ring's index, read from
/// guest memory. The old backend (perhaps compromised) or the guest wrote it, so it must
/// be no more than the queue size behind the available ring's index.
pub(super) fn ring_base(
    mem: &GuestMemoryMmap,
    index: usize,
    q: &QueueConfig,
) -> Result<u16, StartError> {
    let read = |gpa: u64, what: &str| {
        gpa.checked_add(2)
            .and_then(|at| mem.read_obj::<u16>(GuestAddress(at)).ok())
            .map(u16::from_le)
            .ok_or_else(|| {
                StartError::Driver(format!(
                    "queue {index}: its {what} at {gpa:#x} is unreadable"
                ))
            })
    };
    let used = read(q.used, "used ring")?;
    let avail = read(q.avail, "available ring")?;
    let size = q.size.min(QUEUE_SIZE);
    let pending = avail.wrapping_sub(used);
    if pending > size {
        return Err(StartError::Backend(format!(
            "queue {index}: the used ring stands at {used}, {pending} behind the available ring's {avail}, more than its {size} entries: not a ring position to restart from"
        )));
    }
    Ok(used)
}

/// Whether `socket`'s peer hung up (without waiting).
fn hung_up(socket: &OwnedFd) -> bool {
    let mut p = [PollFd::new(socket.as_fd(), POLLRDHUP)];
    let n = poll(&mut p, PollTimeout::ZERO).unwrap_or(0);
    n > 0 && peer_hung_up(&p[0], PollFlags::POLLHUP | PollFlags::POLLERR)
}

/// A handshake error's text without the device name (the caller adds it).
fn without_name(e: &VhostUserError) -> String {
    let mut msg = match e {
        VhostUserError::Protocol { what, .. } => format!("vhost-user {what}"),
        VhostUserError::Unsuitable { what, .. } => format!("the vhost-user backend {what}"),
        other => other.to_string(),
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}
