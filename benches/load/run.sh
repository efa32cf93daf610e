#!/usr/bin/env bash
# Load benchmark: the gateway side by side with nginx and HAProxy (and a bare
# Pingora proxy, the gateway's own ceiling) on the same route, the same
# backends and the same wrk load. See benches/README.md.
#
#   benches/load/run.sh --variant a --duration 10 --rounds 3
#   benches/load/run.sh --variant c --rate 5000    # open loop: fixed rate, no coordinated omission
#
# Everything it writes goes under one temp dir; everything it starts is
# stopped on exit.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: benches/load/run.sh [options]

  --variant V        a  plain routing (default)
                     b  + 100,000-entry blacklist and per-IP rate limits (set never to trigger);
                        proxy gateway-cluster runs it as a fleet member: [cluster] on a local
                        redis-server and the limit with scope = "cluster"
                     (a) proxy gateway-cached: the same route with [routes.cache], every answer a hit
                     c  gateway only: shadow 100% on vs off (needs [routes.shadow])
                     d  memory per idle keep-alive client connection
                     e  plain routing with a hot reload every 100 ms
  --duration S       seconds of measured load per proxy per round (default 10; d measures no load)
  --rounds N         rounds; each round runs every proxy once, A B C A B C (default 3)
  --warmup S         seconds of unmeasured load before each measurement (default 2)
  --connections N    wrk (or openloop) connections (default 64)
  --wrk-threads N    wrk threads (default: the number of load CPUs)
  --rate R           open loop: R requests/s in total, from benches/openloop (built with the
                     others; one thread) instead of wrk; latency counts from each request's
                     due time, so it is free of coordinated omission. Pick R below every
                     proxy's saturation. Default: none, closed-loop wrk. Variant d ignores it
  --proxies LIST     comma-separated subset of gateway,nginx,haproxy,bare-pingora,gateway-base,
                     gateway-cluster (variant b), gateway-cached (variant a), gateway-pingora
                     (the same binary and config with server.lean_http1 = false: every request
                     through pingora-proxy, to compare the two request paths in one run),
                     bare-sessions (bare-pingora --sessions: Pingora's HTTP/1 sessions in a plain
                     loop, no logic; the ceiling of the gateway's lean path)
  --base-bin PATH    a second gateway binary (e.g. the previous commit's release build), run as
                     proxy 'gateway-base' with the same config, to compare two builds in one run
  --idle-conns N     variant d: idle connections per proxy (default 10000)
  --reload-ms MS     variant e: reload interval (default 100)
  --blacklist N      variant b: blacklist entries (default 100000)
  --proxy-cpus LIST  CPUs of the proxy under test (default: 1)
  --load-cpus LIST   CPUs of wrk, the backends and the helpers (default: all others)
  --base-port P      ports P+1.. are used (default 18000)
  --no-build         do not run cargo build --release
  --no-install       do not apt-get install nginx/haproxy/wrk when missing
  --keep-tmp         keep the temp dir (configs, logs, raw wrk output)
  --allow-mismatch   go on when a proxy fails the equivalence probe (canary share,
                     whitelist, anonymous, 404, and in variant b the blacklist)
EOF
}

VARIANT=a DURATION=10 ROUNDS=3 WARMUP=2 CONNS=64 WRK_THREADS="" PROXIES="" IDLE_CONNS=10000 RELOAD_MS=100 RATE=""
BLACKLIST_N=100000 PROXY_CPUS="" LOAD_CPUS="" BASE_PORT=18000 BUILD=1 INSTALL=1 KEEP_TMP=0 ALLOW_MISMATCH=0
BASE_BIN=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --variant) VARIANT="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --connections) CONNS="$2"; shift 2 ;;
        --wrk-threads) WRK_THREADS="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --proxies) PROXIES="$2"; shift 2 ;;
        --idle-conns) IDLE_CONNS="$2"; shift 2 ;;
        --reload-ms) RELOAD_MS="$2"; shift 2 ;;
        --blacklist) BLACKLIST_N="$2"; shift 2 ;;
        --proxy-cpus) PROXY_CPUS="$2"; shift 2 ;;
        --load-cpus) LOAD_CPUS="$2"; shift 2 ;;
        --base-port) BASE_PORT="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --no-install) INSTALL=0; shift ;;
        --keep-tmp) KEEP_TMP=1; shift ;;
        --allow-mismatch) ALLOW_MISMATCH=1; shift ;;
        --base-bin) BASE_BIN="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ "$VARIANT" =~ ^[abcde]$ ]] || { echo "--variant must be one of a b c d e" >&2; exit 2; }
