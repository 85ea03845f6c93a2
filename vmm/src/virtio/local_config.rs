//! Device adjustments for vhost-user backends bulkhead did not write (`vhost-user=PATH`):
//!
//! - **Net config owned by the frontend.** As in QEMU's vhost-user-net, the vmm serves a
//!   virtio-net device's config space itself when it is told the MAC (`--device ...,mac=`,
//!   which the launcher passes for an external net backend): `mac`, `status` = LINK_UP and
//!   `max_virtqueue_pairs`. Such backends (DPDK's vhost library, Open vSwitch) often do not
//!   serve the CONFIG protocol feature at all. The vmm offers F_MAC and F_STATUS itself and
//!   passes on only the backend's feature bits it can honour (data-path bits, and MQ with
//!   the control queue the vmm serves); config writes are ignored.
//! - **Console without MULTIPORT.** Our console has two queues (port 0); a backend
//!   offering F_MULTIPORT (vhost-device-console does) would have the driver look for the
//!   control queues, so the bit is masked.

/// virtio-net feature bits.
const NET_F_CSUM: u32 = 0;
const NET_F_GUEST_CSUM: u32 = 1;
const NET_F_MAC: u32 = 5;
const NET_F_GUEST_TSO4: u32 = 7;
const NET_F_HOST_UFO: u32 = 14;
const NET_F_MRG_RXBUF: u32 = 15;
const NET_F_STATUS: u32 = 16;
const NET_F_CTRL_VQ: u32 = 17;
const NET_F_MQ: u32 = 22;
/// Transport-level feature bits (virtio 1.x) a backend may offer and the vmm honours.
const F_RING_INDIRECT_DESC: u32 = 28;
const F_RING_EVENT_IDX: u32 = 29;
const F_VERSION_1: u32 = 32;
/// virtio-console's F_MULTIPORT.
const CONSOLE_F_MULTIPORT: u32 = 1;
/// virtio-net's status bit: the link is up.
const NET_S_LINK_UP: u16 = 1;
/// Bytes of the config the vmm serves: mac (6), status (2), max_virtqueue_pairs (2).
pub const NET_CONFIG_SIZE: usize = 10;

/// A MAC address.
pub type Mac = [u8; 6];

/// The backend bits a frontend-owned net device passes on: the offloads and ring
/// features, which concern only the data path between the driver and the backend, and
/// MQ (kept only with the control queue the vmm serves, decided by the caller). Bits whose
/// meaning lives in config fields the vmm does not serve (MTU, SPEED_DUPLEX, RSS, ...) or
/// in a control queue the backend would serve (CTRL_RX, GUEST_ANNOUNCE, ...) are dropped.
fn passed_on() -> u64 {
    let mut bits = 0u64;
    for bit in [NET_F_CSUM, NET_F_GUEST_CSUM]
        .into_iter()
        .chain(NET_F_GUEST_TSO4..=NET_F_HOST_UFO)
        .chain([
            NET_F_MRG_RXBUF,
            NET_F_MQ,
            F_RING_INDIRECT_DESC,
            F_RING_EVENT_IDX,
            F_VERSION_1,
        ])
    {
        bits |= 1 << bit;
    }
    bits
}

/// The config space of a net device the vmm serves itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalNetConfig {
    /// The device's MAC.
    pub mac: Mac,
    /// Queue pairs (`max_virtqueue_pairs`).
    pub pairs: u16,
}

impl LocalNetConfig {
    /// The bits F_MAC and F_STATUS the vmm adds.
    pub const OWN: u64 = (1 << NET_F_MAC) | (1 << NET_F_STATUS);

    /// The features offered to the driver, from the backend's; MQ only with the control
    /// queue the vmm serves (`ctrl`), which it also adds (MQ needs CTRL_VQ, and the
    /// backend's own control queue, if it offers one, is not used).
    pub fn features(&self, backend: u64, ctrl: bool) -> u64 {
        let features = (backend & passed_on()) | Self::OWN;
        if ctrl {
            features | (1 << NET_F_CTRL_VQ)
        } else {
            features & !(1 << NET_F_MQ)
        }
    }

