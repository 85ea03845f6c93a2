//! The vhost-user replies the vmm reads: the input plays the backend. Its reply bytes are
//! queued on a socketpair before the frontend connects (the write side then shut, so the
//! frontend meets end-of-file, never a wait, when they run out); the frontend does its
//! handshake and then the operations the input asks for (config reads and writes,
//! activation with any queue set-up, control-queue notifies, resets), reading whatever
//! replies come.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use bulkhead_devices::fuzz::input::Input;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemory;
use crate::virtio::backend::{QueueConfig, VirtioBackend};
use crate::virtio::interrupts::Interrupts;
use crate::virtio::vhost_user::{
    BackendSocket, SharedMemory, VhostUserDevice, VHOST_USER_F_PROTOCOL_FEATURES,
};

/// Guest memory size: small, the backend never touches it.
const MEM_SIZE: u64 = 0x4_0000;
/// Most operations after the handshake (each sends a handful of messages, which sit
/// unread in the socket's buffer).
const MAX_OPS: usize = 32;

fn queue(input: &mut Input) -> Option<QueueConfig> {
    let mode = input.u8();
    if mode & 1 == 0 {
        return None;
    }
    let size = match mode >> 5 {
        0..=3 => 256,
        4 => 1 << (input.u8() % 10),
        5 => 3,
        6 => 0,
        _ => input.u16(),
    };
    let mut addr = || match input.u8() {
        0xff => input.u64(),
        a => u64::from(a) * 0x400,
    };
    Some(QueueConfig {
        size,
        desc: addr(),
        avail: addr(),
        used: addr(),
    })
}

