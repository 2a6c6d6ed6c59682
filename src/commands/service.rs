//! What a service manager sees of a run: systemd's notify protocol (`sd_notify`), when the
//! run was started with `NOTIFY_SOCKET` set (a unit of `Type=notify`), and nothing otherwise.
//!
//! - `READY=1` once the run does its job: a mount once its file system is mounted and
//!   serving; a recurring sync once its mounts are open and its first pass starts (a first
//!   pass of a big bucket may take longer than a start is given).
//! - `STATUS=` a line of what it is doing, sent again whenever it changes: the pass's downloads
//!   (files and bytes done of total, rate, time left), the writeable mounts' uploads, the last
//!   completed pass and its failures. The live progress line shows the same numbers.
//! - `STOPPING=1` as it stops (an unmount, a signal, the end of
//!   `--stop-recurring-downloads-after`).

use crate::progress::Progress;
use parking_lot::Mutex;
use sd_notify::NotifyState;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

/// How often the status line is looked at (and sent when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// The service manager of this run, if it has one.
#[derive(Clone, Copy)]
pub struct Service {
    notify: bool,
}

impl Service {
    /// systemd's, when `NOTIFY_SOCKET` is set.
    pub fn from_env() -> Self {
        Self {
            notify: std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty()),
        }
    }

    pub fn ready(self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    pub fn stopping(self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    fn send(self, states: &[NotifyState]) {
        if !self.notify {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::debug!("cannot notify the service manager: {e}");
        }
    }

    /// Sends the status line of `run` whenever it changes (looking every few seconds), for as
    /// long as it is polled.
    pub async fn keep_status(self, run: Arc<RunStatus>) {
        if !self.notify {
            return;
        }
        let mut sent = String::new();
        loop {
            tokio::time::sleep(STATUS_EVERY).await;
            let line = run.line();
            if line != sent {
                self.status(&line);
                sent = line;
            }
        }
    }
}

/// What a run is doing, as its status line says it.
#[derive(Default)]
pub struct RunStatus {
    /// The current pass's downloads.
    pub progress: Arc<Progress>,
    /// When the last pass over every mount ended, and how many of its files failed.
    last_pass: Mutex<Option<(SystemTime, usize)>>,
    /// Writeable mounts' local changes uploaded (or deleted remotely) by this run.
    uploaded: AtomicU64,
    /// By mount: the local changes its last upload round left (not quiet yet, open for
    /// writing, or failed); none when no mount is writeable.
    waiting: Box<[AtomicUsize]>,
}

impl RunStatus {
    /// The status of a run of `mounts` mounts, of which some are `writeable`.
    pub fn new(progress: Arc<Progress>, mounts: usize, writeable: bool) -> Self {
        let waiting = (0..if writeable { mounts } else { 0 }).map(|_| AtomicUsize::new(0));
        Self {
            progress,
            waiting: waiting.collect(),
            ..Self::default()
        }
    }

    /// A pass over every mount ended now, `failed` files failing.
    pub fn pass_done(&self, failed: usize) {
        *self.last_pass.lock() = Some((SystemTime::now(), failed));
    }

    /// A round of mount `mount`'s uploads sent `uploaded` changes and left `left`.
    pub fn uploads(&self, mount: usize, uploaded: usize, left: usize) {
        self.uploaded.fetch_add(uploaded as u64, Ordering::Relaxed);
        if let Some(waiting) = self.waiting.get(mount) {
            waiting.store(left, Ordering::Relaxed);
        }
    }

    /// The status line now.
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        if self.progress.downloading() {
            parts.push(format!("downloading {}", self.progress.line()));
        }
        if !self.waiting.is_empty() {
            let waiting: usize = self.waiting.iter().map(|w| w.load(Ordering::Relaxed)).sum();
            let uploaded = self.uploaded.load(Ordering::Relaxed);
            parts.push(format!("uploaded {uploaded}, {waiting} waiting"));
        }
        match *self.last_pass.lock() {
            Some((at, failed)) => {
                parts.push(format!("last pass at {} UTC, {failed} failed", clock(at)));
            }
            None if parts.is_empty() => parts.push("first pass".to_owned()),
            None => {}
        }
        parts.join("; ")
    }
}

/// The time of day of `at`, UTC, as `HH:MM:SS`: a line that names when, not how long ago, is
/// the same line until something happens.
fn clock(at: SystemTime) -> String {
    let s = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_says_what_the_run_is_doing() {
        let progress = Arc::new(Progress::default());
        let run = RunStatus::new(progress.clone(), 2, true);
        assert_eq!(run.line(), "uploaded 0, 0 waiting");
        progress.reset();
        progress.add_planned(2, 2048);
        assert!(
            run.line()
                .starts_with("downloading 0/2 files, 0 B of 2.0 KiB")
        );
        progress.add_bytes(2048);
        progress.file_done();
        progress.file_done();
        run.pass_done(1);
        run.uploads(0, 3, 2);
        run.uploads(1, 1, 1);
        run.uploads(0, 0, 0);
        let line = run.line();
        let (uploads, pass) = line.split_once("; ").unwrap();
        assert_eq!(uploads, "uploaded 4, 1 waiting");
        assert!(
            pass.starts_with("last pass at ") && pass.ends_with(" UTC, 1 failed"),
            "{line}"
        );
        let read_only = RunStatus::new(Arc::new(Progress::default()), 1, false);
        assert_eq!(read_only.line(), "first pass");
    }

    #[test]
    fn a_time_reads_as_its_utc_time_of_day() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(20_000 * 86_400 + 3_723);
        assert_eq!(clock(at), "01:02:03");
    }
}
