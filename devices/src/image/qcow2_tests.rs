//! The header checks as the qcow2 driver makes them (naming the file) and the memory bound
//! it computes; each field's check is tested with the parser (`qcow2_header/tests.rs`).

use super::*;
use crate::image::qcow2_header::tests::{image, CLUSTER};
use crate::image::test_file::file_with;

fn layer(bytes: &[u8]) -> Layer {
    Layer {
        name: "/img".into(),
        file: file_with(bytes),
        format: ImageFormat::Qcow2,
    }
}

#[test]
fn a_sound_header_passes_with_its_memory_bound() {
    let info = check_header(&layer(&image(1 << 40, &[], None))).unwrap();
    assert_eq!(info.virtual_size, 1 << 40);
    // 128 L2 tables + 32 refcount blocks of 64 KiB, a 16 KiB L1, a 64 KiB refcount table.
    assert_eq!(metadata_bound(&info, true), 160 * CLUSTER + 16384 + CLUSTER);
    assert_eq!(metadata_bound(&info, false), 128 * CLUSTER + 16384);
}

#[test]
fn a_refused_header_names_the_file() {
    // Unreadable (the parse) and not served (the serving checks): both name the file.
    for (at, byte, want) in [(7, 4u8, "version is 4"), (79, 1, "the dirty bit")] {
        let mut h = image(1 << 30, &[], None);
        h[at] = byte;
        let e = check_header(&layer(&h)).unwrap_err().to_string();
        assert!(
            e.starts_with("disk image /img: ") && e.contains(want),
            "{e}"
        );
    }
}
