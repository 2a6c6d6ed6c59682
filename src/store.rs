//! The object store seam: everything above this module is generic over [`ObjectStore`], so the
//! engine runs the same code against S3 ([`s3::S3Store`]) and the in-memory store used by tests
//! ([`memory::MemoryStore`]).
//!
//! A store is bound to one bucket. Every ranged read names the ETag it expects; a store answers
//! [`StoreError::PreconditionFailed`] when the object no longer has it, so parts of two versions
//! are never stitched together.
//!
//! Writes carry a [`Precondition`] on the version they replace, so that an upload never
//! overwrites (or a delete never removes) a version it has not seen. Not every S3-compatible
//! server honours every condition: `tests/store_conformance.rs` measures which server honours
//! which (its `WriteCaps` rows), and a write to a server that ignores a condition happens
//! unconditionally.

mod listing;
pub mod local_http;
#[cfg(any(test, feature = "test-store"))]
pub mod memory;
pub mod s3;

use crate::etag::Etag;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
pub use listing::{Listing, Nanos, ObjectRef};
use std::ops::Range;
use std::time::SystemTime;

/// What a listing says about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// The ETag without surrounding quotes, kept compactly: a listing holds one per object.
    pub etag: Etag,
    pub last_modified: SystemTime,
}

/// What one part of a listing holds ([`ObjectStore::list_parts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cover {
    /// Every object whose key starts with this prefix.
    Under(String),
    /// The objects directly in this prefix: each key the prefix and a name without `/` (or
    /// the prefix itself), none of its sub-prefixes'.
    Direct(String),
}

impl Cover {
    /// Splits `whole`, a listing of `prefix`, by the first `/` after the prefix: the objects
    /// directly in it, then each sub-prefix's. What a store that lists in one piece answers.
    pub fn split(prefix: &str, whole: Listing) -> Vec<(Cover, Listing)> {
        // Keys in order: a sub-prefix's keys come one after another.
        let mut out = vec![(Cover::Direct(prefix.to_owned()), Listing::new())];
        for object in whole.iter() {
            let rest = &object.key[prefix.len()..];
            let Some(i) = rest.find('/') else {
                out[0].1.push_ref(object);
                continue;
            };
            let sub = &object.key[..prefix.len() + i + 1];
            if !matches!(out.last(), Some((Cover::Under(last), _)) if last == sub) {
                out.push((Cover::Under(sub.to_owned()), Listing::new()));
            }
            out.last_mut().expect("a part").1.push_ref(object);
        }
        out
    }
}

/// What a delimiter listing (`/`) of one directory shows: the objects directly in it and its
/// sub-directories, without what lies below them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirListing {
    /// Objects whose key is the prefix and a name without `/` (and the prefix's own folder
    /// marker, if any), in key order.
    pub objects: Vec<ObjectMeta>,
    /// The sub-prefixes (S3's common prefixes), each the prefix, a name and `/`, in order.
    pub prefixes: Vec<String>,
}

impl DirListing {
    /// The directory `prefix` as a full listing `under` (every object whose key starts with
    /// `prefix`) shows it: what a store without delimiter listings answers.
    pub fn of(prefix: &str, under: &Listing) -> Self {
        let mut out = Self::default();
        for object in under.iter() {
            let rest = &object.key[prefix.len()..];
            match rest.find('/') {
                Some(i) => {
                    let sub = &object.key[..prefix.len() + i + 1];
                    if out.prefixes.last().map(String::as_str) != Some(sub) {
                        out.prefixes.push(sub.to_owned());
                    }
                }
                None => out.objects.push(object.to_meta()),
            }
        }
        out
    }
}

/// What must be true of the object a write replaces for the write to happen. A condition that
/// does not hold fails the write with [`StoreError::PreconditionFailed`]; an `IfMatch` on a key
/// that no longer exists fails it with [`StoreError::NoSuchKey`], as on S3.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Precondition {
    /// Write whatever is there.
    #[default]
    None,
    /// The object still has this ETag (unquoted): the version the write replaces.
    IfMatch(String),
    /// No object exists under the key.
    IfNoneMatch,
}

/// How a new object is stored, given with each write: mounts of one bucket may differ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// The canned ACL `bucket-owner-full-control`, for buckets owned by another account.
    pub bucket_owner_full_control: bool,
    /// Encrypt with SSE-KMS (`aws:kms`) under this key id or ARN.
    pub kms_key_id: Option<String>,
    /// The MD5 of the object's whole content (hex), stored with it as the user metadata
    /// [`MD5_METADATA`], which [`ObjectStore::stored_md5`] reads back. An object encrypted with
    /// SSE-KMS has an ETag that is not its MD5: by this the tool still knows an object as its
    /// own upload when the answer to the write was lost. A copy keeps its source's.
    pub content_md5: Option<String>,
}

/// The user metadata (`x-amz-meta-` on the wire) holding [`WriteOptions::content_md5`].
pub const MD5_METADATA: &str = "s3sync-md5";

