"""WebSocket peer server on Python `websockets` (asyncio API), for interop tests.

    target/peers/venv/bin/python bench/peers/py_server.py [--host H] [--port P] [--ping-every MS]

Prints its port on stdout (one line, the number) once listening. Port 0 (the default)
picks a free port; pass the printed port back with --port to restart on the same one.

Per connection:
  * every text message is echoed, except the commands below;
  * `ping` (text) is answered with `pong` (the common text heartbeat convention);
  * `close CODE [REASON]` closes the connection with that code and reason;
  * `stats` answers `stats pongs=N pings=N rtt_max_ms=F client_pings=N`
    (server pings answered / sent on this connection, and client Ping frames seen);
  * `server-ping` sends one Ping at once and answers `server-pong rtt_ms=F` or `server-pong timeout`.
Pings from the client are answered by the library (websockets answers every Ping).
With --ping-every MS the server also sends its own Ping every MS milliseconds and
counts the Pongs; the library keepalive is off so a slow pong never closes anything.
Exits on SIGTERM/SIGINT or when stdin reaches EOF (so it dies with its parent).
"""

import argparse
import asyncio
import signal
import sys
import time

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode


class Stats:
    def __init__(self):
        self.pings = 0
        self.pongs = 0
        self.rtt_max_ms = 0.0
        self.client_pings = 0


async def server_ping(ws, stats, timeout=2.0):
    stats.pings += 1
    t0 = time.perf_counter()
    waiter = await ws.ping()
    try:
        await asyncio.wait_for(waiter, timeout)
    except asyncio.TimeoutError:
        return None
    rtt = (time.perf_counter() - t0) * 1000.0
    stats.pongs += 1
    stats.rtt_max_ms = max(stats.rtt_max_ms, rtt)
    return rtt


async def pinger(ws, stats, every_ms):
    try:
        while True:
            await asyncio.sleep(every_ms / 1000.0)
            await server_ping(ws, stats)
    except (ConnectionClosed, asyncio.CancelledError):
        pass


def make_handler(args):
    async def handler(ws):
        stats = Stats()
        # Count client Pings: wrap the protocol's frame hook (websockets answers them itself).
        proto = ws.protocol
        orig = proto.recv_frame

        def recv_frame(frame):
            if frame.opcode is Opcode.PING:
                stats.client_pings += 1
            return orig(frame)

        proto.recv_frame = recv_frame
        task = asyncio.create_task(pinger(ws, stats, args.ping_every)) if args.ping_every else None
        try:
            async for msg in ws:
                if isinstance(msg, bytes):
                    await ws.send(msg)
                    continue
                if msg == "ping":
                    await ws.send("pong")
                elif msg.startswith("close "):
                    parts = msg.split(" ", 2)
                    await ws.close(int(parts[1]), parts[2] if len(parts) > 2 else "")
                    break
                elif msg == "stats":
                    await ws.send(
                        f"stats pongs={stats.pongs} pings={stats.pings} "
                        f"rtt_max_ms={stats.rtt_max_ms:.3f} client_pings={stats.client_pings}"
                    )
                elif msg == "server-ping":
                    rtt = await server_ping(ws, stats)
                    await ws.send("server-pong timeout" if rtt is None else f"server-pong rtt_ms={rtt:.3f}")
                else:
                    await ws.send(msg)
        except ConnectionClosed:
            pass
        finally:
            if task:
                task.cancel()

    return handler


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ping-every", type=float, default=0, help="server Ping every MS milliseconds (0: off)")
    args = ap.parse_args()

    stop = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))

    def on_stdin_eof():
        if not sys.stdin.buffer.read1(4096) and not stop.done():
            stop.set_result(None)

    if not sys.stdin.isatty():
        try:
            loop.add_reader(sys.stdin.fileno(), on_stdin_eof)
        except (OSError, ValueError, PermissionError):
            pass  # stdin is a regular file or /dev/null: no parent-death watch

    async with serve(make_handler(args), args.host, args.port, ping_interval=None, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main())
