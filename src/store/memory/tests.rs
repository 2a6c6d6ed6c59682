//! The in-memory store's writes keep S3's rules: each precondition, multipart completion's
//! checks, and the options an object was written with.

use super::*;

const MIB: usize = 1024 * 1024;

fn kms() -> WriteOptions {
    WriteOptions {
        bucket_owner_full_control: true,
        kms_key_id: Some("key-1".into()),
        content_md5: None,
    }
}

fn none() -> Precondition {
    Precondition::None
}

fn if_match(etag: impl ToString) -> Precondition {
    Precondition::IfMatch(etag.to_string())
}

fn store() -> Arc<MemoryStore> {
    MemoryStore::new("bkt")
}

async fn bytes_at(store: &MemoryStore, key: &str) -> Vec<u8> {
    store.bytes_of(key).expect("object exists").to_vec()
}

#[tokio::test]
async fn put_honours_if_none_match_and_if_match() {
    let s = store();
    let opts = WriteOptions::default();
    let first = ObjectStore::put(&*s, "k", "one".into(), &Precondition::IfNoneMatch, &opts)
        .await
        .unwrap();
    assert_eq!(s.head("k").await.unwrap().unwrap().etag, first);

    let err = ObjectStore::put(&*s, "k", "two".into(), &Precondition::IfNoneMatch, &opts)
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::PreconditionFailed { key: "k".into() });
    let err = ObjectStore::put(&*s, "k", "two".into(), &if_match("stale"), &opts)
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::PreconditionFailed { key: "k".into() });
    assert_eq!(bytes_at(&s, "k").await, b"one");

    let second = ObjectStore::put(&*s, "k", "two".into(), &if_match(&first), &opts)
        .await
        .unwrap();
    assert_ne!(second, first);
    assert_eq!(bytes_at(&s, "k").await, b"two");

    // If-Match on a key that is gone: S3's 404.
    let err = ObjectStore::put(&*s, "gone", "x".into(), &if_match(&first), &opts)
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::NoSuchKey { key: "gone".into() });
    assert_eq!(s.counters.puts.load(Ordering::Relaxed), 5);
}

#[tokio::test]
async fn writes_record_their_options() {
    let s = store();
    s.put("setup", "x");
    assert_eq!(s.written_with("setup"), Some(WriteOptions::default()));
    assert_eq!(s.written_with("missing"), None);
    ObjectStore::put(&*s, "k", "x".into(), &none(), &kms())
        .await
        .unwrap();
    assert_eq!(s.written_with("k"), Some(kms()));

    let id = s.create_multipart("m", &kms()).await.unwrap();
    let etag = s.upload_part("m", &id, 1, "x".into()).await.unwrap();
    let parts = [CompletedPart { number: 1, etag }];
    s.complete_multipart("m", &id, &parts, &none())
        .await
        .unwrap();
    assert_eq!(s.written_with("m"), Some(kms()));

    let source = s.head("setup").await.unwrap().unwrap();
    s.copy(&source, "c", &none(), &kms()).await.unwrap();
    assert_eq!(s.written_with("c"), Some(kms()));
}

#[tokio::test]
async fn multipart_holds_parts_until_completion() {
    let s = store();
    let one = vec![1u8; 5 * MIB];
    let two = vec![2u8; 5 * MIB];
    let id = s
        .create_multipart("m", &WriteOptions::default())
        .await
        .unwrap();
    // Parts may arrive in any order, and a part sent again replaces the first.
    let e2 = s
        .upload_part("m", &id, 2, two.clone().into())
        .await
        .unwrap();
    let e3 = s.upload_part("m", &id, 3, "tail".into()).await.unwrap();
    let stale = s.upload_part("m", &id, 1, "early".into()).await.unwrap();
    let e1 = s
        .upload_part("m", &id, 1, one.clone().into())
        .await
        .unwrap();
    assert_eq!(
        s.head("m").await.unwrap(),
        None,
        "visible before completion"
    );
    let listed = s.list_multipart("").await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|u| (&*u.key, &*u.upload_id))
            .collect::<Vec<_>>(),
        [("m", &*id)]
    );

    let part = |number, etag: &String| CompletedPart {
        number,
        etag: etag.clone(),
    };
    let err = s
        .complete_multipart("m", &id, &[part(1, &stale), part(2, &e2)], &none())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("InvalidPart"), "{err}");
    let err = s
        .complete_multipart("m", &id, &[part(2, &e2), part(1, &e1)], &none())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("InvalidPartOrder"), "{err}");

    let parts = [part(1, &e1), part(2, &e2), part(3, &e3)];
    let etag = s
        .complete_multipart("m", &id, &parts, &none())
        .await
        .unwrap();
    assert!(etag.ends_with("-3"), "{etag}");
    let meta = s.head("m").await.unwrap().unwrap();
    assert_eq!(
        (meta.etag.to_string(), meta.size),
        (etag, (10 * MIB + 4) as u64)
    );
    assert_eq!(
        bytes_at(&s, "m").await,
        [one, two, b"tail".to_vec()].concat()
    );
    assert!(s.list_multipart("").await.unwrap().is_empty());

    // The upload is gone: its parts cannot be sent or completed again; aborting is a no-op.
    let err = s.upload_part("m", &id, 4, "x".into()).await.unwrap_err();
    assert_eq!(err, StoreError::NoSuchUpload { key: "m".into() });
    let err = s
        .complete_multipart("m", &id, &parts, &none())
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::NoSuchUpload { key: "m".into() });
    s.abort_multipart("m", &id).await.unwrap();
}

