//! `bulkhead ctl` as the tests run it.

/// `bulkhead ctl` against `socket`: exit code and stdout.
pub fn ctl(socket: &std::path::Path, action: &str) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("ctl")
        .arg("--api-socket")
        .arg(socket)
        .arg(action)
        .output()
        .expect("running bulkhead ctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}
