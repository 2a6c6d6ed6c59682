//! A running `s3-synchronizer mount` for tests, and helpers around FUSE mounts.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::S3Server;

/// A running `s3-synchronizer mount`, unmounted and stopped when dropped (also when a test fails).
pub struct Mounted {
    pub child: Child,
    pub dest: PathBuf,
    log: PathBuf,
}

pub fn is_mount_point(dir: &Path) -> bool {
    match (std::fs::metadata(dir), std::fs::metadata(dir.join(".."))) {
        (Ok(d), Ok(parent)) => d.dev() != parent.dev(),
        _ => false,
    }
}

pub fn fusermount_u(dest: &Path, lazy: bool) -> ExitStatus {
    let mut cmd = Command::new("fusermount3");
    cmd.arg(if lazy { "-uz" } else { "-u" }).arg(dest);
    cmd.stdin(Stdio::null())
        .status()
        .expect("fusermount3 (apt-get install fuse3)")
}

/// Where a test keeps its mount point (`mnt`), cache (`cache`) and the tool's log.
pub fn dirs(root: &Path) -> (PathBuf, PathBuf) {
    let (dest, cache) = (root.join("mnt"), root.join("cache"));
    std::fs::create_dir_all(&dest).unwrap();
    (dest, cache)
}

impl Mounted {
    /// Starts `mount` of `mounts` at `root/mnt` with its cache in `root/cache`, and waits until
    /// the file system is mounted.
    pub fn start(s3: &S3Server, root: &Path, mounts: &str, extra: &[&str]) -> Self {
        Self::start_with(s3.tool(), root, mounts, extra)
    }

    /// Like [`Mounted::start`], with the tool command given (e.g. pointed at another server).
    pub fn start_with(mut cmd: Command, root: &Path, mounts: &str, extra: &[&str]) -> Self {
        let (dest, cache) = dirs(root);
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let log = root.join(format!(
            "mount-{}.log",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        cmd.args(["mount", "--default-s3-mounts", mounts, "--destination"])
            .arg(&dest)
            .arg("--cache-dir")
            .arg(&cache)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap());
        let mut mounted = Self {
            child: cmd.spawn().unwrap(),
            dest,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !is_mount_point(&mounted.dest) {
            if let Some(status) = mounted.child.try_wait().unwrap() {
                panic!("mount exited early ({status}):\n{}", mounted.log());
            }
            assert!(Instant::now() < deadline, "not mounted:\n{}", mounted.log());
            std::thread::sleep(Duration::from_millis(10));
        }
        mounted
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where the tool's log is written (beside the mount point and cache).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the tool's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Polls `cond` every 50 ms for up to `secs` seconds; on giving up, panics saying what it
    /// waited for, with the end of the tool's log.
    #[track_caller]
    pub fn wait_until(&self, secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "gave up after {secs} s waiting for {what}; the end of the tool's log:\n{}",
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many background passes have completed so far (each logs "pass complete").
    pub fn passes(&self) -> usize {
        self.log().matches("pass complete").count()
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Also when it stopped with downloads under way.
                let log = self.log();
                assert!(!log.contains("panicked"), "a thread panicked:\n{log}");
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "mount did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `fusermount3 -u`, then the exit status of the process.
    pub fn unmount(&mut self) -> ExitStatus {
        assert!(
            fusermount_u(&self.dest, false).success(),
            "fusermount3 -u failed"
        );
        self.wait()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if is_mount_point(&self.dest) {
            fusermount_u(&self.dest, true);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn errno(result: std::io::Result<impl std::fmt::Debug>) -> Option<i32> {
    result.expect_err("the mount is read-only").raw_os_error()
}

/// Files with the same relative paths and bytes in both trees, by `diff -r`.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .arg("-r")
        .args([a, b])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "diff -r {} {}:\n{}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
