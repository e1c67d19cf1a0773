#!/usr/bin/env python3
"""Resident memory of callgate per open connection (issue 18 item 3).

Starts the callgate binary in front of a tiny keep-alive engine (in this script), then:

1. opens N idle keep-alive connections (default 1,000), each after one pass-through request;
2. opens M slow voice requests (default 400), each a 64 KiB form body sent but for its last
   byte, so callgate holds the whole buffered body while it waits for the rest;

and prints VmRSS (from /proc) after start-up and after each step, with the cost per connection.
The figures set --max-connections' default and the Deployment's memory limit (README
"Security"). Measure the release build for the figures you ship:

    python3 bench/connection_memory.py --callgate $CARGO_TARGET_DIR/release/callgate

Needs Linux (/proc) and a file-descriptor limit above 2 * (N + M).
"""

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1))


async def engine(reader, writer):
    """Answers every request `200 ok`, keeping the connection open."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            if m:
                await reader.readexactly(int(m.group(1)))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        writer.close()


async def settle(pid, within=3.0):
    """RSS once it stops rising (or after `within` seconds)."""
    last, deadline = rss_kib(pid), time.monotonic() + within
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        now = rss_kib(pid)
        if now <= last:
            return now
        last = now
    return last


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    ap.add_argument("--callgate", default=f"{target}/debug/callgate")
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--slow", type=int, default=400)
    args = ap.parse_args()

    server = await asyncio.start_server(engine, "127.0.0.1", 0)
    upstream = "http://127.0.0.1:%d" % server.sockets[0].getsockname()[1]
    tmp = tempfile.mkdtemp()
    routes = os.path.join(tmp, "routes.json")
    with open(routes, "w") as f:
        f.write("{}")
    child = subprocess.Popen(
        [args.callgate, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
         "--upstream", upstream, "--routes", routes, "--log-format", "json",
         "--header-timeout", "120s", "--idle-timeout", "300s", "--max-connections", "100000"],
        stderr=subprocess.PIPE, env={"RUST_LOG": "warn,callgate=info", "PATH": os.environ["PATH"]})
    addr = None
    for line in child.stderr:
        entry = json.loads(line)
        if entry.get("message") == "callgate serving":
            addr = entry["listen"]
            break
    host, port = addr.rsplit(":", 1)
    try:
        base = await settle(child.pid)
        print(f"after start-up: {base / 1024:.1f} MiB")

        idle = []
        for _ in range(args.idle):
            r, w = await asyncio.open_connection(host, int(port))
            w.write(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            await r.readuntil(b"ok")
            idle.append((r, w))
        with_idle = await settle(child.pid)
        per_idle = (with_idle - base) / args.idle
        print(f"{args.idle} idle keep-alive connections: {with_idle / 1024:.1f} MiB "
              f"({per_idle:.1f} KiB each)")

        body = b"a=" + b"x" * (64 * 1024 - 2)
        head = ("POST /twilio/voice HTTP/1.1\r\nHost: x\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        slow = []
        for _ in range(args.slow):
            r, w = await asyncio.open_connection(host, int(port))
            w.write(head + body[:-1])
            await w.drain()
            slow.append((r, w))
        with_slow = await settle(child.pid, within=6.0)
        per_slow = (with_slow - with_idle) / args.slow
        print(f"+ {args.slow} slow 64 KiB voice requests: {with_slow / 1024:.1f} MiB "
              f"({per_slow:.1f} KiB each)")
        for _, w in idle + slow:
            w.close()
    finally:
        child.kill()
        child.wait()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
