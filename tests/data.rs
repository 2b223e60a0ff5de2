//! Data path of the real binary: stdin lines → text messages, text messages → stdout lines,
//! the queue while disconnected (order, drop-oldest), stdin EOF, binary messages, and
//! `--max-message-size`.

use std::fs::File;
use std::process::Stdio;

use crate::util::proxy::{Mode, Proxy};
use crate::util::server::{Behavior, Kind, Msg, Server};
use crate::util::{TempDir, WAIT, Wsbeat, clean_command, ms, scaled};

#[test]
fn stdin_lines_become_text_messages_in_order() {
    let server = Server::start(Behavior::default());
    let mut c = Wsbeat::new().arg(server.url()).fast().spawn();
    server.expect_upgrades(WAIT(), 1);
    let sent: Vec<String> = (1..=50).map(|i| format!("line {i} ✓")).collect();
    for l in &sent {
        c.write_line(l);
    }
    server.expect_count(WAIT(), 50, "50 texts", |e| e.text().is_some());
    assert_eq!(server.texts(0), sent);
}

#[test]
fn server_texts_become_stdout_lines() {
    let server = Server::start(
        Behavior::default()
            .send("hello")
            .send("héllo wörld ✓")
            .send(""),
    );
    let mut c = Wsbeat::new().arg(server.url()).fast().spawn();
    assert_eq!(c.next_line(WAIT()).as_deref(), Some("hello"));
    assert_eq!(c.next_line(WAIT()).as_deref(), Some("héllo wörld ✓"));
    assert_eq!(c.next_line(WAIT()).as_deref(), Some(""));
}

#[test]
fn binary_messages_are_not_printed() {
    let server = Server::start(
        Behavior::default()
            .send_msg(Msg::Binary(b"binary\n".to_vec()))
            .send("after"),
    );
    let mut c = Wsbeat::new().arg(server.url()).fast().spawn();
    assert_eq!(c.next_line(WAIT()).as_deref(), Some("after"));
}

#[test]
fn lines_written_while_disconnected_are_delivered_in_order() {
    let server = Server::start(Behavior::default());
    let proxy = Proxy::start(server.addr());
    let mut c = Wsbeat::new().arg(proxy.url()).fast().spawn();
    server.expect_upgrades(WAIT(), 1);
    c.write_line("before");
    server.expect(WAIT(), "before", |e| e.text() == Some("before"));

    proxy.disconnect(1);
    for l in ["q1", "q2", "q3", "q4"] {
        c.write_line(l);
    }
    // Let the client read them while still disconnected.
    let n = proxy.accepted();
    assert!(proxy.wait_accepted(n + 2, WAIT()));
    proxy.set_mode(Mode::Pass);
    let up = server.expect_upgrades(WAIT(), 2);
    server.expect_count(WAIT(), 4, "4 queued lines", |e| {
        e.conn == up.conn && e.text().is_some()
    });
    assert_eq!(server.texts(up.conn), ["q1", "q2", "q3", "q4"]);
    // And the link works as usual afterwards.
    c.write_line("after");
    server.expect(WAIT(), "after", |e| e.text() == Some("after"));
    assert_eq!(server.texts(up.conn), ["q1", "q2", "q3", "q4", "after"]);
}

#[test]
fn queue_overflow_drops_the_oldest() {
    let server = Server::start(Behavior::default());
    let proxy = Proxy::start(server.addr());
    let mut c = Wsbeat::new()
        .arg(proxy.url())
        .fast()
        .args(["--queue-size", "2"])
        .spawn();
    server.expect_upgrades(WAIT(), 1);
    proxy.disconnect(1);
    for l in ["d1", "d2", "d3", "d4", "d5"] {
        c.write_line(l);
    }
    let n = proxy.accepted();
    assert!(proxy.wait_accepted(n + 3, WAIT()));
    proxy.set_mode(Mode::Pass);
    let up = server.expect_upgrades(WAIT(), 2);
    server.expect_count(WAIT(), 2, "2 queued lines", |e| {
        e.conn == up.conn && e.text().is_some()
    });
    // Nothing more arrives.
    assert!(
        server
            .wait_count(ms(300), 3, |e| e.conn == up.conn && e.text().is_some())
            .is_none()
    );
    assert_eq!(server.texts(up.conn), ["d4", "d5"]);
}

#[test]
fn stdin_eof_does_not_stop_the_client() {
    let server = Server::start(Behavior::default().send_every(ms(100), "tick"));
    let mut c = Wsbeat::new().arg(server.url()).fast().spawn();
    server.expect_upgrades(WAIT(), 1);
    c.close_stdin();
    let eof_at = std::time::Instant::now();
    // Heartbeats and received messages go on after EOF.
    server.expect_count(WAIT(), 3, "3 pings after EOF", |e| {
        e.is_ping() && e.at > eof_at
    });
    c.expect_line(WAIT(), "tick after EOF", |l| l == "tick");
    assert!(c.is_running());

    // Same with /dev/null as stdin, as under systemd.
    let mut c = Wsbeat::new().arg(server.url()).fast().stdin_null().spawn();
    let up = server.expect_upgrades(WAIT(), 2);
    server.expect_count(WAIT(), 3, "3 pings", |e| e.is_ping() && e.conn == up.conn);
    assert!(c.is_running());
}

/// A stdout that breaks (the consumer went away, or journald restarted) does not stop
/// the client: one warning, and the same connection stays up.
#[test]
fn broken_stdout_warns_once_and_keeps_the_connection() {
    let server = Server::start(Behavior::default().send_every(ms(50), "tick"));
    let dir = TempDir::new();
    let log_path = dir.join("stderr");
    let log = File::create(&log_path).expect("create log");
    let mut child = clean_command()
        .arg(server.url())
        .args(["--ping-interval", "100ms", "--pong-timeout", "2s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn wsbeat");
    drop(child.stdout.take());
    let up = server.expect_upgrades(WAIT(), 1);
    server.expect_count(WAIT(), 20, "20 pings", |e| e.is_ping() && e.conn == up.conn);
    let running = child.try_wait().expect("try_wait").is_none();
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).expect("read log");
    assert!(running, "exited\n{log}");
    assert_eq!(server.upgrades(), 1, "reconnected\n{log}");
    assert_eq!(
        log.matches("server messages are discarded").count(),
        1,
        "one warning expected\n{log}"
    );
}

#[test]
fn oversized_message_closes_with_1009_and_reconnects() {
    let server = Server::start_with(|n| {
        if n == 0 {
            Behavior::default()
                .send(&"a".repeat(1000))
                .send(&"b".repeat(2000))
        } else {
            Behavior::default().send("small")
        }
    });
    let mut c = Wsbeat::new()
        .arg(server.url())
        .fast()
        .args(["--max-message-size", "1000"])
        .spawn();
    let close = server.expect(WAIT(), "close from the client", |e| {
        e.conn == 0 && matches!(e.kind, Kind::Close { .. })
    });
    assert!(
        matches!(
            close.kind,
            Kind::Close {
                code: Some(1009),
                ..
            }
        ),
        "{close:?}"
    );
    server.expect_upgrades(scaled(WAIT()), 2);
    assert_eq!(
        c.next_line(WAIT()),
        Some("a".repeat(1000)),
        "limit is inclusive"
    );
    c.expect_line(WAIT(), "small", |l| l == "small");
    let out = c.output();
    assert!(!out.stdout.contains("bbbb"), "oversized message printed");
}
