//! wsbeat as a systemd service, tested on the real binary: signals (SIGTERM, SIGINT, SIGHUP with
//! a rotated header file), `NOTIFY_SOCKET` (path and abstract) with READY/STATUS/WATCHDOG/
//! STOPPING, the status file, and the journald `<N>` log prefix.

use std::collections::HashMap;
use std::fs::File;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::proxy::{Mode, Proxy};
use crate::util::server::{Behavior, Kind, Server};
use crate::util::{
    StdinFlood, TempDir, WAIT, Wsbeat, ms, poll_until, read_status, refused_url, scaled,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The close code of a client Close frame seen on connection `conn`, waiting for it.
fn expect_close(server: &Server, conn: usize) -> Option<u16> {
    let event = server.expect(
        WAIT(),
        &format!("a Close frame on connection {conn}"),
        |e| e.conn == conn && matches!(e.kind, Kind::Close { .. }),
    );
    match event.kind {
        Kind::Close { code, .. } => code,
        _ => unreachable!("filtered on Close"),
    }
}

/// Waits until the client is surely connected on connection `conn`: the server's upgrade
/// event comes before the client has read the 101 answer, but a heartbeat Ping comes after.
/// Needs a short `--ping-interval` (as [`Wsbeat::fast`] sets).
fn expect_client_connected(server: &Server, conn: usize) {
    server.expect(WAIT(), &format!("a heartbeat on connection {conn}"), |e| {
        e.conn == conn && e.is_ping()
    });
}

/// A datagram socket standing in for systemd's notification socket.
struct NotifySocket {
    socket: UnixDatagram,
    /// The `NOTIFY_SOCKET` value: a path, or `@name`.
    addr: String,
    _dir: Option<TempDir>,
}

/// One datagram: its arrival time and its `KEY=VALUE` lines.
#[derive(Debug, Clone)]
struct Datagram {
    at: Instant,
    lines: Vec<String>,
}

impl Datagram {
    fn has(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l == line)
    }

    fn status(&self) -> Option<&str> {
        self.lines.iter().find_map(|l| l.strip_prefix("STATUS="))
    }
}

impl NotifySocket {
    /// Bound to a path in a fresh temp dir.
    fn path() -> NotifySocket {
        let dir = TempDir::new();
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        NotifySocket {
            socket,
            addr: path.to_str().expect("utf-8 temp path").to_owned(),
            _dir: Some(dir),
        }
    }

    /// Bound to a unique abstract name.
    fn abstract_name() -> NotifySocket {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "wsbeat-test-notify-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
        let socket = UnixDatagram::bind_addr(&addr).expect("bind abstract notify socket");
        NotifySocket {
            socket,
            addr: format!("@{name}"),
            _dir: None,
        }
    }

    /// The next datagram within `timeout`.
    fn next(&self, timeout: Duration) -> Option<Datagram> {
        let timeout = timeout.max(ms(1));
        self.socket
            .set_read_timeout(Some(timeout))
            .expect("set read timeout");
        let mut buf = vec![0u8; 64 * 1024];
        let n = self.socket.recv(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        Some(Datagram {
            at: Instant::now(),
            lines: text.split('\n').map(str::to_owned).collect(),
        })
    }

    /// Datagrams until one satisfies `pred` (included), at most `timeout`; panics otherwise,
    /// listing what arrived.
    fn until(
        &self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&Datagram) -> bool,
    ) -> Vec<Datagram> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(d) => {
                    let done = pred(&d);
                    seen.push(d);
                    if done {
                        return seen;
                    }
                }
                None => panic!("no datagram with {what} within {timeout:?}; got {seen:#?}"),
            }
        }
    }

    /// Every datagram arriving within `window`.
    fn within(&self, window: Duration) -> Vec<Datagram> {
        let deadline = Instant::now() + window;
        let mut seen = Vec::new();
        while let Some(d) = self.next(deadline.saturating_duration_since(Instant::now())) {
            seen.push(d);
            if Instant::now() >= deadline {
                break;
            }
        }
        seen
    }
}

