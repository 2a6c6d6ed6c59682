//! The object store seam: everything above this module is generic over [`ObjectStore`], so the
//! engine runs the same code against S3 ([`s3::S3Store`]) and the in-memory store used by tests
//! ([`memory::MemoryStore`]).
//!
//! A store is bound to one bucket. Every ranged read names the ETag it expects; a store answers
//! [`StoreError::PreconditionFailed`] when the object no longer has it, so parts of two versions
//! are never stitched together.

pub mod local_http;
#[cfg(any(test, feature = "test-store"))]
pub mod memory;
pub mod s3;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use std::ops::Range;
use std::time::SystemTime;

/// What a listing says about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// The ETag without surrounding quotes.
    pub etag: String,
    pub last_modified: SystemTime,
}

/// A streaming object body: chunks in order, ending with `None`.
pub type Body = BoxStream<'static, Result<Bytes, StoreError>>;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("bucket \"{bucket}\" does not exist")]
    NoSuchBucket { bucket: String },
    /// The credentials are good but lack a permission. `code` is the server's error code
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
    #[error("object \"{key}\" does not exist")]
    NoSuchKey { key: String },
    #[error("object \"{key}\" changed while it was being read")]
    PreconditionFailed { key: String },
    /// Worth retrying: 5xx, throttling, dropped connections, timeouts, truncated bodies.
    #[error("{0}")]
    Transient(String),
    /// Not worth retrying.
    #[error("{0}")]
    Permanent(String),
}

fn key_suffix(key: &Option<String>) -> String {
    key.as_deref()
        .map(|k| format!(" reading \"{k}\""))
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
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;

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
}
