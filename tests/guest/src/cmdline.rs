//! The kernel command line: copied out of guest memory, then parsed.
//!
//! Tokens are separated by spaces; the guest reads `bulkhead.test=<name>[,<name>...]`
//! (repeatable; the scenarios run in the order given), `bulkhead.cpus=<n>`, the
//! `bulkhead.blk.*` options of the block scenarios ([`BlkOptions`]) and the
//! `virtio_mmio.device=<size>@<base>:<irq>` devices, and ignores every other token
//! (`console=ttyS0`, ...). Numbers are decimal, or hexadecimal with `0x`.

use crate::escape::Escaped;
use crate::net::{parse_cidr, parse_ip, parse_mac, Ip, Mac, MAX_UDP_PAYLOAD};
use crate::scenario::{Scenario, ScenarioList};
use crate::virtio::blk::ID_BYTES;
use crate::virtio::mmio::{parse_device, DeviceSpec};
use core::fmt;

/// Longest command line, NUL included (x86 `COMMAND_LINE_SIZE`).
pub const MAX_LEN: usize = 2048;

/// Most virtio-mmio devices the guest keeps track of.
pub const MAX_DEVICES: usize = 16;

/// What the command line asks of the guest.
pub struct Config {
    /// `bulkhead.test=`: the scenarios to run; `None` = the default self-test.
    pub scenarios: Option<ScenarioList>,
    /// `bulkhead.cpus=`: how many CPUs must come up.
    pub cpus: Option<u32>,
    /// `virtio_mmio.device=`: the virtio-mmio devices, in command-line order.
    pub devices: DeviceList,
    /// `bulkhead.blk.*`.
    pub blk: BlkOptions,
    /// `bulkhead.net.*`.
    pub net: NetOptions,
    /// `bulkhead.console.*`.
    pub console: ConsoleOptions,
    /// `bulkhead.serial.bytes=N`: bytes `serial-flood` prints (default 1 MiB, at most
    /// 1 GiB).
    pub serial_bytes: u64,
    /// `bulkhead.vsock-*`.
    pub vsock: VsockOptions,
    /// `bulkhead.idle-ms=N`: how long `idle` waits for Ctrl+Alt+Del (default 0: forever).
    pub idle_ms: u64,
    /// `bulkhead.soak-*`.
    pub soak: SoakOptions,
}

/// Options of the soak scenarios (`blk-soak`, `net-soak`, `console-soak`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoakOptions {
    /// `bulkhead.soak-ms=N`: how long each soak runs (default 5000).
    pub ms: u64,
    /// `bulkhead.soak-stall-ms=N`: a gap of at least this many ms between two completed
    /// operations is reported as a stall line (default 20).
    pub stall_ms: u64,
}

impl Default for SoakOptions {
    fn default() -> Self {
        Self {
            ms: 5000,
            stall_ms: 20,
        }
    }
}

/// Options of the vsock scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VsockOptions {
    /// `bulkhead.vsock-bytes=N`: bytes `vsock-connect` sends and reads back (default 1 MiB,
    /// at most 4 GiB - 1).
    pub bytes: u64,
    /// `bulkhead.vsock-streams=N`: streams `vsock-echo` serves to their end before it
    /// passes (default 1).
    pub streams: u32,
    /// `bulkhead.vsock-ms=N`: how long a vsock scenario may take (default 60000).
    pub ms: u64,
    /// `bulkhead.vsock-rounds=N`: ping-pongs of `vsock-latency` (default 1000).
    pub rounds: u32,
}

impl Default for VsockOptions {
    fn default() -> Self {
        Self {
            bytes: 1 << 20,
            streams: 1,
            ms: 60_000,
            rounds: 1000,
        }
    }
}

/// Most sizes in `bulkhead.net.sizes`.
pub const MAX_SIZES: usize = 8;

