//! The `status` command: "is my work saved?" for a `sync` destination or a `mount` point (whose
//! local copy is its cache directory). It reads, from outside and without changing anything,
//! what a running (or stopped) `sync` or `mount` left there: which mounts are
//! writeable (the status file a `sync` writes at start and after each pass), each writeable
//! mount's local changes not uploaded yet (its manifest against a walk of its directory, the
//! same rules a pass follows), multipart uploads a crash left open, and whether a process
//! holds the destination.

use crate::engine::plan::{Upload, local_changes, local_deletions};
use crate::local::dirs;
use crate::local::manifest::Manifest;
use crate::local::root::{Root, manifest_dir, status_file};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// What a `sync` says about itself in its destination (a `mount`, in its cache directory).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Recorded {
    pub mounts: Vec<RecordedMount>,
    /// For a `mount`: where it serves the mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_point: Option<PathBuf>,
    /// For a `mount`: its process, which `status --wait` asks to upload at once (SIGUSR1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

impl Recorded {
    /// The record of a run of `mounts` that has not completed a pass yet.
    pub fn starting(mounts: &[crate::mounts::Mount], mount_point: Option<PathBuf>) -> Self {
        let mounts = mounts.iter().map(|m| RecordedMount {
            id: m.id.clone(),
            writeable: m.writeable,
            last_pass: None,
            conflicts: 0,
        });
        let pid = mount_point.as_ref().map(|_| std::process::id());
        Self {
            mounts: mounts.collect(),
            mount_point,
            pid,
        }
    }