/// The status file's keys, in the contract's order.
const STATUS_KEYS: [&str; 12] = [
    "state",
    "url",
    "since_unix_ms",
    "rtt_ms",
    "reconnects",
    "dropped",
    "last_error",
    "ping_interval_ms",
    "heartbeats",
    "resent",
    "bytes_sent",
    "bytes_received",
];

/// The status file as a shell sees it after `. FILE`, without running one. Each line must be
/// `key=value` with the value made of bare characters a shell takes literally (letters,
/// digits, `_ . / : @ % + , = -`), single-quoted runs, and `\'` between them (the `'\''`
/// idiom): the forms the contract allows, read as `sh` reads them; anything else fails the
/// test. No shell is spawned: under qemu-user a fork of this multi-threaded test binary can
/// deadlock before exec. The unit tests in `src/status_file.rs` source the same rendering in a
/// real `sh` on the host.
fn sourced_status(path: &Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(path).expect("read the status file");
    let mut values = HashMap::new();
    for line in text.lines() {
        let (key, raw) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line:?}\n{text}"));
        let value = shell_word(raw).unwrap_or_else(|| panic!("not a shell word: {line:?}"));
        values.insert(key.to_string(), value);
    }
    for key in STATUS_KEYS {
        assert!(values.contains_key(key), "no {key}= in\n{text}");
    }
    values
}

/// What `sh` makes of `raw` as the right side of an assignment, if it is in the allowed form.
fn shell_word(raw: &str) -> Option<String> {
    let bare = |c: char| c.is_ascii_alphanumeric() || "_./:@%+,=-".contains(c);
    let mut out = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => loop {
                match chars.next()? {
                    '\'' => break,
                    c => out.push(c),
                }
            },
            '\\' if chars.next()? == '\'' => out.push('\''),
            c if bare(c) => out.push(c),
            _ => return None,
        }
    }
    Some(out)
}

/// `device:inode` of `file`, as systemd puts it in `JOURNAL_STREAM`.
fn journal_stream_of(file: &File) -> String {
    let meta = file.metadata().expect("stat log file");
    format!("{}:{}", meta.dev(), meta.ino())
}

// ---------------------------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------------------------

/// SIGTERM and SIGINT: Close 1001, then exit 0 well within the 2 s bound for the close
/// handshake (the server answers the Close at once).
fn terminate_closes_with_1001(signal: i32) {
    let server = Server::start(Behavior::default());
    let mut wsbeat = Wsbeat::new().fast().arg(server.url()).spawn();
    expect_client_connected(&server, 0);
    let sent = Instant::now();
    wsbeat.signal(signal);
    assert_eq!(expect_close(&server, 0), Some(1001));
    let code = wsbeat.wait_exit(scaled(ms(2000 + 1500)));
    assert_eq!(code, Some(0), "exit code\n{}", wsbeat.output().dump());
    assert!(
        sent.elapsed() < scaled(ms(2000 + 1500)),
        "took {:?} to stop",
        sent.elapsed()
    );
    assert_eq!(server.upgrades(), 1, "no reconnect after a stop signal");
}

#[test]
fn sigterm_sends_close_1001_and_exits_0() {
    terminate_closes_with_1001(libc::SIGTERM);
}

#[test]
fn sigint_sends_close_1001_and_exits_0() {
    terminate_closes_with_1001(libc::SIGINT);
}

