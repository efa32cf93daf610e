#!/usr/bin/env python3
"""Memory per idle keep-alive TLS connection of a running gateway.

Opens N TLS connections to PORT (SNI shop.localhost, trusting CA), sends one
request on each and reads the answer, keeps them all open, and prints the
growth of the process's PSS divided by N. Run by hand (see benches/README.md):

    certs/make-dev-certs.sh
    target/release/gateway run -c tls.toml &     # a [server.tls] listener on PORT
    benches/load/tls_idle.py PORT 3000 "$(pgrep -f 'gateway run -c tls.toml')" certs/dev/ca.crt
"""
import asyncio
import ssl
import sys


def pss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise SystemExit(f"no Pss for {pid}")


async def one(port, ctx, sem, conns):
    async with sem:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="shop.localhost")
        w.write(b"GET /cart HTTP/1.1\r\nHost: shop.localhost\r\n\r\n")
        await w.drain()
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await r.read(65536)
            if not chunk:
                raise SystemExit("closed before an answer")
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lengths = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")]
        while lengths and len(body) < lengths[0]:
            body += await r.read(65536)
        conns.append((r, w))


async def main(port, count, pid, ca):
    ctx = ssl.create_default_context(cafile=ca)
    before = pss_kib(pid)
    conns = []
    sem = asyncio.Semaphore(50)
    await asyncio.gather(*[one(port, ctx, sem, conns) for _ in range(count)])
    await asyncio.sleep(1.5)
    after = pss_kib(pid)
    print(f"connections {len(conns)}  PSS before {before} KiB  after {after} KiB  "
          f"per connection {(after - before) / len(conns):.2f} KiB")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
