//! Reconnecting of the real binary: half-open links, server close frames, rejected handshakes
//! (401, 500, 429/503 + Retry-After), connect timeouts (plain and TLS), a peer that stops
//! reading, and no file descriptor or thread growth over many reconnects.

use std::time::{Duration, Instant};

use crate::util::proxy::{Mode, Proxy};
use crate::util::server::{Behavior, Event, Kind, Server};
use crate::util::tls::Pki;
use crate::util::{StdinFlood, WAIT, Wsbeat, ms, poll_until, scaled};

fn accepted(server: &Server, n: usize) -> Vec<Event> {
    server.expect_count(WAIT(), n, &format!("{n} TCP accepts"), Event::is_accepted)
}

#[test]
fn half_open_link_is_detected_and_replaced() {
    let server = Server::start(Behavior::default());
    let proxy = Proxy::start(server.addr());
    let mut c = Wsbeat::new()
        .arg(proxy.url())
        .fast()
        .connect_timeout_scaled(ms(2000))
        .spawn();
    server.expect_upgrades(WAIT(), 1);
    server.expect(WAIT(), "a ping", |e| e.is_ping());
    proxy.set_mode(Mode::Blackhole);
    let t0 = std::time::Instant::now();
    assert!(proxy.wait_accepted(2, WAIT()), "no new connection");
    let took = t0.elapsed();
    assert!(
        took <= ms(200 + 500 + 200) + scaled(ms(1000)),
        "half-open detection took {took:?}"
    );
    proxy.set_mode(Mode::Pass);
    server.expect_upgrades(WAIT(), 2);
    assert!(c.is_running());
    let _ = c.lines_within(ms(0));
}

#[test]
fn server_close_is_answered_then_reconnects() {
    let server = Server::start_first(Behavior::default().close_after(ms(300), 4000, "maintenance"));
    let _c = Wsbeat::new().arg(server.url()).fast().spawn();
    let reply = server.expect(WAIT(), "the client's Close reply", |e| {
        e.conn == 0 && matches!(e.kind, Kind::Close { .. })
    });
    assert!(
        matches!(
            reply.kind,
            Kind::Close {
                code: Some(4000) | Some(1000),
                ..
            }
        ),
        "{reply:?}"
    );
    server.expect_upgrades(WAIT(), 2);
}

/// A server that drops TCP without a Close frame (a restart, a proxy's idle cut) is
/// reconnected to, and the log says plainly what happened.
#[test]
fn server_drop_without_close_is_reported_and_reconnected() {
    let server = Server::start_first(Behavior::default().drop_after(ms(100)));
    let mut c = Wsbeat::new().arg(server.url()).fast().spawn();
    server.expect_upgrades(WAIT(), 2);
    let reported = poll_until(WAIT(), || {
        let out = c.output();
        out.stderr
            .contains("server closed the TCP connection without a Close frame")
            .then_some(())
    });
    assert!(reported.is_some(), "{}", c.output().dump());
    assert!(c.is_running());
}

#[test]
fn unauthorized_waits_between_half_and_full_backoff_max() {
    let server = Server::start_first(Behavior::reject(401, &[]));
    let c = Wsbeat::new()
        .arg(server.url())
        .fast_with(&[("--backoff-max", "400ms")])
        .spawn();
    server.expect(WAIT(), "401", |e| e.kind == Kind::Rejected { status: 401 });
    server.expect_upgrades(WAIT(), 1);
    let a = accepted(&server, 2);
    let gap = a[1].at - a[0].at;
    assert!(gap >= ms(190), "401 retried after {gap:?} < backoff-max/2");
    assert!(
        gap <= ms(400) + scaled(ms(500)),
        "401 retried after {gap:?}"
    );
    drop(c);
}

#[test]
fn server_error_is_retried() {
    let server = Server::start_with(|n| {
        if n < 2 {
            Behavior::reject(500, &[])
        } else {
            Behavior::default()
        }
    });
    let c = Wsbeat::new().arg(server.url()).fast().spawn();
    server.expect_upgrades(WAIT(), 1);
    assert_eq!(server.count(|e| matches!(e.kind, Kind::Rejected { .. })), 2);
    drop(c);
}

