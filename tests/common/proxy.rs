//! A TCP proxy on loopback between the tool and a test server that can slow down both directions,
//! so a test can hold a download (or an upload) in progress while it looks at what has arrived.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

pub struct SlowProxy {
    /// `http://127.0.0.1:port`: point the tool here.
    pub endpoint: String,
    rate: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl SlowProxy {
    /// Proxies to `upstream` (`http://host:port`), sending each direction of a connection at no
    /// more than `rate` bytes per second (0: as fast as it comes).
    pub async fn start(upstream: &str, rate: u64) -> Self {
        let upstream = upstream
            .strip_prefix("http://")
            .expect("an http:// endpoint")
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let rate = Arc::new(AtomicU64::new(rate));
        let shared = rate.clone();
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        let accept = tokio::spawn(async move {
            // Dropped with the accept task: every connection ends with the proxy.
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let (upstream, rate) = (upstream.clone(), shared.clone());
                connections.spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        pipe(client, server, rate).await;
                    }
                });
            }
        });
        Self {
            endpoint,
            rate,
            accepted,
            accept,
        }
    }

    /// How many connections the tool has opened through the proxy.
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Changes the rate of every connection, open or new (0: unlimited).
    pub fn set_rate(&self, rate: u64) {
        self.rate.store(rate, Ordering::Relaxed);
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn pipe(client: TcpStream, server: TcpStream, rate: Arc<AtomicU64>) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        throttled(client_read, server_write, &rate),
        throttled(server_read, client_write, &rate)
    );
}

/// Copies one direction of a connection at no more than the rate (requests and their bodies,
/// such as uploads; or responses), then shuts the writing side.
async fn throttled(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    rate: &AtomicU64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        let rate = rate.load(Ordering::Relaxed);
        if rate > 0 {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
        }
    }
    let _ = to.shutdown().await;
}
