//! The only module that knows the AWS SDK: ListObjectsV2 (split into parallel listings,
//! [`listing`]), HeadObject, ranged
//! GetObject with `If-Match`, and the writes (conditional PutObject, multipart uploads,
//! CopyObject and UploadPartCopy, conditional DeleteObject), with SDK errors classified into
//! [`StoreError`].
//!
//! Retries are the engine's job (one policy for every store), so the SDK's own retries are off.
//! Answers of S3-compatible servers that the SDK would refuse are put right first ([`compat`]).

mod compat;
mod listing;
mod metered;

use super::{
    Body, CompletedPart, Cover, DirListing, Listing, MultipartUpload, ObjectMeta, ObjectStore,
    Precondition, StoreError, WriteOptions, local_http,
};
use crate::errors;
use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::environment::EnvironmentVariableRegionProvider;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::ProfileFileRegionProvider;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, EncodingType, ObjectCannedAcl, ServerSideEncryption,
};
use aws_smithy_runtime_api::http::Response as HttpResponse;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::ops::Range;
use std::time::{Duration, SystemTime};

/// How long a connection to the endpoint may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest object S3 copies in one CopyObject request; larger ones are copied in parts.
const COPY_LIMIT: u64 = 5 * 1024 * 1024 * 1024;

/// The part size of a copy in parts (grown for objects over 10000 such parts).
const COPY_PART: u64 = 512 * 1024 * 1024;

/// Parts of a copy in parts asked for at once (each is copied within the server).
const COPY_PARTS_AT_ONCE: usize = 8;

/// What `x-amz-copy-source` escapes of a key: all but unreserved characters and `/`.
const COPY_SOURCE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// How to reach S3: what the command line says about the service, shared by every mount.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// `None`: the AWS chain (env, profile), then us-east-1.
    pub region: Option<String>,
    pub profile: Option<String>,
    pub endpoint_url: Option<String>,
    pub force_path_style: bool,
    /// Small socket receive buffers on the background download's connections to a server on
    /// this machine (see [`local_http`]): for mount mode, where readers wait while it runs.
    pub small_local_buffers: bool,
}

/// Loaded AWS configuration (credentials chain, region) for one profile.
pub struct S3Connector {
    opts: S3Options,
    sdk: aws_config::SdkConfig,
}

