//! The link watch wired into the client (SPEC "Real networks", network changes), on the
//! kernel's own networking in namespaces ([`Pair`]): the live connection's local address
//! removed or its interface down → the connection is dead at once, far sooner than the
//! heartbeat could tell (60 s + 10 s here); while waiting to retry after many failures, a new
//! address or default route cuts the wait to `[0, backoff-initial]`; `--no-link-watch` does
//! neither; and an idle client with the watch on (heartbeat off) is not woken.
//!
//! The watcher itself (parsing the kernel's messages, no polling) is tested in `network.rs`.

use std::time::{Duration, Instant};

use crate::util::netns::{self, DEV4, Pair, SRV4};
use crate::util::server::{Behavior, Server};
use crate::util::{Running, WAIT, Wsbeat, ms, poll_until, scaled, send_signal, watchdog};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A second device address, in the same subnet: promoted when [`DEV4`] goes.
const DEV4_SECOND: &str = "10.231.0.3";
/// A server address the device reaches only through a default route.
const FAR4: &str = "10.231.9.2";

/// Waits (bounded) until the child's stderr contains `needle`; when it was seen, or a panic
/// with its output.
fn wait_stderr(w: &mut Running, needle: &str, timeout: Duration) -> Instant {
    match poll_until(timeout, || w.output().stderr.contains(needle).then_some(())) {
        Some(()) => Instant::now(),
        None => panic!(
            "stderr never showed {needle:?} within {timeout:?}\n{}",
            w.output().dump()
        ),
    }
}

/// The backoff waits the client logged (`reconnecting in …`), in order; not the cut ones.
fn retry_delays(stderr: &str) -> Vec<Duration> {
    stderr
        .lines()
        .filter(|l| !l.contains("network changed"))
        .filter_map(|l| l.split("reconnecting in ").nth(1))
        .map(|rest| {
            let (number, unit) = rest.trim().split_once(' ').expect("value and unit");
            let value: f64 = number.parse().expect("a number");
            match unit {
                "ms" => Duration::from_secs_f64(value / 1000.0),
                _ => Duration::from_secs_f64(value),
            }
        })
        .collect()
}

/// Waits (bounded by `timeout`) for a logged backoff wait of at least `min`, which the
/// failures in a row make likely after a few attempts (attempt `n` draws from
/// `[0, min(backoff-max, backoff-initial × 2^n)]`). Returns it and when it was seen.
fn wait_for_a_long_wait(w: &mut Running, min: Duration, timeout: Duration) -> (Duration, Instant) {
    let mut checked = 0;
    let found = poll_until(timeout, || {
        let delays = retry_delays(&w.output().stderr);
        let long = delays[checked..].iter().copied().find(|&d| d >= min);
        checked = delays.len();
        long.map(|d| (d, Instant::now()))
    });
    found.unwrap_or_else(|| {
        panic!(
            "no backoff wait of {min:?} or more within {timeout:?}\n{}",
            w.output().dump()
        )
    })
}

/// `wsbeat` in the device namespace: `--ping-interval 60s --pong-timeout 10s`, so only the
/// link watch can explain a quick reaction; then `extra` and `url`.
fn client(pair: &Pair, extra: &[&str], url: &str) -> Running {
    Wsbeat::new()
        .in_netns(pair.dev.name())
        .args(["--ping-interval", "60s", "--pong-timeout", "10s"])
        .args(extra)
        .arg(url)
        .stdin_null()
        .spawn()
}

/// A server listening on `addr` in the server namespace, and its URL.
fn server_on(pair: &Pair, addr: &str) -> (Server, String) {
    let server = Server::start_on(
        pair.srv.bind(format!("{addr}:0").parse().unwrap()),
        Behavior::default(),
    );
    let url = format!("ws://{addr}:{}/", server.port());
    (server, url)
}

/// Whether the process has a thread named `name` (the link watch's is `wsbeat-netlink`).
fn has_thread(pid: u32, name: &str) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks.flatten().any(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim() == name)
            })
        })
        .unwrap_or(false)
}

