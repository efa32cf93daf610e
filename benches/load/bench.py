#!/usr/bin/env python3
"""Helpers of the load benchmark (benches/load/run.sh). Standard library only.

Subcommands:
  render     fill a template: @NAME@ placeholders, `#@if FLAG` ... `#@endif` blocks
  lists      generate the whitelist and blacklist files in each proxy's format
  free       exit 1 if any of the given loopback ports is already taken
  wait-http  wait until a proxy answers GET /cart with 200
  probe      check the routing is equivalent: canary share, whitelist, anonymous, 404
  stub       print the request count of the backends' nginx (stub_status)
  rss        print the RSS (KiB) summed over a process tree
  rss-watch  sample a process tree until SIGTERM; print peak PSS and peak HWM
  idle       open N idle keep-alive connections; print memory per connection
  reload     reload a proxy every INTERVAL until SIGTERM; print the counts
  report     print the result table of a run
"""

import argparse
import asyncio
import http.client
import json
import os
import random
import resource
import signal
import socket
import statistics
import sys
import time

# === templates ===


def cmd_render(a):
    values = dict(kv.split("=", 1) for kv in a.set or [])
    flags = set(a.flag or [])
    out, stack = [], []
    with open(a.template) as f:
        for lineno, line in enumerate(f, 1):
            s = line.strip()
            if s.startswith("#@if "):
                stack.append(s[5:].strip() in flags)
                continue
            if s == "#@endif":
                if not stack:
                    sys.exit(f"{a.template}:{lineno}: #@endif without #@if")
                stack.pop()
                continue
            if all(stack):
                out.append(line)
    if stack:
        sys.exit(f"{a.template}: unclosed #@if")
    text = "".join(out)
    for k, v in values.items():
        text = text.replace(f"@{k}@", v)
    if "@" in text:
        import re

        left = sorted(set(re.findall(r"@[A-Z][A-Z0-9_]*@", text)))
        if left:
            sys.exit(f"{a.template}: no value for {', '.join(left)}")
    with open(a.out, "w") as f:
        f.write(text)


def cmd_lists(a):
    """Whitelisted users 1001.. and a blacklist of distinct /24 blocks (some
    whole, some a single /32), none in 127.0.0.0/8, so no benchmark request is
    ever denied but every lookup walks a full-size table."""
    os.makedirs(a.dir, exist_ok=True)
    users = [str(1001 + i) for i in range(a.whitelist)]
    with open(os.path.join(a.dir, "whitelist_users.toml"), "w") as f:
        f.write(", ".join(f'"{u}"' for u in users))
    with open(os.path.join(a.dir, "whitelist_users.map"), "w") as f:
        f.writelines(f"{u} canary;\n" for u in users)
    with open(os.path.join(a.dir, "whitelist_users.lst"), "w") as f:
        f.writelines(f"{u}\n" for u in users)
    rng = random.Random(20261122)
    blocks = set()
    while len(blocks) < a.blacklist:
        first = rng.randint(11, 126)  # public-looking space, never loopback
        blocks.add((first, rng.randint(0, 255), rng.randint(0, 255)))
    cidrs = []
    # One loopback address that no load ever comes from: `probe --denied-from`
    # checks with it that each proxy really enforces the list.
    cidrs = [a.denied] if a.denied else []
    if cidrs:
        blocks = set(sorted(blocks)[1:])
    for x, y, z in sorted(blocks):
        if rng.random() < 0.5:
            cidrs.append(f"{x}.{y}.{z}.0/24")
        else:
            cidrs.append(f"{x}.{y}.{z}.{rng.randint(1, 254)}/32")
    with open(os.path.join(a.dir, "blacklist.txt"), "w") as f:
        f.writelines(c + "\n" for c in cidrs)
    with open(os.path.join(a.dir, "blacklist.geo"), "w") as f:
        f.writelines(f"{c} 1;\n" for c in cidrs)


# === ports and HTTP ===


def cmd_free(a):
    taken = []
    for p in a.ports:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            taken.append(p)
        finally:
            s.close()
    if taken:
        print("ports already in use: " + " ".join(map(str, taken)), file=sys.stderr)
        sys.exit(1)


