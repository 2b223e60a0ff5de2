"""Server for bench/nat-economy.sh: a WebSocket server that stays silent.

    target/peers/venv/bin/python bench/nat_server.py HOST PORT

Answers the clients' Pings (the library does) and sends nothing of its own: no server
keepalive (`ping_interval=None`), so every byte the router counts is the client's
heartbeat, its answer, TCP's ACKs and reconnects. Prints `upgrade N` with a Unix time
on each new connection. On SIGUSR1 it sends the text `probe` on every connection it
holds (a client that prints it still had a working path); on SIGTERM or EOF on stdin
it exits.
"""

import asyncio
import signal
import sys
import time

from websockets.asyncio.server import serve

conns = set()
upgrades = 0


async def handler(ws):
    global upgrades
    upgrades += 1
    print(f"{time.time():.3f} upgrade {upgrades}", flush=True)
    conns.add(ws)
    try:
        async for _ in ws:
            pass
    except Exception:
        pass
    finally:
        conns.discard(ws)


async def send_probe(ws):
    try:
        await asyncio.wait_for(ws.send("probe"), 2)
    except Exception:
        pass


async def main():
    host, port = sys.argv[1], int(sys.argv[2])
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def probe():
        for ws in list(conns):
            asyncio.ensure_future(send_probe(ws))
        print(f"{time.time():.3f} probe sent to {len(conns)}", flush=True)

    loop.add_signal_handler(signal.SIGUSR1, probe)
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.buffer.read1(4096) or stop.done() or stop.set_result(None))
    async with serve(handler, host, port, ping_interval=None, close_timeout=1):
        print(f"{time.time():.3f} listening {host}:{port}", flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main())
