#!/usr/bin/env bash
# Build the Debian package (cargo-deb) and check it as an admin would get
# it: lintian, then unpacked into a throwaway root (dpkg-deb -x), its
# binary's --version, `check-config` of its example configs (with a fresh
# key) and `systemd-analyze verify` of its units, all from that root.
# Called by scripts/test.sh; prints the package's path last.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
export CARGO_TERM_COLOR=never
cargo build --release -p resilience
bin="$target/release/resilience"

# Man pages and completions, made by the binary from its own CLI.
assets="$target/release/deb-assets"
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
"$bin" manpages --out "$assets/man"
gzip -9n "$assets"/man/*.1
"$bin" completions bash >"$assets/completions/resilience.bash"
"$bin" completions zsh >"$assets/completions/_resilience"
"$bin" completions fish >"$assets/completions/resilience.fish"

# cargo-deb, pinned, installed once into cargo's bin folder.
if ! cargo deb --version >/dev/null 2>&1; then
  cargo install cargo-deb --locked --version 3.8.0
fi
rm -rf "$target/debian"
cargo deb -p resilience --no-build --output "$target/debian/"
deb=$(ls "$target"/debian/resilience_*.deb)

# lintian: errors and warnings fail. The package carries its overrides
# (packaging/debian/lintian-overrides), each with the reason above it.
lintian --fail-on error,warning "$deb"

# Unpacked, never installed: nothing of this machine changes.
root=$(mktemp -d)
work=$(mktemp -d)
trap 'rm -rf "$root" "$work"' EXIT
dpkg-deb -x "$deb" "$root"
"$root/usr/bin/resilience" --version
cp "$root"/usr/share/doc/resilience/examples/*.toml "$work/"
"$root/usr/bin/resilience" keygen --out "$work/cluster.key"
for f in main standby edge follow; do
  "$root/usr/bin/resilience" check-config "$work/$f.toml"
done
test -s "$root/usr/share/man/man1/resilience-node.1.gz"
test -s "$root/usr/share/bash-completion/completions/resilience"
units=$(find "$root" -name 'resilience-*.service')
test "$(echo "$units" | wc -l)" = 3
for u in $units; do
  # The unit as installed, its binary the unpacked one.
  sed "s#/usr/bin/resilience#$root/usr/bin/resilience#g" "$u" >"$work/$(basename "$u")"
  systemd-analyze verify "$work/$(basename "$u")"
done
echo "$deb"