for n in DURATION ROUNDS WARMUP CONNS IDLE_CONNS RELOAD_MS BLACKLIST_N BASE_PORT; do
    [[ "${!n}" =~ ^[0-9]+$ ]] || { echo "$n must be a whole number" >&2; exit 2; }
done
if [[ -n "$RATE" ]]; then
    [[ "$RATE" =~ ^[0-9]+([.][0-9]+)?$ && "$RATE" =~ [1-9] ]] || { echo "--rate must be a positive number" >&2; exit 2; }
    if [[ "$VARIANT" == d ]]; then
        echo "variant d measures idle connections, not load: --rate ignored" >&2
        RATE=""
    fi
fi
if [[ -n "$RATE" ]]; then
    LOADGEN="openloop" LOAD_DESC="open loop at $RATE req/s"
else
    LOADGEN="wrk" LOAD_DESC="closed-loop wrk"
fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TPL="$HERE/templates"
PYTHON="$(python3 -c 'import sys; print(sys.executable)')"
PYB=("$PYTHON" "$HERE/bench.py")
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
# Ticks so far, all CPUs: the hypervisor's steal, then every kind of time.
# A round during which the host took the CPUs away measures the host, not
# the proxy: its share of steal goes into the results, and the report
# leaves such rounds out (bench.py, STEAL_LIMIT).
cpu_ticks() { awk '/^cpu /{t = 0; for (i = 2; i <= NF; i++) t += $i; print $9, t}' /proc/stat; }

# --- ports --------------------------------------------------------------------
STABLE_PORT=$((BASE_PORT + 1)) CANARY_PORT=$((BASE_PORT + 2)) SHADOW_PORT=$((BASE_PORT + 3))
STATUS_PORT=$((BASE_PORT + 4))
declare -A PORT=([gateway]=$((BASE_PORT + 10)) [gateway-shadow]=$((BASE_PORT + 20)) [nginx]=$((BASE_PORT + 30))
    [haproxy]=$((BASE_PORT + 40)) [bare-pingora]=$((BASE_PORT + 50)) [bare-sessions]=$((BASE_PORT + 55)) [gateway-base]=$((BASE_PORT + 60))
    [gateway-cluster]=$((BASE_PORT + 70)) [gateway-cached]=$((BASE_PORT + 80)) [gateway-pingora]=$((BASE_PORT + 90)))
declare -A ADMIN_PORT=([gateway]=$((BASE_PORT + 11)) [gateway-shadow]=$((BASE_PORT + 21)) [gateway-base]=$((BASE_PORT + 61))
    [gateway-cluster]=$((BASE_PORT + 71)) [gateway-cached]=$((BASE_PORT + 81)) [gateway-pingora]=$((BASE_PORT + 91)))
REDIS_PORT=$((BASE_PORT + 5))

# --- variant ------------------------------------------------------------------
SALT="cart-2026-11" CANARY_PERCENT=10 SEED=2026
case "$VARIANT" in
    a) TITLE="variant a: plain routing"; DEFAULT_PROXIES="gateway,nginx,haproxy,bare-pingora" ;;
    b) TITLE="variant b: routing + ${BLACKLIST_N}-entry blacklist + per-IP rate limits (never triggered)"
       DEFAULT_PROXIES="gateway,nginx,haproxy,bare-pingora" ;;
    c) TITLE="variant c: gateway, shadow 100% off (gateway) vs on (gateway-shadow)"
       DEFAULT_PROXIES="gateway,gateway-shadow" ;;
    d) TITLE="variant d: memory per idle keep-alive connection (${IDLE_CONNS} connections, one request each)"
       DEFAULT_PROXIES="gateway,nginx,haproxy,bare-pingora" ;;
    e) TITLE="variant e: plain routing, hot reload every ${RELOAD_MS} ms during the measurement"
       DEFAULT_PROXIES="gateway,nginx,haproxy" ;;
