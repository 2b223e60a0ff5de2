//! Nothing lost, nothing stuck: a burst on stdin while connected, the byte bound of the
//! outage queue, a stdout nobody reads, and a peer that stops reading while it keeps
//! sending Pings.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use crate::util::proxy::{Mode, Proxy};
use crate::util::server::{Behavior, Server};
use crate::util::{TempDir, WAIT, Wsbeat, clean_command, ms, poll_until, read_status, scaled};

fn status(path: &Path) -> HashMap<String, String> {
    read_status(path).unwrap_or_default()
}

/// `cat big.log | wsbeat URL` while connected: every line arrives, in order, none is
/// counted as dropped (a full queue pauses reading stdin instead).
#[test]
fn a_stdin_burst_while_connected_is_delivered_whole() {
    const LINES: usize = 20_000;
    let server = Server::start(Behavior::default());
    let dir = TempDir::new();
    let status_path = dir.join("status");
    // A pong timeout that a loaded machine cannot miss: this test is about the data.
    let mut c = Wsbeat::new()
        .arg(server.url())
        .fast_with(&[("--pong-timeout", "5s")])
        .arg("--status-file")
        .arg(&status_path)
        .spawn();
    server.expect_upgrades(WAIT(), 1);
    // Connected as the client sees it (the server's view comes first): from here on
    // nothing may be dropped.
    let connected = poll_until(WAIT(), || {
        (status(&status_path).get("state").map(String::as_str) == Some("connected")).then_some(())
    });
    assert!(connected.is_some(), "{}", c.output().stderr);
    let mut stdin = c.take_stdin().expect("stdin");
    let burst: String = (0..LINES).map(|i| format!("line {i}\n")).collect();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(burst.as_bytes());
        stdin
    });
    let all = poll_until(scaled(ms(30_000)), || {
        (server.count(|e| e.text().is_some()) >= LINES).then_some(())
    });
    let _stdin = writer.join().expect("writer");
    let texts = server.texts(0);
    assert!(
        all.is_some(),
        "{} of {LINES} lines arrived\n{}",
        texts.len(),
        c.output().stderr
    );
    let expected: Vec<String> = (0..LINES).map(|i| format!("line {i}")).collect();
    assert!(texts == expected, "lines lost, repeated or out of order");
    assert_eq!(server.upgrades(), 1);
    let dropped = poll_until(WAIT(), || status(&status_path).remove("dropped"));
    assert_eq!(dropped.as_deref(), Some("0"));
}

/// While disconnected the queue holds at most `--queue-bytes` bytes: large lines
/// written during an outage cost bounded memory, the oldest are dropped and counted.
#[test]
fn the_outage_queue_is_bounded_in_bytes() {
    let server = Server::start(Behavior::default());
    let proxy = Proxy::start(server.addr());
    let dir = TempDir::new();
    let status_path = dir.join("status");
    let mut c = Wsbeat::new()
        .arg(proxy.url())
        .fast()
        .args(["--queue-bytes", "300000"])
        .arg("--status-file")
        .arg(&status_path)
        .spawn();
    server.expect_upgrades(WAIT(), 1);
    proxy.disconnect(1);
    // Ten lines of 100 KiB each; the bound keeps the newest two (three would be 307,200 bytes).
    for i in 0..10 {
        c.write_line(&format!("{i}{}", "x".repeat(100 * 1024 - 1)));
    }
    let dropped = poll_until(WAIT(), || {
        status(&status_path).remove("dropped").filter(|d| d != "0")
    });
    assert!(dropped.is_some(), "{}", c.output().stderr);
    let n = proxy.accepted();
    assert!(proxy.wait_accepted(n + 1, WAIT()));
    proxy.set_mode(Mode::Pass);
    let up = server.expect_upgrades(WAIT(), 2);
    server.expect_count(WAIT(), 2, "2 queued lines", |e| {
        e.conn == up.conn && e.text().is_some()
    });
    assert!(
        server
            .wait_count(ms(300), 3, |e| e.conn == up.conn && e.text().is_some())
            .is_none(),
        "more than the byte bound was kept"
    );
    let firsts: Vec<char> = server
        .texts(up.conn)
        .iter()
        .filter_map(|t| t.chars().next())
        .collect();
    assert_eq!(firsts, ['8', '9']);
    let dropped = poll_until(WAIT(), || {
        status(&status_path).remove("dropped").filter(|d| d == "8")
    });
    assert!(dropped.is_some(), "{:?}", status(&status_path));
}

