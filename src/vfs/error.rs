//! What a file system call can fail with, and the errno each cause gets.

use crate::engine::{FetchError, FetchKind};
use crate::local::LocalError;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("bad file handle")]
    BadHandle,
    #[error("read-only mount")]
    ReadOnly,
    #[error("a rename between two mounts")]
    CrossMount,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("not supported")]
    Unsupported,
    #[error(transparent)]
    Upload(#[from] crate::engine::EngineError),
    #[error("download failed: {0}")]
    Download(#[from] FetchError),
    /// The bucket could not be asked for an entry of a mount not listed whole yet.
    #[error("cannot look in the bucket: {0}")]
    Store(crate::store::StoreError),
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl FsError {
    /// The errno a caller of the file system gets, chosen for each cause:
    /// - an object changed under an open handle: EIO, not ESTALE. The version the handle opened
    ///   is gone from the store, and the read cannot be served; programs report EIO as a failed
    ///   read, where ESTALE ("Stale file handle") reads as a network file system's problem. The
    ///   log line says to open the file again.
    /// - an object deleted: ENOENT, as for a file removed under a reader of a network file.
    /// - the store refusing or out of reach, a download cancelled: EIO.
    /// - a write into a read-only mount: EROFS, per mount; a rename between mounts: EXDEV, so
    ///   that `mv` copies.
    /// - the local copy: the system's own errno where it gave one (ENOSPC for a full cache),
    ///   EIO for what the tool refused (a symbolic link planted in the cache).
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotADirectory => libc::ENOTDIR,
            FsError::IsADirectory => libc::EISDIR,
            FsError::BadHandle => libc::EBADF,
            FsError::ReadOnly => libc::EROFS,
            // `mv` then copies and deletes.
            FsError::CrossMount => libc::EXDEV,
            FsError::Exists => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::Unsupported => libc::EINVAL,
            // An fsync whose upload failed; the log line names the key.
            FsError::Upload(_) => libc::EIO,
            FsError::Store(_) => libc::EIO,
            FsError::Download(e) => match e.kind {
                FetchKind::Changed | FetchKind::Store | FetchKind::Cancelled => libc::EIO,
                FetchKind::Gone => libc::ENOENT,
                FetchKind::Local { errno } => errno.unwrap_or(libc::EIO),
            },
            FsError::Local(e) => match e {
                LocalError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                    libc::ENOENT
                }
                LocalError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
                LocalError::Locked(_)
                | LocalError::NotADirectory(_)
                | LocalError::NotAFile(_)
                | LocalError::Kept(_)
                | LocalError::Manifest(_) => libc::EIO,
            },
            FsError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_gets_the_errno_chosen_for_it() {
        let fetch = |kind| {
            FsError::Download(FetchError {
                key: "k".into(),
                kind,
                reason: "r".into(),
            })
            .errno()
        };
        assert_eq!(fetch(FetchKind::Changed), libc::EIO);
        assert_eq!(fetch(FetchKind::Gone), libc::ENOENT);
        assert_eq!(fetch(FetchKind::Store), libc::EIO);
        assert_eq!(fetch(FetchKind::Cancelled), libc::EIO);
        let full = Some(libc::ENOSPC);
        assert_eq!(fetch(FetchKind::Local { errno: full }), libc::ENOSPC);
        assert_eq!(fetch(FetchKind::Local { errno: None }), libc::EIO);
        let gone = LocalError::Io {
            path: "p".into(),
            source: io::ErrorKind::NotFound.into(),
        };
        assert_eq!(FsError::Local(gone).errno(), libc::ENOENT);
        let link = LocalError::NotAFile("p".into());
        assert_eq!(FsError::Local(link).errno(), libc::EIO);
    }
}
