//! Heartbeat of the real binary as the server sees it: cadence and payloads of control pings,
//! text mode, answering server pings, detecting a server that stops answering, `--strict-pong`
//! versus "any frame proves liveness", and heartbeats on time under a message flood.

use std::time::Duration;

use crate::util::server::{Behavior, Event, Kind, Pongs, Server};
use crate::util::{WAIT, Wsbeat, ms, scaled};

/// Gaps between consecutive events.
fn gaps(events: &[Event]) -> Vec<Duration> {
    events.windows(2).map(|w| w[1].at - w[0].at).collect()
}

#[test]
fn control_pings_follow_the_interval_with_distinct_payloads() {
    let server = Server::start(Behavior::default());
    let _c = Wsbeat::new().arg(server.url()).fast().spawn();
    let pings = server.expect_count(WAIT(), 6, "6 pings", |e| e.is_ping() && e.conn == 0);
    let payloads: Vec<Vec<u8>> = pings
        .iter()
        .map(|e| match &e.kind {
            Kind::Ping(p) => p.clone(),
            _ => unreachable!(),
        })
        .collect();
    for p in &payloads {
        assert!(!p.is_empty(), "pings carry a payload");
    }
    for (i, a) in payloads.iter().enumerate() {
        for b in &payloads[i + 1..] {
            assert_ne!(a, b, "payloads must differ per ping: {payloads:?}");
        }
    }
    for g in gaps(&pings[..6]) {
        assert!(g >= ms(150), "pings too close: {g:?}\n{}", server.dump());
        assert!(
            g <= ms(200) + scaled(ms(400)),
            "ping late: {g:?}\n{}",
            server.dump()
        );
    }
    assert_eq!(
        server.upgrades(),
        1,
        "answered heartbeats keep the connection"
    );
}

#[test]
fn text_mode_sends_ping_text_and_hides_pong_text() {
    let server = Server::start(
        Behavior::default()
            .reply("PING!", "PONG!")
            .send_every(ms(150), "news"),
    );
    let mut c = Wsbeat::new()
        .arg(server.url())
        .fast()
        .args([
            "--heartbeat",
            "text",
            "--ping-text",
            "PING!",
            "--pong-text",
            "PONG!",
        ])
        .arg("--strict-pong")
        .spawn();
    let pings = server.expect_count(WAIT(), 5, "5 text pings", |e| e.text() == Some("PING!"));
    for g in gaps(&pings[..5]) {
        assert!(g >= ms(150) && g <= ms(200) + scaled(ms(400)), "{g:?}");
    }
    assert_eq!(
        server.count(|e| e.is_ping()),
        0,
        "no control pings in text mode"
    );
    // With --strict-pong only the matching text reply proves liveness: no reconnects.
    assert_eq!(server.upgrades(), 1, "{}", server.dump());
    let lines = c.lines_within(ms(300));
    assert!(lines.iter().any(|l| l == "news"), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.contains("PONG!")),
        "pong text printed: {lines:?}"
    );
    c.kill();
    let out = c.output();
    assert!(!out.stdout.contains("PONG!"), "{}", out.dump());
}

#[test]
fn text_mode_without_reply_and_strict_pong_reconnects() {
    let server = Server::start(Behavior::default().send_every(ms(100), "not the pong"));
    let _c = Wsbeat::new()
        .arg(server.url())
        .fast()
        .args(["--heartbeat", "text", "--strict-pong"])
        .spawn();
    let up = server.expect_upgrades(WAIT(), 2);
    assert!(up.conn >= 1);
}

#[test]
fn server_pings_are_answered_at_once_while_idle() {
    let server = Server::start(Behavior::default().ping_every(ms(100)));
    // Heartbeat off: the client is idle apart from answering.
    let _c = Wsbeat::new()
        .arg(server.url())
        .args(["--ping-interval", "0"])
        .spawn();
    let pongs = server.expect_count(WAIT(), 10, "10 pongs", |e| {
        matches!(e.kind, Kind::Pong { .. })
    });
    let mut lat: Vec<Duration> = pongs
        .iter()
        .map(|e| match &e.kind {
            Kind::Pong { latency, payload } => {
                latency.unwrap_or_else(|| panic!("pong {payload:?} does not match a server ping"))
            }
            _ => unreachable!(),
        })
        .collect();
    lat.sort();
    let median = lat[lat.len() / 2];
    eprintln!("server ping latencies: {lat:?}");
    assert!(median <= scaled(ms(10)), "median pong latency {median:?}");
    assert!(
        lat[lat.len() - 1] <= scaled(ms(200)),
        "max pong latency {lat:?}"
    );
    assert_eq!(server.count(|e| e.is_ping()), 0, "heartbeat is off");
}

