//! The command line: `sync` (and the original program's Go-style flags, which imply `sync`) and
//! `mount`, turned into a validated [`SyncConfig`] or [`MountConfig`].
//!
//! Go's flag package accepts `-flag` and `--flag`, `-flag value` and `-flag=value`, and bare
//! booleans with `-flag=false`. Clap handles the double-dash forms through aliases; before clap
//! sees the arguments, a single-dash token naming a known long flag gets its second dash.
//!
//! The flags both commands share live in [`CommonArgs`]; those whose meaning differs (the
//! destination is a copy's directory for `sync` and the mount point for `mount`; the interval
//! schedules passes for one and refreshes the listing for the other) are declared by each
//! command with its own help text.

use crate::mounts::{Mount, MountsError, parse_mounts};
use crate::store::s3::S3Options;
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "s3-synchronizer",
    version,
    about = "Puts data from S3 (and S3-compatible stores) on the local file system",
    after_help = "Run without a subcommand, the original program's flags mean `sync`:\n  \
                  s3-synchronizer -defaultS3Mounts '[...]' -destination /data -recurringDownloads"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Copy each mount to DESTINATION/<id>/, once or on a schedule.
    Sync(SyncArgs),
    /// Serve each mount at DESTINATION/<id>/ (FUSE): every file is visible at once and
    /// downloaded into a local cache in the background; a read of a file not yet downloaded
    /// fetches it first. Writeable mounts upload what is written into them; the others are
    /// read-only.
    Mount(MountArgs),
    /// Say whether the local changes of a sync destination's writeable mounts are all in S3
    /// (exit 0), still waiting for the running sync (exit 1), or waiting with no sync running
    /// there (exit 3: they go at its next start).
    Status(StatusArgs),
}

/// `status`: which destination, and whether to wait.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// The --destination the sync or the mount was given.
    #[arg(long, value_name = "DIR")]
    pub destination: PathBuf,

    /// For a mount: the --cache-dir it was given (default: the one it picks for that
    /// destination).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Wait until every change is uploaded (exit 0), or no sync is left running to upload
    /// them (exit 3).
    #[arg(long)]
    pub wait: bool,
}

/// The flags of the original program that mean the same for both commands, with kebab-case
/// names and the original names as aliases.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// The mounts, as JSON: [{"id":"x","bucket":"b","prefix":"p/","writeable":false,"kmsKeyId":"k"}]
    #[arg(long, visible_alias = "defaultS3Mounts", value_name = "JSON")]
    pub default_s3_mounts: Option<String>,

    /// Read the mounts JSON from this file instead.
    #[arg(long, value_name = "PATH", conflicts_with = "default_s3_mounts")]
    pub mounts_file: Option<PathBuf>,

    /// Ranged GETs in flight at once, across all files and mounts.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub concurrency: usize,

    /// Print debug information (RUST_LOG, when set, takes precedence).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", value_parser = parse_go_bool, value_name = "BOOL")]
    pub debug: bool,

    /// AWS region (default: AWS_REGION or the profile's, then us-east-1). A bucket in another
    /// region is detected and read there.
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// AWS credentials profile (default: the standard credentials chain).
    #[arg(long, value_name = "PROFILE")]
    pub profile: Option<String>,

    /// Endpoint of an S3-compatible store, an http:// or https:// URL (also AWS_ENDPOINT_URL_S3
    /// or AWS_ENDPOINT_URL).
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,

    /// Address buckets as ENDPOINT/bucket (automatic for IP-address and localhost endpoints).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", value_parser = parse_go_bool, value_name = "BOOL")]
    pub force_path_style: bool,

    /// Objects larger than this download as parallel ranged GETs of this size (e.g. 8MiB).
    #[arg(long, default_value = "8MiB", value_parser = parse_size, value_name = "SIZE")]
    pub part_size: u64,

    /// Serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9464 or
    /// localhost:9464; off unless given).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_listen_addr)]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// `sync`: the original program's flags.
