//! KVM checks: can `/dev/kvm` be opened, is the API the one we speak, are the capabilities
//! the vmm relies on present, can a VM be created, and is the virtualisation hardware or
//! software (nested, page-table based `kvm_pvm`).

use std::io;
use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

use super::{describe_errno, read_trimmed, Fact, Status};

/// The only KVM API version there has ever been (`KVM_GET_API_VERSION`).
const KVM_API_VERSION: i32 = 12;

/// A capability and the short name it is printed under.
struct NamedCap {
    name: &'static str,
    cap: Cap,
}

const fn cap(name: &'static str, cap: Cap) -> NamedCap {
    NamedCap { name, cap }
}

/// Capabilities the vmm cannot run without (the set Firecracker-style VMMs rely on).
const REQUIRED_CAPS: &[NamedCap] = &[
    cap("irqchip", Cap::Irqchip),
    cap("ioeventfd", Cap::Ioeventfd),
    cap("irqfd", Cap::Irqfd),
    cap("pit2", Cap::Pit2),
    cap("user-memory", Cap::UserMemory),
    cap("set-tss-addr", Cap::SetTssAddr),
    cap("ext-cpuid", Cap::ExtCpuid),
    cap("immediate-exit", Cap::ImmediateExit),
    cap("mp-state", Cap::MpState),
];

/// Capabilities that later features (split irqchip, MSI, snapshots) or better guest timers
/// use; their absence is a warning.
const OPTIONAL_CAPS: &[NamedCap] = &[
    cap("tsc-deadline", Cap::TscDeadlineTimer),
    cap("split-irqchip", Cap::SplitIrqchip),
    cap("irq-routing", Cap::IrqRouting),
    cap("signal-msi", Cap::SignalMsi),
    cap("vcpu-events", Cap::VcpuEvents),
    cap("xsave", Cap::Xsave),
    cap("xcrs", Cap::Xcrs),
    cap("debugregs", Cap::Debugregs),
    cap("pit-state2", Cap::PitState2),
    cap("adjust-clock", Cap::AdjustClock),
];

/// Opens `/dev/kvm` and, if that works, checks the API version, the capabilities, the vCPU
/// limits and that a VM and a vCPU can be created.
pub fn checks() -> Vec<Fact> {
    let kvm = match Kvm::new() {
        Ok(kvm) => kvm,
        Err(e) => {
            let err = io::Error::from_raw_os_error(e.errno());
            return vec![open_failed(&err, dev_kvm_mode())];
        }
    };
    let api = api_fact(kvm.get_api_version());
    if api.status == Status::Fail {
        return vec![api];
    }
    let required: Vec<(&str, bool)> = REQUIRED_CAPS
        .iter()
        .map(|c| (c.name, kvm.check_extension(c.cap)))
        .collect();
    let optional: Vec<(&str, bool)> = OPTIONAL_CAPS
        .iter()
        .map(|c| (c.name, kvm.check_extension(c.cap)))
        .collect();
    vec![
        api,
        required_caps_fact(&required),
        optional_caps_fact(&optional),
        vcpus_fact(kvm.get_nr_vcpus(), kvm.get_max_vcpus()),
        create_vm_fact(&kvm),
    ]
}

/// Mode and owner of `/dev/kvm`, for the evidence of an open that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DevMode {
    mode: u32,
    uid: u32,
    gid: u32,
}

