//! The test scenarios by name: what `bulkhead.test=` may list, and the default set.
//! Their implementations are in the binary (`src/scenarios/`).

/// A test scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Every CPU in the MP table (and `bulkhead.cpus`, if given) came up and runs jobs.
    Cpus,
    /// The e820 map is sane and RAM holds what is written to it.
    Memory,
    /// Always fails.
    Fail,
    /// Takes a page fault at CPL3.
    Exception,
    /// Panics.
    Panic,
    /// Identifies every virtio-blk device and reads its first sectors (non-destructive).
    BlkProbe,
    /// Capacity, serial, read-only flag, limits and features of one virtio-blk device.
    BlkIdentify,
    /// Writes a pattern over a sector range, reads it back.
    BlkRw,
    /// FLUSH.
    BlkFlush,
    /// On a read-only disk: writes fail with IOERR, reads work.
    BlkReadonly,
    /// A request completes through the interrupt path (irqfd, IOAPIC, LAPIC).
    BlkIrq,
    /// DISCARD and WRITE_ZEROES, then zeroes read back.
    BlkDiscard,
    /// Random and sequential reads and writes at queue depth 1 and 32.
    BlkBench,
    /// Malformed requests; the device keeps serving.
    BlkHostile,
    /// Requests on every queue of a multi-queue disk.
    BlkMq,
    /// The disk's image is swapped by the host; the new capacity and bytes are seen.
    BlkSwap,
    /// Identifies every virtio-net device (non-destructive).
    NetProbe,
    /// MAC, link status, MTU and features of one virtio-net device.
    NetIdentify,
    /// Answers ARP, ICMP echo and UDP echo for a while.
    NetServe,
    /// Resolves the peer by ARP and sends it UDP datagrams of several sizes.
    NetSend,
    /// UDP throughput, both ways.
    NetBench,
    /// Frames sent to a MAC-swapping backend come back intact.
    NetMacswap,
    /// Sets up the virtio console, writes one known line, sees the device take it.
    ConsoleProbe,
    /// Writes lines on the virtio console.
    ConsoleWrite,
    /// Echoes what the virtio console receives.
    ConsoleEcho,
    /// Sees the virtio console's size change (configuration-change generation).
    ConsoleResize,
    /// Floods the first device's status register with sequences the VMM warns about.
    VirtioFlood,
    /// Clears DRIVER_OK without a reset: the device must ask for one.
    VirtioStatus,
    /// Prints many bytes on the serial port (a guest flooding its console).
    SerialFlood,
    /// Lists PCI bus 0 (found through the ACPI MCFG): every function's IDs and BAR, every
    /// virtio function's capabilities.
    PciProbe,
    /// Hostile PCI configuration writes (a BAR over RAM, an MSI-X entry with a bad
    /// address, writes of every size at every offset); the VM and the disk go on.
    PciHostile,
    /// Lists the virtio-vsock device (transport, guest CID) and sets it up.
    VsockProbe,
    /// Listens on vsock port 5000 and echoes every stream until the host closes it.
    VsockEcho,
    /// Connects to the host (CID 2) port 6000, sends a pattern, reads it back.
    VsockConnect,
    /// Malformed vsock packets; a normal connection still works afterwards.
    VsockHostile,
    /// Ping-pong round trips over a vsock connection to the host port 6000.
    VsockLatency,
    /// Halts until an i8042 Ctrl+Alt+Del (or `bulkhead.idle-ms`), then resets.
    Idle,
    /// Sequenced single-sector writes, each read back, FLUSH every 16, for
    /// `bulkhead.soak-ms`; stalls reported.
    BlkSoak,
    /// Sequenced UDP datagrams echoed by the host, loss and duplicates counted, corruption
    /// refused, for `bulkhead.soak-ms`.
    NetSoak,
    /// Sequenced lines on the virtio console for `bulkhead.soak-ms`.
    ConsoleSoak,
}

