"""Lines lost per silent drop (issue 19): the driver behind bench/lossless.sh.

    python3 bench/lossless.py --wsbeat [LABEL=]PATH [--wsbeat ...] [--drops 20] [--rate 100]
                              [--peers python,node,websocat] [--out DIR]

Runs as root. Every client gets a rig of its own: two network namespaces joined by a
veth pair, the server (bench/lossless_server.py, Python websockets) in one, the client in
the other with numbered lines on its stdin at --rate lines/s. Every few seconds the
client's TCP connection goes silent: nftables in the device namespace drops that flow's
segments in both directions, for good (no FIN, no RST; its source port joins a set of
dead ports), as a carrier NAT that forgot the mapping does. Each client, with a 1 s
heartbeat and a 1 s pong timeout, finds the connection dead and reconnects over a new
flow, which passes. After --drops drops the lines stop, and the server's record is
tallied: lines lost (never received) per drop, duplicates, and the lines written between
each cut and the next connection (what was at risk).

The rigs run side by side; one run of 20 drops takes about two minutes.
"""

import argparse
import atexit
import json
import os
import signal
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.join(REPO, "target", "peers")
PYTHON = os.path.join(PEERS, "venv", "bin", "python")
NODE_MODULES = os.path.join(PEERS, "node", "node_modules")
WEBSOCAT = os.path.join(PEERS, "websocat", "bin", "websocat")

DEV, SRV, PORT = "10.233.0.1", "10.233.0.2", 8080
URL = f"ws://{SRV}:{PORT}/"
# Connected time before each cut: several heartbeats, so every client has settled.
FLOW = 3.0
TABLE = "lossless_bench"
# Namespaces are named PREFIX<pid>-<client>; those of a run that no longer exists are
# swept at start.
PREFIX = "wsbeat-lossless-"
RIGS = []


def run(*argv, input=None):
    subprocess.run(argv, input=input, text=True, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class Rig:
    """Two namespaces, `<name>-dev` and `<name>-srv`, and the blackhole's table."""

    def __init__(self, name):
        self.dev, self.srv = f"{name}-dev", f"{name}-srv"
        self.made = []
        RIGS.append(self)
        for ns in (self.dev, self.srv):
            run("ip", "netns", "add", ns)
            self.made.append(ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", self.dev, "link", "add", "veth0", "type", "veth",
            "peer", "name", "veth1", "netns", self.srv)
        for ns, link, addr in ((self.dev, "veth0", DEV), (self.srv, "veth1", SRV)):
            run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", link)
            run("ip", "-n", ns, "link", "set", link, "up")
        run("ip", "netns", "exec", self.dev, "nft", "-f", "-", input=f"""
table inet {TABLE} {{
    set dead {{ type inet_service; }}
    chain output {{
        type filter hook output priority 0; policy accept;
        ip daddr {SRV} tcp dport {PORT} tcp sport @dead drop
    }}
    chain input {{
        type filter hook input priority 0; policy accept;
        ip saddr {SRV} tcp sport {PORT} tcp dport @dead drop
    }}
}}
""")

    def established(self):
        """Local ports of the device's established connections to the server."""
        out = subprocess.run(["ip", "netns", "exec", self.dev, "cat", "/proc/net/tcp"],
                             capture_output=True, text=True, check=True).stdout
        want = f"{ip_hex(SRV)}:{PORT:04X}"
        ports = []
        for line in out.splitlines()[1:]:
            f = line.split()
            if len(f) > 3 and f[2] == want and f[3] == "01":
                ports.append(int(f[1].split(":")[1], 16))
        return ports

    def cut(self, port):
        run("ip", "netns", "exec", self.dev, "nft", "add", "element", "inet", TABLE,
            "dead", f"{{ {port} }}")

    def delete(self):
        for ns in self.made:
            for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                      text=True).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
        self.made = []


def sweep_stale():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        ns = line.split()[0] if line.split() else ""
        pid = ns[len(PREFIX):].split("-")[0] if ns.startswith(PREFIX) else ""
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)


def ip_hex(addr):
    """An IPv4 address as /proc/net/tcp prints it (the network-order word, native hex)."""
    octets = bytes(int(o) for o in addr.split("."))
    return f"{int.from_bytes(octets, sys.byteorder):08X}"


