//! The commands, one module each, and what they share: connecting a mount's bucket, the
//! summary line of a pass, the signals that stop them.

pub mod mount;
pub mod service;
pub mod signals;
pub mod status;
pub mod sync;

use crate::cli::SyncConfig;
use crate::engine::{EngineError, PassStats};
use crate::mounts::Mount;
use crate::retry::retry;
use crate::store::ObjectStore;
use crate::store::s3::S3Connector;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A store for the mount's bucket. Mounts with a role read credentials from the AWS profile
/// named after the mount id, as the original program did.
pub async fn connect(
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
        Err(source) => Err(EngineError::store(mount, source)),
    }
}

/// Logs the summary line of one pass: what it did, and where its time went.
pub fn log_summary(mount: &str, s: &PassStats) {
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
        uploaded = s.uploaded,
        bytes_uploaded = s.bytes_uploaded,
        remote_deleted = s.remote_deleted,
        conflicts = s.conflicts,
        settling = s.settling,
        listing_seconds = %seconds(s.list_time),
        download_seconds = %seconds(s.download_time),
        seconds = %seconds(s.list_time + s.download_time),
        "pass complete"
    );
}
