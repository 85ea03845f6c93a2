//! A virtio-pci function on a bus with the host bridge, driven the way a driver does and
//! the ways a hostile guest might, against a fake KVM that checks what it is asked.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::devices::bus::BusDevice;
use crate::fuzz::fake_kvm::FakeHost;
use crate::pci::bus::PciBus;
use crate::pci::config_ports::ConfigPorts;
use crate::pci::ecam::Ecam;
use crate::pci::host_bridge::HostBridge;
use crate::virtio::backend::{ActivateError, QueueConfig};

#[derive(Default)]
struct Log {
    activated: Vec<(u64, Vec<Option<QueueConfig>>)>,
    resets: usize,
    notified: Vec<u32>,
}

struct Fake {
    log: Arc<Mutex<Log>>,
    sizes: Vec<u16>,
    config: [u8; 8],
}

impl VirtioBackend for Fake {
    fn name(&self) -> &str {
        "fake"
    }
    fn device_type(&self) -> u32 {
        2
    }
    fn features(&self) -> u64 {
        (1 << 32) | 0x42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn config_size(&self) -> usize {
        self.config.len()
    }
    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, f: u64, q: &[Option<QueueConfig>]) -> Result<(), ActivateError> {
        self.log.lock().unwrap().activated.push((f, q.to_vec()));
        Ok(())
    }
    fn reset(&mut self) {
        self.log.lock().unwrap().resets += 1;
    }
    fn notify(&mut self, queue: u32) {
        self.log.lock().unwrap().notified.push(queue);
    }
    fn interrupt(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const BAR_A: u64 = 0xc000_0000;
const BAR_B: u64 = 0xc000_8000;

struct Rig {
    bus: Arc<PciBus>,
    ecam: Ecam,
    host: Arc<FakeHost>,
    logs: Vec<Arc<Mutex<Log>>>,
    /// Clones of each function's kick eventfds.
    kicks: Vec<Vec<EventFd>>,
    functions: Vec<Arc<Mutex<VirtioPciFunction>>>,
}

/// Two virtio functions (00:01.0 with two backend queues, 00:02.0 with one backend queue
/// and one the vmm serves) behind the host bridge.
fn rig() -> Rig {
    let host = Arc::new(FakeHost::default());
    let mut bus = PciBus::default();
    assert!(bus.insert(0, Arc::new(Mutex::new(HostBridge::default()))));
    let mut r = Rig {
        bus: Arc::new(PciBus::default()),
        ecam: Ecam::new(Arc::new(PciBus::default())),
        host: host.clone(),
        logs: vec![],
        kicks: vec![],
        functions: vec![],
    };
    let mut gsi = 24;
    for (i, bar) in [BAR_A, BAR_B].into_iter().enumerate() {
        let log = Arc::new(Mutex::new(Log::default()));
        let fake = Fake {
            log: log.clone(),
            sizes: vec![256, 128],
            config: [1, 2, 3, 4, 5, 6, 7, 8],
        };
        let backend_queues = 2 - i;
        let kicks: Vec<EventFd> = (0..backend_queues)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        r.kicks
            .push(kicks.iter().map(|k| k.try_clone().unwrap()).collect());
        let f = VirtioPciFunction::new(
            Box::new(fake),
            kicks,
            Interrupts::per_queue(2).unwrap(),
            host.clone(),
            gsi,
            bar,
        )
        .unwrap();
        gsi += f.vectors() as u32;
        let f = Arc::new(Mutex::new(f));
        assert!(bus.insert(i as u8 + 1, f.clone()));
        r.functions.push(f);
        r.logs.push(log);
    }
    r.bus = Arc::new(bus);
    r.ecam = Ecam::new(r.bus.clone());
    r
}

impl Rig {
    fn cfg_read(&mut self, dev: u8, off: usize, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.ecam
            .read((u64::from(dev) << 15) | off as u64, &mut b[..len]);
        u64::from_le_bytes(b)
    }
    fn cfg_write(&mut self, dev: u8, off: usize, v: u64, len: usize) {
        self.ecam
            .write((u64::from(dev) << 15) | off as u64, &v.to_le_bytes()[..len]);
    }
    fn mem_read(&self, addr: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        assert!(
            self.bus.bar_read(addr, &mut b[..len]),
            "nothing at {addr:#x}"
        );
        u64::from_le_bytes(b)
    }
    fn mem_write(&self, addr: u64, v: u64, len: usize) {
        assert!(
            self.bus.bar_write(addr, &v.to_le_bytes()[..len]),
            "nothing at {addr:#x}"
        );
    }

    /// Walks the capability list: virtio structures by cfg_type (BAR offset, length,
    /// capability offset), and the MSI-X capability's offset.
    fn caps(&mut self, dev: u8) -> (BTreeMap<u8, (u64, u64, usize)>, usize) {
        assert_ne!(self.cfg_read(dev, 6, 2) & (1 << 4), 0, "capability list");
        let mut at = self.cfg_read(dev, 0x34, 1) as usize;
        let (mut virtio, mut msix) = (BTreeMap::new(), 0);
        for _ in 0..48 {
            if at == 0 {
                break;
            }
            match self.cfg_read(dev, at, 1) {
                0x09 => {
                    let ty = self.cfg_read(dev, at + 3, 1) as u8;
                    if ty != 5 {
                        // (The window's BAR field is the driver's to write.)
                        assert_eq!(self.cfg_read(dev, at + 4, 1), 0, "BAR0");
                    }
                    let off = self.cfg_read(dev, at + 8, 4);
                    let len = self.cfg_read(dev, at + 12, 4);
                    virtio.insert(ty, (off, len, at));
                }
                0x11 => msix = at,
                id => panic!("capability {id:#x}"),
            }
            at = self.cfg_read(dev, at + 1, 1) as usize;
        }
        (virtio, msix)
    }

    /// A driver's bring-up of function `dev` with BAR0 placed at `bar`: what Linux's
    /// virtio_pci_modern does, found through the capabilities. Returns the queues'
    /// notify addresses.
    fn bring_up(&mut self, dev: u8, bar: u64) -> Vec<u64> {
        assert_eq!(self.cfg_read(dev, 0, 4), 0x1042_1af4, "virtio-blk");
        assert_eq!(self.cfg_read(dev, 8, 4) >> 8, 0x01_8000, "class");
        self.cfg_write(dev, 4, 0, 2);
        self.cfg_write(dev, 0x10, 0xffff_ffff, 4);
        self.cfg_write(dev, 0x14, 0xffff_ffff, 4);
        let size = !(self.cfg_read(dev, 0x10, 4) & !0xf) as u32 as u64 + 1;
        assert_eq!(size, BAR_SIZE);
        self.cfg_write(dev, 0x10, bar, 4);
        self.cfg_write(dev, 0x14, bar >> 32, 4);
        self.cfg_write(dev, 4, 0x6, 2);
        let (virtio, msix) = self.caps(dev);
        let common = bar + virtio[&1].0;
        let (notify_off, _, notify_cap) = virtio[&2];
        let multiplier = self.cfg_read(dev, notify_cap + 16, 4);
        let control = self.cfg_read(dev, msix + 2, 2);
        let vectors = (control & 0x7ff) + 1;
        let table = self.cfg_read(dev, msix + 4, 4);
        assert_eq!(table & 7, 0, "table in BAR0");
        let table = bar + (table & !7);
        // Enable, function mask off (a hostile guest may have left it set).
        self.cfg_write(dev, msix + 2, (control & !0x4000) | 0x8000, 2);
        for v in 0..vectors {
            self.mem_write(table + v * 16, 0xfee0_0000, 4);
            self.mem_write(table + v * 16 + 4, 0, 4);
            self.mem_write(table + v * 16 + 8, 0x30 + v, 4);
            self.mem_write(table + v * 16 + 12, 0, 4);
        }
        // Reset, handshake, features.
        self.mem_write(common + 0x14, 0, 1);
        assert_eq!(self.mem_read(common + 0x14, 1), 0);
        self.mem_write(common + 0x14, 1, 1);
        self.mem_write(common + 0x14, 3, 1);
        self.mem_write(common, 1, 4);
        assert_eq!(self.mem_read(common + 4, 4), 1, "VERSION_1");
        self.mem_write(common + 8, 0, 4);
        self.mem_write(common + 0xc, 0x2, 4);
        self.mem_write(common + 8, 1, 4);
        self.mem_write(common + 0xc, 1, 4);
        self.mem_write(common + 0x14, 0xb, 1);
        assert_eq!(self.mem_read(common + 0x14, 1), 0xb, "FEATURES_OK kept");
        self.mem_write(common + 0x10, 0, 2);
        assert_eq!(self.mem_read(common + 0x10, 2), 0, "config vector");
        let queues = self.mem_read(common + 0x12, 2);
        assert_eq!(vectors, queues + 1);
        let mut notify = Vec::new();
        for q in 0..queues {
            self.mem_write(common + 0x16, q, 2);
            assert!(self.mem_read(common + 0x18, 2) > 0);
            self.mem_write(common + 0x18, 64, 2);
            self.mem_write(common + 0x1a, q + 1, 2);
            assert_eq!(self.mem_read(common + 0x1a, 2), q + 1);
            self.mem_write(common + 0x20, 0x10_0000 * (q + 1), 4);
            self.mem_write(common + 0x24, 0, 4);
            self.mem_write(common + 0x28, 0x10_1000 * (q + 1), 8);
            self.mem_write(common + 0x30, 0x10_2000 * (q + 1), 8);
            self.mem_write(common + 0x1c, 1, 2);
            let off = self.mem_read(common + 0x1e, 2);
            notify.push(bar + notify_off + off * multiplier);
        }
        self.mem_write(common + 0x14, 0xf, 1);
        assert_eq!(self.mem_read(common + 0x14, 1), 0xf);
        notify
    }

    fn activated(&self, dev: u8) -> Option<(u64, Vec<Option<QueueConfig>>)> {
        self.logs[usize::from(dev) - 1]
            .lock()
            .unwrap()
            .activated
            .last()
            .cloned()
    }

    /// After a bring-up of both functions at BAR_A and BAR_B: everything KVM must have.
    fn check_running(&mut self) {
        for dev in [1u8, 2] {
            let (features, queues) = self.activated(dev).expect("activated");
            assert_eq!(features, (1 << 32) | 2);
            assert_eq!(
                queues[1],
                Some(QueueConfig {
                    size: 64,
                    desc: 0x20_0000,
                    avail: 0x20_2000,
                    used: 0x20_4000
                })
            );
        }
        let s = self.host.0.lock().unwrap();
        // 2 + 2 queue call fds and 2 config fds, each on its own vector's GSI.
        let gsis: Vec<u32> = s.irqfds.iter().map(|k| k.1).collect::<Vec<_>>();
        let mut sorted = gsis.clone();
        sorted.sort();
        assert_eq!(sorted, vec![24, 25, 26, 27, 28, 29]);
        assert_eq!(s.routes.len(), 6);
        assert_eq!(s.routes[&26].data, 0x32);
        // The three backend queues' notify addresses; function 2's vmm-served queue none.
        let addrs: Vec<u64> = s.ioeventfds.iter().map(|k| k.1).collect();
        let mut addrs = addrs;
        addrs.sort();
        assert_eq!(addrs, vec![BAR_A + 0x3000, BAR_A + 0x3004, BAR_B + 0x3000]);
    }
}

#[test]
fn a_driver_brings_both_functions_up() {
    let mut r = rig();
    assert_eq!(r.cfg_read(0, 0, 4), 0x0008_1b36, "host bridge");
    assert_eq!(r.cfg_read(0, 8, 4) >> 8, 0x06_0000);
    assert_eq!(r.cfg_read(3, 0, 4), 0xffff_ffff, "no device 3");
    assert_eq!(
        r.cfg_read(1, 0x1000 - 2, 4),
        0xffff_0000,
        "clipped at 4 KiB"
    );
    let n1 = r.bring_up(1, BAR_A);
    let n2 = r.bring_up(2, BAR_B);
    r.check_running();
    // Notifications that reach the vmm: a backend queue gets its kick written, the queue
    // the vmm serves goes to the device.
    r.mem_write(n1[1], 1, 2);
    assert_eq!(r.kicks[0][1].read().unwrap(), 1);
    r.mem_write(n2[1], 1, 4);
    assert_eq!(r.logs[1].lock().unwrap().notified, vec![1]);
    // Device config, ISR.
    let (virtio, _) = r.caps(1);
    assert_eq!(virtio[&4].1, 8);
    assert_eq!(r.mem_read(BAR_A + virtio[&4].0 + 2, 4), 0x0605_0403);
    r.functions[0].lock().unwrap().config_changed().unwrap();
    assert_eq!(r.mem_read(BAR_A + virtio[&3].0, 1), 3, "config change");
    assert_eq!(r.mem_read(BAR_A + virtio[&3].0, 1), 1, "read clears it");
}

#[test]
fn the_pci_cfg_window_reaches_bar0() {
    let mut r = rig();
    r.bring_up(1, BAR_A);
    let (virtio, _) = r.caps(1);
    let w = virtio[&5].2;
    // Read num_queues (common cfg + 0x12, 2 bytes) through the window.
    r.cfg_write(1, w + 4, 0, 1);
    r.cfg_write(1, w + 8, 0x12, 4);
    r.cfg_write(1, w + 12, 2, 4);
    assert_eq!(r.cfg_read(1, w + 16, 2), 2);
    // Notify queue 0 through it: the kick fd is written by the vmm.
    r.cfg_write(1, w + 8, 0x3000, 4);
    r.cfg_write(1, w + 16, 0, 2);
    assert_eq!(r.kicks[0][0].read().unwrap(), 1);
    // A bad window (length 3, past the BAR, BAR 5) does nothing.
    for (bar, off, len) in [(0, 0, 3), (0, 0x7ffe, 4), (5, 0, 4), (0, 0xffff_ffff, 4)] {
        r.cfg_write(1, w + 4, bar, 1);
        r.cfg_write(1, w + 8, off, 4);
        r.cfg_write(1, w + 12, len, 4);
        r.cfg_write(1, w + 16, 0xffff_ffff, 4);
        assert_eq!(r.cfg_read(1, w + 16, 4), 0);
    }
}

#[test]
fn notify_ioeventfds_and_decode_follow_bar0() {
    let mut r = rig();
    r.bring_up(1, BAR_A);
    let moved = 0xc100_0000;
    r.cfg_write(1, 0x10, moved, 4);
    {
        let s = r.host.0.lock().unwrap();
        let addrs: Vec<u64> = s.ioeventfds.iter().map(|k| k.1).collect();
        assert!(addrs.contains(&(moved + 0x3000)) && addrs.contains(&(moved + 0x3004)));
        assert!(
            !addrs.contains(&(BAR_A + 0x3000)),
            "the old address is gone"
        );
    }
    assert_eq!(r.mem_read(moved + 0x12, 2), 2, "decoded at the new address");
    assert!(
        !r.bus.bar_read(BAR_A + 0x12, &mut [0; 2]),
        "not at the old one"
    );
    // Memory decoding off: nothing decodes, no ioeventfd stays.
    r.cfg_write(1, 4, 0, 2);
    assert!(!r.bus.bar_read(moved + 0x12, &mut [0; 2]));
    assert!(
        r.host.0.lock().unwrap().ioeventfds.len() <= 1,
        "only function 2's"
    );
    r.cfg_write(1, 4, 2, 2);
    assert_eq!(r.mem_read(moved + 0x12, 2), 2);
}

#[test]
fn bars_over_each_other_and_over_ram_only_affect_the_guest() {
    let mut r = rig();
    r.bring_up(1, BAR_A);
    r.bring_up(2, BAR_B);
    // Function 2 over function 1: KVM refuses the duplicate ioeventfd, the lower device
    // number decodes, nothing panics.
    r.cfg_write(2, 0x10, BAR_A, 4);
    assert_eq!(r.mem_read(BAR_A + 0x12, 2), 2);
    r.mem_write(BAR_A + 0x3000, 0, 2);
    // Over RAM, and at the top of the address space (the BAR's end wraps).
    for (lo, hi) in [(0x10_0000u64, 0u64), (0xffff_8000, 0xffff_ffff), (0, 0)] {
        r.cfg_write(1, 0x10, lo, 4);
        r.cfg_write(1, 0x14, hi, 4);
        r.cfg_write(2, 0x10, lo, 4);
        r.cfg_write(2, 0x14, hi, 4);
        let base = (hi << 32) | lo;
        assert_eq!(r.mem_read(base + 0x12, 2), 2);
        let _ = r.bus.bar_read(u64::MAX, &mut [0; 8]);
    }
    // Back where they belong: both work as before, every registration is there.
    r.bring_up(1, BAR_A);
    r.bring_up(2, BAR_B);
    r.check_running();
}

#[test]
fn msix_entries_with_bad_addresses_get_no_route() {
    let mut r = rig();
    r.bring_up(1, BAR_A);
    let table = BAR_A + MSIX_TABLE;
    for (lo, hi) in [
        (0x1000u64, 0u64),
        (0xfef0_0000, 0),
        (0xfee0_0000, 1),
        (0xffff_ffff, 0xffff_ffff),
    ] {
        r.mem_write(table + 16, lo, 4);
        r.mem_write(table + 20, hi, 4);
        let s = r.host.0.lock().unwrap();
        assert!(!s.routes.contains_key(&25), "{lo:#x}:{hi:#x}");
        assert!(!s.irqfds.iter().any(|k| k.1 == 25));
    }
    // The interrupt is pending in the PBA, and delivered once the address is good.
    let fd = r.functions[0].lock().unwrap().irqfds_source_for_test(1);
    fd.write(1).unwrap();
    assert_eq!(r.mem_read(BAR_A + MSIX_PBA, 8), 0b10);
    r.mem_write(table + 16, 0xfee0_0000, 4);
    r.mem_write(table + 20, 0, 4);
    assert_eq!(r.mem_read(BAR_A + MSIX_PBA, 8), 0);
    assert!(r.host.0.lock().unwrap().irqfds.iter().any(|k| k.1 == 25));
    // Bus mastering off: no MSI may be sent, every irqfd goes; on again, they return.
    r.cfg_write(1, 4, 0x2, 2);
    assert!(
        r.host.0.lock().unwrap().irqfds.iter().all(|k| k.1 >= 27),
        "function 2's only"
    );
    r.cfg_write(1, 4, 0x6, 2);
    assert_eq!(
        r.host
            .0
            .lock()
            .unwrap()
            .irqfds
            .iter()
            .filter(|k| k.1 < 27)
            .count(),
        3
    );
    // Vectors the table does not have read back NO_VECTOR.
    r.mem_write(BAR_A + 0x10, 3, 2);
    assert_eq!(r.mem_read(BAR_A + 0x10, 2), 0xffff);
    r.mem_write(BAR_A + 0x10, 0x7fff, 2);
    assert_eq!(r.mem_read(BAR_A + 0x10, 2), 0xffff);
}

#[test]
fn the_msix_table_location_is_read_only() {
    let mut r = rig();
    let (_, msix) = r.caps(1);
    let before: Vec<u64> = (0..12).map(|i| r.cfg_read(1, msix + i, 1)).collect();
    for len in [1, 2, 3, 4, 8] {
        for at in msix..msix + 12 {
            r.cfg_write(1, at, 0xffff_ffff_ffff_ffff, len);
            r.cfg_write(1, at, 0x7000_0007, len);
        }
    }
    let after: Vec<u64> = (0..12).map(|i| r.cfg_read(1, msix + i, 1)).collect();
    // Only the enable and function-mask bits changed.
    assert_eq!(after[3] & 0x3f, before[3] & 0x3f);
    assert_eq!(
        &after[4..],
        &before[4..],
        "table and PBA offset/BIR unchanged"
    );
    assert_eq!(r.cfg_read(1, msix + 4, 4), MSIX_TABLE);
    r.bring_up(1, BAR_A);
    r.bring_up(2, BAR_B);
    r.check_running();
}

/// Writes of every size (1, 2, 4, and 3, 5, 8 that no CPU instruction makes through
/// ECAM but a bus may pass on) at every offset of every function's 4 KiB, with values
/// that set and clear every writable bit, through ECAM and the 0xCF8/0xCFC ports; then
/// the driver's bring-up still works and the identity is intact.
#[test]
fn config_writes_of_every_size_at_every_offset() {
    let mut r = rig();
    r.bring_up(1, BAR_A);
    let mut ports = ConfigPorts::new(r.bus.clone());
    for dev in 0u8..4 {
        for value in [u64::MAX, 0, 0x5a5a_a5a5_0f0f_f0f0] {
            for len in [1usize, 2, 3, 4, 5, 8] {
                for off in 0..4096 {
                    r.cfg_write(dev, off, value, len);
                    r.cfg_write(dev, off, value, 0);
                    r.cfg_read(dev, off, 0);
                    r.cfg_read(dev, off, len);
                    if off < 256 {
                        let addr = 0x8000_0000u32 | (u32::from(dev) << 11) | (off as u32 & 0xfc);
                        ports.write(0, &addr.to_le_bytes());
                        let port = 4 + (off as u64 & 3);
                        ports.write(port, &value.to_le_bytes()[..len.min(4)]);
                        ports.read(port, &mut [0u8; 4][..len.min(4)]);
                    }
                }
            }
        }
        // Stray port accesses: a byte at 0xCF9 (a chipset reset register elsewhere), a
        // disabled address, another bus.
        ports.write(1, &[6]);
        ports.write(0, &0x0001_0000u32.to_le_bytes());
        ports.write(4, &[1, 2, 3, 4]);
        ports.write(0, &0x8001_0000u32.to_le_bytes());
        let mut d = [0u8; 4];
        ports.read(4, &mut d);
        assert_eq!(d, [0xff; 4], "bus 1 is empty");
    }
    assert_eq!(r.cfg_read(0, 0, 4), 0x0008_1b36);
    assert_eq!(r.cfg_read(1, 0, 4), 0x1042_1af4);
    assert_eq!(r.cfg_read(2, 0x2c, 4), 0x1042_1af4, "subsystem");
    // The same through the ports.
    ports.write(0, &0x8000_0800u32.to_le_bytes());
    let mut d = [0u8; 4];
    ports.read(4, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x1042_1af4);
    r.bring_up(1, BAR_A);
    r.bring_up(2, BAR_B);
    r.check_running();
}

/// BAR0 accesses of every size at every offset, with set and cleared bits: the device
/// may be left in any state the guest can reach, and a reset and bring-up recover it.
#[test]
fn bar_accesses_of_every_size_at_every_offset() {
    let mut r = rig();
    r.bring_up(1, BAR_A);
    r.bring_up(2, BAR_B);
    for value in [u64::MAX, 0, 0x0123_4567_89ab_cdef] {
        for len in [0usize, 1, 2, 3, 4, 8] {
            for off in 0..BAR_SIZE {
                r.mem_write(BAR_A + off, value, len);
                r.mem_read(BAR_A + off, len);
            }
        }
    }
    r.bring_up(1, BAR_A);
    r.check_running();
}

#[test]
fn a_device_that_cannot_be_restored_needs_a_reset_and_the_driver_is_told() {
    use crate::virtio::{ConfigChange, ReconnectError};
    let mut r = rig();
    r.bring_up(1, BAR_A);
    r.bring_up(2, BAR_B);
    let (virtio, _) = r.caps(1);
    let status = |r: &Rig, bar: u64| r.mem_read(bar + virtio[&1].0 + 0x14, 1);
    assert_eq!(status(&r, BAR_A), 0xf);
    // The fake is no vhost-user device: a new backend for it is refused.
    let (socket, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let result = r.functions[0].lock().unwrap().reconnect(socket);
    assert!(
        matches!(result, Err(ReconnectError::Refused(_))),
        "{result:?}"
    );
    assert_eq!(status(&r, BAR_A), 0xf | 0x40, "DEVICE_NEEDS_RESET");
    assert_eq!(
        r.mem_read(BAR_A + virtio[&3].0, 1),
        3,
        "config change in the ISR"
    );
    // Given up: the same.
    r.functions[1].lock().unwrap().give_up("no new backend");
    assert_eq!(status(&r, BAR_B), 0xf | 0x40);
    assert_eq!(r.mem_read(BAR_B + virtio[&3].0, 1), 3);
    // The driver's reset clears it.
    r.mem_write(BAR_A + virtio[&1].0 + 0x14, 0, 1);
    assert_eq!(status(&r, BAR_A), 0);
}