class Server:
    """bench/lossless_server.py in the rig's server namespace; its output parsed live."""

    def __init__(self, rig, log):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", rig.srv, PYTHON, os.path.join(REPO, "bench", "lossless_server.py"),
             SRV, str(PORT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        self.lock = threading.Lock()
        self.listening = threading.Event()
        self.upgrades = []  # arrival times
        self.counts = {}  # line number -> times received
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            f = line.split()
            with self.lock:
                if f[:1] == ["listening"]:
                    self.listening.set()
                elif f[:1] == ["upgrade"]:
                    self.upgrades.append(time.monotonic())
                elif f[:1] == ["text"] and len(f) == 3 and f[2].isdigit():
                    n = int(f[2])
                    self.counts[n] = self.counts.get(n, 0) + 1

    def upgrade_count(self):
        with self.lock:
            return len(self.upgrades)

    def stop(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(5)
        except Exception:
            self.proc.kill()


class Feeder:
    """Numbered lines into the client's stdin at `rate` per second."""

    def __init__(self, stdin, rate):
        self.stdin, self.rate = stdin, rate
        self.times = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        next_at = time.monotonic()
        n = 0
        while not self.stopping.is_set():
            try:
                self.stdin.write(f"{n:07d} lossless-bench\n")
                self.stdin.flush()
            except (BrokenPipeError, ValueError):
                return
            self.times.append(time.monotonic())
            n += 1
            next_at = max(next_at + 1 / self.rate, time.monotonic())
            time.sleep(max(0, next_at - time.monotonic()))

    def stop(self):
        self.stopping.set()
        self.thread.join(10)
        return len(self.times)

    def written_between(self, t0, t1):
        return sum(1 for t in self.times if t0 <= t < t1)


def measure(name, label, argv, env, drops, rate, outdir, results):
    rig = None
    procs = []
    try:
        rig = Rig(f"{PREFIX}{os.getpid()}-{name}")
        server_log = open(os.path.join(outdir, f"{name}.server.err"), "w")
        server = Server(rig, server_log)
        procs.append(server)
        if not server.listening.wait(15):
            raise RuntimeError("the server did not start")
        err = open(os.path.join(outdir, f"{name}.client.err"), "w")
        client = subprocess.Popen(["ip", "netns", "exec", rig.dev] + argv, stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=err, text=True,
                                  env={**os.environ, **env})
        feeder = Feeder(client.stdin, rate)
        at_risk, detect, no_reconnect = [], [], 0
        for _ in range(drops):
            time.sleep(FLOW)
            deadline = time.monotonic() + 20
            ports = rig.established()
            while not ports and time.monotonic() < deadline:
                time.sleep(0.1)
                ports = rig.established()
            if not ports:
                no_reconnect += 1
                continue
            before = server.upgrade_count()
            cut_at = time.monotonic()
            for port in ports:
                rig.cut(port)
            deadline = cut_at + 30
            while server.upgrade_count() == before and time.monotonic() < deadline:
                time.sleep(0.05)
            if server.upgrade_count() == before:
                no_reconnect += 1
                continue
            with server.lock:
                up = server.upgrades[before]
            detect.append(up - cut_at)
            at_risk.append(feeder.written_between(cut_at, up))
        time.sleep(FLOW)
        total = feeder.stop()
        # Let the last lines drain.
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < 2 and time.monotonic() < quiet_since + 15:
            with server.lock:
                now = sum(server.counts.values())
            if now != last:
                last, quiet_since = now, time.monotonic()
            time.sleep(0.2)
        with server.lock:
            counts = dict(server.counts)
        lost = sum(1 for n in range(total) if n not in counts)
        dups = sum(c - 1 for n, c in counts.items() if n < total)
        done = drops - no_reconnect
        results[name] = {
            "label": label, "lines": total, "drops": drops, "drops_recovered": done,
            "lost": lost, "lost_per_drop": lost / drops if drops else 0.0,
            "duplicates": dups,
            "at_risk_per_drop": sum(at_risk) / len(at_risk) if at_risk else None,
            "reconnect_after_cut_s": sum(detect) / len(detect) if detect else None,
        }
        client.kill()
        procs.append(client)
    except Exception as exc:  # one rig failing does not stop the others
        results[name] = {"label": label, "error": str(exc)}
    finally:
        for p in procs:
            try:
                p.stop() if isinstance(p, Server) else p.kill()
            except Exception:
                pass
        if rig:
            rig.delete()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wsbeat", action="append", default=[], help="[LABEL=]PATH, repeatable")
    ap.add_argument("--drops", type=int, default=20)
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--peers", default="python,node,websocat")
    ap.add_argument("--out", default=os.path.join(REPO, "target", "bench", "lossless"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("lossless.py: needs root (network namespaces)")
    os.makedirs(args.out, exist_ok=True)
    sweep_stale()
    # Whatever ends the run, the namespaces go with it.
    atexit.register(lambda: [rig.delete() for rig in RIGS])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    clients = []
    for i, spec in enumerate(args.wsbeat):
        label, _, path = spec.rpartition("=")
        label = label or f"wsbeat ({path})"
        clients.append((f"wsbeat{i}", label,
                        [os.path.abspath(path), "--ping-interval", "1s", "--pong-timeout", "1s",
                         "--backoff-initial", "100ms", "--backoff-max", "500ms", URL],
                        {"RUST_LOG": "info"}))
    peers = [p for p in args.peers.split(",") if p]
    if "python" in peers and os.path.exists(PYTHON):
        clients.append(("python", "Python websockets (1 s ping, 1 s timeout)",
                        [PYTHON, os.path.join(REPO, "bench", "peers", "py_client.py"), URL,
                         "--ping-interval", "1", "--ping-timeout", "1"], {}))
    if "node" in peers and os.path.isdir(os.path.join(NODE_MODULES, "ws")):
        clients.append(("node", "Node ws (README heartbeat, 1 s)",
                        ["node", os.path.join(REPO, "bench", "peers", "node_client.js"), URL,
                         "--ping-interval", "1000", "--pong-timeout", "1000",
                         "--reconnect-delay", "100"], {"NODE_PATH": NODE_MODULES}))
    if "websocat" in peers and os.path.exists(WEBSOCAT):
        clients.append(("websocat", "websocat (autoreconnect, 1 s ping, 2 s timeout)",
                        [WEBSOCAT, "-t", "--ping-interval", "1", "--ping-timeout", "2",
                         "-", "autoreconnect:" + URL], {}))
    for p in peers:
        if not any(c[0] == p for c in clients):
            print(f"lossless: {p} not installed (scripts/install-peers.sh); skipped", file=sys.stderr)
    if not clients:
        sys.exit("lossless.py: nothing to measure")

    print(f"lossless: {len(clients)} client(s), {args.drops} drops each at {args.rate:g} lines/s, "
          f"side by side (about {args.drops * (FLOW + 2) + 10:.0f} s)", file=sys.stderr)
    results = {}
    threads = [threading.Thread(target=measure, args=(name, label, argv, env, args.drops,
                                                      args.rate, args.out, results))
               for name, label, argv, env in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    rows = ["| client | lines | drops (recovered) | lines lost | lost per drop | duplicates "
            "| written between cut and reconnect, per drop | reconnect after the cut |",
            "|---|---|---|---|---|---|---|---|"]
    for name, label, _, _ in clients:
        r = results.get(name, {"error": "no result"})
        if "error" in r:
            rows.append(f"| {label} | error: {r['error']} | | | | | | |")
            continue
        risk = "—" if r["at_risk_per_drop"] is None else f"{r['at_risk_per_drop']:.0f}"
        rec = "—" if r["reconnect_after_cut_s"] is None else f"{r['reconnect_after_cut_s']:.1f} s"
        rows.append(f"| {label} | {r['lines']} | {r['drops']} ({r['drops_recovered']}) | {r['lost']} "
                    f"| {r['lost_per_drop']:.1f} | {r['duplicates']} | {risk} | {rec} |")
    table = "\n".join(rows)
    print(table)
    with open(os.path.join(args.out, "lossless.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "lossless.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"lossless: table {args.out}/lossless.md, logs in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
