//! End to end: a path a local user controls never makes bulkhead (root) hand the guest a
//! file that user could not reach. A real unprivileged owner (uid 4242) owns a directory
//! with a symlink in it to a root-only file; `--disk`, `--console file=`, `--serial file=`,
//! `--kernel`, `--initrd`, `--api-socket`, `--console socket=` and `--disk socket=` through
//! it are refused, naming the path, and the root file is unchanged. The user's own file in her own directory still works.

mod common;

use std::os::unix::fs::{lchown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);
const EXIT_FAILED: i32 = 125;
/// The unprivileged owner of the directory.
const MALLORY: u32 = 4242;
/// The guest writes this sector range (`blk-rw`).
const GUEST_WRITES: &str = "bulkhead.test=blk-rw bulkhead.blk.rw=8:8";

/// A scratch tree: `root/` (root's, 0700) with a root-only file, and `home/` (mallory's,
/// 0755). Removed on drop.
struct Tree {
    top: PathBuf,
    secret: PathBuf,
    secret_bytes: Vec<u8>,
    home: PathBuf,
}

impl Tree {
    fn new(tag: &str) -> Tree {
        let top =
            std::env::temp_dir().join(format!("bulkhead-hardening-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        let root = top.join("root");
        let home = top.join("home");
        std::fs::create_dir_all(&root).expect("scratch dir");
        std::fs::create_dir(&home).expect("home dir");
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        lchown(&home, Some(MALLORY), Some(MALLORY)).expect("chown home");
        // A valid image (a whole number of sectors) with known bytes.
        let secret_bytes: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
        let secret = root.join("secret.img");
        std::fs::write(&secret, &secret_bytes).expect("writing the root file");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        Tree {
            top,
            secret,
            secret_bytes,
            home,
        }
    }

    /// A symlink `name` in mallory's home, owned by her, to the root file.
    fn link(&self, name: &str) -> PathBuf {
        let link = self.home.join(name);
        symlink(&self.secret, &link).expect("symlink");
        lchown(&link, Some(MALLORY), Some(MALLORY)).expect("lchown");
        link
    }

    fn assert_secret_unchanged(&self) {
        let now = std::fs::read(&self.secret).expect("reading the root file");
        assert!(now == self.secret_bytes, "the root file changed");
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.top);
    }
}

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        common::skip::skip_or_fail(
            common::skip::SkipKind::NotPermitted,
            "needs root (a directory owned by another user)",
        );
    }
    root
}

fn run(args: &[&str]) -> common::Output {
    common::run_vm(args, DEADLINE)
}

/// Asserts `out` is the refusal of `path` for the unsafe step from mallory's symlink to
/// root's objects.
fn assert_refused(out: &common::Output, path: &Path) {
    assert_eq!(out.code(), EXIT_FAILED, "{out:#?}");
    let path = path.display().to_string();
    for needle in [path.as_str(), "refused", "uid 4242", "uid 0"] {
        assert!(
            out.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            out.stderr
        );
    }
}

#[test]
fn a_disk_symlinked_to_a_root_file_is_refused() {
    require_kvm!();
    if !root() {
        return;
    }
    let tree = Tree::new("disk");
    let link = tree.link("vm.img");
    let disk = format!("path={}", link.display());
    let out = run(&["--disk", &disk, "--cmdline", GUEST_WRITES]);
    tree.assert_secret_unchanged();
    assert_refused(&out, &link);
}

#[test]
fn a_users_own_disk_in_her_directory_works() {
    require_kvm!();
    if !root() {
        return;
    }
    let tree = Tree::new("own-disk");
    let img = tree.home.join("vm.img");
    std::fs::write(&img, &tree.secret_bytes).expect("writing her image");
    lchown(&img, Some(MALLORY), Some(MALLORY)).expect("chown");
    let disk = format!("path={}", img.display());
    let out = run(&["--disk", &disk, "--cmdline", GUEST_WRITES]);
    assert_eq!(out.code(), 0, "{out:#?}");
    // The guest wrote its pattern into her image.
    assert!(
        std::fs::read(&img).expect("reading her image") != tree.secret_bytes,
        "the guest's writes did not reach her image"
    );
    tree.assert_secret_unchanged();
}