#[test]
fn retry_after_is_honoured_for_503_and_429() {
    for status in [503, 429] {
        let server = Server::start_first(Behavior::reject(status, &[("Retry-After", "1")]));
        let c = Wsbeat::new().arg(server.url()).fast().spawn();
        server.expect_upgrades(scaled(ms(15_000)), 1);
        let a = accepted(&server, 2);
        let gap = a[1].at - a[0].at;
        assert!(
            gap >= ms(1000),
            "{status}: retried after {gap:?} < Retry-After"
        );
        assert!(
            gap <= ms(1100) + scaled(ms(1000)),
            "{status}: retried after {gap:?}"
        );
        drop(c);
    }
}

#[test]
fn connect_timeout_against_a_server_that_says_nothing() {
    let server = Server::start_first(Behavior::stall());
    let c = Wsbeat::new()
        .arg(server.url())
        .fast()
        .connect_timeout_scaled(ms(500))
        .spawn();
    server.expect_upgrades(WAIT(), 1);
    let a = accepted(&server, 2);
    let gap = a[1].at - a[0].at;
    // The client's deadline starts before the server sees TCP, so allow some slack below.
    assert!(
        gap >= scaled(ms(300)),
        "attempt ended long before the timeout: {gap:?}"
    );
    assert!(
        gap <= scaled(ms(500)) + ms(200) + scaled(ms(1000)),
        "attempt took {gap:?}"
    );
    drop(c);
}

#[test]
fn connect_timeout_covers_tls_and_upgrade() {
    let pki = Pki::new();
    // 0: TCP only (the TLS handshake stalls); 1: TLS done, upgrade never answered; 2: fine.
    let server = Server::start_tls_with(
        |n| match n {
            0 => Behavior::stall(),
            1 => Behavior::stall_upgrade(),
            _ => Behavior::default(),
        },
        &pki,
        false,
    );
    let mut c = Wsbeat::new()
        .arg(server.url())
        .fast()
        .connect_timeout_scaled(ms(500))
        .arg("--ca-file")
        .arg(&pki.ca_file)
        .spawn();
    server.expect_upgrades(WAIT(), 1);
    let a = accepted(&server, 3);
    for w in a.windows(2) {
        let gap = w[1].at - w[0].at;
        // The client's deadline starts before the server sees TCP (start-up, TLS set-up), so
        // the server-side gap may be somewhat shorter than the timeout.
        assert!(
            gap >= scaled(ms(300)),
            "attempt ended long before the timeout: {gap:?}"
        );
        assert!(
            gap <= scaled(ms(500)) + ms(200) + scaled(ms(1500)),
            "attempt took {gap:?}"
        );
    }
    assert!(
        c.is_running(),
        "client must not die on a stalled TLS handshake"
    );
}

#[test]
fn peer_that_stops_reading_cannot_freeze_the_client() {
    let server = Server::start(Behavior::default());
    let proxy = Proxy::start(server.addr());
    let mut c = Wsbeat::new()
        .arg(proxy.url())
        .fast()
        .connect_timeout_scaled(ms(2000))
        .args(["--queue-size", "10"])
        .spawn();
    server.expect_upgrades(WAIT(), 1);
    proxy.set_mode(Mode::StopReadingClient);
    let flood = StdinFlood::start(c.take_stdin().expect("stdin"));
    // The heartbeat still detects the dead link although sends block.
    assert!(
        proxy.wait_accepted(2, WAIT()),
        "client froze on a full socket"
    );
    flood.stop();
    proxy.set_mode(Mode::Pass);
    let up = server.expect_upgrades(WAIT(), 2);
    server.expect(WAIT(), "a ping on the new connection", |e| {
        e.conn == up.conn && e.is_ping()
    });
    assert!(c.is_running());
    c.kill();
    drop(flood);
}

