//! Recognising Ctrl+Alt+Del in the bytes an i8042 keyboard controller delivers on port
//! 0x60, in scancode set 2 (what Firecracker's SendCtrlAltDel puts in its buffer: the
//! make codes 0x14 Ctrl, 0x11 Alt, 0xe0 0x71 Delete; breaks are 0xf0 + make) and in set 1
//! (0x1d Ctrl, 0x38 Alt, 0x53 or 0xe0 0x53 Delete; a break sets bit 7). Both sets are
//! followed at once: the guest does not program the controller's translation.

/// Scancode state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtrlAltDel {
    extended: bool,
    release: bool,
    ctrl2: bool,
    alt2: bool,
    ctrl1: bool,
    alt1: bool,
}

impl CtrlAltDel {
    /// Nothing held.
    pub const fn new() -> Self {
        Self {
            extended: false,
            release: false,
            ctrl2: false,
            alt2: false,
            ctrl1: false,
            alt1: false,
        }
    }

    /// Take one byte; true when it completes Delete pressed with Ctrl and Alt held.
    pub fn feed(&mut self, byte: u8) -> bool {
        match byte {
            0xe0 => {
                self.extended = true;
                return false;
            }
            0xf0 => {
                self.release = true;
                return false;
            }
            _ => {}
        }
        let release2 = core::mem::take(&mut self.release);
        let _extended = core::mem::take(&mut self.extended);
        // Set 2 (Ctrl and Alt have the same code left and right; Delete is e0 71, the
        // keypad's Del 71).
        let mut hit = false;
        match byte {
            0x14 => self.ctrl2 = !release2,
            0x11 => self.alt2 = !release2,
            0x71 if !release2 => hit |= self.ctrl2 && self.alt2,
            _ => {}
        }
        // Set 1: bit 7 is the break.
        if !release2 {
            let down = byte & 0x80 == 0;
            match byte & 0x7f {
                0x1d => self.ctrl1 = down,
                0x38 => self.alt1 = down,
                0x53 if down => hit |= self.ctrl1 && self.alt1,
                _ => {}
            }
        }
        hit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(bytes: &[u8]) -> Vec<usize> {
        let mut k = CtrlAltDel::new();
        bytes
            .iter()
            .enumerate()
            .filter(|(_, &b)| k.feed(b))
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn firecrackers_sequence_is_recognised_on_its_last_byte() {
        assert_eq!(hits(&[0x14, 0x11, 0xe0, 0x71]), [3]);
        // Sent twice (keys never released, as Firecracker does): twice.
        assert_eq!(
            hits(&[0x14, 0x11, 0xe0, 0x71, 0x14, 0x11, 0xe0, 0x71]),
            [3, 7]
        );
    }

    #[test]
    fn set_1_sequences_are_recognised() {
        assert_eq!(hits(&[0x1d, 0x38, 0xe0, 0x53]), [3]);
        assert_eq!(hits(&[0x38, 0x1d, 0x53]), [2]);
    }

    #[test]
    fn released_modifiers_do_not_count() {
        assert!(hits(&[0x14, 0xf0, 0x14, 0x11, 0xe0, 0x71]).is_empty());
        assert!(hits(&[0x14, 0x11, 0xe0, 0xf0, 0x11, 0xe0, 0x71]).is_empty());
        assert!(hits(&[0x1d, 0x38, 0xb8, 0x53]).is_empty());
        assert!(hits(&[0x1d, 0x9d, 0x38, 0x53]).is_empty());
    }

    #[test]
    fn other_bytes_do_not_count() {
        assert!(hits(&[0xe0, 0x71]).is_empty());
        assert!(hits(&[0x14, 0xe0, 0x71]).is_empty());
        assert!(hits(&[0x11, 0xe0, 0x71]).is_empty());
        assert!(hits(&[0xfa, 0x00, 0xff, 0xaa]).is_empty());
        // Delete released while Ctrl+Alt are held is not a press.
        assert!(hits(&[0x14, 0x11, 0xe0, 0xf0, 0x71]).is_empty());
    }
}
