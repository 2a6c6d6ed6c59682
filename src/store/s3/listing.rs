//! A listing of a prefix, split into sub-prefixes that are listed in parallel.
//!
//! One paginated ListObjectsV2 asks for its pages one after another: a listing of a million
//! keys is a thousand round trips in a row. Where the keys fall into directories (a listing
//! with the delimiter `/` shows them as common prefixes) the listing is split: the first page
//! of a delimiter listing of a prefix gives the objects directly in it and its sub-prefixes,
//! whose keys are then listed, each whole, several at once. Every key under the prefix is in
//! exactly one part: directly in a prefix whose delimiter listing fit in one page, or under one
//! of the sub-prefixes listed whole. A prefix with more than a page of entries is not split
//! (listed whole: one page asked for twice), nor are levels that would make more parts than a
//! listing saves requests; so a flat prefix costs one request more than a plain listing, and a
//! small one none.

use super::{S3Store, url_decode};
use crate::store::{Cover, DirListing, Listing, ObjectMeta, StoreError};
use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output;
use aws_sdk_s3::operation::list_objects_v2::builders::ListObjectsV2FluentBuilder;
use aws_sdk_s3::types::EncodingType;
use futures_util::{StreamExt, TryStreamExt, stream};

/// Listings (pages of one, or parts) asked for at once, ...
const LISTS_AT_ONCE: usize = 16;
/// ... or as few as this where the caller expects few objects (see [`lists_at_once`]).
const FEWEST_LISTS_AT_ONCE: usize = 4;
/// The objects expected for each listing at once.
const OBJECTS_PER_LIST: usize = 25_000;

/// How many listings to ask for at once for about `expected` objects (0: not known): a page
/// being read and parsed takes a few hundred kilobytes, so 16 at once hold megabytes, which
/// the listing of a small bucket does not need to go fast; with fewer, the pages in flight stay
/// a small share of what a mount keeps for the objects.
fn lists_at_once(expected: usize) -> usize {
    match expected {
        0 => LISTS_AT_ONCE,
        n => (n / OBJECTS_PER_LIST).clamp(FEWEST_LISTS_AT_ONCE, LISTS_AT_ONCE),
    }
}

/// A listing is split until it has this many parts, ...
const ENOUGH_PARTS: usize = 16;
/// ... going at most this many levels down, ...
const MAX_LEVELS: usize = 3;
/// ... and never into more parts than this (each costs a request, however few keys it holds).
const MAX_PARTS: usize = 256;

/// The first page of a delimiter listing of a prefix.
struct Level {
    /// Objects directly in the prefix, and its sub-prefixes.
    dir: DirListing,
    /// More pages follow: the prefix holds more than a page of entries.
    truncated: bool,
}

impl S3Store {
    /// Every object under `prefix`, in key order: split into parts listed in parallel (see the
    /// module's note), each joining the listing as it comes, so that no more than the parts in
    /// flight are held twice.
    pub(super) async fn list_split(&self, prefix: &str) -> Result<Listing, StoreError> {
        let out = parking_lot::Mutex::new(Listing::new());
        self.list_split_parts(prefix, 0, &|_, part| out.lock().join(part))
            .await?;
        let mut out = out.into_inner();
        out.sort();
        Ok(out)
    }

    /// Every object under `prefix`, in parts as they are listed: the objects directly in each
    /// prefix split, and each part listed whole (see the module's note). About `expected`
    /// objects are expected (0: not known).
    pub(super) async fn list_split_parts(
        &self,
        prefix: &str,
        expected: usize,
        part: &(dyn Fn(Cover, Listing) + Sync),
    ) -> Result<(), StoreError> {
        let at_once = lists_at_once(expected);
        // Parts listed whole, and parts that may be split further.
        let mut whole = Vec::new();
        let mut open = vec![prefix.to_owned()];
        for _ in 0..MAX_LEVELS {
            if open.is_empty() || whole.len() + open.len() >= ENOUGH_PARTS {
                break;
            }
            // Futures made first: a stream of a borrowing closure is not `Send` enough for
            // `async_trait`.
            let asked: Vec<_> = open.iter().map(|p| self.level(p)).collect();
            let levels: Vec<Level> = stream::iter(asked).buffered(at_once).try_collect().await?;
            let (mut direct, mut truncated, mut below) = (Vec::new(), Vec::new(), Vec::new());
            for (p, level) in open.iter().zip(levels) {
                if level.truncated {
                    truncated.push(p.clone());
                } else {
                    direct.push((Cover::Direct(p.clone()), Listing::from(level.dir.objects)));
                    below.extend(level.dir.prefixes);
                }
            }
            // Too many parts: the open ones are listed whole instead.
            if whole.len() + truncated.len() + below.len() > MAX_PARTS {
                break;
            }
            for (cover, objects) in direct {
                part(cover, objects);
            }
            whole.extend(truncated);
            open = below;
        }
        whole.extend(open);
        let asked: Vec<_> = whole
            .into_iter()
            .map(|p| async move { Ok::<_, StoreError>((self.list_whole(&p).await?, p)) })
            .collect();
        let mut parts = stream::iter(asked).buffer_unordered(at_once);
        while let Some((listing, p)) = parts.try_next().await? {
            part(Cover::Under(p), listing);
        }
        Ok(())
    }

