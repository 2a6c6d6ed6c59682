//! The `sync` command: connects each mount's bucket, runs passes over all mounts concurrently,
//! and in recurring mode repeats them every interval until the deadline or a signal.
//!
//! A mount that fails (bucket missing, access denied, server away) does not stop the others; in
//! recurring mode it is connected and tried again on the next pass.

use super::service::{RunStatus, Service};
use super::signals::{Signals, spawn_hangup_listener};
use super::status::{self, Recorded};
use super::{connect, log_summary};
use crate::cli::SyncConfig;
use crate::engine::{Engine, EngineConfig, EngineError, Replica};
use crate::local::Root;
use crate::local::watch::Changes;
use crate::progress::Progress;
use crate::store::ObjectStore;
use crate::store::s3::S3Connector;
use anyhow::Context;
use std::collections::HashMap;
use std::sync::Arc;
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
    let cache = Root::open(&config.destination)?;
    if let Some(addr) = config.metrics_addr {
        crate::metrics::serve(addr)
            .await
            .with_context(|| format!("cannot serve metrics at {addr}"))?;
    }
    let cancel = CancellationToken::new();
    let progress = Arc::new(Progress::default());
    let engine = Engine::new(
        cache,
        &EngineConfig {
            concurrency: config.concurrency,
            tiny_concurrency: config.concurrency,
            write_concurrency: config.concurrency,
            part_size: config.part_size,
            readers: None,
            stream: None,
            slow_start: false,
            upload_delay: config.upload_delay,
        },
        progress.clone(),
        cancel.clone(),
    );
    let mut mounts = Vec::new();
    for mount in &config.mounts {
        mounts.push(engine.open_mount(mount.clone())?);
    }

    let (signalled, again) = spawn_signal_listener(cancel.clone());
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

    let mut recorded = Recorded::starting(&config.mounts, None);
    status::record(&config.destination, &recorded);
    let mut changes = watch_writeable(&config);
    let service = Service::from_env();
    let writeable = config.mounts.iter().any(|m| m.writeable);
    let run = Arc::new(RunStatus::new(progress.clone(), mounts.len(), writeable));
    service.ready(&run.line());
    let status_line = tokio::spawn(service.keep_status(run.clone()));
    let refresh = spawn_hangup_listener();
    let mut connectors: HashMap<Option<String>, Arc<S3Connector>> = HashMap::new();
    let mut stores: Vec<Option<Arc<dyn ObjectStore>>> = vec![None; mounts.len()];
    let outcome = loop {
        let PassEnd { failed, settling } = {
            let _report = progress.report();
            progress.reset();
            run_pass(
                &engine,
                &config,
                &mounts,
                &mut stores,
                &mut connectors,
                &mut recorded,
                &run,
            )
            .await
        };
        status::record(&config.destination, &recorded);
        run.pass_done(failed);
        engine.clear_staging();
        if cancel.is_cancelled() {
            break if config.recurring || !signalled.is_cancelled() {
                SyncOutcome::Complete
            } else {
                SyncOutcome::Interrupted
            };
        }
        if !config.recurring {
            break if failed > 0 {
                SyncOutcome::Failed
            } else {
                SyncOutcome::Complete
            };
        }
        let changed = async {
            match &mut changes {
                Some(changes) => changes.settled().await,
                None => std::future::pending().await,
            }
        };
        // A change still settling gets no event of its own when it was made before the watch
        // began (or the watch is off): the pass after the delay looks at it again.
        let next = match settling {
            true => config.interval.min(config.upload_delay),
            false => config.interval,
        };
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            () = changed => tracing::debug!("local changes settled: the next pass starts now"),
            () = refresh.notified() => tracing::info!("SIGHUP: the next pass starts now"),
            () = cancel.cancelled() => break SyncOutcome::Complete,
        }
    };
    service.stopping();
    status_line.abort();
    if cancel.is_cancelled() {
        flush(&engine, &config, &mounts, &stores, &again).await;
    }
    Ok(outcome)
}

