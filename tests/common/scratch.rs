//! A scratch directory for one test, removed when the test is done with it.

use std::path::PathBuf;

/// The directory `bulkhead-<test>-<tag>-<pid>` under the temporary directory, made empty;
/// removed (with what it holds) on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    /// Makes it afresh: `test` names the test binary, `tag` the run within it.
    pub fn new(test: &str, tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("bulkhead-{test}-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("creating the scratch directory");
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
