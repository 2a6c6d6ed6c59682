//! s3-synchronizer: puts data from S3 (and S3-compatible stores) on the local file system.
//!
//! Data flows one way: [`store`] (S3 or in-memory) -> [`engine`] (plan, download) -> [`local`]
//! (a mount's copy: staging, atomic rename, manifests) -> [`vfs`] (mount mode's file system) -> [`fuse`];
//! the other way, [`upload`] takes a writeable mount's local changes to the store. [`cli`]
//! turns flags into a configuration and [`commands`] runs it (`sync`, `mount`, `status`).
//! Shared by all:
//! [`paths`] (key -> path), [`retry`] (the retry policy), [`tasks`] (joining tasks at shutdown),
//! [`errors`] (an error as one line), [`etag`] (ETags kept compactly), [`strings`] and [`tables`]
//! (what is kept per object), [`unchanged`] (the parts of a refresh's listing left out).

pub mod cli;
pub mod commands;
pub mod engine;
pub mod errors;
pub mod etag;
pub mod fuse;
pub mod local;
pub mod metrics;
pub mod mounts;
pub mod paths;
pub mod progress;
pub mod ranges;
pub mod retry;
pub mod store;
pub mod strings;
pub mod tables;
pub mod tasks;
#[cfg(test)]
mod testing;
pub mod unchanged;
pub mod upload;
pub mod vfs;
