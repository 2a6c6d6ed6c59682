//! s3-synchronizer: puts data from S3 (and S3-compatible stores) on the local file system.
//!
//! Data flows one way: [`store`] (S3 or in-memory) -> [`engine`] (plan, download) -> [`cache`]
//! (staging, atomic rename, manifests). [`cli`] and [`app`] are the command-line front end.

pub mod app;
pub mod cache;
pub mod cli;
pub mod engine;
pub mod errors;
pub mod fuse;
pub mod manifest;
pub mod mount;
pub mod mounts;
pub mod paths;
pub mod progress;
pub mod ranges;
pub mod retry;
pub mod signals;
pub mod store;
pub mod tasks;
pub mod vfs;