esac
IFS=',' read -r -a LIST <<<"${PROXIES:-$DEFAULT_PROXIES}"
for p in "${LIST[@]}"; do
    [[ -n "${PORT[$p]:-}" ]] || die "unknown proxy '$p' (gateway, gateway-shadow, nginx, haproxy, bare-pingora, bare-sessions, gateway-base, gateway-cluster, gateway-cached, gateway-pingora)"
done
CLUSTER=0
if [[ " ${LIST[*]} " == *" gateway-cluster "* ]]; then
    [[ "$VARIANT" == b ]] || die "proxy gateway-cluster compares cluster rate limits: use it with --variant b"
    CLUSTER=1
fi
if [[ " ${LIST[*]} " == *" gateway-base "* ]]; then
    [[ -x "$BASE_BIN" ]] || die "proxy gateway-base needs --base-bin PATH (an executable gateway binary)"
fi

# --- CPUs ---------------------------------------------------------------------
NCPU=$(nproc)
expand_cpus() { # "0,2-3" -> "0 2 3"
    local part n out=()
    IFS=',' read -r -a parts <<<"$1"
    for part in "${parts[@]}"; do
        if [[ "$part" == *-* ]]; then
            for ((n = ${part%-*}; n <= ${part#*-}; n++)); do out+=("$n"); done
        else
            out+=("$part")
        fi
    done
    echo "${out[@]}"
}
if [[ -z "$PROXY_CPUS" ]]; then
    if ((NCPU >= 2)); then PROXY_CPUS=1; else PROXY_CPUS=0; fi
fi
if [[ -z "$LOAD_CPUS" ]]; then
    others=()
    for c in $(seq 0 $((NCPU - 1))); do
        [[ " $(expand_cpus "$PROXY_CPUS") " == *" $c "* ]] || others+=("$c")
    done
    LOAD_CPUS=$(IFS=,; echo "${others[*]:-0}")
fi
N_LOAD=$(wc -w <<<"$(expand_cpus "$LOAD_CPUS")")
WRK_THREADS=${WRK_THREADS:-$N_LOAD}
((NCPU >= 2)) || log "warning: one CPU only: the proxy, wrk and the backends share it"

# --- tools --------------------------------------------------------------------
need=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || need+=(haproxy)
[[ -n "$RATE" ]] || command -v wrk >/dev/null || need+=(wrk)
((CLUSTER)) && { command -v redis-server >/dev/null || need+=(redis-server); }
if ((${#need[@]})); then
    ((INSTALL)) || die "missing: ${need[*]} (drop --no-install, or apt-get install ${need[*]})"
    log "installing ${need[*]} from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -qq >&2
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need[@]}" >&2
fi
export PATH="$PATH:/usr/sbin"
command -v python3 >/dev/null || die "python3 is needed"
command -v taskset >/dev/null || die "taskset (util-linux) is needed"

if ((BUILD)); then
    log "building release binaries (cargo build --release)"
    (cd "$ROOT" && cargo build --release -p gateway >&2)
    [[ " ${LIST[*]} " == *" bare-"* ]] && (cd "$ROOT" && cargo build --release -p bare-pingora >&2)
    [[ -n "$RATE" ]] && (cd "$ROOT" && cargo build --release -p openloop >&2)
fi
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
GATEWAY_BIN="$TARGET_DIR/release/gateway"
BARE_BIN="$TARGET_DIR/release/bare-pingora"
OPENLOOP_BIN="$TARGET_DIR/release/openloop"
[[ -x "$GATEWAY_BIN" ]] || die "$GATEWAY_BIN is missing: cargo build --release -p gateway"
if [[ -n "$RATE" && ! -x "$OPENLOOP_BIN" ]]; then
    die "$OPENLOOP_BIN is missing: cargo build --release -p openloop"
fi
if [[ " ${LIST[*]} " == *" bare-"* && ! -x "$BARE_BIN" ]]; then
    die "$BARE_BIN is missing: cargo build --release -p bare-pingora"
fi

# File descriptors: the idle-connection client and the proxies inherit this.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [[ "$VARIANT" == d ]] && ((NOFILE < IDLE_CONNS + 256)); then
    die "ulimit -n is $NOFILE (hard limit): too low for --idle-conns $IDLE_CONNS"
fi

# --- temp dir and cleanup -----------------------------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/gateway-bench.XXXXXX")"
PGIDS=()     # process groups we started (each started with setsid: pgid == pid)
HELPERS=()   # helper pids (samplers, reloaders)
stop_group() { # pid [signal]: stop a process group we started, wait up to 5 s, then SIGKILL
    local pid=$1 sig=${2:-TERM}
    kill -"$sig" -- "-$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 -- "-$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in "${HELPERS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PGIDS[@]}"; do stop_group "$pid" TERM; done
    if ((KEEP_TMP)) || ((rc != 0)); then log "files kept in $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CPUS cmd...: start a process in its own process group, pinned.
# Sets STARTED_PID.
start() {
    local name=$1 cpus=$2
    shift 2
    mkdir -p "$TMP/$name"
    setsid taskset -c "$cpus" "$@" >"$TMP/$name/stdout.log" 2>"$TMP/$name/stderr.log" </dev/null &
    STARTED_PID=$!
    PGIDS+=("$STARTED_PID")
}
forget() { # drop a pgid from the cleanup list once stopped
    local keep=() p
    for p in "${PGIDS[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done
    PGIDS=("${keep[@]}")
}

all_ports=("$STABLE_PORT" "$CANARY_PORT" "$SHADOW_PORT" "$STATUS_PORT")
((CLUSTER)) && all_ports+=("$REDIS_PORT")
for p in "${LIST[@]}"; do all_ports+=("${PORT[$p]}"); [[ -n "${ADMIN_PORT[$p]:-}" ]] && all_ports+=("${ADMIN_PORT[$p]}"); done
"${PYB[@]}" free "${all_ports[@]}" || die "pick other ports with --base-port"

# --- configs ------------------------------------------------------------------
log "temp dir $TMP"
# 127.0.0.2 is on the blacklist (the load comes from 127.0.0.1): the probe
# checks from it that every proxy enforces the list.
DENIED_FROM=127.0.0.2
"${PYB[@]}" lists --dir "$TMP/lists" --whitelist 100 --blacklist "$BLACKLIST_N" --denied "$DENIED_FROM/32"
WHITELIST_TOML="$(cat "$TMP/lists/whitelist_users.toml")"
FLAGS=()
[[ "$VARIANT" == b ]] && FLAGS+=(--flag blacklist --flag rate_limit)
common=(--set "STABLE_PORT=$STABLE_PORT" --set "CANARY_PORT=$CANARY_PORT" --set "SHADOW_PORT=$SHADOW_PORT"
    --set "SALT=$SALT" --set "CANARY_PERCENT=$CANARY_PERCENT")

mkdir -p "$TMP/backends/tmp"
"${PYB[@]}" render "$TPL/backends.nginx.conf" "$TMP/backends/nginx.conf" "${common[@]}" --set "DIR=$TMP/backends" \
    --set "WORKERS=$N_LOAD" --set "STATUS_PORT=$STATUS_PORT"

MAXCONN=4096
[[ "$VARIANT" == d ]] && MAXCONN=$((IDLE_CONNS + 512))
declare -A CONFIG
for p in "${LIST[@]}"; do
    d="$TMP/$p"
    mkdir -p "$d/tmp"
    case "$p" in
        gateway|gateway-shadow|gateway-base|gateway-cluster|gateway-cached|gateway-pingora)
            # Its own directory: the gateway watches its config file's directory.
            gflags=("${FLAGS[@]}")
            scope=""
            if [[ "$p" == gateway-cluster ]]; then gflags+=(--flag cluster); scope=', scope = "cluster"'; fi
            [[ "$p" == gateway-cached ]] && gflags+=(--flag cache)
            [[ "$p" == gateway-pingora ]] && gflags+=(--flag pingora_path)
            [[ "$VARIANT" == c ]] && gflags+=(--flag shadow_upstream)
            [[ "$p" == gateway-shadow ]] && gflags+=(--flag shadow)
            mkdir -p "$d/conf"
            [[ "$VARIANT" == b ]] && cp "$TMP/lists/blacklist.txt" "$d/conf/blacklist.txt"
            "${PYB[@]}" render "$TPL/gateway.toml" "$d/conf/gateway.toml" "${common[@]}" "${gflags[@]}" \
                --set "PORT=${PORT[$p]}" --set "ADMIN_PORT=${ADMIN_PORT[$p]}" --set "THREADS=1" \
                --set "ACCESS_LOG=off" --set "WHITELIST_USERS=$WHITELIST_TOML" \
                --set "REDIS_PORT=$REDIS_PORT" --set "LIMIT_SCOPE=$scope"
            CONFIG[$p]="$d/conf/gateway.toml"
            bin=$GATEWAY_BIN
            [[ "$p" == gateway-base ]] && bin=$BASE_BIN
            if ! "$bin" check -c "${CONFIG[$p]}" >"$d/check.log" 2>&1; then
                cat "$d/check.log" >&2
                what="this config"
                [[ "$VARIANT" == b ]] && what="[blacklist] files / [routes.rate_limit] per_ip (variant b)"
                [[ "$p" == gateway-shadow ]] && what="[routes.shadow] (variant c)"
                [[ "$p" == gateway-cluster ]] && what="[cluster] (variant b, gateway-cluster)"
                die "the gateway rejects $what: the feature is not (yet) in $GATEWAY_BIN. Config: ${CONFIG[$p]}"
            fi
            ;;
        nginx)
            cp "$TMP/lists/whitelist_users.map" "$d/"
            [[ "$VARIANT" == b ]] && cp "$TMP/lists/blacklist.geo" "$d/"
            "${PYB[@]}" render "$TPL/nginx.conf" "$d/nginx.conf" "${common[@]}" "${FLAGS[@]}" --set "DIR=$d" \
                --set "PORT=${PORT[$p]}" --set "NOFILE=$NOFILE" --set "WORKER_CONNECTIONS=$((NOFILE - 100))"
            CONFIG[$p]="$d/nginx.conf"
            nginx -t -q -p "$d" -c "$d/nginx.conf" 2>"$d/check.log" || { cat "$d/check.log" >&2; die "nginx -t failed"; }
            ;;
        haproxy)
            cp "$TMP/lists/whitelist_users.lst" "$d/"
            [[ "$VARIANT" == b ]] && cp "$TMP/lists/blacklist.txt" "$d/blacklist.lst"
            "${PYB[@]}" render "$TPL/haproxy.cfg" "$d/haproxy.cfg" "${common[@]}" "${FLAGS[@]}" --set "DIR=$d" \
                --set "PORT=${PORT[$p]}" --set "MAXCONN=$MAXCONN" --set "SEED=$SEED" \
                --set "CANARY_BASIS_POINTS=$((CANARY_PERCENT * 100))"
            CONFIG[$p]="$d/haproxy.cfg"
            haproxy -c -q -f "$d/haproxy.cfg" >"$d/check.log" 2>&1 || { cat "$d/check.log" >&2; die "haproxy -c failed"; }
            ;;
        bare-pingora|bare-sessions) CONFIG[$p]="-" ;;
    esac
done

# --- backends -----------------------------------------------------------------
start backends "$LOAD_CPUS" nginx -p "$TMP/backends" -c "$TMP/backends/nginx.conf"
BACKENDS_PID=$STARTED_PID
for port in "$STABLE_PORT" "$CANARY_PORT" "$SHADOW_PORT"; do
    "${PYB[@]}" wait-http --port "$port" --pid "$BACKENDS_PID" --timeout 15 || die "backend :$port did not start"
done

# --- the fleet's store (gateway-cluster) -------------------------------------
if ((CLUSTER)); then
    start redis "$LOAD_CPUS" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no
    for _ in $(seq 100); do
        "${PYB[@]}" free "$REDIS_PORT" 2>/dev/null || break
        sleep 0.1
    done
fi

# --- one proxy ----------------------------------------------------------------
start_proxy() { # name -> PROXY_PID
    local p=$1 d="$TMP/$1"
    case "$p" in
        gateway|gateway-shadow|gateway-cluster|gateway-cached|gateway-pingora) start "$p" "$PROXY_CPUS" "$GATEWAY_BIN" run -c "${CONFIG[$p]}" ;;
        gateway-base) start "$p" "$PROXY_CPUS" "$BASE_BIN" run -c "${CONFIG[$p]}" ;;
        nginx) start "$p" "$PROXY_CPUS" nginx -p "$d" -c "$d/nginx.conf" ;;
        haproxy) rm -f "$d/master.sock"
            start "$p" "$PROXY_CPUS" haproxy -W -S "$d/master.sock" -f "$d/haproxy.cfg" ;;
        bare-pingora) start "$p" "$PROXY_CPUS" "$BARE_BIN" "127.0.0.1:${PORT[$p]}" "127.0.0.1:$STABLE_PORT" 1 ;;
        bare-sessions) start "$p" "$PROXY_CPUS" "$BARE_BIN" --sessions "127.0.0.1:${PORT[$p]}" "127.0.0.1:$STABLE_PORT" 1 ;;
    esac
    PROXY_PID=$STARTED_PID
    if ! "${PYB[@]}" wait-http --port "${PORT[$p]}" --pid "$PROXY_PID" --timeout 30; then
        tail -n 30 "$d/stderr.log" >&2 || true
        die "$p did not come up"
    fi
}
stop_proxy() { # name pid
    local sig=TERM
    # Pingora: SIGINT is the fast shutdown, SIGTERM the graceful one.
    [[ "$1" == gateway* || "$1" == bare-* ]] && sig=INT
    stop_group "$2" "$sig"
    forget "$2"
}
wrk_run() { # name seconds outfile: wrk, or openloop with --rate; both print one BENCH_RESULT line
    if [[ -n "$RATE" ]]; then
        # openloop shares its CPUs with the backends; when they get busy (a
        # 100% shadow doubles their work), a normal-priority generator sends
        # late and measures itself. It sleeps between sends, so a real-time
        # priority costs the backends little and keeps the schedule (root only).
        local prio=()
        ((EUID == 0)) && command -v chrt >/dev/null && prio=(chrt -f 10)
        taskset -c "$LOAD_CPUS" "${prio[@]}" "$OPENLOOP_BIN" --url "http://127.0.0.1:${PORT[$1]}/cart" --rate "$RATE" \
            --duration "$2" --connections "$CONNS" --timeout-ms 2000 --users 1000000 >"$3" 2>&1 || true
        # The generator's own schedule slip: then the figures measure openloop, not the proxy.
        grep '^openloop: WARNING' "$3" >&2 || true
    else
        BENCH_USERS=1000000 taskset -c "$LOAD_CPUS" wrk -t "$WRK_THREADS" -c "$CONNS" -d "${2}s" --timeout 2s \
            -s "$HERE/bench.lua" "http://127.0.0.1:${PORT[$1]}/cart" >"$3" 2>&1 || true
    fi
    grep -q '^BENCH_RESULT' "$3" || { cat "$3" >&2; die "$LOADGEN gave no result for $1"; }
}

