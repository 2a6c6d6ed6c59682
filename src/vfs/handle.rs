//! Open files: what a handle reads (a complete cache file, or a download under way, whose
//! read-ahead the engine decides: [`ReadAhead`]).

use super::FsError;
use crate::engine::{Download, ReadAhead};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// An open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    /// The same version as the previous open: the kernel may keep the pages it cached.
    pub keep_cache: bool,
    /// Still downloading: reads may have to wait for their range.
    pub partial: bool,
}

/// What a new handle reads.
pub(super) enum Content {
    /// The complete file in the local copy, opened (with its metadata) when it was found there.
    Cached(File, std::fs::Metadata),
    /// A download under way.
    Downloading(Arc<Download>),
    /// The complete file, committed while the open waited: opened by its path.
    Committed,
}

/// An open file: the cache file (complete, or still downloading).
pub(super) struct Handle {
    pub(super) file: Arc<File>,
    pub(super) download: Option<Arc<Download>>,
    /// Where this handle reads its download: what it fetches ahead of a sequential reader.
    pub(super) read_ahead: ReadAhead,
    /// The inode opened.
    pub(super) ino: u64,
    /// For a handle open for writing, its mount.
    pub(super) writes: Option<usize>,
}

pub(super) fn pread(file: &File, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
    let mut buf = vec![0; size as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}
