//! Text from a process that may be compromised (the vmm, a backend), made safe to print on
//! the user's terminal: control characters (escape sequences could rewrite the screen or
//! the terminal's settings) shown as `?`, and the length capped.

/// Longest text printed from one message.
const MAX_CHARS: usize = 1000;

/// `text` without control characters, at most [`MAX_CHARS`] characters.
pub fn sanitize(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().nth(MAX_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_floods_are_defused() {
        assert_eq!(sanitize("disk0: ok"), "disk0: ok");
        assert_eq!(sanitize("a\x1b[2Jb\nc"), "a?[2Jb?c");
        let long = "x".repeat(5000);
        assert_eq!(sanitize(&long).len(), MAX_CHARS + 3);
    }
}
