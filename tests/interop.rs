//! Interop: the real `wsbeat` binary against servers no one here wrote — a Python
//! `websockets` server, a Node `ws` server, and nginx terminating TLS (test CA) in front
//! of the Node server. Each: connect, heartbeat both ways, echo, close codes, server
//! restart → reconnect.
//!
//! The peers come from `scripts/install-peers.sh` (into `target/peers/`, nginx from
//! apt); the servers are `bench/peers/*_server.*` and `bench/nginx/`. The tests start
//! them and kill them on drop. Missing peers fail the tests with the command to run:
//! they are never skipped silently. Built into the integration binary with the `interop`
//! feature: `cargo test --features interop --test integration interop::`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{Running, TempDir, WAIT, Wsbeat, free_port, ms, poll_until};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where `scripts/install-peers.sh` put the peers.
fn peers_dir() -> PathBuf {
    std::env::var_os("WSBEAT_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/peers"))
}

fn require(what: &str, ok: bool) {
    assert!(
        ok,
        "interop peer missing: {what}. Install the peers with `scripts/install-peers.sh` \
         (as root on Debian 12; puts them in target/peers/ and nginx on PATH), then run again."
    );
}

fn python() -> PathBuf {
    let p = peers_dir().join("venv/bin/python");
    require(&format!("Python websockets ({})", p.display()), p.exists());
    p
}

fn node_modules() -> PathBuf {
    let p = peers_dir().join("node/node_modules");
    require(
        &format!("Node ws ({})", p.join("ws").display()),
        p.join("ws/package.json").exists(),
    );
    require(
        "node on PATH",
        Command::new("node").arg("--version").output().is_ok(),
    );
    p
}

fn nginx_present() -> bool {
    Command::new("nginx").arg("-v").output().is_ok() || Path::new("/usr/sbin/nginx").exists()
}

// ------------------------------------------------------------------ helpers

/// A peer process killed (SIGKILL) and reaped on drop.
struct Proc {
    child: Child,
    /// Kept open so peers that watch stdin for EOF die with the test process.
    _stdin: Option<ChildStdin>,
}

impl Proc {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Lines of a pipe, delivered through a channel (so every read has a timeout).
fn line_channel(r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Whether something accepts connections on `port` within `timeout`.
fn wait_listening(port: u16, timeout: Duration) -> bool {
    poll_until(timeout, || {
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), ms(200)).ok()
    })
    .is_some()
}

// ------------------------------------------------------------------ peer servers

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Python,
    Node,
}

/// A peer server process (bench/peers), restartable on the same port.
struct PeerServer {
    kind: Kind,
    port: u16,
    ping_every_ms: u32,
    proc: Proc,
}

impl PeerServer {
    /// Starts the server; `ping_every_ms` > 0 makes it send its own Pings.
    fn start(kind: Kind, ping_every_ms: u32) -> PeerServer {
        let (proc, port) = Self::spawn(kind, 0, ping_every_ms).unwrap_or_else(|e| panic!("{e}"));
        PeerServer {
            kind,
            port,
            ping_every_ms,
            proc,
        }
    }

    fn spawn(kind: Kind, port: u16, ping_every_ms: u32) -> Result<(Proc, u16), String> {
        let mut cmd = match kind {
            Kind::Python => {
                let mut c = Command::new(python());
                c.arg(repo().join("bench/peers/py_server.py"));
                c
            }
            Kind::Node => {
                let mut c = Command::new("node");
                c.env("NODE_PATH", node_modules())
                    .arg(repo().join("bench/peers/node_server.js"));
                c
            }
        };
        cmd.args([
            "--port",
            &port.to_string(),
            "--ping-every",
            &ping_every_ms.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("start {kind:?} server: {e}"))?;
        let stdin = child.stdin.take();
        let lines = line_channel(child.stdout.take().expect("stdout piped"));
        let proc = Proc {
            child,
            _stdin: stdin,
        };
        match lines.recv_timeout(Duration::from_secs(15)) {
            Ok(line) => match line.trim().parse() {
                Ok(p) => Ok((proc, p)),
                Err(_) => Err(format!("{kind:?} server printed {line:?}, not a port")),
            },
            Err(_) => Err(format!(
                "{kind:?} server did not print its port within 15 s (port {port})"
            )),
        }
    }

    /// Kills the server (as a crash would) and starts it again on the same port.
    fn restart(&mut self, down_for: Duration) {
        self.proc.kill();
        thread::sleep(down_for);
        let deadline = Instant::now() + WAIT();
        loop {
            // The port may linger for a moment; retry until it binds.
            match Self::spawn(self.kind, self.port, self.ping_every_ms) {
                Ok((proc, _)) => {
                    self.proc = proc;
                    return;
                }
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(200)),
                Err(e) => panic!("restart: {e}"),
            }
        }
    }
}

