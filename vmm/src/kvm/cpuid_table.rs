//! KVM's supported CPUID as text, so that it can be asked of KVM once and kept.
//!
//! `KVM_GET_SUPPORTED_CPUID` runs the host's `cpuid` instruction for every leaf; where the
//! host is itself a guest each of those traps to its hypervisor, and the ioctl costs about
//! 1 ms of CPU (measured on the development hosts: 0.95–1.19 ms), a sixth of a VM's start.
//! The answer changes only with the kernel or the KVM modules (but for the APIC id of the
//! host CPU that ran the ioctl, in leaves 0x1, 0xb, 0x1f and AMD's 0x8000_001e, which
//! [`super::cpuid::filter`] replaces per vCPU), so the launcher keeps it (its `launch::kvm_cpuid`) and hands it to
//! the vmm in this format:
//!
//! ```text
//! bulkhead-kvm-cpuid 1
//! <function> <index> <flags> <eax> <ebx> <ecx> <edx>      (hexadecimal, one entry a line)
//! ```
//!
//! [`decode`] refuses anything else: a wrong header, a line without exactly seven
//! hexadecimal 32-bit fields, more than `KVM_MAX_CPUID_ENTRIES` entries, none at all, or
//! one (function, index) twice.

use kvm_bindings::{kvm_cpuid_entry2, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

/// The first line.
pub const HEADER: &str = "bulkhead-kvm-cpuid 1";
/// The largest table text [`decode`] reads: the header and `KVM_MAX_CPUID_ENTRIES` lines of
/// seven 8-digit fields.
pub const MAX_TEXT: usize = HEADER.len() + 1 + KVM_MAX_CPUID_ENTRIES * 7 * 9;

/// A table that is not one [`encode`] writes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    /// The first line is not [`HEADER`].
    #[error("not a KVM CPUID table (its first line is not \"{HEADER}\")")]
    Header,
    /// A line is not seven hexadecimal 32-bit numbers.
    #[error("line {0}: not seven hexadecimal 32-bit numbers")]
    Line(usize),
    /// Too many entries.
    #[error("more than {KVM_MAX_CPUID_ENTRIES} entries")]
    TooMany,
    /// No entries.
    #[error("no entries")]
    Empty,
    /// A leaf appears twice.
    #[error("line {line}: leaf {function:#x} index {index:#x} appears twice")]
    Twice {
        /// Where.
        line: usize,
        /// The leaf.
        function: u32,
        /// Its index.
        index: u32,
    },
}

/// Asks KVM for the CPUID it supports.
pub fn supported(kvm: &Kvm) -> Result<Vec<kvm_cpuid_entry2>, kvm_ioctls::Error> {
    Ok(kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?
        .as_slice()
        .to_vec())
}

/// The entries of the table in `file`, read from offset 0 whatever the file's offset (the
/// launcher's memfd is handed over with its offset at the end of what it wrote). Errors:
/// the read's, or `InvalidData` for a file longer than [`MAX_TEXT`], not UTF-8, or not a
/// table.
pub fn read(file: &std::fs::File) -> std::io::Result<Vec<kvm_cpuid_entry2>> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; MAX_TEXT + 1];
    let mut len = 0;
    while len < buf.len() {
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let invalid = |why: String| Error::new(ErrorKind::InvalidData, why);
    if len > MAX_TEXT {
        return Err(invalid(format!("longer than {MAX_TEXT} bytes")));
    }
    let text = std::str::from_utf8(&buf[..len]).map_err(|_| invalid("not text".into()))?;
    decode(text).map_err(|e| invalid(e.to_string()))
}

/// `entries` as a table.
pub fn encode(entries: &[kvm_cpuid_entry2]) -> String {
    let mut text = String::with_capacity(HEADER.len() + 1 + entries.len() * 63);
    text.push_str(HEADER);
    text.push('\n');
    for e in entries {
        text.push_str(&format!(
            "{:x} {:x} {:x} {:x} {:x} {:x} {:x}\n",
            e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx
        ));
    }
    text
}

