#!/usr/bin/env bash
# Installs the gateway as a systemd service; deploy/README.md ("systemd") runs
#
#   sudo deploy/systemd/install.sh
#
# after `cargo build --release -p gateway`. It installs:
#
#   /usr/local/bin/gateway                      the binary
#   /etc/gateway/                               the WHOLE config directory: gateway.toml and the
#                                               files it names (fallback pages, blacklist list files);
#                                               an existing /etc/gateway/gateway.toml is kept as it is
#   /var/lib/gateway/                           the state directory (the unit's StateDirectory=)
#   /etc/gateway/state -> ../../var/lib/gateway so that the sample's relative `[state] path` and
#                                               `[shadow] store` ("state/...") land in the writable
#                                               state directory, not in the read-only /etc
#   /etc/systemd/system/gateway.service         the unit
#   user and group `gateway`                    (system user, home /var/lib/gateway, no shell)
#
# Options:
#   --root DIR     install into DIR as if it were / (a staging tree). Users and
#                  systemctl are left alone then. The integration test
#                  deploy_systemd_install runs this README step with --root and
#                  starts what it installed.
#   --binary FILE  the executable to install (default: target/release/gateway)
#   --config DIR   the config directory to install (default: config/)
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
root=/
binary="$repo/target/release/gateway"
config="$repo/config"

usage() {
  echo "usage: $0 [--root DIR] [--binary FILE] [--config DIR]" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || usage; root=$2; shift 2 ;;
    --binary) [ $# -ge 2 ] || usage; binary=$2; shift 2 ;;
    --config) [ $# -ge 2 ] || usage; config=$2; shift 2 ;;
    *) usage ;;
  esac
done

[ -x "$binary" ] || { echo "$binary is missing: run \`cargo build --release -p gateway\` first (or pass --binary)" >&2; exit 1; }
[ -f "$config/gateway.toml" ] || { echo "$config/gateway.toml is missing (pass --config DIR)" >&2; exit 1; }

# "" for the real root, so "$r/etc/gateway" is /etc/gateway.
r=${root%/}
system=false
[ -z "$r" ] && system=true

if $system; then
  [ "$(id -u)" -eq 0 ] || { echo "run as root (sudo $0), or pass --root DIR" >&2; exit 1; }
  if ! id -u gateway >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/gateway --no-create-home \
      --shell /usr/sbin/nologin gateway
    echo "created system user gateway"
  fi
fi

install -D -m 0755 "$binary" "$r/usr/local/bin/gateway"
echo "installed $r/usr/local/bin/gateway"

etc="$r/etc/gateway"
install -d -m 0755 "$etc"
if [ -e "$etc/gateway.toml" ]; then
  echo "kept the existing $etc/gateway.toml and the files beside it (not overwritten)"
else
  # Every file of the config directory, with its sub-directories (pages/),
  # except a developer's run-time state/ left by `gateway demo`.
  (cd "$config" && find . -path ./state -prune -o -type f -print0) |
    while IFS= read -r -d '' file; do
      install -D -m 0644 "$config/$file" "$etc/${file#./}"
    done
  echo "installed $config/ as $etc/"
fi

# The state directory. systemd creates and chowns it too (StateDirectory=);
# creating it here lets `gateway check` resolve the state/ link before the
# first start.
install -d -m 0750 "$r/var/lib/gateway"
if $system; then
  chown gateway:gateway /var/lib/gateway
fi
if [ -L "$etc/state" ]; then
  :
elif [ -e "$etc/state" ]; then
  echo "$etc/state exists and is not a link to /var/lib/gateway: move what it holds to" \
    "/var/lib/gateway and remove it, or set [state] path and [shadow] store to files" \
    "under /var/lib/gateway in $etc/gateway.toml" >&2
  exit 1
else
  # Relative, so the link also resolves inside a --root tree.
  ln -s ../../var/lib/gateway "$etc/state"
  echo "linked $etc/state -> ../../var/lib/gateway"
fi

install -D -m 0644 "$repo/deploy/systemd/gateway.service" "$r/etc/systemd/system/gateway.service"
echo "installed $r/etc/systemd/system/gateway.service"

if $system && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
echo "next: edit $etc/gateway.toml (upstreams, routes, admin token), then: systemctl enable --now gateway"