    /// Mount `id` completed a pass now, keeping `conflicts` more local versions.
    pub fn pass_done(&mut self, id: &str, conflicts: usize) {
        if let Some(m) = self.mounts.iter_mut().find(|m| m.id == id) {
            m.last_pass = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs());
            m.conflicts += conflicts;
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordedMount {
    pub id: String,
    pub writeable: bool,
    /// When its last pass ended, in seconds since the Unix epoch.
    #[serde(default)]
    pub last_pass: Option<u64>,
    /// Local versions kept beside conflicting remote ones, this run.
    #[serde(default)]
    pub conflicts: usize,
}

/// Writes the status file of the destination `root` (replaced atomically); a failure is only
/// logged: the run goes on, and `status` says less.
pub fn record(root: &Path, recorded: &Recorded) {
    let path = status_file(root);
    let tmp = path.with_extension("json.tmp");
    let written = std::fs::write(&tmp, serde_json::to_vec(recorded).expect("serializes"))
        .and_then(|()| std::fs::rename(tmp, path));
    if let Err(e) = written {
        tracing::debug!("cannot write the status file: {e}");
    }
}

/// How `status` ends, as an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// Every local change is in the bucket (0).
    All,
    /// Changes wait for the running `sync` (1).
    Pending,
    /// Changes wait, and no `sync` runs there to upload them: they go at its next start (3).
    Stopped,
}

impl Saved {
    pub fn code(self) -> u8 {
        match self {
            Saved::All => 0,
            Saved::Pending => 1,
            Saved::Stopped => 3,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "{} is not a destination of s3-synchronizer sync (it has no {}) nor of a mount whose \
         cache is found; give the --destination the sync or mount was given (and a mount's \
         --cache-dir, if it was given one)",
        .0.display(),
        crate::mounts::STATE_DIR
    )]
    NotADestination(PathBuf),
    #[error("{0}")]
    Read(String),
}

/// What of a writeable mount's local copy is not in the bucket yet.
pub struct Unsaved {
    /// New and changed files, and new empty directories.
    pub changes: Vec<Upload>,
    /// Files deleted locally whose objects are not deleted yet.
    pub deleted: Vec<String>,
    /// Multipart uploads a crash left open.
    pub open: usize,
}

/// What of mount `id` of the destination `root` is not in the bucket yet, read from outside
/// (the manifest read-only, a walk of the directory) by the rules a pass follows.
pub fn unsaved(root: &Path, id: &str) -> Result<Unsaved, StatusError> {
    let read = Manifest::read_only(&manifest_dir(root, id))
        .map_err(|e| StatusError::Read(e.to_string()))?;
    let scanned = dirs::scan(&root.join(id)).map_err(|e| StatusError::Read(e.to_string()))?;
    Ok(Unsaved {
        changes: local_changes("", &read.entries, &scanned.found),
        deleted: local_deletions(&read.entries, &scanned.found)
            .map(|(path, _)| path.to_owned())
            .collect(),
        open: read.uploads.len(),
    })
}

/// One look at `root`: prints what is pending per mount; `Saved` says what it found.
pub fn look(root: &Path, out: &mut impl std::io::Write) -> Result<Saved, StatusError> {
    if !root.join(crate::mounts::STATE_DIR).is_dir() {
        return Err(StatusError::NotADestination(root.to_owned()));
    }
    let running = Root::in_use(root);
    let recorded: Option<Recorded> = std::fs::read(status_file(root))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let Some(recorded) = recorded else {
        // A sync writes its status file once its mounts are open: it is starting.
        if running {
            let _ = writeln!(out, "a sync is starting in {}", root.display());
            return Ok(Saved::Pending);
        }
        return Err(StatusError::NotADestination(root.to_owned()));
    };
    let mut pending = 0;
    for mount in &recorded.mounts {
        if !mount.writeable {
            let _ = writeln!(out, "mount \"{}\": read-only (nothing to upload)", mount.id);
            continue;
        }
        let Unsaved {
            changes,
            deleted,
            open,
        } = unsaved(root, &mount.id)?;
        let bytes: u64 = changes.iter().filter_map(|c| c.stamp.map(|s| s.size)).sum();
        let last = mount
            .last_pass
            .map(|s| {
                let at = SystemTime::UNIX_EPOCH + Duration::from_secs(s);
                let ago = SystemTime::now().duration_since(at).unwrap_or_default();
                format!("last pass {} s ago", ago.as_secs())
            })
            .unwrap_or_else(|| "no pass completed yet".into());
        let _ = writeln!(
            out,
            "mount \"{}\": {} changed or new, {} bytes, and {} deleted, not uploaded yet; {} \
             conflicts kept this run; {last}",
            mount.id,
            changes.len(),
            bytes,
            deleted.len(),
            mount.conflicts
        );
        for change in &changes {
            let _ = writeln!(out, "  not uploaded: {}", change.path);
        }
        for path in &deleted {
            let _ = writeln!(out, "  deleted, not yet in the bucket: {path}");
        }
        if open > 0 {
            let _ = writeln!(out, "  {open} multipart upload(s) left open by a crash");
        }
        pending += changes.len() + deleted.len() + open;
    }
    let _ = match (&recorded.mount_point, running) {
        (None, true) => writeln!(out, "a sync is running in {}", root.display()),
        (None, false) => writeln!(out, "no sync is running in {}", root.display()),
        (Some(at), true) => writeln!(out, "a mount is running at {}", at.display()),
        (Some(at), false) => writeln!(out, "no mount is running at {}", at.display()),
    };
    Ok(match (pending, running) {
        (0, _) => Saved::All,
        (_, true) => Saved::Pending,
        (_, false) => Saved::Stopped,
    })
}

/// Asks the `mount` whose local copy is `root` to upload every closed file now (SIGUSR1; a
/// `sync` uploads at its next pass).
fn ask_to_flush(root: &Path) {
    let recorded: Option<Recorded> = std::fs::read(status_file(root))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let Some(pid) = recorded.and_then(|r| r.pid) else {
        return;
    };
    // Only the process that holds the copy: a pid left by a stopped mount may be reused.
    if Root::in_use(root)
        && let Ok(pid) = libc::pid_t::try_from(pid)
    {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGUSR1);
        }
    }
}

/// `status`: one look, or with `wait` looks again until every change is uploaded (or no `sync`
/// or `mount` is left to upload them): every 50 ms, or twice as long as a look takes
/// (each walks the writeable mounts' directories), whichever is longer.
pub fn status(root: &Path, wait: bool) -> Result<Saved, StatusError> {
    let mut stdout = std::io::stdout();
    let mut asked = false;
    loop {
        let mut report = Vec::new();
        let started = std::time::Instant::now();
        let saved = look(root, &mut report)?;
        if !wait || saved != Saved::Pending {
            use std::io::Write;
            let _ = stdout.write_all(&report);
            return Ok(saved);
        }
        if !asked {
            asked = true;
            ask_to_flush(root);
        }
        std::thread::sleep((2 * started.elapsed()).max(Duration::from_millis(50)));
    }
}
