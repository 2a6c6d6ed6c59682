//! Running as a service: systemd's notify protocol (against a real datagram socket standing
//! for systemd's) and SIGHUP's refresh, for `mount` (through real FUSE mounts) and recurring
//! `sync`, against a real S3-compatible server on loopback.

mod common;

use common::mount::*;
use common::proxy::SlowProxy;
use common::*;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A datagram socket where the tool's notifications arrive, as systemd's would.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Self { socket, path }
    }

    /// The next message, if one comes within 200 ms.
    fn next(&self) -> Option<String> {
        let mut buf = vec![0; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8(buf[..n].to_vec()).unwrap())
    }

    /// Messages until one has a line that `wanted` (returned last), for at most `secs` s.
    #[track_caller]
    fn until(
        &self,
        secs: u64,
        wanted: impl Fn(&str) -> bool,
        log: impl Fn() -> String,
    ) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut got = Vec::new();
        loop {
            if let Some(m) = self.next() {
                let done = m.lines().any(&wanted);
                got.push(m);
                if done {
                    return got;
                }
            }
            assert!(
                Instant::now() < deadline,
                "not within {secs} s; got {got:?}; the tool's log:\n{}",
                log()
            );
        }
    }
}

/// A line that is `line`.
fn is(line: &'static str) -> impl Fn(&str) -> bool {
    move |l| l == line
}

/// A status line saying a pass ended with no failure.
fn passed(line: &str) -> bool {
    line.starts_with("STATUS=") && line.contains("last pass at ") && line.ends_with(", 0 failed")
}

/// The STATUS= lines among `messages`.
fn statuses(messages: &[String]) -> Vec<String> {
    let lines = messages.iter().flat_map(|m| m.lines());
    let status = lines.filter_map(|l| l.strip_prefix("STATUS="));
    status.map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mount_tells_systemd_it_is_ready_how_far_it_is_and_that_it_stops() {
    let s3 = S3Server::start(&["bkt"]).await;
    for i in 0..12 {
        s3.put("bkt", &format!("d/f{i:02}"), &bytes(256 * 1024, i))
            .await;
    }
    // Slow enough that the background download lasts several status lines.
    let proxy = SlowProxy::start(&s3.endpoint, 256 * 1024).await;
    let root = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind(root.path());
    let mut cmd = tool_at(&proxy.endpoint);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mounts = mounts_json(&[("m", "bkt", "")]);
    let mut m = Mounted::start_with(cmd, root.path(), &mounts, &["--concurrency", "2"]);

    let log = || std::fs::read_to_string(root.path().join("mount-0.log")).unwrap_or_default();
    let first = notify.until(10, is("READY=1"), log);
    // READY came once the file system was mounted (Mounted::start waited for that, and the
    // tool sends READY after mounting: nothing came before it).
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(is_mount_point(&m.dest));
    let mut seen = statuses(&first);
    // Status lines while the files download, then the pass's end.
    let rest = notify.until(60, passed, log);
    seen.extend(statuses(&rest));
    let downloading: Vec<_> = seen
        .iter()
        .filter(|s| s.starts_with("downloading "))
        .collect();
    assert!(
        downloading.iter().any(|s| s.contains(" of 3.0 MiB")),
        "no downloading status of the 12 files: {seen:?}"
    );
    assert!(downloading.len() >= 2, "the status did not move: {seen:?}");
    assert_eq!(tree(&m.dest.join("m")).len(), 12);

    m.unmount();
    let end = notify.until(10, is("STOPPING=1"), log);
    assert!(statuses(&end).contains(&"stopping".to_owned()), "{end:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_makes_a_mount_list_its_buckets_again_at_once() {
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "old.txt", b"old").await;
    let root = tempfile::tempdir().unwrap();
    let mounts = mounts_json(&[("m", "bkt", "")]);
    let interval = ["--download-interval", "3600"];
    let m = Mounted::start(&s3, root.path(), &mounts, &interval);
    m.wait_until(30, "the first pass", || m.passes() >= 1);
    s3.put("bkt", "new.txt", b"new").await;
    assert!(
        !m.dest.join("m/new.txt").exists(),
        "shown before any refresh"
    );

    // SAFETY: sending a signal to the child process we spawned.
    unsafe { libc::kill(m.child.id() as i32, libc::SIGHUP) };
    m.wait_until(30, "new.txt after SIGHUP", || {
        std::fs::read(m.dest.join("m/new.txt")).is_ok_and(|b| b == b"new")
    });
    assert!(m.log().contains("SIGHUP"), "{}", m.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recurring_sync_tells_systemd_and_refreshes_on_sighup() {
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "old.txt", b"old").await;
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("dest");
    let notify = NotifySocket::bind(root.path());
    let log_path = root.path().join("sync.log");
    let mut cmd: Command = s3.tool();
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .args([
            "sync",
            "--recurring-downloads",
            "--download-interval",
            "3600",
        ])
        .args(["--default-s3-mounts", &mounts_json(&[("m", "bkt", "")])])
        .arg("--destination")
        .arg(&dest)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap());
    let mut child = cmd.spawn().unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    notify.until(10, is("READY=1"), log);
    notify.until(30, passed, log);
    assert_eq!(std::fs::read(dest.join("m/old.txt")).unwrap(), b"old");

    s3.put("bkt", "new.txt", b"new").await;
    // SAFETY: sending a signal to the child process we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    wait_for(30, "new.txt after SIGHUP", || {
        std::fs::read(dest.join("m/new.txt")).is_ok_and(|b| b == b"new")
    });

    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    notify.until(10, is("STOPPING=1"), log);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}\n{}", log());
}

