//! A fake of the KVM calls PCI devices make ([`InterruptHost`]) that checks, on every call,
//! what KVM would refuse or what would be a bug: an irqfd assigned on a GSI without a
//! route or twice, a route removed under an irqfd, a route to an irqchip GSI or to an
//! address that is not a local APIC's, removing what is not registered. A second
//! ioeventfd at an address answers EEXIST as KVM does.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

use crate::kvm::irq_routing::{InterruptHost, MsiMessage};

/// What KVM would hold, checked on every call: an irqfd is only assigned on a GSI
/// with a route, never twice; a route is never removed under an irqfd.
/// What the fake KVM holds.
#[derive(Default)]
pub struct FakeState {
    /// MSI routes by GSI.
    pub routes: BTreeMap<u32, MsiMessage>,
    /// Assigned irqfds (fd, GSI).
    pub irqfds: BTreeSet<(i32, u32)>,
    /// Registered ioeventfds (fd, address).
    pub ioeventfds: BTreeSet<(i32, u64)>,
    /// Calls made.
    pub calls: usize,
}

/// The fake.
#[derive(Default)]
pub struct FakeHost(pub Mutex<FakeState>);

impl InterruptHost for FakeHost {
    fn set_msi_routes(&self, changes: &[(u32, Option<MsiMessage>)]) -> io::Result<()> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.calls += 1;
        for (gsi, m) in changes {
            assert!(*gsi >= 24, "an irqchip GSI {gsi}");
            match m {
                Some(m) => {
                    assert!(m.targets_lapic(), "route to {m:?}");
                    s.routes.insert(*gsi, *m);
                }
                None => {
                    assert!(
                        !s.irqfds.iter().any(|(_, g)| g == gsi),
                        "route of GSI {gsi} removed under an irqfd"
                    );
                    s.routes.remove(gsi);
                }
            }
        }
        Ok(())
    }
    fn irqfd(&self, fd: &EventFd, gsi: u32, assign: bool) -> io::Result<()> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.calls += 1;
        let key = (fd.as_raw_fd(), gsi);
        if assign {
            assert!(s.routes.contains_key(&gsi), "irqfd on unrouted GSI {gsi}");
            assert!(s.irqfds.insert(key), "irqfd assigned twice");
        } else {
            assert!(s.irqfds.remove(&key), "deassigning what is not there");
        }
        Ok(())
    }
    fn ioeventfd(&self, fd: &EventFd, addr: u64, assign: bool) -> io::Result<()> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.calls += 1;
        if assign {
            // KVM refuses a second ioeventfd at the same address (EEXIST).
            if s.ioeventfds.iter().any(|(_, a)| *a == addr) {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            s.ioeventfds.insert((fd.as_raw_fd(), addr));
        } else {
            assert!(
                s.ioeventfds.remove(&(fd.as_raw_fd(), addr)),
                "not registered"
            );
        }
        Ok(())
    }
}
