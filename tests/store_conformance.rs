//! One conformance suite for every `ObjectStore`: the in-memory store, and the S3 store against
//! two real S3-compatible servers on loopback (`rclone serve s3`, and moto, which, unlike rclone,
//! honours `If-Match`).

mod common;

use aws_sdk_s3::config::{Credentials, SharedCredentialsProvider};
use common::*;
use s3_synchronizer::store::memory::MemoryStore;
use s3_synchronizer::store::s3::{S3Connector, S3Options};
use s3_synchronizer::store::{ObjectStore, StoreError};
use std::sync::Arc;

async fn read(
    store: &dyn ObjectStore,
    key: &str,
    range: std::ops::Range<u64>,
    etag: &str,
) -> Result<Vec<u8>, StoreError> {
    collect(store.get(key, range, etag).await?).await
}

/// [`read`] as a waiting reader's GET.
async fn read_for_reader(
    store: &dyn ObjectStore,
    key: &str,
    range: std::ops::Range<u64>,
    etag: &str,
) -> Result<Vec<u8>, StoreError> {
    collect(store.get_for_reader(key, range, etag).await?).await
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
    let keys: Vec<&str> = listed.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(keys, ["dir/obj.bin", "dir/sub/x"]);
    let meta = &listed[0];
    assert_eq!(meta.size, data.len() as u64);
    assert!(
        !meta.etag.is_empty() && !meta.etag.contains('"'),
        "etag {:?}",
        meta.etag
    );
    assert_eq!(store.list("many/").await.unwrap().len(), 1005);

    let head = store
        .head("dir/obj.bin")
        .await
        .unwrap()
        .expect("object exists");
    assert_eq!((head.size, &head.etag), (meta.size, &meta.etag));
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