/// nginx terminating TLS (a fresh test CA) in front of a backend port.
struct Nginx {
    port: u16,
    backend: u16,
    dir: TempDir,
    proc: Proc,
}

impl Nginx {
    fn start(backend: u16) -> Nginx {
        require("nginx (apt-get install nginx)", nginx_present());
        let dir = TempDir::new();
        let out = Command::new(repo().join("bench/nginx/gen-certs.sh"))
            .arg(dir.path())
            .output()
            .expect("run bench/nginx/gen-certs.sh (needs the openssl CLI)");
        assert!(
            out.status.success(),
            "gen-certs.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (proc, port) = Self::spawn(dir.path(), backend, None);
        Nginx {
            port,
            backend,
            dir,
            proc,
        }
    }

    fn spawn(dir: &Path, backend: u16, port: Option<u16>) -> (Proc, u16) {
        for _ in 0..5 {
            let port = port.unwrap_or_else(free_port);
            let child = Command::new(repo().join("bench/nginx/run.sh"))
                .arg(dir)
                .arg(port.to_string())
                .arg(format!("127.0.0.1:{backend}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start bench/nginx/run.sh");
            let mut proc = Proc {
                child,
                _stdin: None,
            };
            if wait_listening(port, WAIT()) {
                return (proc, port);
            }
            proc.kill();
        }
        let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        panic!("nginx did not start; error.log:\n{log}");
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn restart(&mut self) {
        self.proc.kill();
        let (proc, _) = Self::spawn(self.dir.path(), self.backend, Some(self.port));
        self.proc = proc;
    }
}

// ------------------------------------------------------------------ wsbeat

/// The real binary (util's runner) with short timings and a status file.
struct Client {
    run: Running,
    status: PathBuf,
    _dir: TempDir,
}

impl Client {
    fn start(url: &str, extra: &[&str]) -> Client {
        let dir = TempDir::new();
        let status = dir.join("status");
        let run = Wsbeat::new()
            .arg(url)
            .args(["--ping-interval", "200ms", "--pong-timeout", "1s"])
            .args(["--backoff-initial", "50ms", "--backoff-max", "300ms"])
            .args(["--connect-timeout", "2s", "--status-file"])
            .arg(&status)
            .args(extra)
            .spawn();
        Client {
            run,
            status,
            _dir: dir,
        }
    }

    fn send(&mut self, line: &str) {
        self.run.write_line(line);
    }

    /// The next stdout line that satisfies `pred`, within `timeout`.
    fn expect_line(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        match self.run.wait_line(timeout, pred) {
            Some(line) => line,
            None => self.fail(&format!("no stdout line {what} within {timeout:?}")),
        }
    }

    /// Sends `line` (repeatedly, since a line sent into a dying connection may be lost)
    /// until it comes back on stdout.
    fn echo(&mut self, line: &str) {
        let deadline = Instant::now() + WAIT();
        while Instant::now() < deadline {
            self.send(line);
            if self.run.wait_line(ms(1000), |l| l == line).is_some() {
                return;
            }
        }
        self.fail(&format!("{line:?} was not echoed within {:?}", WAIT()));
    }

    fn status(&self) -> HashMap<String, String> {
        let text = std::fs::read_to_string(&self.status).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| {
                let v = v.trim();
                let v = if v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'') {
                    v[1..v.len() - 1].replace("'\\''", "'")
                } else {
                    v.to_string()
                };
                (k.to_string(), v)
            })
            .collect()
    }

    /// Waits until the status file satisfies `pred`; returns it.
    fn wait_status(
        &mut self,
        what: &str,
        pred: impl Fn(&HashMap<String, String>) -> bool,
    ) -> HashMap<String, String> {
        match poll_until(WAIT(), || Some(self.status()).filter(|st| pred(st))) {
            Some(st) => st,
            None => self.fail(&format!("status file never showed {what}")),
        }
    }

    fn reconnects(&self) -> u64 {
        self.status()
            .get("reconnects")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn wait_connected(&mut self) -> HashMap<String, String> {
        self.wait_status("state=connected", |s| {
            s.get("state").map(String::as_str) == Some("connected")
        })
    }

    /// Waits for `reconnects` > `before` and state=connected.
    fn wait_reconnected(&mut self, before: u64) {
        self.wait_status(&format!("reconnects > {before} and connected"), |s| {
            s.get("reconnects")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                > before
                && s.get("state").map(String::as_str) == Some("connected")
        });
    }

    fn stderr_contains(&mut self, needle: &str, timeout: Duration) -> bool {
        poll_until(timeout, || {
            self.run.output().stderr.contains(needle).then_some(())
        })
        .is_some()
    }

    /// The server's `stats` answer as numbers.
    fn server_stats(&mut self) -> HashMap<String, f64> {
        self.send("stats");
        let line = self.expect_line("starting with `stats `", WAIT(), |l| {
            l.starts_with("stats ")
        });
        line.split_whitespace()
            .skip(1)
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect()
    }

    /// Panics with `msg` and the status file; the runner prints the command, stdout and
    /// stderr as it is dropped.
    fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\nstatus file: {:?}", self.status());
    }
}

// ------------------------------------------------------------------ setups

/// One server setup: the processes (kept alive by the struct) and how to reach them.
struct Setup {
    server: PeerServer,
    nginx: Option<Nginx>,
}

impl Setup {
    fn python(ping_every_ms: u32) -> Setup {
        Setup {
            server: PeerServer::start(Kind::Python, ping_every_ms),
            nginx: None,
        }
    }

