//! The I/O thread (`vsock-io`): runs the connection table. It waits (epoll) for kicks
//! (through the backend's wake eventfd), the hybrid listener, CONNECT clients and stream
//! sockets; each time it drains the tx queue into the table, then fills rx buffers from
//! it. Host sockets are watched edge-triggered and read only when the guest has credit
//! and a buffer, so a guest that reads nothing stops the host side, not this thread.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bulkhead_ratelimit::warn_limited;
use bulkhead_seccomp::mode::process_mode;
use bulkhead_seccomp::thread::spawn_confined;
use bulkhead_seccomp::Role;
use std::os::fd::AsRawFd;
use vhost_user_backend::VringT;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};

use super::backend::VsockBackend;
use super::muxer::{Counters, Muxer, MAX_PAYLOAD, WAKE_TOKEN};
use super::queues;
use super::virtio::{RX_QUEUE, TX_QUEUE};

/// The running I/O thread.
pub struct IoThread {
    backend: Arc<VsockBackend>,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Option<Counters>>,
}

impl IoThread {
    /// Starts the thread.
    pub fn spawn(backend: Arc<VsockBackend>, muxer: Muxer) -> io::Result<IoThread> {
        muxer.epoll().ctl(
            ControlOperation::Add,
            backend.wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, WAKE_TOKEN),
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (Arc::clone(&backend), Arc::clone(&stop));
        let handle = spawn_confined("vsock-io", Role::VsockIo, process_mode(), move || {
            run(&b, muxer, &s)
        })?;
        Ok(IoThread {
            backend,
            stop,
            handle,
        })
    }

    /// Stops the thread and waits for it; returns what went wrong in its life.
    pub fn stop(self) -> Counters {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.backend.wake.write(1);
        self.handle.join().ok().flatten().unwrap_or_default()
    }
}

fn run(backend: &VsockBackend, mut muxer: Muxer, stop: &AtomicBool) -> Counters {
    let mut events = vec![EpollEvent::default(); 64];
    let mut scratch = vec![0u8; MAX_PAYLOAD];
    let mut bad_chains = 0u64;
    while !stop.load(Ordering::SeqCst) {
        // Waiting CONNECT clients and unanswered streams are timed out.
        let timeout = if muxer.waiting() { 250 } else { -1 };
        let n = match muxer.epoll().wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn_limited!("vsock-io: waiting: {e}; stopping");
                break;
            }
        };
        for e in &events[..n] {
            if e.data() == WAKE_TOKEN {
                let _ = backend.wake.read();
            } else {
                muxer.event(e.data(), e.event_set());
            }
        }
        if muxer.waiting() {
            muxer.expire(std::time::Instant::now());
        }
        bad_chains += pump(backend, &mut muxer, &mut scratch);
    }
    if bad_chains > 0 {
        warn_limited!("vsock: {bad_chains} bad descriptor chains");
    }
    muxer.counters
}

/// Moves packets both ways until neither queue has work.
fn pump(backend: &VsockBackend, muxer: &mut Muxer, scratch: &mut [u8]) -> u64 {
    let (Some(tx), Some(rx)) = (backend.vring(TX_QUEUE), backend.vring(RX_QUEUE)) else {
        return 0;
    };
    let atomic = backend.memory();
    let mem = atomic.memory();
    let mut bad = 0;
    // Bounded: a guest that keeps both queues busy gets a fresh wait between rounds.
    for _ in 0..64 {
        let t = {
            let mut state = tx.get_mut();
            let r = queues::drain_tx(state.get_queue_mut(), &mem, |h, p| muxer.guest_packet(h, p));
            if r.unusable {
                warn_limited!(
                    "vsock tx queue unusable: the driver's available index is more than the \
                     queue size ahead, or its ring cannot be read; left until the driver \
                     resets or kicks it again"
                );
            }
            if r.interrupt {
                if let Err(e) = state.signal_used_queue() {
                    warn_limited!("vsock tx queue: signalling the call eventfd: {e}");
                }
            }
            r
        };
        let r = {
            let mut state = rx.get_mut();
            let r = queues::fill_rx(state.get_queue_mut(), &mem, scratch, |buf| {
                muxer.next_packet(buf)
            });
            if r.interrupt {
                if let Err(e) = state.signal_used_queue() {
                    warn_limited!("vsock rx queue: signalling the call eventfd: {e}");
                }
            }
            r
        };
        bad += t.bad + r.bad;
        if !t.interrupt && !r.interrupt {
            break;
        }
    }
    bad
}
