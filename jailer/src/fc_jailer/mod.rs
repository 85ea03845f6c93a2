//! Firecracker's jailer contract in `bulkhead-jailer`: the command line firecracker-containerd
//! and the Firecracker SDKs give Firecracker's `jailer`, starting `bulkhead-firecracker` with
//! its API socket and files inside `<chroot-base-dir>/<exec-file name>/<id>/root`. The mode
//! is chosen by the flags alone, so an orchestrator changes only the binary's path.

pub mod args;
pub mod cgroup;
pub mod chroot;
pub mod process;

use std::ffi::OsString;

/// Firecracker's jailer exits with 1 on any error it reports.
pub const EXIT_ERROR: i32 = 1;

/// Whether this command line is Firecracker's jailer's: a flag only it has, or an exec
/// file named as Firecracker's binary or ours.
pub fn wanted(argv: &[OsString]) -> bool {
    let before_args = argv.iter().take_while(|a| *a != "--");
    let mut exec_next = false;
    for a in before_args {
        let a = a.to_string_lossy();
        if exec_next {
            let name = std::path::Path::new(a.as_ref())
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name == "firecracker" || name == args::EXEC_NAME {
                return true;
            }
        }
        let flag = a.split('=').next().unwrap_or_default();
        if args::FC_ONLY.contains(&flag) {
            return true;
        }
        exec_next = flag == "--exec-file";
    }
    false
}

/// Runs the jailer; its exit status.
pub fn main(argv: &[OsString]) -> i32 {
    let parsed = match args::parse(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("Jailer error: Arguments parsing error: {e}");
            return EXIT_ERROR;
        }
    };
    match process::run(&parsed) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Jailer error: {e}");
            EXIT_ERROR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::wanted;
    use std::ffi::OsString;

    fn w(args: &[&str]) -> bool {
        wanted(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn the_mode_follows_the_flags() {
        assert!(w(&["--id", "a", "--chroot-base-dir", "/srv"]));
        assert!(w(&["--id", "a", "--cgroup", "pids.max=1"]));
        assert!(w(&["--exec-file", "/usr/bin/firecracker", "--id", "a"]));
        assert!(w(&["--exec-file", "/x/bulkhead-firecracker"]));
        // bulkhead's own jailer mode, and flags after "--" (the program's).
        assert!(!w(&[
            "--id",
            "a",
            "--exec-file",
            "/bin/busybox",
            "--cgroup-memory",
            "1"
        ]));
        assert!(!w(&[
            "--id",
            "a",
            "--exec-file",
            "/bin/sh",
            "--",
            "--daemonize"
        ]));
    }
}
