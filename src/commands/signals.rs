//! SIGINT and SIGTERM, the signals that ask either command to stop; SIGHUP, which asks for a
//! refresh now (rclone's convention).

use std::sync::Arc;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::Notify;

/// Listens for SIGINT and SIGTERM from its creation on: a signal that arrives between two
/// [`Signals::recv`] calls is not lost.
pub struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    /// Starts listening (on the current runtime); `None`, with a warning, when it cannot.
    pub fn listen() -> Option<Self> {
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(int), Ok(term)) => Some(Self { int, term }),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("cannot listen for signals: {e}");
                None
            }
        }
    }

    /// The name of the next signal to arrive.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// The next signal of `signals`; never, when there is no listener.
pub async fn next(signals: &mut Option<Signals>) -> &'static str {
    match signals {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Listens for SIGHUP (on the current runtime) from now on: each one notifies the returned
/// `Notify`, which the next listing waits on beside its interval. Without a listener (with a
/// warning) it is never notified.
pub fn spawn_hangup_listener() -> Arc<Notify> {
    let refresh = Arc::new(Notify::new());
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            let refresh = refresh.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    refresh.notify_one();
                }
            });
        }
        Err(e) => tracing::warn!("cannot listen for SIGHUP (a refresh asked for): {e}"),
    }
    refresh
}
