//! Interrupt sources (eventfds: a queue's call fd, the config interrupt) delivered through
//! MSI-X vectors as KVM irqfds on MSI routes.
//!
//! Each vector `v` of a function owns GSI `gsi_base + v`. [`MsixIrqfds::sync`] makes KVM
//! match the table: an active vector has an MSI route with its message, and each source
//! pointing at it is an irqfd on that GSI; a masked (or disabled, or badly addressed)
//! vector has no route and its sources' irqfds are deassigned, so the backend's writes
//! accumulate in the eventfd. Unmasking assigns them again, and KVM injects at once an
//! eventfd that was signalled meanwhile: no interrupt is lost. The PBA is read by polling
//! the eventfds of sources whose irqfd is deassigned, without consuming them.
//!
//! Order of the KVM calls: irqfds are deassigned before their route goes, routes are set
//! before irqfds are assigned on them.

use std::sync::Arc;

use bulkhead_ratelimit::warn_limited;
use vmm_sys_util::eventfd::EventFd;

use super::msix::Msix;
use crate::kvm::irq_routing::{InterruptHost, MsiMessage};

/// A source's vector when it has none.
pub const NO_VECTOR: u16 = 0xffff;

struct Source {
    fd: Arc<EventFd>,
    vector: u16,
    /// The GSI KVM has it on as an irqfd.
    assigned: Option<u32>,
}

/// The sources of one function and the KVM state of its vectors.
pub struct MsixIrqfds {
    name: String,
    host: Arc<dyn InterruptHost>,
    gsi_base: u32,
    /// The route KVM has for each vector's GSI.
    routes: Vec<Option<MsiMessage>>,
    sources: Vec<Source>,
}

impl MsixIrqfds {
    /// Sources `fds` (none on a vector yet) of function `name`, whose `vectors` vectors use
    /// GSIs from `gsi_base`.
    pub fn new(
        name: &str,
        host: Arc<dyn InterruptHost>,
        gsi_base: u32,
        vectors: usize,
        fds: Vec<Arc<EventFd>>,
    ) -> MsixIrqfds {
        MsixIrqfds {
            name: name.to_owned(),
            host,
            gsi_base,
            routes: vec![None; vectors],
            sources: fds
                .into_iter()
                .map(|fd| Source {
                    fd,
                    vector: NO_VECTOR,
                    assigned: None,
                })
                .collect(),
        }
    }

    /// Points source `source` at `vector`; a vector the table does not have becomes
    /// [`NO_VECTOR`]. Returns what the source now has (what the guest reads back).
    /// Takes effect at the next [`sync`](Self::sync).
    pub fn set_vector(&mut self, source: usize, vector: u16) -> u16 {
        let vectors = self.routes.len();
        let Some(s) = self.sources.get_mut(source) else {
            return NO_VECTOR;
        };
        s.vector = if usize::from(vector) < vectors {
            vector
        } else {
            NO_VECTOR
        };
        s.vector
    }

    /// The vector of `source`.
    pub fn vector(&self, source: usize) -> u16 {
        self.sources.get(source).map_or(NO_VECTOR, |s| s.vector)
    }

    /// Source `source`'s eventfd (tests signal it).
    #[cfg(test)]
    pub fn source_fd(&self, source: usize) -> &Arc<EventFd> {
        &self.sources[source].fd
    }

    /// Whether a source on vector `v` was signalled and not delivered (its irqfd is
    /// deassigned). Polls without reading, so nothing is consumed.
    pub fn pending(&self, v: u16) -> bool {
        self.sources
            .iter()
            .filter(|s| s.vector == v && s.assigned.is_none())
            .any(|s| readable(&s.fd))
    }

    /// Makes KVM's routes and irqfds match `msix` and the sources' vectors. Failures are
    /// logged: an undeliverable vector only costs the guest its interrupts.
    pub fn sync(&mut self, msix: &Msix) {
        let gsi = |v: u16| self.gsi_base + u32::from(v);
        let wanted: Vec<Option<MsiMessage>> = (0..self.routes.len())
            .map(|v| msix.active_message(v as u16))
            .collect();
        let target = |s: &Source| {
            wanted
                .get(usize::from(s.vector))
                .copied()
                .flatten()
                .map(|_| gsi(s.vector))
        };
        for s in &mut self.sources {
            if let Some(g) = s.assigned.filter(|&g| Some(g) != target(s)) {
                if let Err(e) = self.host.irqfd(&s.fd, g, false) {
                    warn_limited!("{}: deassigning the irqfd on GSI {g}: {e}", self.name);
                }
                s.assigned = None;
            }
        }
        let changes: Vec<(u32, Option<MsiMessage>)> = wanted
            .iter()
            .zip(&self.routes)
            .enumerate()
            .filter(|(_, (w, r))| w != r)
            .map(|(v, (w, _))| (gsi(v as u16), *w))
            .collect();
        if !changes.is_empty() {
            match self.host.set_msi_routes(&changes) {
                Ok(()) => self.routes.clone_from(&wanted),
                Err(e) => warn_limited!("{}: setting MSI routes: {e}", self.name),
            }
        }
        for s in &mut self.sources {
            let Some(g) = target(s) else { continue };
            // Only on a route KVM really has.
            let routed = self
                .routes
                .get(usize::from(s.vector))
                .copied()
                .flatten()
                .is_some();
            if s.assigned.is_none() && routed {
                match self.host.irqfd(&s.fd, g, true) {
                    Ok(()) => s.assigned = Some(g),
                    Err(e) => warn_limited!("{}: assigning an irqfd on GSI {g}: {e}", self.name),
                }
            }
        }
    }
}