#[derive(Args, Debug, Clone)]
pub struct SyncArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// The directory each mount is copied into, as DESTINATION/<id>/.
    #[arg(long, default_value = "./", value_name = "DIR")]
    pub destination: PathBuf,

    /// Keep synchronizing every --download-interval seconds.
    #[arg(long, visible_alias = "recurringDownloads", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = parse_go_bool,
          value_name = "BOOL")]
    pub recurring_downloads: bool,

    /// Stop recurring downloads after this many seconds; zero or negative: never.
    #[arg(long, visible_alias = "stopRecurringDownloadsAfter", default_value_t = -1,
          allow_negative_numbers = true, value_name = "SECONDS")]
    pub stop_recurring_downloads_after: i64,

    /// Seconds to wait after one pass completes before the next one starts.
    #[arg(
        long,
        visible_alias = "downloadInterval",
        default_value_t = 60,
        allow_negative_numbers = true,
        value_name = "SECONDS"
    )]
    pub download_interval: i64,

    /// With --recurring-downloads, how long a changed file of a writeable mount must have been
    /// left alone before it is uploaded (a one-shot run uploads every change at once).
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub upload_delay: u64,

    /// When a signal (or --stop-recurring-downloads-after) stops the run, how long it may go on
    /// uploading writeable mounts' changes before it exits (a second signal exits at once).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub flush_timeout: u64,
}

/// `mount`: the shared flags, with those of scheduling and destination described as a mount
/// uses them, and the file system's own.
#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// The mount point: an empty directory, where each mount is served as MOUNTPOINT/<id>/.
    #[arg(long, required = true, value_name = "MOUNTPOINT")]
    pub destination: PathBuf,

    /// Seconds between listings: new, changed and deleted objects show after the next one.
    #[arg(
        long,
        visible_alias = "downloadInterval",
        default_value_t = 60,
        allow_negative_numbers = true,
        value_name = "SECONDS"
    )]
    pub download_interval: i64,

    /// Stop refreshing the listing after this many seconds, and keep serving what is cached;
    /// zero or negative: never.
    #[arg(long, visible_alias = "stopRecurringDownloadsAfter", default_value_t = -1,
          allow_negative_numbers = true, value_name = "SECONDS")]
    pub stop_recurring_downloads_after: i64,

    /// Accepted for the original program's command lines, and ignored: a mount always refreshes.
    #[arg(long, visible_alias = "recurringDownloads", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = parse_go_bool,
          value_name = "BOOL", hide = true)]
    pub recurring_downloads: bool,

    /// Where downloaded files are kept (default: $XDG_CACHE_HOME/s3-synchronizer/<destination>,
    /// or under ~/.cache).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Mount over a destination that is not empty.
    #[arg(long)]
    pub allow_non_empty: bool,

    /// Let other users read the mount (needs user_allow_other in /etc/fuse.conf for non-root).
    #[arg(long, conflicts_with = "allow_root")]
    pub allow_other: bool,

    /// Let root read the mount too.
    #[arg(long)]
    pub allow_root: bool,

    /// Run in the background: return once the file system is mounted.
    #[arg(long)]
    pub daemon: bool,

    /// Serve every read through this process, even where the kernel could read complete cache
    /// files directly (FUSE passthrough).
    #[arg(long)]
    pub no_passthrough: bool,

    /// Serve every mount read-only, writeable ones too (mount(8)'s `ro`).
    #[arg(long)]
    pub read_only: bool,

    /// On SIGINT or SIGTERM with files under the mount still open: how long to keep serving
    /// them (the mount is detached at once) before exiting anyway. A second signal exits at once.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub open_files_timeout: u64,

    /// How long a file written into a writeable mount must have been closed and left alone
    /// before it is uploaded (fsync uploads at once).
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub upload_delay: u64,

    /// When the mount is unmounted or stopped, how long it may go on uploading writeable
    /// mounts' changes before it exits (the next start uploads what is left).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub flush_timeout: u64,
}

/// Everything `sync` needs, validated. `mount` uses it too, for what both commands share.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub mounts: Vec<Mount>,
    pub destination: PathBuf,
    pub concurrency: usize,
    pub part_size: u64,
    pub debug: bool,
    pub recurring: bool,
    pub interval: Duration,
    pub stop_after: Option<Duration>,
    /// How long a local change of a writeable mount must be quiet before it is uploaded.
    pub upload_delay: Duration,
    /// How long a stopping run may go on uploading writeable mounts' changes.
    pub flush_timeout: Duration,
    /// Where the metrics are served, if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub s3: S3Options,
}