fn dev_kvm_mode() -> Option<DevMode> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata("/dev/kvm").ok()?;
    Some(DevMode {
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

fn open_failed(err: &io::Error, dev: Option<DevMode>) -> Fact {
    let hint = match (err.raw_os_error(), dev) {
        (Some(libc::ENOENT), _) => {
            "; no KVM: load kvm_intel or kvm_amd, or enable virtualisation".to_string()
        }
        (Some(libc::EACCES | libc::EPERM), Some(d)) if d.mode & 0o060 == 0o060 => {
            format!("; add this user to group {}", d.gid)
        }
        (Some(libc::EACCES | libc::EPERM), Some(_)) => {
            "; only its owner may open it: run as that user, or make it group rw (e.g. kvm)"
                .to_string()
        }
        _ => String::new(),
    };
    let dev = dev
        .map(|d| format!(" [mode {:o}, uid {}, gid {}]", d.mode, d.uid, d.gid))
        .unwrap_or_default();
    Fact::new(
        Status::Fail,
        "kvm",
        format!("cannot open /dev/kvm: {}{dev}{hint}", describe_errno(err)),
    )
}

fn api_fact(version: i32) -> Fact {
    if version == KVM_API_VERSION {
        Fact::new(
            Status::Ok,
            "kvm",
            format!("/dev/kvm opened, KVM API version {version}"),
        )
    } else {
        Fact::new(
            Status::Fail,
            "kvm",
            format!("/dev/kvm opened, but KVM API version {version}, not {KVM_API_VERSION}"),
        )
    }
}

fn names(caps: &[(&str, bool)], present: bool) -> Vec<String> {
    caps.iter()
        .filter(|(_, p)| *p == present)
        .map(|(n, _)| n.to_string())
        .collect()
}

fn required_caps_fact(caps: &[(&str, bool)]) -> Fact {
    let present = names(caps, true);
    let missing = names(caps, false);
    if missing.is_empty() {
        Fact::new(
            Status::Ok,
            "kvm caps",
            format!("{} (all {} required)", present.join(", "), caps.len()),
        )
    } else {
        Fact::new(
            Status::Fail,
            "kvm caps",
            format!(
                "missing required {}; present: {}",
                missing.join(", "),
                if present.is_empty() {
                    "none".to_string()
                } else {
                    present.join(", ")
                }
            ),
        )
    }
}

fn optional_caps_fact(caps: &[(&str, bool)]) -> Fact {
    let present = names(caps, true);
    let missing = names(caps, false);
    if missing.is_empty() {
        Fact::new(
            Status::Ok,
            "kvm caps (optional)",
            format!("{} (all {})", present.join(", "), caps.len()),
        )
    } else {
        Fact::new(
            Status::Warn,
            "kvm caps (optional)",
            format!(
                "missing {}; present: {}",
                missing.join(", "),
                if present.is_empty() {
                    "none".to_string()
                } else {
                    present.join(", ")
                }
            ),
        )
    }
}

fn vcpus_fact(recommended: usize, max: usize) -> Fact {
    let status = if max >= 2 { Status::Ok } else { Status::Warn };
    let single = if max >= 2 {
        ""
    } else {
        "; SMP guests impossible"
    };
    Fact::new(
        status,
        "kvm vcpus",
        format!(
            "{recommended} recommended (KVM_CAP_NR_VCPUS), {max} max (KVM_CAP_MAX_VCPUS){single}"
        ),
    )
}

/// Creating a VM is what fails when the module is loaded but virtualisation is disabled
/// (in firmware, or taken by another hypervisor), so it is part of "KVM is usable".
fn create_vm_fact(kvm: &Kvm) -> Fact {
    let vm = match kvm.create_vm() {
        Ok(vm) => vm,
        Err(e) => {
            let err = io::Error::from_raw_os_error(e.errno());
            return Fact::new(
                Status::Fail,
                "kvm vm",
                format!("KVM_CREATE_VM failed: {}", describe_errno(&err)),
            );
        }
    };
    match vm.create_vcpu(0) {
        Ok(_vcpu) => Fact::new(
            Status::Ok,
            "kvm vm",
            "KVM_CREATE_VM and KVM_CREATE_VCPU succeeded",
        ),
        Err(e) => {
            let err = io::Error::from_raw_os_error(e.errno());
            Fact::new(
                Status::Fail,
                "kvm vm",
                format!(
                    "KVM_CREATE_VM succeeded, KVM_CREATE_VCPU failed: {}",
                    describe_errno(&err)
                ),
            )
        }
    }
}

/// What the host shows about how KVM is implemented.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct VirtEvidence {
    /// `/sys/module/kvm_intel` exists.
    kvm_intel: bool,
    /// `/sys/module/kvm_amd` exists.
    kvm_amd: bool,
    /// `/sys/module/kvm_pvm` exists.
    kvm_pvm: bool,
    /// `/sys/module/kvm_pvm/parameters/pvm_native` (`Y`: unmodified guests run, their
    /// kernel mode emulated).
    pvm_native: Option<String>,
    /// `vmx` or `svm` among the CPU flags in `/proc/cpuinfo`, if either.
    cpu_flag: Option<&'static str>,
}

fn cpu_virt_flag(cpuinfo: &str) -> Option<&'static str> {
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))?
        .split_once(':')?
        .1;
    let mut words = flags.split_whitespace();
    if words.clone().any(|w| w == "vmx") {
        Some("vmx")
    } else if words.any(|w| w == "svm") {
        Some("svm")
    } else {
        None
    }
}

