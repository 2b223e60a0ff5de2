"""wsbeat benchmark beside the clients users would otherwise pick. Run it with bench/run.sh.

    python3 bench/bench.py --wsbeat PATH [--quick] [--out target/bench/results.json]

All clients run the same way in one run, against one local server (bench/wsharness.py),
each through its own TCP proxy that the benchmark controls, with a 1 s heartbeat and a
3 s pong timeout:

  idle      RSS, private memory and threads after SETTLE s connected; context switches/s
            (voluntary + nonvoluntary, summed over /proc/PID/task/*) and CPU (utime+stime)
            over WINDOW s idle; with the heartbeat on, with it off, and over wss:// through
            nginx terminating TLS with a test CA. All instances run at the same time.
  latency   server Ping -> client Pong round trip, measured by the server, PINGS pings
            4-8 ms apart per client, connected straight to the server, round-robin over
            the clients in blocks of 50.
  blackhole once the connection has carried a heartbeat, and at a random heartbeat phase,
            the proxy keeps both sockets open and forwards nothing; time until the client
            has a new connection established (server-side handshake done), TRIALS trials,
            next to the bound ping-interval + pong-timeout + 0.2 s.
  size      size of the (stripped) binaries.

With --wsbeat-notls PATH, the ws://-only build of wsbeat (cargo --no-default-features, no
OpenSSL linked) joins the ws:// idle measurements (heartbeat on and off) and the size row.
With --wsbeat-static PATH, a wsbeat linked with the system's static OpenSSL (libssl.a,
libcrypto.a) joins the idle measurements (ws:// and wss://) and the size row: what the
default build's RSS would be without loading the shared OpenSSL.

Every client runs with the CA variables of an interactive shell removed from its
environment (CA_ENV_REMOVED: SSL_CERT_FILE, SSL_CERT_DIR, NIX_SSL_CERT_FILE,
NODE_EXTRA_CA_CERTS), as under a systemd service, so each finds the system roots its own
default way. For wss:// the test CA is given through each client's CA option; websocat has
none, so it alone gets SSL_CERT_DIR naming a hashed directory with only the test CA; its
default CA file (the system bundle) still loads as usual.

Python standard library only. Bounded: about 2 minutes (about 40 s with --quick).
"""

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wsharness as h  # noqa: E402

PING_S = 1.0
CA_ENV_REMOVED = ("SSL_CERT_FILE", "SSL_CERT_DIR", "NIX_SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS")
PONG_TIMEOUT_S = 3.0
BOUND_S = PING_S + PONG_TIMEOUT_S + 0.2


class Client:
    """One client program and how to start it."""

    def __init__(self, name, version, argv_fn, env=None, ws_only=False, ca_env_fn=None, build_variant=False):
        self.name = name
        self.version = version
        self.argv_fn = argv_fn  # (url, heartbeat_on, ca_file) -> argv
        self.env = env or {}
        # Joins only the ws:// idle measurements (the no-TLS build).
        self.ws_only = ws_only
        # Another build of wsbeat: idle and size only, not latency or blackhole, where it
        # would only repeat the default build's figures.
        self.build_variant = build_variant
        # ca_file -> extra environment, for a client with no CA option of its own.
        self.ca_env_fn = ca_env_fn


def hashed_ca_dir(ca_file):
    """A directory holding ca_file under its OpenSSL subject-hash name (<hash>.0)."""
    d = os.path.join(os.path.dirname(ca_file), "hashed")
    if not os.path.isdir(d):
        os.makedirs(d)
        hsh = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", ca_file],
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        shutil.copy(ca_file, os.path.join(d, hsh + ".0"))
    return d


