//! Stalls a peer can cause, against the real binary (issue 16, items 2 and 3; SPEC,
//! "Heartbeat and reconnect"):
//! - a TLS renegotiation that never completes holds a thread inside OpenSSL: the connection
//!   must still be declared dead in time, and SIGHUP then SIGTERM must still end the process;
//! - a TLS handshake whose bytes drip in must not overrun `--connect-timeout`;
//! - a path that swallows what the client sends is detected even while the server talks,
//!   but a client with nothing of its own to lose is not torn down by it;
//! - a large message that arrives slowly is proof of life, not death.
//!
//! The renegotiation tests use a real `openssl s_server` ([`SServer`]) behind the fault
//! proxy: it sends the HelloRequest, the proxy lets exactly that through and then freezes.

use std::io::Write;
use std::process::ChildStdin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::proxy::{Mode, Proxy};
use crate::util::s_server::SServer;
use crate::util::server::{Behavior, Server};
use crate::util::tls::Pki;
use crate::util::{Running, WAIT, Wsbeat, ms, poll_until, scaled};

/// Whether the child's stderr (its log) contains `needle`.
fn logged(c: &mut Running, needle: &str) -> bool {
    c.output().stderr.contains(needle)
}

/// Waits (bounded) until the child's log contains `needle`; panics with the output if not.
fn expect_logged(c: &mut Running, timeout: Duration, needle: &str) {
    if poll_until(timeout, || logged(c, needle).then_some(())).is_none() {
        panic!(
            "wsbeat did not log {needle:?} within {timeout:?}\n{}",
            c.output().dump()
        );
    }
}

/// `wsbeat` over `wss://` to `proxy` (in front of s_server), trusting the test CA, with
/// `timing` flags.
fn through_proxy_to_s_server(proxy: &Proxy, pki: &Pki, timing: &[(&str, &str)]) -> Wsbeat {
    Wsbeat::new()
        .arg(proxy.url_scheme("wss"))
        .arg("--ca-file")
        .arg(&pki.ca_file)
        .fast_with(timing)
}

/// Upgrades the client's connection on `tls`, then has s_server ask for a renegotiation and
/// freezes the proxy right behind the HelloRequest: the client has started renegotiating,
/// so OpenSSL must read the server's answer before it can write anything, and no answer
/// ever comes. Returns when the freeze began.
fn stall_in_renegotiation(tls: &mut SServer, proxy: &Proxy, c: &mut Running) -> Instant {
    tls.accept_upgrade(WAIT());
    // The upgrade is done (not just TCP: "tcp: connected to" comes first).
    expect_logged(c, WAIT(), "connected to wss://");
    proxy.set_mode_after_next_from_server(Mode::Freeze);
    tls.renegotiate();
    // s_server sends nothing else after the 101: the next bytes from it are the HelloRequest.
    assert!(
        proxy.wait_switched(WAIT()),
        "s_server's HelloRequest never passed the proxy; s_server printed:\n{}",
        tls.printed()
    );
    Instant::now()
}

/// SPEC: whatever write is blocked, the connection is declared dead within
/// `ping-interval + 2 × pong-timeout`. Here the heartbeat's write is stuck inside OpenSSL,
/// which must first read the renegotiation's answer.
#[test]
fn a_renegotiation_that_never_completes_is_declared_dead() {
    let pki = Pki::new();
    let mut tls = SServer::start(&pki, &["-tls1_2", "-naccept", "1"]);
    let proxy = Proxy::start(tls.addr());
    // s_server answers no Ping: the first one (after 2 s) must come after the freeze, which
    // follows the upgrade within milliseconds.
    let (interval, pong_timeout) = (ms(2000), ms(1000));
    let mut c = through_proxy_to_s_server(
        &proxy,
        &pki,
        &[("--ping-interval", "2s"), ("--pong-timeout", "1s")],
    )
    .spawn();
    let frozen_at = stall_in_renegotiation(&mut tls, &proxy, &mut c);
    let bound = interval + pong_timeout * 2;
    let limit = scaled(bound * 3);
    let reconnected = proxy.wait_accepted(2, limit);
    let waited = frozen_at.elapsed();
    eprintln!(
        "renegotiation stall: reconnect attempt {} {waited:?} after the freeze (bound {bound:?}, \
         asserted within {limit:?})",
        if reconnected { "seen" } else { "not seen" }
    );
    assert!(
        reconnected,
        "the connection stuck in a TLS renegotiation was not declared dead within {limit:?} \
         (contract: {bound:?}); no reconnect attempt reached the proxy\n{}",
        c.output().dump()
    );
    assert!(logged(&mut c, "connection lost"), "{}", c.output().dump());
}