/// A server that talks more than stdout takes: reading pauses (no reconnect, the
/// heartbeat does not blame the server), nothing received is dropped, and once the
/// consumer reads again every message comes out in order.
#[test]
fn a_stdout_that_stops_reading_pauses_the_server_and_loses_nothing() {
    // 12 MB: more than the output buffer (--queue-bytes, 1 MiB), the pipe and the
    // socket buffers hold together.
    const MESSAGES: usize = 40_000;
    let mut behavior = Behavior::default();
    for i in 0..MESSAGES {
        behavior = behavior.send(&format!("{i:05} {}", "y".repeat(300)));
    }
    let server = Server::start(behavior);
    let dir = TempDir::new();
    let log_path = dir.join("stderr");
    let mut child = clean_command()
        .arg(server.url())
        .args(["--ping-interval", "200ms", "--pong-timeout", "1s"])
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&log_path).expect("create log"))
        .spawn()
        .expect("spawn wsbeat");
    let stdout = child.stdout.take().expect("stdout");
    server.expect_upgrades(WAIT(), 1);
    // Several pong timeouts with nobody reading stdout.
    let quiet_until = Instant::now() + scaled(ms(3000));
    let pings_before = server.count(|e| e.is_ping());
    std::thread::sleep(quiet_until.saturating_duration_since(Instant::now()));
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(server.upgrades(), 1, "reconnected\n{}", log());
    // The heartbeat kept going while reading was paused.
    assert!(server.count(|e| e.is_ping()) > pings_before, "{}", log());
    let mut lines = BufReader::new(stdout).lines();
    for i in 0..MESSAGES {
        let line = lines.next().and_then(Result::ok);
        let expected = format!("{i:05} ");
        assert!(
            line.as_deref().is_some_and(|l| l.starts_with(&expected)),
            "message {i}: got {line:?}\n{}",
            log()
        );
    }
    assert_eq!(server.upgrades(), 1, "reconnected\n{}", log());
    assert!(
        log().contains("reading paused"),
        "the reader never paused: the flood did not fill the buffer\n{}",
        log()
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGTERM and the status file do not wait on a stdout nobody reads: the client exits
/// 0 within the contract's 2 s and says that output was lost.
#[test]
fn sigterm_with_a_stdout_nobody_reads_exits_within_2s() {
    let server = Server::start(Behavior::default().flood(1000));
    let dir = TempDir::new();
    let log_path = dir.join("stderr");
    let status_path = dir.join("status");
    let mut child = clean_command()
        .arg(server.url())
        .args(["--ping-interval", "200ms", "--pong-timeout", "1s"])
        .arg("--status-file")
        .arg(&status_path)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&log_path).expect("create log"))
        .spawn()
        .expect("spawn wsbeat");
    let _unread = child.stdout.take();
    server.expect_upgrades(WAIT(), 1);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let paused = poll_until(WAIT(), || log().contains("reading paused").then_some(()));
    assert!(paused.is_some(), "{}", log());
    assert_eq!(
        status(&status_path).get("state").map(String::as_str),
        Some("connected")
    );
    let pid = child.id() as libc::pid_t;
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let signalled = Instant::now();
    let exited = poll_until(scaled(ms(5000)), || child.try_wait().ok().flatten());
    let took = signalled.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(exited.and_then(|s| s.code()), Some(0), "{}", log());
    assert!(
        took < scaled(ms(2000)) + ms(500),
        "took {took:?}\n{}",
        log()
    );
    assert!(log().contains("not written"), "{}", log());
    assert_eq!(
        status(&status_path).get("state").map(String::as_str),
        Some("stopped")
    );
}

/// A peer that floods Pings and stops reading: the Pongs the client owes fill the socket,
/// and a write that runs into --pong-timeout declares the connection dead, although
/// frames keep arriving. (Before, each Pong write waited out the timeout in turn and
/// the flood of Pings counted as proof of life: no reconnect for minutes.)
#[test]
fn a_blocked_pong_write_is_a_dead_connection() {
    let server = Server::start_first(Behavior::silent().ping_flood());
    let mut c = Wsbeat::new()
        .arg(server.url())
        .args(["--ping-interval", "60s", "--pong-timeout", "1s"])
        .args(["--backoff-initial", "100ms", "--backoff-max", "100ms"])
        .spawn();
    server.expect_upgrades(WAIT(), 1);
    // Far below the 60 s heartbeat: only the write bound can find it.
    let second = server.wait_count(scaled(ms(15_000)), 2, |e| e.is_upgraded());
    assert!(second.is_some(), "no reconnect\n{}", c.output().stderr);
    assert!(
        c.output().stderr.contains("write timed out"),
        "{}",
        c.output().stderr
    );
}
