//! Prometheus metrics, served as text at `http://HOST:PORT/metrics` with `--metrics-addr`
//! (off by default).
//!
//! The places that record go through [`get`], which is `None` until [`serve`] has started the
//! endpoint: a run without metrics pays one atomic load per event, and none of the maps
//! behind the labelled families. Names and labels follow Prometheus conventions: counters end
//! in `_total`, times are in seconds and sizes in bytes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Instant;

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The metrics, when they are served.
pub fn get() -> Option<&'static Metrics> {
    METRICS.get()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The S3 API operation (`GetObject`, `ListObjectsV2`, ...).
    pub operation: &'static str,
    /// How it was answered (see [`outcome`]).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MountLabels {
    pub mount: String,
    /// `listed` (in the bucket's last listing), `present` (in the local copy, at the version
    /// listed), `pending` (listed and not present yet).
    pub state: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub s3_requests: Family<RequestLabels, Counter>,
    pub get_first_byte: Histogram,
    pub get_duration: Histogram,
    pub downloaded_bytes: Counter,
    pub uploaded_bytes: Counter,
    pub retries: Counter,
    pub failures: Family<KindLabels, Counter>,
    pub reader_waits: Histogram,
    pub fuse_operations: Family<OperationLabels, Histogram, fn() -> Histogram>,
    pub objects: Family<MountLabels, Gauge>,
    pub object_bytes: Family<MountLabels, Gauge>,
}

/// Buckets of a latency histogram: 100 µs to about 6.5 s, doubling.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("s3sync");
        let m = Self {
            s3_requests: Family::default(),
            get_first_byte: latency(),
            get_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            downloaded_bytes: Counter::default(),
            uploaded_bytes: Counter::default(),
            retries: Counter::default(),
            failures: Family::default(),
            reader_waits: latency(),
            fuse_operations: Family::new_with_constructor(latency as fn() -> Histogram),
            objects: Family::default(),
            object_bytes: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "s3_requests",
            "S3 requests, by operation and outcome (ok, not_found, precondition_failed, \
             not_modified, client_error, throttled, server_error, connection_error)",
            m.s3_requests.clone(),
        );
        r.register_with_unit(
            "get_first_byte",
            "Time from sending a GET to its answer's headers",
            Unit::Seconds,
            m.get_first_byte.clone(),
        );
        r.register_with_unit(
            "get_duration",
            "Time of a ranged GET, from sending it to its last byte written",
            Unit::Seconds,
            m.get_duration.clone(),
        );
        r.register_with_unit(
            "downloaded",
            "Bytes downloaded from S3",
            Unit::Bytes,
            m.downloaded_bytes.clone(),
        );
        r.register_with_unit(
            "uploaded",
            "Bytes of local changes uploaded to S3",
            Unit::Bytes,
            m.uploaded_bytes.clone(),
        );
        r.register(
            "retries",
            "Requests tried again after a transient failure (the failures themselves are \
             among s3_requests by outcome)",
            m.retries.clone(),
        );
        r.register(
            "failures",
            "Files and listings that failed after their retries, by kind (download, upload, \
             listing)",
            m.failures.clone(),
        );
        r.register_with_unit(
            "reader_wait",
            "Reads through the mount that waited for bytes not downloaded yet, and how long",
            Unit::Seconds,
            m.reader_waits.clone(),
        );
        r.register_with_unit(
            "fuse_operation",
            "FUSE operations served, by type, and how long each took to answer",
            Unit::Seconds,
            m.fuse_operations.clone(),
        );
        r.register(
            "objects",
            "Objects of each mount: listed in the bucket, present in the local copy, pending",
            m.objects.clone(),
        );
        r.register_with_unit(
            "objects",
            "Bytes of each mount's objects: listed, present in the local copy (the cache \
             bytes on disk), pending",
            Unit::Bytes,
            m.object_bytes.clone(),
        );
        Self { registry, ..m }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Mount `mount`'s figures after a pass: `listed` objects and bytes in the bucket, of
    /// which `present` are in the local copy.
    pub fn mount_figures(&self, mount: &str, listed: (u64, u64), present: (u64, u64)) {
        let pending = (
            listed.0.saturating_sub(present.0),
            listed.1.saturating_sub(present.1),
        );
        for (state, (n, bytes)) in [
            ("listed", listed),
            ("present", present),
            ("pending", pending),
        ] {
            let labels = MountLabels {
                mount: mount.to_owned(),
                state,
            };
            self.objects.get_or_create(&labels).set(n as i64);
            self.object_bytes.get_or_create(&labels).set(bytes as i64);
        }
    }

    /// A new file of `bytes` bytes is now present in mount `mount`'s local copy.
    pub fn file_present(&self, mount: &str, bytes: u64) {
        let labels = |state| MountLabels {
            mount: mount.to_owned(),
            state,
        };
        self.objects.get_or_create(&labels("present")).inc();
        self.objects.get_or_create(&labels("pending")).dec();
        self.object_bytes
            .get_or_create(&labels("present"))
            .inc_by(bytes as i64);
        self.object_bytes
            .get_or_create(&labels("pending"))
            .dec_by(bytes as i64);
    }
}

