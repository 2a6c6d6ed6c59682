//! Open files: what a handle reads (a complete cache file, or a download under way), and the
//! read-ahead of a sequential reader.

use super::FsError;
use crate::engine::Download;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Where the last read ended: a read starting there is sequential.
    pub(super) next: AtomicU64,
    /// How far ahead of a sequential reader its file is fetched: doubles with each sequential
    /// read up to [`READ_AHEAD`], and starts over after a random one.
    pub(super) window: AtomicU64,
}

impl Handle {
    /// A sequential reader of a downloading file gets the next stretch fetched ahead of it.
    pub(super) fn read_ahead(&self, download: &Arc<Download>, offset: u64, end: u64) {
        if self.next.load(Ordering::Relaxed) != offset {
            self.window.store(0, Ordering::Relaxed);
            return;
        }
        let window = (self.window.load(Ordering::Relaxed) * 2).clamp(MIN_AHEAD, READ_AHEAD);
        self.window.store(window, Ordering::Relaxed);
        download.prefetch(end..end + window);
    }
}

/// How far ahead of a sequential reader a downloading file is fetched: at first (a reader of a
/// header reads a few bytes and stops) ...
const MIN_AHEAD: u64 = 1 << 20;
/// ... and at most.
const READ_AHEAD: u64 = 16 << 20;

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