def get(port, path="/cart", uid=None, timeout=2.0, conn=None, source=None):
    src = (source, 0) if source else None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=src)
    headers = {"Host": "bench"}
    if uid is not None:
        headers["X-User-Id"] = uid
    c.request("GET", path, headers=headers)
    r = c.getresponse()
    body = r.read()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body, c


def cmd_wait_http(a):
    deadline = time.monotonic() + a.timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if a.pid and not os.path.exists(f"/proc/{a.pid}"):
            sys.exit(f"process {a.pid} exited before answering")
        try:
            status, _, _, c = get(a.port, uid="42", timeout=1.0)
            c.close()
            if status == 200:
                return
            last = f"status {status}"
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    sys.exit(f"port {a.port}: no 200 on GET /cart within {a.timeout}s ({last})")


def version_of(headers, body):
    v = headers.get("x-gateway-version")
    if v:
        return v
    try:
        return json.loads(body).get("version", "?")
    except ValueError:
        return "?"


def cmd_probe(a):
    """One keep-alive connection, a few hundred requests: the proxies must
    agree on what the benchmark exercises, or the comparison is void."""
    rng = random.Random(7)
    conn = None
    canary = other = 0
    for _ in range(a.n):
        status, h, body, conn = get(a.port, uid=str(rng.randint(2000, 10_000_000)), conn=conn)
        if status != 200:
            other += 1
        elif json.loads(body).get("version") == "canary":
            canary += 1
    conn.close()
    checks = {}
    status, h, body, c = get(a.port, uid=a.whitelisted)
    c.close()
    checks["whitelisted user -> canary"] = status == 200 and json.loads(body).get("version") == "canary"
    status, h, body, c = get(a.port)
    c.close()
    checks["no user id -> stable"] = status == 200 and json.loads(body).get("version") == "stable"
    checks["version header"] = h.get("x-gateway-version") == "stable"
    status, h, body, c = get(a.port, path="/cartoon", uid="5")
    c.close()
    checks["/cartoon -> 404"] = status == 404
    if a.denied_from:
        status, h, body, c = get(a.port, uid="5", source=a.denied_from)
        c.close()
        checks[f"blacklisted {a.denied_from} -> 403"] = status == 403
    share = 100.0 * canary / a.n
    ok = other == 0 and all(checks.values()) and abs(share - a.expect) < 4.0
    print(
        f"{a.name}: canary share {share:.1f}% of {a.n} (expect ~{a.expect:g}%), non-200: {other}; "
        + ", ".join(f"{k}: {'ok' if v else 'FAIL'}" for k, v in checks.items())
    )
    sys.exit(0 if ok else 1)


def cmd_stub(a):
    status, _, body, c = get(a.port, path="/status")
    c.close()
    # "Active connections: 1\nserver accepts handled requests\n 5 5 9\n..."
    print(body.decode().splitlines()[2].split()[2])


# === memory ===


def tree(pid):
    """pid and all its descendants (via /proc/PID/task/TID/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kib(pid):
    return sum(status_kib(p, "VmRSS") for p in tree(pid))


def cmd_rss(a):
    print(tree_rss_kib(a.pid))


def cmd_rss_watch(a):
    """Peak of the tree's summed PSS (shared pages split between master and
    workers, so nothing is counted twice), and the largest VmHWM of any one
    process of the tree (the kernel's own peak RSS of the proxy/worker)."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    peak_pss = peak_hwm = samples = 0
    while not stop and os.path.exists(f"/proc/{a.pid}"):
        procs = tree(a.pid)
        peak_pss = max(peak_pss, sum(pss_kib(p) for p in procs))
        peak_hwm = max([peak_hwm] + [status_kib(p, "VmHWM") for p in procs])
        samples += 1
        time.sleep(a.interval)
    procs = tree(a.pid)
    peak_hwm = max([peak_hwm] + [status_kib(p, "VmHWM") for p in procs])
    print(f"peak_pss_kib={peak_pss} peak_hwm_kib={peak_hwm} rss_samples={samples}")


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def open_idle(port, count, hold, settle, pid):
    sem = asyncio.Semaphore(256)
    conns, failed = [], [0]
    req = "GET /cart HTTP/1.1\r\nHost: bench\r\nX-User-Id: {}\r\n\r\n"

    async def one(i):
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
                w.write(req.format(2000 + i).encode())
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                await asyncio.wait_for(r.readexactly(length), 10)
                if not head.startswith(b"HTTP/1.1 200"):
                    failed[0] += 1
                conns.append((r, w))
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                failed[0] += 1

    before = tree_rss_kib(pid)
    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(count)))
    open_s = time.monotonic() - t0
    await asyncio.sleep(settle)
    after = tree_rss_kib(pid)
    await asyncio.sleep(hold)
    still = sum(1 for r, _ in conns if not r.at_eof())
    for _, w in conns:
        w.close()
    return before, after, len(conns), failed[0], still, open_s


