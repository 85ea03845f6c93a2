//! Tests of the rule on real directories, chown'd to made-up users (as root).

use super::*;
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, MetadataExt};

/// A made-up unprivileged owner.
const MALLORY: u32 = 4242;
const ALICE: u32 = 4343;

/// A fresh directory under the target dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "bulkhead-safe-open-{}-{tag}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// A directory in it owned by `uid`.
    fn home(&self, name: &str, uid: u32) -> PathBuf {
        let p = self.0.join(name);
        std::fs::create_dir(&p).unwrap();
        chown(&p, uid);
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
}

fn root() -> bool {
    let root = nix::unistd::geteuid().as_raw() == 0;
    if !root {
        eprintln!("skipped: needs root (chown)");
    }
    root
}

fn write(p: &Path, bytes: &[u8], uid: u32) {
    std::fs::write(p, bytes).unwrap();
    chown(p, uid);
}

fn read_all(mut f: File) -> Vec<u8> {
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    v
}

#[test]
fn a_users_symlink_to_roots_file_is_refused() {
    if !root() {
        return;
    }
    let s = Scratch::new("root-file");
    let secret = s.0.join("secret.img");
    write(&secret, b"root only", 0);
    let home = s.home("mallory", MALLORY);
    let link = home.join("vm.img");
    symlink(&secret, &link).unwrap();
    chown(&link, MALLORY);
    for access in [Access::Read, Access::ReadWrite, Access::Append] {
        let e = open(&link, access).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(
                e,
                SafeOpenError::UnsafeTransition {
                    from_uid: MALLORY,
                    to_uid: 0,
                    ..
                }
            ),
            "{msg}"
        );
        assert!(msg.contains(link.to_str().unwrap()), "{msg}");
        assert!(msg.contains("uid 4242") && msg.contains("uid 0"), "{msg}");
    }
    // A relative symlink, out through "..", is refused too.
    let rel = home.join("rel.img");
    symlink("../secret.img", &rel).unwrap();
    chown(&rel, MALLORY);
    assert!(matches!(
        open(&rel, Access::Read),
        Err(SafeOpenError::UnsafeTransition { .. })
    ));
    assert_eq!(std::fs::read(&secret).unwrap(), b"root only");
}

#[test]
fn a_users_own_files_open() {
    if !root() {
        return;
    }
    let s = Scratch::new("own");
    let home = s.home("mallory", MALLORY);
    let img = home.join("vm.img");
    write(&img, b"mine", MALLORY);
    assert_eq!(read_all(open(&img, Access::Read).unwrap()), b"mine");
    // Her relative symlink to her own file, in a subdirectory of hers.
    let sub = home.join("sub");
    std::fs::create_dir(&sub).unwrap();
    chown(&sub, MALLORY);
    let link = sub.join("link.img");
    symlink("../vm.img", &link).unwrap();
    chown(&link, MALLORY);
    assert_eq!(read_all(open(&link, Access::Read).unwrap()), b"mine");
    // Appending creates a missing file (root's, mode 0600) in her directory.
    let log = home.join("serial.log");
    open(&log, Access::Append).unwrap().write_all(b"x").unwrap();
    let meta = std::fs::metadata(&log).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600));
    assert_eq!(
        open(&home, Access::Directory)
            .unwrap()
            .metadata()
            .unwrap()
            .uid(),
        MALLORY
    );
}

#[test]
fn root_owned_symlinks_are_followed() {
    if !root() {
        return;
    }
    let s = Scratch::new("root-links");
    let dir = s.0.join("by-id");
    std::fs::create_dir(&dir).unwrap();
    let img = s.0.join("disk.img");
    write(&img, b"disk", 0);
    let link = dir.join("disk-1");
    symlink("../disk.img", &link).unwrap();
    assert_eq!(read_all(open(&link, Access::Read).unwrap()), b"disk");
    // Root's symlink to mallory's file is fine as well (root vouches).
    let home = s.home("mallory", MALLORY);
    write(&home.join("m.img"), b"m", MALLORY);
    let to_m = s.0.join("to-m");
    symlink(home.join("m.img"), &to_m).unwrap();
    assert_eq!(read_all(open(&to_m, Access::Read).unwrap()), b"m");
}

#[test]
fn another_users_file_in_a_users_directory_is_refused() {
    if !root() {
        return;
    }
    let s = Scratch::new("other");
    let home = s.home("mallory", MALLORY);
    let alices = home.join("alice.img");
    write(&alices, b"alice", ALICE);
    let e = open(&alices, Access::Read).unwrap_err();
    assert!(
        matches!(
            e,
            SafeOpenError::UnsafeTransition {
                from_uid: MALLORY,
                to_uid: ALICE,
                ..
            }
        ),
        "{e}"
    );
    // Unless mallory is the one opening it.
    assert!(open_as(&alices, Access::Read, MALLORY).is_ok());
}

