//! Engine tests against the in-memory store.
