//! A listing of a mount's prefix as a pass holds it: a row per object of the bucket, with the
//! keys in one string. An [`ObjectMeta`] of its own per object would hold a heap string for its
//! key (a pointer, length and capacity, then the allocation's header and rounding: an 18-byte
//! key takes 56 bytes), made while a page's other strings are parsed and freed around it, so a
//! listing would also leave holes in the heap once it goes (measurements:
//! docs/PERFORMANCE.md, "The listing").

use super::ObjectMeta;
use crate::etag::Etag;
use crate::strings::{Span, Strings};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Every object under a prefix: in key order once [`Listing::sort`] has run (a store's `list`
/// returns it so).
#[derive(Debug, Clone, Default)]
pub struct Listing {
    keys: Strings,
    rows: Vec<Row>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    key: Span,
    size: u64,
    etag: Etag,
    last_modified: Nanos,
}

/// A time as nanoseconds since the Unix epoch (negative before it, clamped to the years
/// 1678-2262): 8 bytes where a `SystemTime` takes 16, for what is kept per object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nanos(i64);

impl From<SystemTime> for Nanos {
    fn from(time: SystemTime) -> Self {
        Self(match time.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
        })
    }
}

impl From<Nanos> for SystemTime {
    fn from(time: Nanos) -> Self {
        let ns = Duration::from_nanos(time.0.unsigned_abs());
        match time.0 >= 0 {
            true => UNIX_EPOCH + ns,
            false => UNIX_EPOCH - ns,
        }
    }
}

/// One object of a [`Listing`], borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectRef<'a> {
    pub key: &'a str,
    pub size: u64,
    pub etag: &'a Etag,
    pub last_modified: SystemTime,
}

impl ObjectRef<'_> {
    pub fn to_meta(self) -> ObjectMeta {
        ObjectMeta {
            key: self.key.to_owned(),
            size: self.size,
            etag: self.etag.clone(),
            last_modified: self.last_modified,
        }
    }
}

impl Listing {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn push(&mut self, meta: &ObjectMeta) {
        self.push_ref(ObjectRef {
            key: &meta.key,
            size: meta.size,
            etag: &meta.etag,
            last_modified: meta.last_modified,
        });
    }

    /// Adds the objects of `part`, a part of a listing joining it as it comes: taken whole
    /// while this listing is empty, so that the first part is not copied.
    pub fn join(&mut self, part: Listing) {
        match self.is_empty() {
            true => *self = part,
            false => self.append(&part),
        }
    }

    /// Adds the objects of `other`.
    pub fn append(&mut self, other: &Listing) {
        self.rows.reserve(other.len());
        for object in other.iter() {
            self.push_ref(object);
        }
    }

    /// Adds `object`, borrowed from another listing.
    pub fn push_ref(&mut self, object: ObjectRef<'_>) {
        self.rows.push(Row {
            key: self.keys.add(object.key),
            size: object.size,
            etag: object.etag.clone(),
            last_modified: object.last_modified.into(),
        });
    }

    /// The key of the object at place `at`.
    pub fn key(&self, at: usize) -> &str {
        self.keys.get(self.rows[at].key)
    }

    /// The object at place `at`.
    pub fn get(&self, at: usize) -> ObjectRef<'_> {
        self.object(&self.rows[at])
    }

    fn object<'a>(&'a self, row: &'a Row) -> ObjectRef<'a> {
        ObjectRef {
            key: self.keys.get(row.key),
            size: row.size,
            etag: &row.etag,
            last_modified: row.last_modified.into(),
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = ObjectRef<'_>> {
        self.rows.iter().map(|row| self.object(row))
    }

    /// Sorts the objects by key, in place (a stable sort's buffer would be half the listing
    /// again; keys are unique, so no order among equals is lost).
    pub fn sort(&mut self) {
        let keys = &self.keys;
        self.rows
            .sort_unstable_by(|a, b| keys.get(a.key).cmp(keys.get(b.key)));
        self.rows.shrink_to_fit();
        self.keys.shrink();
    }

    /// Keeps the first `len` objects.
    pub fn truncate(&mut self, len: usize) {
        self.rows.truncate(len);
    }

    /// Takes the last object out.
    pub fn pop(&mut self) -> Option<ObjectMeta> {
        let row = self.rows.pop()?;
        Some(ObjectMeta {
            key: self.keys.get(row.key).to_owned(),
            size: row.size,
            etag: row.etag,
            last_modified: row.last_modified.into(),
        })
    }

    /// Gives back the room of objects taken out (see [`crate::tables::give_back`]).
    pub fn give_back(&mut self) {
        crate::tables::give_back(&mut self.rows);
    }

    /// Each object as a [`ObjectMeta`] of its own.
    pub fn to_metas(&self) -> Vec<ObjectMeta> {
        self.iter().map(ObjectRef::to_meta).collect()
    }
}

impl PartialEq for Listing {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Listing {}

impl From<Vec<ObjectMeta>> for Listing {
    fn from(metas: Vec<ObjectMeta>) -> Self {
        metas.iter().collect()
    }
}

impl FromIterator<ObjectMeta> for Listing {
    fn from_iter<I: IntoIterator<Item = ObjectMeta>>(iter: I) -> Self {
        let mut out = Self::new();
        for meta in iter {
            out.push(&meta);
        }
        out
    }
}

impl<'a> FromIterator<&'a ObjectMeta> for Listing {
    fn from_iter<I: IntoIterator<Item = &'a ObjectMeta>>(iter: I) -> Self {
        let mut out = Self::new();
        for meta in iter {
            out.push(meta);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size,
            etag: format!("{size:032x}").as_str().into(),
            last_modified: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(size),
        }
    }

    #[test]
    fn a_listing_gives_back_each_object_as_it_was_listed_in_key_order() {
        let metas = vec![meta("b/2", 2), meta("a", 1), meta("c", 3)];
        let mut listing = Listing::from(metas.clone());
        let mut more = Listing::new();
        more.push(&meta("a-0", 4));
        listing.append(&more);
        listing.sort();
        let keys: Vec<_> = listing.iter().map(|o| o.key).collect();
        assert_eq!(keys, ["a", "a-0", "b/2", "c"]);
        assert_eq!(listing.get(2).to_meta(), metas[0]);
        assert_eq!(listing.pop(), Some(metas[2].clone()));
        listing.truncate(1);
        assert_eq!(listing.to_metas(), [metas[1].clone()]);
    }

    #[test]
    fn a_row_per_object_stays_small() {
        // Key, size, ETag and time: a listing of a million objects holds a million rows.
        assert!(std::mem::size_of::<Row>() <= 48);
    }

    #[test]
    fn a_time_is_kept_to_the_nanosecond_before_and_after_the_epoch() {
        let epoch = SystemTime::UNIX_EPOCH;
        for time in [
            epoch,
            epoch + Duration::new(1_796_655_475, 390_000_001),
            epoch - Duration::new(86_400 * 365, 7),
        ] {
            let mut object = meta("k", 1);
            object.last_modified = time;
            let listing = Listing::from(vec![object]);
            assert_eq!(listing.get(0).last_modified, time);
        }
    }
}
