//! Raw vCPU tests: a few bytes of guest code run on a real KVM vCPU until they stop the VM,
//! and the test checks what reached the port bus. They exercise the vCPU set-up and the
//! exit path without a kernel; they skip (with a message) where /dev/kvm is missing.

#[path = "../../tests/common/elf.rs"]
mod elf;

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use bulkhead_vmm::boot::{BootConfig, KernelImage};
use bulkhead_vmm::builder;
use bulkhead_vmm::config::{SerialOutput, VmConfig};
use bulkhead_vmm::devices::bus::Bus;
use bulkhead_vmm::devices::exit_port::{ExitPort, EXIT_PORT};
use bulkhead_vmm::devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use bulkhead_vmm::devices::serial::{SerialDevice, COM1_BASE, COM1_LEN};
use bulkhead_vmm::devices::VmStop;
use bulkhead_vmm::kvm::run_loop::{handle_exit, ExitAction, IoBuses};
use bulkhead_vmm::kvm::vm;
use bulkhead_vmm::memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

fn kvm_missing() -> bool {
    if std::fs::metadata("/dev/kvm").is_err() {
        eprintln!("SKIPPED: no /dev/kvm");
        return true;
    }
    false
}

/// A writer the test can read back.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);
impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `code` in real mode at 0x1000 on one vCPU with the legacy devices; returns why it
/// stopped and what it wrote to the UART.
fn run_real_mode(code: &[u8]) -> (VmStop, Vec<u8>) {
    let kvm = vm::open_kvm().expect("KVM");
    let memory = GuestMemory::new(1 << 20).expect("memory");
    let vm_fd = vm::create(&kvm, &memory.mem).expect("VM");
    memory
        .mem
        .write_slice(code, GuestAddress(0x1000))
        .expect("code");
    let out = Capture::default();
    let mut io = IoBuses::default();
    let serial = SerialDevice::new(EventFd::new(0).unwrap(), Box::new(out.clone()));
    io.pio
        .insert(COM1_BASE, COM1_LEN, Arc::new(Mutex::new(serial)))
        .unwrap();
    io.pio
        .insert(
            I8042_BASE,
            I8042_LEN,
            Arc::new(Mutex::new(I8042::default())),
        )
        .unwrap();
    io.pio
        .insert(EXIT_PORT, 1, Arc::new(Mutex::new(ExitPort)))
        .unwrap();
    let mut vcpu = vm_fd.create_vcpu(0).expect("vCPU");
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = 0x1000;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    for _ in 0..1000 {
        let exit = vcpu.run().expect("KVM_RUN");
        if let ExitAction::Stop(s) = handle_exit(0, exit, &io) {
            let bytes = out.0.lock().unwrap().clone();
            return (s, bytes);
        }
    }
    panic!("guest code did not stop the VM");
}

#[test]
fn exit_port_carries_the_status() {
    if kvm_missing() {
        return;
    }
    // mov al, 0x42; out 0xf4, al; hlt
    let (stop, _) = run_real_mode(&[0xb0, 0x42, 0xe6, 0xf4, 0xf4]);
    assert_eq!(stop, VmStop::GuestStatus(0x42));
}

#[test]
fn uart_output_reaches_the_host() {
    if kvm_missing() {
        return;
    }
    let mut code = vec![0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in b"hi\n" {
        code.extend_from_slice(&[0xb0, *b, 0xee]); // mov al, b; out dx, al
    }
    code.extend_from_slice(&[0xb0, 0x00, 0xe6, 0xf4]); // exit 0
    let (stop, out) = run_real_mode(&code);
    assert_eq!(stop, VmStop::GuestStatus(0));
    assert_eq!(out, b"hi\n");
}

#[test]
fn i8042_reset_stops_the_vm() {
    if kvm_missing() {
        return;
    }
    // mov al, 0xfe; out 0x64, al; hlt
    let (stop, _) = run_real_mode(&[0xb0, 0xfe, 0xe6, 0x64, 0xf4]);
    assert_eq!(stop, VmStop::Reset);
}

/// Boots `code` as an ELF kernel at 1 MiB through the whole builder.
fn boot_elf(code: &[u8], cpus: u8) -> VmStop {
    let image: &'static [u8] = Box::leak(elf::elf_with_code(0x10_0000, code).into_boxed_slice());
    let config = VmConfig {
        memory_mib: 64,
        cpus,
        boot: BootConfig {
            kernel: KernelImage::Embedded("raw test kernel", image),
            initrd: None,
            cmdline: "raw".into(),
        },
        serial: SerialOutput::Off,
        serial_input: false,
        devices: Vec::new(),
        transport: Default::default(),
        kvm_cpuid: None,
    };
    let mut vm = builder::build(config).expect("building the VM");
    vm.run().expect("running the VM")
}

#[test]
fn long_mode_entry_with_the_zero_page_in_rsi() {
    if kvm_missing() {
        return;
    }
    // mov al, [rsi + 0x1e8] (e820_entries); out 0xf4, al; hlt
    let code = [0x8a, 0x86, 0xe8, 0x01, 0x00, 0x00, 0xe6, 0xf4, 0xf4];
    assert_eq!(boot_elf(&code, 1), VmStop::GuestStatus(3));
}

#[test]
fn long_mode_entry_reads_the_command_line() {
    if kvm_missing() {
        return;
    }
    // mov eax, [rsi + 0x228] (cmd_line_ptr); mov al, [rax]; out 0xf4, al; hlt
    let code = [
        0x8b, 0x86, 0x28, 0x02, 0x00, 0x00, 0x8a, 0x00, 0xe6, 0xf4, 0xf4,
    ];
    assert_eq!(boot_elf(&code, 2), VmStop::GuestStatus(b'r'));
}

#[test]
fn unmapped_port_reads_do_not_stop_the_guest() {
    if kvm_missing() {
        return;
    }
    // in al, 0x99 (nobody there: reads 0xff); out 0xf4, al
    let (stop, _) = run_real_mode(&[0xe4, 0x99, 0xe6, 0xf4, 0xf4]);
    assert_eq!(stop, VmStop::GuestStatus(0xff));
}

#[test]
fn bus_rejects_a_second_device_on_a_port() {
    let mut bus = Bus::default();
    bus.insert(EXIT_PORT, 1, Arc::new(Mutex::new(ExitPort)))
        .unwrap();
    assert!(bus
        .insert(EXIT_PORT, 1, Arc::new(Mutex::new(ExitPort)))
        .is_err());
}