/// One uploaded part of a multipart upload, as completion lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedPart {
    /// 1 to 10000.
    pub number: u32,
    /// The ETag `upload_part` answered, unquoted.
    pub etag: String,
}

/// A multipart upload started and neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartUpload {
    pub key: String,
    pub upload_id: String,
    /// When the server says it started (not trustworthy on every server: see
    /// [`ObjectStore::list_multipart`]).
    pub initiated: SystemTime,
}

/// A streaming object body: chunks in order, ending with `None`.
pub type Body = BoxStream<'static, Result<Bytes, StoreError>>;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("bucket \"{bucket}\" does not exist")]
    NoSuchBucket { bucket: String },
    /// The credentials are good but lack a permission (to read, or to write the object `key`
    /// names: a read-only role's upload is refused so). `code` is the server's error code
    /// (`AccessDenied`), or the HTTP status where the answer had no body (a HEAD request).
    #[error("access denied to bucket \"{bucket}\"{} ({code})", key_suffix(.key))]
    AccessDenied {
        bucket: String,
        key: Option<String>,
        code: String,
    },
    /// The server does not accept the credentials themselves: a wrong key, a wrong secret, an
    /// expired session. `code` is the server's error code.
    #[error(
        "the server does not accept the credentials: {} ({code})",
        credentials_hint(.code).unwrap_or("check the access key and secret key")
    )]
    Credentials { code: String },
    /// No credentials anywhere the SDK looks for them, so nothing to sign a request with (not a
    /// provider that failed: an instance-metadata timeout may pass, and stays transient).
    #[error(
        "no AWS credentials found (not in the environment, the profile files, a web identity \
         token, ECS or EC2 instance metadata): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
         or AWS_PROFILE to a profile that has them"
    )]
    NoCredentials,
    #[error("object \"{key}\" does not exist")]
    NoSuchKey { key: String },
    /// The object is not the version a read or a write expected (another ETag, or, for
    /// [`Precondition::IfNoneMatch`], an object where none was expected): it changed in the
    /// store since it was listed. A write that fails so has not happened.
    #[error("object \"{key}\" is not the version expected: it changed in the store")]
    PreconditionFailed { key: String },
    /// S3's 409 ConditionalRequestConflict: another conditional write of the key ran at the same
    /// time. Not [`Transient`](Self::Transient): repeating the one request may not be right
    /// (for a multipart upload, the upload may be gone), so the caller decides whether to
    /// start the whole write again, after looking at the object anew.
    #[error("object \"{key}\" was being written by another request at the same time")]
    ConditionalConflict { key: String },
    /// The multipart upload no longer exists: completed, aborted, or expired by the bucket's
    /// lifecycle rules. Its parts are gone; the upload must start again.
    #[error("the multipart upload of \"{key}\" no longer exists")]
    NoSuchUpload { key: String },
    /// Worth retrying: 5xx, throttling, dropped connections, timeouts, truncated bodies.
    #[error("{0}")]
    Transient(String),
    /// Not worth retrying.
    #[error("{0}")]
    Permanent(String),
}

fn key_suffix(key: &Option<String>) -> String {
    key.as_deref()
        .map(|k| format!(" for object \"{k}\""))
        .unwrap_or_default()
}

/// What to check, for each error code S3 answers for credentials it does not accept; `None` for
/// every other code (a missing permission is `AccessDenied`).
pub(crate) fn credentials_hint(code: &str) -> Option<&'static str> {
    Some(match code {
        "InvalidAccessKeyId" => {
            "it does not know the access key (check AWS_ACCESS_KEY_ID or the profile's \
             aws_access_key_id)"
        }
        "SignatureDoesNotMatch" => {
            "the secret key does not match the access key (check AWS_SECRET_ACCESS_KEY or the \
             profile's aws_secret_access_key)"
        }
        "ExpiredToken" | "TokenRefreshRequired" => {
            "the session has expired (renew the credentials, e.g. with `aws sso login`)"
        }
        "InvalidToken" => "the session token is not valid (check AWS_SESSION_TOKEN)",
        "InvalidSecurity" => "check the access key and secret key",
        _ => return None,
    })
}

/// S3 has no condition "no object exists" on a delete: [`Precondition::IfNoneMatch`] there is
/// refused without a request.
fn no_if_none_match_on_delete(key: &str) -> StoreError {
    StoreError::Permanent(format!(
        "deleting \"{key}\": a delete can be conditional on the version deleted only (If-Match)"
    ))
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient(_))
    }
}

