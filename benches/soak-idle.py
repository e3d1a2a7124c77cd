#!/usr/bin/env python3
"""Hold many idle client connections open through pgveil.

Used by section `soak` of benches/pgbench.sh. Opens --count connections
(at most --parallel connecting at a time), runs one point lookup by the
blind-indexed email on each and checks the decrypted value, then writes the
number of open connections to --ready and waits, every connection idle, until
the file --release exists. Then it runs the lookup once more on every
connection (they must all still work), closes them and exits 0.

Any error (connect, query, wrong value) is printed and makes the exit status
1; connections that were opened are closed first. Nothing is written to
--ready unless every connection is open and has answered.
"""

import argparse
import asyncio
import os
import sys
import time

import asyncpg

QUERY = "SELECT name FROM soak_enc WHERE email = $1"


def expected_name(i):
    return f"soak-sentinel-n{i}"


async def lookup(conn, k, rows):
    i = k % rows + 1
    row = await conn.fetchrow(QUERY, str(i))
    if row is None or row["name"] != expected_name(i):
        raise RuntimeError(f"connection {k}: lookup of email {i} returned {row!r}")


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--database", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--rows", type=int, required=True, help="preloaded rows (emails 1..rows)")
    p.add_argument("--parallel", type=int, default=50)
    p.add_argument("--ready", required=True)
    p.add_argument("--release", required=True)
    p.add_argument("--timeout", type=float, default=600, help="give up waiting for --release")
    a = p.parse_args()

    conns = [None] * a.count
    gate = asyncio.Semaphore(a.parallel)

    async def open_one(k):
        async with gate:
            conns[k] = await asyncpg.connect(
                host=a.host, port=a.port, user=a.user, database=a.database,
                ssl=False, timeout=60,
            )
            await lookup(conns[k], k, a.rows)

    async def close_all():
        await asyncio.gather(*(c.close(timeout=10) for c in conns if c is not None),
                             return_exceptions=True)

    def failed(results, what):
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            print(f"soak-idle: {len(errors)} of {a.count} connections failed {what}; "
                  f"first: {type(errors[0]).__name__}: {errors[0]}", file=sys.stderr)
        return len(errors)

    t0 = time.monotonic()
    results = await asyncio.gather(*(open_one(k) for k in range(a.count)), return_exceptions=True)
    if failed(results, "to open or to answer"):
        await close_all()
        return 1
    opened = time.monotonic() - t0
    tmp = a.ready + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{a.count} {opened:.2f}\n")
    os.rename(tmp, a.ready)
    print(f"soak-idle: {a.count} connections open and queried in {opened:.1f} s", file=sys.stderr)

    deadline = time.monotonic() + a.timeout
    while not os.path.exists(a.release):
        if time.monotonic() > deadline:
            print("soak-idle: no release signal, giving up", file=sys.stderr)
            await close_all()
            return 1
        await asyncio.sleep(0.2)

    results = await asyncio.gather(*(lookup(c, k, a.rows) for k, c in enumerate(conns)),
                                   return_exceptions=True)
    errors = failed(results, "the second lookup after idling")
    await close_all()
    if errors:
        return 1
    print(f"soak-idle: {a.count} connections answered again after idling; closed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