/// A server that never answers the Close must not hold the client longer than ~2 s.
#[test]
fn sigterm_gives_up_on_a_silent_peer_after_about_2s() {
    let server = Server::start(Behavior::silent());
    // Long heartbeat, so the silent peer is not detected as dead before the signal.
    let mut wsbeat = Wsbeat::new()
        .args(["--ping-interval", "60s"])
        .arg(server.url())
        .spawn();
    server.expect_upgrades(WAIT(), 1);
    let sent = Instant::now();
    wsbeat.signal(libc::SIGTERM);
    let code = wsbeat.wait_exit(scaled(ms(2000 + 2000)));
    assert_eq!(code, Some(0), "exit code\n{}", wsbeat.output().dump());
    let took = sent.elapsed();
    assert!(took < scaled(ms(2000 + 2000)), "took {took:?} to stop");
}

/// Stopping while waiting to reconnect is immediate: there is no connection to close.
#[test]
fn sigterm_during_backoff_exits_0_at_once() {
    let mut wsbeat = Wsbeat::new()
        .args(["--backoff-initial", "30s", "--backoff-max", "30s"])
        .arg(refused_url())
        .spawn();
    // Wait until the first attempt has failed (logged), i.e. the client is in backoff.
    let failed = poll_until(WAIT(), || {
        let out = wsbeat.output();
        out.stderr.contains("refused").then_some(())
    });
    assert!(
        failed.is_some(),
        "no failed attempt logged\n{}",
        wsbeat.output().dump()
    );
    let sent = Instant::now();
    wsbeat.signal(libc::SIGTERM);
    assert_eq!(
        wsbeat.wait_exit(scaled(ms(1500))),
        Some(0),
        "{}",
        wsbeat.output().dump()
    );
    assert!(sent.elapsed() < scaled(ms(1500)));
}

/// Stopping during a handshake that never completes (TLS or upgrade) cuts the attempt
/// short: exit 0 within the contract's 2 s, not at --connect-timeout.
#[test]
fn sigterm_during_a_stalled_handshake_exits_0_within_2s() {
    let stalled_tls = Server::start(Behavior::stall());
    let stalled_upgrade = Server::start(Behavior::stall_upgrade());
    for (server, url) in [
        (
            &stalled_tls,
            format!("wss://127.0.0.1:{}/", stalled_tls.port()),
        ),
        (&stalled_upgrade, stalled_upgrade.url()),
    ] {
        let mut wsbeat = Wsbeat::new()
            .args(["--connect-timeout", "60s"])
            .arg(&url)
            .spawn();
        server.expect(WAIT(), "the TCP connection", |e| e.is_accepted());
        let sent = Instant::now();
        wsbeat.signal(libc::SIGTERM);
        let code = wsbeat.wait_exit(scaled(ms(2000)));
        let took = sent.elapsed();
        assert_eq!(
            code,
            Some(0),
            "{url}: exit code\n{}",
            wsbeat.output().dump()
        );
        assert!(took < scaled(ms(2000)), "{url}: took {took:?} to stop");
    }
}

/// SIGHUP during a stalled handshake drops that attempt (the server sees it go) and
/// starts a new one at once, instead of leaving it to run to --connect-timeout.
#[test]
fn sighup_during_a_stalled_handshake_starts_over() {
    let server = Server::start(Behavior::stall_upgrade());
    let mut wsbeat = Wsbeat::new()
        .args(["--connect-timeout", "60s"])
        .arg(server.url())
        .spawn();
    server.expect(WAIT(), "the first connection", |e| e.is_accepted());
    wsbeat.signal(libc::SIGHUP);
    server.expect(WAIT(), "the first connection dropped", |e| {
        e.conn == 0 && matches!(e.kind, Kind::Disconnected)
    });
    server.expect(WAIT(), "a second connection", |e| {
        e.conn == 1 && e.is_accepted()
    });
    assert!(wsbeat.is_running(), "{}", wsbeat.output().dump());
    wsbeat.signal(libc::SIGTERM);
    assert_eq!(wsbeat.wait_exit(WAIT()), Some(0));
}