impl S3Connector {
    /// Loads the AWS configuration for `profile` (or the options' profile when `None`).
    pub async fn load(opts: &S3Options, profile: Option<&str>) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        let profile = profile.or(opts.profile.as_deref());
        if let Some(p) = profile {
            loader = loader.profile_name(p);
        }
        // Region: the flag, else AWS_REGION, else the profile's, else us-east-1 (the original
        // program's default). Instance metadata is not asked: the bucket's own region is
        // detected on connect anyway.
        let region = match &opts.region {
            Some(r) => Region::new(r.clone()),
            None => {
                let mut from_profile = ProfileFileRegionProvider::builder();
                if let Some(p) = profile {
                    from_profile = from_profile.profile_name(p);
                }
                RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
                    .or_else(from_profile.build())
                    .or_else(Region::from_static("us-east-1"))
                    .region()
                    .await
                    .unwrap_or_else(|| Region::from_static("us-east-1"))
            }
        };
        loader = loader.region(region);
        Self::from_sdk(opts, loader.load().await)
    }

    /// A connector over an already loaded AWS configuration (credentials, region).
    pub fn from_sdk(opts: &S3Options, sdk: aws_config::SdkConfig) -> Self {
        Self {
            opts: opts.clone(),
            sdk,
        }
    }

    /// A client; with `own_pool`, its HTTP client is a new default one (same TLS, proxy and
    /// timeout settings) with connections of its own, instead of the shared one.
    fn client(&self, region: Option<&str>, own_pool: bool) -> Client {
        let mut conf = aws_sdk_s3::config::Builder::from(&self.sdk)
            .force_path_style(self.opts.force_path_style)
            .interceptor(compat::WrongRootNames)
            .interceptor(metered::Metered)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(Duration::from_secs(60))
                    .build(),
            );
        if let Some(url) = &self.opts.endpoint_url {
            conf = conf.endpoint_url(url);
        }
        if self.opts.endpoint_url.is_some() {
            // S3-compatible servers often return whole-object checksums on ranged reads and
            // mishandle aws-chunked uploads; integrity is checked by ETag and length instead.
            conf = conf
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        if let Some(r) = region {
            conf = conf.region(Region::new(r.to_owned()));
        }
        if own_pool {
            // A client given no HTTP client makes a default one of its own. The loaded
            // configuration carries none today; this keeps the pools apart should it ever.
            conf.set_http_client(None);
        } else if self.opts.small_local_buffers
            && self
                .opts
                .endpoint_url
                .as_deref()
                .is_some_and(local_http::is_local_http)
        {
            conf = conf.http_client(local_http::client(CONNECT_TIMEOUT));
        }
        Client::from_conf(conf.build())
    }

    /// A store for `bucket` in the configured region, without asking where the bucket lives:
    /// for when the endpoint cannot be reached now.
    pub fn unprobed(&self, bucket: &str) -> S3Store {
        S3Store {
            client: self.client(None, false),
            readers: self.client(None, true),
            bucket: bucket.to_owned(),
            endpoint: self.endpoint(None),
            copy_limit: COPY_LIMIT,
            copy_part: COPY_PART,
        }
    }

    /// A store for `bucket`, in the bucket's own region when it differs from the configured one.
    /// Fails with a clear error when the bucket is missing or access is denied.
    pub async fn connect(&self, bucket: &str) -> Result<S3Store, StoreError> {
        let client = self.client(None, false);
        let configured = self.sdk.region().map(|r| r.as_ref().to_owned());
        let region = match client.head_bucket().bucket(bucket).send().await {
            Ok(out) => out.bucket_region().map(str::to_owned),
            Err(err) => match err.raw_response().and_then(bucket_region_header) {
                // S3 answers 301/400 with the right region when the bucket lives elsewhere.
                Some(r) if Some(&r) != configured.as_ref() => Some(r),
                _ => {
                    let endpoint = self.endpoint(None);
                    match classify(&err, bucket, None, &endpoint) {
                        // A HEAD answer has no body, so no error code to tell wrong credentials
                        // from a missing permission: a one-key listing's answer has one.
                        StoreError::AccessDenied { .. } => {
                            let listed = client.list_objects_v2().bucket(bucket).max_keys(1);
                            match listed.send().await {
                                Ok(_) => None,
                                Err(err) => return Err(classify(&err, bucket, None, &endpoint)),
                            }
                        }
                        other => return Err(other),
                    }
                }
            },
        };
        // The probe's client (and its open connection) serves the store unless the bucket
        // lives elsewhere.
        let region = region.filter(|r| Some(r) != configured.as_ref());
        let client = match &region {
            Some(r) => {
                tracing::info!(bucket, region = %r, "bucket is in another region");
                self.client(Some(r), false)
            }
            None => client,
        };
        let readers = self.client(region.as_deref(), true);
        Ok(S3Store {
            client,
            readers,
            bucket: bucket.to_owned(),
            endpoint: self.endpoint(region.as_deref()),
            copy_limit: COPY_LIMIT,
            copy_part: COPY_PART,
        })
    }

    /// Where requests go: the configured endpoint, else S3's own in `region` (or the configured
    /// region); named in errors of requests that reached no server.
    fn endpoint(&self, region: Option<&str>) -> String {
        match &self.opts.endpoint_url {
            Some(url) => url.clone(),
            None => {
                let configured = self.sdk.region().map(|r| r.as_ref());
                let region = region.or(configured).unwrap_or("us-east-1");
                format!("https://s3.{region}.amazonaws.com")
            }
        }
    }
}

fn bucket_region_header(resp: &HttpResponse) -> Option<String> {
    resp.headers().get("x-amz-bucket-region").map(str::to_owned)
}

/// One bucket. Readers' GETs go through a client with a connection pool of its own: a pooled
/// connection is driven by the runtime that opened it, and those of the background download run
/// at a lower CPU priority in mount mode, busy with bodies a reader does not want.
pub struct S3Store {
    client: Client,
    readers: Client,
    bucket: String,
    /// Where requests go, named in errors of requests that reached no server.
    endpoint: String,
    /// A copy of a larger object is made in parts (S3's limit: [`COPY_LIMIT`]).
    copy_limit: u64,
    /// The part size of a copy in parts.
    copy_part: u64,
}