    /// The first page of the delimiter listing of `prefix`.
    async fn level(&self, prefix: &str) -> Result<Level, StoreError> {
        let page = self
            .dir_request(prefix)
            .send()
            .await
            .map_err(|e| self.classify(&e, None))?;
        let mut dir = DirListing::default();
        self.add_page(&page, &mut dir);
        Ok(Level {
            dir,
            truncated: page.is_truncated() == Some(true),
        })
    }

    /// The whole delimiter listing of `prefix`: one directory.
    pub(super) async fn list_dir_pages(&self, prefix: &str) -> Result<DirListing, StoreError> {
        let mut pages = self.dir_request(prefix).into_paginator().send();
        let mut dir = DirListing::default();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.classify(&e, None))?;
            self.add_page(&page, &mut dir);
        }
        Ok(dir)
    }

    /// The delimiter listing (`/`) of `prefix`, its keys URL-encoded.
    fn dir_request(&self, prefix: &str) -> ListObjectsV2FluentBuilder {
        self.client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .delimiter("/")
            .encoding_type(EncodingType::Url)
    }

    /// Adds the objects and sub-prefixes of one page of a delimiter listing to `dir`.
    fn add_page(&self, page: &ListObjectsV2Output, dir: &mut DirListing) {
        let encoded = page.encoding_type() == Some(&EncodingType::Url);
        dir.objects.extend(
            page.contents()
                .iter()
                .filter_map(|obj| self.object_meta(obj, encoded)),
        );
        dir.prefixes.extend(
            page.common_prefixes()
                .iter()
                .filter_map(|p| self.decoded(p.prefix()?, encoded)),
        );
    }

    /// Every object under `prefix`, in key order, by one paginated listing.
    pub(super) async fn list_whole(&self, prefix: &str) -> Result<Listing, StoreError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            // Keys may hold characters XML 1.0 cannot carry (control characters): ask for them
            // URL-encoded, as the AWS SDKs do for their high-level listings.
            .encoding_type(EncodingType::Url)
            .into_paginator()
            .send();
        let mut out = Listing::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.classify(&e, None))?;
            // Servers that ignore the request send keys as they are, and say nothing.
            let encoded = page.encoding_type() == Some(&EncodingType::Url);
            for meta in page
                .contents()
                .iter()
                .filter_map(|obj| self.object_meta(obj, encoded))
            {
                out.push(&meta);
            }
        }
        Ok(out)
    }

    /// A listed object, its key decoded; `None` (with a warning) for a key that is not UTF-8.
    fn object_meta(&self, obj: &aws_sdk_s3::types::Object, encoded: bool) -> Option<ObjectMeta> {
        Some(ObjectMeta {
            key: self.decoded(obj.key()?, encoded)?,
            size: obj.size().unwrap_or(0).max(0) as u64,
            etag: super::unquote(obj.e_tag().unwrap_or_default()).into(),
            last_modified: super::to_system_time(obj.last_modified()),
        })
    }

    /// A key or prefix of a listing, decoded when the server encoded it; `None` (with a
    /// warning) when it is not UTF-8: such keys cannot be files.
    fn decoded(&self, key: &str, encoded: bool) -> Option<String> {
        if !encoded {
            return Some(key.to_owned());
        }
        let decoded = url_decode(key);
        if decoded.is_none() {
            tracing::warn!(bucket = %self.bucket, key, "skipping a key that is not UTF-8 once decoded");
        }
        decoded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_of_few_objects_asks_for_fewer_lists_at_once() {
        assert_eq!(
            lists_at_once(0),
            LISTS_AT_ONCE,
            "not known: as fast as it goes"
        );
        assert_eq!(lists_at_once(10_000), FEWEST_LISTS_AT_ONCE);
        assert_eq!(lists_at_once(100_000), 4);
        assert_eq!(lists_at_once(250_000), 10);
        assert_eq!(lists_at_once(1_000_000), LISTS_AT_ONCE);
    }
}
