//! The mistakes a new user makes, against a real server on loopback (and real FUSE mounts): each
//! gets one clear line naming what is wrong, never what looks like an empty bucket.

mod common;

use common::faults::FaultProxy;
use common::mount::*;
use common::*;
use std::path::Path;
use std::process::Output;

/// A loopback port nothing listens on (bound, then released).
fn closed_port_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

/// The lines of the tool's standard error that report a problem (warnings, errors, the final
/// `error:` line), not its progress.
fn problems(out: &Output) -> Vec<String> {
    stderr(out)
        .lines()
        .filter(|l| l.starts_with("error:") || l.contains(" ERROR ") || l.contains(" WARN "))
        .map(str::to_owned)
        .collect()
}

fn sync_once(cmd: &mut std::process::Command, dest: &Path, mounts: &str) -> Output {
    sync_with(cmd, dest, mounts, &[])
}

fn sync_with(cmd: &mut std::process::Command, dest: &Path, mounts: &str, extra: &[&str]) -> Output {
    run(cmd
        .args(["sync", "--default-s3-mounts", mounts, "--destination"])
        .arg(dest)
        .args(extra))
}

#[test]
fn an_endpoint_that_is_not_an_http_url_is_refused_at_start() {
    let root = tempfile::tempdir().unwrap();
    let (dest, cache) = dirs(root.path());
    let mounts = mounts_json(&[("m", "bkt", "")]);
    let mount = |cmd: &mut std::process::Command, extra: &[&str]| {
        run(cmd
            .args(["mount", "--default-s3-mounts", &mounts, "--destination"])
            .arg(&dest)
            .arg("--cache-dir")
            .arg(&cache)
            .args(extra))
    };
    let flag = ["--endpoint-url", "127.0.0.1:9000"];
    let good = || tool_at("http://127.0.0.1:1");
    for (out, origin) in [
        (
            sync_with(&mut good(), &dest, &mounts, &flag),
            "--endpoint-url",
        ),
        (mount(&mut good(), &flag), "--endpoint-url"),
        (
            sync_once(&mut tool_at("127.0.0.1:9000"), &dest, &mounts),
            "AWS_ENDPOINT_URL",
        ),
        (
            mount(&mut tool_at("ftp://127.0.0.1:9000"), &[]),
            "AWS_ENDPOINT_URL",
        ),
    ] {
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!("error: {origin} ")) && err.contains("127.0.0.1:9000"),
            "{err}"
        );
        assert!(err.contains("is not an http:// or https:// URL"), "{err}");
    }
    let out = sync_with(&mut good(), &dest, &mounts, &flag);
    assert!(
        stderr(&out).contains("did you mean \"http://127.0.0.1:9000\"?"),
        "{}",
        stderr(&out)
    );
    assert!(!is_mount_point(&dest));
    assert_eq!(
        std::fs::read_dir(&dest).unwrap().count(),
        0,
        "wrote into it"
    );
}

