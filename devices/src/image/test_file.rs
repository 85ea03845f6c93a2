//! For unit tests: a scratch file with given bytes, unlinked at once (it goes with its
//! descriptor).

use std::fs::File;
use std::io::Write;

/// An unlinked file holding `bytes`, named per process and thread while it is created.
pub fn file_with(bytes: &[u8]) -> File {
    let path = std::env::temp_dir().join(format!(
        "bulkhead-image-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f.write_all(bytes).unwrap();
    f
}