    fn node(ping_every_ms: u32) -> Setup {
        Setup {
            server: PeerServer::start(Kind::Node, ping_every_ms),
            nginx: None,
        }
    }

    fn nginx_node(ping_every_ms: u32) -> Setup {
        require("nginx (apt-get install nginx)", nginx_present());
        let server = PeerServer::start(Kind::Node, ping_every_ms);
        let nginx = Nginx::start(server.port);
        Setup {
            server,
            nginx: Some(nginx),
        }
    }

    fn url(&self) -> String {
        match &self.nginx {
            Some(n) => format!("wss://127.0.0.1:{}/interop", n.port),
            None => format!("ws://127.0.0.1:{}/interop", self.server.port),
        }
    }

    fn wsbeat(&self, extra: &[&str]) -> Client {
        let ca;
        let mut args: Vec<&str> = extra.to_vec();
        if let Some(n) = &self.nginx {
            ca = n.ca().display().to_string();
            args.push("--ca-file");
            args.push(&ca);
        }
        Client::start(&self.url(), &args)
    }
}

// ------------------------------------------------------------------ scenarios

/// stdin line → server → stdout line, in order, including non-ASCII text.
fn echo(setup: Setup) {
    let mut w = setup.wsbeat(&[]);
    w.wait_connected();
    for line in ["hello", "two words", "ünïcödé ✓", "{\"json\":[1,2,3]}"] {
        w.send(line);
        w.expect_line(&format!("{line:?}"), WAIT(), |l| l == line);
    }
}

/// Client Pings are answered (strict pong: only Pongs count, so the connection survives
/// only if the server's Pongs arrive) and server Pings are answered by wsbeat.
fn heartbeat_both_ways(setup: Setup) {
    let mut w = setup.wsbeat(&["--strict-pong"]);
    let st = w.wait_status("an rtt_ms", |s| {
        s.get("state").map(String::as_str) == Some("connected")
            && s.get("rtt_ms").is_some_and(|v| !v.is_empty())
    });
    let rtt: f64 = st["rtt_ms"]
        .parse()
        .unwrap_or_else(|_| w.fail("rtt_ms is not a number"));
    assert!((0.0..1000.0).contains(&rtt), "rtt_ms={rtt}");
    // Several pong timeouts (1 s) long: still the first connection.
    thread::sleep(Duration::from_millis(2500));
    let stats = w.server_stats();
    assert_eq!(
        w.reconnects(),
        0,
        "reconnected although the server answers every ping"
    );
    assert_eq!(
        w.status().get("state").map(String::as_str),
        Some("connected")
    );
    // Client pings every 200 ms for 2.5+ s.
    let client_pings = stats.get("client_pings").copied().unwrap_or(0.0);
    assert!(
        client_pings >= 8.0,
        "server saw only {client_pings} client pings: {stats:?}"
    );
    // Server pings every 100 ms: all answered (but the one in flight), and fast.
    let (pings, pongs) = (stats["pings"], stats["pongs"]);
    assert!(pings >= 20.0, "server sent only {pings} pings: {stats:?}");
    assert!(pongs >= pings - 1.0, "server pings unanswered: {stats:?}");
    // One on demand, timed by the server.
    w.send("server-ping");
    let line = w.expect_line("server-pong", WAIT(), |l| l.starts_with("server-pong"));
    assert!(
        line.starts_with("server-pong rtt_ms="),
        "server ping not answered: {line}"
    );
}

/// A server Close with a code is logged with its code, answered, and followed by a reconnect.
fn close_codes(setup: Setup) {
    let mut w = setup.wsbeat(&[]);
    w.wait_connected();
    for (i, code) in [1000u16, 1001, 1011, 4000, 4999].into_iter().enumerate() {
        let before = w.reconnects();
        w.send(&format!("close {code} interop-{code}"));
        w.wait_reconnected(before);
        if !w.stderr_contains(&code.to_string(), Duration::from_secs(2)) {
            w.fail(&format!("close code {code} not in the log"));
        }
        w.echo(&format!("after close {code} #{i}"));
    }
}

/// The server dies and comes back on the same port: wsbeat reconnects by itself.
fn restart(mut setup: Setup) {
    let mut w = setup.wsbeat(&[]);
    w.wait_connected();
    w.echo("before restart");
    for round in 0..2 {
        let before = w.reconnects();
        setup.server.restart(Duration::from_millis(300));
        w.wait_reconnected(before);
        w.echo(&format!("after restart {round}"));
    }
    if let Some(nginx) = &mut setup.nginx {
        // The TLS front itself restarts too.
        let before = w.reconnects();
        nginx.restart();
        w.wait_reconnected(before);
        w.echo("after nginx restart");
    }
}

macro_rules! interop_tests {
    ($module:ident, $setup:path) => {
        mod $module {
            use super::*;

            #[test]
            fn echo_lines() {
                echo($setup(0));
            }

            #[test]
            fn heartbeat_both_ways() {
                super::heartbeat_both_ways($setup(100));
            }

            #[test]
            fn server_close_codes_then_reconnect() {
                close_codes($setup(0));
            }

            #[test]
            fn server_restart_then_reconnect() {
                restart($setup(0));
            }
        }
    };
}

interop_tests!(python_websockets, Setup::python);
interop_tests!(node_ws, Setup::node);
interop_tests!(nginx_tls_node_ws, Setup::nginx_node);

/// The peers must be installed; this names the fix instead of a confusing spawn error.
#[test]
fn peers_are_installed() {
    python();
    node_modules();
    require("nginx (apt-get install nginx)", nginx_present());
    require(
        "openssl CLI",
        Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success()),
    );
}