#[test]
fn a_mount_that_cannot_reach_its_store_with_nothing_cached_fails_at_start() {
    let endpoint = closed_port_endpoint();
    let root = tempfile::tempdir().unwrap();
    let (dest, cache) = dirs(root.path());
    let mounts = mounts_json(&[("m", "bkt", "data")]);
    for daemon in [false, true] {
        let mut cmd = tool_at(&endpoint);
        cmd.env("RUST_LOG", "info")
            .args(["mount", "--default-s3-mounts", &mounts, "--destination"])
            .arg(&dest)
            .arg("--cache-dir")
            .arg(&cache);
        if daemon {
            cmd.arg("--daemon");
        }
        let out = run(&mut cmd);
        let problems = problems(&out);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert_eq!(problems.len(), 1, "{}", stderr(&out));
        let line = &problems[0];
        assert!(
            line.starts_with("error: mount \"m\" (s3://bkt/data/)"),
            "{line}"
        );
        assert!(line.contains("cannot reach the store"), "{line}");
        assert!(line.contains(&endpoint), "{line}");
        assert!(line.contains("nothing of it is cached"), "{line}");
        assert!(
            !is_mount_point(&dest),
            "mounted although it cannot serve anything"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mount_that_cannot_reach_its_store_serves_its_cache_and_says_how_old() {
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "data/a.txt", b"cached before").await;
    let root = tempfile::tempdir().unwrap();
    let mounts = mounts_json(&[("m", "bkt", "data")]);
    let mut m = Mounted::start(&s3, root.path(), &mounts, &[]);
    wait_for(30, "the first pass", || m.passes() >= 1);
    assert!(m.unmount().success(), "{}", m.log());

    let endpoint = closed_port_endpoint();
    let args = ["--download-interval", "1"];
    let mut m = Mounted::start_with(tool_at(&endpoint), root.path(), &mounts, &args);
    assert_eq!(
        std::fs::read(m.dest.join("m/a.txt")).unwrap(),
        b"cached before"
    );
    // At start, and again at each refresh that cannot reach it.
    let warnings = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains(" WARN ") && l.contains("cannot reach the store"))
            .map(str::to_owned)
            .collect()
    };
    wait_for(60, "the warning to repeat at a refresh", || {
        warnings(&m.log()).len() >= 2
    });
    for line in warnings(&m.log()) {
        assert!(line.contains("mount \"m\" (s3://bkt/data/)"), "{line}");
        assert!(line.contains(&endpoint), "{line}");
        assert!(line.contains("serving the 1 files listed"), "{line}");
        assert!(
            line.contains(" s ago") || line.contains(" min ago"),
            "{line}"
        );
    }
    assert!(m.unmount().success(), "{}", m.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_listing_warns_once_naming_bucket_and_prefix() {
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "Data/a.txt", b"a").await;
    let dest = tempfile::tempdir().unwrap();
    // A typo (the prefix is case-sensitive), and a mount that is fine.
    let mounts = mounts_json(&[("typo", "bkt", "data"), ("ok", "bkt", "Data")]);
    let out = run(s3
        .tool()
        .args(["sync", "--default-s3-mounts", &mounts, "--destination"])
        .arg(dest.path())
        .args(["--recurring-downloads", "--download-interval", "1"])
        .args(["--stop-recurring-downloads-after", "3"]));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.matches("pass complete mount=\"typo\"").count() >= 2,
        "{err}"
    );
    let warned: Vec<&str> = err
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("no objects"))
        .collect();
    assert_eq!(warned.len(), 1, "{err}");
    assert!(warned[0].contains("s3://bkt/data/"), "{}", warned[0]);
    assert!(warned[0].contains("mount=typo"), "{}", warned[0]);
    assert!(warned[0].contains("check the prefix"), "{}", warned[0]);
    assert_eq!(tree(&dest.path().join("ok")), expect(&[("a.txt", b"a")]));
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_keys_missing_permissions_and_missing_buckets_read_differently() {
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "a.txt", b"a").await;
    let denying = FaultProxy::denying(&s3.endpoint).await;
    let dest = tempfile::tempdir().unwrap();
    let mounts = mounts_json(&[("m", "bkt", "")]);
    let mut wrong_key = s3.tool();
    wrong_key.env("AWS_ACCESS_KEY_ID", "not-the-key-123");
    let mut wrong_secret = s3.tool();
    wrong_secret.env("AWS_SECRET_ACCESS_KEY", "not-the-secret-123");
    let cases = [
        (wrong_key, "mounts", "(InvalidAccessKeyId)", "access key"),
        (
            wrong_secret,
            "mounts",
            "(SignatureDoesNotMatch)",
            "secret key",
        ),
        (
            tool_at(&denying.endpoint),
            "mounts",
            "access denied to bucket \"bkt\" (AccessDenied)",
            "access denied",
        ),
        (
            s3.tool(),
            "missing",
            "bucket \"nope\" does not exist",
            "does not exist",
        ),
    ];
    for (mut cmd, which, expected, cause) in cases {
        let mounts = match which {
            "mounts" => mounts.clone(),
            _ => mounts_json(&[("m", "nope", "")]),
        };
        let out = sync_once(&mut cmd, dest.path(), &mounts);
        let problems = problems(&out);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert_eq!(problems.len(), 1, "{}", stderr(&out));
        let line = &problems[0];
        assert!(line.contains("mount \"m\" (s3://"), "{line}");
        assert!(line.contains(expected), "{line}");
        assert_eq!(line.matches(cause).count(), 1, "{line}");
    }
}

