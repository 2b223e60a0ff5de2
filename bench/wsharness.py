"""Shared pieces of the benchmark (bench/bench.py) and the soak (bench/soak.py).

Python standard library only. Everything listens on 127.0.0.1 with port 0 and every
wait has a timeout.

* WsServer: a small RFC 6455 server (one thread per connection) that answers Pings,
  echoes text, records when each connection was established (per request path), can
  send its own Pings and time the Pongs, close with a code, or fail handshakes.
* Proxy: a TCP proxy (one selector thread) whose live connections can be blackholed
  (both sockets stay open, nothing is forwarded) or cut with an RST.
* proc_stats(): RSS, private memory, threads, fds, context switches and CPU of a
  process, summed over all its threads, from /proc.
* Nginx: nginx terminating TLS with a throw-away test CA (bench/nginx/).
"""

import base64
import hashlib
import math
import os
import queue
import random
import selectors
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def now():
    return time.monotonic()


# --------------------------------------------------------------------------- server


class Conn:
    """One accepted WebSocket connection (server side)."""

    def __init__(self, server, sock, path, t_open):
        self.server = server
        self.sock = sock
        self.path = path
        self.t_open = t_open
        self.client_pings = []  # monotonic times of Ping frames from the client
        self._pinged_or_closed = threading.Event()
        self._send_lock = threading.Lock()
        self._buf = b""
        self.closed = threading.Event()

    def wait_client_ping(self, timeout):
        """Blocks until the client has sent a Ping (True) or the connection closed or
        `timeout` passed (False)."""
        self._pinged_or_closed.wait(timeout)
        return bool(self.client_pings)

    # -- sending
    def _send(self, opcode, payload=b""):
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
        with self._send_lock:
            self.sock.sendall(head + payload)

    def send_text(self, text):
        self._send(0x1, text.encode())

    def close_with(self, code, reason=""):
        """Sends a Close frame; the reader answers the client's Close and closes the socket."""
        try:
            self._send(0x8, struct.pack("!H", code) + reason.encode())
        except OSError:
            pass
        threading.Timer(2.0, self.abort).start()

    def abort(self):
        """Closes the socket at once (FIN), without a close handshake."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def measure_sync(self, n, gap=(0.004, 0.008), timeout=1.0):
        """Times n server Pings on a connection that no reader thread serves (see
        WsServer.take_over): this thread writes the Ping and reads until its Pong, so the
        figure holds no thread hand-off of ours. Client Pings met meanwhile are answered.
        Returns (sorted round trips in microseconds, number lost)."""
        rtts, lost = [], 0
        self.sock.settimeout(timeout)
        for i in range(n):
            payload = struct.pack("!Q", i)
            t0 = time.perf_counter_ns()
            self._send(0x9, payload)
            try:
                while True:
                    b0, b1 = self._recv_exact(2)
                    t1 = time.perf_counter_ns()
                    opcode, ln = b0 & 0x0F, b1 & 0x7F
                    if ln == 126:
                        (ln,) = struct.unpack("!H", self._recv_exact(2))
                    elif ln == 127:
                        (ln,) = struct.unpack("!Q", self._recv_exact(8))
                    mask = self._recv_exact(4) if b1 & 0x80 else b"\0\0\0\0"
                    data = bytes(b ^ mask[j & 3] for j, b in enumerate(self._recv_exact(ln))) if ln else b""
                    if opcode == 0x9:
                        self._send(0xA, data)
                    elif opcode == 0xA and data == payload:
                        rtts.append((t1 - t0) / 1000.0)
                        break
                    elif opcode == 0x8:
                        raise EOFError
            except socket.timeout:
                lost += 1
            except (EOFError, OSError):
                lost += n - i
                break
            time.sleep(random.uniform(*gap))
        rtts.sort()
        return rtts, lost

    # -- receiving
    def _recv_exact(self, n):
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def run(self):
        try:
            while True:
                b0, b1 = self._recv_exact(2)
                opcode = b0 & 0x0F
                n = b1 & 0x7F
                if n == 126:
                    (n,) = struct.unpack("!H", self._recv_exact(2))
                elif n == 127:
                    (n,) = struct.unpack("!Q", self._recv_exact(8))
                mask = self._recv_exact(4) if b1 & 0x80 else None
                payload = self._recv_exact(n) if n else b""
                if mask:
                    payload = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
                if opcode == 0x9:
                    self.client_pings.append(now())
                    self._pinged_or_closed.set()
                    self._send(0xA, payload)
                elif opcode == 0x1:
                    text = payload.decode("utf-8", "replace")
                    self.server.on_text(self, text)
                elif opcode == 0x8:
                    try:
                        self._send(0x8, payload[:2])
                    except OSError:
                        pass
                    break
                # binary and continuation frames are ignored
        except (EOFError, OSError, ValueError):
            pass
        finally:
            try:
                self.sock.close()
            except OSError:
                pass
            self.closed.set()
            self._pinged_or_closed.set()
            self.server._on_closed(self)


class WsServer:
    """Threaded WebSocket server on 127.0.0.1:0. Echoes text messages.

    reject_next(n, how) makes the next n handshakes fail: how is 'http500' (a 500
    answer), 'close' (accept, then close without answering) or 'garbage'."""

    def __init__(self, host="127.0.0.1"):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, 0))
        self.lsock.listen(1024)
        self.lsock.settimeout(0.2)
        self.port = self.lsock.getsockname()[1]
        self.cond = threading.Condition()
        self.conns = {}  # path -> [Conn]
        self.open = set()
        self.handshakes = 0
        self.rejected = 0
        self._reject = []  # queue of 'how'
        self._stop = False
        self.take_over = set()  # paths whose connections are handed to taken.get() unread
        self.taken = queue.Queue()
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def stop(self):
        self._stop = True
        for c in list(self.open):
            c.abort()

    def reject_next(self, n, how="http500"):
        with self.cond:
            self._reject.extend([how] * n)

    def on_text(self, conn, text):
        conn.send_text(text)

    def _accept_loop(self):
        while not self._stop:
            try:
                sock, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._handshake, args=(sock,), daemon=True).start()
        self.lsock.close()

    def _handshake(self, sock):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(5)
            req = b""
            while b"\r\n\r\n" not in req:
                chunk = sock.recv(4096)
                if not chunk:
                    sock.close()
                    return
                req += chunk
                if len(req) > 65536:
                    raise ValueError("header too long")
            head, _, rest = req.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "/"
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            with self.cond:
                how = self._reject.pop(0) if self._reject else None
                if how:
                    self.rejected += 1
            if how == "close":
                sock.close()
                return
            if how == "garbage":
                sock.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
                sock.close()
                return
            if how:
                sock.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                sock.close()
                return
            key = headers.get("sec-websocket-key", "")
            accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
            sock.sendall(
                (
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
                ).encode()
            )
            sock.settimeout(None)
            conn = Conn(self, sock, path, now())
            conn._buf = rest
            with self.cond:
                self.handshakes += 1
                self.conns.setdefault(path, []).append(conn)
                self.open.add(conn)
                self.cond.notify_all()
            if path in self.take_over:
                self.taken.put(conn)
                return
        except (OSError, ValueError, IndexError):
            try:
                sock.close()
            except OSError:
                pass
            return
        conn.run()

    def _on_closed(self, conn):
        with self.cond:
            self.open.discard(conn)
            self.cond.notify_all()

    def count(self, path):
        with self.cond:
            return len(self.conns.get(path, []))

    def latest(self, path):
        with self.cond:
            lst = self.conns.get(path, [])
            return lst[-1] if lst else None

    def wait_conn(self, path, after, timeout):
        """Waits until path has more than `after` connections; returns the newest or None."""
        deadline = now() + timeout
        with self.cond:
            while len(self.conns.get(path, [])) <= after:
                left = deadline - now()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.conns[path][-1]


# --------------------------------------------------------------------------- proxy


class Proxy:
    """TCP proxy 127.0.0.1:port -> 127.0.0.1:target_port, one selector thread.

    New connections are always forwarded; blackhole() and cut() act on the live ones."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(256)
        self.lsock.setblocking(False)
        self.port = self.lsock.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.lsock, selectors.EVENT_READ, ("listen", None))
        self._wr, self._ww = socket.socketpair()
        self._wr.setblocking(False)
        self.sel.register(self._wr, selectors.EVENT_READ, ("wake", None))
        self._cmds = queue.Queue()
        self.pairs = []  # [client_sock, upstream_sock, blackholed]
        self._stop = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _call(self, fn, timeout=5):
        done = queue.Queue()
        self._cmds.put((fn, done))
        self._ww.send(b"x")
        return done.get(timeout=timeout)

    def blackhole(self):
        """Stops forwarding on every live connection (both sockets stay open). Returns the time."""

        def fn():
            for p in self.pairs:
                p[2] = True
            return now()

        return self._call(fn)

    def cut(self):
        """Resets (RST) both sides of every live connection. Returns the time."""

        def fn():
            for p in list(self.pairs):
                self._close_pair(p, rst=True)
            return now()

        return self._call(fn)

    def stop(self):
        self._stop = True
        try:
            self._ww.send(b"x")
        except OSError:
            pass

    def _close_pair(self, p, rst=False):
        if p not in self.pairs:
            return
        self.pairs.remove(p)
        for s in p[:2]:
            try:
                self.sel.unregister(s)
            except (KeyError, ValueError):
                pass
            if rst:
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            try:
                s.close()
            except OSError:
                pass

    def _loop(self):
        while not self._stop:
            for key, _ in self.sel.select(timeout=0.5):
                kind, p = key.data
                if kind == "wake":
                    try:
                        self._wr.recv(4096)
                    except OSError:
                        pass
                    while not self._cmds.empty():
                        fn, done = self._cmds.get()
                        done.put(fn())
                elif kind == "listen":
                    try:
                        c, _ = self.lsock.accept()
                    except OSError:
                        continue
                    try:
                        u = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
                    except OSError:
                        c.close()
                        continue
                    for s in (c, u):
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        s.settimeout(5)
                    pair = [c, u, False]
                    self.pairs.append(pair)
                    self.sel.register(c, selectors.EVENT_READ, ("c", pair))
                    self.sel.register(u, selectors.EVENT_READ, ("u", pair))
                else:
                    if p not in self.pairs:
                        continue
                    src = key.fileobj
                    dst = p[1] if kind == "c" else p[0]
                    try:
                        data = src.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        # EOF or error: close both sides (also when blackholed, once the
                        # client has given up, so the server-side socket is not leaked).
                        self._close_pair(p)
                        continue
                    if p[2]:
                        continue  # blackholed: swallow
                    try:
                        dst.sendall(data)
                    except OSError:
                        self._close_pair(p)
        for p in list(self.pairs):
            self._close_pair(p)
        self.lsock.close()


