//! Reading a `newc` cpio archive back, to check the initramfs the disk test builds.

/// One archive member.
#[derive(Debug)]
pub struct Entry {
    /// Its path, without a leading `/`.
    pub name: String,
    /// Its mode (type and permissions).
    pub mode: u32,
    /// Its contents.
    pub data: Vec<u8>,
}

/// The members of `archive` up to the trailer; panics (this is a test) on a malformed one.
pub fn entries(archive: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut at = 0;
    let align = |n: usize| n.next_multiple_of(4);
    loop {
        let header = &archive[at..at + 110];
        assert_eq!(&header[..6], b"070701", "newc magic at {at}");
        let field = |i: usize| {
            let hex = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i]).expect("ascii");
            u32::from_str_radix(hex, 16).expect("hex field") as usize
        };
        let (mode, size, name_size) = (field(1) as u32, field(6), field(11));
        let name_at = at + 110;
        let name = std::str::from_utf8(&archive[name_at..name_at + name_size - 1])
            .expect("utf-8 name")
            .to_string();
        let data_at = align(name_at + name_size);
        let data = archive[data_at..data_at + size].to_vec();
        at = align(data_at + size);
        if name == "TRAILER!!!" {
            assert_eq!(at, archive.len(), "nothing after the trailer");
            return out;
        }
        out.push(Entry { name, mode, data });
    }
}