/// One bucket of an S3-compatible object store.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// The bucket this store reads.
    fn bucket(&self) -> &str;

    /// Where the store's requests go (a URL), for messages about a store that cannot be reached.
    fn endpoint(&self) -> &str;

    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Listing, StoreError>;

    /// Every object whose key starts with `prefix`, handed to `part` in parts as they come, in
    /// no particular order: each part a listing of what its [`Cover`] says, together every key
    /// under the prefix exactly once. A caller may drop a part it already holds before the
    /// rest arrives, so that a listing of a big bucket is never held whole. A retried call
    /// hands every part again. About `expected` objects are expected (0: not known), which
    /// a store may size its requests at once by.
    async fn list_parts(
        &self,
        prefix: &str,
        _expected: usize,
        part: &(dyn Fn(Cover, Listing) + Sync),
    ) -> Result<(), StoreError> {
        for (cover, listing) in Cover::split(prefix, self.list(prefix).await?) {
            part(cover, listing);
        }
        Ok(())
    }

    /// One directory of the bucket: the objects directly under `prefix` (which is empty or
    /// ends in `/`) and its sub-prefixes, for a reader who needs it before the listing of the
    /// whole mount ends.
    async fn list_dir(&self, prefix: &str) -> Result<DirListing, StoreError> {
        Ok(DirListing::of(prefix, &self.list(prefix).await?))
    }

    /// The current metadata of one object, `None` when it no longer exists.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError>;

    /// Bytes `range` of `key`, only if its ETag is still `etag`.
    async fn get(&self, key: &str, range: Range<u64>, etag: &str) -> Result<Body, StoreError>;

    /// [`get`](Self::get), for a reader waiting on the bytes: a store may serve it on
    /// connections of its own, so that it neither queues behind nor is driven by the threads
    /// of the background download.
    async fn get_for_reader(
        &self,
        key: &str,
        range: Range<u64>,
        etag: &str,
    ) -> Result<Body, StoreError> {
        self.get(key, range, etag).await
    }

    /// Opens a connection for [`get_for_reader`](Self::get_for_reader) ahead of the first
    /// reader, so that it does not wait for a TCP (and TLS) handshake; errors are the first
    /// reader's to see. Call it on the runtime the readers' GETs run on: a connection is driven
    /// by the runtime that opened it.
    async fn warm_for_readers(&self) {}

    /// The MD5 its writer stored with the object ([`WriteOptions::content_md5`]): a HEAD.
    /// `None` when it has none, or there is no object.
    async fn stored_md5(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// Writes `body` as `key` in one request if `cond` holds; the new object's ETag (unquoted).
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        cond: &Precondition,
        opts: &WriteOptions,
    ) -> Result<String, StoreError>;

    /// Starts a multipart upload of `key`, stored as `opts` say; its upload id. The condition on
    /// the version replaced is given at completion.
    async fn create_multipart(&self, key: &str, opts: &WriteOptions) -> Result<String, StoreError>;

    /// Uploads part `part_number` (1 to 10000) of an upload; the part's ETag (unquoted). Every
    /// part but the last must be at least 5 MiB, which S3 checks only at completion.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, StoreError>;

    /// Makes the object of `parts` (in part order), if `cond` holds; its ETag (unquoted). When
    /// the condition fails the upload stays open, for the caller to abort. Some servers answer
    /// an ETag other than the one they then list (rclone's is the MD5 of the whole object):
    /// the conformance suite's `complete_etag_listed` says which.
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        cond: &Precondition,
    ) -> Result<String, StoreError>;

    /// Drops an upload and its parts. An upload that no longer exists is not an error: it is
    /// gone either way.
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError>;

    /// The open multipart uploads of keys starting with `prefix`, to clean up uploads a crash
    /// left behind (their parts are billed until aborted). Some servers do not know when an
    /// upload started (moto dates every one 2010-11-10): do not abort an upload for its age
    /// alone on such a server, it may be another writer's running upload.
    async fn list_multipart(&self, prefix: &str) -> Result<Vec<MultipartUpload>, StoreError>;

    /// Copies the version `source` names (its key and ETag: a source that changed since fails
    /// with [`StoreError::PreconditionFailed`]) to `dest_key`, if `cond` holds for `dest_key`,
    /// stored as `opts` say; the new object's ETag (unquoted). A large source (S3 copies at
    /// most 5 GiB in one request) is copied in parts. S3 does not say which of the two
    /// conditions failed: a [`StoreError::PreconditionFailed`] names the source when `cond` is
    /// `None`, else the destination (the in-memory store names the one that failed).
    async fn copy(
        &self,
        source: &ObjectMeta,
        dest_key: &str,
        cond: &Precondition,
        opts: &WriteOptions,
    ) -> Result<String, StoreError>;

    /// Whether [`copy`](Self::copy) of an object of `size` bytes is made in parts: a multipart
    /// upload, which a crash during the copy may leave open.
    fn copies_in_parts(&self, size: u64) -> bool {
        let _ = size;
        false
    }

    /// Deletes `key` if `cond` holds. A key that does not exist is not an error (as on S3), with
    /// or without a condition: the version the caller wanted gone is gone. S3 has no
    /// `If-None-Match` on a delete: [`Precondition::IfNoneMatch`] is a permanent error.
    async fn delete(&self, key: &str, cond: &Precondition) -> Result<(), StoreError>;
}