/// Set in the environment of the background process `mount --daemon` starts.
pub const DAEMON_CHILD: &str = "S3SYNC_DAEMON_CHILD";

/// Everything `mount` needs, validated.
#[derive(Debug, Clone)]
pub struct MountConfig {
    pub sync: SyncConfig,
    pub cache_dir: PathBuf,
    pub allow_non_empty: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    pub daemon: bool,
    pub passthrough: bool,
    /// How long open files keep being served after a signal asks the mount to stop.
    pub open_files_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Mounts(#[from] MountsError),
    #[error("cannot read the mounts file {}: {source}", path.display())]
    MountsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--download-interval must be a positive number of seconds, got {0}")]
    Interval(i64),
    #[error("--concurrency must be at least 1")]
    Concurrency,
    #[error("{origin} {url:?} is not an http:// or https:// URL{}", endpoint_hint(.url))]
    Endpoint { origin: &'static str, url: String },
    #[error("no cache directory: set --cache-dir (or HOME / XDG_CACHE_HOME)")]
    NoCacheDir,
}

/// A suggestion for an endpoint given without its scheme, the usual slip.
fn endpoint_hint(url: &str) -> String {
    if url.contains("://") {
        String::new()
    } else {
        format!(" (did you mean \"http://{url}\"?)")
    }
}

impl StatusArgs {
    /// The local copy to look at: the destination of a `sync`, or the cache directory of the
    /// `mount` serving the destination.
    pub fn local_copy(&self) -> PathBuf {
        let state = |dir: &std::path::Path| dir.join(crate::mounts::STATE_DIR).is_dir();
        if state(&self.destination) {
            return self.destination.clone();
        }
        let cache = self
            .cache_dir
            .clone()
            .or_else(|| default_cache_dir(&self.destination));
        match cache {
            Some(cache) if state(&cache) => cache,
            _ => self.destination.clone(),
        }
    }
}

impl SyncArgs {
    pub fn into_config(self) -> Result<SyncConfig, ConfigError> {
        let schedule = Schedule::new(
            self.recurring_downloads,
            self.download_interval,
            self.stop_recurring_downloads_after,
        )?
        .with_uploads(self.upload_delay, self.flush_timeout);
        self.common.into_config(self.destination, schedule)
    }
}

impl MountArgs {
    pub fn into_config(self) -> Result<MountConfig, ConfigError> {
        // A mount always refreshes.
        let schedule = Schedule::new(
            true,
            self.download_interval,
            self.stop_recurring_downloads_after,
        )?
        .with_uploads(self.upload_delay, self.flush_timeout);
        let mut sync = self.common.into_config(self.destination, schedule)?;
        if self.read_only {
            for m in &mut sync.mounts {
                m.writeable = false;
            }
        }
        let cache_dir = match self.cache_dir {
            Some(dir) => dir,
            None => default_cache_dir(&sync.destination).ok_or(ConfigError::NoCacheDir)?,
        };
        // Readers wait while the background download runs: a server on this machine should
        // answer them at once (see `S3Options::small_local_buffers`).
        sync.s3.small_local_buffers = true;
        Ok(MountConfig {
            sync,
            cache_dir,
            allow_non_empty: self.allow_non_empty,
            allow_other: self.allow_other,
            allow_root: self.allow_root,
            // The background process `--daemon` starts runs in the foreground, whatever its
            // arguments say.
            daemon: self.daemon && std::env::var_os(DAEMON_CHILD).is_none(),
            passthrough: !self.no_passthrough,
            open_files_timeout: Duration::from_secs(self.open_files_timeout),
        })
    }
}

impl CommonArgs {
    /// The validated configuration of either command, copying to (or mounting at)
    /// `destination` on `schedule`.
    fn into_config(
        self,
        destination: PathBuf,
        schedule: Schedule,
    ) -> Result<SyncConfig, ConfigError> {
        let json = match (&self.default_s3_mounts, &self.mounts_file) {
            (_, Some(path)) => {
                std::fs::read_to_string(path).map_err(|source| ConfigError::MountsFile {
                    path: path.clone(),
                    source,
                })?
            }
            (Some(json), None) => json.clone(),
            (None, None) => return Err(MountsError::Empty.into()),
        };
        let mounts = parse_mounts(&json)?;
        if self.concurrency == 0 {
            return Err(ConfigError::Concurrency);
        }
        let endpoint_url = endpoint(
            self.endpoint_url,
            ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"].map(|var| (var, std::env::var(var).ok())),
        )?;
        let force_path_style =
            self.force_path_style || endpoint_url.as_deref().is_some_and(needs_path_style);
        Ok(SyncConfig {
            mounts,
            destination,
            concurrency: self.concurrency,
            part_size: self.part_size,
            debug: self.debug,
            recurring: schedule.recurring,
            interval: schedule.interval,
            stop_after: schedule.stop_after,
            upload_delay: schedule.upload_delay,
            flush_timeout: schedule.flush_timeout,
            metrics_addr: self.metrics_addr,
            s3: S3Options {
                region: self.region,
                profile: self.profile,
                endpoint_url,
                force_path_style,
                small_local_buffers: false,
            },
        })
    }
}

/// When passes run: once, or every `interval` until `stop_after`; and how long a local change
/// waits before it is uploaded (`upload_delay`, zero in a one-shot run: nothing waits for it).
struct Schedule {
    recurring: bool,
    interval: Duration,
    stop_after: Option<Duration>,
    upload_delay: Duration,
    flush_timeout: Duration,
}

impl Schedule {
    /// From the flags' seconds: the interval must be positive; a stop at zero or less is never.
    fn new(recurring: bool, interval: i64, stop_after: i64) -> Result<Self, ConfigError> {
        if interval <= 0 {
            return Err(ConfigError::Interval(interval));
        }
        Ok(Self {
            recurring,
            interval: Duration::from_secs(interval as u64),
            stop_after: (stop_after > 0).then(|| Duration::from_secs(stop_after as u64)),
            upload_delay: Duration::ZERO,
            flush_timeout: Duration::ZERO,
        })
    }

    /// Local changes wait `delay` seconds when passes recur; a stopping run uploads for at most
    /// `flush_timeout` seconds.
    fn with_uploads(self, delay: u64, flush_timeout: u64) -> Self {
        let upload_delay = match self.recurring {
            true => Duration::from_secs(delay),
            false => Duration::ZERO,
        };
        Self {
            upload_delay,
            flush_timeout: Duration::from_secs(flush_timeout),
            ..self
        }
    }
}

/// The endpoint: the flag, else the first of the environment variables that is set and not
/// empty. It must be an http(s) URL with a host: the SDK would take `127.0.0.1:9000` for a
/// scheme and a path, and every request would fail far from the mistake.
fn endpoint<const N: usize>(
    flag: Option<String>,
    env: [(&'static str, Option<String>); N],
) -> Result<Option<String>, ConfigError> {
    let chosen = flag.map(|url| ("--endpoint-url", url)).or_else(|| {
        env.into_iter()
            .find_map(|(var, value)| value.filter(|v| !v.is_empty()).map(|v| (var, v)))
    });
    let Some((origin, url)) = chosen else {
        return Ok(None);
    };
    let valid = url::Url::parse(&url).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
    });
    if !valid {
        return Err(ConfigError::Endpoint { origin, url });
    }
    Ok(Some(url))
}

/// `$XDG_CACHE_HOME/s3-synchronizer/<name>-<hash of the absolute destination>`.
fn default_cache_dir(destination: &std::path::Path) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let absolute = std::path::absolute(destination).ok()?;
    // FNV-1a: stable across builds, unlike std's hasher.
    let hash = absolute
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf29ce484222325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        });
    let name = absolute
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into());
    Some(
        base.join("s3-synchronizer")
            .join(format!("{name}-{hash:016x}")),
    )
}

