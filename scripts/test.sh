#!/usr/bin/env bash
# The test command of README.md: installs what the tests need, then runs the
# formatting check, clippy and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# Install a Debian package when the binary it provides is missing.
apt_updated=0
need_pkg() { # need_pkg PACKAGE BINARY
  if ! command -v "$2" >/dev/null 2>&1; then
    if [ "$apt_updated" = 0 ]; then
      apt-get update -q
      apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1"
  fi
}

# Packages the end-to-end tests use (each test fails, never skips, without them).
need_pkg iproute2 ip
# chattr makes a target file that even root cannot replace (pbx_settings tests).
need_pkg e2fsprogs chattr
# The SIP edge: sipp plays the phones, Kamailio the two PBXs' SIP side.
need_pkg sip-tester sipp
need_pkg kamailio kamailio
# baresip: a real phone using the edge as its outbound proxy.
need_pkg baresip baresip
# HTTPS through the edge's web proxy.
need_pkg curl curl
# SIP over TLS: stunnel (client mode) puts TLS in front of sipp, which has none.
need_pkg stunnel4 stunnel4
# PostgreSQL replication runs against two real servers started by the tests.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ! command -v pg_restore >/dev/null; then
  need_pkg postgresql /nonexistent/postgres
fi

# promtool checks and unit-tests the alert rules (packaging/prometheus). It
# comes with Debian's prometheus package, whose install would also start a
# Prometheus server: unpack the package instead and use its promtool.
PROMTOOL=$(command -v promtool || true)
if [ -z "$PROMTOOL" ]; then
  PROMTOOL=target/tools/prometheus/usr/bin/promtool
  if [ ! -x "$PROMTOOL" ]; then
    if [ "$apt_updated" = 0 ]; then
      apt-get update -q
      apt_updated=1
    fi
    mkdir -p target/tools
    (cd target/tools && rm -f prometheus_*.deb && apt-get download prometheus \
      && dpkg-deb -x prometheus_*.deb prometheus)
  fi
fi
# The Debian package: lintian checks it, systemd-analyze verifies its units.
need_pkg lintian lintian
need_pkg systemd systemd-analyze

# The dashboard's browser test: Debian's Chromium driven by playwright-core.
need_pkg chromium chromium
need_pkg chromium-driver chromedriver
need_pkg nodejs node
need_pkg npm npm
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && npm ci --no-audit --no-fund)
fi

export CARGO_TERM_COLOR=never
# The alert rules: valid, and each fires on its case and not beside it.
"$PROMTOOL" check rules packaging/prometheus/resilience.rules.yml
"$PROMTOOL" test rules packaging/prometheus/resilience.rules.test.yml
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The fuzz targets live outside the workspace (cargo-fuzz's layout): build
# them too, so a change of the core's API cannot leave them broken unseen.
cargo check --manifest-path fuzz/Cargo.toml
# --nocapture shows the simulator's figures (seed count, simulated hours,
# false-failover table); the end-to-end tests run one at a time.
cargo test --workspace --no-fail-fast -- --nocapture --test-threads=2
# The Debian package, built, checked with lintian and run from a throwaway
# root (scripts/package.sh says how).
./scripts/package.sh
