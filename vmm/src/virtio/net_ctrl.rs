//! The virtio-net control queue, served in the vmm: a vhost-user net backend has none, and
//! virtio-net's multiqueue (MQ) requires one (the driver says through it how many queue
//! pairs to use). Only `VIRTIO_NET_CTRL_MQ` / `VQ_PAIRS_SET` is offered; every other
//! command is answered `VIRTIO_NET_ERR`. The queue is rare and tiny, so serving it costs one
//! exit per command, which is how QEMU serves it for vhost-user-net too.

use bulkhead_ratelimit::{debug_limited, warn_limited};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::backend::QueueConfig;

/// virtio-net feature bit: the device has a control queue.
pub const VIRTIO_NET_F_CTRL_VQ: u32 = 17;
/// virtio-net feature bit: multiqueue.
pub const VIRTIO_NET_F_MQ: u32 = 22;
/// Size of the control queue the vmm offers.
pub const CTRL_QUEUE_SIZE: u16 = 64;
const VIRTIO_NET_CTRL_MQ: u8 = 4;
const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET: u8 = 0;
const VIRTIO_NET_OK: u8 = 0;
const VIRTIO_NET_ERR: u8 = 1;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Largest command body read (a VQ_PAIRS_SET body is 2 bytes).
const MAX_COMMAND: usize = 64;

/// The control queue of one net device.
pub struct CtrlQueue {
    queue: Queue,
}

/// Errors setting the queue up.
#[derive(Debug, thiserror::Error)]
#[error("control queue: {0}")]
pub struct CtrlError(String);

impl CtrlQueue {
    /// The queue as the driver configured it.
    pub fn new(config: &QueueConfig, features: u64) -> Result<Self, CtrlError> {
        let mut queue = Queue::new(CTRL_QUEUE_SIZE).map_err(|e| CtrlError(e.to_string()))?;
        // The `try_` setters: the plain ones keep the old value when refusing one (a size
        // that is no power of two, a misaligned ring), and the queue would be served at a
        // size or address other than the driver's.
        let refused = |what: &str| {
            let what = what.to_owned();
            move |e: virtio_queue::Error| CtrlError(format!("{what}: {e}"))
        };
        queue
            .try_set_size(config.size)
            .map_err(refused(&format!("size {}", config.size)))?;
        queue
            .try_set_desc_table_address(GuestAddress(config.desc))
            .map_err(refused("descriptor table"))?;
        queue
            .try_set_avail_ring_address(GuestAddress(config.avail))
            .map_err(refused("available ring"))?;
        queue
            .try_set_used_ring_address(GuestAddress(config.used))
            .map_err(refused("used ring"))?;
        queue.set_event_idx(features & VIRTIO_RING_F_EVENT_IDX != 0);
        queue.set_ready(true);
        Ok(CtrlQueue { queue })
    }

