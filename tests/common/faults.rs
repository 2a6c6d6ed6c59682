//! An HTTP proxy on loopback between the tool and a test server that injects faults: into a
//! seeded share of object GETs (connections dropped mid-body, 500 and 503 SlowDown answers,
//! delays, bodies cut short under a correct-looking status and length), and into the writes a
//! writeable mount makes (PUT, UploadPart, CreateMultipartUpload, CompleteMultipartUpload,
//! DELETE, abort): the request cut while its body is sent, 500 and 503 answered without
//! forwarding it, a delay, and the response lost after the server applied the request. Or one
//! that denies every request, as S3 does to credentials without the permission. Listings of
//! objects can be held back until a test lets them go ([`FaultProxy::hold_listings`]).
//!
//! Which requests get a fault is seeded. [`FaultProxy::start`] draws from one stream in the
//! order GETs arrive; [`FaultProxy::with_rules`] draws from the request itself (its kind, key,
//! part number, and how many times the same request came before), so that concurrent requests
//! get the same faults whatever order they arrive in, and a retry draws again.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Body as _, Frame, Incoming};
use hyper::header::{CONTENT_LENGTH, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// The response starts, and the connection drops halfway through the body (GETs only).
    DropMidBody,
    /// 500 InternalError, without forwarding the request (a body is read first, as S3 does).
    InternalError,
    /// 503 SlowDown, without forwarding the request.
    SlowDown,
    /// The request is forwarded after a delay.
    Delay,
    /// Half the body, with a status and a Content-Length that look complete (GETs only).
    Truncate,
    /// The connection drops while the request is sent: after half its body, or before any
    /// answer to one without a body. The server never sees it.
    DropRequest,
    /// The server gets the request and applies it, and the connection drops before the client
    /// sees the answer: it happened, and the client cannot know.
    LoseResponse,
}

impl Fault {
    /// The faults of an object GET's response.
    pub const GET: [Fault; 5] = [
        Fault::DropMidBody,
        Fault::InternalError,
        Fault::SlowDown,
        Fault::Delay,
        Fault::Truncate,
    ];
    /// The same as [`Fault::GET`], under the name the read-side tests use.
    pub const ALL: [Fault; 5] = Fault::GET;
    /// The faults of a write (a request with a body, or one that changes the bucket).
    pub const WRITE: [Fault; 5] = [
        Fault::DropRequest,
        Fault::InternalError,
        Fault::SlowDown,
        Fault::Delay,
        Fault::LoseResponse,
    ];
}

/// The kinds of request a rule can fault (path-style addressing: `/bucket/key?query`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// GetObject (a GET of a key, not of a listing).
    Get,
    /// PutObject (a PUT of a key without `partNumber`, not a copy).
    Put,
    /// UploadPart (a PUT with `partNumber` and `uploadId`).
    Part,
    /// CreateMultipartUpload (a POST with `uploads`).
    Create,
    /// CompleteMultipartUpload (a POST with `uploadId`).
    Complete,
    /// DeleteObject (a DELETE of a key without `uploadId`).
    Delete,
    /// AbortMultipartUpload (a DELETE with `uploadId`).
    Abort,
}

impl Op {
    /// Every write a writeable mount makes but the abort that cleans up after a failed one.
    pub const WRITES: [Op; 5] = [Op::Put, Op::Part, Op::Create, Op::Complete, Op::Delete];
    /// [`Op::WRITES`] and the abort.
    pub const WRITES_AND_ABORT: [Op; 6] = [
        Op::Put,
        Op::Part,
        Op::Create,
        Op::Complete,
        Op::Delete,
        Op::Abort,
    ];

    /// The kind of `req`, `None` for anything else (listings, HEADs, copies, bucket requests).
    fn of<B>(req: &Request<B>) -> Option<Op> {
        let path = req.uri().path().trim_start_matches('/');
        let (_, key) = path.split_once('/')?;
        if key.is_empty() {
            return None;
        }
        let query: Vec<&str> = req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .map(|p| p.split_once('=').map_or(p, |(k, _)| k))
            .collect();
        let has = |name: &str| query.contains(&name);
        let copy = req.headers().contains_key("x-amz-copy-source");
        match *req.method() {
            Method::GET => Some(Op::Get),
            Method::PUT if copy => None,
            Method::PUT if has("partNumber") && has("uploadId") => Some(Op::Part),
            Method::PUT => Some(Op::Put),
            Method::POST if has("uploads") => Some(Op::Create),
            Method::POST if has("uploadId") => Some(Op::Complete),
            Method::DELETE if has("uploadId") => Some(Op::Abort),
            Method::DELETE => Some(Op::Delete),
            _ => None,
        }
    }
}

