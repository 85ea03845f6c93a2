//! The launcher keeps KVM's supported CPUID (`/run/bulkhead/kvm-cpuid`) and hands it to the
//! vmm, which then does not ask KVM itself (`KVM_GET_SUPPORTED_CPUID` runs the host's
//! `cpuid` for every leaf: about 1 ms of CPU per VM where the host is itself a guest).
//! Checked from outside: the kept table is exactly what KVM answers now, under this boot's
//! key; the (jailed) vmm is given it and makes no such ioctl, while the launcher asks KVM
//! once when nothing is kept; a kept file that is no table is replaced; the guest boots
//! either way.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use bulkhead_vmm::kvm::cpuid_table;

/// Where the launcher keeps the table.
const KEPT: &str = "/run/bulkhead/kvm-cpuid";
/// The ioctl as strace names it.
const ASK_KVM: &str = "KVM_GET_SUPPORTED_CPUID";

/// One test at a time: they all remove or rewrite the kept file.
static SERIAL: Mutex<()> = Mutex::new(());

/// Skips unless this host can run a VM as root, under strace.
macro_rules! require_root_kvm_strace {
    () => {
        require_kvm!();
        if !nix::unistd::geteuid().is_root() {
            skip!(
                common::skip::SkipKind::NotPermitted,
                "only root keeps the table (in /run/bulkhead)"
            );
        }
        if Command::new("strace").arg("-V").output().is_err() {
            skip!(
                common::skip::SkipKind::MissingTool,
                "strace (Debian package strace) is not installed"
            );
        }
    };
}

/// `bulkhead run` with the test guest (jailed unless `jail_off`), under `strace -f` for
/// execve and ioctl; returns the strace log. Asserts the guest passed.
fn run_traced(name: &str, jail_off: bool) -> common::strace::Log {
    let log_path = std::env::temp_dir().join(format!(
        "bulkhead-kvm-cpuid-{name}-{}.strace",
        std::process::id()
    ));
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "--pidns-translation", "-e", "signal=none"])
        .args(["-e", "trace=execve,clone,clone3,fork,vfork,ioctl", "-o"])
        .arg(&log_path)
        .arg(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("run")
        .args(["--cmdline", "bulkhead.test=memory"])
        .stdin(Stdio::null());
    if jail_off {
        cmd.args(["--jail", "off"]);
    }
    let out = common::run(cmd, Duration::from_secs(120));
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    assert_eq!(out.code(), 0, "{out:#?}");
    out.assert_line("bulkhead-guest: PASS memory");
    common::strace::Log::parse(&log)
}

/// The threads of `log` that asked KVM for its supported CPUID.
fn askers(log: &common::strace::Log) -> Vec<u32> {
    log.calls
        .iter()
        .filter(|c| c.name == "ioctl" && c.args.contains(ASK_KVM))
        .map(|c| c.pid)
        .collect()
}

/// Whether the vmm was started with the table (`--kvm-cpuid-fd N`).
fn vmm_given_table(log: &common::strace::Log) -> bool {
    log.calls.iter().any(|c| {
        c.name == "execve" && c.args.contains("bulkhead-vmm") && c.args.contains("--kvm-cpuid-fd")
    })
}

/// The kept file's key line and table; asserts it is root's alone.
fn kept() -> (String, String) {
    let meta = std::fs::symlink_metadata(KEPT).expect("the launcher keeps the table");
    assert!(meta.is_file(), "{KEPT} is not a plain file");
    assert_eq!(meta.mode() & 0o777, 0o600, "{KEPT}: mode");
    assert_eq!(meta.uid(), 0, "{KEPT}: owner");
    let text = std::fs::read_to_string(KEPT).expect("reading the kept table");
    let (key, table) = text.split_once('\n').expect("a key line");
    (key.to_string(), table.to_string())
}

/// The CPUID a one-vCPU guest gets from `table` (KVM's answer names the APIC id of the host
/// CPU that ran the ioctl, leaves 0x1 and 0xb: the vmm replaces those per vCPU).
fn guest_view(table: &str) -> String {
    let mut entries = cpuid_table::decode(table).expect("a table");
    bulkhead_vmm::kvm::cpuid::filter(&mut entries, 0, 1);
    cpuid_table::encode(&entries)
}

/// What KVM answers now, as the launcher writes it.
fn kvm_answer() -> String {
    let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm");
    cpuid_table::encode(&cpuid_table::supported(&kvm).expect(ASK_KVM))
}

#[test]
fn the_kept_table_is_kvm_s_answer_under_this_boot_and_its_kvm_modules() {
    require_root_kvm_strace!();
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _ = std::fs::remove_file(KEPT);
    let log = run_traced("first", true);
    // Nothing was kept: the launcher asked KVM (once), the vmm did not.
    let vmm = log.pids_of("bulkhead-vmm");
    assert!(!vmm.is_empty(), "no vmm in the strace log");
    let asked = askers(&log);
    assert_eq!(asked.len(), 1, "{ASK_KVM} made {} times", asked.len());
    assert!(!vmm.contains(&asked[0]), "the vmm asked KVM itself");
    assert!(vmm_given_table(&log), "the vmm was not given the table");

    let (key, table) = kept();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let kvm_ino = std::fs::metadata("/sys/module/kvm").unwrap().ino();
    assert!(
        key.starts_with(&format!("key {} ", boot_id.trim())),
        "key {key:?} does not name this boot"
    );
    assert!(
        key.split(' ').any(|m| m == format!("kvm:{kvm_ino}")),
        "key {key:?} does not name the loaded kvm module (inode {kvm_ino})"
    );
    assert_eq!(
        guest_view(&table),
        guest_view(&kvm_answer()),
        "the kept table is not KVM's answer"
    );
}

#[test]
fn a_jailed_vmm_is_handed_the_kept_table_and_does_not_ask_kvm() {
    require_root_kvm_strace!();
    require_netns!();
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Kept by an earlier start (any: this one makes sure).
    let _ = run_traced("keep", true);
    let before = kept();
    let log = run_traced("jailed", false);
    assert!(
        !log.pids_of("bulkhead-vmm").is_empty(),
        "no vmm in the strace log"
    );
    assert_eq!(askers(&log), Vec::<u32>::new(), "{ASK_KVM} was made");
    assert!(vmm_given_table(&log), "the vmm was not given the table");
    assert_eq!(kept(), before, "a valid kept table was rewritten");
}

#[test]
fn a_kept_file_that_is_no_table_is_replaced_by_kvm_s_answer() {
    require_root_kvm_strace!();
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _ = run_traced("keep-for-corrupt", true);
    let (key, _) = kept();
    // This boot's key over a table that is not one: the launcher must not hand it over.
    std::fs::write(
        KEPT,
        format!("{key}\nbulkhead-kvm-cpuid 1\n0 0 0 zz 0 0 0\n"),
    )
    .unwrap();
    let log = run_traced("corrupt", true);
    assert_eq!(askers(&log).len(), 1, "KVM was not asked again");
    assert!(vmm_given_table(&log), "the vmm was not given the table");
    let (key_after, table) = kept();
    assert_eq!(key_after, key);
    assert_eq!(
        guest_view(&table),
        guest_view(&kvm_answer()),
        "the replaced table is not KVM's answer"
    );
}