#[test]
fn local_address_removed_marks_the_connection_dead_at_once() {
    if !netns::netns_available("local_address_removed_marks_the_connection_dead_at_once") {
        return;
    }
    let pair = Pair::new();
    // A second address stays (promoted) when the first goes, for the reconnect to use.
    pair.dev.within(|| {
        std::fs::write("/proc/sys/net/ipv4/conf/veth0/promote_secondaries", "1")
            .expect("promote_secondaries")
    });
    pair.dev
        .ip(&["addr", "add", &format!("{DEV4_SECOND}/24"), "dev", "veth0"]);
    let (server, url) = server_on(&pair, SRV4);
    let mut w = client(
        &pair,
        &["--backoff-initial", "500ms", "--backoff-max", "1s"],
        &url,
    );
    server.expect_upgrades(WAIT(), 1);
    wait_stderr(&mut w, "connected to", WAIT());

    let removed = Instant::now();
    pair.dev
        .ip(&["addr", "del", &format!("{DEV4}/24"), "dev", "veth0"]);
    let dead = wait_stderr(
        &mut w,
        &format!("connection lost: local address {DEV4} removed"),
        scaled(secs(5)),
    )
    .duration_since(removed);
    let reconnected = server
        .expect_upgrades(scaled(secs(5)), 2)
        .at
        .duration_since(removed);
    eprintln!(
        "address removed: dead after {dead:?}, reconnected after {reconnected:?} \
         (the heartbeat alone: up to 70 s)"
    );
    assert!(dead < scaled(secs(1)), "{}", w.output().dump());
    // At once, then the usual backoff (at most 1 s here) and a connect.
    assert!(reconnected < scaled(secs(3)), "{}", w.output().dump());
}

#[test]
fn interface_down_marks_the_connection_dead_at_once() {
    if !netns::netns_available("interface_down_marks_the_connection_dead_at_once") {
        return;
    }
    let pair = Pair::new();
    let (server, url) = server_on(&pair, SRV4);
    let mut w = client(
        &pair,
        &["--backoff-initial", "500ms", "--backoff-max", "1s"],
        &url,
    );
    server.expect_upgrades(WAIT(), 1);
    wait_stderr(&mut w, "connected to", WAIT());

    let down = Instant::now();
    pair.dev.ip(&["link", "set", "veth0", "down"]);
    let dead = wait_stderr(
        &mut w,
        "connection lost: interface veth0 went down",
        scaled(secs(5)),
    )
    .duration_since(down);
    std::thread::sleep(ms(500));
    let up = Instant::now();
    pair.dev.ip(&["link", "set", "veth0", "up"]);
    let reconnected = server
        .expect_upgrades(scaled(secs(5)), 2)
        .at
        .duration_since(up);
    eprintln!("interface down: dead after {dead:?}; link up → reconnected after {reconnected:?}");
    assert!(dead < scaled(secs(1)), "{}", w.output().dump());
    assert!(reconnected < scaled(secs(3)), "{}", w.output().dump());
}

/// After many failures in a row the client waits long; `change` (run in the device
/// namespace) brings the network back. With the link watch, the wait is cut to
/// `[0, backoff-initial]` (1 s).
fn network_back_cuts_the_wait(pair: &Pair, server: &Server, url: &str, change: &[&str]) {
    watchdog::extend(scaled(secs(120)));
    let mut w = client(
        pair,
        &[
            "--backoff-initial",
            "1s",
            "--backoff-max",
            "60s",
            "--connect-timeout",
            "2s",
        ],
        url,
    );
    let (delay, seen) = wait_for_a_long_wait(&mut w, secs(6), scaled(secs(90)));
    let changed = Instant::now();
    pair.dev.ip(change);
    let reconnected = server
        .expect_upgrades(scaled(secs(5)), 1)
        .at
        .duration_since(changed);
    let remaining = delay.saturating_sub(changed.duration_since(seen));
    eprintln!(
        "`ip {}` while waiting {delay:?}: reconnected after {reconnected:?} instead of {remaining:?}",
        change.join(" ")
    );
    wait_stderr(&mut w, "network changed: reconnecting in", WAIT());
    // The cut: at most backoff-initial (1 s) plus a connect, well before the wait would end.
    assert!(reconnected < scaled(ms(2500)), "{}", w.output().dump());
    assert!(
        reconnected + secs(2) < remaining,
        "the wait was nearly over anyway ({remaining:?} left)"
    );
}

#[test]
fn a_new_address_cuts_the_backoff_wait() {
    if !netns::netns_available("a_new_address_cuts_the_backoff_wait") {
        return;
    }
    let pair = Pair::new();
    // No IPv4 address: every connect fails at once (network unreachable).
    pair.dev
        .ip(&["addr", "del", &format!("{DEV4}/24"), "dev", "veth0"]);
    let (server, url) = server_on(&pair, SRV4);
    network_back_cuts_the_wait(
        &pair,
        &server,
        &url,
        &["addr", "add", &format!("{DEV4}/24"), "dev", "veth0"],
    );
}

