//! End to end: `bulkhead run` boots the built-in test guest, which reports on the serial
//! console and powers off with its status. The tests with devices run on both transports
//! (`mmio::` and `pci::`).

mod common;

use std::time::Duration;

use common::disk::Image;
use common::transport::Transport;

const DEADLINE: Duration = Duration::from_secs(120);
/// What the guest's `console-probe` writes on the virtio console's port 0
/// (`tests/guest/src/scenarios/console.rs`, `PROBE_LINE`).
const CONSOLE_PROBE_LINE: &str = "bulkhead-guest console-probe: port 0 transmits\n";
/// The default self-test's device probes: one PASS line each, whatever devices there are.
const PROBES: [&str; 3] = ["blk-probe", "net-probe", "console-probe"];

fn run(args: &[&str]) -> common::Output {
    common::run_vm(args, DEADLINE)
}

/// `bulkhead run --transport T` alone: the demo machine on that transport.
fn default_self_test_passes(t: Transport) {
    require_kvm!();
    let out = common::run_vm_on(t, &[], DEADLINE);
    assert_eq!(out.code(), 0, "{out:#?}");
    out.assert_line("bulkhead-guest: ready cpus=1 mem=256M");
    out.assert_line("bulkhead-guest: PASS cpus");
    out.assert_line("bulkhead-guest: PASS memory");
    out.assert_line("bulkhead-guest: done status=0");
    assert!(!out.stdout.contains("FAIL"), "{}", out.stdout);
    // The demo's disk, network device and console.
    assert_eq!(devices_found(&out, t), 3);
    one_pass_line_per_probe(&out);
    out.assert_line("bulkhead-guest: blk0 read sectors 0..8");
    assert!(
        out.stdout.contains("bulkhead-guest: net0 mac="),
        "{}",
        out.stdout
    );
    out.assert_line(&format!(
        "bulkhead-guest: console0 probe wrote {} bytes",
        CONSOLE_PROBE_LINE.len()
    ));
    // The demo's console is this terminal: here, the test's stdout pipe.
    assert!(
        out.stdout.contains(CONSOLE_PROBE_LINE),
        "the console-probe line is not on the console (stdout):\n{}",
        out.stdout
    );
}

