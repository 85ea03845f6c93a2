//! One queue's inflight tracking in the shared region ([`crate::daemon::inflight`]), and
//! what a (re)started queue makes of what a predecessor left there.
//!
//! While serving (as libvhost-user does): a popped request gets the next counter, then its
//! inflight byte is set; completing it sets `last_batch_head`, then the used ring is
//! written, then its byte is cleared and `used_idx` follows the used ring. A process killed
//! anywhere in between leaves either the request in flight (resubmitted; re-executing a
//! virtio-blk request is harmless, the guest can't reuse its buffers before it completes),
//! or `used_idx` one behind the used ring with `last_batch_head` naming the request that
//! did complete.
//!
//! On a start, the region was written by a process that may have been compromised, so
//! nothing in it is believed until it agrees with the ring: version, sizes, the inflight
//! bytes, `used_idx` at most one behind, and the requests in flight, in counter order,
//! exactly the next ones the guest made available after the used index (this backend
//! completes in order). Anything else is refused: the region's part is laid out afresh and
//! the queue is served from the available ring at the used index, which re-executes the
//! same requests in the guest's order.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use crate::daemon::inflight::{QueueRegion, Region, VERSION};

/// Why a queue's part of the region is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegionError {
    /// The region has no part for this queue.
    #[error("the region has no queue {0}")]
    NoQueue(usize),
    /// The region was laid out for another queue size.
    #[error("the region was laid out for {region} entries, the queue has {ring}")]
    QueueSize {
        /// Region.
        region: u16,
        /// Ring.
        ring: u16,
    },
    /// An unknown layout version.
    #[error("version {0} (only {VERSION} is known)")]
    Version(u16),
    /// desc_num other than the queue size.
    #[error("desc_num {desc_num} for a queue of {size}")]
    DescNum {
        /// Header.
        desc_num: u16,
        /// Ring.
        size: u16,
    },
    /// used_idx further behind the used ring than one unfinished completion explains.
    #[error("used_idx {region} while the used ring is at {ring}")]
    UsedIdx {
        /// Region.
        region: u16,
        /// Ring.
        ring: u16,
    },
    /// last_batch_head outside the table.
    #[error("last_batch_head {0} outside the table")]
    LastBatchHead(u16),
    /// An inflight byte other than 0 or 1.
    #[error("entry {head} has inflight byte {value}")]
    InflightByte {
        /// Entry.
        head: u16,
        /// Byte.
        value: u8,
    },
    /// The available ring is further ahead of the used ring than the queue is long.
    #[error("the available index {avail} is {ahead} ahead of the used index")]
    AvailIdx {
        /// Available index.
        avail: u16,
        /// How far ahead.
        ahead: u16,
    },
    /// The region's requests in flight are not the next ones the guest made available.
    #[error("the region's {count} request(s) in flight are not the next available ones")]
    NotAvailable {
        /// Requests the region has in flight.
        count: usize,
    },
}

/// Where a queue's ring stands, as a (re)start reads it from guest memory.
pub trait RingView {
    /// Queue size.
    fn size(&self) -> u16;
    /// The used ring's index.
    fn used_idx(&self) -> u16;
    /// The available ring's index.
    fn avail_idx(&self) -> u16;
    /// The available ring's entry at (free-running) position `pos`; None if unreadable.
    fn avail_entry(&self, pos: u16) -> Option<u16>;
}

/// One queue's tracking: a no-op without a region.
#[derive(Debug, Default)]
pub struct Tracker {
    region: Option<Arc<Region>>,
    queue: usize,
    counter: u64,
}

