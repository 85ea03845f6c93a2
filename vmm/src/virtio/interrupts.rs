//! The eventfds a virtio device signals: one call fd per queue (handed to the backend,
//! registered as irqfds by the transport) and one for configuration changes (written by
//! the vmm). On virtio-mmio they are all the same eventfd (one IOAPIC pin per device); on
//! virtio-pci each is its own, so that each can follow its own MSI-X vector. They are
//! shared by reference counting, not by duplicating descriptors: a device's eventfds cost
//! the vmm one descriptor each whoever holds them.

use std::io;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// A device's interrupt eventfds.
pub struct Interrupts {
    /// Queue `i`'s call fd.
    pub queues: Vec<Arc<EventFd>>,
    /// The configuration-change interrupt.
    pub config: Arc<EventFd>,
}

impl Interrupts {
    /// `queues` call fds and the config one, all the same eventfd `fd` (virtio-mmio).
    pub fn shared(fd: EventFd, queues: usize) -> io::Result<Interrupts> {
        let fd = Arc::new(fd);
        Ok(Interrupts {
            queues: vec![fd.clone(); queues],
            config: fd,
        })
    }

    /// A fresh eventfd for each of `queues` queues and for the config (virtio-pci).
    pub fn per_queue(queues: usize) -> io::Result<Interrupts> {
        let new = || EventFd::new(libc::EFD_NONBLOCK).map(Arc::new);
        Ok(Interrupts {
            queues: (0..queues).map(|_| new()).collect::<io::Result<_>>()?,
            config: new()?,
        })
    }
}

impl Clone for Interrupts {
    /// Another handle on the same eventfds (no new descriptor).
    fn clone(&self) -> Interrupts {
        Interrupts {
            queues: self.queues.clone(),
            config: self.config.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_is_one_eventfd_per_queue_is_many() {
        let s = Interrupts::shared(EventFd::new(libc::EFD_NONBLOCK).unwrap(), 3).unwrap();
        s.queues[2].write(1).unwrap();
        assert_eq!(s.config.read().unwrap(), 1, "the same counter");
        let p = Interrupts::per_queue(2).unwrap();
        p.queues[1].write(1).unwrap();
        assert!(p.queues[0].read().is_err(), "queue 0 has its own, empty");
        assert!(p.config.read().is_err());
        assert_eq!(p.clone().queues[1].read().unwrap(), 1);
        assert!(
            Arc::ptr_eq(&s.queues[0], &s.config),
            "no descriptor duplicated"
        );
    }
}
