//! A TCP proxy on loopback between the tool and a test server that can slow down responses, so
//! a test can hold a download in progress while it looks at what has arrived.

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
    /// Proxies to `upstream` (`http://host:port`), sending each response stream at no more than
    /// `rate` bytes per second per connection (0: as fast as it comes).
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
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = async {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    };
    let responses = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
            let rate = rate.load(Ordering::Relaxed);
            if rate > 0 {
                tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(requests, responses);
}