/// Options of the network scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetOptions {
    /// `bulkhead.net.nic=N`: which virtio-net device (0 = the first) the scenarios use.
    pub nic: usize,
    /// `bulkhead.net.ip=A.B.C.D/NN`: our address (default 10.0.2.2/24).
    pub ip: Ip,
    /// Its prefix length.
    pub prefix: u8,
    /// `bulkhead.net.peer=A.B.C.D`: the host's address (default 10.0.2.1).
    pub peer: Ip,
    /// `bulkhead.net.mac=xx:..`: the MAC the device must report (`net-identify`), and ours
    /// when the device offers none.
    pub mac: Option<Mac>,
    /// `bulkhead.net.serve-ms=N`: how long `net-serve` serves (default 10000).
    pub serve_ms: u64,
    /// `bulkhead.net.echo-port=N`: the UDP port `net-serve` echoes (default 7).
    pub echo_port: u16,
    /// `bulkhead.net.port=N`: the peer's UDP port for `net-send` / `net-bench`, and ours
    /// (default 5555).
    pub port: u16,
    /// `bulkhead.net.sizes=a,b,..`: payload sizes `net-send` sends (default 64,512,1472).
    pub sizes: [u16; MAX_SIZES],
    /// How many of `sizes` are used.
    pub num_sizes: usize,
    /// `bulkhead.net.bench-ms=N`: each `net-bench` run (default 1000).
    pub bench_ms: u64,
    /// `bulkhead.net.soak-port=N`: the host's UDP port `net-soak` sends to (default 7000).
    pub soak_port: u16,
}

impl NetOptions {
    /// The payload sizes of `net-send`.
    pub fn sizes(&self) -> &[u16] {
        &self.sizes[..self.num_sizes]
    }
}

impl Default for NetOptions {
    fn default() -> Self {
        let mut sizes = [0; MAX_SIZES];
        sizes[..3].copy_from_slice(&[64, 512, 1472]);
        Self {
            nic: 0,
            ip: [10, 0, 2, 2],
            prefix: 24,
            peer: [10, 0, 2, 1],
            mac: None,
            serve_ms: 10_000,
            echo_port: 7,
            port: 5555,
            sizes,
            num_sizes: 3,
            bench_ms: 1000,
            soak_port: 7000,
        }
    }
}

/// Options of the console scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleOptions {
    /// `bulkhead.console.lines=N`: lines `console-write` writes (default 3).
    pub lines: u32,
    /// `bulkhead.console.echo-ms=N`: how long `console-echo` echoes (default 5000).
    pub echo_ms: u64,
    /// `bulkhead.console.resize-ms=N`: how long `console-resize` watches for size changes
    /// (default 5000).
    pub resize_ms: u64,
    /// `bulkhead.console.resizes=N`: size changes `console-resize` waits for (default 1).
    pub resizes: u32,
}

impl Default for ConsoleOptions {
    fn default() -> Self {
        Self {
            lines: 3,
            echo_ms: 5000,
            resize_ms: 5000,
            resizes: 1,
        }
    }
}

/// `a,b,c`: 1 to [`MAX_SIZES`] UDP payload sizes, each at most 1472.
fn parse_sizes(s: &[u8]) -> Option<([u16; MAX_SIZES], usize)> {
    let mut sizes = [0u16; MAX_SIZES];
    let mut n = 0;
    for part in s.split(|&c| c == b',') {
        let size = parse_number(part).filter(|&v| v <= MAX_UDP_PAYLOAD as u64)?;
        *sizes.get_mut(n)? = size as u16;
        n += 1;
    }
    Some((sizes, n))
}

/// A duration in ms, 1..=3600000.
fn parse_ms(s: &[u8]) -> Option<u64> {
    parse_number(s).filter(|&ms| ms > 0 && ms <= 3_600_000)
}

/// A UDP port, 1..=65535.
fn parse_port(s: &[u8]) -> Option<u16> {
    parse_number(s)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&p| p != 0)
}

/// Sectors `first..first + count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectorRange {
    /// First sector.
    pub first: u64,
    /// Number of sectors (at least 1).
    pub count: u64,
}

impl SectorRange {
    /// One past the last sector (`None` on overflow).
    pub fn end(&self) -> Option<u64> {
        self.first.checked_add(self.count)
    }
}

/// A serial number as GET_ID returns it: at most 20 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Serial {
    bytes: [u8; ID_BYTES as usize],
    len: usize,
}