/// Before a stopped run exits: uploads the writeable mounts' local changes, for at most
/// `--flush-timeout` or until a second signal; what is left is named, for the next start.
async fn flush(
    engine: &Engine,
    config: &SyncConfig,
    mounts: &[Arc<Replica>],
    stores: &[Option<Arc<dyn ObjectStore>>],
    again: &CancellationToken,
) {
    let work: Vec<_> = mounts
        .iter()
        .zip(stores)
        .filter(|(replica, _)| replica.mount.writeable)
        .filter_map(|(replica, store)| Some((replica, store.clone()?)))
        .map(|(replica, store)| async move { (replica, engine.flush(replica, store, None).await) })
        .collect();
    if work.is_empty() {
        return;
    }
    tracing::info!(
        seconds = config.flush_timeout.as_secs(),
        "uploading the writeable mounts' changes before stopping (a second signal stops at once)"
    );
    let done = tokio::select! {
        done = futures_util::future::join_all(work) => Some(done),
        () = tokio::time::sleep(config.flush_timeout) => None,
        () = again.cancelled() => None,
    };
    for (replica, result) in done.into_iter().flatten() {
        match result {
            Ok(stats) => tracing::info!(
                mount = %replica.mount.id,
                uploaded = stats.uploaded,
                remote_deleted = stats.remote_deleted,
                conflicts = stats.conflicts,
                failed = stats.failed,
                "uploaded before stopping"
            ),
            Err(e) => tracing::error!("{e}"),
        }
    }
    for replica in mounts.iter().filter(|r| r.mount.writeable) {
        let id = &replica.mount.id;
        match status::unsaved(&config.destination, id) {
            Ok(left) => {
                let names = left.changes.iter().map(|c| &c.path).chain(&left.deleted);
                for path in names {
                    tracing::warn!(mount = %id, path, "not uploaded: left for the next start");
                }
            }
            Err(e) => tracing::warn!(mount = %id, "cannot tell what is left to upload: {e}"),
        }
    }
}

/// In recurring mode, a watch of the writeable mounts' directories: a change settled for
/// `--upload-delay` starts the next pass early. Without it (no such mount, or the system
/// refuses more watches) the passes find the changes at each interval.
fn watch_writeable(config: &SyncConfig) -> Option<Changes> {
    let dirs: Vec<_> = config
        .mounts
        .iter()
        .filter(|m| m.writeable)
        .map(|m| config.destination.join(&m.id))
        .collect();
    if !config.recurring || dirs.is_empty() {
        return None;
    }
    match Changes::watch(&dirs, config.upload_delay) {
        Ok(changes) => Some(changes),
        Err(e) => {
            tracing::warn!(
                "cannot watch the writeable mounts' directories ({e}): their changes are \
                 uploaded at each pass, every --download-interval"
            );
            None
        }
    }
}

/// How a pass over every mount ended.
struct PassEnd {
    /// Files and mounts that failed (the run exits non-zero when it is not recurring).
    failed: usize,
    /// A writeable mount has local changes that were too recent to upload.
    settling: bool,
}

/// One pass over every mount.
async fn run_pass(
    engine: &Engine,
    config: &SyncConfig,
    mounts: &[Arc<Replica>],
    stores: &mut [Option<Arc<dyn ObjectStore>>],
    connectors: &mut HashMap<Option<String>, Arc<S3Connector>>,
    recorded: &mut Recorded,
    run: &RunStatus,
) -> PassEnd {
    let mut end = PassEnd {
        failed: 0,
        settling: false,
    };
    for (replica, slot) in mounts.iter().zip(stores.iter_mut()) {
        if slot.is_some() {
            continue;
        }
        match connect(&replica.mount, config, connectors).await {
            Ok(store) => *slot = Some(store),
            Err(err) => {
                end.failed += 1;
                tracing::error!("{err}");
            }
        }
    }
    let passes =
        mounts
            .iter()
            .zip(stores.iter())
            .enumerate()
            .filter_map(|(i, (replica, store))| Some((i, replica, store.clone()?)))
            .map(|(i, replica, store)| async move {
                (i, replica, engine.sync_mount(replica, store).await)
            });
    for (i, replica, result) in futures_util::future::join_all(passes).await {
        match result {
            Ok(stats) => {
                end.failed += stats.failed;
                end.settling |= stats.settling > 0;
                run.uploads(i, stats.uploaded + stats.remote_deleted, stats.settling);
                log_summary(&replica.mount.id, &stats);
                recorded.pass_done(&replica.mount.id, stats.conflicts);
            }
            Err(EngineError::Cancelled { .. }) => {}
            Err(e) => {
                end.failed += 1;
                tracing::error!("{e}");
            }
        }
    }
    crate::tables::release_freed_memory();
    end
}

/// Cancels on SIGINT or SIGTERM; the first token returned tells whether a signal arrived, the
/// second whether a second one did (stop at once, without finishing uploads).
fn spawn_signal_listener(cancel: CancellationToken) -> (CancellationToken, CancellationToken) {
    let (signalled, again) = (CancellationToken::new(), CancellationToken::new());
    let Some(mut signals) = Signals::listen() else {
        return (signalled, again);
    };
    let (first, second) = (signalled.clone(), again.clone());
    tokio::spawn(async move {
        let name = signals.recv().await;
        tracing::info!(signal = name, "stopping");
        first.cancel();
        cancel.cancel();
        let name = signals.recv().await;
        tracing::info!(signal = name, "stopping at once");
        second.cancel();
    });
    (signalled, again)
}