fn readable(fd: &EventFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut p = [PollFd::new(crate::sys::event_fd(fd), PollFlags::POLLIN)];
    let n = poll(&mut p, PollTimeout::ZERO).unwrap_or(0);
    n == 1
        && p[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::fake_kvm::FakeHost;

    fn setup() -> (Arc<FakeHost>, MsixIrqfds, Msix) {
        let host = Arc::new(FakeHost::default());
        let fds = (0..3)
            .map(|_| Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()))
            .collect();
        let irq = MsixIrqfds::new("t", host.clone(), 30, 3, fds);
        let mut msix = Msix::new(3);
        msix.set_bus_master(true);
        (host, irq, msix)
    }

    fn program(m: &mut Msix, v: u64, masked: bool) {
        m.table_write(v * 16, &0xfee0_0000u32.to_le_bytes());
        m.table_write(v * 16 + 8, &(0x40 + v as u32).to_le_bytes());
        m.table_write(v * 16 + 12, &u32::from(masked).to_le_bytes());
    }

    #[test]
    fn masking_deassigns_and_unmasking_reassigns() {
        let (host, mut irq, mut msix) = setup();
        assert_eq!(irq.set_vector(0, 0), 0);
        assert_eq!(irq.set_vector(1, 1), 1);
        assert_eq!(irq.set_vector(2, 1), 1, "two sources may share a vector");
        assert_eq!(irq.set_vector(2, 3), NO_VECTOR, "the table has 3 vectors");
        irq.set_vector(2, 1);
        program(&mut msix, 0, false);
        program(&mut msix, 1, false);
        irq.sync(&msix);
        assert!(
            host.0.lock().unwrap().irqfds.is_empty(),
            "MSI-X not enabled"
        );
        msix.set_control(1 << 15);
        irq.sync(&msix);
        {
            let s = host.0.lock().unwrap();
            // Sorted: the set is ordered by fd number, which other tests' threads make
            // unpredictable.
            let mut gsis: Vec<_> = s.irqfds.iter().map(|k| k.1).collect();
            gsis.sort_unstable();
            assert_eq!(gsis, vec![30, 31, 31]);
            assert_eq!(s.routes.len(), 2);
        }
        // Mask vector 1: its two sources lose their irqfds, and a signal stays pending.
        program(&mut msix, 1, true);
        irq.sync(&msix);
        assert_eq!(host.0.lock().unwrap().irqfds.len(), 1);
        assert!(!irq.pending(1));
        irq.sources[2].fd.write(1).unwrap();
        assert!(irq.pending(1));
        assert!(irq.pending(1), "reading the PBA consumes nothing");
        let mut pba = [0u8; 8];
        msix.pba_read(0, &mut pba, |v| irq.pending(v));
        assert_eq!(pba[0], 0b010);
        program(&mut msix, 1, false);
        irq.sync(&msix);
        assert_eq!(host.0.lock().unwrap().irqfds.len(), 3);
        assert_eq!(
            irq.sources[2].fd.read().unwrap(),
            1,
            "still there for KVM to inject"
        );
        // Function mask, then a bad address, then a reset of the vectors.
        msix.set_control((1 << 15) | (1 << 14));
        irq.sync(&msix);
        assert!(host.0.lock().unwrap().irqfds.is_empty());
        assert!(host.0.lock().unwrap().routes.is_empty());
        msix.set_control(1 << 15);
        msix.table_write(0, &0x1000u32.to_le_bytes());
        irq.sync(&msix);
        assert_eq!(
            host.0.lock().unwrap().irqfds.len(),
            2,
            "vector 0 not to RAM"
        );
        for s in 0..3 {
            irq.set_vector(s, NO_VECTOR);
        }
        irq.sync(&msix);
        assert!(host.0.lock().unwrap().irqfds.is_empty());
    }

    #[test]
    fn nothing_changes_nothing_is_called() {
        let (host, mut irq, mut msix) = setup();
        irq.set_vector(0, 0);
        msix.set_control(1 << 15);
        program(&mut msix, 0, false);
        irq.sync(&msix);
        let calls = host.0.lock().unwrap().calls;
        irq.sync(&msix);
        assert_eq!(host.0.lock().unwrap().calls, calls);
    }
}
