//! The `sync` command: connects each mount's bucket, runs passes over all mounts concurrently,
//! and in recurring mode repeats them every interval until the deadline or a signal.
//!
//! A mount that fails (bucket missing, access denied, server away) does not stop the others; in
//! recurring mode it is connected and tried again on the next pass.

use crate::cache::Cache;
use crate::cli::SyncConfig;
use crate::engine::{Engine, EngineConfig, EngineError, MountState, PassStats};
use crate::mounts::Mount;
use crate::progress::Progress;
use crate::retry::retry;
use crate::signals::Signals;
use crate::store::ObjectStore;
use crate::store::s3::S3Connector;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How a `sync` run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Every mount synchronized (one-shot), or recurring mode ended as asked.
    Complete,
    /// At least one mount or object failed (one-shot).
    Failed,
    /// Stopped by SIGINT or SIGTERM before a one-shot run completed.
    Interrupted,
}

pub async fn sync(config: SyncConfig) -> anyhow::Result<SyncOutcome> {
    std::fs::create_dir_all(&config.destination).map_err(|e| {
        anyhow::anyhow!(
            "cannot create destination {}: {e}",
            config.destination.display()
        )
    })?;
    let cache = Cache::open(&config.destination)?;
    let cancel = CancellationToken::new();
    let progress = Arc::new(Progress::default());
    let engine = Engine::new(
        cache,
        &EngineConfig {
            concurrency: config.concurrency,
            part_size: config.part_size,
            readers: None,
            stream: None,
            slow_start: false,
        },
        progress.clone(),
        cancel.clone(),
    );
    let mut mounts = Vec::new();
    for mount in &config.mounts {
        note_writeable(mount, "its local changes are not uploaded");
        mounts.push(engine.open_mount(mount.clone())?);
    }

    let signalled = spawn_signal_listener(cancel.clone());
    if config.recurring
        && let Some(after) = config.stop_after
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            tracing::info!(
                seconds = after.as_secs(),
                "stopping recurring downloads as configured"
            );
            cancel.cancel();
        });
    }

    let mut connectors: HashMap<Option<String>, Arc<S3Connector>> = HashMap::new();
    let mut stores: Vec<Option<Arc<dyn ObjectStore>>> = vec![None; mounts.len()];
    let outcome = loop {
        let failed = {
            let _report = progress.report();
            progress.reset();
            run_pass(&engine, &config, &mounts, &mut stores, &mut connectors).await
        };
        engine.clear_staging();
        if cancel.is_cancelled() {
            break if config.recurring || !signalled.is_cancelled() {
                SyncOutcome::Complete
            } else {
                SyncOutcome::Interrupted
            };
        }
        if !config.recurring {
            break if failed {
                SyncOutcome::Failed
            } else {
                SyncOutcome::Complete
            };
        }
        tokio::select! {
            () = tokio::time::sleep(config.interval) => {}
            () = cancel.cancelled() => break SyncOutcome::Complete,
        }
    };
    Ok(outcome)
}

/// One pass over every mount; returns whether anything failed.
async fn run_pass(
    engine: &Engine,
    config: &SyncConfig,
    mounts: &[Arc<MountState>],
    stores: &mut [Option<Arc<dyn ObjectStore>>],
    connectors: &mut HashMap<Option<String>, Arc<S3Connector>>,
) -> bool {
    let mut failed = false;
    for (state, slot) in mounts.iter().zip(stores.iter_mut()) {
        if slot.is_some() {
            continue;
        }
        match connect(&state.mount, config, connectors).await {
            Ok(store) => *slot = Some(store),
            Err(err) => {
                failed = true;
                tracing::error!("{err}");
            }
        }
    }
    let passes = mounts
        .iter()
        .zip(stores.iter())
        .filter_map(|(state, store)| Some((state, store.clone()?)))
        .map(|(state, store)| async move { (state, engine.sync_mount(state, store).await) });
    for (state, result) in futures_util::future::join_all(passes).await {
        match result {
            Ok(stats) => {
                failed |= stats.failed > 0;
                log_summary(&state.mount.id, &stats);
            }
            Err(EngineError::Cancelled { .. }) => {}
            Err(e) => {
                failed = true;
                tracing::error!("{e}");
            }
        }
    }
    failed
}

/// A store for the mount's bucket. Mounts with a role read credentials from the AWS profile
/// named after the mount id, as the original program did.
pub(crate) async fn connect(
    mount: &Mount,
    config: &SyncConfig,
    connectors: &mut HashMap<Option<String>, Arc<S3Connector>>,
) -> Result<Arc<dyn ObjectStore>, EngineError> {
    let profile = mount.role_arn.as_ref().map(|_| mount.id.clone());
    let connector = match connectors.get(&profile) {
        Some(c) => c.clone(),
        None => {
            let c = Arc::new(S3Connector::load(&config.s3, profile.as_deref()).await);
            connectors.insert(profile, c.clone());
            c
        }
    };
    match retry("connect", || connector.connect(&mount.bucket)).await {
        Ok(store) => Ok(Arc::new(store)),
        // Listing it will say whether it can be reached by now (mount mode then serves the
        // cache until it can), and name the cause once.
        Err(source) if source.is_transient() => {
            tracing::debug!(
                mount = %mount.id,
                bucket = %mount.bucket,
                "cannot reach the bucket ({source}); going on with the configured region"
            );
            Ok(Arc::new(connector.unprobed(&mount.bucket)))
        }
        Err(source) => Err(EngineError::Store {
            mount: mount.id.clone(),
            bucket: mount.bucket.clone(),
            prefix: mount.prefix.clone(),
            source: Box::new(source),
        }),
    }
}

/// Logs the summary line of one pass: what it did, and where its time went.
pub(crate) fn log_summary(mount: &str, s: &PassStats) {
    let seconds = |d: Duration| format!("{:.2}", d.as_secs_f64());
    tracing::info!(
        mount,
        listed = s.listed,
        downloaded = s.downloaded,
        updated = s.updated,
        deleted = s.deleted,
        skipped = s.skipped,
        failed = s.failed,
        unchanged = s.unchanged,
        bytes = s.bytes,
        listing_seconds = %seconds(s.list_time),
        download_seconds = %seconds(s.download_time),
        seconds = %seconds(s.list_time + s.download_time),
        "pass complete"
    );
}

/// Says once, at start, that a mount the mounts JSON calls writeable is not written back:
/// uploading is not supported yet. `consequence` is what that means for the command.
pub(crate) fn note_writeable(mount: &Mount, consequence: &str) {
    if mount.writeable {
        tracing::warn!(
            mount = %mount.id,
            "the mount is writeable in the mounts JSON, but uploading to S3 is not supported \
             yet: {consequence}"
        );
    }
}

/// Cancels on SIGINT or SIGTERM; the returned token tells whether a signal arrived.
fn spawn_signal_listener(cancel: CancellationToken) -> CancellationToken {
    let signalled = CancellationToken::new();
    let Some(mut signals) = Signals::listen() else {
        return signalled;
    };
    let flag = signalled.clone();
    tokio::spawn(async move {
        let name = signals.recv().await;
        tracing::info!(signal = name, "stopping");
        flag.cancel();
        cancel.cancel();
    });
    signalled
}
