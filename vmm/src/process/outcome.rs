//! Why the VM stopped, as one line the vmm process writes to the launcher: the VM's
//! [`VmStop`], or the error that kept it from running.
//!
//! Text, one line, tab-separated fields: the launcher reads it once, at the end, and a
//! malformed line is reported as such rather than trusted.

use crate::devices::VmStop;

/// How a vmm process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The VM ran and stopped.
    Stopped(VmStop),
    /// The VM could not be built or run: the error with its causes.
    Failed(String),
}

/// A line that is not an outcome.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed outcome from the vmm process: {0:?}")]
pub struct BadOutcome(pub String);

impl Outcome {
    /// The line (without its newline; tabs and newlines in texts become spaces).
    pub fn encode(&self) -> String {
        let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
        match self {
            Outcome::Stopped(VmStop::GuestStatus(n)) => format!("guest-status\t{n}"),
            Outcome::Stopped(VmStop::Reset) => "reset".into(),
            Outcome::Stopped(VmStop::Shutdown { signal }) => format!("shutdown\t{signal}"),
            Outcome::Stopped(VmStop::TripleFault { vcpu }) => format!("triple-fault\t{vcpu}"),
            Outcome::Stopped(VmStop::DeviceFailed { device, why }) => {
                format!("device-failed\t{}\t{}", clean(device), clean(why))
            }
            Outcome::Stopped(VmStop::Error { vcpu, what }) => {
                format!("vcpu-error\t{vcpu}\t{}", clean(what))
            }
            Outcome::Failed(msg) => format!("failed\t{}", clean(msg)),
        }
    }

    /// Parses a line written by [`Outcome::encode`].
    pub fn decode(line: &str) -> Result<Outcome, BadOutcome> {
        let line = line.trim_end_matches(['\n', '\r']);
        let bad = || BadOutcome(line.chars().take(200).collect());
        let mut f = line.splitn(3, '\t');
        let kind = f.next().unwrap_or_default();
        let (a, b) = (f.next(), f.next());
        let stop = match (kind, a, b) {
            ("guest-status", Some(n), None) => VmStop::GuestStatus(n.parse().map_err(|_| bad())?),
            ("reset", None, None) => VmStop::Reset,
            ("shutdown", Some(s), None) => VmStop::Shutdown {
                signal: s.parse().map_err(|_| bad())?,
            },
            ("triple-fault", Some(v), None) => VmStop::TripleFault {
                vcpu: v.parse().map_err(|_| bad())?,
            },
            ("device-failed", Some(d), Some(w)) => VmStop::DeviceFailed {
                device: d.into(),
                why: w.into(),
            },
            ("vcpu-error", Some(v), Some(w)) => VmStop::Error {
                vcpu: v.parse().map_err(|_| bad())?,
                what: w.into(),
            },
            ("failed", Some(m), None) => return Ok(Outcome::Failed(m.into())),
            _ => return Err(bad()),
        };
        Ok(Outcome::Stopped(stop))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_round_trips() {
        for o in [
            Outcome::Stopped(VmStop::GuestStatus(0)),
            Outcome::Stopped(VmStop::GuestStatus(255)),
            Outcome::Stopped(VmStop::Reset),
            Outcome::Stopped(VmStop::Shutdown { signal: 15 }),
            Outcome::Stopped(VmStop::TripleFault { vcpu: 3 }),
            Outcome::Stopped(VmStop::DeviceFailed {
                device: "disk0".into(),
                why: "backend hung up".into(),
            }),
            Outcome::Stopped(VmStop::Error {
                vcpu: 1,
                what: "KVM_RUN: EFAULT".into(),
            }),
            Outcome::Failed("opening kernel /k: No such file".into()),
        ] {
            assert_eq!(Outcome::decode(&o.encode()), Ok(o.clone()), "{o:?}");
        }
    }

    #[test]
    fn tabs_and_newlines_in_texts_cannot_forge_fields() {
        let o = Outcome::Failed("a\tb\nreset".into());
        assert_eq!(o.encode(), "failed\ta b reset");
        assert_eq!(
            Outcome::decode(&o.encode()),
            Ok(Outcome::Failed("a b reset".into()))
        );
    }

    #[test]
    fn garbage_is_refused() {
        for line in [
            "",
            "guest-status",
            "guest-status\t256",
            "guest-status\t1\t2",
            "triple-fault\tx",
            "device-failed\tdisk0",
            "hello",
        ] {
            assert!(Outcome::decode(line).is_err(), "{line:?}");
        }
    }
}
