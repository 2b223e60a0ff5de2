#!/usr/bin/python3
"""WebSocket echo server for scripts/systemd-test.sh (Python standard library only).

Runs inside the test container as wsecho.service, on 127.0.0.1 only. It answers
the upgrade, Pings with Pongs, echoes text/binary messages, answers a Close with
a Close, and prints one line per event to stdout (the journal), which the test
greps:

    LISTEN 127.0.0.1:8765
    CONNECT peer=127.0.0.1:40112 path=/ws authorization='Bearer ...'
    TEXT peer=127.0.0.1:40112 text='hello from a local program'
    CLOSE peer=127.0.0.1:40112 code=1001 reason='shutting down'
    CLOSE peer=127.0.0.1:40112 code=none reason='TCP closed without a Close frame'

Usage: systemd-test-server.py [PORT]
"""

import base64
import hashlib
import socket
import struct
import sys
import threading

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_PAYLOAD = 1 << 20


def log(line):
    print(line, flush=True)


def recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def send_frame(conn, opcode, payload=b""):
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    conn.sendall(head + payload)


def read_frame(conn):
    b0, b1 = recv_exact(conn, 2)
    opcode, n = b0 & 0x0F, b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", recv_exact(conn, 2))
    elif n == 127:
        (n,) = struct.unpack("!Q", recv_exact(conn, 8))
    if n > MAX_PAYLOAD:
        raise ValueError("frame of %d bytes" % n)
    mask = recv_exact(conn, 4) if b1 & 0x80 else b"\0\0\0\0"
    data = recv_exact(conn, n)
    return opcode, bytes(c ^ mask[i % 4] for i, c in enumerate(data))


def handshake(conn):
    """Reads the upgrade request; returns (path, headers) after answering 101."""
    req = b""
    while b"\r\n\r\n" not in req:
        chunk = conn.recv(4096)
        if not chunk or len(req) > 65536:
            raise EOFError
        req += chunk
    lines = req.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "?"
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    key = headers.get("sec-websocket-key", "").encode()
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
    conn.sendall(
        (
            "HTTP/1.1 101 Switching Protocols\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Accept: %s\r\n\r\n" % accept
        ).encode()
    )
    return path, headers


def serve(conn, peer):
    code, reason = "none", "TCP closed without a Close frame"
    try:
        path, headers = handshake(conn)
        log("CONNECT peer=%s path=%s authorization=%r" % (peer, path, headers.get("authorization")))
        while True:
            opcode, data = read_frame(conn)
            if opcode == 0x8:  # Close: answer with the same code, then hang up
                if len(data) >= 2:
                    code = str(struct.unpack("!H", data[:2])[0])
                    reason = data[2:].decode("utf-8", "replace")
                else:
                    code, reason = "none", "empty Close frame"
                send_frame(conn, 0x8, data[:2])
                break
            if opcode == 0x9:  # Ping
                send_frame(conn, 0xA, data)
            elif opcode in (0x1, 0x2):  # echo messages
                if opcode == 0x1:
                    log("TEXT peer=%s text=%r" % (peer, data.decode("utf-8", "replace")))
                send_frame(conn, opcode, data)
    except (EOFError, OSError, ValueError) as err:
        if not isinstance(err, EOFError):
            reason = "error: %s" % err
    finally:
        conn.close()
        log("CLOSE peer=%s code=%s reason=%r" % (peer, code, reason))


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(16)
    log("LISTEN 127.0.0.1:%d" % port)
    while True:
        conn, addr = srv.accept()
        peer = "%s:%d" % addr[:2]
        threading.Thread(target=serve, args=(conn, peer), daemon=True).start()


if __name__ == "__main__":
    main()
