//! What a message from the vmm means while the launcher waits for its answer to
//! `Reconnect{device}`: the answer (`Reconnected`, `DeviceStopped`, or a `DeviceLost` for
//! the new backend, which hung up during the replay), a `DeviceLost` about the device's
//! previous process (sent before the vmm took the `Reconnect`), or something else.
//!
//! The two `DeviceLost`s for the device are told apart by the vmm's wording: a loss
//! during the replay ends with [`LOST_IN_REPLAY`] (vmm/src/virtio/vhost_user/replay.rs;
//! a test here checks the vmm still says so). Once the vmm starts a replay it reports no
//! loss of the previous connection, so nothing older can follow the answer.

use bulkhead_protocol::ToLauncher;

/// How the vmm's reason for a loss during the replay ends.
pub(super) const LOST_IN_REPLAY: &str = "(the new backend hung up)";

/// A message received while waiting for the answer to `Reconnect{device}`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Heard {
    /// The new backend took over.
    Reconnected,
    /// The vmm stopped the device (it marked it NEEDS_RESET): the reason.
    Stopped(String),
    /// The new backend hung up during the replay: the vmm's reason. The device waits for
    /// another `Reconnect`.
    LostInReplay(String),
    /// A loss of the device reported before the replay (its previous process), or just
    /// before `Reconnected` (the new one, which died right after the replay): the reason.
    LostBefore(String),
    /// The VM has ended (`Exited`: its code).
    Exited(i32),
    /// Anything else (about other devices, notes): handled as outside the wait.
    Other(ToLauncher),
}

/// What `msg` means while waiting for the answer about `device`.
pub(super) fn classify(device: &str, msg: ToLauncher) -> Heard {
    match msg {
        ToLauncher::Reconnected { device: d } if d == device => Heard::Reconnected,
        ToLauncher::DeviceStopped { device: d, reason } if d == device => Heard::Stopped(reason),
        ToLauncher::DeviceLost { device: d, reason } if d == device => {
            if reason.ends_with(LOST_IN_REPLAY) {
                Heard::LostInReplay(reason)
            } else {
                Heard::LostBefore(reason)
            }
        }
        ToLauncher::Exited { code } => Heard::Exited(code),
        other => Heard::Other(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_about_the_device_is_told_from_the_rest() {
        let d = || "disk0".to_owned();
        assert_eq!(
            classify("disk0", ToLauncher::Reconnected { device: d() }),
            Heard::Reconnected
        );
        assert_eq!(
            classify(
                "disk0",
                ToLauncher::DeviceStopped {
                    device: d(),
                    reason: "no".into()
                }
            ),
            Heard::Stopped("no".into())
        );
        let replay = format!("disk0: SET_VRING_BASE: broken pipe {LOST_IN_REPLAY}");
        assert_eq!(
            classify(
                "disk0",
                ToLauncher::DeviceLost {
                    device: d(),
                    reason: replay.clone()
                }
            ),
            Heard::LostInReplay(replay)
        );
        assert_eq!(
            classify(
                "disk0",
                ToLauncher::DeviceLost {
                    device: d(),
                    reason: "disk0: the backend hung up".into()
                }
            ),
            Heard::LostBefore("disk0: the backend hung up".into())
        );
        assert_eq!(
            classify("disk0", ToLauncher::Exited { code: 3 }),
            Heard::Exited(3)
        );
        // The same words about another device are not the answer.
        for other in [
            ToLauncher::Reconnected {
                device: "disk1".into(),
            },
            ToLauncher::DeviceStopped {
                device: "disk1".into(),
                reason: "x".into(),
            },
            ToLauncher::DeviceLost {
                device: "disk00".into(),
                reason: LOST_IN_REPLAY.into(),
            },
        ] {
            assert!(
                matches!(classify("disk0", other.clone()), Heard::Other(ref m) if *m == other),
                "{other:?}"
            );
        }
    }

    /// The launcher recognises the vmm's answer by its words: they must not drift apart.
    #[test]
    fn the_vmm_still_words_a_loss_during_the_replay_so() {
        let replay = include_str!("../../../vmm/src/virtio/vhost_user/replay.rs");
        assert!(
            replay.contains(&format!(
                "ReconnectError::Lost(format!(\"{{why}} {LOST_IN_REPLAY}\"))"
            )),
            "vmm/src/virtio/vhost_user/replay.rs no longer ends a loss during the replay with \
             {LOST_IN_REPLAY:?}"
        );
    }
}