impl Tracker {
    fn part(&self) -> Option<QueueRegion<'_>> {
        self.region.as_ref()?.queue(self.queue)
    }

    /// Whether a region is tracking this queue.
    pub fn active(&self) -> bool {
        self.part().is_some()
    }

    /// A request was popped.
    pub fn popped(&mut self, head: u16) {
        if let Some(part) = self.part() {
            part.mark(head, self.counter);
            self.counter = self.counter.wrapping_add(1);
        }
    }

    /// A request is about to be completed (before the used ring is written).
    pub fn completing(&self, head: u16) {
        if let Some(part) = self.part() {
            part.set_last_batch_head(head);
            fence(Ordering::Release);
        }
    }

    /// A request was completed; the used ring's index is now `used_idx`.
    pub fn completed(&self, head: u16, used_idx: u16) {
        if let Some(part) = self.part() {
            fence(Ordering::Release);
            part.clear(head);
            fence(Ordering::Release);
            part.set_used_idx(used_idx);
        }
    }

    /// The queue (re)starts with `region` (if any) as queue `queue`: checks its part
    /// against `ring` and returns the heads to resubmit, in order. On an error the part is
    /// laid out afresh (tracking goes on from the ring as it is) when it has the queue's
    /// size, and tracking stops otherwise.
    pub fn restart(
        &mut self,
        region: Option<Arc<Region>>,
        queue: usize,
        ring: &impl RingView,
    ) -> Result<Vec<u16>, RegionError> {
        self.region = region;
        self.queue = queue;
        self.counter = 0;
        if self.region.is_none() {
            return Ok(Vec::new());
        }
        let Some(part) = self.part() else {
            self.region = None;
            return Err(RegionError::NoQueue(queue));
        };
        if part.entries() != ring.size() {
            let err = RegionError::QueueSize {
                region: part.entries(),
                ring: ring.size(),
            };
            self.region = None;
            return Err(err);
        }
        match check(&part, ring) {
            Ok((heads, next_counter)) => {
                self.counter = next_counter;
                Ok(heads)
            }
            Err(e) => {
                part.reset();
                part.set_used_idx(ring.used_idx());
                Err(e)
            }
        }
    }
}

