"""Benchmark peer: the client a Python user would write with `websockets`.

    target/peers/venv/bin/python bench/peers/py_client.py URL [--ping-interval S] [--ping-timeout S] [--ca-file PEM]

Uses the library's own keepalive (ping_interval / ping_timeout; 0 turns it off) and its
reconnect iterator `async for ws in connect(...)`, as the websockets docs show.
Text messages received go to stdout, stdin lines are sent (while connected).
"""

import argparse
import asyncio
import ssl
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--ping-interval", type=float, default=20)
    ap.add_argument("--ping-timeout", type=float, default=20)
    ap.add_argument("--ca-file")
    args = ap.parse_args()

    ctx = None
    if args.url.startswith("wss://"):
        ctx = ssl.create_default_context()
        if args.ca_file:
            ctx.load_verify_locations(args.ca_file)

    current = {"ws": None}
    loop = asyncio.get_running_loop()

    def on_stdin():
        line = sys.stdin.buffer.readline()
        if not line:
            loop.remove_reader(sys.stdin.fileno())
            return
        ws = current["ws"]
        if ws is not None:
            asyncio.ensure_future(ws.send(line.rstrip(b"\n").decode("utf-8", "replace")))

    try:
        loop.add_reader(sys.stdin.fileno(), on_stdin)
    except (OSError, ValueError, PermissionError):
        pass

    async for ws in connect(
        args.url,
        ssl=ctx,
        ping_interval=args.ping_interval or None,
        ping_timeout=args.ping_timeout or None,
    ):
        current["ws"] = ws
        try:
            async for msg in ws:
                if isinstance(msg, str):
                    sys.stdout.write(msg + "\n")
                    sys.stdout.flush()
        except ConnectionClosed:
            pass
        finally:
            current["ws"] = None


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