/// What an SDK error means for us. A request that reached no server (refused, timed out) names
/// the `endpoint` it was sent to.
fn classify<E>(
    err: &SdkError<E, HttpResponse>,
    bucket: &str,
    key: Option<&str>,
    endpoint: &str,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().unwrap_or_default();
    if errors::causes(err).any(|e| {
        matches!(
            e.downcast_ref(),
            Some(CredentialsError::CredentialsNotLoaded(_))
        )
    }) {
        return StoreError::NoCredentials;
    }
    let detail = errors::chain(err);
    match (status, code) {
        (Some(412), _) | (_, "PreconditionFailed") => StoreError::PreconditionFailed {
            key: key.unwrap_or_default().to_owned(),
        },
        (_, "ConditionalRequestConflict") => StoreError::ConditionalConflict {
            key: key.unwrap_or_default().to_owned(),
        },
        (_, "NoSuchUpload") => StoreError::NoSuchUpload {
            key: key.unwrap_or_default().to_owned(),
        },
        (_, "NoSuchBucket") => StoreError::NoSuchBucket {
            bucket: bucket.to_owned(),
        },
        (_, "NoSuchKey") => StoreError::NoSuchKey {
            key: key.unwrap_or_default().to_owned(),
        },
        (Some(404), _) if key.is_none() => StoreError::NoSuchBucket {
            bucket: bucket.to_owned(),
        },
        (Some(404), _) => StoreError::NoSuchKey {
            key: key.unwrap_or_default().to_owned(),
        },
        (_, code) if super::credentials_hint(code).is_some() => StoreError::Credentials {
            code: code.to_owned(),
        },
        (Some(status @ (401 | 403)), _) | (Some(status), "AccessDenied") => {
            StoreError::AccessDenied {
                bucket: bucket.to_owned(),
                key: key.map(str::to_owned),
                code: match code {
                    "" => format!("HTTP {status}"),
                    code => code.to_owned(),
                },
            }
        }
        (Some(408 | 429 | 500..=599), _)
        | (
            _,
            "SlowDown" | "Throttling" | "RequestTimeout" | "InternalError" | "BadDigest"
            | "IncompleteBody",
        ) => StoreError::Transient(detail),
        _ => match err {
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
                StoreError::Transient(format!("{detail} (endpoint {endpoint})"))
            }
            SdkError::ResponseError(_) => StoreError::Transient(detail),
            _ => StoreError::Permanent(detail),
        },
    }
}

/// The `Content-MD5` of a body sent: the server refuses a body that does not match (`BadDigest`),
/// so a connection cut mid-body never leaves a shorter object or part, on servers that would
/// otherwise store what arrived. The header is signed, so it also stands for the signature's
/// hash of the body, which PUTs and parts leave out (`UNSIGNED-PAYLOAD`): one pass over the
/// bytes instead of two, on both sides of the connection.
fn content_md5(body: &[u8]) -> String {
    use md5::{Digest, Md5};
    aws_smithy_types::base64::encode(Md5::digest(body))
}

fn to_system_time(t: Option<&aws_smithy_types::DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_owned()
}

fn quote(etag: &str) -> String {
    format!("\"{etag}\"")
}

/// The ETag of a write's answer, unquoted; an answer without one is not S3's.
fn answered_etag(etag: Option<&str>, what: &str, key: &str) -> Result<String, StoreError> {
    match etag {
        Some(etag) if !etag.is_empty() => Ok(unquote(etag)),
        _ => Err(StoreError::Permanent(format!(
            "the server answered {what} of \"{key}\" without an ETag"
        ))),
    }
}

/// Sets a write's [`WriteOptions`] on any request builder that has S3's ACL and SSE setters.
macro_rules! stored_as {
    ($request:expr, $opts:expr) => {{
        let opts: &WriteOptions = $opts;
        let mut request = $request;
        if opts.bucket_owner_full_control {
            request = request.acl(ObjectCannedAcl::BucketOwnerFullControl);
        }
        if let Some(key_id) = &opts.kms_key_id {
            request = request
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(key_id);
        }
        if let Some(md5) = &opts.content_md5 {
            request = request.metadata(crate::store::MD5_METADATA, md5);
        }
        request
    }};
}

/// Sets a [`Precondition`] on any request builder with S3's `If-Match` and `If-None-Match`.
macro_rules! provided {
    ($request:expr, $cond:expr) => {{
        let request = $request;
        match $cond {
            Precondition::None => request,
            Precondition::IfMatch(etag) => request.if_match(quote(etag)),
            Precondition::IfNoneMatch => request.if_none_match("*"),
        }
    }};
}

