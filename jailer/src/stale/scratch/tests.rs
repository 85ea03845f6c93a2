use super::*;
use std::os::unix::fs::PermissionsExt;

/// A pid above pid_max: no launcher has it.
const GONE: u32 = u32::MAX;
/// A launcher the tests' `running` says is alive.
const ALIVE: u32 = 4242;

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// A scratch directory as the demo makes it: `name` in `tmp`, mode 0700, with the image.
fn make_scratch(tmp: &Path, name: &str) -> PathBuf {
    let dir = tmp.join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(dir.join(SCRATCH_NAME), b"").unwrap();
    dir
}

#[test]
fn names_are_the_demos_exactly() {
    assert_eq!(scratch_dir_pid("bulkhead-4242-aB3xYz"), Some(4242));
    for other in [
        "bulkhead-4242-net0",
        "bulkhead-4242-aB3xYz7",
        "bulkhead-4242-aB3xY",
        "bulkhead-4242-aB3.Yz",
        "bulkhead-+4242-aB3xYz",
        "bulkhead--aB3xYz",
        "bulkhead-x-aB3xYz",
        "other-4242-aB3xYz",
        "bulkhead-4242-scratch.img",
    ] {
        assert_eq!(scratch_dir_pid(other), None, "{other}");
    }
}

#[test]
fn only_a_dead_launchers_scratch_directory_exactly_as_made_is_removed() {
    let tmp = std::env::temp_dir().join(format!(
        "bulkhead-scratch-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).unwrap();
    let owner = euid();
    let dead = make_scratch(&tmp, &format!("bulkhead-{GONE}-aaaaaa"));
    let alive = make_scratch(&tmp, &format!("bulkhead-{ALIVE}-bbbbbb"));
    // A symlink of a matching name, to a matching directory kept elsewhere.
    let elsewhere = tmp.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let target = make_scratch(&elsewhere, &format!("bulkhead-{GONE}-cccccc"));
    let link = tmp.join(format!("bulkhead-{GONE}-dddddd"));
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let extra = make_scratch(&tmp, &format!("bulkhead-{GONE}-eeeeee"));
    std::fs::write(extra.join("notes.txt"), b"mine").unwrap();
    let open = make_scratch(&tmp, &format!("bulkhead-{GONE}-ffffff"));
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Another user's directory (chown needs root).
    let theirs = (owner == 0).then(|| {
        let d = make_scratch(&tmp, &format!("bulkhead-{GONE}-gggggg"));
        std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
        d
    });
    // The image another user's, in a directory of ours.
    let their_image = (owner == 0).then(|| {
        let d = make_scratch(&tmp, &format!("bulkhead-{GONE}-hhhhhh"));
        std::os::unix::fs::chown(d.join(SCRATCH_NAME), Some(65534), Some(65534)).unwrap();
        d
    });

    let removed = reap_in(&tmp, owner, |pid, made| {
        assert!(made.is_some(), "the directory's time is read");
        pid == ALIVE
    });

    let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    let state = (
        exists(&dead),
        exists(&alive.join(SCRATCH_NAME)),
        exists(&link),
        exists(&target.join(SCRATCH_NAME)),
        exists(&extra.join(SCRATCH_NAME)),
        exists(&open.join(SCRATCH_NAME)),
        theirs.as_deref().map(|d| exists(&d.join(SCRATCH_NAME))),
        their_image
            .as_deref()
            .map(|d| exists(&d.join(SCRATCH_NAME))),
    );
    let _ = std::fs::remove_dir_all(&tmp);
    assert_eq!(removed, vec![dead.clone()]);
    let root = owner == 0;
    assert_eq!(
        state,
        (
            false,
            true,
            true,
            true,
            true,
            true,
            root.then_some(true),
            root.then_some(true)
        ),
        "(dead removed; alive, symlink, its target, extra file, 0755, another uid's, another \
         uid's image kept)"
    );
}