/// Parses the process arguments, accepting the original Go-style spellings.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Cli, clap::Error> {
    let args: Vec<OsString> = args.into_iter().collect();
    let args = match helper_form(&args) {
        Some(converted) => converted?,
        None => normalize_args(args),
    };
    Cli::try_parse_from(args)
}

/// Options of mount(8), systemd and fuse3's `mount.fuse3` that a mount helper is given and this
/// file system has no use for: ignored, as other FUSE file systems do. `x-*` and `X-*` too.
const IGNORED_MOUNT_OPTIONS: &[&str] = &[
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "nofail",
    "_netdev",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "async",
    "sync",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "diratime",
    "nodiratime",
    "lazytime",
    "nolazytime",
    "silent",
    "loud",
    "default_permissions",
];

/// The form mount(8) runs a file system's helper in, through fuse3's `mount.fuse3` (an fstab
/// line of type `fuse.s3-synchronizer`): `SOURCE MOUNTPOINT [-o OPT[,OPT=VALUE]...]`, where
/// SOURCE is a mounts JSON file and each option is a `mount` flag named without its dashes
/// (`_` accepted for `-`, as in `allow_other`), `ro` being `--read-only`. It is `mount
/// --daemon` (mount(8) waits for its helper to return, once mounted). `None` when `args` are
/// not in that form (a subcommand, or flags, come first).
fn helper_form(args: &[OsString]) -> Option<Result<Vec<OsString>, clap::Error>> {
    let first = args.get(1)?.to_str()?;
    let subcommands = Cli::command();
    let named = subcommands.get_subcommands().any(|s| s.get_name() == first);
    if args.len() < 3 || first.starts_with('-') || named || first == "help" {
        return None;
    }
    let mut out: Vec<OsString> = ["s3-synchronizer", "mount", "--daemon", "--mounts-file"]
        .map(OsString::from)
        .into();
    out.push(args[1].clone());
    out.push("--destination".into());
    out.push(args[2].clone());
    let mount_flags: Vec<String> = subcommands
        .find_subcommand("mount")
        .expect("mount is a subcommand")
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_owned))
        .collect();
    let mut rest = args[3..].iter();
    while let Some(arg) = rest.next() {
        let options = match arg.to_str() {
            Some("-o") => rest.next().and_then(|o| o.to_str()).unwrap_or_default(),
            Some(o) if o.starts_with("-o") => &o[2..],
            _ => {
                let shown = arg.to_string_lossy();
                return Some(Err(helper_error(format!(
                    "unexpected argument '{shown}' (mount(8)'s form: SOURCE MOUNTPOINT -o OPTIONS)"
                ))));
            }
        };
        for option in options.split(',') {
            let (name, value) = match option.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (option, None),
            };
            let ignored = IGNORED_MOUNT_OPTIONS.contains(&name)
                || name.is_empty()
                || name.starts_with("x-")
                || name.starts_with("X-")
                || name == "comment";
            if ignored {
                continue;
            }
            let flag = match name {
                "ro" => "read-only".to_owned(),
                _ => name.replace('_', "-"),
            };
            if !mount_flags.contains(&flag) || ["daemon", "destination"].contains(&&*flag) {
                return Some(Err(helper_error(format!(
                    "unknown mount option '{name}' (the options are the flags of \
                     `s3-synchronizer mount --help`, without their dashes)"
                ))));
            }
            out.push(match value {
                Some(v) => format!("--{flag}={v}").into(),
                None => format!("--{flag}").into(),
            });
        }
    }
    Some(Ok(out))
}