#[tokio::test]
async fn a_small_part_but_the_last_is_refused_at_completion() {
    let s = store();
    let id = s
        .create_multipart("m", &WriteOptions::default())
        .await
        .unwrap();
    let e1 = s
        .upload_part("m", &id, 1, vec![0; MIB].into())
        .await
        .unwrap();
    let e2 = s.upload_part("m", &id, 2, "x".into()).await.unwrap();
    let parts = [
        CompletedPart {
            number: 1,
            etag: e1,
        },
        CompletedPart {
            number: 2,
            etag: e2,
        },
    ];
    let err = s
        .complete_multipart("m", &id, &parts, &none())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("EntityTooSmall"), "{err}");
    // One small part alone is the last part.
    let id = s
        .create_multipart("one", &WriteOptions::default())
        .await
        .unwrap();
    let etag = s.upload_part("one", &id, 1, "x".into()).await.unwrap();
    s.complete_multipart("one", &id, &[CompletedPart { number: 1, etag }], &none())
        .await
        .unwrap();
    assert_eq!(bytes_at(&s, "one").await, b"x");
}

#[tokio::test]
async fn completion_honours_its_condition_and_keeps_the_upload_when_it_fails() {
    let s = store();
    let old = s.put("m", "old");
    let id = s
        .create_multipart("m", &WriteOptions::default())
        .await
        .unwrap();
    let etag = s.upload_part("m", &id, 1, "new".into()).await.unwrap();
    let parts = [CompletedPart { number: 1, etag }];
    for cond in [Precondition::IfNoneMatch, if_match("stale")] {
        let err = s
            .complete_multipart("m", &id, &parts, &cond)
            .await
            .unwrap_err();
        assert_eq!(err, StoreError::PreconditionFailed { key: "m".into() });
    }
    assert_eq!(bytes_at(&s, "m").await, b"old");
    assert_eq!(s.list_multipart("m").await.unwrap().len(), 1);
    s.complete_multipart("m", &id, &parts, &if_match(&old.etag))
        .await
        .unwrap();
    assert_eq!(bytes_at(&s, "m").await, b"new");
}

#[tokio::test]
async fn abort_drops_the_upload_and_lists_show_open_uploads_by_key() {
    let s = store();
    let opts = WriteOptions::default();
    let b = s.create_multipart("d/b", &opts).await.unwrap();
    let a = s.create_multipart("d/a", &opts).await.unwrap();
    let other = s.create_multipart("e/a", &opts).await.unwrap();
    let keys = |l: Vec<MultipartUpload>| l.into_iter().map(|u| u.upload_id).collect::<Vec<_>>();
    assert_eq!(
        keys(s.list_multipart("d/").await.unwrap()),
        [a.clone(), b.clone()]
    );
    s.abort_multipart("d/a", &a).await.unwrap();
    s.abort_multipart("d/a", &a).await.unwrap();
    // An upload id under another key aborts nothing.
    s.abort_multipart("d/a", &other).await.unwrap();
    assert_eq!(keys(s.list_multipart("").await.unwrap()), [b, other]);
    let err = s.upload_part("d/a", &a, 1, "x".into()).await.unwrap_err();
    assert_eq!(err, StoreError::NoSuchUpload { key: "d/a".into() });
}