/// SIGHUP while the peer has stopped reading and lines are still being written: the
/// reconnect starts at once, not after the blocked write's --pong-timeout.
#[test]
fn sighup_with_a_peer_that_stopped_reading_reconnects_at_once() {
    let server = Server::start(Behavior::default());
    let proxy = Proxy::start(server.addr());
    let mut wsbeat = Wsbeat::new()
        .args(["--ping-interval", "60s", "--pong-timeout", "60s"])
        .args(["--queue-size", "10"])
        .arg(proxy.url())
        .spawn();
    server.expect_upgrades(WAIT(), 1);
    proxy.set_mode(Mode::StopReadingClient);
    let flood = StdinFlood::start(wsbeat.take_stdin().expect("stdin"));
    // Once the socket no longer takes lines, the queue fills and stdin is no longer read.
    let blocked = flood.wait_stalled(scaled(ms(500)), WAIT());
    flood.stop();
    assert!(blocked, "writes never blocked\n{}", wsbeat.output().dump());
    wsbeat.signal(libc::SIGHUP);
    assert!(
        proxy.wait_accepted(2, WAIT()),
        "no reconnect after SIGHUP\n{}",
        wsbeat.output().dump()
    );
    assert!(wsbeat.is_running());
    wsbeat.kill();
    drop(flood);
}

