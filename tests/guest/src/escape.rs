//! Quoting guest-visible bytes for the serial lines.

use core::fmt::{self, Write};

/// Displays bytes as printable ASCII, with `"`, `\` and anything unprintable escaped as
/// `\xNN`, so that a quoted value stays on one line and can be parsed back.
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
                f.write_char(char::from(b))?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_ascii_passes_the_rest_is_escaped() {
        assert_eq!(
            Escaped(b"console=ttyS0 a=b").to_string(),
            "console=ttyS0 a=b"
        );
        assert_eq!(Escaped(b"q\"b\\s").to_string(), "q\\x22b\\x5cs");
        assert_eq!(Escaped(b"\t\n\x7f\xff").to_string(), "\\x09\\x0a\\x7f\\xff");
    }
}
