//! Progress of the current pass: counters updated by the downloads, shown as a live line on a
//! terminal and as a periodic log line otherwise (and, in a service, in its status line).

use parking_lot::Mutex;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Progress {
    pub files_total: AtomicU64,
    pub files_done: AtomicU64,
    pub bytes_total: AtomicU64,
    pub bytes_done: AtomicU64,
    /// When the counters were last reset: the start of the pass they count.
    started: Mutex<Option<Instant>>,
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

    /// Zero, for a pass starting now.
    pub fn reset(&self) {
        *self.started.lock() = Some(Instant::now());
        for c in [
            &self.files_total,
            &self.files_done,
            &self.bytes_total,
            &self.bytes_done,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Whether the pass has planned downloads not all done yet.
    pub fn downloading(&self) -> bool {
        let total = self.files_total.load(Ordering::Relaxed);
        total > 0 && self.files_done.load(Ordering::Relaxed) < total
    }

    /// Files and bytes done of the pass's total, the rate since it started and, while bytes
    /// are left and some came, the time left at that rate.
    pub fn line(&self) -> String {
        let elapsed = self
            .started
            .lock()
            .map_or(Duration::ZERO, |at| at.elapsed());
        let done = self.bytes_done.load(Ordering::Relaxed);
        let total = self.bytes_total.load(Ordering::Relaxed);
        let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
        let mut line = format!(
            "{}/{} files, {} of {}, {}/s",
            self.files_done.load(Ordering::Relaxed),
            self.files_total.load(Ordering::Relaxed),
            human_bytes(done as f64),
            human_bytes(total as f64),
            human_bytes(rate),
        );
        if total > done && done > 0 {
            let left = Duration::from_secs_f64((total - done) as f64 / rate);
            line.push_str(&format!(", {} left", human_duration(left)));
        }
        line
    }

    /// Reports until the returned guard is dropped: a live line when stderr is the terminal
    /// this process has in the foreground, otherwise a log line every 10 seconds while there
    /// is work; nothing on a terminal the process is in the background of (`mount --daemon`
    /// started there, a shell's background job), where the user types.
    pub fn report(self: &std::sync::Arc<Self>) -> ReportGuard {
        let progress = self.clone();
        let tty = std::io::stderr().is_terminal();
        // SAFETY: tcgetpgrp and getpgrp only read this process's state.
        let foreground = tty && unsafe { libc::tcgetpgrp(2) == libc::getpgrp() };
        let task = tokio::spawn(async move {
            if tty && !foreground {
                return;
            }
            let period = if tty {
                Duration::from_millis(250)
            } else {
                Duration::from_secs(10)
            };
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                tick.tick().await;
                if !progress.downloading() {
                    continue;
                }
                let line = progress.line();
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

/// A duration as a person reads it: "45s", "3m05s", "2h10m".
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_what_is_done_of_the_total_and_the_time_left() {
        let p = Progress::default();
        p.reset();
        p.add_planned(4, 4 << 20);
        assert!(p.downloading());
        assert_eq!(
            p.line().split(", ").take(2).collect::<Vec<_>>(),
            ["0/4 files", "0 B of 4.0 MiB"]
        );
        assert!(
            !p.line().contains("left"),
            "no rate yet, no time left: {}",
            p.line()
        );
        p.add_bytes(1 << 20);
        p.file_done();
        let line = p.line();
        assert!(
            line.starts_with("1/4 files, 1.0 MiB of 4.0 MiB, "),
            "{line}"
        );
        assert!(line.ends_with(" left"), "{line}");
        for _ in 0..3 {
            p.file_done();
        }
        p.add_bytes(3 << 20);
        assert!(!p.downloading());
        assert!(!p.line().contains("left"), "{}", p.line());
    }

    #[test]
    fn durations_read_as_a_person_says_them() {
        let d = Duration::from_secs;
        assert_eq!(human_duration(d(45)), "45s");
        assert_eq!(human_duration(d(185)), "3m05s");
        assert_eq!(human_duration(d(7800)), "2h10m");
    }
}
