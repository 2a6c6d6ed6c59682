//! SIGINT and SIGTERM, the signals that ask either command to stop.

use tokio::signal::unix::{Signal, SignalKind, signal};

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