#[tokio::test]
async fn copy_copies_only_the_version_named() {
    let s = store();
    let source = s.put("src", "one");
    let opts = WriteOptions::default();
    let etag = s.copy(&source, "dst", &none(), &opts).await.unwrap();
    assert_eq!(bytes_at(&s, "dst").await, b"one");
    assert_eq!(s.head("dst").await.unwrap().unwrap().etag, etag);

    s.put("src", "two");
    let err = s.copy(&source, "dst2", &none(), &opts).await.unwrap_err();
    assert_eq!(err, StoreError::PreconditionFailed { key: "src".into() });
    assert_eq!(s.head("dst2").await.unwrap(), None);

    // The destination's condition.
    let source = s.head("src").await.unwrap().unwrap();
    let err = s
        .copy(&source, "dst", &Precondition::IfNoneMatch, &opts)
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::PreconditionFailed { key: "dst".into() });
    s.copy(&source, "dst", &if_match(&etag), &opts)
        .await
        .unwrap();
    assert_eq!(bytes_at(&s, "dst").await, b"two");

    s.delete("src");
    let err = s.copy(&source, "dst3", &none(), &opts).await.unwrap_err();
    assert_eq!(err, StoreError::NoSuchKey { key: "src".into() });
}

#[tokio::test]
async fn delete_honours_if_match_and_a_missing_key_is_deleted() {
    let s = store();
    let meta = s.put("k", "x");
    let err = ObjectStore::delete(&*s, "k", &if_match("stale"))
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::PreconditionFailed { key: "k".into() });
    assert!(s.head("k").await.unwrap().is_some());
    let err = ObjectStore::delete(&*s, "k", &Precondition::IfNoneMatch)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Permanent(_)), "{err:?}");
    ObjectStore::delete(&*s, "k", &if_match(&meta.etag))
        .await
        .unwrap();
    assert_eq!(s.head("k").await.unwrap(), None);
    ObjectStore::delete(&*s, "k", &none()).await.unwrap();
    ObjectStore::delete(&*s, "k", &if_match(&meta.etag))
        .await
        .unwrap();
    assert_eq!(s.counters.deletes.load(Ordering::Relaxed), 5);
}

#[tokio::test]
async fn writes_of_a_missing_bucket_fail_so() {
    let s = MemoryStore::missing("nope");
    let err = ObjectStore::put(&*s, "k", "x".into(), &none(), &WriteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::NoSuchBucket {
            bucket: "nope".into()
        }
    );
}

/// Every write goes through the hook: it sees the request, may fail it before or after the
/// store acted, and the request is counted either way.
#[tokio::test]
async fn faults_see_and_fail_every_write() {
    let mem = store();
    let store = Faults::over(mem.clone());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    store.set(move |request| {
        log.lock().push(format!("{request:?}"));
        match request {
            Request::Put { key: "fail", .. } => {
                Some(Fault::Fail(StoreError::Transient("503 SlowDown".into())))
            }
            Request::Put { key: "after", .. } => {
                Some(Fault::FailAfter(StoreError::Transient("reset".into())))
            }
            Request::Delete { .. } => Some(Fault::Before(Box::new(|s| s.delete("k")))),
            _ => None,
        }
    });
    let opts = WriteOptions::default();
    let err = store
        .put("fail", "x".into(), &none(), &opts)
        .await
        .unwrap_err();
    assert!(err.is_transient());
    assert_eq!(mem.head("fail").await.unwrap(), None);
    store
        .put("after", "x".into(), &none(), &opts)
        .await
        .unwrap_err();
    assert!(
        mem.head("after").await.unwrap().is_some(),
        "written, then failed"
    );

    let meta = mem.put("k", "x");
    let id = store.create_multipart("m", &opts).await.unwrap();
    let etag = store.upload_part("m", &id, 1, "p".into()).await.unwrap();
    let parts = [CompletedPart { number: 1, etag }];
    store
        .complete_multipart("m", &id, &parts, &none())
        .await
        .unwrap();
    store.abort_multipart("m", &id).await.unwrap();
    store.list_multipart("").await.unwrap();
    store.copy(&meta, "c", &none(), &opts).await.unwrap();
    // The hook deleted "k" first: the delete finds nothing, which is not an error.
    store.delete("k", &if_match(&meta.etag)).await.unwrap();

    let kinds: Vec<String> = seen
        .lock()
        .iter()
        .map(|r| r.split([' ', '{']).next().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "Put",
            "Put",
            "CreateMultipart",
            "UploadPart",
            "Complete",
            "Abort",
            "ListMultipart",
            "Copy",
            "Delete"
        ]
    );
    let c = &mem.counters;
    let counts =
        [&c.puts, &c.creates, &c.parts, &c.completes, &c.aborts].map(|n| n.load(Ordering::Relaxed));
    assert_eq!(counts, [2, 1, 1, 1, 1]);
    let counts = [&c.list_uploads, &c.copies, &c.deletes].map(|n| n.load(Ordering::Relaxed));
    assert_eq!(counts, [1, 1, 1]);
}