#[test]
fn no_fd_or_thread_growth_over_50_reconnects() {
    let server = Server::start(Behavior::default());
    let proxy = Proxy::start(server.addr());
    let c = Wsbeat::new().arg(proxy.url()).fast().spawn();
    let mut at5 = (0, 0);
    for i in 1..=50 {
        let up = server.expect_upgrades(WAIT(), i);
        // Steady state: the connection answered a heartbeat.
        server.expect(WAIT(), "pong on this connection", |e| {
            e.conn == up.conn && e.is_ping()
        });
        if i == 5 {
            at5 = (c.fd_count(), c.thread_count());
            assert!(at5.0 > 0 && at5.1 > 0, "cannot read /proc/{}", c.pid());
        }
        if i == 50 {
            let ok = poll_until(scaled(ms(2000)), || {
                (c.fd_count() <= at5.0 + 1 && c.thread_count() <= at5.1).then_some(())
            });
            eprintln!(
                "after 5 reconnects: {} fds, {} threads; after 50: {} fds, {} threads",
                at5.0,
                at5.1,
                c.fd_count(),
                c.thread_count()
            );
            assert!(
                ok.is_some(),
                "growth after 50 reconnects: fds {} -> {}, threads {} -> {}",
                at5.0,
                c.fd_count(),
                at5.1,
                c.thread_count()
            );
        }
        proxy.cut();
    }
}

/// Rejections before the proven connection, then `CHECKS` quick rejections after it.
const GROW: usize = 8;
const CHECKS: usize = 6;

/// Waits for the TCP accept of connection `conn`, at most `within` after `since`; its time.
fn accept_within(server: &Server, conn: usize, since: Instant, within: Duration) -> Instant {
    let left = (since + within).saturating_duration_since(Instant::now());
    let e = server.wait_for(left, |e| e.conn == conn && e.is_accepted());
    match e {
        Some(e) if e.at - since <= within => e.at,
        _ => panic!(
            "attempt {conn} not within {within:?}: backoff not reset?\n{}",
            server.dump()
        ),
    }
}

/// After `GROW` failed attempts, connection `GROW` is accepted and kept up by `proof`;
/// once the client counts it as alive the test drops it, and the next `CHECKS` attempts
/// (all rejected) must each follow the previous within a short bound.
///
/// With `--backoff-initial 10ms` the caps after a reset are 10, 20, ... 320 ms, so with the
/// reset every gap is at most 320 ms + scheduling (slack 500 ms, scaled): no chance is
/// involved. Without the reset the caps are 2.56 s, 5.12 s, ... 81.92 s, and all six gaps
/// falling under 820 ms has probability 0.82^6 / (2.56 * 5.12 * 10.24 * 20.48 * 40.96 *
/// 81.92) < 4e-8 (< 1e-4 at time scale 5). Growing takes at most 10 + 20 + ... + 1280 ms =
/// 2.55 s, so no draw can make a working client miss a bound either.
fn backoff_resets_after(extra: &[&str], proof: impl FnOnce(&Server, Instant)) {
    let server = Server::start_with(|n| {
        if n == GROW {
            Behavior::default()
        } else {
            Behavior::reject(500, &[])
        }
    });
    let _c = Wsbeat::new()
        .arg(server.url())
        .args(["--backoff-initial", "10ms", "--backoff-max", "10m"])
        .args(extra)
        .spawn();
    let up = server.expect_upgrades(WAIT() + scaled(ms(2550)), 1);
    assert_eq!(up.conn, GROW);
    proof(&server, up.at);
    let mut since = Instant::now();
    server.drop_conn(GROW);
    for conn in GROW + 1..=GROW + CHECKS {
        since = accept_within(&server, conn, since, ms(320) + scaled(ms(500)));
    }
}

/// A connection whose heartbeat was answered resets the backoff: reconnects are quick again.
#[test]
fn backoff_resets_once_a_heartbeat_is_answered() {
    backoff_resets_after(&["--ping-interval", "200ms"], |server, _| {
        // The client's second Ping comes a ping interval after the first was answered.
        server.expect_count(WAIT(), 2, "2 heartbeats", |e| e.conn == GROW && e.is_ping());
    });
}

// With the heartbeat off, 10 s up is the proof instead: a rule of the pure machine, tested
// there in virtual time (machine::tests::with_the_heartbeat_off_ten_quiet_seconds_are_the_proof).
