//! `bulkhead-vmm`: the vCPU process (code in `bulkhead_vmm::process`).

fn main() {
    std::process::exit(bulkhead_vmm::process::main(std::env::args_os()));
}