def make_clients(args):
    peers = os.path.join(h.REPO, "target", "peers")
    py = os.path.join(peers, "venv", "bin", "python")
    node_modules = os.path.join(peers, "node", "node_modules")
    websocat = os.path.join(peers, "websocat", "bin", "websocat")
    clients = []

    def wsbeat_argv(url, hb, ca):
        a = [args.wsbeat, url, "--pong-timeout", "3s", "--backoff-initial", "50ms"]
        a += ["--ping-interval", "1s" if hb else "0"]
        if ca:
            a += ["--ca-file", ca]
        return a

    def wsbeat_version(path):
        return subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout.strip() or "?"

    if args.wsbeat != "none":
        clients.append(Client("wsbeat", wsbeat_version(args.wsbeat), wsbeat_argv, {"RUST_LOG": "info"}))

    # Other builds of wsbeat: idle and size rows only; the no-TLS one also has no wss://.
    for name, path, label, ws_only in (("wsbeat-static", args.wsbeat_static, "static OpenSSL", False),
                                       ("wsbeat-notls", args.wsbeat_notls, "no TLS build", True)):
        if path != "none":
            argv = lambda url, hb, ca, p=path: [p] + wsbeat_argv(url, hb, ca)[1:]  # noqa: E731
            clients.append(Client(name, f"{wsbeat_version(path)} ({label})", argv, {"RUST_LOG": "info"},
                                  ws_only=ws_only, build_variant=True))

    if os.path.exists(py) and "python" not in args.skip:

        def py_argv(url, hb, ca):
            a = [py, os.path.join(h.HERE, "peers", "py_client.py"), url]
            a += ["--ping-interval", "1" if hb else "0", "--ping-timeout", "3" if hb else "0"]
            if ca:
                a += ["--ca-file", ca]
            return a

        v = subprocess.run([py, "-c", "import websockets; print(websockets.__version__)"],
                           capture_output=True, text=True, timeout=20).stdout.strip()
        clients.append(Client("python-websockets", f"websockets {v}", py_argv))
    else:
        print("bench: Python websockets missing (scripts/install-peers.sh); skipped", file=sys.stderr)

    if os.path.exists(os.path.join(node_modules, "ws")) and shutil.which("node") and "node" not in args.skip:

        def node_argv(url, hb, ca):
            a = ["node", os.path.join(h.HERE, "peers", "node_client.js"), url]
            a += ["--ping-interval", "1000" if hb else "0", "--pong-timeout", "3000", "--reconnect-delay", "50"]
            if ca:
                a += ["--ca-file", ca]
            return a

        v = subprocess.run(["node", "-p", "process.version + ' ws ' + require('ws/package.json').version"],
                           capture_output=True, text=True, timeout=20, env={**os.environ, "NODE_PATH": node_modules}).stdout.strip()
        clients.append(Client("node-ws", v, node_argv, {"NODE_PATH": node_modules}))
    else:
        print("bench: Node ws missing (scripts/install-peers.sh); skipped", file=sys.stderr)

    if os.path.exists(websocat) and "websocat" not in args.skip:

        def websocat_argv(url, hb, ca):
            a = [websocat, "-t"]
            if hb:
                a += ["--ping-interval", "1", "--ping-timeout", "3"]
            return a + ["-", "autoreconnect:" + url]

        v = subprocess.run([websocat, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        # websocat has no CA option: OpenSSL finds the test CA through SSL_CERT_DIR (a
        # hashed dir holding only it); its default CA file (the system bundle) still
        # loads as in a service. (A ':'-list adding the system dir did not verify.)
        c = Client("websocat", v, websocat_argv,
                   ca_env_fn=lambda ca: {"SSL_CERT_DIR": hashed_ca_dir(ca)})
        clients.append(c)
    else:
        print("bench: websocat not installed (scripts/install-peers.sh --websocat); skipped", file=sys.stderr)
    return clients


class Instance:
    """A running client process."""

    def __init__(self, client, variant, url, hb, ca, logdir):
        self.client = client
        self.variant = variant
        self.path = url.split("/", 3)[3] if url.count("/") >= 3 else ""
        self.path = "/" + self.path
        env = {k: v for k, v in os.environ.items() if k not in CA_ENV_REMOVED}
        env.update(client.env)
        if ca and client.ca_env_fn:
            env.update(client.ca_env_fn(ca))
        self.env_added = {k: v for k, v in env.items() if os.environ.get(k) != v}
        self.log = open(os.path.join(logdir, f"{client.name}-{variant}.log"), "wb")
        self.argv = client.argv_fn(url, hb, ca)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=self.log, env=env)

    def stop(self):
        h.stop_proc(self.proc, 3)
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.log.close()


def fmt(v, nd=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wsbeat", required=True, help="path of the wsbeat binary, or none")
    ap.add_argument("--wsbeat-notls", default="none",
                    help="path of a ws://-only wsbeat (--no-default-features), or none")
    ap.add_argument("--wsbeat-static", default="none",
                    help="path of a wsbeat linked with static OpenSSL, or none")
    ap.add_argument("--quick", action="store_true", help="short windows, for development")
    ap.add_argument("--out", default=os.path.join(h.REPO, "target", "bench", "results.json"))
    ap.add_argument("--phases", default="idle,latency,blackhole", help="comma list of phases to run")
    ap.add_argument("--skip", default="", help="comma list of peers to leave out: python,node,websocat")
    args = ap.parse_args()
    args.skip = set(filter(None, args.skip.split(",")))
    args.phases = set(filter(None, args.phases.split(",")))
    settle, window, pings, trials = (5, 10, 100, 2) if args.quick else (20, 30, 500, 5)

    outdir = os.path.dirname(args.out)
    logdir = os.path.join(outdir, "logs")
    os.makedirs(logdir, exist_ok=True)
    t_start = time.monotonic()
    clients = make_clients(args)
    server = h.WsServer()
    nginx = h.Nginx(server.port)
    results = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "settings": {"ping_interval_s": PING_S, "pong_timeout_s": PONG_TIMEOUT_S, "settle_s": settle,
                     "window_s": window, "pings": pings, "blackhole_trials": trials, "quick": args.quick,
                     "env_removed": list(CA_ENV_REMOVED)},
        "clients": {},
    }
    instances = []
    proxies = []
    try:
        # ---------------------------------------------------------------- idle
        for c in clients:
            results["clients"][c.name] = {"version": c.version}
        variants = [("ws-hb", True, False), ("ws-nohb", False, False), ("wss-hb", True, True)]
        if "idle" not in args.phases:
            variants = variants[:1] if "blackhole" in args.phases else []
        else:
            print(f"bench: {len(clients)} clients; idle phase {settle}+{window} s ...", file=sys.stderr)
        for c in clients:
            for variant, hb, tls in variants:
                if tls and c.ws_only:
                    continue
                path = f"/{c.name}-{variant}"
                if tls:
                    url = f"wss://127.0.0.1:{nginx.port}{path}"
                    ca = nginx.ca_file
                else:
                    px = h.Proxy(server.port)
                    proxies.append(px)
                    url = f"ws://127.0.0.1:{px.port}{path}"
                    ca = None
                inst = Instance(c, variant, url, hb, ca, logdir)
                inst.proxy = None if tls else px
                inst.hb = hb
                instances.append(inst)
        for inst in instances:
            if not server.wait_conn(inst.path, 0, 15):
                inst.error = "did not connect within 15 s"
                print(f"bench: {inst.client.name} {inst.variant}: {inst.error}", file=sys.stderr)
            else:
                inst.error = None
        if "idle" in args.phases:
            idle_phase(args, server, instances, results, settle, window)
        # stop the heartbeat-off and TLS instances and the other builds; keep ws-hb for the
        # blackhole phase
        for inst in instances:
            if inst.variant != "ws-hb" or inst.client.build_variant:
                inst.stop()
        nginx.cleanup()

        full = [c for c in clients if not c.build_variant]
        if "latency" in args.phases:
            latency_phase(full, server, results, pings, logdir)
        if "blackhole" in args.phases:
            blackhole_phase(server, instances, results, trials)

        # ---------------------------------------------------------------- size
        if "wsbeat" in results["clients"]:
            results["clients"]["wsbeat"]["binary_bytes"] = os.path.getsize(args.wsbeat)
        for name, path in (("wsbeat-notls", args.wsbeat_notls), ("wsbeat-static", args.wsbeat_static)):
            if name in results["clients"]:
                results["clients"][name]["binary_bytes"] = os.path.getsize(path)
        ws = os.path.join(h.REPO, "target", "peers", "websocat", "bin", "websocat")
        if "websocat" in results["clients"] and os.path.exists(ws):
            tmp = os.path.join(outdir, "websocat.stripped")
            shutil.copy(ws, tmp)
            subprocess.run(["strip", tmp], timeout=30, check=False)
            results["clients"]["websocat"]["binary_bytes"] = os.path.getsize(tmp)
            os.remove(tmp)
    finally:
        for inst in instances:
            inst.stop()
        for p in proxies:
            p.stop()
        server.stop()
        nginx.cleanup()

    results["elapsed_s"] = round(time.monotonic() - t_start, 1)
    results["goals"] = goals(results)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print_table(results)
    print(f"\nJSON: {args.out}  (logs: {logdir}; {results['elapsed_s']} s)")


def idle_phase(args, server, instances, results, settle, window):
    """RSS, threads, context switches and CPU of every idle instance."""
    time.sleep(settle)
    snap1 = {id(i): h.proc_stats(i.proc.pid) for i in instances}
    pings_before = {id(i): len(server.latest(i.path).client_pings) if server.latest(i.path) else 0 for i in instances}
    time.sleep(window)
    snap2 = {id(i): h.proc_stats(i.proc.pid) for i in instances}
    for inst in instances:
        r = results["clients"].setdefault(inst.client.name, {"version": inst.client.version})
        a, b = snap1[id(inst)], snap2[id(inst)]
        conns = server.count(inst.path)
        entry = {"argv": " ".join(os.path.basename(x) if i == 0 else x for i, x in enumerate(inst.argv)),
                 "env_added": inst.env_added, "error": inst.error, "connections": conns}
        if a and b:
            entry.update({"rss_kib": a["rss_kib"], "private_kib": a["private_kib"],
                          "private_dirty_kib": a.get("private_dirty_kib"), "threads": a["threads"],
                          "fds": a["fds"], **h.rate(a, b)})
            last = server.latest(inst.path)
            if last:
                entry["client_pings_per_s"] = (len(last.client_pings) - pings_before[id(inst)]) / (b["t"] - a["t"])
        else:
            entry["error"] = entry["error"] or "process exited"
        if conns != 1:
            entry["note"] = f"{conns} connections during the idle phase (expected 1)"
        r[inst.variant] = entry


def latency_phase(clients, server, results, pings, logdir):
    # ---------------------------------------------------------------- latency
    # All clients connected straight to the server at once (idle but for their own
    # 1 s heartbeat); pings go round-robin in blocks of 50, in a new random order each
    # round, so a burst of noise from elsewhere on the machine is shared out fairly.
    print(f"bench: latency, {pings} server pings per client ...", file=sys.stderr)
    lat = {}
    lat_insts = []
    try:
        for c in clients:
            path = f"/{c.name}-lat"
            server.take_over.add(path)
            lat_insts.append(Instance(c, "lat", f"ws://127.0.0.1:{server.port}{path}", True, None, logdir))
        deadline = time.monotonic() + 15
        while len(lat) < len(clients) and time.monotonic() < deadline:
            try:
                conn = server.taken.get(timeout=max(0.01, deadline - time.monotonic()))
            except Exception:
                break
            name = conn.path[1:-len("-lat")]
            if name in lat:
                conn.abort()
            else:
                lat[name] = {"conn": conn, "rtts": [], "lost": 0}
        time.sleep(1.0)
        block = 50
        for _ in range(max(1, pings // block)):
            order = list(lat)
            random.shuffle(order)
            for name in order:
                rtts, lost = lat[name]["conn"].measure_sync(block)
                lat[name]["rtts"] += rtts
                lat[name]["lost"] += lost
        for c in clients:
            if c.name not in lat:
                results["clients"][c.name]["latency"] = {"error": "did not connect"}
                continue
            rtts = sorted(lat[c.name]["rtts"])
            results["clients"][c.name]["latency"] = {
                "n": len(rtts), "lost": lat[c.name]["lost"],
                "p50_us": h.percentile(rtts, 50), "p99_us": h.percentile(rtts, 99),
                "max_us": rtts[-1] if rtts else None,
            }
    finally:
        for inst in lat_insts:
            inst.stop()
        for v in lat.values():
            v["conn"].abort()
        while not server.taken.empty():
            server.taken.get().abort()



def blackhole_phase(server, instances, results, trials):
    # ---------------------------------------------------------------- blackhole
    print(f"bench: blackhole, {trials} trials per client ...", file=sys.stderr)
    hb_insts = [i for i in instances if i.variant == "ws-hb" and not i.client.build_variant and i.proc.poll() is None]

    def run_trials(inst):
        times = []
        for _ in range(trials):
            n = server.count(inst.path)
            conn = server.wait_conn(inst.path, n - 1, 10) if n else None
            if conn is None:
                times.append(None)
                continue
            # Steady state: the connection has carried a heartbeat (answered at once by
            # the server, so the client's backoff is reset), then a random phase.
            conn.wait_client_ping(5)
            time.sleep(0.05 + random.uniform(0.0, PING_S))
            n = server.count(inst.path)
            t0 = inst.proxy.blackhole()
            c = server.wait_conn(inst.path, n, 20)
            times.append(None if c is None else c.t_open - t0)
        results["clients"][inst.client.name]["blackhole"] = {
            "trials_s": times, "bound_s": BOUND_S,
            "max_s": max((t for t in times if t is not None), default=None),
            "within_bound": all(t is not None and t <= BOUND_S for t in times),
        }

    ths = [threading.Thread(target=run_trials, args=(i,)) for i in hb_insts]
    for t in ths:
        t.start()
    for t in ths:
        t.join(trials * 25)



def goals(res):
    cl = res["clients"]
    w = cl.get("wsbeat", {})
    peers = [n for n in cl if not n.startswith("wsbeat")]
    g = {}

    def get(name, *keys):
        d = cl.get(name, {})
        for k in keys:
            d = d.get(k) if isinstance(d, dict) else None
        return d

    for scheme in ("ws", "wss"):
        dirty = get("wsbeat", f"{scheme}-hb", "private_dirty_kib")
        g[f"private dirty <= 1.5 MiB ({scheme}://)"] = dirty is not None and dirty <= 1536
    rss = get("wsbeat-notls", "ws-hb", "rss_kib")
    g["idle RSS <= 4 MiB (ws://, --no-default-features)"] = rss is not None and rss <= 4096
    pv = get("wsbeat", "wss-hb", "private_kib")
    others = [get(p, "wss-hb", "private_kib") for p in peers]
    g["lowest private memory on wss://"] = pv is not None and all(o is None or pv < o for o in others)
    cs = get("wsbeat", "ws-hb", "ctxsw_per_s")
    g["<= 2.2 ctx switches/s, 1 s heartbeat"] = cs is not None and cs <= 2.2
    cs0 = get("wsbeat", "ws-nohb", "ctxsw_per_s")
    g["<= 0.1 ctx switches/s, heartbeat off"] = cs0 is not None and cs0 <= 0.1
    p99 = get("wsbeat", "latency", "p99_us")
    others = [get(p, "latency", "p99_us") for p in peers]
    g["server-ping p99 lower than every peer"] = p99 is not None and all(o is None or p99 < o for o in others)
    g["every blackhole trial within bound"] = bool(get("wsbeat", "blackhole", "within_bound"))
    return g


def print_table(res):
    cl = res["clients"]
    names = list(cl)
    rows = [
        ("version", lambda n: cl[n].get("version")),
        ("ws:// RSS MiB (hb 1 s)", lambda n: mib(cl[n].get("ws-hb", {}).get("rss_kib"))),
        ("ws:// private MiB", lambda n: mib(cl[n].get("ws-hb", {}).get("private_kib"))),
        ("ws:// private dirty MiB", lambda n: mib(cl[n].get("ws-hb", {}).get("private_dirty_kib"))),
        ("threads", lambda n: cl[n].get("ws-hb", {}).get("threads")),
        ("ctx switches/s (hb 1 s)", lambda n: fmt(cl[n].get("ws-hb", {}).get("ctxsw_per_s"), 2)),
        ("  of which voluntary", lambda n: fmt(cl[n].get("ws-hb", {}).get("ctxsw_voluntary_per_s"), 2)),
        ("CPU % (hb 1 s)", lambda n: fmt(cl[n].get("ws-hb", {}).get("cpu_pct"), 3)),
        ("client pings/s seen", lambda n: fmt(cl[n].get("ws-hb", {}).get("client_pings_per_s"), 2)),
        ("ws:// RSS MiB (hb off)", lambda n: mib(cl[n].get("ws-nohb", {}).get("rss_kib"))),
        ("ctx switches/s (hb off)", lambda n: fmt(cl[n].get("ws-nohb", {}).get("ctxsw_per_s"), 2)),
        ("CPU % (hb off)", lambda n: fmt(cl[n].get("ws-nohb", {}).get("cpu_pct"), 3)),
        ("wss:// RSS MiB", lambda n: mib(cl[n].get("wss-hb", {}).get("rss_kib"))),
        ("wss:// private MiB", lambda n: mib(cl[n].get("wss-hb", {}).get("private_kib"))),
        ("wss:// private dirty MiB", lambda n: mib(cl[n].get("wss-hb", {}).get("private_dirty_kib"))),
        ("wss:// threads", lambda n: cl[n].get("wss-hb", {}).get("threads")),
        ("wss:// ctx switches/s", lambda n: fmt(cl[n].get("wss-hb", {}).get("ctxsw_per_s"), 2)),
        ("server ping p50 us", lambda n: fmt(cl[n].get("latency", {}).get("p50_us"), 0)),
        ("server ping p99 us", lambda n: fmt(cl[n].get("latency", {}).get("p99_us"), 0)),
        ("server ping max us", lambda n: fmt(cl[n].get("latency", {}).get("max_us"), 0)),
        ("blackhole -> new conn s", lambda n: " ".join(fmt(t, 2) for t in cl[n].get("blackhole", {}).get("trials_s", []))),
        (f"  (bound {BOUND_S:.1f} s) max", lambda n: fmt(cl[n].get("blackhole", {}).get("max_s"), 2)),
        ("binary MiB (stripped)", lambda n: mib(cl[n].get("binary_bytes", 0) / 1024 if cl[n].get("binary_bytes") else None, 2)),
    ]
    width = max(len(r[0]) for r in rows)
    colw = [max(14, len(n)) for n in names]
    print("| " + "metric".ljust(width) + " | " + " | ".join(n.ljust(w) for n, w in zip(names, colw)) + " |")
    print("|" + "-" * (width + 2) + "|" + "|".join("-" * (w + 2) for w in colw) + "|")
    for label, fn in rows:
        vals = []
        for n in names:
            try:
                v = fn(n)
            except (KeyError, TypeError, AttributeError):
                v = None
            vals.append(str(v) if v not in (None, "") else "-")
        print("| " + label.ljust(width) + " | " + " | ".join(v.ljust(w) for v, w in zip(vals, colw)) + " |")
    notes = []
    for n in names:
        for variant in ("ws-hb", "ws-nohb", "wss-hb"):
            e = cl[n].get(variant, {})
            for k in ("error", "note"):
                if e.get(k):
                    notes.append(f"{n} {variant}: {e[k]}")
        if cl[n].get("latency", {}).get("lost"):
            notes.append(f"{n}: {cl[n]['latency']['lost']} server pings unanswered within 1 s")
    print()
    for k, ok in res["goals"].items():
        print(f"goal {'MET   ' if ok else 'NOT MET'}  {k}")
    for n in names:
        rss = cl[n].get("ws-hb", {}).get("rss_kib")
        if n.startswith("wsbeat-") and rss is not None:
            print(f"same goal, {cl[n]['version'].split('(')[-1].rstrip(')')}: idle RSS {rss} KiB"
                  f" ({'within' if rss <= 4096 else 'over'} 4 MiB)")
    for note in notes:
        print("note:", note)


def mib(kib, nd=1):
    return None if kib is None else f"{kib / 1024:.{nd}f}"


if __name__ == "__main__":
    main()
