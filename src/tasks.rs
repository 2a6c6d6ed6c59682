//! Joining spawned tasks at shutdown: a task its runtime dropped before it finished (the runtime
//! is shutting down: the mount is gone) is an error, not a panic; a panic in the task goes on.

use std::io;

/// What a spawned task returned (see [`finished`]).
pub async fn joined<T>(task: tokio::task::JoinHandle<T>) -> io::Result<T> {
    finished(task.await)
}

/// A spawned task's result. A task its runtime dropped before it finished (the runtime is
/// shutting down: the mount is gone) is an error, not a panic; a panic in the task goes on.
pub fn finished<T>(result: Result<T, tokio::task::JoinError>) -> io::Result<T> {
    match result {
        Ok(value) => Ok(value),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(io::Error::other("shutting down")),
    }
}