# --------------------------------------------------------------------------- /proc


def proc_stats(pid):
    """RSS/private memory (KiB), threads, fds, context switches and CPU ticks of pid,
    summed over all its threads. Returns None if the process is gone."""
    try:
        st = {}
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                st[k] = v.strip()
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu_ticks = int(fields[11]) + int(fields[12])  # utime + stime (14, 15 in proc(5))
        private = dirty = 0
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith(("Private_Clean:", "Private_Dirty:")):
                        private += int(line.split()[1])
                    if line.startswith("Private_Dirty:"):
                        dirty += int(line.split()[1])
        except OSError:
            private = dirty = None
        ctx = vol = 0
        by_thread = {}
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                name, n = "?", 0
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("Name:"):
                            name = line.split(None, 1)[1].strip() if len(line.split()) > 1 else "?"
                        elif line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                            n += int(line.split()[1])
                            if line.startswith("voluntary"):
                                vol += int(line.split()[1])
                ctx += n
                by_thread[f"{name}/{tid}"] = n
            except OSError:
                pass
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return {
            "rss_kib": int(st["VmRSS"].split()[0]),
            "private_kib": private,
            # What the process alone costs a swapless board: heap, stacks, relocated data.
            "private_dirty_kib": dirty,
            "threads": int(st["Threads"]),
            "fds": fds,
            "ctxsw": ctx,
            "ctxsw_voluntary": vol,
            "ctxsw_by_thread": by_thread,
            "cpu_ticks": cpu_ticks,
            "t": now(),
        }
    except (OSError, KeyError, ValueError, IndexError):
        return None


