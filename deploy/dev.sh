#!/usr/bin/env bash
# Developer entry points; the README's two commands are `deploy/dev.sh demo`
# and `deploy/dev.sh test`, and CI (.ci/run) runs exactly the latter.
#
#   deploy/dev.sh setup   install what a fresh Debian machine lacks (cmake for Pingora's build)
#   deploy/dev.sh demo    setup, build, then run the gateway on config/gateway.toml with demo backends
#   deploy/dev.sh test    setup, then fmt check, clippy, build and the whole test suite
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# What building and running need: cmake for Pingora's zlib-ng, a C compiler.
need_build() {
  command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
  command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
  command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
}
# What the test suite adds: promtool (alert rules, metrics lint) and a headless browser (the diff page).
need_test() {
  command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
}
install_missing() {
  if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing: ${need_apt[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    # Debian's prometheus package starts a server on systemd hosts; only promtool is wanted.
    if printf '%s\n' "${need_apt[@]}" | grep -qx prometheus && command -v systemctl >/dev/null 2>&1; then
      $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
  fi
  command -v cargo >/dev/null 2>&1 || { echo "cargo is missing: install Rust (rustup) first" >&2; exit 1; }
}

case "${1:-}" in
  setup)
    need_build
    need_test
    install_missing
    ;;
  demo)
    need_build
    install_missing
    cargo build --release -p gateway
    exec ./target/release/gateway demo -c config/gateway.toml
    ;;
  test)
    need_build
    need_test
    install_missing
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    # The integration tests drive the built binary (target/debug/gateway).
    cargo build -p gateway
    cargo test --workspace -- --test-threads 2
    # Every criterion micro-benchmark runs once (criterion's test mode), so they cannot rot.
    cargo test -p gateway --benches
    ;;
  *)
    echo "usage: deploy/dev.sh setup|demo|test" >&2
    exit 2
    ;;
esac