/// SPEC: SIGTERM exits within 2 s, also after a SIGHUP that met a connection whose writes
/// are stuck inside OpenSSL (the reload's Close cannot be written).
#[test]
fn sighup_then_sigterm_during_a_stuck_renegotiation_still_exits() {
    let pki = Pki::new();
    let mut tls = SServer::start(&pki, &["-tls1_2", "-naccept", "1"]);
    let proxy = Proxy::start(tls.addr());
    // Long enough that no heartbeat and no dead-connection verdict comes first: the signals
    // meet the stuck connection.
    let mut c = through_proxy_to_s_server(
        &proxy,
        &pki,
        &[("--ping-interval", "30s"), ("--pong-timeout", "10s")],
    )
    .spawn();
    stall_in_renegotiation(&mut tls, &proxy, &mut c);
    // Time for the reader to take the HelloRequest and answer it (into the frozen proxy).
    thread::sleep(ms(500));
    c.signal(libc::SIGHUP);
    expect_logged(&mut c, WAIT(), "SIGHUP");
    thread::sleep(ms(1000));
    c.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let limit = scaled(ms(3000));
    let code = c.wait_exit(limit);
    eprintln!(
        "SIGHUP then SIGTERM in a stuck renegotiation: exit {code:?} after {:?} (contract 2 s, \
         asserted within {limit:?})",
        signalled.elapsed()
    );
    assert_eq!(
        code,
        Some(0),
        "SIGTERM must end the process within 2 s (asserted {limit:?}), also after a SIGHUP \
         that met a connection stuck in TLS\n{}",
        c.output().dump()
    );
}

/// `--connect-timeout` bounds the whole attempt, also when every read of the TLS handshake
/// returns a byte in time.
#[test]
fn a_dripping_tls_handshake_does_not_overrun_the_connect_timeout() {
    let pki = Pki::new();
    let server = Server::start_tls(Behavior::default(), &pki, false);
    let proxy = Proxy::start(server.addr());
    proxy.set_mode(Mode::Drip {
        chunk: 1,
        every: ms(20),
    });
    let run = Wsbeat::new()
        .arg(proxy.url_scheme("wss"))
        .arg("--ca-file")
        .arg(&pki.ca_file)
        .args(["--once", "--connect-timeout", "300ms"]);
    let started = Instant::now();
    let out = run.run(WAIT());
    let took = started.elapsed();
    let limit = scaled(ms(900));
    eprintln!(
        "dripped TLS handshake, --connect-timeout 300ms: exit {:?} after {took:?} (asserted \
         within {limit:?})",
        out.code
    );
    assert_eq!(out.code, Some(1), "the probe fails\n{}", out.dump());
    assert_eq!(proxy.accepted(), 1, "one attempt\n{}", out.dump());
    assert!(
        took < limit,
        "an attempt whose TLS handshake drips in took {took:?} at --connect-timeout 300ms \
         (asserted within {limit:?})\n{}",
        out.dump()
    );
}