/// SIGHUP: close with 1000, reconnect at once (no backoff wait), and the new handshake
/// carries the header from the rewritten --header-file. Header values never reach the log.
#[test]
fn sighup_reconnects_at_once_with_the_rotated_header() {
    let dir = TempDir::new();
    let headers = dir.write("headers", "Authorization: Bearer s3cret-one\n");
    let server = Server::start(Behavior::default());
    // A long backoff: a reconnect that waited for it would miss the bound below.
    let mut wsbeat = Wsbeat::new()
        .args(["--ping-interval", "200ms"])
        .args(["--backoff-initial", "20s", "--backoff-max", "20s"])
        .arg("--header-file")
        .arg(&headers)
        .arg(server.url())
        .spawn();
    let first = server.expect_upgrades(WAIT(), 1);
    assert_eq!(first.header("authorization"), Some("Bearer s3cret-one"));
    expect_client_connected(&server, 0);

    // Rotate the token the way an admin tool would: new file, renamed over the old one.
    let fresh = dir.write("headers.new", "Authorization: Bearer s3cret-two\n");
    std::fs::rename(&fresh, &headers).expect("rotate header file");
    let sent = Instant::now();
    wsbeat.signal(libc::SIGHUP);

    assert_eq!(expect_close(&server, 0), Some(1000));
    let second = server.expect_upgrades(scaled(ms(3000)), 2);
    assert!(
        second.at.duration_since(sent) < scaled(ms(3000)),
        "reconnect took {:?}",
        second.at.duration_since(sent)
    );
    assert_eq!(second.header("authorization"), Some("Bearer s3cret-two"));
    assert!(wsbeat.is_running(), "SIGHUP must not stop the client");

    wsbeat.signal(libc::SIGTERM);
    assert_eq!(wsbeat.wait_exit(WAIT()), Some(0));
    let out = wsbeat.output();
    assert!(
        !out.stderr.contains("s3cret"),
        "a header value reached the log (RUST_LOG=debug):\n{}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// sd_notify
// ---------------------------------------------------------------------------------------------

/// READY=1, STATUS= on connect, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 at the end,
/// in that order, on `notify` (path or abstract).
fn notify_sequence(notify: NotifySocket) {
    let server = Server::start(Behavior::default());
    let mut wsbeat = Wsbeat::new()
        .fast()
        .env("NOTIFY_SOCKET", &notify.addr)
        .env("WATCHDOG_USEC", "400000")
        .stdin_null()
        .arg(server.url())
        .spawn();

    let mut all = notify.until(WAIT(), "READY=1", |d| d.has("READY=1"));
    let connected = notify.until(WAIT(), "STATUS=connected ...", |d| {
        d.status()
            .is_some_and(|s| s.contains("connected") && !s.contains("disconnected"))
    });
    let status = connected
        .last()
        .and_then(Datagram::status)
        .unwrap_or_default()
        .to_owned();
    assert!(
        status.contains(&server.url()) || status.contains(&server.addr().to_string()),
        "{status}"
    );
    all.extend(connected);
    server.expect_upgrades(WAIT(), 1);

    // Watchdog cadence: ~every 200 ms. Watch a 1.6 s window.
    let window = notify.within(ms(1600));
    let kicks: Vec<Instant> = all
        .iter()
        .chain(&window)
        .filter(|d| d.has("WATCHDOG=1"))
        .map(|d| d.at)
        .collect();
    assert!(
        kicks.len() >= 4,
        "{} watchdog kicks: {all:#?} {window:#?}",
        kicks.len()
    );
    assert!(kicks.len() <= 20, "watchdog spam: {} kicks", kicks.len());
    let window_kicks: Vec<Instant> = window
        .iter()
        .filter(|d| d.has("WATCHDOG=1"))
        .map(|d| d.at)
        .collect();
    let max_gap = window_kicks
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        max_gap < scaled(ms(400)),
        "gap of {max_gap:?} between kicks would trip WatchdogSec=400ms"
    );
    all.extend(window);

    wsbeat.signal(libc::SIGTERM);
    all.extend(notify.until(WAIT(), "STOPPING=1", |d| d.has("STOPPING=1")));
    assert_eq!(
        wsbeat.wait_exit(WAIT()),
        Some(0),
        "{}",
        wsbeat.output().dump()
    );

    let first = |line: &str| all.iter().position(|d| d.has(line));
    let ready = first("READY=1").expect("READY=1");
    let stopping = first("STOPPING=1").expect("STOPPING=1");
    let connected_at = all
        .iter()
        .position(|d| d.status().is_some_and(|s| s.contains("connected")))
        .expect("STATUS=connected");
    assert!(
        ready <= connected_at,
        "READY=1 after the connect status: {all:#?}"
    );
    assert!(connected_at < stopping, "{all:#?}");
    assert_eq!(
        all.iter().filter(|d| d.has("READY=1")).count(),
        1,
        "READY=1 more than once: {all:#?}"
    );
    for d in &all {
        for line in &d.lines {
            assert!(
                ["READY=1", "WATCHDOG=1", "STOPPING=1"].contains(&line.as_str())
                    || line.starts_with("STATUS=")
                    || line.starts_with("RELOADING=")
                    || line.starts_with("MONOTONIC_USEC="),
                "unexpected assignment {line:?}"
            );
        }
    }
}

#[test]
fn notify_socket_path_gets_ready_status_watchdog_stopping() {
    notify_sequence(NotifySocket::path());
}

#[test]
fn notify_socket_abstract_gets_ready_status_watchdog_stopping() {
    notify_sequence(NotifySocket::abstract_name());
}

/// READY=1 does not wait for the network, and an outage is not a service failure: the
/// watchdog keeps being fed while connects fail.
#[test]
fn ready_and_watchdog_without_network() {
    let notify = NotifySocket::path();
    let mut wsbeat = Wsbeat::new()
        .fast()
        .env("NOTIFY_SOCKET", &notify.addr)
        .env("WATCHDOG_USEC", "400000")
        .arg(refused_url())
        .spawn();
    notify.until(WAIT(), "READY=1", |d| d.has("READY=1"));
    let window = notify.within(ms(1200));
    let kicks = window.iter().filter(|d| d.has("WATCHDOG=1")).count();
    assert!(kicks >= 3, "{kicks} kicks while offline: {window:#?}");
    assert!(wsbeat.is_running());
    wsbeat.signal(libc::SIGTERM);
    assert_eq!(wsbeat.wait_exit(WAIT()), Some(0));
}

/// WATCHDOG_PID naming another process means the watchdog is not ours to feed.
#[test]
fn watchdog_pid_of_another_process_means_no_kicks() {
    let notify = NotifySocket::path();
    let server = Server::start(Behavior::default());
    let mut wsbeat = Wsbeat::new()
        .fast()
        .env("NOTIFY_SOCKET", &notify.addr)
        .env("WATCHDOG_USEC", "200000")
        .env("WATCHDOG_PID", "1")
        .arg(server.url())
        .spawn();
    let mut all = notify.until(WAIT(), "READY=1", |d| d.has("READY=1"));
    all.extend(notify.within(ms(800)));
    assert!(
        all.iter().all(|d| !d.has("WATCHDOG=1")),
        "kicked a watchdog that belongs to pid 1: {all:#?}"
    );
    wsbeat.signal(libc::SIGTERM);
    assert_eq!(wsbeat.wait_exit(WAIT()), Some(0));
}

/// A configuration error exits 78 without ever claiming readiness.
#[test]
fn no_ready_on_a_configuration_error() {
    let notify = NotifySocket::path();
    let dir = TempDir::new();
    let out = Wsbeat::new()
        .env("NOTIFY_SOCKET", &notify.addr)
        .arg("--ca-file")
        .arg(dir.join("missing.pem"))
        .arg("wss://127.0.0.1:1/")
        .run(WAIT());
    assert_eq!(out.code, Some(78), "{}", out.dump());
    let got = notify.within(ms(100));
    assert!(got.iter().all(|d| !d.has("READY=1")), "{got:#?}");
}

// ---------------------------------------------------------------------------------------------
// Status file
// ---------------------------------------------------------------------------------------------

/// Content after connect and a heartbeat, after a reconnect, after stop; always complete when
/// read; and a URL that needs quoting survives `. FILE` in sh.
#[test]
fn status_file_tracks_state_and_sources_in_sh() {
    let dir = TempDir::new();
    let path = dir.join("status");
    let server = Server::start(Behavior::default());
    // '?' and '&' are outside the bare set: the value must be quoted to source.
    let url = server.url_path("/ws?device=board-1&mode=test");
    let mut wsbeat = Wsbeat::new()
        .fast()
        .arg("--status-file")
        .arg(&path)
        .arg(&url)
        .spawn();

    // A reader that checks every read is a whole file while the client rewrites it.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        let path = path.clone();
        thread::spawn(move || {
            let mut reads = 0usize;
            while !stop.load(Ordering::Acquire) {
                if let Ok(text) = std::fs::read_to_string(&path) {
                    let keys: Vec<&str> =
                        text.lines().filter_map(|l| l.split('=').next()).collect();
                    assert_eq!(
                        keys, STATUS_KEYS,
                        "partial or malformed status file: {text:?}"
                    );
                    assert!(text.ends_with('\n'), "partial status file: {text:?}");
                    reads += 1;
                }
                thread::yield_now();
            }
            reads
        })
    };

    let connected = poll_until(WAIT(), || {
        let s = read_status(&path)?;
        (s.get("state")? == "connected" && !s.get("rtt_ms")?.is_empty()).then_some(s)
    });
    let connected = connected.unwrap_or_else(|| {
        panic!(
            "no state=connected with rtt_ms: {:?}\n{}",
            std::fs::read_to_string(&path),
            wsbeat.output().dump()
        )
    });
    let rtt: f64 = connected["rtt_ms"].parse().expect("rtt_ms is a number");
    assert!((0.0..5000.0).contains(&rtt), "rtt_ms={rtt}");
    assert_eq!(
        connected["rtt_ms"].split('.').nth(1).map(str::len),
        Some(1),
        "one decimal"
    );
    assert_eq!(connected["reconnects"], "0");
    assert_eq!(connected["dropped"], "0");
    let since: u64 = connected["since_unix_ms"].parse().expect("since_unix_ms");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64;
    assert!(
        since <= now_ms && now_ms - since < 600_000,
        "since_unix_ms={since}, now {now_ms}"
    );
    let sourced = sourced_status(&path);
    // The query's values are masked (they may be tokens); the masked form sources too.
    let shown_url = server.url_path("/ws?device=…&mode=…");
    assert_eq!(sourced["url"], shown_url);
    assert_eq!(sourced["state"], "connected");

    // Drop the connection: the client reconnects and counts it.
    server.drop_conn(0);
    let again = poll_until(WAIT(), || {
        let s = read_status(&path)?;
        (s.get("state")? == "connected" && s.get("reconnects")? == "1").then_some(s)
    });
    assert!(
        again.is_some(),
        "no reconnects=1: {:?}",
        std::fs::read_to_string(&path)
    );
    server.expect_upgrades(WAIT(), 2);

    wsbeat.signal(libc::SIGTERM);
    assert_eq!(
        wsbeat.wait_exit(WAIT()),
        Some(0),
        "{}",
        wsbeat.output().dump()
    );
    stop.store(true, Ordering::Release);
    let reads = reader.join().expect("reader saw only whole files");
    assert!(reads > 0);
    let last = sourced_status(&path);
    assert_eq!(last["state"], "stopped", "{last:?}");
    assert_eq!(last["url"], shown_url);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list temp dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        leftovers,
        [std::ffi::OsString::from("status")],
        "temp files left behind"
    );
}