/// No credentials anywhere (no keys, no profile, no instance metadata): one line that says so
/// and how to give them, not a store that cannot be reached; nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn missing_credentials_are_named_in_one_line() {
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "a.txt", b"a").await;
    let dest = tempfile::tempdir().unwrap();
    let mut cmd = s3.tool();
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        // No request leaves loopback: instance metadata is not asked.
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let out = sync_once(&mut cmd, dest.path(), &mounts_json(&[("m", "bkt", "")]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let problems = problems(&out);
    assert_eq!(problems.len(), 1, "{}", stderr(&out));
    let line = &problems[0];
    assert!(line.contains("mount \"m\" (s3://bkt/)"), "{line}");
    assert!(line.contains("no AWS credentials found"), "{line}");
    assert!(
        line.contains("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        "{line}"
    );
    assert!(!dest.path().join("m/a.txt").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mount_of_a_missing_bucket_names_the_cause_once() {
    let s3 = S3Server::start(&["bkt"]).await;
    let root = tempfile::tempdir().unwrap();
    let (dest, cache) = dirs(root.path());
    let out = run(s3
        .tool()
        .args([
            "mount",
            "--default-s3-mounts",
            &mounts_json(&[("m", "nope", "")]),
        ])
        .arg("--destination")
        .arg(&dest)
        .arg("--cache-dir")
        .arg(&cache));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        problems(&out),
        ["error: mount \"m\" (s3://nope/): bucket \"nope\" does not exist"],
        "{err}"
    );
}

#[test]
fn mount_help_shows_the_flags_of_a_mount() {
    let help = |command: &str| {
        let out = run(tool_at("http://127.0.0.1:1").args([command, "--help"]));
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let mount = help("mount");
    for shown in [
        "--destination <MOUNTPOINT>",
        "Seconds between listings",
        "--cache-dir",
        "--open-files-timeout",
        "--endpoint-url",
    ] {
        assert!(mount.contains(shown), "{shown}:\n{mount}");
    }
    for hidden in ["--recurring-downloads", "copied into", "[default: ./]"] {
        assert!(!mount.contains(hidden), "{hidden}:\n{mount}");
    }
    let sync = help("sync");
    for shown in ["--recurring-downloads", "copied into", "[default: ./]"] {
        assert!(sync.contains(shown), "{shown}:\n{sync}");
    }
    assert!(!sync.contains("--cache-dir"), "{sync}");

    // A mount point is never the current directory by default.
    let out = run(tool_at("http://127.0.0.1:1").args([
        "mount",
        "--default-s3-mounts",
        &mounts_json(&[("m", "bkt", "")]),
    ]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--destination <MOUNTPOINT>"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pass_summary_times_the_listing_and_the_download_apart() {
    let s3 = S3Server::start(&["bkt"]).await;
    s3.put("bkt", "big.bin", &bytes(4 << 20, 1)).await;
    let dest = tempfile::tempdir().unwrap();
    let out = sync_once(
        &mut s3.tool(),
        dest.path(),
        &mounts_json(&[("m", "bkt", "")]),
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("pass complete"))
        .unwrap_or_else(|| panic!("no summary:\n{err}"));
    let field = |name: &str| -> f64 {
        let value = line
            .split(' ')
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {line}"));
        value.parse().unwrap_or_else(|_| panic!("{name}={value}"))
    };
    let (listing, download, total) = (
        field("listing_seconds"),
        field("download_seconds"),
        field("seconds"),
    );
    assert!(
        (listing + download - total).abs() <= 0.011,
        "{listing} + {download} != {total}: {line}"
    );
    assert!(download > 0.0, "{line}");
}