/// Writes `line-<n>` to a child's stdin every `period` on its own thread; stops on drop.
struct LineFeed {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl LineFeed {
    fn start(mut stdin: ChildStdin, period: Duration) -> LineFeed {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut n = 0u64;
            while !stopped.load(Ordering::Relaxed) {
                n += 1;
                if writeln!(stdin, "line-{n}").is_err() {
                    break;
                }
                thread::sleep(period);
            }
        });
        LineFeed {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for LineFeed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A server that talks (a message every 200 ms) behind a proxy, and `wsbeat` with
/// `--ping-interval <interval> --pong-timeout 1s`, connected and receiving.
fn talking_server(interval: &str) -> (Server, Proxy, Running) {
    let server = Server::start(Behavior::default().send_every(ms(200), "tick"));
    let proxy = Proxy::start(server.addr());
    let mut c = Wsbeat::new()
        .arg(proxy.url())
        .fast_with(&[("--ping-interval", interval), ("--pong-timeout", "1s")])
        .spawn();
    c.expect_line(WAIT(), "a message from the server", |l| l == "tick");
    (server, proxy, c)
}

/// SPEC: a path that stops delivering what the client sends is detected within
/// `2 × ping-interval + pong-timeout` of the first message it swallowed, even while the
/// server keeps talking.
fn one_way_failure_is_detected_while_the_server_talks(interval: &str) {
    let (server, proxy, mut c) = talking_server(interval);
    let _feed = LineFeed::start(c.take_stdin().expect("stdin"), ms(100));
    server.expect_count(WAIT(), 3, "3 stdin lines", |e| {
        e.conn == 0 && e.text().is_some_and(|t| t.starts_with("line-"))
    });
    proxy.set_mode(Mode::DropUpstream);
    // The next line (within 100 ms) is the first one swallowed.
    let dropped_at = Instant::now();
    let bound = ms(2 * 1000 + 1000);
    let limit = scaled(ms(8000));
    let reconnected = proxy.wait_accepted(2, limit);
    let waited = dropped_at.elapsed();
    eprintln!(
        "upstream dropped, --ping-interval {interval}: reconnect attempt {} {waited:?} after the \
         drop (bound {bound:?} from the first swallowed line, asserted within {limit:?})",
        if reconnected { "seen" } else { "not seen" }
    );
    assert!(
        reconnected,
        "a path swallowing every line while the server talks was not detected within {limit:?} \
         (contract: {bound:?} after the first swallowed line)\n{}\n{}",
        server.dump(),
        c.output().dump()
    );
}

#[test]
fn one_way_failure_is_detected_while_the_server_talks_fixed_interval() {
    one_way_failure_is_detected_while_the_server_talks("1s");
}

#[test]
fn one_way_failure_is_detected_while_the_server_talks_auto_interval() {
    // The learned interval starts at its minimum.
    one_way_failure_is_detected_while_the_server_talks("auto:1s..60s");
}

/// SPEC: a client that has sent nothing of its own since the last answered heartbeat is not
/// torn down while the server talks. Guards the fix for the test above.
fn silent_client_is_kept_while_the_server_talks(interval: &str) {
    let (_server, proxy, mut c) = talking_server(interval);
    proxy.set_mode(Mode::DropUpstream);
    let window = ms(6000);
    let reconnected = proxy.wait_accepted(2, window);
    assert!(
        !reconnected,
        "a client that sent nothing was torn down within {window:?} while the server talked\n{}",
        c.output().dump()
    );
    assert!(!logged(&mut c, "connection lost"), "{}", c.output().dump());
    c.expect_line(WAIT(), "messages still arriving", |l| l == "tick");
}

#[test]
fn silent_client_is_kept_while_the_server_talks_fixed_interval() {
    silent_client_is_kept_while_the_server_talks("1s");
}

#[test]
fn silent_client_is_kept_while_the_server_talks_auto_interval() {
    silent_client_is_kept_while_the_server_talks("auto:1s..60s");
}

/// SPEC: the bytes of a frame still arriving prove the path alive, so a Pong queued behind a
/// large message on a slow link is not taken for death. The server sends the message on its
/// own (the client has sent nothing of its own, so only that rule is at stake).
#[test]
fn a_large_message_arriving_slowly_is_not_death() {
    const SIZE: usize = 512 * 1024;
    let big = "x".repeat(SIZE);
    let server = Server::start(Behavior::default().send(&big));
    let proxy = Proxy::start(server.addr());
    // 4 KiB per 20 ms: the message takes about 2.6 s, longer than interval + pong timeout;
    // the 101 before it fits in the first piece.
    proxy.set_mode(Mode::Drip {
        chunk: 4096,
        every: ms(20),
    });
    let mut c = Wsbeat::new()
        .arg(proxy.url())
        .fast_with(&[
            ("--ping-interval", "1s"),
            ("--pong-timeout", "1s"),
            ("--max-message-size", "1048576"),
        ])
        .spawn();
    server.expect_upgrades(WAIT(), 1);
    let sent = Instant::now();
    let limit = scaled(ms(10_000));
    let line = c.wait_line(limit, |l| l.len() > 100);
    let took = sent.elapsed();
    eprintln!(
        "512 KiB dripped: {} after {took:?}; {} connection(s)",
        match &line {
            Some(l) => format!("a {}-byte line", l.len()),
            None => "no line".into(),
        },
        proxy.accepted()
    );
    let Some(line) = line else {
        panic!(
            "the 512 KiB message never arrived whole within {limit:?}\n{}\n{}",
            server.dump(),
            c.output().dump()
        );
    };
    assert!(
        line == big,
        "the message arrived changed ({} bytes)",
        line.len()
    );
    assert!(
        took >= ms(2000),
        "rig: the message arrived in {took:?}, too fast to outlast interval + pong timeout"
    );
    // The Pongs that waited behind it come next; the connection stays.
    thread::sleep(ms(1500));
    assert_eq!(proxy.accepted(), 1, "{}", c.output().dump());
    assert!(!logged(&mut c, "connection lost"), "{}", c.output().dump());
}