/// The arguments (without the program's name) that run the command of `args` in the
/// foreground: what `mount --daemon` starts its background process with.
pub fn foreground_args(args: Vec<OsString>) -> Vec<OsString> {
    let args = match helper_form(&args) {
        Some(Ok(converted)) => converted,
        _ => args,
    };
    let daemon = |a: &OsString| a == "--daemon" || a == "-daemon";
    args.into_iter().skip(1).filter(|a| !daemon(a)).collect()
}

fn helper_error(message: String) -> clap::Error {
    Cli::command().error(clap::error::ErrorKind::InvalidValue, message)
}

fn long_flag_names() -> Vec<String> {
    let cmd = Cli::command();
    let mut names = Vec::new();
    for sub in cmd.get_subcommands() {
        for arg in sub.get_arguments() {
            names.extend(arg.get_long().map(str::to_owned));
            names.extend(
                arg.get_all_aliases()
                    .unwrap_or_default()
                    .into_iter()
                    .map(str::to_owned),
            );
        }
    }
    names.extend(["help".to_owned(), "version".to_owned()]);
    names
}

/// `-flag` -> `--flag` for known long flags, and `sync` inserted when no subcommand is named.
fn normalize_args(mut args: Vec<OsString>) -> Vec<OsString> {
    let names = long_flag_names();
    for arg in args.iter_mut().skip(1) {
        let Some(s) = arg.to_str() else { continue };
        if s == "--" {
            break;
        }
        if let Some(rest) = s.strip_prefix('-')
            && !rest.starts_with('-')
        {
            let name = rest.split_once('=').map_or(rest, |(n, _)| n);
            if name.len() > 1 && names.iter().any(|n| n == name) {
                *arg = OsString::from(format!("-{s}"));
            }
        }
    }
    let subcommands: Vec<String> = Cli::command()
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .chain(["help".to_owned()])
        .collect();
    let named = args.get(1).and_then(|a| a.to_str()).is_some_and(|a| {
        subcommands.iter().any(|s| s == a) || ["-h", "--help", "-V", "--version"].contains(&a)
    });
    if !named {
        args.insert(1.min(args.len()), OsString::from("sync"));
    }
    args
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("invalid boolean {s:?} (use true or false)")),
    }
}

