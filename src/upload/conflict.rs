//! The conflict policy, pure: where a local version goes when the object changed (or appeared)
//! remotely since the version the local file was made from. Both are kept: the remote one under
//! the original name, the local one beside it under a name that says when, with its extension
//! kept so that a notebook stays a notebook.

use std::time::SystemTime;

/// `dir/stem.conflict-<UTC yyyymmddTHHMMSSZ>.ext` for `dir/stem.ext`, the first of `-2`, `-3`, …
/// after the time for which `taken` says no. A name without an extension (or a dot file such as
/// `.bashrc`) gets the suffix at its end.
pub fn conflict_path(path: &str, at: SystemTime, taken: impl Fn(&str) -> bool) -> String {
    let (dir, name) = match path.rsplit_once('/') {
        Some((dir, name)) => (Some(dir), name),
        None => (None, path),
    };
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let stamp = utc_stamp(at);
    let mut n = 1;
    loop {
        let suffix = match n {
            1 => String::new(),
            n => format!("-{n}"),
        };
        let name = format!("{stem}.conflict-{stamp}{suffix}{ext}");
        let candidate = match dir {
            Some(dir) => format!("{dir}/{name}"),
            None => name,
        };
        if !taken(&candidate) {
            return candidate;
        }
        n += 1;
    }
}

/// `yyyymmddTHHMMSSZ` in UTC.
fn utc_stamp(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn the_extension_is_kept_and_the_time_is_utc() {
        // 2026-12-06 12:34:56 UTC.
        let t = at(1_796_560_496);
        let free = |_: &str| false;
        assert_eq!(
            conflict_path("study/notebook.ipynb", t, free),
            "study/notebook.conflict-20261206T123456Z.ipynb"
        );
        assert_eq!(
            conflict_path("a.tar.gz", t, free),
            "a.tar.conflict-20261206T123456Z.gz"
        );
        assert_eq!(
            conflict_path("d/README", t, free),
            "d/README.conflict-20261206T123456Z"
        );
        assert_eq!(
            conflict_path(".bashrc", t, free),
            ".bashrc.conflict-20261206T123456Z"
        );
        assert_eq!(
            conflict_path("x", at(951_782_400), free),
            "x.conflict-20000229T000000Z"
        );
    }

    #[test]
    fn a_taken_name_gets_a_number() {
        let t = at(0);
        let taken = |p: &str| p == "r.conflict-19700101T000000Z.csv";
        assert_eq!(
            conflict_path("r.csv", t, taken),
            "r.conflict-19700101T000000Z-2.csv"
        );
    }
}
