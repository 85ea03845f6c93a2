//! virtio-net control-queue commands: a queue built from the input (any descriptors, any
//! command bytes) served by the vmm's control queue.

use bulkhead_devices::fuzz::input::Input;
use bulkhead_devices::fuzz::ring::Ring;

use crate::virtio::net_ctrl::{CtrlQueue, CTRL_QUEUE_SIZE};
use crate::virtio::QueueConfig;

/// Serves the control queue the input describes, with 1 to 4 pairs acceptable. Panics if
/// the queue breaks a rule of [`Ring::check`] (when the queue is the size the driver
/// thinks), completes a command with more than the status byte, or applies a pair count
/// the command did not ask for. Returns the number of pair changes applied.
pub fn fuzz_net_ctrl(data: &[u8]) -> usize {
    let mut input = Input::new(data);
    let features = input.u64();
    let ring = Ring::build_from_zero(&mut input);
    let (size, desc, avail, used) = ring.layout();
    let config = QueueConfig {
        size,
        desc,
        avail,
        used,
    };
    // What virtio 1.x (2.7) requires of a split queue; anything else must be refused, not
    // served from some other address or size.
    let acceptable = size.is_power_of_two()
        && size <= CTRL_QUEUE_SIZE
        && desc % 16 == 0
        && avail % 2 == 0
        && used % 4 == 0;
    let Ok(mut ctrl) = CtrlQueue::new(&config, features) else {
        return 0;
    };
    assert!(acceptable, "the control queue accepted {config:x?}");
    let mut applied = Vec::new();
    ctrl.process(&ring.mem, |pairs| {
        applied.push(pairs);
        (1..=4).contains(&pairs)
    });
    // A size the control queue refuses leaves it at its own size: the rings the device
    // walked are not the ones the driver laid out, nothing to compare.
    if size <= CTRL_QUEUE_SIZE {
        let used = ring.check();
        assert!(
            used.iter().all(|u| u.len <= 1),
            "control commands completed with more than a status byte: {used:?}"
        );
        assert!(applied.len() <= used.len(), "{applied:?} for {used:?}");
    }
    applied.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_devices::fuzz::ring::encode;
    use bulkhead_devices::fuzz::stable::{run_bounded, Rng};

    /// VQ_PAIRS_SET commands: header, body, status in three descriptors.
    fn valid(rng: &mut Rng) -> Vec<u8> {
        let mut out = vec![0u8; 8]; // no EVENT_IDX
        encode::header(&mut out, 6, false); // queue size 64
        let n = 1 + rng.below(3);
        out.push((3 * n) as u8);
        for i in 0..n {
            let (base, next) = (0x100 * i as u64, (3 * i) as u8);
            encode::desc(&mut out, base, 2, 1, next + 1);
            encode::desc(&mut out, base + 0x10, 2, 1, next + 2);
            encode::desc(&mut out, base + 0x20, 1, 2, 0);
        }
        encode::available(&mut out, &(0..n).map(|i| (3 * i) as u8).collect::<Vec<_>>());
        for _ in 0..n {
            let mut area = [0u8; 0x100];
            area[..2].copy_from_slice(&[4, 0]);
            area[0x10] = rng.below(6) as u8;
            out.extend(area);
        }
        out
    }

    #[test]
    fn pairs_set_commands_are_applied() {
        let mut rng = Rng::new(13);
        for _ in 0..4 {
            let input = valid(&mut rng);
            assert_eq!(fuzz_net_ctrl(&input), usize::from(input[15]) / 3);
        }
    }

    /// Inputs the fuzzers found (each once a crash; see `vmm/fuzz/README.md`).
    const REGRESSIONS: &[&[u8]] = &[
        // Queue size 80 (no power of two): served as a queue of 64.
        &[0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0x50, 0, 0, 0, 0],
        // A descriptor table at 8 (not 16-aligned): served from address 0.
        &[
            0, 0, 0, 0, 0, 0, 0, 0, 6, 0xff, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    ];

    #[test]
    fn regressions() {
        for input in REGRESSIONS {
            fuzz_net_ctrl(input);
        }
    }

    #[test]
    fn bounded_fuzz_of_net_control_commands() {
        run_bounded("net-ctrl", valid, fuzz_net_ctrl);
    }
}