/// While connects fail, the file says so: backoff/connecting and the error on one line.
#[test]
fn status_file_reports_the_last_error() {
    let dir = TempDir::new();
    let path = dir.join("status");
    let mut wsbeat = Wsbeat::new()
        .fast()
        .arg("--status-file")
        .arg(&path)
        .arg(refused_url())
        .spawn();
    let failing = poll_until(WAIT(), || {
        let s = sourced_status_if_present(&path)?;
        (!s["last_error"].is_empty()).then_some(s)
    });
    let failing = failing.unwrap_or_else(|| panic!("no last_error\n{}", wsbeat.output().dump()));
    assert!(
        ["backoff", "connecting"].contains(&failing["state"].as_str()),
        "{failing:?}"
    );
    assert!(failing["rtt_ms"].is_empty(), "{failing:?}");
    let text = std::fs::read_to_string(&path).expect("read status");
    assert_eq!(text.lines().count(), STATUS_KEYS.len(), "{text:?}");
    wsbeat.signal(libc::SIGTERM);
    assert_eq!(wsbeat.wait_exit(WAIT()), Some(0));
}

/// Once connected again, the file still says why the last reconnect happened.
#[test]
fn status_file_keeps_the_last_error_after_a_reconnect() {
    let dir = TempDir::new();
    let path = dir.join("status");
    let server = Server::start_with(|n| {
        if n == 0 {
            Behavior::echo().close_after(Duration::from_millis(100), 1011, "going away now")
        } else {
            Behavior::echo()
        }
    });
    let mut wsbeat = Wsbeat::new()
        .arg(server.url())
        .fast()
        .arg("--status-file")
        .arg(&path)
        .spawn();
    let again = poll_until(WAIT(), || {
        let s = sourced_status_if_present(&path)?;
        (s["state"] == "connected" && s["reconnects"] == "1").then_some(s)
    });
    let again = again.unwrap_or_else(|| {
        panic!(
            "no reconnect
{}",
            wsbeat.output().dump()
        )
    });
    assert!(again["last_error"].contains("1011"), "{again:?}");
    wsbeat.signal(libc::SIGTERM);
    assert_eq!(wsbeat.wait_exit(WAIT()), Some(0));
}

