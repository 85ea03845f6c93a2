//! Text from a process that may be compromised (the vmm, a backend, whatever answers on an
//! API socket), made safe to print on the user's terminal. Escape sequences could rewrite
//! the screen, the window title or the terminal's settings, and a carriage return or a
//! line separator could make forged text look like the launcher's own; so every control
//! character is shown as a visible escape (`\x1b`, `\x9b`, `\u{2028}`), bytes that are not
//! UTF-8 as `\xNN`, and a message's length is capped.
//!
//! What is defused: C0 controls (U+0000–U+001F, ESC, BEL, CR, backspace...) but tab in a
//! relayed line and the newline that ends it; DEL; the C1 controls U+0080–U+009F
//! (8-bit CSI, OSC, ...) in their UTF-8 form, and as single bytes (not UTF-8); the line and
//! paragraph separators U+2028/U+2029, the bidirectional overrides and isolates
//! (U+202A–U+202E, U+2066–U+2069, U+200E/U+200F, U+061C), which can make a line read
//! differently from what it is; and U+FEFF.

use std::fmt::Write;

/// Longest text printed from one message (a `ctl` reply, a reason): in bytes of output.
pub const MAX_MESSAGE: usize = 1000;

/// Whether `c` must be shown escaped.
fn dangerous(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{061c}'
                | '\u{feff}'
        )
}

/// Appends `c` to `out`, escaped if it is [`dangerous`] (and not allowed by `keep`).
fn push_char(out: &mut String, c: char, keep: impl Fn(char) -> bool) {
    if !dangerous(c) || keep(c) {
        out.push(c);
    } else if (c as u32) < 0x100 {
        let _ = write!(out, "\\x{:02x}", c as u32);
    } else {
        let _ = write!(out, "\\u{{{:x}}}", c as u32);
    }
}

/// `bytes` as printable text: every control character escaped except those `keep` allows,
/// bytes that are not UTF-8 as `\xNN`.
fn defuse(bytes: &[u8], out: &mut String, keep: impl Fn(char) -> bool + Copy) {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_char(out, c, keep);
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

/// One line of a process's output, ready to print: `prefix` then the text with every
/// control character but tab escaped, ending with one newline (whether or not `line` had
/// one: a piece of an over-long line becomes a line of its own).
pub fn line(prefix: &str, line: &[u8]) -> String {
    let text = line.strip_suffix(b"\n").unwrap_or(line);
    let mut out = String::with_capacity(prefix.len() + text.len() + 1);
    out.push_str(prefix);
    defuse(text, &mut out, |c| c == '\t');
    out.push('\n');
    out
}

/// `text` without control characters (newlines and tabs escaped too: a message is one
/// line), at most [`MAX_MESSAGE`] bytes of output, `...` marking a cut.
pub fn sanitize(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let before = out.len();
        push_char(&mut out, c, |_| false);
        if out.len() > MAX_MESSAGE {
            out.truncate(before);
            out.push_str("...");
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_floods_are_defused() {
        assert_eq!(sanitize("disk0: ok"), "disk0: ok");
        assert_eq!(sanitize("a\x1b[2Jb\nc\td"), "a\\x1b[2Jb\\x0ac\\x09d");
        // C1 controls (8-bit CSI, OSC) in UTF-8, DEL, a line separator, a bidi override.
        assert_eq!(
            sanitize("\u{9b}31m\u{9d}0;t\u{7f}x\u{2028}y\u{202e}z"),
            "\\x9b31m\\x9d0;t\\x7fx\\u{2028}y\\u{202e}z"
        );
        assert_eq!(sanitize("é✓"), "é✓", "other text is untouched");
        let long = "x".repeat(5000);
        assert_eq!(sanitize(&long).len(), MAX_MESSAGE + 3);
        let escapes = "\x1b".repeat(5000);
        let cut = sanitize(&escapes);
        assert!(
            cut.len() <= MAX_MESSAGE + 3 && cut.ends_with("\\x1b..."),
            "{cut}"
        );
    }

    #[test]
    fn a_relayed_line_is_prefixed_and_keeps_only_tab() {
        let forged = b"\x1b]0;owned\x07\x1b[2J\rbulkhead: VM finished cleanly\t!\n";
        assert_eq!(
            line("vmm| ", forged),
            "vmm| \\x1b]0;owned\\x07\\x1b[2J\\x0dbulkhead: VM finished cleanly\t!\n"
        );
        // Not UTF-8: a lone 8-bit CSI byte, a cut multi-byte character.
        assert_eq!(line("d| ", b"\x9b2J\xe2\x9c"), "d| \\x9b2J\\xe2\\x9c\n");
        assert_eq!(line("d| ", b""), "d| \n");
    }
}