/// Issue 10's own check: `bulkhead run --transport T --disk path=IMG --net auto --console
/// file=OUT` boots the test guest, which finds each device on that transport (and none on
/// the other) and prints one PASS line per device; exit 0. The console's line is in OUT.
fn every_device_is_found_and_passes(t: Transport) {
    require_kvm!();
    require_netns!();
    let img = Image::new(&format!("issue10-{t}"), 1 << 20);
    let console =
        std::env::temp_dir().join(format!("bulkhead-issue10-{t}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&console);
    let disk = img.disk_arg("");
    let console_arg = format!("file={}", console.display());
    let out = common::run_vm_on(
        t,
        &["--disk", &disk, "--net", "auto", "--console", &console_arg],
        DEADLINE,
    );
    let log = std::fs::read_to_string(&console);
    let _ = std::fs::remove_file(&console);
    assert_eq!(out.code(), 0, "{out:#?}");
    assert_eq!(devices_found(&out, t), 3, "disk, NIC and console");
    one_pass_line_per_probe(&out);
    assert!(!out.stdout.contains("FAIL"), "{}", out.stdout);
    assert_eq!(
        log.expect("console file written"),
        CONSOLE_PROBE_LINE,
        "console file {}",
        console.display()
    );
    assert!(img.read() == img.original, "the probes only read the disk");
}

/// Each device probe of the default self-test printed exactly one PASS line and no FAIL.
fn one_pass_line_per_probe(out: &common::Output) {
    for probe in PROBES {
        let pass = format!("bulkhead-guest: PASS {probe}");
        let passes = out.stdout.lines().filter(|l| l.trim_end() == pass).count();
        assert_eq!(passes, 1, "{pass:?} lines in stdout:\n{}", out.stdout);
        assert!(
            !out.stdout.contains(&format!("FAIL {probe}")),
            "{}",
            out.stdout
        );
    }
}

fn console_probe_writes_to_a_console_file(t: Transport) {
    require_kvm!();
    let path = std::env::temp_dir().join(format!(
        "bulkhead-console-probe-{t}-{}.log",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let arg = format!("file={}", path.display());
    let out = common::run_vm_on(t, &["--console", &arg], DEADLINE);
    let log = std::fs::read(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.code(), 0, "{out:#?}");
    assert_eq!(devices_found(&out, t), 1, "the console alone");
    one_pass_line_per_probe(&out);
    out.assert_line(&format!(
        "bulkhead-guest: console0 probe wrote {} bytes",
        CONSOLE_PROBE_LINE.len()
    ));
    // Exactly the line, once: the device took the chain and the console process wrote it.
    let log = log.expect("console file written");
    assert_eq!(
        String::from_utf8_lossy(&log),
        CONSOLE_PROBE_LINE,
        "console file {}",
        path.display()
    );
}

/// `bulkhead run --config FILE` whose `"transport"` field names `t`: the guest has its
/// devices there.
fn the_config_file_chooses_the_transport(t: Transport) {
    require_kvm!();
    let dir = std::env::temp_dir();
    let config = dir.join(format!("bulkhead-config-{t}-{}.json", std::process::id()));
    let console = dir.join(format!("bulkhead-config-{t}-{}.log", std::process::id()));
    let text = format!(
        r#"{{"transport": "{t}", "console": "file={}"}}"#,
        console.display()
    );
    std::fs::write(&config, text).unwrap();
    let out = run(&["--config", &config.display().to_string()]);
    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_file(&console);
    assert_eq!(out.code(), 0, "{out:#?}");
    one_pass_line_per_probe(&out);
    assert_eq!(devices_found(&out, t), 1, "the console");
}

on_both_transports!(
    default_self_test_passes,
    every_device_is_found_and_passes,
    console_probe_writes_to_a_console_file,
    the_config_file_chooses_the_transport,
);

/// How many virtio devices the guest found, checking it found them on transport `t` and
/// only there: on mmio at the slots its command line and ACPI name, on pci device i at
/// 00:(i+1).0 (after the host bridge at 00:00.0).
fn devices_found(out: &common::Output, t: Transport) -> usize {
    common::transport::assert_guest_used(t, &out.stdout);
    let mmio = acpi_devices_match_the_command_line(out);
    let found = common::transport::guest_transport::devices(&out.stdout);
    if t == Transport::Pci {
        for (i, (name, _, at)) in found.iter().enumerate() {
            assert_eq!(at, &format!("00:{:02x}.0", i + 1), "{name}: {out:#?}");
        }
    }
    let n = match t {
        Transport::Mmio => mmio,
        Transport::Pci => found.len(),
    };
    assert_eq!(found.len(), n, "devices listed by the probes: {found:?}");
    n
}

/// The guest found in the ACPI DSDT exactly the virtio-mmio devices its command line
/// announces, in the same order, at the same base and IRQ, `_UID` its index, a 4 KiB
/// read-write window and an edge-triggered, active-high interrupt; returns how many.
fn acpi_devices_match_the_command_line(out: &common::Output) -> usize {
    let cmdline = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("bulkhead-guest: boot cmdline="))
        .unwrap_or_else(|| panic!("no boot line:\n{}", out.stdout));
    let want: Vec<String> = cmdline
        .trim_matches('"')
        .split(' ')
        .filter_map(|t| t.strip_prefix("virtio_mmio.device=4K@"))
        .enumerate()
        .map(|(uid, at)| {
            let (base, irq) = at.split_once(':').expect("base:irq");
            format!(
                "acpi virtio-mmio uid={uid} base={base} size=0x1000 rw irq={irq} edge active-high"
            )
        })
        .collect();
    let found: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("bulkhead-guest: "))
        .filter(|l| l.starts_with("acpi virtio-mmio uid="))
        .collect();
    assert_eq!(found, want, "stdout:\n{}", out.stdout);
    out.assert_line(&format!(
        "bulkhead-guest: acpi virtio-mmio devices={}",
        want.len()
    ));
    want.len()
}

#[test]
fn guest_sees_the_command_line() {
    require_kvm!();
    let out = run(&["--cmdline", "console=ttyS0 bulkhead.test=cpus marker=42"]);
    assert_eq!(out.code(), 0, "{out:#?}");
    out.assert_line(r#"bulkhead-guest: boot cmdline="console=ttyS0 bulkhead.test=cpus marker=42""#);
    out.assert_line("bulkhead-guest: PASS cpus");
    assert!(
        !out.stdout.contains("PASS memory"),
        "only the named scenario runs"
    );
}

#[test]
fn every_vcpu_reports_in() {
    require_kvm!();
    for cpus in ["2", "4"] {
        let out = run(&[
            "--cpus",
            cpus,
            "--cmdline",
            &format!("bulkhead.cpus={cpus}"),
        ]);
        assert_eq!(out.code(), 0, "{out:#?}");
        out.assert_line(&format!("bulkhead-guest: ready cpus={cpus} mem=256M"));
        out.assert_line("bulkhead-guest: PASS cpus");
    }
}

#[test]
fn memory_size_reaches_the_guest() {
    require_kvm!();
    let out = run(&["--memory", "64"]);
    assert_eq!(out.code(), 0, "{out:#?}");
    out.assert_line("bulkhead-guest: ready cpus=1 mem=64M");
    // Above the 3 GiB MMIO gap, RAM continues at 4 GiB.
    let out = run(&["--memory", "4096", "--cmdline", "bulkhead.test=memory"]);
    assert_eq!(out.code(), 0, "{out:#?}");
    out.assert_line("bulkhead-guest: ready cpus=1 mem=4096M");
    out.assert_line("bulkhead-guest: PASS memory");
}

#[test]
fn failing_scenario_sets_the_exit_status() {
    require_kvm!();
    let out = run(&["--cmdline", "bulkhead.test=fail"]);
    assert_eq!(out.code(), 1, "{out:#?}");
    assert!(
        out.stdout.contains("bulkhead-guest: FAIL fail"),
        "{}",
        out.stdout
    );
    out.assert_line("bulkhead-guest: done status=1");
}

#[test]
fn unknown_scenario_is_a_command_line_error() {
    require_kvm!();
    let out = run(&["--cmdline", "bulkhead.test=nonsense"]);
    assert_eq!(out.code(), 2, "{out:#?}");
    assert!(
        out.stdout
            .contains(r#"FAIL cmdline: unknown scenario "nonsense""#),
        "{}",
        out.stdout
    );
}

#[test]
fn guest_exception_is_reported() {
    require_kvm!();
    let out = run(&["--cmdline", "bulkhead.test=exception"]);
    assert_eq!(out.code(), 3, "{out:#?}");
    // The fault the guest provoked, exactly: a page fault (14) on a user-mode read of a
    // non-present page (error 0x4: not present, read, CPL3) at 0xbad, from some code
    // address.
    let report = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("bulkhead-guest: FAIL exception "))
        .unwrap_or_else(|| panic!("no exception report:\n{}", out.stdout));
    let fields: Vec<&str> = report.split(' ').collect();
    assert_eq!(fields.len(), 4, "{report}");
    assert_eq!(
        [fields[0], fields[1], fields[3]],
        ["vector=14", "error=0x4", "cr2=0xbad"],
        "{report}"
    );
    let rip = fields[2]
        .strip_prefix("rip=0x")
        .and_then(|r| u64::from_str_radix(r, 16).ok());
    assert!(rip.is_some_and(|r| r != 0), "{report}");
}

#[test]
fn serial_to_a_file() {
    require_kvm!();
    let path = std::env::temp_dir().join(format!("bulkhead-serial-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let arg = format!("file={}", path.display());
    let out = run(&["--serial", &arg]);
    assert_eq!(out.code(), 0, "{out:#?}");
    assert!(
        !out.stdout.contains("bulkhead-guest"),
        "output went to stdout: {}",
        out.stdout
    );
    let log = std::fs::read_to_string(&path).expect("serial log written");
    assert!(log.contains("bulkhead-guest: done status=0"), "{log}");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn serial_off_still_reports_the_status() {
    require_kvm!();
    let out = run(&["--serial", "off", "--cmdline", "bulkhead.test=fail"]);
    assert_eq!(out.code(), 1, "{out:#?}");
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}