fn sourced_status_if_present(path: &Path) -> Option<HashMap<String, String>> {
    path.exists().then(|| sourced_status(path))
}

// ---------------------------------------------------------------------------------------------
// journald
// ---------------------------------------------------------------------------------------------

/// `(priority, message)` per line if every non-empty line has a `<N>` prefix.
fn journal_lines(text: &str) -> Result<Vec<(u8, String)>, String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let rest = line.strip_prefix('<').ok_or_else(|| line.to_owned())?;
            let (n, msg) = rest.split_once('>').ok_or_else(|| line.to_owned())?;
            let n: u8 = n.parse().map_err(|_| line.to_owned())?;
            if n > 7 {
                return Err(line.to_owned());
            }
            Ok((n, msg.to_owned()))
        })
        .collect()
}

/// stderr (info level) of a run that connects, heartbeats and is stopped by SIGTERM, with
/// `JOURNAL_STREAM` set to what `stream_of` says for the log file.
fn log_of_a_connected_run(stream_of: impl FnOnce(&File) -> String) -> String {
    let dir = TempDir::new();
    let server = Server::start(Behavior::default());
    let log_path = dir.join("stderr.log");
    let log = File::create(&log_path).expect("create log");
    let mut wsbeat = Wsbeat::new()
        .args(["--ping-interval", "200ms"])
        .arg(server.url())
        .env("JOURNAL_STREAM", stream_of(&log))
        .env("RUST_LOG", "info")
        .stdin_null()
        .stderr_to(&log_path)
        .spawn();
    expect_client_connected(&server, 0);
    if wsbeat.is_running() {
        wsbeat.signal(libc::SIGTERM);
    }
    assert_eq!(
        wsbeat.wait_exit(WAIT()),
        Some(0),
        "{}",
        wsbeat.output().dump()
    );
    std::fs::read_to_string(&log_path).expect("read log")
}

