//! An HTTP proxy on loopback between the tool and a test server that injects faults into a
//! seeded share of object GETs: connections dropped mid-body, 500 and 503 SlowDown answers,
//! delays, and bodies cut short under a correct-looking status and length. Or one that denies
//! every request, as S3 does to credentials without the permission.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_LENGTH, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// The response starts, and the connection drops halfway through the body.
    DropMidBody,
    /// 500 InternalError.
    InternalError,
    /// 503 SlowDown.
    SlowDown,
    /// The response comes after a delay.
    Delay,
    /// Half the body, with a status and a Content-Length that look complete.
    Truncate,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::DropMidBody,
        Fault::InternalError,
        Fault::SlowDown,
        Fault::Delay,
        Fault::Truncate,
    ];
}

type Body = BoxBody<Bytes, std::io::Error>;

struct State {
    upstream: String,
    client: Client<HttpConnector, Incoming>,
    faults: Vec<Fault>,
    percent: u64,
    rng: Mutex<u64>,
    injected: Mutex<BTreeMap<Fault, usize>>,
    /// Every request is answered 403 AccessDenied.
    deny: bool,
}

impl State {
    /// The fault for the next object GET, if it gets one (which GETs: xorshift from the seed).
    fn draw(&self) -> Option<Fault> {
        let r = {
            let mut x = self.rng.lock();
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            *x
        };
        if self.faults.is_empty() || r % 100 >= self.percent {
            return None;
        }
        // The kinds take turns, so that every kind comes up in a short run.
        let mut injected = self.injected.lock();
        let n: usize = injected.values().sum();
        let fault = self.faults[n % self.faults.len()];
        *injected.entry(fault).or_default() += 1;
        Some(fault)
    }
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
        Self::serve(upstream, seed, percent, faults, false).await
    }

    /// Answers every request as S3 answers credentials that lack the permission: 403 with the
    /// code `AccessDenied` (a HEAD, whose answer has no body, without it).
    pub async fn denying(upstream: &str) -> Self {
        Self::serve(upstream, 1, 0, &[], true).await
    }

    async fn serve(upstream: &str, seed: u64, percent: u64, faults: &[Fault], deny: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            faults: faults.to_vec(),
            percent,
            rng: Mutex::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            injected: Mutex::default(),
            deny,
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

    /// How many faults of each kind have been injected so far.
    pub fn injected(&self) -> BTreeMap<Fault, usize> {
        self.state.injected.lock().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A GET of an object (`/bucket/key`, path style), not of a listing.
fn is_object_get(req: &Request<Incoming>) -> bool {
    req.method() == Method::GET
        && req
            .uri()
            .path()
            .trim_start_matches('/')
            .split_once('/')
            .is_some_and(|(_, key)| !key.is_empty())
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

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if state.deny {
        let mut denied = s3_error(StatusCode::FORBIDDEN, "AccessDenied", "Access Denied");
        if req.method() == Method::HEAD {
            *denied.body_mut() = Full::new(Bytes::new()).map_err(|e| match e {}).boxed();
        }
        return Ok(denied);
    }
    let fault = if is_object_get(&req) {
        state.draw()
    } else {
        None
    };
    match fault {
        Some(Fault::InternalError) => {
            return Ok(s3_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "We encountered an internal error. Please try again.",
            ));
        }
        Some(Fault::SlowDown) => {
            return Ok(s3_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "SlowDown",
                "Please reduce your request rate.",
            ));
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
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(half)),
            Err(std::io::Error::other(
                "connection dropped by the fault proxy",
            )),
        ];
        BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
    };
    Ok(Response::from_parts(parts, body))
}