/// Runs the handshake and the input's operations against the input's replies. Panics if
/// the frontend panics, or if a device it accepted offers the guest the vhost-user
/// protocol-features bit or a queue list of the wrong length. Returns the number of
/// operations done, `None` if the handshake failed.
pub fn fuzz_vhost_user(data: &[u8]) -> Option<usize> {
    let mut input = Input::new(data);
    let device_type = [1, 2, 3][usize::from(input.u8() % 3)];
    let queues = 1 + usize::from(input.u8() % 4);
    let ops_len = usize::from(input.u8());
    let mut ops = Input::new(input.take(ops_len));
    let replies = input.rest();

    let (ours, mut theirs) = UnixStream::pair().expect("socketpair");
    theirs
        .write_all(replies)
        .expect("replies fit the socket buffer");
    theirs
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let memory = GuestMemory::new(MEM_SIZE).expect("guest memory");
    let shared = SharedMemory {
        mem: memory.mem.clone(),
        memfd: memory.file.as_raw_fd(),
    };
    let kicks = (0..queues)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"))
        .collect();
    // One eventfd per queue, as virtio-pci has them, to see which one each op signals.
    let mut irqs = None;
    let Ok(mut device) = VhostUserDevice::connect(
        "fuzz0",
        device_type,
        BackendSocket::Connected(ours),
        kicks,
        |n| {
            let i = Interrupts::per_queue(n)?;
            irqs = Some(i.clone());
            Ok(i)
        },
        shared,
    ) else {
        return None;
    };
    let irqs = irqs.expect("a connected device made its interrupts");
    assert_eq!(
        device.features() & VHOST_USER_F_PROTOCOL_FEATURES,
        0,
        "the protocol-features bit reaches the guest"
    );
    let total = device.queue_max_sizes().len();
    assert!(
        total == queues || total == queues + 1,
        "{total} queues for {queues} asked"
    );
    let mut done = 0;
    while !ops.is_empty() && done < MAX_OPS {
        let op = ops.u8() % 6;
        match op {
            0 => {
                let mut buf = vec![0u8; usize::from(ops.u8() % 9)];
                device.read_config(u64::from(ops.u8()), &mut buf);
            }
            1 => {
                let buf = vec![ops.u8(); usize::from(ops.u8() % 9)];
                device.write_config(u64::from(ops.u8()), &buf);
            }
            2 => {
                let features = ops.u64();
                let configs: Vec<Option<QueueConfig>> =
                    (0..total).map(|_| queue(&mut ops)).collect();
                let _ = device.activate(features, &configs);
            }
            3 => device.notify(u32::from(ops.u8() % 6)),
            4 => device.reset(),
            _ => {
                let _ = device.interrupt();
            }
        }
        // Only the vmm writes these here (no backend runs): the config interrupt comes
        // from interrupt(), a queue's only from the control queue the vmm serves.
        for (q, fd) in irqs.queues.iter().enumerate() {
            if fd.read().is_ok() {
                assert!(
                    op == 3 && q == queues,
                    "queue {q}'s call fd signalled by op {op}"
                );
            }
        }
        if irqs.config.read().is_ok() {
            assert_eq!(op, 5, "the config interrupt signalled by op {op}");
        }
        done += 1;
    }
    drop(theirs);
    Some(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::config_size::config_size;
    use bulkhead_devices::fuzz::stable::{run_bounded, Rng};

    const REPLY: u32 = 0x5; // version 1, reply
    const GET_FEATURES: u32 = 1;
    const GET_PROTOCOL_FEATURES: u32 = 15;
    const GET_QUEUE_NUM: u32 = 17;
    const GET_CONFIG: u32 = 24;
    const GET_VRING_BASE: u32 = 11;

    fn reply(out: &mut Vec<u8>, request: u32, body: &[u8]) {
        out.extend(request.to_le_bytes());
        out.extend(REPLY.to_le_bytes());
        out.extend((body.len() as u32).to_le_bytes());
        out.extend(body);
    }

    /// A backend that answers the handshake well (CONFIG, MQ, maybe REPLY_ACK), then a
    /// few operations with plausible replies (acks, config, vring bases).
    fn valid(rng: &mut Rng) -> Vec<u8> {
        let ops = rng.below(6);
        backend(rng, ops)
    }

    fn backend(rng: &mut Rng, ops: usize) -> Vec<u8> {
        let ack = rng.below(2) == 1;
        let device_type = rng.below(3) as u8;
        let mut out = vec![device_type, rng.below(4) as u8];
        let ops: Vec<u8> = (0..ops)
            .flat_map(|_| {
                [
                    rng.below(6) as u8,
                    rng.next_u64() as u8,
                    rng.below(16) as u8,
                ]
            })
            .collect();
        out.push(ops.len() as u8);
        out.extend(&ops);
        let features: u64 = (1 << 32) | (1 << 30) | (1 << 22) | (1 << 9) | (1 << 1);
        reply(&mut out, GET_FEATURES, &features.to_le_bytes());
        let protocol: u64 = 0x201 | if ack { 8 } else { 0 };
        reply(&mut out, GET_PROTOCOL_FEATURES, &protocol.to_le_bytes());
        reply(&mut out, GET_QUEUE_NUM, &8u64.to_le_bytes());
        for _ in 0..rng.below(8) {
            match rng.below(3) {
                0 => {
                    let size = config_size(u32::from(device_type) + 1, features) as u32;
                    let mut body = Vec::new();
                    body.extend(0u32.to_le_bytes());
                    body.extend(size.to_le_bytes());
                    body.extend(0u32.to_le_bytes());
                    body.extend(vec![0x5a; size as usize]);
                    reply(&mut out, GET_CONFIG, &body);
                }
                1 => {
                    let mut body = (rng.below(2) as u32).to_le_bytes().to_vec();
                    body.extend(0u32.to_le_bytes());
                    reply(&mut out, GET_VRING_BASE, &body);
                }
                _ => reply(&mut out, rng.below(26) as u32, &0u64.to_le_bytes()),
            }
        }
        out
    }

    #[test]
    fn a_good_handshake_connects() {
        let mut rng = Rng::new(17);
        for _ in 0..4 {
            assert_eq!(fuzz_vhost_user(&backend(&mut rng, 0)), Some(0));
        }
    }

    #[test]
    fn bounded_fuzz_of_vhost_user_replies() {
        run_bounded("vhost-user", valid, fuzz_vhost_user);
    }
}