#[test]
fn a_new_default_route_cuts_the_backoff_wait() {
    if !netns::netns_available("a_new_default_route_cuts_the_backoff_wait") {
        return;
    }
    let pair = Pair::new();
    // The server on an address outside the link's subnet: reachable only through a
    // default route, which the device does not have yet.
    pair.srv
        .ip(&["addr", "add", &format!("{FAR4}/24"), "dev", "veth1"]);
    let (server, url) = server_on(&pair, FAR4);
    network_back_cuts_the_wait(
        &pair,
        &server,
        &url,
        &["route", "add", "default", "via", SRV4],
    );
}

#[test]
fn no_link_watch_ignores_address_changes() {
    if !netns::netns_available("no_link_watch_ignores_address_changes") {
        return;
    }
    watchdog::extend(scaled(secs(120)));
    let pair = Pair::new();
    pair.dev
        .ip(&["addr", "del", &format!("{DEV4}/24"), "dev", "veth0"]);
    let (server, url) = server_on(&pair, SRV4);
    let mut w = client(
        &pair,
        &[
            "--no-link-watch",
            "--backoff-initial",
            "1s",
            "--backoff-max",
            "60s",
            "--connect-timeout",
            "2s",
        ],
        &url,
    );
    // No netlink socket, no watcher thread.
    std::thread::sleep(ms(300));
    assert!(!has_thread(w.pid(), "wsbeat-netlink"));

    // The address comes back while the client waits long: the wait is not cut.
    let (delay, seen) = wait_for_a_long_wait(&mut w, secs(8), scaled(secs(90)));
    pair.dev
        .ip(&["addr", "add", &format!("{DEV4}/24"), "dev", "veth0"]);
    let quiet = delay
        .saturating_sub(seen.elapsed())
        .saturating_sub(secs(1))
        .min(secs(4));
    assert!(
        server.wait_for(quiet, |e| e.is_upgraded()).is_none(),
        "reconnected although the link watch is off\n{}",
        w.output().dump()
    );
    // SIGHUP reconnects at once instead of waiting the rest.
    send_signal(w.pid(), libc::SIGHUP);
    server.expect_upgrades(WAIT(), 1);
    wait_stderr(&mut w, "connected to", WAIT());

    // The live connection's address goes: nothing notices before the heartbeat would.
    pair.dev
        .ip(&["addr", "del", &format!("{DEV4}/24"), "dev", "veth0"]);
    std::thread::sleep(scaled(secs(4)));
    let out = w.output();
    assert!(!out.stderr.contains("connection lost"), "{}", out.dump());
    assert!(!out.stderr.contains("network changed"), "{}", out.dump());
    assert_eq!(server.upgrades(), 1, "{}", server.dump());
}

/// Voluntary plus involuntary context switches of every thread of process `pid`.
fn context_switches(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
                .collect::<Vec<_>>()
        })
        .sum()
}

#[test]
fn idle_client_with_the_link_watch_is_not_woken() {
    if !netns::netns_available("idle_client_with_the_link_watch_is_not_woken") {
        return;
    }
    let pair = Pair::new();
    let (server, url) = server_on(&pair, SRV4);
    let mut w = Wsbeat::new()
        .in_netns(pair.dev.name())
        .args(["--ping-interval", "0", &url])
        .stdin_null()
        .spawn();
    server.expect_upgrades(WAIT(), 1);
    wait_stderr(&mut w, "connected to", WAIT());
    // Past the one deadline an idle heartbeat-off connection has: 10 s up proves it alive
    // (the backoff resets), which wakes the supervisor once.
    std::thread::sleep(scaled(ms(11_000)));
    let pid = w.pid();
    assert!(
        has_thread(pid, "wsbeat-netlink"),
        "the link watch is not running\n{}",
        w.output().dump()
    );
    let window = secs(10);
    let before = context_switches(pid);
    std::thread::sleep(window);
    let after = context_switches(pid);
    let rate = (after - before) as f64 / window.as_secs_f64();
    eprintln!(
        "idle, heartbeat off, link watch on: {} context switches in {window:?} ({rate:.2}/s)",
        after - before
    );
    assert!(
        rate <= 0.1,
        "{} context switches in {window:?}\n{}",
        after - before,
        w.output().dump()
    );
}
