//! One ranged GET (with retries) streamed into a file, batch by batch.

use super::lanes::{hold_back, is_urgent, permit, serves_waiting_reader};
use super::{Job, PartError, URGENT_BATCH, WRITE_BATCH};
use crate::retry::retry;
use crate::store::{ObjectMeta, StoreError};
use crate::tasks::joined;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::SemaphorePermit;

/// Where the bytes of a GET go: into the partial file, each stretch reported once written.
pub(super) type ToFile<'a> = (&'a Arc<File>, &'a (dyn Fn(Range<u64>) + Sync));

/// Downloads `range` of an object with retries. With a file, the bytes are written to it as
/// they arrive and a retry asks only for what did not land; without, they are returned.
pub(super) async fn download_part(
    job: &Job,
    meta: &ObjectMeta,
    range: Range<u64>,
    to: Option<ToFile<'_>>,
    urgent: &(dyn Fn() -> bool + Sync),
    first_permit: Option<SemaphorePermit<'_>>,
) -> Result<Vec<Bytes>, PartError> {
    let first_permit = Mutex::new(first_permit);
    // Bytes before this one are in the file.
    let written = &AtomicU64::new(range.start);
    retry(&meta.key, || async {
        let given = first_permit.lock().take();
        // Only this GET's tries move `written`, one after another.
        let from = written.load(Ordering::SeqCst);
        let _permit = match given {
            Some(p) => p,
            None => permit(job, urgent, range.end - from).await,
        };
        read_part(job, meta, from..range.end, to, written, urgent).await
    })
    .await
}

/// One GET of `range`; with a file, each stretch written to it moves `written` past it.
async fn read_part(
    job: &Job,
    meta: &ObjectMeta,
    range: Range<u64>,
    to: Option<ToFile<'_>>,
    written: &AtomicU64,
    urgent: &(dyn Fn() -> bool + Sync),
) -> Result<Vec<Bytes>, PartError> {
    let progress = &job.downloader.progress;
    let asked = std::time::Instant::now();
    // A GET a reader waits for goes through connections of the readers' own, which the
    // readers' runtime drives (see `ObjectStore::get_for_reader`).
    let etag = meta.etag.to_string();
    let mut body = if is_urgent(job, urgent) {
        job.store.get_for_reader(&meta.key, range.clone(), &etag)
    } else {
        job.store.get(&meta.key, range.clone(), &etag)
    }
    .await?;
    if is_urgent(job, urgent) {
        // With "read waits"/"read waited", tells the server's share of a reader's wait.
        tracing::debug!(key = %meta.key, ?range, elapsed = ?asked.elapsed(), "reader's GET answered");
    }
    // Bytes counted in the progress but not written: taken back if the GET fails.
    let mut batched = 0usize;
    let result = async {
        let mut offset = range.start;
        let mut batch: Vec<Bytes> = Vec::new();
        loop {
            if to.is_some() {
                hold_back(job, urgent).await;
            }
            let Some(chunk) = body.next().await else {
                break;
            };
            let chunk = chunk?;
            if offset + (batched + chunk.len()) as u64 > range.end {
                return Err(StoreError::Transient(format!(
                    "server sent more than the {} bytes asked for",
                    range.end - range.start
                ))
                .into());
            }
            progress.add_bytes(chunk.len() as u64);
            if let Some(m) = crate::metrics::get() {
                m.downloaded_bytes.inc_by(chunk.len() as u64);
            }
            batched += chunk.len();
            batch.push(chunk);
            let full = batched >= WRITE_BATCH
                || batched >= URGENT_BATCH && serves_waiting_reader(job, urgent);
            if let Some(to) = to
                && full
            {
                let inline = is_urgent(job, urgent);
                offset =
                    write_landed(to, std::mem::take(&mut batch), offset, written, inline).await?;
                batched = 0;
            }
        }
        if let Some(to) = to
            && !batch.is_empty()
        {
            let inline = is_urgent(job, urgent);
            offset = write_landed(to, std::mem::take(&mut batch), offset, written, inline).await?;
            batched = 0;
        }
        if offset + batched as u64 != range.end {
            return Err(StoreError::Transient(format!(
                "body ended early: got {} of {} bytes",
                offset + batched as u64 - range.start,
                range.end - range.start
            ))
            .into());
        }
        Ok(batch)
    }
    .await;
    match (&result, crate::metrics::get()) {
        (Err(_), _) => progress.sub_bytes(batched as u64),
        (Ok(_), Some(m)) => m.get_duration.observe(asked.elapsed().as_secs_f64()),
        (Ok(_), None) => {}
    }
    result
}

/// Writes a batch of a GET at `offset` and reports it landed; returns the offset after it. A
/// batch a reader waits for is written right here (a `pwritev` of at most a megabyte into the
/// page cache): a trip to the blocking pool and back would cost the reader two thread
/// wake-ups, each of which can take milliseconds on a busy machine.
async fn write_landed(
    (file, landed): ToFile<'_>,
    batch: Vec<Bytes>,
    offset: u64,
    written: &AtomicU64,
    inline: bool,
) -> io::Result<u64> {
    let len: u64 = batch.iter().map(|b| b.len() as u64).sum();
    if inline {
        write_all_vectored_at(file, &batch, offset)?;
    } else {
        write_batch(file, batch, offset).await?;
    }
    let end = offset + len;
    written.store(end, Ordering::SeqCst);
    landed(offset..end);
    Ok(end)
}

async fn write_batch(file: &Arc<File>, batch: Vec<Bytes>, offset: u64) -> io::Result<()> {
    let file = file.clone();
    joined(tokio::task::spawn_blocking(move || {
        write_all_vectored_at(&file, &batch, offset)
    }))
    .await?
}

/// `pwritev` of every buffer at `offset`, looping over short writes: one system call per batch
/// instead of one per network chunk, and no copy into an intermediate buffer.
pub(super) fn write_all_vectored_at(
    file: &File,
    bufs: &[Bytes],
    mut offset: u64,
) -> io::Result<()> {
    let mut bufs: Vec<&[u8]> = bufs
        .iter()
        .map(|b| &b[..])
        .filter(|b| !b.is_empty())
        .collect();
    let mut first = 0;
    while first < bufs.len() {
        let iov: Vec<libc::iovec> = bufs[first..]
            .iter()
            .take(1024) // IOV_MAX
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: every iovec points into a live, immutable `Bytes` buffer borrowed for the
        // duration of the call; pwritev only reads from them.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                offset as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        offset += n as u64;
        let mut written = n as usize;
        while written > 0 {
            let b = bufs[first];
            if written >= b.len() {
                written -= b.len();
                first += 1;
            } else {
                bufs[first] = &b[written..];
                written = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectored_writes_land_at_their_offset() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let bufs: Vec<Bytes> = (0..3000u32)
            .map(|i| Bytes::from(vec![(i % 251) as u8; 7]))
            .collect();
        write_all_vectored_at(tmp.as_file(), &bufs, 5).unwrap();
        let data = std::fs::read(tmp.path()).unwrap();
        assert_eq!(data.len(), 5 + 3000 * 7);
        assert!(data[..5].iter().all(|&b| b == 0));
        assert_eq!(data[5 + 7 * 2999], (2999 % 251) as u8);
    }
}
