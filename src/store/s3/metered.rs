//! The S3 requests the metrics count ([`crate::metrics`]): an interceptor registered on every
//! client sees each request (the SDK's own retries are off: each execution is one request),
//! times a GET to its answer's headers, and counts each by operation and outcome.

use crate::metrics::{self, RequestLabels};
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
    FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use std::time::Instant;

/// The operations the tool sends, as static label values.
const OPERATIONS: &[&str] = &[
    "GetObject",
    "HeadObject",
    "HeadBucket",
    "ListObjectsV2",
    "GetBucketLocation",
    "PutObject",
    "CopyObject",
    "DeleteObject",
    "CreateMultipartUpload",
    "UploadPart",
    "UploadPartCopy",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
    "ListMultipartUploads",
    "ListParts",
];

/// When a request was sent.
#[derive(Debug, Clone, Copy)]
struct Sent(Instant);

impl Storable for Sent {
    type Storer = StoreReplace<Self>;
}

#[derive(Debug)]
pub(super) struct Metered;

/// The operation of the request in `cfg`, as a label value.
fn operation(cfg: &ConfigBag) -> &'static str {
    let name = cfg.load::<Metadata>().map(|m| m.name());
    let known = name.and_then(|n| OPERATIONS.iter().find(|o| **o == n));
    known.copied().unwrap_or("other")
}

impl Intercept for Metered {
    fn name(&self) -> &'static str {
        "Metered"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if metrics::get().is_some() {
            cfg.interceptor_state().store_put(Sent(Instant::now()));
        }
        Ok(())
    }

    fn read_after_transmit(
        &self,
        _context: &BeforeDeserializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let (Some(m), Some(Sent(at))) = (metrics::get(), cfg.load::<Sent>())
            && operation(cfg) == "GetObject"
        {
            m.get_first_byte.observe(at.elapsed().as_secs_f64());
        }
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(m) = metrics::get() {
            let status = context.response().map(|r| r.status().as_u16());
            let labels = RequestLabels {
                operation: operation(cfg),
                outcome: metrics::outcome(status),
            };
            m.s3_requests.get_or_create(&labels).inc();
        }
        Ok(())
    }
}