def rate(a, b):
    """Context switches/s and CPU % between two proc_stats samples."""
    dt = b["t"] - a["t"]
    by_thread = {k: round((v - a["ctxsw_by_thread"].get(k, 0)) / dt, 2) for k, v in b["ctxsw_by_thread"].items()}
    return {
        "ctxsw_per_s": (b["ctxsw"] - a["ctxsw"]) / dt,
        "ctxsw_voluntary_per_s": (b["ctxsw_voluntary"] - a["ctxsw_voluntary"]) / dt,
        "ctxsw_per_s_by_thread": by_thread,
        "cpu_pct": 100.0 * (b["cpu_ticks"] - a["cpu_ticks"]) / CLK_TCK / dt,
        "window_s": dt,
    }


# --------------------------------------------------------------------------- nginx


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=10):
    deadline = now() + timeout
    while now() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class Nginx:
    """nginx (foreground, one process) terminating TLS in front of 127.0.0.1:backend_port.

    The test CA and server certificate are made with the openssl CLI in a temp dir;
    ca_file is the PEM clients must trust."""

    def __init__(self, backend_port):
        if not shutil.which("nginx") and not os.path.exists("/usr/sbin/nginx"):
            raise RuntimeError("nginx is not installed: run scripts/install-peers.sh")
        self.dir = tempfile.mkdtemp(prefix="wsbeat-nginx-")
        subprocess.run([os.path.join(HERE, "nginx", "gen-certs.sh"), self.dir], check=True, timeout=60)
        self.ca_file = os.path.join(self.dir, "ca.pem")
        for _ in range(3):
            self.port = free_port()
            self.proc = subprocess.Popen(
                [os.path.join(HERE, "nginx", "run.sh"), self.dir, str(self.port), f"127.0.0.1:{backend_port}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            deadline = now() + 10
            while now() < deadline and self.proc.poll() is None:
                if wait_port(self.port, 0.2):
                    return
            self.stop()
        raise RuntimeError(f"nginx did not start; see {self.dir}/error.log")

    def stop(self):
        stop_proc(self.proc, 5)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def stop_proc(proc, timeout):
    """SIGTERM, then SIGKILL after `timeout` s; waits for the exit either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def percentile(sorted_vals, p):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_vals:
        return None
    k = math.ceil(p / 100.0 * len(sorted_vals)) - 1
    return sorted_vals[max(0, min(len(sorted_vals) - 1, k))]
