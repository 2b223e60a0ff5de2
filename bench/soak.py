"""Soak: forced reconnect cycles against the real wsbeat binary; run it with scripts/soak.sh.

    python3 bench/soak.py --wsbeat PATH [--cycles 1000] [--out target/soak/results.json]

wsbeat connects through a TCP proxy to a local server (bench/wsharness.py). Each cycle
forces one reconnect, rotating through:
  close      the server sends a Close frame (codes 1000, 1001, 1011, 4000 in turn)
  rst        the proxy resets both TCP connections (SO_LINGER 0)
  blackhole  the proxy forwards nothing, both sockets stay open: only the heartbeat
             (ping-interval + pong-timeout) can notice
  handshake  the next handshake fails (HTTP 500 / closed before answering / not HTTP),
             then the connection is reset, so the client meets the failure
and waits (bounded) for the next established connection. Every second cycle also waits
until the new connection has carried a heartbeat (so the backoff resets, as in real life).

Open fds, threads and RSS are sampled when connected and idle: at the first connection,
after WARMUP cycles (the baseline: allocator pools and lazily made objects exist by then),
every 100 cycles, and at the end. Checks: end - baseline: zero fd and thread growth, RSS
growth < 256 KiB. Exit 0 only if every cycle reconnected and the checks hold.
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wsharness as h  # noqa: E402

KINDS = ["close", "rst", "blackhole", "handshake"]
CLOSE_CODES = [1000, 1001, 1011, 4000]
FAILS = ["http500", "close", "garbage"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wsbeat", required=True)
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--ping-interval-ms", type=int, default=50)
    ap.add_argument("--pong-timeout-ms", type=int, default=150)
    ap.add_argument("--out", default=os.path.join(h.REPO, "target", "soak", "results.json"))
    ap.add_argument("--rss-limit-kib", type=int, default=256)
    args = ap.parse_args()

    outdir = os.path.dirname(args.out)
    os.makedirs(outdir, exist_ok=True)
    log_path = os.path.join(outdir, "wsbeat.log")
    server = h.WsServer()
    proxy = h.Proxy(server.port)
    path = "/soak"
    argv = [
        args.wsbeat, f"ws://127.0.0.1:{proxy.port}{path}",
        "--ping-interval", f"{args.ping_interval_ms}ms", "--pong-timeout", f"{args.pong_timeout_ms}ms",
        "--backoff-initial", "10ms", "--backoff-max", "50ms", "--connect-timeout", "2s",
    ]
    log = open(log_path, "wb")
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log,
                            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")})
    t0 = time.monotonic()
    samples = []
    failures = []
    counts = {k: 0 for k in KINDS}
    detect = {k: [] for k in KINDS}

    def proven(conn, timeout=5.0):
        """Waits until conn has received a client heartbeat."""
        return conn.wait_client_ping(timeout)

    def sample(label, cycle):
        """proc_stats while connected and idle; retried until two reads agree."""
        conn = server.latest(path)
        if conn is not None:
            proven(conn)
        prev = None
        for _ in range(20):
            time.sleep(0.05)
            s = h.proc_stats(proc.pid)
            if s is None:
                break
            if prev and (s["fds"], s["threads"]) == (prev["fds"], prev["threads"]):
                break
            prev = s
        s = s or {}
        entry = {"label": label, "cycle": cycle, "fds": s.get("fds"), "threads": s.get("threads"),
                 "rss_kib": s.get("rss_kib"), "t_s": round(time.monotonic() - t0, 1)}
        samples.append(entry)
        return entry

    try:
        first = server.wait_conn(path, 0, 15)
        if not first:
            raise SystemExit(f"soak: wsbeat did not connect within 15 s; see {log_path}")
        start = sample("first connect", 0)
        baseline = start
        for i in range(args.cycles):
            if proc.poll() is not None:
                failures.append(f"cycle {i}: wsbeat exited with {proc.returncode}")
                break
            kind = KINDS[i % len(KINDS)]
            conn = server.latest(path)
            n = server.count(path)
            rejected = server.rejected
            t = time.monotonic()
            if kind == "close":
                conn.close_with(CLOSE_CODES[(i // len(KINDS)) % len(CLOSE_CODES)], "soak")
            elif kind == "rst":
                t = proxy.cut()
            elif kind == "blackhole":
                t = proxy.blackhole()
            else:
                server.reject_next(1, FAILS[(i // len(KINDS)) % len(FAILS)])
                t = proxy.cut()
            new = server.wait_conn(path, n, 10)
            if new is None:
                failures.append(f"cycle {i} ({kind}): no new connection within 10 s")
                break
            if kind == "handshake" and server.rejected == rejected:
                failures.append(f"cycle {i}: the handshake failure was not met")
            counts[kind] += 1
            detect[kind].append(new.t_open - t)
            if i % 2 == 1 and not proven(new):
                # Not fatal by itself (a fault may hit before the first heartbeat) but noted.
                pass
            done = i + 1
            if done == args.warmup:
                baseline = sample("baseline (after warm-up)", done)
            elif done % 100 == 0 and done != args.cycles:
                e = sample("progress", done)
                print(f"soak: {done}/{args.cycles} cycles, {e['t_s']} s, fds {e['fds']} "
                      f"threads {e['threads']} rss {e['rss_kib']} KiB", file=sys.stderr)
        end = sample("end", args.cycles)
    finally:
        h.stop_proc(proc, 5)
        proxy.stop()
        server.stop()
        log.close()

    elapsed = time.monotonic() - t0
    checks = {}
    if baseline.get("fds") is not None and end.get("fds") is not None:
        checks["fd growth == 0"] = end["fds"] - baseline["fds"] == 0
        checks["thread growth == 0"] = end["threads"] - baseline["threads"] == 0
        checks[f"RSS growth < {args.rss_limit_kib} KiB"] = end["rss_kib"] - baseline["rss_kib"] < args.rss_limit_kib
    else:
        checks["wsbeat alive at the end"] = False
    checks["every cycle reconnected"] = not failures
    stats = {}
    for k, v in detect.items():
        v = sorted(v)
        if v:
            stats[k] = {"n": len(v), "p50_ms": round(1000 * h.percentile(v, 50), 1),
                        "max_ms": round(1000 * v[-1], 1)}
    res = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(), "argv": " ".join(argv[1:]),
        "cycles": sum(counts.values()), "by_kind": counts, "reconnect_time": stats,
        "samples": samples, "checks": checks, "failures": failures, "elapsed_s": round(elapsed, 1),
        "server_handshakes": server.handshakes, "server_rejected": server.rejected,
    }
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)

    print(f"soak: {res['cycles']} reconnect cycles {counts} in {elapsed:.1f} s")
    print(f"{'sample':26} {'cycle':>6} {'fds':>5} {'threads':>7} {'rss KiB':>8}")
    for s in samples:
        print(f"{s['label']:26} {s['cycle']:>6} {s['fds']!s:>5} {s['threads']!s:>7} {s['rss_kib']!s:>8}")
    if baseline.get("rss_kib") is not None and end.get("rss_kib") is not None:
        print(f"growth end - baseline: fds {end['fds'] - baseline['fds']:+d}, threads "
              f"{end['threads'] - baseline['threads']:+d}, RSS {end['rss_kib'] - baseline['rss_kib']:+d} KiB"
              f" (vs first connect: RSS {end['rss_kib'] - start['rss_kib']:+d} KiB)")
    for k, v in stats.items():
        print(f"reconnect after {k:9}: p50 {v['p50_ms']} ms, max {v['max_ms']} ms (n={v['n']})")
    for f in failures:
        print("FAIL:", f)
    ok = all(checks.values())
    for k, v in checks.items():
        print(f"{'ok  ' if v else 'FAIL'} {k}")
    print(f"soak: {'passed' if ok else 'FAILED'}; JSON {args.out}; wsbeat log {log_path}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