/// Runs mount(8) or umount(8) with `args` and the test server's credentials; its helper's
/// background process keeps what it inherits, so the output goes to `log`.
#[track_caller]
fn run_mount8(program: &str, args: &[&str], log: &Path) {
    let status = Command::new(program)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE")
        .env("RUST_LOG", "s3_synchronizer=debug,warn")
        .stdin(Stdio::null())
        .stdout(
            std::fs::File::options()
                .append(true)
                .create(true)
                .open(log)
                .unwrap(),
        )
        .stderr(
            std::fs::File::options()
                .append(true)
                .create(true)
                .open(log)
                .unwrap(),
        )
        .status()
        .unwrap();
    let output = std::fs::read_to_string(log).unwrap_or_default();
    assert!(status.success(), "{program} {args:?}: {status}\n{output}");
}

/// The mount made by mount(8) serves the bucket; umount(8) ends it, and its process exits.
#[track_caller]
fn serves_then_ends_at_umount(dest: &Path, cache: &Path, log: &Path) {
    assert!(
        is_mount_point(dest),
        "{}",
        std::fs::read_to_string(log).unwrap()
    );
    assert_eq!(std::fs::read(dest.join("m/d/f.txt")).unwrap(), b"hello");
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.join(".s3-synchronizer/status.json")).unwrap())
            .unwrap();
    let pid = status["pid"].as_u64().expect("the mount's pid");
    run_mount8("umount", &[dest.to_str().unwrap()], log);
    assert!(!is_mount_point(dest));
    // Exited (a zombie until something reaps it, where no init does).
    wait_for(30, "the mount's process to exit", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z'))
        })
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn mount_8_and_an_fstab_line_mount_it_and_umount_ends_it() {
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "d/f.txt", b"hello").await;
    let root = tempfile::tempdir().unwrap();
    let (dest, cache) = dirs(root.path());
    let log = root.path().join("mount8.log");
    let mounts = root.path().join("mounts.json");
    std::fs::write(&mounts, mounts_json(&[("m", "bkt", "")])).unwrap();
    let (dest_s, cache_s) = (dest.to_str().unwrap(), cache.to_str().unwrap());
    // Flags as options (`_` for `-` too), and what mount(8), systemd and fstab lines add.
    let options = format!(
        "rw,endpoint_url={},cache-dir={cache_s},download-interval=30,_netdev,nofail,\
         x-systemd.after=network-online.target",
        s3.endpoint
    );
    // mount(8) runs helpers without a PATH of their own: fuse3's `fuse` type with
    // PROGRAM#SOURCE names the program by its path.
    let bin = env!("CARGO_BIN_EXE_s3-synchronizer");
    let source = format!("{bin}#{}", mounts.display());
    run_mount8(
        "mount",
        &["-t", "fuse", &source, dest_s, "-o", &options],
        &log,
    );
    serves_then_ends_at_umount(&dest, &cache, &log);

    // The same as an fstab line.
    let fstab = root.path().join("fstab");
    std::fs::write(
        &fstab,
        format!("{source} {dest_s} fuse {options},noauto 0 0\n"),
    )
    .unwrap();
    run_mount8("mount", &["-T", fstab.to_str().unwrap(), dest_s], &log);
    serves_then_ends_at_umount(&dest, &cache, &log);

    // `-t fuse.s3-synchronizer` runs `s3-synchronizer` from the standard PATH: tried with
    // this build put there, unless another is there already.
    let installed = Path::new("/usr/local/bin/s3-synchronizer");
    if installed.symlink_metadata().is_err() && std::os::unix::fs::symlink(bin, installed).is_ok() {
        struct Remove<'a>(&'a Path);
        impl Drop for Remove<'_> {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(self.0);
            }
        }
        let _remove = Remove(installed);
        let mounts_s = mounts.to_str().unwrap();
        let args = [
            "-t",
            "fuse.s3-synchronizer",
            mounts_s,
            dest_s,
            "-o",
            &options,
        ];
        run_mount8("mount", &args, &log);
        serves_then_ends_at_umount(&dest, &cache, &log);
    }

    // A mistyped option: one clear line, nothing mounted.
    let out = Command::new("mount")
        .args(["-t", "fuse", &source, dest_s, "-o", "endpoint_ulr=http://x"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown mount option 'endpoint_ulr'"), "{err}");
    assert!(!is_mount_point(&dest));
}

/// The text of `http://addr/path`, with its status line.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

/// The value of the sample `name` (with its labels, as exposed) in `text`; 0 when absent.
fn sample(text: &str, name: &str) -> f64 {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '));
    line.map_or(0.0, |v| v.trim().parse().unwrap())
}

/// A free port on loopback, for the tool to listen on.
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_the_requests_the_server_answered() {
    let s3 = S3Server::start(&["bkt"]).await;
    for i in 0..5 {
        s3.put("bkt", &format!("d/f{i}"), &bytes(100_000, i)).await;
    }
    let root = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mounts = mounts_json(&[("m", "bkt", "")]);
    let args = ["--metrics-addr", &addr, "--download-interval", "3600"];
    let m = Mounted::start(&s3, root.path(), &mounts, &args);
    m.wait_until(30, "the first pass", || m.passes() >= 1);
    assert_eq!(
        std::fs::read(m.dest.join("m/d/f3")).unwrap(),
        bytes(100_000, 3)
    );

    let gets = "s3sync_s3_requests_total{operation=\"GetObject\",outcome=\"ok\"}";
    let lists = "s3sync_s3_requests_total{operation=\"ListObjectsV2\",outcome=\"ok\"}";
    let mut text = String::new();
    // The server writes its log as it answers: the two agree once both are written.
    m.wait_until(
        10,
        "the metrics to count the server's GETs and LISTs",
        || {
            text = http_get(&addr, "/metrics");
            sample(&text, gets) == s3.gets() as f64 && sample(&text, lists) == s3.lists() as f64
        },
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(s3.gets() >= 5 && s3.lists() >= 1, "{text}");
    assert_eq!(sample(&text, "s3sync_downloaded_bytes_total"), 500_000.0);
    let figure = |state: &str| {
        sample(
            &text,
            &format!("s3sync_objects{{mount=\"m\",state=\"{state}\"}}"),
        )
    };
    assert_eq!(
        (figure("listed"), figure("present"), figure("pending")),
        (5.0, 5.0, 0.0)
    );
    let present = "s3sync_objects_bytes{mount=\"m\",state=\"present\"}";
    assert_eq!(sample(&text, present), 500_000.0);
    // The file system's operations, the open above among them (its reads may go straight to
    // the cache file, through passthrough).
    let opens = "s3sync_fuse_operation_seconds_count{operation=\"open\"}";
    assert!(sample(&text, opens) >= 1.0, "{text}");
    assert!(
        sample(&text, "s3sync_get_first_byte_seconds_count") >= 5.0,
        "{text}"
    );
    assert!(http_get(&addr, "/").starts_with("HTTP/1.1 404"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_metrics_address_in_use_is_one_clear_line() {
    let s3 = S3Server::start(&["bkt"]).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let root = tempfile::tempdir().unwrap();
    let out = run(s3
        .tool()
        .args(["sync", "--metrics-addr", &addr, "--destination"])
        .arg(root.path())
        .args(["--default-s3-mounts", &mounts_json(&[("m", "bkt", "")])]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot serve metrics at {addr}")),
        "{err}"
    );
}
