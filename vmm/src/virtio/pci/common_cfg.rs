//! The common configuration structure (virtio 1.2 4.1.4.3) on the shared device state.
//!
//! Accesses of any width at any offset work the same way: a read copies bytes out of an
//! image of the structure; a write merges its bytes into each field it touches and sets
//! that field. So a driver writing a 64-bit address as two dwords, or a hostile one
//! writing three bytes across two fields, gets what a field-by-field device would do.

use crate::pci::msix_irqfds::{MsixIrqfds, NO_VECTOR};
use crate::virtio::state::DeviceState;

/// Fields: offset and width.
const DEVICE_FEATURE_SELECT: (usize, usize) = (0x00, 4);
const DEVICE_FEATURE: (usize, usize) = (0x04, 4);
const DRIVER_FEATURE_SELECT: (usize, usize) = (0x08, 4);
const DRIVER_FEATURE: (usize, usize) = (0x0c, 4);
const CONFIG_MSIX_VECTOR: (usize, usize) = (0x10, 2);
const NUM_QUEUES: (usize, usize) = (0x12, 2);
const DEVICE_STATUS: (usize, usize) = (0x14, 1);
const CONFIG_GENERATION: (usize, usize) = (0x15, 1);
const QUEUE_SELECT: (usize, usize) = (0x16, 2);
const QUEUE_SIZE: (usize, usize) = (0x18, 2);
const QUEUE_MSIX_VECTOR: (usize, usize) = (0x1a, 2);
const QUEUE_ENABLE: (usize, usize) = (0x1c, 2);
const QUEUE_NOTIFY_OFF: (usize, usize) = (0x1e, 2);
const QUEUE_DESC: (usize, usize) = (0x20, 8);
const QUEUE_DRIVER: (usize, usize) = (0x28, 8);
const QUEUE_DEVICE: (usize, usize) = (0x30, 8);
/// Size of the structure.
pub const LEN: usize = 0x38;

/// The fields a driver writes, in offset order.
const WRITABLE: [(usize, usize); 12] = [
    DEVICE_FEATURE_SELECT,
    DRIVER_FEATURE_SELECT,
    DRIVER_FEATURE,
    CONFIG_MSIX_VECTOR,
    DEVICE_STATUS,
    QUEUE_SELECT,
    QUEUE_SIZE,
    QUEUE_MSIX_VECTOR,
    QUEUE_ENABLE,
    QUEUE_DESC,
    QUEUE_DRIVER,
    QUEUE_DEVICE,
];

/// Interrupt source of the config change; queue `q` is source `q + 1`.
pub const CONFIG_SOURCE: usize = 0;

/// The structure as it reads now.
pub fn image(state: &DeviceState, irqfds: &MsixIrqfds) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    let mut put = |(at, width): (usize, usize), v: u64| {
        b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
    };
    put(DEVICE_FEATURE_SELECT, state.device_features_sel.into());
    put(DEVICE_FEATURE, state.device_features_word().into());
    put(DRIVER_FEATURE_SELECT, state.driver_features_sel.into());
    put(DRIVER_FEATURE, state.driver_features_word().into());
    put(CONFIG_MSIX_VECTOR, irqfds.vector(CONFIG_SOURCE).into());
    put(NUM_QUEUES, state.queues().len() as u64);
    put(DEVICE_STATUS, state.status().into());
    put(CONFIG_GENERATION, state.config_generation().into());
    put(QUEUE_SELECT, state.queue_sel.into());
    let q = state.queue_sel as usize;
    match state.selected_queue() {
        Some(queue) => {
            put(QUEUE_SIZE, queue.size.into());
            put(QUEUE_MSIX_VECTOR, irqfds.vector(q + 1).into());
            put(QUEUE_ENABLE, queue.ready.into());
            put(QUEUE_NOTIFY_OFF, q as u64);
            put(QUEUE_DESC, queue.desc);
            put(QUEUE_DRIVER, queue.avail);
            put(QUEUE_DEVICE, queue.used);
        }
        // No such queue: size 0 tells the driver so.
        None => put(QUEUE_MSIX_VECTOR, NO_VECTOR.into()),
    }
    b
}

/// What a write changed that the function must act on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// A vector assignment changed: the irqfds must follow.
    pub vectors: bool,
    /// The driver reset the device.
    pub reset: bool,
}

/// The driver writes `data` at `offset` of the structure.
pub fn write(
    state: &mut DeviceState,
    irqfds: &mut MsixIrqfds,
    offset: usize,
    data: &[u8],
) -> Effects {
    let mut fx = Effects::default();
    let Some(end) = offset.checked_add(data.len()) else {
        return fx;
    };
    for field @ (at, width) in WRITABLE {
        if end <= at || at + width <= offset {
            continue;
        }
        // The field's current bytes, with the written ones over them.
        let mut bytes = [0u8; 8];
        bytes[..width].copy_from_slice(&image(state, irqfds)[at..at + width]);
        for (i, b) in bytes.iter_mut().enumerate().take(width) {
            if let Some(&w) = (at + i).checked_sub(offset).and_then(|j| data.get(j)) {
                *b = w;
            }
        }
        let v = u64::from_le_bytes(bytes);
        set(state, irqfds, field, v, &mut fx);
    }
    fx
}

fn set(
    state: &mut DeviceState,
    irqfds: &mut MsixIrqfds,
    field: (usize, usize),
    v: u64,
    fx: &mut Effects,
) {
    let q = state.queue_sel as usize;
    match field {
        DEVICE_FEATURE_SELECT => state.device_features_sel = v as u32,
        DRIVER_FEATURE_SELECT => state.driver_features_sel = v as u32,
        DRIVER_FEATURE => state.write_driver_features_word(v as u32),
        CONFIG_MSIX_VECTOR => {
            irqfds.set_vector(CONFIG_SOURCE, v as u16);
            fx.vectors = true;
        }
        DEVICE_STATUS => {
            state.set_status(v as u32);
            if v == 0 {
                for source in 0..=state.queues().len() {
                    irqfds.set_vector(source, NO_VECTOR);
                }
                fx.vectors = true;
                fx.reset = true;
            }
        }
        QUEUE_SELECT => state.queue_sel = v as u32,
        QUEUE_SIZE => state.configure_queue(|queue| queue.size = v as u16),
        QUEUE_MSIX_VECTOR if state.selected_queue().is_some() => {
            irqfds.set_vector(q + 1, v as u16);
            fx.vectors = true;
        }
        // The driver enables a queue with 1; disabling needs queue_reset, not offered.
        QUEUE_ENABLE if v == 1 => state.configure_queue(|queue| queue.ready = true),
        QUEUE_DESC => state.configure_queue(|queue| queue.desc = v),
        QUEUE_DRIVER => state.configure_queue(|queue| queue.avail = v),
        QUEUE_DEVICE => state.configure_queue(|queue| queue.used = v),
        _ => {}
    }
}
