//! ETags kept for long, compactly: a mount holds one per object, for as long as it runs.
//!
//! Almost every ETag S3 gives is the MD5 form: 32 hex digits (an object put in one request),
//! or 32 hex digits, `-` and a part count (a multipart upload). Those are kept as their 16
//! bytes and the count, inline; any other (SSE-KMS objects, other servers' forms) as a boxed
//! string. An ETag reads back exactly as it was given, so comparisons with listed ETags and the
//! conditions sent to the store are unchanged.

use std::fmt;

#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Etag {
    /// `hex(md5)`, lowercase.
    Md5([u8; 16]),
    /// `hex(md5)-parts`, lowercase, parts without a leading zero.
    Multipart([u8; 16], u32),
    /// Anything else, as given.
    Other(Box<str>),
}

impl Etag {
    pub fn new(etag: &str) -> Self {
        let (hex, parts) = match etag.split_once('-') {
            Some((hex, parts)) => (hex, Some(parts)),
            None => (etag, None),
        };
        let digest = decode_hex(hex);
        let parts = parts.map(|p| {
            p.parse::<u32>()
                .ok()
                .filter(|n| n.to_string() == p)
                .ok_or(())
        });
        match (digest, parts) {
            (Some(d), None) => Etag::Md5(d),
            (Some(d), Some(Ok(n))) => Etag::Multipart(d, n),
            _ => Etag::Other(etag.into()),
        }
    }

    /// Whether this is the ETag `other` reads as.
    pub fn is(&self, other: &str) -> bool {
        match self {
            Etag::Other(s) => &**s == other,
            _ => self.to_string() == other,
        }
    }
}

impl From<&str> for Etag {
    fn from(etag: &str) -> Self {
        Etag::new(etag)
    }
}

impl From<String> for Etag {
    fn from(etag: String) -> Self {
        Etag::new(&etag)
    }
}

impl PartialEq<String> for Etag {
    fn eq(&self, other: &String) -> bool {
        self.is(other)
    }
}

impl PartialEq<Etag> for String {
    fn eq(&self, other: &Etag) -> bool {
        other.is(self)
    }
}

/// The 16 bytes of 32 lowercase hex digits (uppercase ones would not read back the same).
fn decode_hex(hex: &str) -> Option<[u8; 16]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 32 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 16];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// A digest in lowercase hex, as S3 writes an MD5 in an ETag.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl fmt::Display for Etag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = |f: &mut fmt::Formatter<'_>, d: &[u8; 16]| {
            d.iter().try_for_each(|b| write!(f, "{b:02x}"))
        };
        match self {
            Etag::Md5(d) => hex(f, d),
            Etag::Multipart(d, n) => {
                hex(f, d)?;
                write!(f, "-{n}")
            }
            Etag::Other(s) => f.write_str(s),
        }
    }
}

/// Written as the string it reads as.
impl serde::Serialize for Etag {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Etag {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Etag::new(&s))
    }
}

impl fmt::Debug for Etag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_etag_reads_back_as_given() {
        let cases = [
            "d41d8cd98f00b204e9800998ecf8427e",
            "9b2cf535f27731c974343645a3985328-12",
            "9b2cf535f27731c974343645a3985328-1",
            // Not the MD5 form: kept as they are.
            "D41D8CD98F00B204E9800998ECF8427E",
            "9b2cf535f27731c974343645a3985328-012",
            "9b2cf535f27731c974343645a3985328-",
            "9b2cf535f27731c974343645a3985328-x",
            "d41d8cd98f00b204e9800998ecf8427",
            "",
            "kms:abc/def",
            "é9b2cf535f27731c974343645a39853",
        ];
        for etag in cases {
            let kept = Etag::new(etag);
            assert_eq!(kept.to_string(), etag);
            assert!(kept.is(etag));
            assert!(!kept.is("other"));
        }
        assert!(matches!(Etag::new(cases[0]), Etag::Md5(_)));
        assert!(matches!(Etag::new(cases[1]), Etag::Multipart(_, 12)));
        assert!(matches!(Etag::new(cases[3]), Etag::Other(_)));
    }

    #[test]
    fn an_etag_is_written_as_its_string() {
        for etag in ["d41d8cd98f00b204e9800998ecf8427e", "ab-3", "with \"quote"] {
            let json = serde_json::to_string(&Etag::new(etag)).unwrap();
            assert_eq!(json, serde_json::to_string(etag).unwrap());
            assert_eq!(
                serde_json::from_str::<Etag>(&json).unwrap().to_string(),
                etag
            );
        }
    }

    #[test]
    fn an_etag_takes_no_more_room_than_a_string() {
        assert!(std::mem::size_of::<Etag>() <= std::mem::size_of::<String>());
    }
}