#[test]
fn console_and_serial_files_symlinked_to_a_root_file_are_refused() {
    require_kvm!();
    if !root() {
        return;
    }
    let tree = Tree::new("files");
    let console = tree.link("console.log");
    let out = run(&[
        "--console",
        &format!("file={}", console.display()),
        "--cmdline",
        "bulkhead.test=console-write bulkhead.console.lines=10",
    ]);
    tree.assert_secret_unchanged();
    assert_refused(&out, &console);
    let serial = tree.link("serial.log");
    let out = run(&["--serial", &format!("file={}", serial.display())]);
    tree.assert_secret_unchanged();
    assert_refused(&out, &serial);
}

#[test]
fn a_kernel_symlinked_to_a_root_file_is_refused() {
    require_kvm!();
    if !root() {
        return;
    }
    let tree = Tree::new("kernel");
    let kernel = tree.link("vmlinux");
    let out = run(&["--kernel", kernel.to_str().expect("utf-8")]);
    assert_refused(&out, &kernel);
    let initrd = tree.link("initrd");
    let out = run(&["--initrd", initrd.to_str().expect("utf-8")]);
    assert_refused(&out, &initrd);
}

#[test]
fn sockets_are_not_created_through_a_users_symlink() {
    require_kvm!();
    if !root() {
        return;
    }
    let tree = Tree::new("sockets");
    // Mallory's symlink to root's directory: a socket there would be root's, in a place
    // she could not write.
    let link = tree.home.join("run");
    symlink(tree.secret.parent().expect("root dir"), &link).expect("symlink");
    lchown(&link, Some(MALLORY), Some(MALLORY)).expect("lchown");
    let api = link.join("api.sock");
    let out = run(&["--api-socket", api.to_str().expect("utf-8")]);
    assert_refused(&out, &api);
    let console = link.join("console.sock");
    let out = run(&["--console", &format!("socket={}", console.display())]);
    assert_refused(&out, &console);
    // Nor connected to: a root-only socket behind her symlink is not a disk backend.
    let daemon = tree.secret.with_file_name("daemon.sock");
    let listener = std::os::unix::net::UnixListener::bind(&daemon).expect("root's socket");
    listener.set_nonblocking(true).expect("non-blocking");
    let backend = link.join("daemon.sock");
    let out = run(&["--disk", &format!("socket={}", backend.display())]);
    assert!(
        listener.accept().is_err(),
        "bulkhead connected to root's socket"
    );
    assert_refused(&out, &backend);
    drop(listener);
    let _ = std::fs::remove_file(&daemon);
    let left: Vec<_> = std::fs::read_dir(tree.secret.parent().expect("root dir"))
        .expect("listing root's directory")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("secret.img")]);
}

#[test]
fn open_as_uses_that_users_permissions() {
    require_kvm!();
    if !root() {
        return;
    }
    let tree = Tree::new("open-as");
    let open_as = format!("{MALLORY}:{MALLORY}");
    // Root's file named directly (no symlink: the ownership rule has nothing to refuse),
    // but mallory may not read it.
    let disk = format!("path={}", tree.secret.display());
    let out = run(&[
        "--open-as",
        &open_as,
        "--disk",
        &disk,
        "--cmdline",
        GUEST_WRITES,
    ]);
    tree.assert_secret_unchanged();
    assert_eq!(out.code(), EXIT_FAILED, "{out:#?}");
    assert!(
        out.stderr.contains(&tree.secret.display().to_string())
            && out.stderr.contains("Permission denied"),
        "{}",
        out.stderr
    );
    // Her own image works, and a console file is created as hers.
    let img = tree.home.join("vm.img");
    std::fs::write(&img, &tree.secret_bytes).expect("writing her image");
    lchown(&img, Some(MALLORY), Some(MALLORY)).expect("chown");
    let console = tree.home.join("console.log");
    let out = run(&[
        "--open-as",
        &open_as,
        "--disk",
        &format!("path={}", img.display()),
        "--console",
        &format!("file={}", console.display()),
        "--cmdline",
        GUEST_WRITES,
    ]);
    assert_eq!(out.code(), 0, "{out:#?}");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&console).expect("the console file");
    assert_eq!((meta.uid(), meta.gid()), (MALLORY, MALLORY));
}
