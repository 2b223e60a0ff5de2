"""Server for bench/lossless.py: records every text message it receives.

    target/peers/venv/bin/python bench/lossless_server.py HOST PORT

Prints `listening` once it accepts connections, `upgrade N` on each new connection and
`text N WORD` for each text message (WORD: the message up to its first space, the line
number the benchmark's feeder wrote). Answers the clients' Pings (the library does) and
sends nothing of its own. Exits on SIGTERM or EOF on stdin.
"""

import asyncio
import signal
import sys

from websockets.asyncio.server import serve

upgrades = 0


async def handler(ws):
    global upgrades
    upgrades += 1
    conn = upgrades
    print(f"upgrade {conn}", flush=True)
    try:
        async for msg in ws:
            if isinstance(msg, str):
                word = msg.split(" ", 1)[0]
                print(f"text {conn} {word}", flush=True)
    except Exception:
        pass


async def main():
    host, port = sys.argv[1], int(sys.argv[2])
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    loop.add_reader(
        sys.stdin.fileno(),
        lambda: sys.stdin.buffer.read1(4096) or stop.done() or stop.set_result(None),
    )
    async with serve(handler, host, port, ping_interval=None, close_timeout=1):
        print("listening", flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main())