RESULTS="$TMP/results.txt"
: >"$RESULTS"
log "$TITLE; proxies: ${LIST[*]}; $LOAD_DESC; ${ROUNDS} round(s) x ${DURATION}s (+${WARMUP}s warm-up); proxy CPUs $PROXY_CPUS, load CPUs $LOAD_CPUS"

for round in $(seq "$ROUNDS"); do
    for p in "${LIST[@]}"; do
        log "round $round/$ROUNDS: $p"
        start_proxy "$p"
        pid=$PROXY_PID
        d="$TMP/$p"
        if ((round == 1)) && [[ "$p" != bare-* ]]; then
            # Same routing everywhere, or the comparison is void.
            probe_deny=()
            [[ "$VARIANT" == b ]] && probe_deny=(--denied-from "$DENIED_FROM")
            if ! "${PYB[@]}" probe --name "$p" --port "${PORT[$p]}" --expect "$CANARY_PERCENT" "${probe_deny[@]}" >&2; then
                ((ALLOW_MISMATCH)) || die "$p does not do the same work as the others (see FAIL above); --allow-mismatch runs anyway"
                log "warning: $p does not do the same work as the others (see FAIL above)"
            fi
        fi
        ((WARMUP > 0)) && wrk_run "$p" "$WARMUP" "$d/warmup-$round.txt"
        if [[ "$VARIANT" == d ]]; then
            taskset -c "$LOAD_CPUS" "${PYB[@]}" idle --pid "$pid" --port "${PORT[$p]}" --count "$IDLE_CONNS" \
                >"$d/idle-$round.txt" || die "idle connections failed for $p"
            echo "proxy=$p round=$round $(grep '^BENCH_IDLE' "$d/idle-$round.txt" | cut -d' ' -f2-)" >>"$RESULTS"
        else
            before=$("${PYB[@]}" stub --port "$STATUS_PORT")
            taskset -c "$LOAD_CPUS" "${PYB[@]}" rss-watch --pid "$pid" >"$d/rss-$round.txt" &
            sampler=$!
            HELPERS+=("$sampler")
            reloader=""
            if [[ "$VARIANT" == e ]]; then
                case "$p" in
                    gateway*) target=${ADMIN_PORT[$p]} kind=gateway ;;
                    nginx) target=$pid kind=nginx ;;
                    haproxy) target="$d/master.sock" kind=haproxy ;;
                    *) target="" kind="" ;;
                esac
                if [[ -n "$kind" ]]; then
                    taskset -c "$LOAD_CPUS" "${PYB[@]}" reload --kind "$kind" --target "$target" \
                        --interval "$(awk "BEGIN{print $RELOAD_MS/1000}")" >"$d/reload-$round.txt" &
                    reloader=$!
                    HELPERS+=("$reloader")
                fi
            fi
            read -r steal0 ticks0 < <(cpu_ticks)
            wrk_run "$p" "$DURATION" "$d/wrk-$round.txt"
            read -r steal1 ticks1 < <(cpu_ticks)
            # Parenthesised: a bare `>` in awk's printf would redirect its output.
            steal=$(awk "BEGIN{ d = $ticks1 - $ticks0; printf \"%.1f\", (d > 0 ? 100 * ($steal1 - $steal0) / d : 0) }")
            reloads=""
            if [[ -n "$reloader" ]]; then
                kill -TERM "$reloader"; wait "$reloader" || true
                reloads=$(cat "$d/reload-$round.txt")
            fi
            kill -TERM "$sampler"; wait "$sampler" || true
            after=$("${PYB[@]}" stub --port "$STATUS_PORT")
            res=$(grep '^BENCH_RESULT' "$d/wrk-$round.txt" | cut -d' ' -f2-)
            reqs=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$res")
            fanout=$(awk "BEGIN{ if ($reqs > 0) printf \"%.3f\", ($after - $before - 1) / $reqs; else print 0 }")
            echo "proxy=$p round=$round $res $(cat "$d/rss-$round.txt") fanout=$fanout steal_pct=$steal $reloads" >>"$RESULTS"
        fi
        stop_proxy "$p" "$pid"
    done
done

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); machine: $(nproc) CPUs, $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)"
    echo "command: benches/load/run.sh --variant $VARIANT --duration $DURATION --rounds $ROUNDS --warmup $WARMUP --connections $CONNS${RATE:+ --rate $RATE}"
    if [[ -n "$RATE" ]]; then
        echo "proxy CPUs: $PROXY_CPUS; openloop (1 thread, $RATE req/s), backends and helpers on CPUs: $LOAD_CPUS"
    else
        echo "proxy CPUs: $PROXY_CPUS; wrk ($WRK_THREADS thread(s)), backends and helpers on CPUs: $LOAD_CPUS"
    fi
} >&2
"${PYB[@]}" report --results "$RESULTS" --variant "$VARIANT" \
    --title "$TITLE — ${RATE:+open loop at $RATE req/s, }${ROUNDS} round(s) x ${DURATION}s, ${CONNS} connections, medians over rounds"
if [[ "$VARIANT" == e ]]; then
    echo "(reloads: gateway POST /api/reload; nginx SIGHUP to the master, what nginx -s reload sends; haproxy 'reload' on the master socket)"
fi
echo "raw results: $RESULTS$( ((KEEP_TMP)) || echo ' (removed; --keep-tmp keeps it)')"