def cmd_idle(a):
    limit = raise_nofile()
    if limit < a.count + 64:
        sys.exit(f"RLIMIT_NOFILE is {limit}: too low for {a.count} connections")
    before, after, opened, failed, still, open_s = asyncio.run(open_idle(a.port, a.count, a.hold, a.settle, a.pid))
    per = (after - before) / opened if opened else 0.0
    print(
        f"BENCH_IDLE before_kib={before} after_kib={after} opened={opened} failed={failed} "
        f"still_open={still} per_conn_kib={per:.2f} open_s={open_s:.2f}"
    )


# === reload ===


def cmd_reload(a):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    ok = failed = 0
    last_err = ""
    next_at = time.monotonic()
    while not stop:
        try:
            if a.kind == "gateway":
                c = http.client.HTTPConnection("127.0.0.1", int(a.target), timeout=5)
                c.request("POST", "/api/reload")
                r = c.getresponse()
                body = r.read()
                c.close()
                if r.status != 200:
                    raise OSError(f"status {r.status}: {body[:200]!r}")
            elif a.kind == "nginx":
                # What `nginx -s reload` does, without parsing the config in a new process every 100 ms.
                os.kill(int(a.target), signal.SIGHUP)
            elif a.kind == "haproxy":
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(5)
                s.connect(a.target)
                s.sendall(b"reload\n")
                while s.recv(4096):
                    pass
                s.close()
            ok += 1
        except (OSError, ValueError) as e:
            failed += 1
            last_err = str(e)
        next_at += a.interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    print(f"reloads_ok={ok} reloads_failed={failed}" + (f" reload_error={last_err!r}" if last_err else ""))


# === report ===


def parse_kv(line):
    out = {}
    for tok in line.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            out[k] = v
    return out


# A run during which the hypervisor took more than this share of the
# machine's CPU time (`steal` in /proc/stat) is left out of the medians.
STEAL_LIMIT = 5.0


def steal_pct(row):
    """The run's share of stolen CPU time; 0 when not recorded."""
    try:
        return float(row.get("steal_pct") or 0)
    except ValueError:
        return 0.0


def med(rows, key):
    vals = [float(r[key]) for r in rows if key in r]
    return statistics.median(vals) if vals else None


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def ratio(a, b):
    return "-" if a is None or b in (None, 0) else f"{a / b:.2f}"


