#!/usr/bin/env bash
# THE test command (README and .ci/run call it): format check, clippy with
# warnings denied, every test target of every workspace package (the cairn
# server and benches/cairn-bench; benchmarks included, once each in test
# mode). Exits non-zero on any failure.
#
# The integration tests need etcd 3.4's etcdctl (and real etcd, for the
# differential test). When they are missing and we run as root, install the
# Debian packages; if that fails, carry on: the tests then fail with a message
# saying what is missing, rather than silently skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ! -x /usr/bin/etcd || ! -x /usr/bin/etcdctl ]]; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        echo "==> installing etcd-server and etcd-client"
        if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server etcd-client; }; then
            echo "warning: could not install etcd-server/etcd-client; the tests that need them will fail" >&2
        fi
    else
        echo "warning: /usr/bin/etcd or /usr/bin/etcdctl is missing and cannot be installed here" >&2
    fi
fi

# The dashboard's browser test (tests/dashboard.rs) drives headless Chromium
# through chromedriver: Debian's chromium and chromium-driver, installed the
# same way (the test fails with a message saying so when they are missing).
if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        echo "==> installing chromium and chromium-driver"
        if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; }; then
            echo "warning: could not install chromium/chromium-driver; the dashboard test will fail" >&2
        fi
    else
        echo "warning: /usr/bin/chromium or /usr/bin/chromedriver is missing and cannot be installed here" >&2
    fi
fi

echo "==> cargo fmt --all -- --check"
cargo fmt --all -- --check
echo "==> cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> cargo test --workspace --all-targets --no-fail-fast"
cargo test --workspace --all-targets --no-fail-fast
# `cargo test --workspace` builds every binary of the workspace before it runs
# any test, so the cairn-bench smoke tests find target/debug/cairn (a package's
# tests can only ask cargo for their own package's binaries).
# `cargo test --all-targets` above also builds every criterion benchmark and
# runs each once in criterion's test mode (no timing asserted), so the benches
# keep compiling and working without a release build in CI; docs/performance.md
# has the commands that measure.