/// What an HTTP status (`None`: no answer) says of a request.
pub fn outcome(status: Option<u16>) -> &'static str {
    match status {
        None => "connection_error",
        Some(200..=299) => "ok",
        Some(304) => "not_modified",
        Some(404) => "not_found",
        Some(412) => "precondition_failed",
        Some(429 | 503) => "throttled",
        Some(400..=499) => "client_error",
        Some(_) => "server_error",
    }
}

/// Times one FUSE operation: observed when dropped (after its reply).
pub struct OpTimer {
    operation: &'static str,
    started: Instant,
}

impl OpTimer {
    /// A timer of `operation` when metrics are on.
    pub fn start(operation: &'static str) -> Option<Self> {
        get()?;
        Some(Self {
            operation,
            started: Instant::now(),
        })
    }
}

impl Drop for OpTimer {
    fn drop(&mut self) {
        if let Some(m) = get() {
            let labels = OperationLabels {
                operation: self.operation,
            };
            let seconds = self.started.elapsed().as_secs_f64();
            m.fuse_operations.get_or_create(&labels).observe(seconds);
        }
    }
}

/// Counts one `kind` of something in `family` (when metrics are on).
pub fn count(family: impl Fn(&Metrics) -> &Family<KindLabels, Counter>, kind: &'static str) {
    if let Some(m) = get() {
        family(m).get_or_create(&KindLabels { kind }).inc();
    }
}

/// Binds `addr` and serves the metrics there (on the current runtime) for as long as the
/// process runs; from then on [`get`] records. An address that cannot be bound is an error.
pub async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let metrics = METRICS.get_or_init(Metrics::new);
    tracing::info!(%addr, "serving metrics at /metrics");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(answer(stream, metrics));
        }
    });
    Ok(())
}

/// Answers the requests of one connection: GET /metrics with the metrics, anything else 404.
async fn answer(stream: tokio::net::TcpStream, metrics: &'static Metrics) {
    use http_body_util::Full;
    use hyper::{Response, StatusCode, body::Bytes, header};
    let service = hyper::service::service_fn(move |req: hyper::Request<_>| async move {
        let response = match req.uri().path() {
            "/metrics" => Response::builder()
                .header(
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
                .body(Full::new(Bytes::from(metrics.encode()))),
            _ => Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Full::new(Bytes::from_static(b"metrics are at /metrics\n"))),
        };
        Ok::<_, hyper::http::Error>(response.expect("a valid response"))
    });
    let io = hyper_util::rt::TokioIo::new(stream);
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_outcomes() {
        assert_eq!(outcome(Some(200)), "ok");
        assert_eq!(outcome(Some(206)), "ok");
        assert_eq!(outcome(Some(404)), "not_found");
        assert_eq!(outcome(Some(412)), "precondition_failed");
        assert_eq!(outcome(Some(503)), "throttled");
        assert_eq!(outcome(Some(403)), "client_error");
        assert_eq!(outcome(Some(500)), "server_error");
        assert_eq!(outcome(None), "connection_error");
    }

    #[test]
    fn the_exposition_names_metrics_as_prometheus_does() {
        let m = Metrics::new();
        let labels = RequestLabels {
            operation: "GetObject",
            outcome: "ok",
        };
        m.s3_requests.get_or_create(&labels).inc();
        m.downloaded_bytes.inc_by(42);
        m.mount_figures("raw", (10, 1000), (4, 300));
        m.file_present("raw", 100);
        let text = m.encode();
        for line in [
            "s3sync_s3_requests_total{operation=\"GetObject\",outcome=\"ok\"} 1",
            "s3sync_downloaded_bytes_total 42",
            "s3sync_objects{mount=\"raw\",state=\"pending\"} 5",
            "s3sync_objects_bytes{mount=\"raw\",state=\"present\"} 400",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
        }
        assert!(
            text.contains("# TYPE s3sync_get_first_byte_seconds histogram"),
            "{text}"
        );
    }
}
