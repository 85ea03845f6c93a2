//! Firecracker's API driven with `curl --unix-socket`, as orchestrators' scripts do.

use std::process::Command;

/// One request: (HTTP status, body); status 0 when curl got no answer.
pub fn curl(sock: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "--max-time",
        "20",
        "--unix-socket",
        sock,
        "-X",
        method,
    ])
    .args(["-w", "\n%{http_code}"])
    .arg(format!("http://localhost{path}"));
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = cmd.output().expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// A request that must answer 204 No Content.
pub fn no_content(sock: &str, method: &str, path: &str, body: &str) {
    let (code, answer) = curl(sock, method, path, Some(body));
    assert_eq!(code, 204, "{method} {path} {body}: {answer}");
}