impl Serial {
    /// `s`, if it fits.
    pub fn new(s: &[u8]) -> Option<Self> {
        let mut bytes = [0; ID_BYTES as usize];
        bytes.get_mut(..s.len())?.copy_from_slice(s);
        Some(Self {
            bytes,
            len: s.len(),
        })
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Options of the block scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkOptions {
    /// `bulkhead.blk.disk=N`: which virtio-blk device (0 = the first) the scenarios use.
    pub disk: usize,
    /// `bulkhead.blk.capacity=N`: the capacity, in sectors, `blk-identify` must see.
    pub capacity: Option<u64>,
    /// `bulkhead.blk.serial=S`: the serial `blk-identify` must see.
    pub serial: Option<Serial>,
    /// `bulkhead.blk.ro=0|1`: whether `blk-identify` must see a read-only disk.
    pub ro: Option<bool>,
    /// `bulkhead.blk.rw=<first>:<count>`: where `blk-rw` writes (default 2048:64).
    pub rw: SectorRange,
    /// `bulkhead.blk.discard=<first>:<count>`: where `blk-discard` works (default 4096:16).
    pub discard: SectorRange,
    /// `bulkhead.blk.bench=<first>:<count>`: where `blk-bench` works (default: whole disk).
    pub bench: Option<SectorRange>,
    /// `bulkhead.blk.bench-ms=<ms>`: how long each `blk-bench` run lasts (default 1000).
    pub bench_ms: u64,
}

impl Default for BlkOptions {
    fn default() -> Self {
        Self {
            disk: 0,
            capacity: None,
            serial: None,
            ro: None,
            rw: SectorRange {
                first: 2048,
                count: 64,
            },
            discard: SectorRange {
                first: 4096,
                count: 16,
            },
            bench: None,
            bench_ms: 1000,
        }
    }
}

/// The virtio-mmio devices of the command line.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceList {
    items: [Option<DeviceSpec>; MAX_DEVICES],
    len: usize,
}

impl DeviceList {
    /// The devices, in command-line order.
    pub fn iter(&self) -> impl Iterator<Item = DeviceSpec> + '_ {
        self.items[..self.len].iter().flatten().copied()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.len
    }

    /// None at all?
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, d: DeviceSpec) -> Result<(), ()> {
        *self.items.get_mut(self.len).ok_or(())? = Some(d);
        self.len += 1;
        Ok(())
    }
}

/// A command line the guest cannot act on (exit status 2).
#[derive(Debug, PartialEq, Eq)]
pub enum CmdlineError<'a> {
    /// A `bulkhead.test` name that is not a scenario.
    UnknownScenario(&'a [u8]),
    /// A value the key does not take.
    BadValue {
        /// The key, without `=`.
        key: &'static str,
        /// The value.
        value: &'a [u8],
    },
    /// More scenario names than [`ScenarioList`] holds.
    TooManyScenarios,
    /// More `virtio_mmio.device` tokens than [`MAX_DEVICES`].
    TooManyDevices,
}

impl fmt::Display for CmdlineError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownScenario(name) => write!(f, "unknown scenario \"{}\"", Escaped(name)),
            Self::BadValue { key, value } => {
                write!(f, "bad {key} value \"{}\"", Escaped(value))
            }
            Self::TooManyScenarios => write!(
                f,
                "more than {} scenarios in bulkhead.test",
                ScenarioList::CAPACITY
            ),
            Self::TooManyDevices => {
                write!(f, "more than {MAX_DEVICES} virtio_mmio.device tokens")
            }
        }
    }
}

/// A number: decimal, or hexadecimal after `0x`.
fn parse_number(s: &[u8]) -> Option<u64> {
    let (radix, digits) = match s.strip_prefix(b"0x") {
        Some(hex) => (16, hex),
        None => (10, s),
    };
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &c| {
        let digit = char::from(c).to_digit(radix)?;
        n.checked_mul(u64::from(radix))?
            .checked_add(u64::from(digit))
    })
}