def cmd_report(a):
    rows = []
    with open(a.results) as f:
        for line in f:
            if line.strip():
                rows.append(parse_kv(line))
    order = []
    for r in rows:
        if r["proxy"] not in order:
            order.append(r["proxy"])
    by = {p: [r for r in rows if r["proxy"] == p] for p in order}
    print()
    print(a.title)
    noisy = [r for r in rows if steal_pct(r) > STEAL_LIMIT]
    if noisy and a.variant != "d":
        quiet = {p: [r for r in rs if steal_pct(r) <= STEAL_LIMIT] for p, rs in by.items()}
        rounds = sorted({int(r["round"]) for r in noisy})
        if all(quiet.values()):
            print(
                f"left out: {len(noisy)} of {len(rows)} runs (rounds {', '.join(map(str, rounds))}) during which the"
                f" host stole more than {STEAL_LIMIT}% of the CPUs; the figures are medians over the rest"
            )
            by = quiet
        else:
            print(
                f"WARNING: the host stole more than {STEAL_LIMIT}% of the CPUs during {len(noisy)} of {len(rows)} runs"
                f" (rounds {', '.join(map(str, rounds))}), and some proxy has no other run: the figures rank nothing"
            )
    if a.variant == "d":
        print(f"{'proxy':<16}{'opened':>8}{'failed':>8}{'still':>8}{'RSS before':>12}{'RSS after':>12}{'KiB/conn':>10}")
        print(f"{'':<16}{'':>8}{'':>8}{'open':>8}{'MiB':>12}{'MiB':>12}{'(median)':>10}")
        per = {}
        for p, rs in by.items():
            per[p] = med(rs, "per_conn_kib")
            print(
                f"{p:<16}{fmt(med(rs, 'opened'), '.0f'):>8}{fmt(med(rs, 'failed'), '.0f'):>8}"
                f"{fmt(med(rs, 'still_open'), '.0f'):>8}{fmt(med(rs, 'before_kib') / 1024, '.1f'):>12}"
                f"{fmt(med(rs, 'after_kib') / 1024, '.1f'):>12}{fmt(per[p], '.2f'):>10}"
            )
        for peer in ("nginx", "haproxy", "bare-pingora", "bare-sessions"):
            if "gateway" in per and peer in per:
                print(f"gateway/{peer}: memory per idle connection x{ratio(per['gateway'], per[peer])}")
        return
    reloads = a.variant == "e"
    # openloop's tails over the requests clear of the host's CPU thefts
    # (benches/openloop/src/steal.rs): a theft of 10 ms or more decides a
    # p99.9 alone, and a run-wide steal share cannot see one.
    has_quiet = any("quiet_p99_us" in r for r in rows)
    hdr = (
        f"{'proxy':<16}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'non-2xx':>9}{'sock err':>9}"
        f"{'peak PSS':>10}{'peak HWM':>10}{'fan-out':>9}"
    )
    if reloads:
        hdr += f"{'reloads':>9}{'failed':>8}"
    if has_quiet:
        hdr += f"{'quiet':>9}{'quiet':>10}{'quiet':>8}"
    print(hdr)
    sub = f"{'':<16}{'(median)':>10}{'':>9}{'':>9}{'':>10}{'(sum)':>9}{'(sum)':>9}{'MiB':>10}{'MiB':>10}{'':>9}"
    if reloads:
        sub += f"{'':>9}{'':>8}"
    if has_quiet:
        sub += f"{'p99 ms':>9}{'p99.9 ms':>10}{'share':>8}"
    print(sub)
    summary = {}
    total_errors = 0
    for p, rs in by.items():
        s = {k: med(rs, k) for k in ("rps", "p50_us", "p99_us", "p999_us", "fanout", "quiet_p99_us", "quiet_p999_us")}
        # Errors count in every run, left out or not.
        every = [r for r in rows if r["proxy"] == p]
        s["non2xx"] = sum(int(r.get("err_status", 0)) for r in every)
        s["sock"] = sum(int(r.get(k, 0)) for r in every for k in ("err_connect", "err_read", "err_write", "err_timeout"))
        s["pss"] = max(int(r.get("peak_pss_kib", 0)) for r in rs) / 1024
        s["hwm"] = max(int(r.get("peak_hwm_kib", 0)) for r in rs) / 1024
        total_errors += s["non2xx"] + s["sock"]
        summary[p] = s
        line = (
            f"{p:<16}{fmt(s['rps'], '.0f'):>10}{fmt(s['p50_us'] and s['p50_us'] / 1000, '.3f'):>9}"
            f"{fmt(s['p99_us'] and s['p99_us'] / 1000, '.3f'):>9}{fmt(s['p999_us'] and s['p999_us'] / 1000, '.3f'):>10}"
            f"{s['non2xx']:>9}{s['sock']:>9}{s['pss']:>10.1f}{s['hwm']:>10.1f}{fmt(s['fanout'], '.2f'):>9}"
        )
        if reloads:
            line += f"{sum(int(r.get('reloads_ok', 0)) for r in rs):>9}{sum(int(r.get('reloads_failed', 0)) for r in rs):>8}"
        if has_quiet:
            counted = [r for r in rs if "quiet_requests" in r]
            total = sum(int(r["requests"]) for r in counted)
            share = f"{sum(int(r['quiet_requests']) for r in counted) / total:.1%}" if total else "-"
            line += (
                f"{fmt(s['quiet_p99_us'] and s['quiet_p99_us'] / 1000, '.3f'):>9}"
                f"{fmt(s['quiet_p999_us'] and s['quiet_p999_us'] / 1000, '.3f'):>10}{share:>8}"
            )
        print(line)
    def mark(r):
        return r["rps"] + ("*" if steal_pct(r) > STEAL_LIMIT else "")

    print("per round req/s: " + "; ".join(f"{p} " + " ".join(mark(r) for r in rows if r["proxy"] == p) for p in order))
    if any("steal_pct" in r for r in rows):
        steal = "; ".join(f"{p} " + " ".join(r.get("steal_pct", "-") for r in rows if r["proxy"] == p) for p in order)
        print(f"per round host steal %: {steal} (* left out)" if noisy else f"per round host steal %: {steal}")
    if has_quiet:
        def tails(r):
            q99, q999 = (float(r.get(k, 0)) / 1000 for k in ("quiet_p99_us", "quiet_p999_us"))
            return f"{q99:.2f}/{q999:.2f}({r.get('thefts', '-')})"

        per = "; ".join(f"{p} " + " ".join(tails(r) for r in rows if r["proxy"] == p) for p in order)
        print(f"per round quiet p99/p99.9 ms (thefts): {per}")
    base = "gateway"
    for peer in [p for p in order if p != base]:
        if base in summary:
            g, o = summary[base], summary[peer]
            print(
                f"{base}/{peer}: req/s x{ratio(g['rps'], o['rps'])}  p50 x{ratio(g['p50_us'], o['p50_us'])}  "
                f"p99 x{ratio(g['p99_us'], o['p99_us'])}  p99.9 x{ratio(g['p999_us'], o['p999_us'])}  "
                f"peak PSS x{ratio(g['pss'], o['pss'])}"
                + (
                    f"  quiet p99 x{ratio(g['quiet_p99_us'], o['quiet_p99_us'])}"
                    f"  quiet p99.9 x{ratio(g['quiet_p999_us'], o['quiet_p999_us'])}"
                    if has_quiet
                    else ""
                )
            )
    if total_errors:
        print(f"ERRORS: {total_errors} non-2xx responses or socket errors (see the table); the run is not clean")
    else:
        print("errors: none (every response 2xx, no socket error)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("render")
    p.add_argument("template")
    p.add_argument("out")
    p.add_argument("--set", action="append")
    p.add_argument("--flag", action="append")
    p = sub.add_parser("lists")
    p.add_argument("--dir", required=True)
    p.add_argument("--whitelist", type=int, default=100)
    p.add_argument("--blacklist", type=int, default=100_000)
    p.add_argument("--denied", default="", help="a CIDR to put first on the blacklist")
    p = sub.add_parser("free")
    p.add_argument("ports", type=int, nargs="+")
    p = sub.add_parser("wait-http")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int)
    p.add_argument("--timeout", type=float, default=30)
    p = sub.add_parser("probe")
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--expect", type=float, default=10.0)
    p.add_argument("--whitelisted", default="1001")
    p.add_argument("--denied-from", default="", help="a blacklisted loopback address to probe from")
    p = sub.add_parser("stub")
    p.add_argument("--port", type=int, required=True)
    p = sub.add_parser("rss")
    p.add_argument("--pid", type=int, required=True)
    p = sub.add_parser("rss-watch")
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--interval", type=float, default=0.25)
    p = sub.add_parser("idle")
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--settle", type=float, default=1.0)
    p.add_argument("--hold", type=float, default=2.0)
    p = sub.add_parser("reload")
    p.add_argument("--kind", choices=["gateway", "nginx", "haproxy"], required=True)
    p.add_argument("--target", required=True, help="gateway: admin port; nginx: master pid; haproxy: master socket")
    p.add_argument("--interval", type=float, default=0.1)
    p = sub.add_parser("report")
    p.add_argument("--results", required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--title", default="")
    a = ap.parse_args()
    globals()["cmd_" + a.cmd.replace("-", "_")](a)


if __name__ == "__main__":
    main()