/// The entries of a table [`encode`] wrote.
pub fn decode(text: &str) -> Result<Vec<kvm_cpuid_entry2>, TableError> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(TableError::Header);
    }
    let mut entries: Vec<kvm_cpuid_entry2> = Vec::new();
    for (n, line) in lines.enumerate() {
        let line_no = n + 2;
        if entries.len() == KVM_MAX_CPUID_ENTRIES {
            return Err(TableError::TooMany);
        }
        let mut fields = [0u32; 7];
        let mut words = line.split(' ');
        for field in fields.iter_mut() {
            let word = words.next().ok_or(TableError::Line(line_no))?;
            if word.is_empty() || word.len() > 8 || !word.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(TableError::Line(line_no));
            }
            *field = u32::from_str_radix(word, 16).map_err(|_| TableError::Line(line_no))?;
        }
        if words.next().is_some() {
            return Err(TableError::Line(line_no));
        }
        let [function, index, flags, eax, ebx, ecx, edx] = fields;
        if entries
            .iter()
            .any(|e| e.function == function && e.index == index)
        {
            return Err(TableError::Twice {
                line: line_no,
                function,
                index,
            });
        }
        entries.push(kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        });
    }
    if entries.is_empty() {
        return Err(TableError::Empty);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, eax: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: 1,
            eax,
            ebx: 0xffff_ffff,
            ecx: 0,
            edx: 0x8000_0001,
            ..Default::default()
        }
    }

    #[test]
    fn a_table_reads_back_as_written() {
        let entries = vec![entry(0, 0, 0xd), entry(7, 0, 2), entry(7, 1, 0)];
        let text = encode(&entries);
        assert!(text.starts_with("bulkhead-kvm-cpuid 1\n0 0 1 d ffffffff 0 80000001\n"));
        assert_eq!(decode(&text), Ok(entries));
    }

    #[test]
    fn the_largest_table_fits_in_max_text() {
        let entries: Vec<_> = (0..KVM_MAX_CPUID_ENTRIES as u32)
            .map(|i| kvm_cpuid_entry2 {
                function: u32::MAX - i,
                index: u32::MAX,
                flags: u32::MAX,
                eax: u32::MAX,
                ebx: u32::MAX,
                ecx: u32::MAX,
                edx: u32::MAX,
                ..Default::default()
            })
            .collect();
        let text = encode(&entries);
        assert!(text.len() <= MAX_TEXT, "{} > {MAX_TEXT}", text.len());
        assert_eq!(decode(&text).map(|e| e.len()), Ok(KVM_MAX_CPUID_ENTRIES));
    }

    #[test]
    fn a_file_is_read_from_its_start_and_bounded() {
        use std::io::{Seek, SeekFrom, Write};
        use std::os::unix::fs::FileExt;
        let entries = vec![entry(0, 0, 0xd)];
        let mut file = tempfile();
        file.write_all(encode(&entries).as_bytes()).unwrap();
        // The offset is at the end, as the launcher leaves its memfd.
        assert_eq!(read(&file).unwrap(), entries);
        file.seek(SeekFrom::Start(0)).unwrap();
        file.write_all(&vec![b'0'; MAX_TEXT + 1]).unwrap();
        let e = read(&file).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("longer than"), "{e}");
        file.set_len(0).unwrap();
        file.write_all_at(&[0xff, 0xfe], 0).unwrap();
        assert!(read(&file).unwrap_err().to_string().contains("not text"));
        file.set_len(0).unwrap();
        assert!(read(&file)
            .unwrap_err()
            .to_string()
            .contains("not a KVM CPUID table"));
    }

    /// An anonymous file of this test's own.
    fn tempfile() -> std::fs::File {
        let fd =
            nix::sys::memfd::memfd_create(c"cpuid-table-test", nix::sys::memfd::MFdFlags::empty())
                .unwrap();
        std::fs::File::from(fd)
    }

    #[test]
    fn anything_else_is_refused() {
        let good = "bulkhead-kvm-cpuid 1\n0 0 0 d 0 0 0\n";
        assert!(decode(good).is_ok());
        for (text, want) in [
            ("", TableError::Header),
            ("bulkhead-kvm-cpuid 2\n0 0 0 d 0 0 0\n", TableError::Header),
            ("bulkhead-kvm-cpuid 1\n", TableError::Empty),
            ("bulkhead-kvm-cpuid 1\n0 0 0 d 0 0\n", TableError::Line(2)),
            (
                "bulkhead-kvm-cpuid 1\n0 0 0 d 0 0 0 0\n",
                TableError::Line(2),
            ),
            (
                "bulkhead-kvm-cpuid 1\n0 0 0 d 0 0 0\n\n",
                TableError::Line(3),
            ),
            (
                "bulkhead-kvm-cpuid 1\n0 0 0 100000000 0 0 0\n",
                TableError::Line(2),
            ),
            (
                "bulkhead-kvm-cpuid 1\n0 0 0 -1 0 0 0\n",
                TableError::Line(2),
            ),
            (
                "bulkhead-kvm-cpuid 1\n0 0 0 +d 0 0 0\n",
                TableError::Line(2),
            ),
            ("bulkhead-kvm-cpuid 1\n0 0 0 g 0 0 0\n", TableError::Line(2)),
            (
                "bulkhead-kvm-cpuid 1\n0  0 0 d 0 0 0\n",
                TableError::Line(2),
            ),
            (
                "bulkhead-kvm-cpuid 1\n7 0 0 d 0 0 0\n7 0 0 e 0 0 0\n",
                TableError::Twice {
                    line: 3,
                    function: 7,
                    index: 0,
                },
            ),
        ] {
            assert_eq!(decode(text), Err(want), "{text:?}");
        }
        let too_many: String = std::iter::once(HEADER.to_string() + "\n")
            .chain((0..=KVM_MAX_CPUID_ENTRIES).map(|i| format!("{i:x} 0 0 0 0 0 0\n")))
            .collect();
        assert_eq!(decode(&too_many), Err(TableError::TooMany));
    }
}