#[test]
fn journal_stream_gets_priority_prefixes() {
    // Connected and stopped: info lines.
    let text = log_of_a_connected_run(journal_stream_of);
    let lines = journal_lines(&text)
        .unwrap_or_else(|line| panic!("line without <N> prefix: {line:?}\n{text}"));
    assert!(lines.iter().any(|(n, _)| *n == 6), "no <6> line:\n{text}");
    for (_, msg) in &lines {
        assert!(
            !msg.starts_with('['),
            "journal lines carry no timestamp/level header: {msg:?}"
        );
    }
}

/// Failing connects are warnings, and the reason for giving up is an error: every line of
/// it prefixed, so `journalctl -p err` finds why the service stopped.
#[test]
fn journal_stream_prefixes_failures_and_the_give_up_reason() {
    let dir = TempDir::new();
    let log_path = dir.join("fail.log");
    let log = File::create(&log_path).expect("create log");
    let out = Wsbeat::new()
        .args(["--max-retries", "2", "--backoff-initial", "10ms"])
        .arg(refused_url())
        .env("JOURNAL_STREAM", journal_stream_of(&log))
        .env("RUST_LOG", "info")
        .stdin_null()
        .stderr_to(&log_path)
        .run(WAIT());
    let text = out.stderr;
    assert_eq!(out.code, Some(1), "{text}");
    // Every line, the final reason for giving up included, so `journalctl -p err` finds it.
    let lines = journal_lines(&text)
        .unwrap_or_else(|line| panic!("line without <N> prefix: {line:?}\n{text}"));
    assert!(lines.iter().any(|(n, _)| *n == 4), "no <4> line:\n{text}");
    assert_eq!(
        lines.last().map(|(n, _)| *n),
        Some(3),
        "the last line (why wsbeat gave up) is not an error line:\n{text}"
    );
}

#[test]
fn no_prefix_when_stderr_is_not_the_journal_stream() {
    // The journal's stream is some other file: stderr was redirected away from it.
    let text = log_of_a_connected_run(|log| {
        let meta = log.metadata().expect("stat");
        format!("{}:{}", meta.dev(), meta.ino() + 1)
    });
    assert!(!text.is_empty());
    assert!(
        text.lines().all(|l| !l.starts_with('<')),
        "priority prefix without the journal:\n{text}"
    );
}
