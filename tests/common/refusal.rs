//! A disk image refused at start, both ways it can be served: by a standalone
//! `bulkhead-blk --blk-file`, and by `bulkhead run --disk path=`'s launcher. Each way must
//! end at once with a message naming the file and the problem, and leave the file as it was.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long a refusal may take (a backend that is not refused waits for a frontend
/// until then; the launcher may start the guest, which ends at once without a disk).
const DEADLINE: Duration = Duration::from_secs(20);

/// `bulkhead-blk --blk-file PATH ARGS` must exit with status 1, its stderr holding every
/// one of `want`, and leave `path` unchanged.
pub fn refused_standalone(path: &Path, args: &[&str], want: &[&str]) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let socket =
        std::env::temp_dir().join(format!("bulkhead-refused-{}-{n}.sock", std::process::id()));
    let before = std::fs::read(path).expect("reading the image");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulkhead-blk"));
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--blk-file")
        .arg(path)
        .args(args)
        .stdin(Stdio::null());
    let out = super::run(cmd, DEADLINE);
    let _ = std::fs::remove_file(&socket);
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:#?}");
    for w in want {
        assert!(out.stderr.contains(w), "no {w:?} in:\n{}", out.stderr);
    }
    assert!(
        std::fs::read(path).expect("reading the image") == before,
        "{} was changed",
        path.display()
    );
}

/// `bulkhead run --disk DISK` (through `wrapper` if given, e.g. prlimit) must be refused
/// by the launcher (status 125) before any backend started, its stderr holding every one
/// of `want`.
pub fn refused_by_launcher(wrapper: &[&str], disk: &str, want: &[&str]) {
    let out = refused_at_start(wrapper, disk, want);
    assert!(
        !out.stderr.contains("bulkhead-blk (pid"),
        "a backend was started:\n{}",
        out.stderr
    );
}

/// `bulkhead run --disk DISK` (through `wrapper` if given) must end with status 125 before
/// the guest ran, its stderr holding every one of `want` (the launcher's refusal, or the
/// backend's when only serving finds the problem); what it printed.
pub fn refused_at_start(wrapper: &[&str], disk: &str, want: &[&str]) -> super::Output {
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(env!("CARGO_BIN_EXE_bulkhead"));
            c.stdin(Stdio::null());
            c
        }
        None => super::bulkhead(),
    };
    cmd.args([
        "run",
        "--disk",
        disk,
        "--cmdline",
        "bulkhead.test=blk-probe",
    ]);
    let out = super::run(cmd, DEADLINE);
    out.assert_no_panic();
    assert_eq!(out.code(), 125, "{out:#?}");
    for w in want {
        assert!(out.stderr.contains(w), "no {w:?} in:\n{}", out.stderr);
    }
    assert!(
        !out.stdout.contains("bulkhead-guest:"),
        "the guest ran:\n{}",
        out.stdout
    );
    out
}