/// All scenarios, with their command-line names.
const NAMES: [(Scenario, &str); 40] = [
    (Scenario::Cpus, "cpus"),
    (Scenario::Memory, "memory"),
    (Scenario::Fail, "fail"),
    (Scenario::Exception, "exception"),
    (Scenario::Panic, "panic"),
    (Scenario::BlkProbe, "blk-probe"),
    (Scenario::BlkIdentify, "blk-identify"),
    (Scenario::BlkRw, "blk-rw"),
    (Scenario::BlkFlush, "blk-flush"),
    (Scenario::BlkReadonly, "blk-readonly"),
    (Scenario::BlkIrq, "blk-irq"),
    (Scenario::BlkDiscard, "blk-discard"),
    (Scenario::BlkBench, "blk-bench"),
    (Scenario::BlkHostile, "blk-hostile"),
    (Scenario::BlkMq, "blk-mq"),
    (Scenario::BlkSwap, "blk-swap"),
    (Scenario::NetProbe, "net-probe"),
    (Scenario::NetIdentify, "net-identify"),
    (Scenario::NetServe, "net-serve"),
    (Scenario::NetSend, "net-send"),
    (Scenario::NetBench, "net-bench"),
    (Scenario::NetMacswap, "net-macswap"),
    (Scenario::ConsoleProbe, "console-probe"),
    (Scenario::ConsoleWrite, "console-write"),
    (Scenario::ConsoleEcho, "console-echo"),
    (Scenario::ConsoleResize, "console-resize"),
    (Scenario::VirtioFlood, "virtio-flood"),
    (Scenario::VirtioStatus, "virtio-status"),
    (Scenario::SerialFlood, "serial-flood"),
    (Scenario::PciProbe, "pci-probe"),
    (Scenario::PciHostile, "pci-hostile"),
    (Scenario::VsockProbe, "vsock-probe"),
    (Scenario::VsockEcho, "vsock-echo"),
    (Scenario::VsockConnect, "vsock-connect"),
    (Scenario::VsockHostile, "vsock-hostile"),
    (Scenario::VsockLatency, "vsock-latency"),
    (Scenario::Idle, "idle"),
    (Scenario::BlkSoak, "blk-soak"),
    (Scenario::NetSoak, "net-soak"),
    (Scenario::ConsoleSoak, "console-soak"),
];

/// What runs without `bulkhead.test`: every scenario that is harmless to the devices found.
pub const DEFAULT: [Scenario; 6] = [
    Scenario::Cpus,
    Scenario::Memory,
    Scenario::BlkProbe,
    Scenario::NetProbe,
    Scenario::ConsoleProbe,
    Scenario::VsockProbe,
];

impl Scenario {
    /// Name on the command line and in PASS/FAIL lines.
    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(s, _)| *s == self)
            .map_or("?", |(_, name)| name)
    }

    /// The scenario called `name`.
    pub fn from_name(name: &[u8]) -> Option<Self> {
        NAMES
            .iter()
            .find(|(_, n)| n.as_bytes() == name)
            .map(|(s, _)| *s)
    }
}

/// Scenarios to run, in command-line order.
pub struct ScenarioList {
    items: [Scenario; Self::CAPACITY],
    len: usize,
}

/// The list is full.
#[derive(Debug)]
pub struct ListFull;

impl ScenarioList {
    /// Most scenarios one command line can ask for.
    pub const CAPACITY: usize = 32;

    /// An empty list.
    pub fn new() -> Self {
        Self {
            items: [Scenario::Fail; Self::CAPACITY],
            len: 0,
        }
    }

    /// Append a scenario.
    pub fn push(&mut self, s: Scenario) -> Result<(), ListFull> {
        *self.items.get_mut(self.len).ok_or(ListFull)? = s;
        self.len += 1;
        Ok(())
    }

    /// The scenarios.
    pub fn as_slice(&self) -> &[Scenario] {
        &self.items[..self.len]
    }
}

impl Default for ScenarioList {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (scenario, name) in NAMES {
            assert_eq!(scenario.name(), name);
            assert_eq!(Scenario::from_name(name.as_bytes()), Some(scenario));
        }
        assert_eq!(Scenario::from_name(b"CPUS"), None);
        assert_eq!(Scenario::from_name(b""), None);
    }

    #[test]
    fn default_is_the_harmless_ones() {
        assert_eq!(
            DEFAULT,
            [
                Scenario::Cpus,
                Scenario::Memory,
                Scenario::BlkProbe,
                Scenario::NetProbe,
                Scenario::ConsoleProbe,
                Scenario::VsockProbe
            ]
        );
    }

    #[test]
    fn list_keeps_order_up_to_capacity() {
        let mut list = ScenarioList::new();
        list.push(Scenario::Memory).unwrap();
        list.push(Scenario::Cpus).unwrap();
        assert_eq!(list.as_slice(), &[Scenario::Memory, Scenario::Cpus]);
        for _ in 2..ScenarioList::CAPACITY {
            list.push(Scenario::Fail).unwrap();
        }
        assert!(list.push(Scenario::Fail).is_err());
        assert_eq!(list.as_slice().len(), ScenarioList::CAPACITY);
    }
}
