//! The inflight region (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD): shared memory in which a
//! backend tracks the requests it took from the rings and has not completed, so that the
//! next backend process can resubmit them. The vmm asks the first backend for it
//! (GET_INFLIGHT_FD), keeps it (never maps it: it does not read what is in it) and hands
//! it to every later backend (SET_INFLIGHT_FD) until the driver resets the device.
//!
//! The backend that made it may be compromised, and the next backend maps what the vmm
//! hands on, so the region is checked when it arrives: a memfd sealed against shrinking
//! (the next backend's mapping cannot lose its pages under it), at least as large as the
//! backend claims, and of a sane size.

use std::fs::File;
use std::os::fd::AsRawFd;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use vhost::vhost_user::message::VhostUserInflight;

/// Largest inflight region accepted, per queue (the split-ring layout needs 4112 bytes
/// for a 256-entry queue).
const MAX_PER_QUEUE: u64 = 1 << 20;

/// A checked inflight region and the description the backend gave of it.
pub struct Inflight {
    /// The memfd.
    pub file: File,
    /// Its size, offset, queue count and queue size.
    pub info: VhostUserInflight,
}

/// The GET_INFLIGHT_FD request for `queues` queues of `queue_size` entries.
pub fn request(queues: usize, queue_size: u16) -> VhostUserInflight {
    VhostUserInflight {
        mmap_size: 0,
        mmap_offset: 0,
        num_queues: u16::try_from(queues).unwrap_or(u16::MAX),
        queue_size,
    }
}

impl Inflight {
    /// Checks the region a backend handed out for `requested`'s queues.
    pub fn check(
        requested: &VhostUserInflight,
        mut info: VhostUserInflight,
        file: File,
    ) -> Result<Inflight, String> {
        let (size, offset) = (info.mmap_size, info.mmap_offset);
        if size == 0 {
            return Err("the backend handed out an empty inflight region".into());
        }
        let max = MAX_PER_QUEUE * u64::from(requested.num_queues.max(1));
        if size > max {
            return Err(format!(
                "an inflight region of {size} bytes for {} queues (at most {max})",
                requested.num_queues
            ));
        }
        let end = offset
            .checked_add(size)
            .ok_or_else(|| format!("an inflight region at offset {offset:#x} overflows"))?;
        let file_size = fd_size(&file)?;
        if file_size < end {
            return Err(format!(
                "the inflight region claims {size} bytes at offset {offset}, its file has {file_size}"
            ));
        }
        // F_GET_SEALS fails on anything but a memfd.
        let seals = fcntl(&file, FcntlArg::F_GET_SEALS).map_err(|e| {
            format!(
                "the inflight region is not a memfd: {}",
                std::io::Error::from(e)
            )
        })?;
        if !SealFlag::from_bits_retain(seals).contains(SealFlag::F_SEAL_SHRINK) {
            return Err("the inflight region's memfd is not sealed against shrinking".into());
        }
        // Whatever the backend answered for these, the region is for the queues asked.
        info.num_queues = requested.num_queues;
        info.queue_size = requested.queue_size;
        Ok(Inflight { file, info })
    }
}

/// The size of `file` (fstat, which the vmm's filters allow, not statx or newfstatat).
fn fd_size(file: &File) -> Result<u64, String> {
    let st = crate::sys::fstat(file.as_raw_fd())
        .map_err(|e| format!("the inflight region's size: {e}"))?;
    u64::try_from(st.st_size).map_err(|_| "the inflight region has a negative size".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    use nix::sys::memfd::{memfd_create, MFdFlags};

    fn memfd(size: u64, seals: SealFlag) -> File {
        let file = File::from(memfd_create("inflight-test", MFdFlags::MFD_ALLOW_SEALING).unwrap());
        file.set_len(size).unwrap();
        fcntl(&file, FcntlArg::F_ADD_SEALS(seals)).unwrap();
        file
    }

    fn answer(size: u64, offset: u64) -> VhostUserInflight {
        VhostUserInflight {
            mmap_size: size,
            mmap_offset: offset,
            num_queues: 0,
            queue_size: 0,
        }
    }

    #[test]
    fn a_sound_region_is_kept_for_the_queues_asked() {
        let asked = request(2, 256);
        let sealed = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW;
        let r = Inflight::check(&asked, answer(8224, 0), memfd(8224, sealed)).unwrap();
        assert_eq!((r.info.num_queues, r.info.queue_size), (2, 256));
    }

    #[test]
    fn lies_about_the_region_are_refused() {
        let asked = request(1, 256);
        let sealed = SealFlag::F_SEAL_SHRINK;
        for (info, file, why) in [
            (answer(0, 0), memfd(4096, sealed), "empty"),
            (answer(8192, 0), memfd(4096, sealed), "its file has 4096"),
            (answer(4096, 4096), memfd(4096, sealed), "its file has 4096"),
            (answer(4096, u64::MAX), memfd(4096, sealed), "overflows"),
            (answer(1 << 30, 0), memfd(4096, sealed), "at most"),
            (
                answer(4096, 0),
                memfd(4096, SealFlag::F_SEAL_GROW),
                "not sealed",
            ),
        ] {
            let e = Inflight::check(&asked, info, file).err().expect(why);
            assert!(e.contains(why), "{why}: {e}");
        }
        let plain = tempfile_in_memory();
        let e = Inflight::check(&asked, answer(4096, 0), plain)
            .err()
            .unwrap();
        assert!(e.contains("not a memfd"), "{e}");
    }

    /// A file that is not a memfd.
    fn tempfile_in_memory() -> File {
        let path = std::env::temp_dir().join(format!("bulkhead-inflight-{}", std::process::id()));
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(4096).unwrap();
        let _ = std::fs::remove_file(&path);
        f
    }
}