/// `8388608`, `8M`, `8MiB`, `512K`, `1G` (units are powers of 1024).
/// An address to listen on: an IP address and port, or a host name (as `localhost`) and port,
/// which listens on the host's first address.
fn parse_listen_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let Some((host, port)) = s
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
    else {
        return Err("expected HOST:PORT, e.g. 127.0.0.1:9464".into());
    };
    let mut addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{host} names no address to listen on"))
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (e.g. 8MiB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("invalid size unit in {s:?} (use K, M or G)")),
    };
    let size = n
        .checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))?;
    if size < 4096 {
        return Err(format!("size {s:?} is too small (at least 4KiB)"));
    }
    Ok(size)
}

/// Whether an endpoint needs path-style addressing: IP addresses and localhost have no
/// per-bucket DNS names.
fn needs_path_style(endpoint: &str) -> bool {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listen_address_is_an_ip_or_a_host_name_with_a_port() {
        assert_eq!(
            parse_listen_addr("127.0.0.1:9464").unwrap(),
            "127.0.0.1:9464".parse().unwrap()
        );
        let named = parse_listen_addr("localhost:9464").unwrap();
        assert!(named.ip().is_loopback() && named.port() == 9464, "{named}");
        for bad in ["localhost", "9464", "127.0.0.1", "localhost:http"] {
            let e = parse_listen_addr(bad).unwrap_err();
            assert!(e.contains("HOST:PORT"), "{bad}: {e}");
        }
    }

    fn sync_args(args: &[&str]) -> SyncArgs {
        let argv = std::iter::once("s3-synchronizer")
            .chain(args.iter().copied())
            .map(OsString::from);
        match parse(argv)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .command
        {
            Command::Sync(a) => a,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    const MOUNTS: &str = r#"[{"id":"a","bucket":"b"}]"#;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn mount_8s_form_is_a_mount_in_the_background_with_its_options_as_flags() {
        let argv = os(&[
            "s3-synchronizer",
            "/etc/s3/mounts.json",
            "/mnt/data",
            "-o",
            "rw,allow_other,endpoint_url=http://127.0.0.1:9000,part-size=16MiB,_netdev,nofail,\
             x-systemd.automount,dev,suid",
        ]);
        let Command::Mount(args) = parse(argv.clone()).unwrap().command else {
            panic!("not a mount");
        };
        assert!(args.daemon && args.allow_other && !args.read_only);
        assert_eq!(args.destination, PathBuf::from("/mnt/data"));
        assert_eq!(
            args.common.mounts_file,
            Some(PathBuf::from("/etc/s3/mounts.json"))
        );
        let endpoint = args.common.endpoint_url.as_deref();
        assert_eq!(endpoint, Some("http://127.0.0.1:9000"));
        assert_eq!(args.common.part_size, 16 << 20);
        // The background process gets the same, in the foreground.
        let child = foreground_args(argv);
        assert!(!child.contains(&OsString::from("--daemon")), "{child:?}");
        assert_eq!(child[0], "mount");
        // `ro`, and options given in several -o.
        let argv = os(&["x", "m.json", "/mnt", "-o", "ro", "-odebug"]);
        let Command::Mount(args) = parse(argv).unwrap().command else {
            panic!("not a mount");
        };
        assert!(args.read_only && args.common.debug);
    }

    #[test]
    fn ro_serves_a_writeable_mount_read_only() {
        let json = r#"[{"id":"m","bucket":"b","writeable":true}]"#;
        let writeable = |ro: &[&str]| {
            let mut argv = os(&["x", "mount", "--destination", "/mnt", "--cache-dir", "/c"]);
            argv.extend(os(&["--default-s3-mounts", json]));
            argv.extend(os(ro));
            let Command::Mount(args) = parse(argv).unwrap().command else {
                panic!("not a mount");
            };
            args.into_config().unwrap().sync.mounts[0].writeable
        };
        assert!(writeable(&[]));
        assert!(!writeable(&["--read-only"]));
    }

    #[test]
    fn a_mistyped_mount_option_is_named() {
        let argv = os(&["x", "m.json", "/mnt", "-o", "rw,endpoint_ulr=http://h"]);
        let err = parse(argv).unwrap_err().to_string();
        assert!(err.contains("unknown mount option 'endpoint_ulr'"), "{err}");
        let err = parse(os(&["x", "m.json", "/mnt", "-o", "daemon"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown mount option 'daemon'"), "{err}");
        let err = parse(os(&["x", "m.json", "/mnt", "extra"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unexpected argument 'extra'"), "{err}");
    }

    #[test]
    fn subcommands_and_flags_are_not_mount_8s_form() {
        for argv in [
            os(&["x", "mount", "--destination", "/mnt"]),
            os(&["x", "-destination", "/d", "-defaultS3Mounts", "[]"]),
            os(&["x", "status", "--destination", "/d"]),
        ] {
            assert!(helper_form(&argv).is_none(), "{argv:?}");
        }
        let child = foreground_args(os(&["x", "mount", "--daemon", "--destination", "/m"]));
        assert_eq!(child, os(&["mount", "--destination", "/m"]));
    }

    #[test]
    fn go_style_invocation_means_sync() {
        let a = sync_args(&[
            "-defaultS3Mounts",
            MOUNTS,
            "-destination",
            "/x",
            "-recurringDownloads",
            "-concurrency",
            "7",
            "-stopRecurringDownloadsAfter",
            "-1",
            "-downloadInterval=5",
            "-region",
            "eu-west-1",
            "-profile=p",
            "-debug",
        ]);
        assert_eq!(a.common.default_s3_mounts.as_deref(), Some(MOUNTS));
        assert_eq!(a.destination, PathBuf::from("/x"));
        assert!(a.recurring_downloads && a.common.debug);
        assert_eq!(a.common.concurrency, 7);
        assert_eq!(a.stop_recurring_downloads_after, -1);
        assert_eq!(a.download_interval, 5);
        assert_eq!(a.common.region.as_deref(), Some("eu-west-1"));
        assert_eq!(a.common.profile.as_deref(), Some("p"));
    }

    #[test]
    fn go_booleans_and_double_dashes() {
        let a = sync_args(&[
            "--defaultS3Mounts",
            MOUNTS,
            "--recurringDownloads=false",
            "-debug=true",
        ]);
        assert!(!a.recurring_downloads);
        assert!(a.common.debug);
        let a = sync_args(&[
            "sync",
            "--default-s3-mounts",
            MOUNTS,
            "--recurring-downloads",
        ]);
        assert!(a.recurring_downloads);
    }

    #[test]
    fn defaults_match_the_original() {
        let c = sync_args(&["-defaultS3Mounts", MOUNTS])
            .into_config()
            .unwrap();
        assert_eq!(c.concurrency, 20);
        assert_eq!(c.destination, PathBuf::from("./"));
        assert!(!c.recurring);
        assert_eq!(c.interval, Duration::from_secs(60));
        assert_eq!(c.stop_after, None);
        assert_eq!(c.part_size, 8 << 20);
    }

    #[test]
    fn bad_values_are_refused_clearly() {
        let err = sync_args(&["-defaultS3Mounts", MOUNTS, "-downloadInterval", "0"])
            .into_config()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("--download-interval must be a positive"),
            "{err}"
        );
        let err = sync_args(&["-defaultS3Mounts", "[{"])
            .into_config()
            .unwrap_err();
        assert!(
            err.to_string().starts_with("mounts JSON is malformed"),
            "{err}"
        );
        assert!(
            parse(["s3-synchronizer", "-recurringDownloads=maybe"].map(OsString::from)).is_err()
        );
    }

    #[test]
    fn mount_takes_the_same_flags_and_a_cache_dir() {
        let argv = [
            "s3-synchronizer",
            "mount",
            "-defaultS3Mounts",
            MOUNTS,
            "--destination",
            "/mnt/d",
            "--cache-dir",
            "/c",
            "-downloadInterval",
            "5",
        ];
        let Command::Mount(m) = parse(argv.map(OsString::from)).unwrap().command else {
            panic!("not mount");
        };
        let c = m.into_config().unwrap();
        assert_eq!(c.cache_dir, PathBuf::from("/c"));
        assert_eq!(c.sync.interval, Duration::from_secs(5));
        assert!(c.sync.s3.small_local_buffers, "mount mode");
        let a = default_cache_dir(std::path::Path::new("/mnt/data")).unwrap();
        let b = default_cache_dir(std::path::Path::new("/mnt/other/data")).unwrap();
        assert_ne!(a, b);
        assert!(
            a.to_string_lossy().contains("s3-synchronizer/data-"),
            "{a:?}"
        );
    }

    #[test]
    fn an_endpoint_must_be_an_http_url_wherever_it_comes_from() {
        let none = [("AWS_ENDPOINT_URL_S3", None), ("AWS_ENDPOINT_URL", None)];
        let env = |s3: Option<&str>, any: Option<&str>| {
            [
                ("AWS_ENDPOINT_URL_S3", s3.map(str::to_owned)),
                ("AWS_ENDPOINT_URL", any.map(str::to_owned)),
            ]
        };
        assert_eq!(endpoint(None, none.clone()).unwrap(), None);
        for good in [
            "http://127.0.0.1:9000",
            "https://s3.example.com/",
            "http://[::1]:9000",
        ] {
            assert_eq!(
                endpoint(Some(good.into()), none.clone())
                    .unwrap()
                    .as_deref(),
                Some(good)
            );
        }
        for bad in [
            "127.0.0.1:9000",
            "localhost:9000",
            "ftp://h",
            "http://",
            "s3.example.com",
        ] {
            let err = endpoint(Some(bad.into()), none.clone())
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("--endpoint-url {bad:?} is not")),
                "{err}"
            );
        }
        // The flag first, then the S3 variable, then the general one; empty ones do not count.
        let flag = endpoint(Some("http://a".into()), env(Some("b:1"), Some("c:1")));
        assert_eq!(flag.unwrap().as_deref(), Some("http://a"));
        let err = endpoint(None, env(Some(""), Some("c:1")))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            r#"AWS_ENDPOINT_URL "c:1" is not an http:// or https:// URL (did you mean "http://c:1"?)"#
        );
        let s3 = endpoint(None, env(Some("http://b"), Some("http://c")));
        assert_eq!(s3.unwrap().as_deref(), Some("http://b"));
    }

    #[test]
    fn mount_needs_a_mount_point_and_takes_the_original_flags() {
        let parse_mount = |args: &[&str]| {
            let argv = ["s3-synchronizer", "mount", "-defaultS3Mounts", MOUNTS]
                .iter()
                .chain(args)
                .map(OsString::from);
            parse(argv).map(|cli| match cli.command {
                Command::Mount(m) => m,
                other => panic!("not mount: {other:?}"),
            })
        };
        let err = parse_mount(&[]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        // A Go-style command line turned into a mount keeps working; a mount always refreshes.
        let m = parse_mount(&[
            "-destination",
            "/mnt",
            "-recurringDownloads",
            "-downloadInterval=7",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        assert!(m.sync.recurring);
        assert_eq!(m.sync.interval, Duration::from_secs(7));
        assert_eq!(m.open_files_timeout, Duration::from_secs(300));
    }

    #[test]
    fn sizes_and_path_style() {
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("12parsecs").is_err());
        assert!(parse_size("1").is_err());
        assert!(needs_path_style("http://127.0.0.1:9000"));
        assert!(needs_path_style("http://[::1]:9000/"));
        assert!(needs_path_style("http://localhost:9000"));
        assert!(!needs_path_style("https://s3.eu-west-1.amazonaws.com"));
    }
}
