//! The HTTP client for an S3-compatible server on this machine (a plain-HTTP endpoint on a
//! loopback address), used for the background download: hyper's client, with a small socket
//! receive buffer on each connection.
//!
//! Such a server shares the cores with us and with the reader, and Linux grows a connection's
//! receive buffer to several MiB while a download streams: when the background download pauses
//! for a reader, the server would fill those buffers before it rests, and answer the reader's
//! GET late (measurements: docs/PERFORMANCE.md, "Receive buffers"). Over loopback a small
//! window does not limit the download's speed; a remote server keeps the SDK's client, whose
//! buffers grow with the round trip as they must.

use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorFuture, SharedHttpClient, SharedHttpConnector, http_client_fn,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::http::Response as HttpResponse;
use aws_smithy_types::body::SdkBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector as TcpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::IpAddr;
use std::time::Duration;

/// The receive buffer of each connection.
pub const RECEIVE_BUFFER: usize = 256 << 10;

/// Whether `endpoint` is plain HTTP to a loopback address (`127.0.0.0/8`, `::1`, `localhost`).
pub fn is_local_http(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        // `[::1]:port`, `host:port`; a bare IPv6 address has more than one colon.
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) && !host.ends_with(':') => {
            host
        }
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A client whose connections (one pool for every request) connect within `connect_timeout`
/// and have small receive buffers.
pub fn client(connect_timeout: Duration) -> SharedHttpClient {
    let mut tcp = TcpConnector::new();
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    tcp.set_recv_buffer_size(Some(RECEIVE_BUFFER));
    let pool = Client::builder(TokioExecutor::new()).build(tcp);
    http_client_fn(move |settings, _| {
        SharedHttpConnector::new(Local {
            pool: pool.clone(),
            read_timeout: settings.read_timeout(),
        })
    })
}

#[derive(Debug)]
struct Local {
    pool: Client<TcpConnector, SdkBody>,
    /// How long the response's headers may take.
    read_timeout: Option<Duration>,
}

impl HttpConnector for Local {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let (pool, read_timeout) = (self.pool.clone(), self.read_timeout);
        HttpConnectorFuture::new(async move {
            let request = request
                .try_into_http1x()
                .map_err(|e| ConnectorError::other(e.into(), None))?;
            let sent = pool.request(request);
            let response = match read_timeout {
                Some(limit) => tokio::time::timeout(limit, sent)
                    .await
                    .map_err(|e| ConnectorError::timeout(e.into()))?,
                None => sent.await,
            }
            .map_err(|e| ConnectorError::io(e.into()))?;
            HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                .map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::is_local_http;

    #[test]
    fn only_plain_http_to_a_loopback_address_is_local() {
        for local in [
            "http://127.0.0.1:9000",
            "http://127.0.0.1",
            "http://127.1.2.3:80/",
            "http://localhost:9000",
            "http://LOCALHOST",
            "http://[::1]:9000",
            "http://[::1]",
        ] {
            assert!(is_local_http(local), "{local}");
        }
        for remote in [
            "https://127.0.0.1:9000",
            "http://10.0.0.5:9000",
            "http://minio.internal:9000",
            "http://[2001:db8::1]:9000",
            "https://s3.amazonaws.com",
            "http://localhost.example.com",
            "127.0.0.1:9000",
        ] {
            assert!(!is_local_http(remote), "{remote}");
        }
    }
}
