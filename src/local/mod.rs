//! A local copy, the tree the engine fills: `root/<mount id>/...` for the data and `root/.s3-synchronizer/`
//! for the tool's state (a lock, per-mount manifests, the staging area for small files, and
//! resumable partial downloads of large ones).
//!
//! Invariants:
//! - Data is written only into staging files, on the same file system as the data, and moved to
//!   its final path by one `rename` after it is complete: no reader ever sees a partial file, and
//!   a crash leaves debris only in staging, which the next start clears.
//! - A large file downloads into `partial/<mount id>/<hash of key>.part`, a sparse file, with a
//!   record beside it (key, ETag, size and the byte ranges present) rewritten after each part.
//!   The record never claims a range before its bytes are written, so after a crash the next run
//!   fetches only what is missing. It has two slots (`.json`, `.1.json`), overwritten in place
//!   in turn, each write numbered: the newest intact one is read, so a write cut short leaves
//!   the one before. (Not replaced by `rename`: that frees the old record's blocks while the
//!   directory is locked, and a reader's open of a file not yet downloaded waits for it;
//!   measurements: docs/PERFORMANCE.md, "Partial-download records".)
//! - The tool never writes or deletes through a symbolic link: the directories on the way to a
//!   final path are opened one at a time with `O_NOFOLLOW`, files are renamed into and unlinked
//!   from those open directories (so a link swapped in meanwhile is not followed either), and
//!   only regular files are deleted.
//! - One process at a time owns a root (an exclusive `flock` on `lock`).
//!
//! Rooms: [`root`] (the lock, staging, partial files), [`dirs`] (the symlink-safe directory
//! primitives), [`manifest`] (what the tool put on disk), [`copy`] (one mount's copy: its
//! directory and manifest together, the only way the rest of the crate changes either).

pub mod copy;
pub mod dirs;
pub mod entries;
pub mod manifest;
pub mod root;
pub mod watch;

pub use copy::MountCopy;
pub use dirs::Local;
pub use root::{Root, Staged};

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another s3-synchronizer is already using {}", .0.display())]
    Locked(PathBuf),
    #[error("refusing to write through {}: it is a symbolic link or not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("refusing to read {}: it is a symbolic link or not a regular file", .0.display())]
    NotAFile(PathBuf),
    #[error(
        "kept {} as it is: it was changed, deleted or opened for writing here since its download \
         was planned",
        .0.display()
    )]
    Kept(PathBuf),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LocalError + '_ {
    move |source| LocalError::Io {
        path: path.to_owned(),
        source,
    }
}
