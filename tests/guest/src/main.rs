//! bulkhead-guest: a freestanding x86-64 test guest for the bulkhead VMM.
//!
//! Booted like a Linux `vmlinux` (64-bit boot protocol: long mode, RSI = zero page), it
//! sets itself up at CPL0 in a few dozen assembly instructions (`entry.rs`), then does all
//! real work in Rust at CPL3, where the development hosts run it natively: reads the zero
//! page, builds its page tables, starts every CPU the MP table lists, runs the scenarios the
//! command line asks for, prints one line per result on COM1 and powers off with an exit
//! status. See README.md for the boot contract, the line format and the scenarios.

#![no_std]
#![no_main]

mod disks;
mod entry;
mod exceptions;
mod frames;
mod gates;
mod gdt;
mod idt;
mod ioapic;
mod lapic;
mod machine;
mod mem;
mod mmio;
mod nics;
mod paging;
mod pcibus;
mod phys;
mod scenarios;
mod serial;
mod smp;
mod status;
mod sync;
mod time;
mod vsocks;

// The host-testable half of the guest (src/lib.rs), used here as if it were local modules.
use bulkhead_guest::{
    acpi, bootparams, cmdline, escape, layout, mptable, net, pci, scenario, soak, virtio,
};

use core::fmt::Display;
use escape::Escaped;
use frames::Frames;
use machine::Machine;
use status::{finish, Status};

/// Where the boot CPU arrives at CPL3 (from `entry.rs`), `.bss` cleared.
pub extern "C" fn bsp_main(zero_page: u64) -> ! {
    idt::init();
    serial::init();
    time::init();
    let boot = phys::boot_params(zero_page).unwrap_or_else(|e| boot_failed(e));
    let mut frames = Frames::new(&boot.e820).unwrap_or_else(|e| boot_failed(e));
    paging::build(&boot.e820, &mut frames).unwrap_or_else(|e| boot_failed(e));
    let line = phys::command_line(&boot.e820, boot.cmdline).unwrap_or_else(|e| boot_failed(e));
    say!("boot cmdline=\"{}\"", Escaped(line));
    let config = cmdline::parse(line).unwrap_or_else(|e| {
        say!("FAIL cmdline: {e}");
        finish(Status::BadCommandLine)
    });

    smp::init_bsp();
    let mp = mptable::find(|addr, len| phys::bytes(&boot.e820, addr, len));
    let smp = match &mp {
        Ok(mp) => smp::start_aps(mp, &mut frames, &boot.e820),
        Err(_) => Ok(()),
    };
    say!(
        "ready cpus={} mem={}M",
        smp::online(),
        machine::mib_rounded_up(boot.e820.ram_total())
    );
    if let Some(stopped) = mp.as_ref().ok().and_then(|mp| mp.stopped()) {
        say!("mptable: {stopped}");
    }
    report_acpi_devices(&boot.e820, boot.acpi_rsdp);
    find_ecam(&boot.e820, boot.acpi_rsdp);

    let mut machine = Machine {
        e820: boot.e820,
        config,
        mp,
        smp,
        frames,
    };
    let list = machine.config.scenarios.take();
    let scenarios = list
        .as_ref()
        .map_or(&scenario::DEFAULT[..], |l| l.as_slice());
    let mut status = Status::Pass;
    for &scenario in scenarios {
        match scenarios::run(scenario, &mut machine) {
            Ok(None) => say!("PASS {}", scenario.name()),
            Ok(Some(counts)) => say!("PASS {} {counts}", scenario.name()),
            Err(why) => {
                say!("FAIL {}: {why}", scenario.name());
                status = Status::Fail;
            }
        }
    }
    finish(status)
}

/// Lists the virtio-mmio devices the ACPI DSDT describes, one `acpi virtio-mmio` line each
/// and their count, for the end-to-end tests to compare with the command line's. Not a
/// check of its own: a VMM without ACPI (or without devices) is no failure here.
fn report_acpi_devices(e820: &bootparams::E820, rsdp: u64) {
    match acpi::virtio_mmio_devices(|addr, len| phys::bytes(e820, addr, len), rsdp) {
        Ok(found) => {
            for device in found.as_slice() {
                say!("acpi virtio-mmio {device}");
            }
            say!("acpi virtio-mmio devices={}", found.as_slice().len());
        }
        Err(why) => say!("acpi virtio-mmio none: {why}"),
    }
}

/// Finds PCI bus 0's ECAM the way a kernel does (RSDP, XSDT, MCFG), prints `acpi mcfg
/// base=0x<b> buses=<first>..=<last>` (or `acpi mcfg none: <why>`) and hands it to the
/// device registry, which scans the bus when a device scenario first runs. No MCFG is no
/// failure: the devices are then virtio-mmio ones only.
fn find_ecam(e820: &bootparams::E820, rsdp: u64) {
    match acpi::mcfg(|addr, len| phys::bytes(e820, addr, len), rsdp) {
        Ok(ecam) => {
            say!(
                "acpi mcfg base={:#x} buses={}..={}",
                ecam.base,
                ecam.start_bus,
                ecam.end_bus
            );
            disks::lock().set_ecam(ecam);
        }
        Err(why) => say!("acpi mcfg none: {why}"),
    }
}

/// The VMM broke the boot contract: say how, exit with status 1.
fn boot_failed(why: impl Display) -> ! {
    say!("FAIL boot: {why}");
    finish(Status::Fail)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    if !exceptions::claim_fatal() {
        gates::power_off(Status::Crash as u8);
    }
    match info.location() {
        Some(at) => serial::line_fatal(format_args!(
            "FAIL panic: {} at {}:{}",
            info.message(),
            at.file(),
            at.line()
        )),
        None => serial::line_fatal(format_args!("FAIL panic: {}", info.message())),
    }
    status::finish_fatal(Status::Crash)
}

/// Personality routine that the prebuilt `core` (compiled for unwinding) refers to from
/// its unwind tables. Never called: with `panic = "abort"` nothing unwinds.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
