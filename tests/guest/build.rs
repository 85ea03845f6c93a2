//! Link the guest as a freestanding static ELF (ET_EXEC) at 0x200000.
//!
//! The default linker driver is cc with rust-lld; lld takes `--image-base` (it rejects
//! GNU ld's `-Ttext-segment`). See README.md, "Building".

fn main() {
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--image-base=0x200000",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