#[async_trait]
impl ObjectStore for S3Store {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        self.list_split(prefix).await
    }

    async fn list_parts(
        &self,
        prefix: &str,
        expected: usize,
        part: &(dyn Fn(Cover, Listing) + Sync),
    ) -> Result<(), StoreError> {
        self.list_split_parts(prefix, expected, part).await
    }

    async fn list_dir(&self, prefix: &str) -> Result<DirListing, StoreError> {
        self.list_dir_pages(prefix).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        Ok(self.head_object(key).await?.map(|out| ObjectMeta {
            key: key.to_owned(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            etag: unquote(out.e_tag().unwrap_or_default()).into(),
            last_modified: to_system_time(out.last_modified()),
        }))
    }

    async fn stored_md5(&self, key: &str) -> Result<Option<String>, StoreError> {
        let out = self.head_object(key).await?;
        Ok(out.and_then(|out| out.metadata()?.get(crate::store::MD5_METADATA).cloned()))
    }

    async fn get(&self, key: &str, range: Range<u64>, etag: &str) -> Result<Body, StoreError> {
        self.get_with(&self.client, key, range, etag).await
    }

    async fn get_for_reader(
        &self,
        key: &str,
        range: Range<u64>,
        etag: &str,
    ) -> Result<Body, StoreError> {
        self.get_with(&self.readers, key, range, etag).await
    }

    async fn warm_for_readers(&self) {
        if let Err(e) = self.readers.head_bucket().bucket(&self.bucket).send().await {
            let error = errors::chain(&e);
            tracing::debug!(bucket = %self.bucket, "warming the readers' connection: {error}");
        }
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        cond: &Precondition,
        opts: &WriteOptions,
    ) -> Result<String, StoreError> {
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_md5(content_md5(&body))
            .body(ByteStream::from(body));
        let out = provided!(stored_as!(request, opts), cond)
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| self.classify(&e, Some(key)))?;
        answered_etag(out.e_tag(), "a PUT", key)
    }

    async fn create_multipart(&self, key: &str, opts: &WriteOptions) -> Result<String, StoreError> {
        let request = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key);
        let out = stored_as!(request, opts)
            .send()
            .await
            .map_err(|e| self.classify(&e, Some(key)))?;
        match out.upload_id() {
            Some(id) if !id.is_empty() => Ok(id.to_owned()),
            _ => Err(StoreError::Permanent(format!(
                "the server started a multipart upload of \"{key}\" without an upload id"
            ))),
        }
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number as i32)
            .content_md5(content_md5(&body))
            .body(ByteStream::from(body))
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| self.classify(&e, Some(key)))?;
        answered_etag(out.e_tag(), &format!("part {part_number}"), key)
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        cond: &Precondition,
    ) -> Result<String, StoreError> {
        let parts = parts
            .iter()
            .map(|p| {
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(p.number as i32)
                    .e_tag(quote(&p.etag))
                    .build()
            })
            .collect();
        let request = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            );
        let out = provided!(request, cond)
            .send()
            .await
            .map_err(|e| self.classify(&e, Some(key)))?;
        answered_etag(out.e_tag(), "the completion of an upload", key)
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        let sent = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        match sent.map_err(|e| self.classify(&e, Some(key))) {
            Ok(_) | Err(StoreError::NoSuchUpload { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list_multipart(&self, prefix: &str) -> Result<Vec<MultipartUpload>, StoreError> {
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut request = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .encoding_type(EncodingType::Url);
            if let Some((key, upload_id)) = &markers {
                request = request.key_marker(key).upload_id_marker(upload_id);
            }
            let page = request.send().await.map_err(|e| self.classify(&e, None))?;
            // As in a listing: servers that ignore the request send keys as they are.
            let decode = |key: &str| match page.encoding_type() == Some(&EncodingType::Url) {
                true => url_decode(key),
                false => Some(key.to_owned()),
            };
            for upload in page.uploads() {
                let (Some(key), Some(upload_id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                let Some(key) = decode(key) else {
                    tracing::warn!(bucket = %self.bucket, key, "skipping an upload whose key is not UTF-8 once decoded");
                    continue;
                };
                out.push(MultipartUpload {
                    key,
                    upload_id: upload_id.to_owned(),
                    initiated: to_system_time(upload.initiated()),
                });
            }
            let next = (page.next_key_marker().and_then(decode))
                .zip(page.next_upload_id_marker().map(str::to_owned));
            match next {
                Some(next)
                    if page.is_truncated() == Some(true) && Some(&next) != markers.as_ref() =>
                {
                    markers = Some(next)
                }
                _ => return Ok(out),
            }
        }
    }

    async fn copy(
        &self,
        source: &ObjectMeta,
        dest_key: &str,
        cond: &Precondition,
        opts: &WriteOptions,
    ) -> Result<String, StoreError> {
        if source.size > self.copy_limit {
            return self.copy_in_parts(source, dest_key, cond, opts).await;
        }
        let request = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(dest_key)
            .copy_source(self.copy_source(&source.key))
            .copy_source_if_match(quote(&source.etag.to_string()));
        let out = provided!(stored_as!(request, opts), cond)
            .send()
            .await
            .map_err(|e| copy_error(self.classify(&e, Some(dest_key)), source, dest_key, cond))?;
        let etag = out.copy_object_result().and_then(|r| r.e_tag());
        answered_etag(etag, "a copy", dest_key)
    }

    fn copies_in_parts(&self, size: u64) -> bool {
        size > self.copy_limit
    }

    async fn delete(&self, key: &str, cond: &Precondition) -> Result<(), StoreError> {
        let mut request = self.client.delete_object().bucket(&self.bucket).key(key);
        match cond {
            Precondition::None => {}
            Precondition::IfMatch(etag) => request = request.if_match(quote(etag)),
            Precondition::IfNoneMatch => {
                return Err(super::no_if_none_match_on_delete(key));
            }
        }
        match request
            .send()
            .await
            .map_err(|e| self.classify(&e, Some(key)))
        {
            Ok(_) | Err(StoreError::NoSuchKey { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A copy's error naming the key it is about: S3 does not say which of the source's and the
/// destination's conditions failed, so the source is named only when the destination had none.
fn copy_error(
    err: StoreError,
    source: &ObjectMeta,
    dest_key: &str,
    cond: &Precondition,
) -> StoreError {
    let key = |e: StoreError, key: &str| match e {
        StoreError::PreconditionFailed { .. } => StoreError::PreconditionFailed { key: key.into() },
        StoreError::NoSuchKey { .. } => StoreError::NoSuchKey { key: key.into() },
        other => other,
    };
    match (&err, cond) {
        (StoreError::PreconditionFailed { .. }, Precondition::None)
        | (StoreError::NoSuchKey { .. }, Precondition::None | Precondition::IfNoneMatch) => {
            key(err, &source.key)
        }
        _ => key(err, dest_key),
    }
}

impl S3Store {
    /// A HEAD of `key`: its answer, `None` when there is no such object.
    async fn head_object(
        &self,
        key: &str,
    ) -> Result<Option<aws_sdk_s3::operation::head_object::HeadObjectOutput>, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out)),
            Err(e) => match self.classify(&e, Some(key)) {
                StoreError::NoSuchKey { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Copies objects larger than `limit` bytes in parts of `part_size` (at least), instead of
    /// S3's 5 GiB and 512 MiB: for tests of the copy in parts with small objects.
    pub fn with_multipart_copy(mut self, limit: u64, part_size: u64) -> Self {
        self.copy_limit = limit;
        self.copy_part = part_size.max(1);
        self
    }

    /// `x-amz-copy-source` of `key` in this bucket.
    fn copy_source(&self, key: &str) -> String {
        format!("{}/{}", self.bucket, utf8_percent_encode(key, COPY_SOURCE))
    }

    /// A copy in parts (UploadPartCopy) of an object too large for CopyObject, each part
    /// conditional on the source's ETag; `cond` is sent with the completion. An upload that
    /// fails is aborted. The copy's size is checked after completion: a server that answers
    /// UploadPartCopy without copying must not leave a wrong object unnoticed.
    async fn copy_in_parts(
        &self,
        source: &ObjectMeta,
        dest_key: &str,
        cond: &Precondition,
        opts: &WriteOptions,
    ) -> Result<String, StoreError> {
        // A copy keeps its source's MD5 (as a CopyObject keeps its metadata).
        let opts = &match opts.content_md5 {
            Some(_) => opts.clone(),
            None => WriteOptions {
                content_md5: self.stored_md5(&source.key).await?,
                ..opts.clone()
            },
        };
        let upload_id = self.create_multipart(dest_key, opts).await?;
        let copied = self.copy_parts(source, dest_key, &upload_id).await;
        let completed = match copied {
            // Only the destination has a condition here.
            Ok(parts) => {
                self.complete_multipart(dest_key, &upload_id, &parts, cond)
                    .await
            }
            Err(e) => Err(e),
        };
        let etag = match completed {
            Ok(etag) => etag,
            Err(e) => {
                if let Err(abort) = self.abort_multipart(dest_key, &upload_id).await {
                    tracing::warn!(bucket = %self.bucket, key = dest_key, upload_id, "aborting a failed copy's upload: {abort}");
                }
                return Err(e);
            }
        };
        match self.head(dest_key).await? {
            Some(meta) if meta.size == source.size => Ok(etag),
            found => Err(StoreError::Permanent(format!(
                "copying \"{}\" to \"{dest_key}\" in parts: the object there has {} bytes, \
                 not the {} copied: the server does not copy parts (UploadPartCopy), or another \
                 writer replaced it at once",
                source.key,
                found.map_or(0, |m| m.size),
                source.size
            ))),
        }
    }

    /// Copies every part of `source` into the upload; the parts for its completion.
    async fn copy_parts(
        &self,
        source: &ObjectMeta,
        dest_key: &str,
        upload_id: &str,
    ) -> Result<Vec<CompletedPart>, StoreError> {
        let part_size = self.copy_part.max(source.size.div_ceil(10_000));
        let ranges = (0..source.size.div_ceil(part_size)).map(|i| {
            let start = i * part_size;
            (i as u32 + 1, start..(start + part_size).min(source.size))
        });
        futures_util::stream::iter(ranges)
            .map(|(number, range)| async move {
                let out = self
                    .client
                    .upload_part_copy()
                    .bucket(&self.bucket)
                    .key(dest_key)
                    .upload_id(upload_id)
                    .part_number(number as i32)
                    .copy_source(self.copy_source(&source.key))
                    .copy_source_if_match(quote(&source.etag.to_string()))
                    .copy_source_range(format!("bytes={}-{}", range.start, range.end - 1))
                    .customize()
                    // The request has no body, and says so: servers that route it as an
                    // UploadPart (rclone) refuse it without a length.
                    .mutate_request(|request| {
                        if request.headers().get("content-length").is_none() {
                            request.headers_mut().insert("content-length", "0");
                        }
                    })
                    .send()
                    .await
                    .map_err(|e| {
                        let err = self.classify(&e, Some(dest_key));
                        match copy_error(err, source, dest_key, &Precondition::None) {
                            StoreError::Permanent(e) => StoreError::Permanent(format!(
                                "copying \"{}\" to \"{dest_key}\": part {number} \
                                 (UploadPartCopy): {e}",
                                source.key
                            )),
                            other => other,
                        }
                    })?;
                let etag = out.copy_part_result().and_then(|r| r.e_tag());
                let etag = answered_etag(etag, &format!("the copy of part {number}"), dest_key)
                    .map_err(|_| {
                        StoreError::Permanent(format!(
                            "copying \"{}\" to \"{dest_key}\": the server answered the copy of \
                             part {number} without an ETag: it does not copy parts \
                             (UploadPartCopy)",
                            source.key
                        ))
                    })?;
                Ok(CompletedPart { number, etag })
            })
            .buffered(COPY_PARTS_AT_ONCE)
            .try_collect()
            .await
    }

    /// [`classify`] for this store's bucket and endpoint.
    fn classify<E>(&self, err: &SdkError<E, HttpResponse>, key: Option<&str>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        classify(err, &self.bucket, key, &self.endpoint)
    }

    /// A ranged GET with `If-Match`, through `client`.
    async fn get_with(
        &self,
        client: &Client,
        key: &str,
        range: Range<u64>,
        etag: &str,
    ) -> Result<Body, StoreError> {
        let out = client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .if_match(format!("\"{etag}\""))
            .send()
            .await
            .map_err(|e| self.classify(&e, Some(key)))?;
        let key = key.to_owned();
        let body = futures_util::stream::unfold(Some(out.body), move |body| {
            let key = key.clone();
            async move {
                let mut body = body?;
                match body.next().await {
                    Some(Ok(chunk)) => Some((Ok(chunk), Some(body))),
                    Some(Err(e)) => Some((
                        Err(StoreError::Transient(format!(
                            "reading \"{key}\": {}",
                            errors::chain(&e)
                        ))),
                        None,
                    )),
                    None => None,
                }
            }
        });
        Ok(Box::pin(body))
    }
}

/// Decodes a key of a listing asked for with `encoding-type=url` (`+` is a space, as S3 sends
/// it; a literal `+` comes as `%2B`).
fn url_decode(key: &str) -> Option<String> {
    let spaced = key.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|k| k.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::operation::put_object::PutObjectError;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    /// What `classify` makes of a write answered `status` with the error code `code`.
    fn classified(status: u16, code: &str) -> StoreError {
        let meta = ErrorMetadata::builder().code(code).message("m").build();
        let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        let err = SdkError::service_error(PutObjectError::generic(meta), raw);
        classify(&err, "bkt", Some("d/k"), "http://127.0.0.1:1")
    }

    #[test]
    fn write_errors_are_classified() {
        let key = || "d/k".to_owned();
        assert_eq!(
            classified(412, "PreconditionFailed"),
            StoreError::PreconditionFailed { key: key() }
        );
        assert_eq!(
            classified(409, "ConditionalRequestConflict"),
            StoreError::ConditionalConflict { key: key() }
        );
        assert_eq!(
            classified(404, "NoSuchUpload"),
            StoreError::NoSuchUpload { key: key() }
        );
        let denied = classified(403, "AccessDenied");
        assert_eq!(
            denied.to_string(),
            "access denied to bucket \"bkt\" for object \"d/k\" (AccessDenied)"
        );
        assert!(classified(503, "SlowDown").is_transient());
        assert!(classified(500, "InternalError").is_transient());
        for code in [
            "EntityTooSmall",
            "InvalidPart",
            "InvalidPartOrder",
            "MalformedXML",
        ] {
            let err = classified(400, code);
            assert!(matches!(err, StoreError::Permanent(_)), "{code}: {err:?}");
        }
    }

    #[test]
    fn missing_credentials_are_said_so_and_a_provider_that_timed_out_stays_transient() {
        use aws_smithy_runtime_api::client::result::ConnectorError;
        let dispatched = |e: CredentialsError| {
            let err: SdkError<PutObjectError, HttpResponse> =
                SdkError::dispatch_failure(ConnectorError::other(Box::new(e), None));
            classify(&err, "bkt", None, "http://127.0.0.1:1")
        };
        let none = dispatched(CredentialsError::not_loaded("no credentials in the chain"));
        assert_eq!(none, StoreError::NoCredentials);
        assert!(!none.is_transient());
        let timed_out = dispatched(CredentialsError::provider_timed_out(Duration::from_secs(1)));
        assert!(timed_out.is_transient(), "{timed_out:?}");
    }

    #[test]
    fn copy_sources_escape_what_a_header_cannot_carry() {
        let encoded = utf8_percent_encode("d/a b+ü%?.x~_-", COPY_SOURCE).to_string();
        assert_eq!(encoded, "d/a%20b%2B%C3%BC%25%3F.x~_-");
    }

    #[test]
    fn a_copys_error_names_the_key_whose_condition_failed() {
        let source = ObjectMeta {
            key: "src".into(),
            size: 1,
            etag: "e".into(),
            last_modified: SystemTime::UNIX_EPOCH,
        };
        let failed = || StoreError::PreconditionFailed { key: "dst".into() };
        let named = |cond| match copy_error(failed(), &source, "dst", &cond) {
            StoreError::PreconditionFailed { key } => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(named(Precondition::None), "src");
        assert_eq!(named(Precondition::IfNoneMatch), "dst");
        let missing = StoreError::NoSuchKey { key: "dst".into() };
        let err = copy_error(missing, &source, "dst", &Precondition::IfNoneMatch);
        assert_eq!(err, StoreError::NoSuchKey { key: "src".into() });
    }

    #[test]
    fn listed_keys_decode_as_s3_encodes_them() {
        assert_eq!(url_decode("a+b%2Bc%07%0A%25").unwrap(), "a b+c\u{7}\n%");
        assert_eq!(url_decode("d%C3%BC/x").unwrap(), "dü/x");
        assert_eq!(url_decode("bad%FF"), None);
    }
}
