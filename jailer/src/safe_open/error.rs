//! Why a path a user named was refused or could not be opened.

use std::io;
use std::path::{Path, PathBuf};

use super::MAX_SYMLINKS;

/// Why a path was refused.
#[derive(Debug, thiserror::Error)]
pub enum SafeOpenError {
    /// A step led from one user's object to another user's.
    #[error(
        "{path}: refused: {component} (owned by uid {to_uid}) is reached through {from} \
         owned by uid {from_uid}; a path through a user's directory or symlink may only \
         lead to that user's own files"
    )]
    UnsafeTransition {
        /// The path as given.
        path: PathBuf,
        /// Where the walk was from (a directory or a symlink, as resolved so far).
        from: PathBuf,
        /// Its owner.
        from_uid: u32,
        /// The object reached, as resolved so far.
        component: PathBuf,
        /// Its owner.
        to_uid: u32,
    },
    /// A file with several links whose owner is not its directory's owner.
    #[error(
        "{path}: refused: {component} (owned by uid {owner}) has {links} hard links and lies \
         in a directory owned by uid {dir_uid}; it may be another user's file linked there"
    )]
    HardLink {
        /// The path as given.
        path: PathBuf,
        /// The file, as resolved.
        component: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its link count.
        links: u64,
        /// The directory's owner.
        dir_uid: u32,
    },
    /// Too many symlinks.
    #[error("{path}: more than {MAX_SYMLINKS} symbolic links (a loop?)")]
    TooManySymlinks {
        /// The path as given.
        path: PathBuf,
    },
    /// The object changed between the check and the open.
    #[error("{path}: {component} changed while it was being opened")]
    Swapped {
        /// The path as given.
        path: PathBuf,
        /// The object, as resolved.
        component: PathBuf,
    },
    /// A system call failed.
    #[error("{}", io_message(.path, .what, .component))]
    Io {
        /// The path as given.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The object, as resolved so far.
        component: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl SafeOpenError {
    /// The I/O error behind a failed system call, if that is what this is.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            SafeOpenError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    /// The same error, for `path` as given (a socket in the directory that was opened).
    pub(super) fn for_path(mut self, given: &Path) -> SafeOpenError {
        match &mut self {
            SafeOpenError::UnsafeTransition { path, .. }
            | SafeOpenError::HardLink { path, .. }
            | SafeOpenError::TooManySymlinks { path }
            | SafeOpenError::Swapped { path, .. }
            | SafeOpenError::Io { path, .. } => *path = given.to_owned(),
        }
        self
    }
}

/// "PATH: resolving COMPONENT", or "PATH" alone when the component is the whole path.
fn io_message(path: &Path, what: &str, component: &Path) -> String {
    if path == component {
        path.display().to_string()
    } else {
        format!("{}: {what} {}", path.display(), component.display())
    }
}