#[test]
fn a_hard_link_to_another_users_file_is_refused() {
    if !root() {
        return;
    }
    let s = Scratch::new("hardlink");
    let secret = s.0.join("secret.img");
    write(&secret, b"root only", 0);
    let home = s.home("mallory", MALLORY);
    let link = home.join("vm.img");
    std::fs::hard_link(&secret, &link).unwrap();
    // The file itself is root's: the walk's step refuses it first. A hard link to a
    // file of mallory's own in alice's directory is the case only the link count
    // catches.
    assert!(open(&link, Access::ReadWrite).is_err());
    let alice = s.home("alice", ALICE);
    let m = home.join("m.img");
    write(&m, b"m", MALLORY);
    let in_alice = alice.join("m.img");
    std::fs::hard_link(&m, &in_alice).unwrap();
    // Walking alice's directory to mallory's file is already a refused step; as alice
    // opening it, the link count is what refuses it.
    let e = open_as(&in_alice, Access::Read, ALICE).unwrap_err();
    assert!(matches!(e, SafeOpenError::HardLink { links: 2, .. }), "{e}");
    assert_eq!(std::fs::read(&secret).unwrap(), b"root only");
}

#[test]
fn symlink_loops_end() {
    let s = Scratch::new("loop");
    let a = s.0.join("a");
    symlink("b", &a).unwrap();
    symlink("a", s.0.join("b")).unwrap();
    assert!(matches!(
        open(&a, Access::Read),
        Err(SafeOpenError::TooManySymlinks { .. })
    ));
}

#[test]
fn socket_directories_follow_the_rule() {
    if !root() {
        return;
    }
    let s = Scratch::new("sock");
    let home = s.home("mallory", MALLORY);
    let etc = s.0.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let link = home.join("run");
    symlink(&etc, &link).unwrap();
    chown(&link, MALLORY);
    assert!(matches!(
        bind_socket(&link.join("c.sock"), true),
        Err(SafeOpenError::UnsafeTransition { .. })
    ));
    let bound = bind_socket(&home.join("c.sock"), false).unwrap();
    assert!(home.join("c.sock").exists());
    // A second bind finds it there; replacing a stale socket works.
    assert!(bind_socket(&home.join("c.sock"), false).is_err());
    assert!(connect_socket(&home.join("c.sock")).is_ok());
    assert!(matches!(
        connect_socket(&link.join("c.sock")),
        Err(SafeOpenError::UnsafeTransition { .. })
    ));
    drop(bound);
    assert!(bind_socket(&home.join("c.sock"), true).is_ok());
}

#[test]
fn missing_paths_and_directories_say_so() {
    let s = Scratch::new("missing");
    let e = open(&s.0.join("nope"), Access::Read).unwrap_err();
    assert_eq!(e.io_kind(), Some(io::ErrorKind::NotFound), "{e}");
    assert!(e.to_string().contains("nope"), "{e}");
    assert!(open(&s.0, Access::Read).is_err());
    assert!(open(Path::new("."), Access::Directory).is_ok());
}

#[test]
fn a_socket_is_bound_with_mode_0600_whatever_the_umask() {
    let s = Scratch::new("socket-mode");
    let path = s.0.join("m.sock");
    let (_listener, _file) = bind_socket(&path, false).unwrap().removed_on_drop(&path);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o777, 0o600);
}

#[test]
fn a_socket_file_is_removed_only_while_it_is_the_one_bound() {
    let s = Scratch::new("socket-file");
    let path = s.0.join("c.sock");
    // Still ours: removed.
    let (_listener, file) = bind_socket(&path, false).unwrap().removed_on_drop(&path);
    drop(file);
    let ours_removed = std::fs::symlink_metadata(&path).is_err();
    // Replaced by another socket of the same name, then by a symlink to a socket: kept,
    // and the link's target too.
    let (_listener, file) = bind_socket(&path, false).unwrap().removed_on_drop(&path);
    std::fs::remove_file(&path).unwrap();
    let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let other_kept = !file.remove().unwrap() && std::fs::symlink_metadata(&path).is_ok();
    let target = s.0.join("target.sock");
    let _target = std::os::unix::net::UnixListener::bind(&target).unwrap();
    let _ = std::fs::remove_file(&path); // (gone already if the check above failed)
    symlink(&target, &path).unwrap();
    drop(file);
    let link_kept = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
    let target_kept = target.exists();
    assert!(ours_removed, "the socket bound is removed");
    assert!(other_kept, "another socket at the path is kept");
    assert!(
        link_kept && target_kept,
        "a link at the path is kept, and what it names"
    );
}

#[test]
fn a_fifo_is_refused_without_blocking() {
    if !root() {
        return;
    }
    let s = Scratch::new("fifo");
    let home = s.home("mallory", MALLORY);
    let fifo = home.join("serial.log");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    chown(&fifo, MALLORY);
    // On a thread: a regression would block in open(2) with no reader, not fail.
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || {
        let results: Vec<bool> = [Access::Append, Access::Read, Access::ReadWrite]
            .into_iter()
            .map(|a| open(&path, a).is_err())
            .collect();
        let _ = tx.send(results);
    });
    let refused = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("opening a FIFO blocked");
    assert_eq!(refused, [true, true, true], "a FIFO was opened");
    // Regular files still open writable, without O_NONBLOCK left on them.
    let log = home.join("ok.log");
    write(&log, b"", MALLORY);
    let f = open(&log, Access::Append).unwrap();
    let fl = nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GETFL).unwrap();
    assert_eq!(fl & libc::O_NONBLOCK, 0);
    assert_ne!(fl & libc::O_APPEND, 0);
}
