//! Progress of the current pass: counters updated by the downloads, shown as a live line on a
//! terminal and as a periodic log line otherwise.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Progress {
    pub files_total: AtomicU64,
    pub files_done: AtomicU64,
    pub bytes_total: AtomicU64,
    pub bytes_done: AtomicU64,
}

impl Progress {
    pub fn add_planned(&self, files: u64, bytes: u64) {
        self.files_total.fetch_add(files, Ordering::Relaxed);
        self.bytes_total.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn add_bytes(&self, n: u64) {
        self.bytes_done.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes back bytes counted for an attempt that failed and will be retried.
    pub fn sub_bytes(&self, n: u64) {
        self.bytes_done.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn file_done(&self) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reset(&self) {
        for c in [
            &self.files_total,
            &self.files_done,
            &self.bytes_total,
            &self.bytes_done,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }

    fn line(&self, elapsed: Duration) -> String {
        let done = self.bytes_done.load(Ordering::Relaxed);
        let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
        format!(
            "{}/{} files, {} of {}, {}/s",
            self.files_done.load(Ordering::Relaxed),
            self.files_total.load(Ordering::Relaxed),
            human_bytes(done as f64),
            human_bytes(self.bytes_total.load(Ordering::Relaxed) as f64),
            human_bytes(rate),
        )
    }

    /// Reports until the returned guard is dropped: a live line when stderr is a terminal,
    /// otherwise a log line every 10 seconds while there is work.
    pub fn report(self: &std::sync::Arc<Self>) -> ReportGuard {
        let progress = self.clone();
        let tty = std::io::stderr().is_terminal();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let period = if tty {
                Duration::from_millis(250)
            } else {
                Duration::from_secs(10)
            };
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                tick.tick().await;
                if progress.files_total.load(Ordering::Relaxed) == 0 {
                    continue;
                }
                let line = progress.line(start.elapsed());
                if tty {
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r\x1b[2K{line}");
                    let _ = err.flush();
                } else {
                    tracing::info!("progress: {line}");
                }
            }
        });
        ReportGuard { task, tty }
    }
}

pub struct ReportGuard {
    task: tokio::task::JoinHandle<()>,
    tty: bool,
}

impl Drop for ReportGuard {
    fn drop(&mut self) {
        self.task.abort();
        if self.tty {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

pub fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut n = n;
    let mut unit = 0;
    while n >= 1024.0 && unit < UNITS.len() - 1 {
        n /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n:.0} {}", UNITS[unit])
    } else {
        format!("{n:.1} {}", UNITS[unit])
    }
}

/// Log output for tracing: on a terminal, each log line first erases the live progress line
/// (which the next tick redraws), so the two never mix.
pub struct LogWriter {
    tty: bool,
}

impl LogWriter {
    pub fn stderr() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            clear_first: self.tty,
        }
    }
}

pub struct LineWriter {
    clear_first: bool,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        if std::mem::take(&mut self.clear_first) {
            err.write_all(b"\r\x1b[2K")?;
        }
        err.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
