//! The vhost-user handshake on a new connection (owner, features, protocol features, queue
//! count), the first time and for a backend that takes over.

use super::*;

/// A handshake error, saying so if it was cut short by its deadline.
pub(super) fn timed_out(e: VhostUserError, guard: &watchdog::Guard) -> VhostUserError {
    match e {
        VhostUserError::Protocol { name, what, source } if guard.fired() => {
            VhostUserError::Unsuitable {
                name,
                what: format!(
                    "did not answer {what} within {REPLY_TIMEOUT:?} ({source}); the connection was shut down"
                ),
            }
        }
        other => other,
    }
}

/// Does the handshake on a new connection: SET_OWNER, features, protocol features and the
/// queue count. The first time (`before` is `None`) it takes what the backend offers of
/// what the vmm uses; for a later backend, `before` is (the virtio features it must offer,
/// the protocol features acked the first time), which it must offer again and is given.
/// Returns the backend's features and the acked protocol features.
pub(super) fn handshake(
    name: &str,
    device_type: u32,
    frontend: &mut Frontend,
    before: Option<(u64, VhostUserProtocolFeatures)>,
    queues: usize,
) -> Result<(u64, VhostUserProtocolFeatures), VhostUserError> {
    let proto = |what| {
        let name = name.to_owned();
        move |source| VhostUserError::Protocol { name, what, source }
    };
    let unsuitable = |what: String| VhostUserError::Unsuitable {
        name: name.to_owned(),
        what,
    };
    frontend.set_owner().map_err(proto("SET_OWNER"))?;
    let backend_features = frontend.get_features().map_err(proto("GET_FEATURES"))?;
    if backend_features & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
        return Err(unsuitable(
            "does not offer VHOST_USER_F_PROTOCOL_FEATURES".into(),
        ));
    }
    if let Some((required, _)) = before {
        let missing = required & !backend_features;
        if missing != 0 {
            return Err(unsuitable(format!(
                "offers features {backend_features:#x}, without {missing:#x} that were negotiated"
            )));
        }
    }
    let offered = frontend
        .get_protocol_features()
        .map_err(proto("GET_PROTOCOL_FEATURES"))?;
    if before.is_none() {
        info_limited!(
            "{name}: the backend offers features {backend_features:#x}, protocol features {:#x}",
            offered.bits()
        );
    }
    let protocol_features = match before {
        None => {
            offered
                & (VhostUserProtocolFeatures::CONFIG
                    | VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::INFLIGHT_SHMFD)
        }
        Some((_, acked)) if !offered.contains(acked) => {
            return Err(unsuitable(format!(
                "offers protocol features {:#x}, without {:#x} that were negotiated",
                offered.bits(),
                (acked - offered).bits()
            )));
        }
        Some((_, acked)) => acked,
    };
    frontend
        .set_protocol_features(protocol_features)
        .map_err(proto("SET_PROTOCOL_FEATURES"))?;
    if protocol_features.contains(VhostUserProtocolFeatures::REPLY_ACK) {
        frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    }
    // A net backend may lack it: the vmm then serves the config (`with_local`).
    if !protocol_features.contains(VhostUserProtocolFeatures::CONFIG)
        && device_type != VIRTIO_ID_NET
    {
        return Err(unsuitable(
            "does not offer the CONFIG protocol feature (config space)".into(),
        ));
    }
    // Without MQ a backend serves its device type's usual queues (one for block, a pair
    // for net and console), which is what is asked for then.
    if protocol_features.contains(VhostUserProtocolFeatures::MQ) {
        let max = frontend.get_queue_num().map_err(proto("GET_QUEUE_NUM"))?;
        if (max as usize) < queues {
            return Err(unsuitable(format!(
                "serves {max} queues, {queues} were asked for"
            )));
        }
    }
    Ok((backend_features, protocol_features))
}