/// Which requests get faults: `percent`% of the requests of the kinds `ops` (each try of a
/// request drawn on its own), with the kinds `faults` taking turns, at most `max` in all.
#[derive(Clone, Debug)]
pub struct Rule {
    pub ops: Vec<Op>,
    pub percent: u64,
    pub faults: Vec<Fault>,
    pub max: Option<usize>,
}

impl Rule {
    /// `percent`% of the requests of kinds `ops` get one of `faults`, without a limit.
    pub fn new(ops: &[Op], percent: u64, faults: &[Fault]) -> Self {
        Self {
            ops: ops.to_vec(),
            percent,
            faults: faults.to_vec(),
            max: None,
        }
    }

    /// No more than `max` faults from this rule.
    pub fn at_most(mut self, max: usize) -> Self {
        self.max = Some(max);
        self
    }

    /// `faults` in turn for the first two requests of each kind of write (so that every kind
    /// gets some, whatever the seed), then for `percent`% of every write, aborts included.
    pub fn writes(faults: &[Fault], percent: u64) -> Vec<Rule> {
        let mut rules: Vec<Rule> = Op::WRITES
            .iter()
            .map(|op| Rule::new(&[*op], 100, faults).at_most(2))
            .collect();
        rules.push(Rule::new(&Op::WRITES_AND_ABORT, percent, faults));
        rules
    }
}

/// The seed of the faults, kill points and the like: `S3SYNC_SEED` to try others, else 7.
pub fn seed() -> u64 {
    std::env::var("S3SYNC_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7)
}

type Body = BoxBody<Bytes, std::io::Error>;

/// Where the proxy draws whether a request gets a fault.
enum Draws {
    /// One xorshift stream, one number per object GET in arrival order.
    Stream(Mutex<u64>),
    /// A hash of the seed, the rule, the request and how many times it came before.
    ByRequest {
        seed: u64,
        /// Guards: how many times each request (kind, path, part number) has been seen.
        seen: Mutex<HashMap<String, u64>>,
    },
}

struct State {
    upstream: String,
    client: Client<HttpConnector, Incoming>,
    rules: Vec<Rule>,
    draws: Draws,
    /// Guards: per rule, how many faults it has injected (whose turn is next).
    turns: Mutex<Vec<usize>>,
    injected: Mutex<BTreeMap<(Op, Fault), usize>>,
    requests: Mutex<BTreeMap<Op, usize>>,
    /// Every request is answered 403 AccessDenied.
    deny: bool,
    /// While true, listings of objects wait.
    hold: tokio::sync::watch::Sender<bool>,
    /// While true, listings of objects without a delimiter (of a whole prefix, not of one
    /// directory) wait.
    hold_whole: tokio::sync::watch::Sender<bool>,
}

impl State {
    /// The fault for the request `req` of kind `op`, if it gets one.
    fn draw<B>(&self, op: Op, req: &Request<B>) -> Option<Fault> {
        *self.requests.lock().entry(op).or_default() += 1;
        let r = match &self.draws {
            Draws::Stream(x) => {
                if op != Op::Get {
                    return None;
                }
                let mut x = x.lock();
                *x ^= *x << 13;
                *x ^= *x >> 7;
                *x ^= *x << 17;
                *x
            }
            Draws::ByRequest { seed, seen } => {
                let part = req
                    .uri()
                    .query()
                    .unwrap_or_default()
                    .split('&')
                    .find(|p| p.starts_with("partNumber="))
                    .unwrap_or_default();
                let id = format!("{op:?} {} {part}", req.uri().path());
                let mut seen = seen.lock();
                let n = seen.entry(id.clone()).or_default();
                *n += 1;
                mix(*seed, &format!("{id} {n}"))
            }
        };
        let mut turns = self.turns.lock();
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.ops.contains(&op) || rule.faults.is_empty() {
                continue;
            }
            // Each rule of a request's draws has a number of its own; a stream has one rule.
            let r = match self.draws {
                Draws::Stream(_) => r,
                Draws::ByRequest { .. } => mix(r, &i.to_string()),
            };
            if r % 100 >= rule.percent || rule.max.is_some_and(|max| turns[i] >= max) {
                continue;
            }
            // The kinds take turns, so that every kind comes up in a short run.
            let fault = rule.faults[turns[i] % rule.faults.len()];
            turns[i] += 1;
            *self.injected.lock().entry((op, fault)).or_default() += 1;
            return Some(fault);
        }
        None
    }
}