/// The checks of [`Tracker::restart`]; returns the heads in order and the next counter.
fn check(part: &QueueRegion<'_>, ring: &impl RingView) -> Result<(Vec<u16>, u64), RegionError> {
    let size = ring.size();
    let used = ring.used_idx();
    match part.version() {
        0 => {
            // Never used (laid out by a frontend that left it zeroed): nothing in flight.
            part.reset();
            part.set_used_idx(used);
            return Ok((Vec::new(), 0));
        }
        VERSION => {}
        v => return Err(RegionError::Version(v)),
    }
    if part.desc_num() != size {
        return Err(RegionError::DescNum {
            desc_num: part.desc_num(),
            size,
        });
    }
    let recorded = part.used_idx();
    if recorded != used {
        // Killed between writing the used ring and recording it: the last head is done.
        if used.wrapping_sub(recorded) != 1 {
            return Err(RegionError::UsedIdx {
                region: recorded,
                ring: used,
            });
        }
        let last = part.last_batch_head();
        if last >= size {
            return Err(RegionError::LastBatchHead(last));
        }
        part.clear(last);
        part.set_used_idx(used);
    }
    let mut inflight = Vec::new();
    for head in 0..size {
        match part.inflight(head) {
            Some(0) | None => {}
            Some(1) => inflight.push((part.counter(head).unwrap_or(0), head)),
            Some(value) => return Err(RegionError::InflightByte { head, value }),
        }
    }
    let avail = ring.avail_idx();
    let ahead = avail.wrapping_sub(used);
    if ahead > size {
        return Err(RegionError::AvailIdx { avail, ahead });
    }
    let count = inflight.len();
    if count > usize::from(ahead) {
        return Err(RegionError::NotAvailable { count });
    }
    inflight.sort_unstable();
    let next_counter = inflight
        .last()
        .map_or(0, |&(counter, _)| counter.wrapping_add(1));
    let mut heads = Vec::with_capacity(count);
    for (k, &(_, head)) in inflight.iter().enumerate() {
        // k < count <= ahead <= size, so it fits in u16.
        let pos = used.wrapping_add(k as u16);
        if ring.avail_entry(pos) != Some(head) {
            return Err(RegionError::NotAvailable { count });
        }
        heads.push(head);
    }
    Ok((heads, next_counter))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::inflight::scratch_region;

    struct Ring {
        size: u16,
        used: u16,
        avail: Vec<u16>,
        first: u16,
    }

    impl RingView for Ring {
        fn size(&self) -> u16 {
            self.size
        }
        fn used_idx(&self) -> u16 {
            self.used
        }
        fn avail_idx(&self) -> u16 {
            self.first.wrapping_add(self.avail.len() as u16)
        }
        fn avail_entry(&self, pos: u16) -> Option<u16> {
            self.avail
                .get(usize::from(pos.wrapping_sub(self.first)))
                .copied()
        }
    }

    fn ring(used: u16, avail: &[u16]) -> Ring {
        Ring {
            size: 8,
            used,
            avail: avail.to_vec(),
            first: used,
        }
    }

    #[test]
    fn tracking_then_restart_resubmits_in_counter_order() {
        let region = Arc::new(scratch_region(1, 8).unwrap());
        region.queue(0).unwrap().reset();
        let mut t = Tracker::default();
        assert_eq!(
            t.restart(Some(region.clone()), 0, &ring(0, &[])),
            Ok(vec![])
        );
        // Pop 5, 2, 7; complete 5 only.
        for h in [5, 2, 7] {
            t.popped(h);
        }
        t.completing(5);
        t.completed(5, 1);
        // A successor, with the used ring at 1 and 2, 7 (then 4) available after it.
        let mut next = Tracker::default();
        assert_eq!(
            next.restart(Some(region.clone()), 0, &ring(1, &[2, 7, 4])),
            Ok(vec![2, 7])
        );
        assert_eq!(next.counter, 3);
    }

    #[test]
    fn killed_between_the_used_ring_and_the_region() {
        let region = Arc::new(scratch_region(1, 8).unwrap());
        region.queue(0).unwrap().reset();
        let mut t = Tracker::default();
        t.restart(Some(region.clone()), 0, &ring(0, &[])).unwrap();
        t.popped(3);
        t.popped(4);
        t.completing(3);
        // The used ring says 1; the region still says 0 and 3 in flight.
        let mut next = Tracker::default();
        assert_eq!(
            next.restart(Some(region.clone()), 0, &ring(1, &[4])),
            Ok(vec![4])
        );
        assert_eq!(region.queue(0).unwrap().used_idx(), 1);
        assert_eq!(region.queue(0).unwrap().inflight(3), Some(0));
    }

    #[test]
    fn hostile_regions_are_refused_and_laid_out_afresh() {
        let region = Arc::new(scratch_region(1, 8).unwrap());
        let part = || region.queue(0).unwrap();
        let refused = |r: &Ring| Tracker::default().restart(Some(region.clone()), 0, r);

        part().write_header(7, 8, 0, 0);
        assert_eq!(refused(&ring(0, &[])), Err(RegionError::Version(7)));
        assert_eq!(part().version(), VERSION, "laid out afresh");

        part().write_header(1, 9, 0, 0);
        assert!(matches!(
            refused(&ring(0, &[])),
            Err(RegionError::DescNum { .. })
        ));

        part().write_header(1, 8, 0, 5);
        assert!(matches!(
            refused(&ring(9, &[])),
            Err(RegionError::UsedIdx { .. })
        ));

        part().write_header(1, 8, 200, 5);
        assert_eq!(refused(&ring(6, &[])), Err(RegionError::LastBatchHead(200)));

        part().write_header(1, 8, 0, 0);
        part().write_entry(2, 9, 0);
        assert!(matches!(
            refused(&ring(0, &[2])),
            Err(RegionError::InflightByte { .. })
        ));

        // In flight, but not what the guest made available next (or in another order).
        part().reset();
        part().write_entry(2, 1, 1);
        part().write_entry(3, 1, 0);
        assert!(matches!(
            refused(&ring(0, &[2, 3])),
            Err(RegionError::NotAvailable { .. })
        ));
        part().write_entry(2, 1, 1);
        part().write_entry(3, 1, 0);
        assert!(matches!(
            refused(&ring(0, &[3])),
            Err(RegionError::NotAvailable { .. })
        ));
        part().write_entry(2, 1, 1);
        part().write_entry(3, 1, 0);
        assert_eq!(refused(&ring(0, &[3, 2])), Ok(vec![3, 2]));

        let mut far = ring(0, &[]);
        far.first = 100;
        part().write_header(1, 8, 0, 0);
        assert!(matches!(refused(&far), Err(RegionError::AvailIdx { .. })));

        let mut small = ring(0, &[]);
        small.size = 4;
        assert!(matches!(
            Tracker::default().restart(Some(region.clone()), 0, &small),
            Err(RegionError::QueueSize { .. })
        ));
        assert_eq!(
            Tracker::default().restart(Some(region.clone()), 1, &ring(0, &[])),
            Err(RegionError::NoQueue(1))
        );
    }
}
