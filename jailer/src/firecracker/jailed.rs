//! When `bulkhead-jailer` (Firecracker's jailer contract) started this process: the jail's
//! chroot (`<chroot-base-dir>/<exec-file name>/<id>/root`), against which the paths of API
//! requests are resolved as Firecracker's chrooted process would see them, and the identity
//! the orchestrator made the chroot's files readable by (the launcher opens them as it,
//! `bulkhead run --open-as`). Both come in the environment the jailer sets, so that
//! Firecracker's own command line stays exactly Firecracker's.

use std::path::{Component, Path, PathBuf};

/// The chroot directory, set by `bulkhead-jailer`.
pub const CHROOT_ENV: &str = "BULKHEAD_FC_CHROOT";
/// `UID:GID` (the jailer's `--uid`/`--gid`), set by `bulkhead-jailer`.
pub const OPEN_AS_ENV: &str = "BULKHEAD_FC_OPEN_AS";

/// The chroot, if jailed.
pub fn chroot() -> Option<PathBuf> {
    std::env::var_os(CHROOT_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `path` as the jailed process sees it: inside the chroot, `..` never leaving it (a
/// relative path is relative to the chroot's root, Firecracker's working directory).
pub fn resolve(path: &Path) -> PathBuf {
    match chroot() {
        Some(root) => resolve_in(&root, path),
        None => path.to_owned(),
    }
}

/// `path` inside `root`.
pub fn resolve_in(root: &Path, path: &Path) -> PathBuf {
    let mut inside = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => inside.push(n),
            Component::ParentDir => {
                inside.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    root.join(inside)
}

/// `bulkhead run`'s `--open-as` value, if jailed with an identity.
pub fn open_as() -> Option<String> {
    std::env::var(OPEN_AS_ENV).ok().filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_chroot() {
        // Only this test sets the variable in this process.
        std::env::set_var(CHROOT_ENV, "/srv/j/root");
        assert_eq!(
            resolve(Path::new("/vmlinux")),
            Path::new("/srv/j/root/vmlinux")
        );
        assert_eq!(resolve(Path::new("a/b")), Path::new("/srv/j/root/a/b"));
        assert_eq!(
            resolve(Path::new("/../../etc/passwd")),
            Path::new("/srv/j/root/etc/passwd")
        );
        std::env::remove_var(CHROOT_ENV);
        assert_eq!(resolve(Path::new("/vmlinux")), Path::new("/vmlinux"));
    }
}
