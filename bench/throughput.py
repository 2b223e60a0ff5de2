"""Data-path throughput of wsbeat beside the same peers as bench/bench.py. Run it with
bench/throughput.sh.

    python3 bench/throughput.py --wsbeat PATH --wsflood PATH [--quick] [--out target/bench/throughput.json]

For each client, message size (64 B and 4 KiB payloads) and direction, one trial is:

  down  server -> client stdout. The server (examples/wsflood.rs, Rust, raw frames
        written in 256 KiB batches) sends N text messages as fast as the socket takes
        them; this script reads the client's stdout (a pipe) and counts lines. Rate =
        lines / (last line read - server's first write).
  up    client stdin -> server. This script writes N lines to the client's stdin (a
        pipe, in 1 MiB writes, then EOF); the server counts the text messages that
        arrive and checks their sequence numbers. Rate = messages / (server's last
        message - first stdin write). EOF on stdin does not stop wsbeat, so the trial
        ends when the server has N messages, or the count has not moved for STALL s,
        or after TIMEOUT s; then the client gets SIGTERM.

Every message carries a 10-digit sequence number; "delivered" is what reached the
other end (up: the server's count once the client has exited; down: lines read once
the client has exited, checked against the expected byte count), so a client that
drops shows it. CPU is the client's utime + stime from /proc/PID/stat (all its
threads) between the start and the end of the transfer, per 100k messages.

The "ceiling" column is wsflood's own batching client (no flush per message, one write
per read) measured the same way: how fast this harness (server, stdin writer, stdout
counter) can go on this machine, so that no client's figure is the harness's limit.
The server's own CPU is recorded too (JSON).

wsbeat's local socket (--socket) is measured the same way, beside its stdin/stdout:
"wsbeat-socket" is wsbeat with one program on its socket (down: the program reads the
lines from the socket; up: it writes them to the socket, then shuts its writing side),
and "wsbeat-fanout8" has eight programs on the socket, each reading every message (down
only; rate = messages / time until the slowest of the eight has them all; delivered:
the fewest any of the eight got). Their stdin and stdout are /dev/null. The server
floods without pause, and the local socket has no backpressure downward by contract: a
program that falls --queue-bytes behind is disconnected (lagging) instead of slowing
the connection. So these columns run with --queue-bytes LOCAL_QUEUE_BYTES (64 MiB by
default, --local-queue-bytes) to measure the data path rather than this harness's
Python readers; a cell where a reader still fell that far behind shows LOST.

Clients connect straight to the server (no proxy), heartbeats off; each trial has its
own server process. Pipes are enlarged to 1 MiB (F_SETPIPE_SZ) for every client alike,
so the bench's reader and writer threads lag without stalling the client. Trials go
round-robin: repetitions outermost, clients in a new random order each time; the table
shows medians over REPS (delivered: the worst repetition).
"""

import argparse
import fcntl
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the peers' command lines, shared with the idle benchmark)
import wsharness as h  # noqa: E402

SEQ_DIGITS = 10
PIPE_SZ = 1 << 20
SIZES = (64, 4096)


def set_pipe_size(f):
    try:
        fcntl.fcntl(f.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SZ)
    except OSError:
        pass


