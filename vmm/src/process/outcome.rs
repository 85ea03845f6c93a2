//! How a vmm process ended, and what it tells the launcher about it: the protocol messages
//! for each way, and the exit status.

use bulkhead_protocol::ToLauncher;

use crate::devices::VmStop;

/// Exit status when bulkhead itself fails or the guest crashed (as `docker run` does).
pub const EXIT_BULKHEAD_FAILED: i32 = 125;

/// How a vmm process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The VM ran and stopped.
    Stopped(VmStop),
    /// The VM could not be built or run: the error with its causes.
    Failed(String),
}

impl Outcome {
    /// The process's exit status.
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Stopped(VmStop::GuestStatus(n)) => i32::from(*n),
            Outcome::Stopped(VmStop::Reset | VmStop::Shutdown { .. }) => 0,
            _ => EXIT_BULKHEAD_FAILED,
        }
    }

    /// What to tell the user (after `bulkhead: `), when it is not the guest's own ending.
    pub fn problem(&self) -> Option<String> {
        match self {
            Outcome::Stopped(VmStop::GuestStatus(_) | VmStop::Reset | VmStop::Shutdown { .. }) => {
                None
            }
            Outcome::Stopped(VmStop::TripleFault { vcpu }) => Some(format!(
                "vcpu{vcpu}: the guest triple-faulted (KVM_EXIT_SHUTDOWN); VM stopped"
            )),
            Outcome::Stopped(VmStop::DeviceFailed { device, why }) => {
                Some(format!("{device} failed: {why}; VM stopped"))
            }
            Outcome::Stopped(VmStop::Error { vcpu, what }) => {
                Some(format!("vcpu{vcpu}: {what}; VM stopped"))
            }
            Outcome::Failed(msg) => Some(format!("error: {msg}")),
        }
    }

    /// The messages that tell the launcher, the last being `Exited`. A device failure goes
    /// as `DeviceFailed` (the launcher explains it by how the device's process ended);
    /// every other problem as `Error` with the text for the user.
    pub fn messages(&self) -> Vec<ToLauncher> {
        let mut m = Vec::new();
        match self {
            Outcome::Stopped(VmStop::DeviceFailed { device, why }) => {
                m.push(ToLauncher::DeviceFailed {
                    device: device.clone(),
                    reason: why.clone(),
                })
            }
            Outcome::Failed(msg) => m.push(ToLauncher::Error {
                message: msg.clone(),
            }),
            other => m.extend(other.problem().map(|message| ToLauncher::Error { message })),
        }
        m.push(ToLauncher::Exited {
            code: self.exit_code(),
        });
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_ending_is_no_problem() {
        for (o, code) in [
            (Outcome::Stopped(VmStop::GuestStatus(3)), 3),
            (Outcome::Stopped(VmStop::Reset), 0),
            (
                Outcome::Stopped(VmStop::Shutdown {
                    why: "signal 15".into(),
                }),
                0,
            ),
        ] {
            assert_eq!(o.exit_code(), code);
            assert_eq!(o.problem(), None);
            assert_eq!(o.messages(), [ToLauncher::Exited { code }]);
        }
    }

    #[test]
    fn problems_are_named() {
        let o = Outcome::Stopped(VmStop::DeviceFailed {
            device: "disk0".into(),
            why: "backend hung up".into(),
        });
        assert_eq!(o.exit_code(), EXIT_BULKHEAD_FAILED);
        assert_eq!(
            o.messages(),
            [
                ToLauncher::DeviceFailed {
                    device: "disk0".into(),
                    reason: "backend hung up".into()
                },
                ToLauncher::Exited { code: 125 }
            ]
        );
        let o = Outcome::Stopped(VmStop::TripleFault { vcpu: 1 });
        assert_eq!(
            o.messages()[0],
            ToLauncher::Error {
                message: "vcpu1: the guest triple-faulted (KVM_EXIT_SHUTDOWN); VM stopped".into()
            }
        );
        let o = Outcome::Failed("opening kernel /k: No such file".into());
        assert_eq!(
            o.problem().unwrap(),
            "error: opening kernel /k: No such file"
        );
        assert_eq!(
            o.messages()[0],
            ToLauncher::Error {
                message: "opening kernel /k: No such file".into()
            }
        );
    }
}