/// `<first>:<count>`, count at least 1, end not overflowing.
fn parse_range(s: &[u8]) -> Option<SectorRange> {
    let colon = s.iter().position(|&c| c == b':')?;
    let range = SectorRange {
        first: parse_number(&s[..colon])?,
        count: parse_number(&s[colon + 1..])?,
    };
    (range.count > 0 && range.end().is_some()).then_some(range)
}

/// Parse the command line.
pub fn parse(line: &[u8]) -> Result<Config, CmdlineError<'_>> {
    let mut config = Config {
        scenarios: None,
        cpus: None,
        devices: DeviceList::default(),
        blk: BlkOptions::default(),
        net: NetOptions::default(),
        console: ConsoleOptions::default(),
        serial_bytes: 1 << 20,
        vsock: VsockOptions::default(),
        idle_ms: 0,
        soak: SoakOptions::default(),
    };
    for token in line
        .split(|c| c.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
    {
        let Some(eq) = token.iter().position(|&c| c == b'=') else {
            continue;
        };
        let (key, value) = (&token[..eq], &token[eq + 1..]);
        let blk = &mut config.blk;
        let net = &mut config.net;
        macro_rules! value {
            ($key:literal, $parse:expr) => {
                $parse(value).ok_or(CmdlineError::BadValue { key: $key, value })?
            };
        }
        match key {
            b"bulkhead.test" => {
                let list = config.scenarios.get_or_insert_with(ScenarioList::new);
                for name in value.split(|&c| c == b',') {
                    let scenario =
                        Scenario::from_name(name).ok_or(CmdlineError::UnknownScenario(name))?;
                    list.push(scenario)
                        .map_err(|_| CmdlineError::TooManyScenarios)?;
                }
            }
            b"bulkhead.cpus" => {
                let cpus = value!("bulkhead.cpus", |v| parse_number(v)
                    .and_then(|n| u32::try_from(n).ok()));
                config.cpus = Some(cpus);
            }
            b"virtio_mmio.device" => {
                let device = value!("virtio_mmio.device", parse_device);
                config
                    .devices
                    .push(device)
                    .map_err(|()| CmdlineError::TooManyDevices)?;
            }
            b"bulkhead.blk.disk" => {
                blk.disk = value!("bulkhead.blk.disk", |v| parse_number(v)
                    .and_then(|n| usize::try_from(n).ok()));
            }
            b"bulkhead.blk.capacity" => {
                blk.capacity = Some(value!("bulkhead.blk.capacity", parse_number));
            }
            b"bulkhead.blk.serial" => {
                blk.serial = Some(value!("bulkhead.blk.serial", Serial::new));
            }
            b"bulkhead.blk.ro" => {
                blk.ro = Some(value!("bulkhead.blk.ro", |v: &[u8]| match v {
                    b"0" => Some(false),
                    b"1" => Some(true),
                    _ => None,
                }));
            }
            b"bulkhead.blk.rw" => blk.rw = value!("bulkhead.blk.rw", parse_range),
            b"bulkhead.blk.discard" => {
                blk.discard = value!("bulkhead.blk.discard", parse_range);
            }
            b"bulkhead.blk.bench" => blk.bench = Some(value!("bulkhead.blk.bench", parse_range)),
            b"bulkhead.blk.bench-ms" => {
                blk.bench_ms = value!("bulkhead.blk.bench-ms", |v| parse_number(v)
                    .filter(|&ms| ms > 0 && ms <= 3_600_000));
            }
            b"bulkhead.net.nic" => {
                net.nic = value!("bulkhead.net.nic", |v| parse_number(v)
                    .and_then(|n| usize::try_from(n).ok()));
            }
            b"bulkhead.net.ip" => {
                (net.ip, net.prefix) = value!("bulkhead.net.ip", parse_cidr);
            }
            b"bulkhead.net.peer" => net.peer = value!("bulkhead.net.peer", parse_ip),
            b"bulkhead.net.mac" => net.mac = Some(value!("bulkhead.net.mac", parse_mac)),
            b"bulkhead.net.serve-ms" => net.serve_ms = value!("bulkhead.net.serve-ms", parse_ms),
            b"bulkhead.net.echo-port" => {
                net.echo_port = value!("bulkhead.net.echo-port", parse_port);
            }
            b"bulkhead.net.port" => net.port = value!("bulkhead.net.port", parse_port),
            b"bulkhead.net.sizes" => {
                (net.sizes, net.num_sizes) = value!("bulkhead.net.sizes", parse_sizes);
            }
            b"bulkhead.net.bench-ms" => net.bench_ms = value!("bulkhead.net.bench-ms", parse_ms),
            b"bulkhead.console.lines" => {
                config.console.lines = value!("bulkhead.console.lines", |v| parse_number(v)
                    .filter(|&n| n <= 100_000)
                    .map(|n| n as u32));
            }
            b"bulkhead.console.echo-ms" => {
                config.console.echo_ms = value!("bulkhead.console.echo-ms", parse_ms);
            }
            b"bulkhead.console.resize-ms" => {
                config.console.resize_ms = value!("bulkhead.console.resize-ms", parse_ms);
            }
            b"bulkhead.console.resizes" => {
                config.console.resizes = value!("bulkhead.console.resizes", |v| parse_number(v)
                    .filter(|&n| n <= 100_000)
                    .map(|n| n as u32));
            }
            b"bulkhead.serial.bytes" => {
                config.serial_bytes = value!("bulkhead.serial.bytes", |v| parse_number(v)
                    .filter(|&n| n <= 1 << 30));
            }
            b"bulkhead.vsock-bytes" => {
                config.vsock.bytes = value!("bulkhead.vsock-bytes", |v| parse_number(v)
                    .filter(|&n| n <= u64::from(u32::MAX)));
            }
            b"bulkhead.vsock-streams" => {
                config.vsock.streams = value!("bulkhead.vsock-streams", |v| parse_number(v)
                    .filter(|&n| n <= 1_000_000)
                    .map(|n| n as u32));
            }
            b"bulkhead.vsock-ms" => config.vsock.ms = value!("bulkhead.vsock-ms", parse_ms),
            b"bulkhead.vsock-rounds" => {
                config.vsock.rounds = value!("bulkhead.vsock-rounds", |v| parse_number(v)
                    .filter(|&n| n > 0 && n <= 10_000_000)
                    .map(|n| n as u32));
            }
            b"bulkhead.idle-ms" => config.idle_ms = value!("bulkhead.idle-ms", parse_ms),
            b"bulkhead.soak-ms" => config.soak.ms = value!("bulkhead.soak-ms", parse_ms),
            b"bulkhead.soak-stall-ms" => {
                config.soak.stall_ms = value!("bulkhead.soak-stall-ms", parse_ms);
            }
            b"bulkhead.net.soak-port" => {
                net.soak_port = value!("bulkhead.net.soak-port", parse_port);
            }
            _ => {}
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenarios(line: &str) -> Option<Vec<Scenario>> {
        let config = parse(line.as_bytes()).expect("valid command line");
        config.scenarios.map(|l| l.as_slice().to_vec())
    }

    #[test]
    fn no_bulkhead_test_means_the_default() {
        assert_eq!(scenarios(""), None);
        assert_eq!(scenarios("console=ttyS0 reboot=k panic=1 pci=off"), None);
        assert_eq!(parse(b"console=ttyS0").unwrap().cpus, None);
    }

    #[test]
    fn scenarios_in_order_across_tokens() {
        assert_eq!(
            scenarios("a=b bulkhead.test=memory,fail\tbulkhead.test=cpus x"),
            Some(vec![Scenario::Memory, Scenario::Fail, Scenario::Cpus])
        );
        assert_eq!(
            scenarios("bulkhead.test=cpus,cpus"),
            Some(vec![Scenario::Cpus, Scenario::Cpus])
        );
    }

    #[test]
    fn cpus_is_decimal() {
        assert_eq!(parse(b"bulkhead.cpus=4").unwrap().cpus, Some(4));
        assert_eq!(
            parse(b"bulkhead.cpus=254 bulkhead.cpus=2").unwrap().cpus,
            Some(2)
        );
        for bad in [
            "bulkhead.cpus=",
            "bulkhead.cpus=x2",
            "bulkhead.cpus=-1",
            "bulkhead.cpus=99999999999",
        ] {
            let value = &bad.as_bytes()["bulkhead.cpus=".len()..];
            let e = parse(bad.as_bytes()).err().unwrap();
            assert_eq!(
                e,
                CmdlineError::BadValue {
                    key: "bulkhead.cpus",
                    value
                },
                "{bad}"
            );
            assert!(e.to_string().starts_with("bad bulkhead.cpus value \""));
        }
    }

    #[test]
    fn virtio_devices_in_order() {
        let c = parse(
            b"console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=0x1000@0xd0001000:6",
        )
        .unwrap();
        let devices: Vec<_> = c.devices.iter().collect();
        assert_eq!(
            devices,
            vec![
                DeviceSpec {
                    base: 0xd000_0000,
                    size: 4096,
                    irq: 5
                },
                DeviceSpec {
                    base: 0xd000_1000,
                    size: 4096,
                    irq: 6
                }
            ]
        );
        assert!(parse(b"").unwrap().devices.is_empty());
        let e = parse(b"virtio_mmio.device=4K@0xd0000000").err().unwrap();
        assert_eq!(
            e.to_string(),
            r#"bad virtio_mmio.device value "4K@0xd0000000""#
        );
        let mut line = String::new();
        for i in 0..MAX_DEVICES {
            line.push_str(&format!(
                "virtio_mmio.device=4K@{:#x}:{} ",
                0xd000_0000 + i * 4096,
                5 + i
            ));
        }
        assert_eq!(parse(line.as_bytes()).unwrap().devices.len(), MAX_DEVICES);
        line.push_str("virtio_mmio.device=4K@0xd0100000:5");
        assert_eq!(
            parse(line.as_bytes()).err(),
            Some(CmdlineError::TooManyDevices)
        );
    }

    #[test]
    fn blk_options_and_defaults() {
        let d = parse(b"").unwrap().blk;
        assert_eq!(d, BlkOptions::default());
        assert_eq!((d.rw.first, d.rw.count), (2048, 64));
        assert_eq!((d.discard.first, d.discard.count), (4096, 16));
        assert_eq!((d.bench, d.bench_ms, d.disk), (None, 1000, 0));
        let c = parse(
            b"bulkhead.blk.disk=1 bulkhead.blk.capacity=0x20000 bulkhead.blk.serial=abc-1 \
              bulkhead.blk.ro=1 bulkhead.blk.rw=100:8 bulkhead.blk.discard=0x10:4 \
              bulkhead.blk.bench=0:1000 bulkhead.blk.bench-ms=250",
        )
        .unwrap()
        .blk;
        assert_eq!(c.disk, 1);
        assert_eq!(c.capacity, Some(0x20000));
        assert_eq!(c.serial.unwrap().as_bytes(), b"abc-1");
        assert_eq!(c.ro, Some(true));
        assert_eq!(
            c.rw,
            SectorRange {
                first: 100,
                count: 8
            }
        );
        assert_eq!(
            c.discard,
            SectorRange {
                first: 16,
                count: 4
            }
        );
        assert_eq!(
            c.bench,
            Some(SectorRange {
                first: 0,
                count: 1000
            })
        );
        assert_eq!(c.bench_ms, 250);
        assert_eq!(parse(b"bulkhead.blk.ro=0").unwrap().blk.ro, Some(false));
        let twenty = "bulkhead.blk.serial=01234567890123456789";
        assert_eq!(
            parse(twenty.as_bytes())
                .unwrap()
                .blk
                .serial
                .unwrap()
                .as_bytes()
                .len(),
            20
        );
    }

    #[test]
    fn bad_blk_options() {
        for (bad, key) in [
            ("bulkhead.blk.disk=x", "bulkhead.blk.disk"),
            ("bulkhead.blk.capacity=", "bulkhead.blk.capacity"),
            (
                "bulkhead.blk.serial=012345678901234567890",
                "bulkhead.blk.serial",
            ),
            ("bulkhead.blk.ro=yes", "bulkhead.blk.ro"),
            ("bulkhead.blk.rw=100", "bulkhead.blk.rw"),
            ("bulkhead.blk.rw=100:0", "bulkhead.blk.rw"),
            ("bulkhead.blk.rw=:4", "bulkhead.blk.rw"),
            ("bulkhead.blk.rw=18446744073709551615:2", "bulkhead.blk.rw"),
            ("bulkhead.blk.discard=1:2:3", "bulkhead.blk.discard"),
            ("bulkhead.blk.bench=0x:1", "bulkhead.blk.bench"),
            ("bulkhead.blk.bench-ms=0", "bulkhead.blk.bench-ms"),
            ("bulkhead.blk.bench-ms=1s", "bulkhead.blk.bench-ms"),
        ] {
            let value = &bad.as_bytes()[key.len() + 1..];
            assert_eq!(
                parse(bad.as_bytes()).err(),
                Some(CmdlineError::BadValue { key, value }),
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_and_empty_names_are_errors() {
        let e = parse(b"console=ttyS0 bulkhead.test=cpus,bogus")
            .err()
            .unwrap();
        assert_eq!(e, CmdlineError::UnknownScenario(b"bogus"));
        assert_eq!(e.to_string(), r#"unknown scenario "bogus""#);
        let e = parse(b"bulkhead.test=").err().unwrap();
        assert_eq!(e.to_string(), r#"unknown scenario """#);
        let e = parse(b"bulkhead.test=a\"b").err().unwrap();
        assert_eq!(e.to_string(), r#"unknown scenario "a\x22b""#);
    }

    #[test]
    fn the_list_has_a_limit() {
        let mut line = String::from("bulkhead.test=fail");
        for _ in 1..ScenarioList::CAPACITY {
            line.push_str(",fail");
        }
        assert!(parse(line.as_bytes()).is_ok());
        line.push_str(",fail");
        assert_eq!(
            parse(line.as_bytes()).err(),
            Some(CmdlineError::TooManyScenarios)
        );
    }

    #[test]
    fn vsock_and_idle_options() {
        let c = parse(b"console=ttyS0").unwrap();
        assert_eq!(c.vsock, VsockOptions::default());
        assert_eq!((c.vsock.bytes, c.vsock.streams, c.idle_ms), (1 << 20, 1, 0));
        let c = parse(
            b"bulkhead.vsock-bytes=0xa00000 bulkhead.vsock-streams=64 bulkhead.vsock-ms=500 \
              bulkhead.vsock-rounds=10 bulkhead.idle-ms=2000",
        )
        .unwrap();
        assert_eq!(
            c.vsock,
            VsockOptions {
                bytes: 10 << 20,
                streams: 64,
                ms: 500,
                rounds: 10
            }
        );
        assert_eq!(c.idle_ms, 2000);
        for bad in [
            "bulkhead.vsock-bytes=0x100000000",
            "bulkhead.vsock-ms=0",
            "bulkhead.vsock-rounds=0",
            "bulkhead.idle-ms=x",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn net_and_console_options_and_defaults() {
        let c = parse(b"").unwrap();
        assert_eq!(c.net, NetOptions::default());
        assert_eq!(c.net.sizes(), &[64, 512, 1472]);
        assert_eq!(
            (c.net.ip, c.net.prefix, c.net.peer),
            ([10, 0, 2, 2], 24, [10, 0, 2, 1])
        );
        assert_eq!(
            (c.net.serve_ms, c.net.echo_port, c.net.port),
            (10_000, 7, 5555)
        );
        assert_eq!((c.console.lines, c.console.echo_ms), (3, 5000));
        assert_eq!((c.console.resize_ms, c.console.resizes), (5000, 1));
        assert_eq!(c.serial_bytes, 1 << 20);
        let c = parse(b"bulkhead.serial.bytes=4096").unwrap();
        assert_eq!(c.serial_bytes, 4096);
        assert!(parse(b"bulkhead.serial.bytes=0x40000001").is_err());
        let c = parse(
            b"bulkhead.net.ip=192.168.5.9/28 bulkhead.net.peer=192.168.5.1 \
              bulkhead.net.mac=52:54:00:ab:cd:ef bulkhead.net.serve-ms=250 \
              bulkhead.net.echo-port=7007 bulkhead.net.port=9000 bulkhead.net.sizes=0,1472 \
              bulkhead.net.bench-ms=100 bulkhead.net.nic=1 bulkhead.console.lines=0 \
              bulkhead.console.echo-ms=20 bulkhead.console.resize-ms=300 \
              bulkhead.console.resizes=0x3",
        )
        .unwrap();
        let n = c.net;
        assert_eq!(
            (n.ip, n.prefix, n.peer),
            ([192, 168, 5, 9], 28, [192, 168, 5, 1])
        );
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef]));
        assert_eq!(
            (n.serve_ms, n.echo_port, n.port, n.bench_ms, n.nic),
            (250, 7007, 9000, 100, 1)
        );
        assert_eq!(n.sizes(), &[0, 1472]);
        assert_eq!((c.console.lines, c.console.echo_ms), (0, 20));
        assert_eq!((c.console.resize_ms, c.console.resizes), (300, 3));
        for (bad, key) in [
            ("bulkhead.net.ip=10.0.2", "bulkhead.net.ip"),
            ("bulkhead.net.ip=10.0.2.2/32", "bulkhead.net.ip"),
            ("bulkhead.net.peer=x", "bulkhead.net.peer"),
            ("bulkhead.net.mac=52:54:00:ab:cd", "bulkhead.net.mac"),
            ("bulkhead.net.serve-ms=0", "bulkhead.net.serve-ms"),
            ("bulkhead.net.echo-port=65536", "bulkhead.net.echo-port"),
            ("bulkhead.net.port=0", "bulkhead.net.port"),
            ("bulkhead.net.sizes=64,1473", "bulkhead.net.sizes"),
            ("bulkhead.net.sizes=1,2,3,4,5,6,7,8,9", "bulkhead.net.sizes"),
            ("bulkhead.net.sizes=", "bulkhead.net.sizes"),
            ("bulkhead.console.echo-ms=x", "bulkhead.console.echo-ms"),
            ("bulkhead.console.resize-ms=0", "bulkhead.console.resize-ms"),
            (
                "bulkhead.console.resize-ms=3600001",
                "bulkhead.console.resize-ms",
            ),
            ("bulkhead.console.resizes=-1", "bulkhead.console.resizes"),
            (
                "bulkhead.console.resizes=100001",
                "bulkhead.console.resizes",
            ),
        ] {
            let value = &bad.as_bytes()[key.len() + 1..];
            assert_eq!(
                parse(bad.as_bytes()).err(),
                Some(CmdlineError::BadValue { key, value }),
                "{bad}"
            );
        }
    }

    #[test]
    fn soak_options_and_defaults() {
        let c = parse(b"").unwrap();
        assert_eq!((c.soak.ms, c.soak.stall_ms), (5000, 20));
        assert_eq!(c.net.soak_port, 7000);
        let c =
            parse(b"bulkhead.soak-ms=2000 bulkhead.soak-stall-ms=0x10 bulkhead.net.soak-port=7100")
                .unwrap();
        assert_eq!(
            c.soak,
            SoakOptions {
                ms: 2000,
                stall_ms: 16
            }
        );
        assert_eq!(c.net.soak_port, 7100);
        for (bad, key) in [
            ("bulkhead.soak-ms=0", "bulkhead.soak-ms"),
            ("bulkhead.soak-ms=3600001", "bulkhead.soak-ms"),
            ("bulkhead.soak-stall-ms=x", "bulkhead.soak-stall-ms"),
            ("bulkhead.net.soak-port=0", "bulkhead.net.soak-port"),
            ("bulkhead.net.soak-port=65536", "bulkhead.net.soak-port"),
        ] {
            let value = &bad.as_bytes()[key.len() + 1..];
            assert_eq!(
                parse(bad.as_bytes()).err(),
                Some(CmdlineError::BadValue { key, value }),
                "{bad}"
            );
        }
    }

    #[test]
    fn similar_prefixes_are_not_ours() {
        assert_eq!(scenarios("xbulkhead.test=bogus bulkhead.tests=bogus"), None);
    }
}
