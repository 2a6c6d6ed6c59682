//! The mounts JSON: `[{"id","bucket","prefix","writeable","kmsKeyId"}]`.
//!
//! Parsing is two-step so every error can name the mount it is about: the document is first read
//! as a list of JSON values, then each value is read as one mount. A validated [`Mount`] always
//! has a safe `id` (one path component) and a normalized prefix (empty, or ending in `/`).

use serde::Deserialize;
use std::collections::HashSet;

/// Name of the hidden directory under the destination that holds the tool's own state. No mount
/// id may take it.
pub const STATE_DIR: &str = ".s3-synchronizer";

/// One validated mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub id: String,
    pub bucket: String,
    /// Empty (whole bucket) or a directory-like prefix ending in `/`.
    pub prefix: String,
    pub writeable: bool,
    pub kms_key_id: Option<String>,
    /// When set, credentials come from the AWS profile named after the mount id (as the original
    /// program did for mounts with a role).
    pub role_arn: Option<String>,
}

impl Mount {
    /// What the mount copies, as `s3://bucket/prefix`.
    pub fn source(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MountsError {
    #[error("mounts JSON is malformed: {0}")]
    Malformed(String),
    #[error("mounts JSON must be a list of mounts, found {0}")]
    NotAList(&'static str),
    #[error("mount #{index}{}: {reason}", id_suffix(.id))]
    Invalid {
        index: usize,
        id: Option<String>,
        reason: String,
    },
    #[error("mount \"{0}\": duplicate id (each mount needs its own id)")]
    DuplicateId(String),
    #[error("no mounts given: pass --default-s3-mounts '<json>' or --mounts-file PATH")]
    Empty,
}

fn id_suffix(id: &Option<String>) -> String {
    id.as_deref()
        .map(|id| format!(" (id \"{id}\")"))
        .unwrap_or_default()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMount {
    id: Option<String>,
    bucket: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    writeable: Option<bool>,
    #[serde(default)]
    kms_key_id: Option<String>,
    #[serde(default)]
    kms_arn: Option<String>,
    #[serde(default)]
    role_arn: Option<String>,
}

/// Parses and validates the mounts JSON document.
pub fn parse_mounts(json: &str) -> Result<Vec<Mount>, MountsError> {
    let doc: serde_json::Value =
        serde_json::from_str(json).map_err(|e| MountsError::Malformed(e.to_string()))?;
    let items = match doc {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(_) => return Err(MountsError::NotAList("an object")),
        serde_json::Value::String(_) => return Err(MountsError::NotAList("a string")),
        serde_json::Value::Number(_) => return Err(MountsError::NotAList("a number")),
        serde_json::Value::Bool(_) => return Err(MountsError::NotAList("a boolean")),
        serde_json::Value::Null => return Err(MountsError::NotAList("null")),
    };
    let mut mounts = Vec::with_capacity(items.len());
    let mut seen = HashSet::new();
    for (i, item) in items.into_iter().enumerate() {
        let index = i + 1;
        let id_hint = item.get("id").and_then(|v| v.as_str()).map(str::to_owned);
        let invalid = |reason: String| MountsError::Invalid {
            index,
            id: id_hint.clone(),
            reason,
        };
        if !item.is_object() {
            return Err(invalid("must be an object".into()));
        }
        let raw: RawMount = serde_json::from_value(item).map_err(|e| invalid(e.to_string()))?;
        let id = raw.id.ok_or_else(|| invalid("missing \"id\"".into()))?;
        validate_id(&id).map_err(|r| invalid(r.into()))?;
        let bucket = raw
            .bucket
            .filter(|b| !b.trim().is_empty())
            .ok_or_else(|| invalid("missing \"bucket\"".into()))?;
        validate_bucket(&bucket).map_err(|r| invalid(r.into()))?;
        if !seen.insert(id.clone()) {
            return Err(MountsError::DuplicateId(id));
        }
        mounts.push(Mount {
            id,
            bucket,
            prefix: normalize_prefix(raw.prefix.as_deref().unwrap_or("")),
            writeable: raw.writeable.unwrap_or(false),
            kms_key_id: raw.kms_key_id.or(raw.kms_arn),
            role_arn: raw.role_arn.filter(|r| !r.is_empty()),
        });
    }
    if mounts.is_empty() {
        return Err(MountsError::Empty);
    }
    Ok(mounts)
}

fn validate_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("\"id\" is empty");
    }
    if id == "." || id == ".." {
        return Err("\"id\" must not be \".\" or \"..\"");
    }
    if id.contains('/') || id.contains('\\') || id.contains('\0') {
        return Err("\"id\" must be a single path component (no '/', '\\' or NUL)");
    }
    if id.len() > 255 {
        return Err("\"id\" is longer than 255 bytes");
    }
    if id == STATE_DIR {
        return Err("\"id\" is reserved for the tool's state directory");
    }
    Ok(())
}

fn validate_bucket(bucket: &str) -> Result<(), &'static str> {
    if bucket.contains('/') {
        return Err("\"bucket\" must be a bucket name, not a path (put the path in \"prefix\")");
    }
    Ok(())
}

/// `a/b` and `/a/b/` both become `a/b/`; `/` and empty mean the whole bucket.
pub fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_start_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else if trimmed.ends_with('/') {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_original_shape() {
        let m = parse_mounts(
            r#"[{"id":"some-id","bucket":"b","prefix":"some/s3/prefix/path","writeable":false,"kmsKeyId":"arn:k"}]"#,
        )
        .unwrap();
        assert_eq!(
            m,
            vec![Mount {
                id: "some-id".into(),
                bucket: "b".into(),
                prefix: "some/s3/prefix/path/".into(),
                writeable: false,
                kms_key_id: Some("arn:k".into()),
                role_arn: None,
            }]
        );
    }

    #[test]
    fn accepts_kms_arn_and_role_arn() {
        let m = parse_mounts(r#"[{"id":"x","bucket":"b","kmsArn":"k","roleArn":"r"}]"#).unwrap();
        assert_eq!(m[0].kms_key_id.as_deref(), Some("k"));
        assert_eq!(m[0].role_arn.as_deref(), Some("r"));
        assert_eq!(m[0].prefix, "");
    }

    #[test]
    fn prefixes_are_directories() {
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("a/b"), "a/b/");
        assert_eq!(normalize_prefix("/a/b/"), "a/b/");
    }

    #[test]
    fn errors_name_the_mount() {
        let cases = [
            ("{", "mounts JSON is malformed"),
            (r#"{"id":"x"}"#, "must be a list of mounts, found an object"),
            ("[]", "no mounts given"),
            (r#"[{"bucket":"b"}]"#, "mount #1: missing \"id\""),
            (r#"[{"id":"x"}]"#, "mount #1 (id \"x\"): missing \"bucket\""),
            (
                r#"[{"id":"../x","bucket":"b"}]"#,
                "mount #1 (id \"../x\"): \"id\" must be a single path component",
            ),
            (
                r#"[{"id":"..","bucket":"b"}]"#,
                "must not be \".\" or \"..\"",
            ),
            (r#"[{"id":".s3-synchronizer","bucket":"b"}]"#, "reserved"),
            (
                r#"[{"id":"a","bucket":"b"},{"id":"a","bucket":"c"}]"#,
                "mount \"a\": duplicate id",
            ),
            (
                r#"[{"id":"a","bucket":"b","writeable":"yes"}]"#,
                "mount #1 (id \"a\"): invalid type: string \"yes\", expected a boolean",
            ),
            (
                r#"[{"id":7,"bucket":"b"}]"#,
                "mount #1: invalid type: integer `7`, expected a string",
            ),
            (r#"[1]"#, "mount #1: must be an object"),
        ];
        for (json, want) in cases {
            let err = parse_mounts(json).unwrap_err().to_string();
            assert!(err.contains(want), "{json}: got {err:?}, want {want:?}");
            assert!(
                !err.contains('\n'),
                "{json}: error is not one line: {err:?}"
            );
        }
    }

    #[test]
    fn huge_inputs_fail_in_one_line() {
        for json in [
            "[".repeat(100_000),
            format!("[{}]", r#"{"id":"a","bucket":"b"},"#.repeat(50_000)),
        ] {
            let err = parse_mounts(&json).unwrap_err().to_string();
            assert!(!err.contains('\n') && err.len() < 300, "{err}");
        }
    }

    use proptest::prelude::*;
    use serde_json::Value;

    /// JSON values shaped like mounts lists, and not.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z./ ]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            let field = prop_oneof![
                Just("id".to_owned()),
                Just("bucket".to_owned()),
                Just("prefix".to_owned()),
                Just("writeable".to_owned()),
                Just("kmsKeyId".to_owned()),
                Just("roleArn".to_owned()),
                "[a-z]{1,4}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(field, inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any JSON: a list of valid mounts, or one line saying what is wrong; never a panic.
        #[test]
        fn any_json_parses_or_fails_in_one_line(v in json_value()) {
            match parse_mounts(&v.to_string()) {
                Ok(mounts) => prop_assert!(!mounts.is_empty()),
                Err(e) => prop_assert!(!e.to_string().contains('\n'), "{}", e),
            }
        }

        /// Any text, likewise.
        #[test]
        fn any_text_parses_or_fails_in_one_line(text in "\\PC{0,60}") {
            if let Err(e) = parse_mounts(&text) {
                prop_assert!(!e.to_string().contains('\n'), "{}", e);
            }
        }
    }
}