def cpu_s(pid):
    """utime + stime of the whole process (all threads, live and exited), seconds; the
    kernel reports it in clock ticks (10 ms), so a difference is good to +-0.01 s."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / h.CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


def sched_s(pid):
    """Time on CPU of the live threads, from /proc/PID/task/*/schedstat (ns): a finer
    cross-check of cpu_s (JSON only; misses threads that have exited)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        return None
    return total / 1e9


def line_block(start, n, size):
    """Lines start..start+n-1: 10-digit sequence number, 'x' up to `size` bytes, '\\n'."""
    pad = b"x" * (size - SEQ_DIGITS) + b"\n"
    return b"".join(b"%010d" % i + pad for i in range(start, start + n))


class Server:
    """examples/wsflood.rs `server`, one process per trial; its events go to a queue-like
    dict guarded by a condition."""

    def __init__(self, wsflood, mode, count, size):
        self.proc = subprocess.Popen([wsflood, "server", "--mode", mode, "--count", str(count), "--size", str(size)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.cond = threading.Condition()
        self.events = {}  # kind -> list of field lists
        self.last_count_t = None  # bench time of the last progress seen
        self.count = 0
        threading.Thread(target=self._read, daemon=True).start()
        f = self.wait("listening", 10)
        if f is None:
            self.stop()
            raise RuntimeError("wsflood server did not start: " + self.proc.stderr.read(2000).decode(errors="replace"))
        self.port = int(f[0])

    def _read(self):
        for raw in self.proc.stdout:
            parts = raw.decode().split()
            if not parts:
                continue
            with self.cond:
                self.events.setdefault(parts[0], []).append(parts[1:])
                if parts[0] in ("count", "done", "first"):
                    self.count = int(parts[1]) if parts[0] != "first" else max(self.count, 1)
                    self.last_count_t = time.monotonic()
                self.cond.notify_all()
        with self.cond:
            self.events.setdefault("eof", []).append([])
            self.cond.notify_all()

    def wait(self, kind, timeout):
        """Fields of the first `kind` event, waiting up to timeout s; None if none."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while kind not in self.events:
                left = deadline - time.monotonic()
                if left <= 0 or "eof" in self.events:
                    return None
                self.cond.wait(left)
            return self.events[kind][0]

    def send(self, line):
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            pass

    def final(self):
        """quit, then the `final` event: (count, seq_errors, t_first, t_last, bytes, conns)."""
        self.send("quit")
        f = self.wait("final", 5)
        self.stop()
        if f is None:
            return None
        return int(f[0]), int(f[1]), float(f[2]), float(f[3]), int(f[4]), int(f[5])

    def stop(self):
        h.stop_proc(self.proc, 3)


class StdoutCounter(threading.Thread):
    """Counts the lines a client writes to stdout; notes when the n-th arrives."""

    def __init__(self, f, n, size):
        super().__init__(daemon=True)
        self.f, self.n, self.size = f, n, size
        self.lines = 0
        self.bytes = 0
        self.tail = b""  # the last 2 lines' worth of bytes, for the final sequence check
        self.t_last = None  # when the latest line arrived
        self.t_nth = None
        self.done = threading.Event()

    def run(self):
        fd = self.f.fileno()
        keep = 2 * (self.size + 1)
        while True:
            try:
                b = os.read(fd, PIPE_SZ)
            except OSError:
                b = b""
            if not b:
                break
            k = b.count(b"\n")
            self.bytes += len(b)
            self.tail = (self.tail + b)[-keep:] if len(b) < keep else b[-keep:]
            if k:
                self.lines += k
                self.t_last = time.monotonic()
                if self.t_nth is None and self.lines >= self.n:
                    self.t_nth = self.t_last
                    self.done.set()
        self.done.set()

    def last_seq(self):
        lines = self.tail.split(b"\n")
        try:
            return int(lines[-2][:SEQ_DIGITS]) if len(lines) >= 2 else None
        except ValueError:
            return None


def start_client(client, url, direction, logf):
    env = {k: v for k, v in os.environ.items() if k not in bench.CA_ENV_REMOVED}
    env.update(client.env)
    argv = client.argv_fn(url, False, None)
    local = getattr(client, "local", None)
    if local:
        # The programs use the socket; wsbeat's own stdin and stdout stay unused.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=logf, env=env)
        return proc, argv
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE if direction == "down" else subprocess.DEVNULL,
                            stderr=logf, env=env)
    set_pipe_size(proc.stdin)
    if proc.stdout:
        set_pipe_size(proc.stdout)
    return proc, argv


def connect_local(path, k, timeout=10):
    """k programs connected to wsbeat's local socket at path."""
    deadline = time.monotonic() + timeout
    socks = []
    while len(socks) < k:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, PIPE_SZ)
            socks.append(s)
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    return socks


class SocketWriter:
    """What the stdin pipe is for the other clients: lines written to the first program's
    socket, then its writing side shut down (its EOF)."""

    def __init__(self, sock):
        self.sock = sock

    def write(self, data):
        self.sock.sendall(data)

    def flush(self):
        pass

    def close(self):
        self.sock.shutdown(socket.SHUT_WR)


def trial(client, direction, size, n, args, logdir, rep):
    """One transfer of n messages of `size` bytes; returns a result dict."""
    res = {"client": client.name, "direction": direction, "size": size, "sent": n, "rep": rep}
    srv = Server(args.wsflood, direction, n, size)
    logf = open(os.path.join(logdir, f"throughput-{client.name}-{direction}-{size}.log"), "ab")
    url = f"ws://127.0.0.1:{srv.port}/{client.name}-{direction}-{size}"
    proc = None
    socks = []
    local = getattr(client, "local", None)
    try:
        proc, argv = start_client(client, url, direction, logf)
        res["argv"] = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(argv))
        if local:
            socks = connect_local(local["path"], local["programs"] if direction == "down" else 1)
        if srv.wait("open", 15) is None:
            res["error"] = "did not connect within 15 s"
            return res
        # Let the client finish its own connect handling (a Python or Node client drops
        # stdin lines that come before it has noted the connection).
        time.sleep(0.3)
        deadline = time.monotonic() + args.timeout
        if direction == "down":
            counters = [StdoutCounter(f, n, size) for f in (socks or [proc.stdout])]
            for counter in counters:
                counter.start()
            counter = counters[0]
            c0, s0, x0 = cpu_s(proc.pid), cpu_s(srv.proc.pid), sched_s(proc.pid)
            t_go = time.monotonic()
            srv.send("go")
            # Wait for the n-th line (at every program), or no new line for STALL s, or
            # the timeout.
            while not all(c.done.wait(0.1) for c in counters):
                now = time.monotonic()
                if now > deadline:
                    res["error"] = f"timeout after {args.timeout} s"
                    break
                if now - max(c.t_last or t_go for c in counters) > args.stall:
                    res["error"] = f"stalled: no new line for {args.stall} s"
                    break
                if proc.poll() is not None:
                    res["error"] = f"client exited with {proc.returncode}"
                    break
            c1, s1, x1 = cpu_s(proc.pid), cpu_s(srv.proc.pid), sched_s(proc.pid)
            ends = [c.t_nth or c.t_last for c in counters]
            t_end = None if None in ends else max(ends)
            start = srv.wait("start", 1)
            t0 = float(start[0]) if start else None
            h.stop_proc(proc, 3)
            for c in counters:
                c.join(5)  # the client has exited: its stdout (or socket) is at EOF
            counter = min(counters, key=lambda c: c.lines)
            res["delivered"] = counter.lines
            res["bytes_ok"] = all(c.bytes == n * (size + 1) for c in counters)
            res["last_seq"] = counter.last_seq()
            res["in_order"] = res["bytes_ok"] and all(c.last_seq() == n - 1 for c in counters)
            counted = counter.lines if any(c.t_nth is None for c in counters) else n
            fin = srv.final()
            res["connections"] = fin[5] if fin else None
        else:
            done_writing = threading.Event()

            sink = SocketWriter(socks[0]) if socks else proc.stdin

            def writer():
                try:
                    block = max(1, (1 << 20) // (size + 1))
                    for i in range(0, n, block):
                        sink.write(line_block(i, min(block, n - i), size))
                        sink.flush()
                    sink.close()
                except OSError:
                    pass
                done_writing.set()

            c0, s0, x0 = cpu_s(proc.pid), cpu_s(srv.proc.pid), sched_s(proc.pid)
            t0 = time.monotonic()
            wt = threading.Thread(target=writer, daemon=True)
            wt.start()
            with srv.cond:
                srv.last_count_t = t0
            while srv.wait("done", 0.1) is None:
                now = time.monotonic()
                if now > deadline:
                    res["error"] = f"timeout after {args.timeout} s"
                    break
                if now - srv.last_count_t > args.stall:
                    res["error"] = f"stalled: the server's count did not move for {args.stall} s"
                    break
                if proc.poll() is not None:
                    res["error"] = f"client exited with {proc.returncode}"
                    break
            c1, s1, x1 = cpu_s(proc.pid), cpu_s(srv.proc.pid), sched_s(proc.pid)
            res["stdin_written"] = done_writing.is_set()
            h.stop_proc(proc, 3)
            fin = srv.final()
            if fin is None:
                res["error"] = "server gave no final count"
                return res
            count, seq_errors, _t_first, t_last, _b, conns = fin
            res.update({"delivered": count, "seq_errors": seq_errors, "connections": conns,
                        "in_order": seq_errors == 0 and count == n})
            done = srv.wait("done", 0)
            t_end = float(done[2]) if done else (t_last or None)
            counted = n if done else srv.count
        if t0 is not None and t_end is not None and t_end > t0 and counted:
            res["seconds"] = t_end - t0
            res["msg_per_s"] = counted / (t_end - t0)
        if c0 is not None and c1 is not None and counted:
            res["cpu_s"] = c1 - c0
            res["cpu_s_per_100k"] = (c1 - c0) * 100000 / counted
        if x0 is not None and x1 is not None and counted:
            res["sched_cpu_s_per_100k"] = (x1 - x0) * 100000 / counted
        if s0 is not None and s1 is not None:
            res["server_cpu_s"] = s1 - s0
        return res
    finally:
        if proc is not None:
            h.stop_proc(proc, 3)
        for sock in socks:
            sock.close()
        srv.stop()
        logf.close()


def make_clients(args):
    ns = types.SimpleNamespace(wsbeat=args.wsbeat, wsbeat_notls="none", wsbeat_static="none", skip=args.skip)
    clients = [c for c in bench.make_clients(ns) if not c.build_variant]
    # wsbeat, websocat (the reference of issue 9), Python, Node, then the ceiling.
    clients.sort(key=lambda c: ["wsbeat", "websocat", "python-websockets", "node-ws"].index(c.name)
                 if c.name in ("wsbeat", "websocat", "python-websockets", "node-ws") else 9)
    wsbeat = next((c for c in clients if c.name == "wsbeat"), None)
    if wsbeat and "socket" not in args.skip:
        for name, programs, label in (("wsbeat-socket", 1, "local socket, 1 program"),
                                      ("wsbeat-fanout8", 8, "local socket, 8 programs")):
            path = os.path.join("/tmp", f"wsbeat-bench-{os.getpid()}-{name}.sock")
            local = bench.Client(name, f"{wsbeat.version} ({label})",
                                 lambda url, hb, ca, p=path: wsbeat.argv_fn(url, hb, ca)
                                 + ["--socket", p, "--queue-bytes", str(args.local_queue_bytes)],
                                 dict(wsbeat.env))
            local.local = {"path": path, "programs": programs}
            local.down_only = programs > 1
            clients.append(local)
    if "ceiling" not in args.skip:
        clients.append(bench.Client("ceiling", "wsflood client (batching)",
                                    lambda url, hb, ca: [args.wsflood, "client", url]))
    return clients


def summarize(trials):
    """Medians over the repetitions of each (client, direction, size)."""
    out = {}
    for t in trials:
        out.setdefault((t["client"], t["direction"], t["size"]), []).append(t)
    summary = {}
    for (c, d, s), ts in out.items():
        def med(k):
            vals = [t[k] for t in ts if t.get(k) is not None]
            return statistics.median(vals) if vals else None
        worst = min(ts, key=lambda t: t.get("delivered", -1))
        summary.setdefault(c, {})[f"{d}-{s}"] = {
            "msg_per_s": med("msg_per_s"), "cpu_s_per_100k": med("cpu_s_per_100k"),
            "msg_per_s_all": [round(t["msg_per_s"]) if t.get("msg_per_s") else None for t in ts],
            "delivered_min": worst.get("delivered"), "sent": worst["sent"],
            "all_delivered": all(t.get("delivered") == t["sent"] and t.get("in_order") for t in ts),
            "errors": sorted({t["error"] for t in ts if t.get("error")}
                             | {f"{t['connections']} connections in one trial" for t in ts if (t.get("connections") or 1) > 1}),
            "server_cpu_pct": med("server_cpu_pct"),
        }
    return summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wsbeat", required=True, help="path of the wsbeat binary, or none")
    ap.add_argument("--wsflood", required=True, help="path of examples/wsflood (built with cargo --release)")
    ap.add_argument("--count", type=int, default=100000, help="messages per trial (default 100000)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--sizes", default="64,4096", help="payload sizes in bytes (default 64,4096)")
    ap.add_argument("--directions", default="down,up")
    ap.add_argument("--timeout", type=float, default=60, help="bound on one transfer, s")
    ap.add_argument("--stall", type=float, default=3, help="end a transfer whose count has not moved for this long, s")
    ap.add_argument("--quick", action="store_true", help="20k messages, 1 repetition")
    ap.add_argument("--skip", default="", help="comma list of clients to leave out: ceiling,python,node,websocat,socket")
    ap.add_argument("--local-queue-bytes", type=int, default=64 << 20,
                    help="--queue-bytes of the local-socket columns (default 64 MiB)")
    ap.add_argument("--out", default=os.path.join(h.REPO, "target", "bench", "throughput.json"))
    args = ap.parse_args()
    args.skip = set(filter(None, args.skip.split(",")))
    if args.quick:
        args.count, args.reps = 20000, 1
    sizes = [int(s) for s in args.sizes.split(",")]
    directions = args.directions.split(",")

    outdir = os.path.dirname(args.out)
    logdir = os.path.join(outdir, "logs")
    os.makedirs(logdir, exist_ok=True)
    t_start = time.monotonic()
    clients = make_clients(args)
    results = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                    "loadavg_start": os.getloadavg()},
        "settings": {"count": args.count, "reps": args.reps, "sizes": sizes, "directions": directions,
                     "timeout_s": args.timeout, "stall_s": args.stall, "pipe_size": PIPE_SZ},
        "clients": {c.name: {"version": c.version} for c in clients},
        "trials": [],
    }
    print(f"throughput: {len(clients)} clients x {len(directions)} directions x {len(sizes)} sizes x "
          f"{args.reps} reps, {args.count} messages each ...", file=sys.stderr)
    for rep in range(args.reps):
        for d in directions:
            for s in sizes:
                order = list(clients)
                random.shuffle(order)
                for c in order:
                    if d != "down" and getattr(c, "down_only", False):
                        continue
                    r = trial(c, d, s, args.count, args, logdir, rep)
                    if r.get("seconds") and r.get("server_cpu_s") is not None:
                        r["server_cpu_pct"] = 100 * r["server_cpu_s"] / r["seconds"]
                    results["trials"].append(r)
                    print(f"  rep {rep + 1} {d:4} {s:5} B {c.name:18} "
                          f"{fmt_rate(r.get('msg_per_s')):>9} msg/s  {fmt(r.get('cpu_s_per_100k'), 2):>5} CPU-s/100k  "
                          f"{r.get('delivered', '-')}/{r['sent']}"
                          + (f"  ({r['error']})" if r.get("error") else ""), file=sys.stderr)
    results["summary"] = summarize(results["trials"])
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["elapsed_s"] = round(time.monotonic() - t_start, 1)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print_table(results, clients, directions, sizes)
    print(f"\nJSON: {args.out}  (client logs: {logdir}/throughput-*; {results['elapsed_s']} s)")


def fmt(v, nd=1):
    return "-" if v is None else f"{v:.{nd}f}"


def fmt_rate(v):
    return "-" if v is None else f"{v / 1000:.0f}k" if v >= 10000 else f"{v / 1000:.1f}k"


def print_table(res, clients, directions, sizes):
    names = [c.name for c in clients]
    summ = res["summary"]
    rows = [("version", lambda n: res["clients"][n]["version"])]
    for d in directions:
        for s in sizes:
            key = f"{d}-{s}"
            label = f"{'server -> stdout' if d == 'down' else 'stdin -> server'} {s} B"

            def lost(n, key=key):
                e = summ.get(n, {}).get(key)
                return bool(e) and not e["all_delivered"]

            def cell(n, k, key=key):
                return summ.get(n, {}).get(key, {}).get(k)

            def delivered(n, key=key):
                e = summ.get(n, {}).get(key)
                if not e or e["delivered_min"] is None:
                    return None
                mark = "" if e["all_delivered"] else " LOST" if e["delivered_min"] < e["sent"] else " ?"
                return f"{e['delivered_min']}/{e['sent']}{mark}"

            rows += [
                (f"{label}: msg/s", lambda n, cell=cell, lost=lost:
                    fmt_rate(cell(n, "msg_per_s")) + ("*" if lost(n) else "")),
                (f"{label}: CPU-s/100k", lambda n, cell=cell, lost=lost:
                    fmt(cell(n, "cpu_s_per_100k"), 2) + ("*" if lost(n) else "")),
                (f"{label}: delivered", delivered),
            ]
    table = []
    for label, fn in rows:
        vals = []
        for n in names:
            try:
                v = fn(n)
            except (KeyError, TypeError, AttributeError):
                v = None
            vals.append(str(v) if v not in (None, "") else "-")
        table.append((label, vals))
    width = max(len(r[0]) for r in rows)
    colw = [max(len(n), *(len(vals[i]) for _, vals in table)) for i, n in enumerate(names)]
    print("| " + "metric".ljust(width) + " | " + " | ".join(n.ljust(w) for n, w in zip(names, colw)) + " |")
    print("|" + "-" * (width + 2) + "|" + "|".join("-" * (w + 2) for w in colw) + "|")
    for label, vals in table:
        print("| " + label.ljust(width) + " | " + " | ".join(v.ljust(w) for v, w in zip(vals, colw)) + " |")
    print()
    print("Medians over the repetitions; delivered: the worst one. LOST: fewer messages arrived than were sent;\n"
          "*: then msg/s and CPU-s/100k count the delivered messages only (goodput, cost per delivered message).")
    for n in names:
        for key, e in summ.get(n, {}).items():
            if e["errors"]:
                print(f"note: {n} {key}: {'; '.join(e['errors'])}")
    srv = [e["server_cpu_pct"] for n in names for e in summ.get(n, {}).values() if e.get("server_cpu_pct") is not None]
    if srv:
        print(f"note: server (wsflood) CPU during the transfers: at most {max(srv):.0f} % of one core (median per cell)")


if __name__ == "__main__":
    main()