/// A 64-bit hash of `seed` and `text` (FNV-1a, then splitmix64's finalizer), the same in every
/// run and on every platform.
fn mix(seed: u64, text: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

pub struct FaultProxy {
    /// `http://127.0.0.1:port`: point the tool here.
    pub endpoint: String,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Proxies to `upstream` (`http://host:port`), giving `percent`% of object GETs one of
    /// `faults`, drawn from a generator seeded with `seed`.
    pub async fn start(upstream: &str, seed: u64, percent: u64, faults: &[Fault]) -> Self {
        let rules = vec![Rule::new(&[Op::Get], percent, faults)];
        let stream = Draws::Stream(Mutex::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1));
        Self::serve(upstream, rules, stream, false).await
    }

    /// Proxies to `upstream`, giving each request the fault of the first of `rules` that draws
    /// one for it (seeded with `seed`; see the module's note on draws).
    ///
    /// Panics if a rule gives a write a fault of a GET's response body.
    pub async fn with_rules(upstream: &str, seed: u64, rules: &[Rule]) -> Self {
        for rule in rules {
            let body_faults = rule
                .faults
                .iter()
                .any(|f| matches!(f, Fault::DropMidBody | Fault::Truncate));
            assert!(
                !body_faults || rule.ops.iter().all(|op| *op == Op::Get),
                "{rule:?}: a write's answer has no body to cut"
            );
        }
        let draws = Draws::ByRequest {
            seed,
            seen: Mutex::default(),
        };
        Self::serve(upstream, rules.to_vec(), draws, false).await
    }

    /// Answers every request as S3 answers credentials that lack the permission: 403 with the
    /// code `AccessDenied` (a HEAD, whose answer has no body, without it).
    pub async fn denying(upstream: &str) -> Self {
        Self::serve(upstream, Vec::new(), Draws::Stream(Mutex::new(1)), true).await
    }

    async fn serve(upstream: &str, rules: Vec<Rule>, draws: Draws, deny: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            turns: Mutex::new(vec![0; rules.len()]),
            rules,
            draws,
            injected: Mutex::default(),
            requests: Mutex::default(),
            deny,
            hold: tokio::sync::watch::channel(false).0,
            hold_whole: tokio::sync::watch::channel(false).0,
        });
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            // Dropped with the accept task: every connection ends with the proxy.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            endpoint,
            state,
            accept,
        }
    }

    /// How many faults of each kind have been injected so far, into requests of every kind.
    pub fn injected(&self) -> BTreeMap<Fault, usize> {
        let mut sum = BTreeMap::new();
        for ((_, fault), n) in self.state.injected.lock().iter() {
            *sum.entry(*fault).or_default() += n;
        }
        sum
    }

    /// How many faults of each kind have been injected so far into requests of kind `op`.
    pub fn injected_into(&self, op: Op) -> BTreeMap<Fault, usize> {
        let injected = self.state.injected.lock();
        injected
            .iter()
            .filter(|((o, _), _)| *o == op)
            .map(|((_, fault), n)| (*fault, *n))
            .collect()
    }

    /// Holds back every listing of objects (ListObjects, V1 or V2) from now on, while `hold`;
    /// those held are sent on once it is false again.
    pub fn hold_listings(&self, hold: bool) {
        self.state.hold.send_replace(hold);
    }

    /// Holds back every listing of a whole prefix (without a delimiter) from now on, while
    /// `hold`, and lets listings of one directory through; those held are sent on once it is
    /// false again. A mount's full listing then cannot end.
    pub fn hold_whole_listings(&self, hold: bool) {
        self.state.hold_whole.send_replace(hold);
    }

    /// How many requests of kind `op` the proxy has seen, faulted or not.
    pub fn requests(&self, op: Op) -> usize {
        self.state.requests.lock().get(&op).copied().unwrap_or(0)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn s3_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    let mut response = Response::new(Full::new(Bytes::from(xml)).map_err(|e| match e {}).boxed());
    *response.status_mut() = status;
    response
}