#[test]
fn server_that_stops_reading_is_detected_and_replaced() {
    let server = Server::start_first(Behavior::silent());
    let _c = Wsbeat::new().arg(server.url()).fast().spawn();
    let first = server.expect_upgrades(WAIT(), 1);
    let second = server.expect_upgrades(WAIT(), 2);
    let took = second.at - first.at;
    // Worst case ping-interval + pong-timeout, plus at most backoff-max before the new attempt.
    assert!(
        took <= ms(200 + 500 + 200) + scaled(ms(1000)),
        "detection took {took:?}\n{}",
        server.dump()
    );
    assert!(took >= ms(450), "dropped before the pong timeout: {took:?}");
}

#[test]
fn server_that_reads_but_never_pongs_is_detected() {
    let server = Server::start_first(Behavior::default().pongs(Pongs::Never));
    let _c = Wsbeat::new().arg(server.url()).fast().spawn();
    let first = server.expect_upgrades(WAIT(), 1);
    let second = server.expect_upgrades(WAIT(), 2);
    let took = second.at - first.at;
    assert!(
        took <= ms(900) + scaled(ms(1000)),
        "took {took:?}\n{}",
        server.dump()
    );
    assert!(
        server.count(|e| e.conn == 0 && e.is_ping()) >= 1,
        "{}",
        server.dump()
    );
}

#[test]
fn wrong_pong_payload_is_dead_only_with_strict_pong() {
    let server = Server::start(Behavior::default().pongs(Pongs::WrongPayload));
    let c = Wsbeat::new().arg(server.url()).fast().spawn();
    server.expect_upgrades(WAIT(), 1);
    // Ten heartbeats with a wrong answer: by default any frame proves liveness.
    server.expect_count(WAIT(), 10, "10 pings", |e| e.is_ping());
    assert_eq!(server.upgrades(), 1, "{}", server.dump());
    drop(c);

    let server = Server::start(Behavior::default().pongs(Pongs::WrongPayload));
    let _c = Wsbeat::new()
        .arg(server.url())
        .fast()
        .arg("--strict-pong")
        .spawn();
    let first = server.expect_upgrades(WAIT(), 1);
    let second = server.expect_upgrades(WAIT(), 2);
    assert!(second.at - first.at <= ms(900) + scaled(ms(1000)));
}

#[test]
fn any_frame_proves_liveness_unless_strict() {
    let b = Behavior::default()
        .pongs(Pongs::Never)
        .send_every(ms(100), "tick");
    let server = Server::start(b.clone());
    let mut c = Wsbeat::new().arg(server.url()).fast().spawn();
    server.expect_count(WAIT(), 10, "10 pings", |e| e.is_ping());
    assert_eq!(
        server.upgrades(),
        1,
        "texts prove liveness\n{}",
        server.dump()
    );
    assert_eq!(c.next_line(WAIT()).as_deref(), Some("tick"));
    drop(c);

    let server = Server::start(b);
    let _c = Wsbeat::new()
        .arg(server.url())
        .fast()
        .arg("--strict-pong")
        .spawn();
    server.expect_upgrades(WAIT(), 2);
}

#[test]
fn heartbeat_on_time_while_server_floods() {
    let server = Server::start(Behavior::default().flood(1000));
    let _c = Wsbeat::new()
        .arg(server.url())
        .fast_with(&[("--pong-timeout", "2s")])
        .stdout_null()
        .spawn();
    let pings = server.expect_count(WAIT(), 8, "8 pings during the flood", |e| {
        e.is_ping() && e.conn == 0
    });
    for g in gaps(&pings[..8]) {
        assert!(
            g <= ms(200) + scaled(ms(400)),
            "heartbeat starved by the flood: gap {g:?}"
        );
    }
    assert_eq!(server.upgrades(), 1, "{}", server.dump());
}
