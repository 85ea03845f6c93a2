//! The backing-file owner rule, for an opener that runs as root (the launcher without
//! `--open-as`, a standalone `bulkhead-blk --blk-file`): a backing file's name comes from
//! the header of the image naming it, so without this rule whoever may write an image
//! could have root open any file (a key, a password database) as its base and its guest
//! read it. A backing file is accepted when the owner of the image naming it could read it:
//! it belongs to that user, or everyone may read it; an image root owns may name anything.
//! An opener that is not root needs no rule: the kernel checked its own permissions.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{Chain, ChainError};

/// Refuses the first backing file of `chain` that the owner of the image naming it could
/// not read (module docs). Call it when the files were opened as root.
pub fn check_backing_owners(chain: &Chain) -> Result<(), ChainError> {
    for pair in chain.links.windows(2) {
        let [naming, backing] = pair else { continue };
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ChainError::Io { path, source }
        };
        let named_by_owner = naming.file.metadata().map_err(io(&naming.path))?.uid();
        let meta = backing.file.metadata().map_err(io(&backing.path))?;
        let readable =
            named_by_owner == 0 || meta.uid() == named_by_owner || meta.mode() & 0o004 != 0;
        if !readable {
            return Err(ChainError::BackingOwner {
                path: backing.path.clone(),
                owner: meta.uid(),
                mode: meta.mode() & 0o7777,
                named_by: naming.path.clone(),
                named_by_owner,
            });
        }
    }
    Ok(())
}