/// Hardware (`kvm_intel`/`kvm_amd`) or software (`kvm_pvm`) virtualisation, from
/// `/sys/module` and `/proc/cpuinfo`.
pub fn virtualisation() -> Fact {
    let module = |m: &str| Path::new("/sys/module").join(m).exists();
    let evidence = VirtEvidence {
        kvm_intel: module("kvm_intel"),
        kvm_amd: module("kvm_amd"),
        kvm_pvm: module("kvm_pvm"),
        pvm_native: read_trimmed("/sys/module/kvm_pvm/parameters/pvm_native").ok(),
        cpu_flag: std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| cpu_virt_flag(&c)),
    };
    virtualisation_fact(&evidence)
}

fn virtualisation_fact(ev: &VirtEvidence) -> Fact {
    let flag = match ev.cpu_flag {
        Some(f) => format!("{f} in /proc/cpuinfo"),
        None => "no vmx/svm in /proc/cpuinfo".to_string(),
    };
    let hardware = match (ev.kvm_intel, ev.kvm_amd) {
        (true, _) => Some("kvm_intel"),
        (false, true) => Some("kvm_amd"),
        (false, false) => None,
    };
    if let Some(m) = hardware {
        return Fact::new(
            Status::Info,
            "virtualisation",
            format!("hardware ({m} in /sys/module; {flag}): full Linux guests run at speed"),
        );
    }
    if ev.kvm_pvm {
        let native = ev.pvm_native.as_deref();
        return match native {
            Some("Y") | Some("1") => Fact::new(
                Status::Info,
                "virtualisation",
                format!(
                    "software (kvm_pvm: nested, page-table based; pvm_native=Y: guest kernel \
                     mode emulated; {flag}): guest CPL0 code runs ~3000x slower than CPL3, a \
                     stock kernel prints its banner but does not reach user space"
                ),
            ),
            other => Fact::new(
                Status::Warn,
                "virtualisation",
                format!(
                    "software (kvm_pvm, pvm_native={}; {flag}): unmodified guests need \
                     pvm_native=Y",
                    other.unwrap_or("unreadable")
                ),
            ),
        };
    }
    Fact::new(
        Status::Info,
        "virtualisation",
        format!("unknown (none of kvm_intel, kvm_amd, kvm_pvm in /sys/module; {flag})"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_version_12_is_ok_anything_else_fails() {
        assert_eq!(
            api_fact(12).to_string(),
            "ok    kvm: /dev/kvm opened, KVM API version 12"
        );
        let f = api_fact(11);
        assert_eq!(f.status, Status::Fail);
        assert!(f.evidence.contains("version 11, not 12"));
    }

    #[test]
    fn open_failure_names_errno_mode_and_hint() {
        let group_rw = DevMode {
            mode: 0o660,
            uid: 0,
            gid: 108,
        };
        let f = open_failed(&io::Error::from_raw_os_error(libc::EACCES), Some(group_rw));
        assert_eq!(f.status, Status::Fail);
        assert_eq!(
            f.evidence,
            "cannot open /dev/kvm: EACCES (Permission denied) [mode 660, uid 0, gid 108]; \
             add this user to group 108"
        );
        let owner_only = DevMode {
            mode: 0o600,
            ..group_rw
        };
        let f = open_failed(
            &io::Error::from_raw_os_error(libc::EACCES),
            Some(owner_only),
        );
        assert!(f
            .evidence
            .contains("[mode 600, uid 0, gid 108]; only its owner"));
        let f = open_failed(&io::Error::from_raw_os_error(libc::ENOENT), None);
        assert!(f.evidence.starts_with("cannot open /dev/kvm: ENOENT"));
    }

    #[test]
    fn required_caps_all_present_is_ok() {
        let f = required_caps_fact(&[("irqchip", true), ("irqfd", true)]);
        assert_eq!(
            f.to_string(),
            "ok    kvm caps: irqchip, irqfd (all 2 required)"
        );
    }

    #[test]
    fn a_missing_required_cap_fails_and_is_named() {
        let f = required_caps_fact(&[("irqchip", true), ("irqfd", false), ("pit2", false)]);
        assert_eq!(f.status, Status::Fail);
        assert_eq!(f.evidence, "missing required irqfd, pit2; present: irqchip");
    }

    #[test]
    fn a_missing_optional_cap_only_warns() {
        let f = optional_caps_fact(&[("tsc-deadline", false), ("xsave", true)]);
        assert_eq!(f.status, Status::Warn);
        assert_eq!(f.evidence, "missing tsc-deadline; present: xsave");
    }

    #[test]
    fn vcpu_counts_are_printed() {
        let f = vcpus_fact(1024, 1024);
        assert_eq!(
            f.to_string(),
            "ok    kvm vcpus: 1024 recommended (KVM_CAP_NR_VCPUS), 1024 max (KVM_CAP_MAX_VCPUS)"
        );
        assert_eq!(vcpus_fact(1, 1).status, Status::Warn);
    }

    #[test]
    fn cpu_flags_are_found() {
        let info = "processor\t: 0\nflags\t\t: fpu vme vmx sse\n";
        assert_eq!(cpu_virt_flag(info), Some("vmx"));
        assert_eq!(cpu_virt_flag("flags : fpu svm\n"), Some("svm"));
        assert_eq!(cpu_virt_flag("flags : fpu hypervisor\n"), None);
        assert_eq!(cpu_virt_flag("no flags line"), None);
    }

    #[test]
    fn hardware_virtualisation_is_recognised() {
        let ev = VirtEvidence {
            kvm_intel: true,
            cpu_flag: Some("vmx"),
            ..Default::default()
        };
        let f = virtualisation_fact(&ev);
        assert_eq!(f.status, Status::Info);
        assert!(f
            .evidence
            .starts_with("hardware (kvm_intel in /sys/module; vmx in"));
        let ev = VirtEvidence {
            kvm_amd: true,
            ..Default::default()
        };
        assert!(virtualisation_fact(&ev)
            .evidence
            .starts_with("hardware (kvm_amd"));
    }

    #[test]
    fn pvm_is_software_virtualisation() {
        let ev = VirtEvidence {
            kvm_pvm: true,
            pvm_native: Some("Y".into()),
            ..Default::default()
        };
        let f = virtualisation_fact(&ev);
        assert_eq!(f.status, Status::Info);
        assert!(f.evidence.starts_with("software (kvm_pvm: nested"));
        assert!(f.evidence.contains("no vmx/svm in /proc/cpuinfo"));
        let ev = VirtEvidence {
            kvm_pvm: true,
            pvm_native: Some("N".into()),
            ..Default::default()
        };
        assert_eq!(virtualisation_fact(&ev).status, Status::Warn);
    }

    #[test]
    fn no_module_is_unknown() {
        let f = virtualisation_fact(&VirtEvidence::default());
        assert!(f.evidence.starts_with("unknown (none of"));
    }
}