    /// The features the driver accepted, as the backend may see them: only those it
    /// offered (F_MAC, F_STATUS and CTRL_VQ may be the vmm's; a backend refuses features
    /// it never offered: DPDK does).
    pub fn to_backend(&self, accepted: u64, backend: u64) -> u64 {
        accepted & backend
    }

    /// The config bytes at `offset` (zeros past the end).
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let mut space = [0u8; NET_CONFIG_SIZE];
        space[..6].copy_from_slice(&self.mac);
        space[6..8].copy_from_slice(&NET_S_LINK_UP.to_le_bytes());
        space[8..10].copy_from_slice(&self.pairs.to_le_bytes());
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        for (i, b) in data.iter_mut().enumerate() {
            match start.checked_add(i).and_then(|at| space.get(at)) {
                Some(v) => *b = *v,
                None => break,
            }
        }
    }
}

/// Features a 2-queue console offers the driver: the backend's without F_MULTIPORT.
pub fn console_features(backend: u64, queues: usize) -> u64 {
    if queues <= 2 {
        backend & !(1 << CONSOLE_F_MULTIPORT)
    } else {
        backend
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<Mac, String> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let part = parts.next().filter(|p| p.len() == 2);
        *b = part
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or_else(|| format!("mac={s}: expected six hex bytes like 02:00:00:00:00:01"))?;
    }
    if parts.next().is_some() {
        return Err(format!("mac={s}: expected six hex bytes"));
    }
    Ok(mac)
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &Mac) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: LocalNetConfig = LocalNetConfig {
        mac: [2, 0, 0, 0, 0, 9],
        pairs: 1,
    };

    #[test]
    fn serves_mac_status_and_pairs() {
        let mut all = [0xffu8; 12];
        CFG.read(0, &mut all);
        assert_eq!(all, [2, 0, 0, 0, 0, 9, 1, 0, 1, 0, 0, 0]);
        let mut status = [0u8; 2];
        CFG.read(6, &mut status);
        assert_eq!(status, [1, 0]);
        let mut past = [0xffu8; 4];
        CFG.read(u64::MAX, &mut past);
        assert_eq!(past, [0; 4]);
    }

    #[test]
    fn offers_only_what_it_honours() {
        let mtu = 1 << 3;
        let ctrl_rx = 1 << 18;
        let announce = 1 << 21;
        let (ctrl_vq, mq) = (1 << 17, 1 << 22);
        let backend = (1 << 32) | (1 << 15) | mtu | ctrl_rx | announce | (1 << 30) | ctrl_vq | mq;
        let offered = CFG.features(backend, false);
        assert_eq!(offered, (1 << 32) | (1 << 15) | LocalNetConfig::OWN);
        assert_eq!(
            CFG.features(backend, true),
            offered | mq | ctrl_vq,
            "MQ with the vmm's control queue"
        );
        // F_MAC and F_STATUS go to the backend only if it offered them.
        assert_eq!(CFG.to_backend(offered, backend), (1 << 32) | (1 << 15));
        assert_eq!(
            CFG.to_backend(offered, backend | (1 << 5)),
            (1 << 32) | (1 << 15) | (1 << 5)
        );
    }

    #[test]
    fn console_loses_multiport_with_two_queues() {
        assert_eq!(console_features((1 << 32) | 0b111, 2), (1 << 32) | 0b101);
        assert_eq!(console_features(0b111, 4), 0b111);
    }

    #[test]
    fn macs_round_trip() {
        assert_eq!(parse_mac("02:ab:00:00:00:10"), Ok([2, 0xab, 0, 0, 0, 0x10]));
        assert_eq!(format_mac(&[2, 0xab, 0, 0, 0, 0x10]), "02:ab:00:00:00:10");
        for bad in [
            "",
            "02:ab",
            "02:ab:00:00:00:10:11",
            "2:ab:00:00:00:10",
            "zz:00:00:00:00:00",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }
}