    /// Serves every available command; `set_pairs(n)` applies VQ_PAIRS_SET and says whether
    /// it worked. Returns whether the driver should be interrupted.
    pub fn process(
        &mut self,
        mem: &GuestMemoryMmap,
        mut set_pairs: impl FnMut(u16) -> bool,
    ) -> bool {
        if !self.queue.is_valid(mem) {
            warn_limited!("net control queue: the driver's ring addresses are not in guest memory");
            return false;
        }
        let mut completed = false;
        loop {
            let chain = match self.queue.iter(mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    warn_limited!("net control queue: {e}");
                    return false;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let mut command = Vec::new();
            let mut status_at = None;
            for desc in chain {
                if desc.is_write_only() {
                    // The status byte is the last writable byte of the chain.
                    if desc.len() > 0 {
                        status_at = desc.addr().checked_add(u64::from(desc.len()) - 1);
                    }
                } else if command.len() < MAX_COMMAND {
                    let take = (desc.len() as usize).min(MAX_COMMAND - command.len());
                    let mut buf = vec![0u8; take];
                    if mem.read_slice(&mut buf, desc.addr()).is_err() {
                        command.clear();
                        break;
                    }
                    command.extend_from_slice(&buf);
                }
            }
            let status = answer(&command, &mut set_pairs);
            let written = match status_at {
                Some(at) => mem.write_obj(status, at).is_ok(),
                None => false,
            };
            if let Err(e) = self.queue.add_used(mem, head, u32::from(written)) {
                warn_limited!("net control queue: {e}");
                return completed;
            }
            completed = true;
        }
        completed && self.queue.needs_notification(mem).unwrap_or(true)
    }
}

/// The status for one command (class, command, body).
fn answer(command: &[u8], set_pairs: &mut impl FnMut(u16) -> bool) -> u8 {
    match command {
        [VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, lo, hi, ..] => {
            if set_pairs(u16::from_le_bytes([*lo, *hi])) {
                VIRTIO_NET_OK
            } else {
                VIRTIO_NET_ERR
            }
        }
        [class, cmd, ..] => {
            debug_limited!("net control queue: unsupported class {class} command {cmd}");
            VIRTIO_NET_ERR
        }
        _ => VIRTIO_NET_ERR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;

    /// Runs one chain of (address, bytes to put there, flags) through a fresh queue;
    /// returns the status byte at `status_addr` and the pairs set.
    fn run(descs: &[(u64, &[u8], u32, u16)], status_addr: u64) -> (u8, Vec<u16>, bool) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, (addr, bytes, len, flags))| {
                mem.write_slice(bytes, GuestAddress(*addr)).unwrap();
                RawDescriptor::from(SplitDescriptor::new(*addr, *len, *flags, i as u16 + 1))
            })
            .collect();
        vq.add_desc_chains(&raw, 0).unwrap();
        mem.write_obj(0xffu8, GuestAddress(status_addr)).unwrap();
        let config = QueueConfig {
            size: 16,
            desc: vq.desc_table_addr().0,
            avail: vq.avail_addr().0,
            used: vq.used_addr().0,
        };
        let mut ctrl = CtrlQueue::new(&config, 0).unwrap();
        let mut set = Vec::new();
        let irq = ctrl.process(&mem, |n| {
            set.push(n);
            (1..=4).contains(&n)
        });
        (mem.read_obj(GuestAddress(status_addr)).unwrap(), set, irq)
    }

    #[test]
    fn vq_pairs_set_is_applied_and_acknowledged() {
        let (status, set, irq) = run(
            &[
                (0x8000, &[4, 0], 2, NEXT),
                (0x8100, &[2, 0], 2, NEXT),
                (0x8200, &[], 1, WRITE),
            ],
            0x8200,
        );
        assert_eq!((status, set, irq), (VIRTIO_NET_OK, vec![2], true));
    }

    #[test]
    fn out_of_range_pairs_are_refused() {
        let (status, set, _) = run(
            &[(0x8000, &[4, 0, 9, 0], 4, NEXT), (0x8200, &[], 1, WRITE)],
            0x8200,
        );
        assert_eq!((status, set), (VIRTIO_NET_ERR, vec![9]));
    }

    #[test]
    fn other_commands_get_err() {
        // VIRTIO_NET_CTRL_RX / PROMISC
        let (status, set, _) = run(
            &[(0x8000, &[0, 0, 1], 3, NEXT), (0x8200, &[], 1, WRITE)],
            0x8200,
        );
        assert_eq!((status, set), (VIRTIO_NET_ERR, vec![]));
        // A truncated header.
        let (status, _, _) = run(&[(0x8000, &[4], 1, NEXT), (0x8200, &[], 1, WRITE)], 0x8200);
        assert_eq!(status, VIRTIO_NET_ERR);
    }

    #[test]
    fn chains_without_a_status_byte_or_outside_memory_are_returned() {
        let (status, set, irq) = run(&[(0x8000, &[4, 0, 2, 0], 4, 0)], 0x8200);
        assert_eq!(
            (status, set),
            (0xff, vec![2]),
            "nothing to write the status to"
        );
        assert!(irq, "the chain is still returned");
        let (status, set, _) = run(
            &[(0x8000, &[], 4, NEXT), (0xffff_0000, &[], 1, WRITE)],
            0x8200,
        );
        assert_eq!(status, 0xff);
        assert!(set.is_empty());
    }
}