/// The connection drops: hyper closes it without an answer when the service fails.
fn dropped() -> std::io::Error {
    std::io::Error::other("connection dropped by the fault proxy")
}

/// Reads and discards `body` (at least `limit` bytes of it, or all of it), as a server reads a
/// request it then refuses.
async fn read_body(mut body: Incoming, limit: u64) {
    let mut read = 0u64;
    while read < limit {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len() as u64),
            _ => return,
        }
    }
}

/// Whether `req` lists objects: a GET of a bucket (path-style) that asks for nothing else of it
/// (its location, its multipart uploads, ...).
fn is_listing<B>(req: &Request<B>) -> bool {
    let path = req.uri().path().trim_start_matches('/');
    let bucket_only = !path.trim_end_matches('/').contains('/');
    let query = req.uri().query().unwrap_or_default();
    let other = ["location", "uploads", "versioning", "acl", "policy"]
        .iter()
        .any(|q| {
            query
                .split('&')
                .any(|p| p == *q || p.starts_with(&format!("{q}=")))
        });
    req.method() == Method::GET && !path.is_empty() && bucket_only && !other
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    if state.deny {
        let mut denied = s3_error(StatusCode::FORBIDDEN, "AccessDenied", "Access Denied");
        if req.method() == Method::HEAD {
            *denied.body_mut() = Full::new(Bytes::new()).map_err(|e| match e {}).boxed();
        }
        return Ok(denied);
    }
    if is_listing(&req) {
        let mut held = state.hold.subscribe();
        let _ = held.wait_for(|hold| !hold).await;
        let query = req.uri().query().unwrap_or_default();
        if !query.split('&').any(|p| p.starts_with("delimiter=")) {
            let mut held = state.hold_whole.subscribe();
            let _ = held.wait_for(|hold| !hold).await;
        }
    }
    let fault = Op::of(&req).and_then(|op| state.draw(op, &req));
    match fault {
        Some(fault @ (Fault::InternalError | Fault::SlowDown)) => {
            read_body(req.into_body(), u64::MAX).await;
            return Ok(match fault {
                Fault::InternalError => s3_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "We encountered an internal error. Please try again.",
                ),
                _ => s3_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "SlowDown",
                    "Please reduce your request rate.",
                ),
            });
        }
        Some(Fault::DropRequest) => {
            let half = req.body().size_hint().lower() / 2;
            read_body(req.into_body(), half.max(1)).await;
            return Err(dropped());
        }
        Some(Fault::Delay) => tokio::time::sleep(Duration::from_millis(300)).await,
        _ => {}
    }
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("{}{path}", state.upstream).parse().unwrap();
    let response = match state.client.request(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(e) => {
            return Ok(s3_error(
                StatusCode::BAD_GATEWAY,
                "BadGateway",
                &e.to_string(),
            ));
        }
    };
    let (mut parts, body) = response.into_parts();
    if fault == Some(Fault::LoseResponse) {
        // The whole answer first: the server has done all it does for the request.
        let _ = body.collect().await;
        return Err(dropped());
    }
    let cut = matches!(fault, Some(Fault::DropMidBody | Fault::Truncate));
    if !cut || !parts.status.is_success() {
        return Ok(Response::from_parts(
            parts,
            body.map_err(std::io::Error::other).boxed(),
        ));
    }
    let data = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Ok(s3_error(
                StatusCode::BAD_GATEWAY,
                "BadGateway",
                &e.to_string(),
            ));
        }
    };
    let half = data.slice(..data.len() / 2);
    let body = if fault == Some(Fault::Truncate) {
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(half.len()));
        Full::new(half).map_err(|e| match e {}).boxed()
    } else {
        // The declared length stays; the body stops halfway and the connection is closed.
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> =
            vec![Ok(Frame::data(half)), Err(dropped())];
        BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
    };
    Ok(Response::from_parts(parts, body))
}
