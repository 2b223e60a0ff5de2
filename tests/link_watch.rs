//! The link watch wired into the client (SPEC "Real networks", network changes), on the
//! kernel's own networking in namespaces ([`Pair`]): the live connection's local address
//! removed or its interface down → the connection is dead at once, far sooner than the
//! heartbeat could tell (60 s + 10 s here); while waiting to retry after many failures, a new
//! address or default route cuts the wait to `[0, backoff-initial]`, at most once per wait,
//! but a lifetime refresh of an existing address (what DHCP renewals and router
//! advertisements send) does not, nor does anything cut a `Retry-After` or 401 wait;
//! `--no-link-watch` does neither; and an idle client with the watch on (heartbeat off) is
//! not woken.
//!
//! The watcher itself (parsing the kernel's messages, no polling) is tested in `network.rs`.

use std::time::{Duration, Instant};

use crate::util::netns::{self, DEV4, DEV6, Pair, SRV4};
use crate::util::server::{Behavior, Server};
use crate::util::{Running, WAIT, Wsbeat, ms, poll_until, scaled, secs, send_signal, watchdog};

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

/// Whether a line at info (or above) says "network changed" (the client logs at debug here,
/// and the events that cut nothing are logged at debug).
fn network_changed_at_info(stderr: &str) -> bool {
    stderr
        .lines()
        .any(|l| l.contains("network changed") && !l.starts_with("[DEBUG"))
}

/// A bridge without ports in the device namespace: an interface the connection never uses.
const UNRELATED: &str = "br-unrelated";
/// An address that comes and goes on [`UNRELATED`].
const UNRELATED4: &str = "10.232.0.1/24";

/// A server in the server namespace that refuses every upgrade with `status` and `headers`,
/// counting the attempts; and its URL.
fn refusing_server(pair: &Pair, status: u16, headers: &[(&str, &str)]) -> (Server, String) {
    let server = Server::start_on(
        pair.srv.bind(format!("{SRV4}:0").parse().unwrap()),
        Behavior::reject(status, headers),
    );
    let url = format!("ws://{SRV4}:{}/", server.port());
    (server, url)
}

/// Adds [`UNRELATED`], up.
fn add_unrelated_interface(pair: &Pair) {
    pair.dev.ip(&["link", "add", UNRELATED, "type", "bridge"]);
    pair.dev.ip(&["link", "set", UNRELATED, "up"]);
}

/// What happens on the device side, 5 times a second for `period`.
#[derive(Debug, Clone, Copy)]
struct Churn {
    /// [`UNRELATED4`] added and removed again: each time a new address.
    flap: bool,
    /// The lifetimes of the existing addresses ([`DEV4`], [`DEV6`]) refreshed, as a DHCP
    /// renewal or a router advertisement does.
    refresh: bool,
}

/// Runs `churn` for `period`; how many rounds it made.
fn churn(pair: &Pair, churn: Churn, period: Duration) -> u32 {
    let end = Instant::now() + period;
    let mut rounds = 0;
    while Instant::now() < end {
        let round = Instant::now();
        if churn.refresh {
            for addr in [format!("{DEV4}/24"), format!("{DEV6}/64")] {
                pair.dev.ip(&[
                    "addr",
                    "change",
                    &addr,
                    "dev",
                    "veth0",
                    "valid_lft",
                    "1000",
                    "preferred_lft",
                    "1000",
                ]);
            }
        }
        if churn.flap {
            pair.dev.ip(&["addr", "add", UNRELATED4, "dev", UNRELATED]);
            std::thread::sleep(ms(100));
            pair.dev.ip(&["addr", "del", UNRELATED4, "dev", UNRELATED]);
        }
        rounds += 1;
        std::thread::sleep(ms(200).saturating_sub(round.elapsed()));
    }
    rounds
}

/// While the client waits as the server asked (its first refusal, `status` with `headers`),
/// the device's network churns for 3 s: the wait stays, no attempt comes, and nothing says
/// "network changed" at info.
fn server_asked_wait_is_not_cut(status: u16, headers: &[(&str, &str)], what: Churn) {
    let pair = Pair::new();
    add_unrelated_interface(&pair);
    let (server, url) = refusing_server(&pair, status, headers);
    // A cut would draw from [0, 500 ms].
    let mut w = client(
        &pair,
        &["--backoff-initial", "500ms", "--backoff-max", "20s"],
        &url,
    );
    wait_stderr(&mut w, "reconnecting in", WAIT());
    let delay = retry_delays(&w.output().stderr)[0];
    let rounds = churn(&pair, what, scaled(secs(3)));
    std::thread::sleep(ms(700));
    let out = w.output();
    eprintln!(
        "{status} {headers:?}, waiting {delay:?}; {rounds} rounds of {what:?}: {} attempts",
        server.accepted()
    );
    assert!(delay >= secs(10), "{}", out.dump());
    assert_eq!(server.accepted(), 1, "the wait was cut\n{}", out.dump());
    assert!(!network_changed_at_info(&out.stderr), "{}", out.dump());
}

#[test]
fn retry_after_is_not_cut_by_network_changes() {
    if !netns::netns_available("retry_after_is_not_cut_by_network_changes") {
        return;
    }
    server_asked_wait_is_not_cut(
        503,
        &[("Retry-After", "120")],
        Churn {
            flap: true,
            refresh: true,
        },
    );
}

#[test]
fn the_401_wait_is_not_cut_by_network_changes() {
    if !netns::netns_available("the_401_wait_is_not_cut_by_network_changes") {
        return;
    }
    server_asked_wait_is_not_cut(
        401,
        &[],
        Churn {
            flap: true,
            refresh: true,
        },
    );
}

#[test]
fn lifetime_refreshes_do_not_cut_a_backoff_wait() {
    if !netns::netns_available("lifetime_refreshes_do_not_cut_a_backoff_wait") {
        return;
    }
    watchdog::extend(scaled(secs(120)));
    let pair = Pair::new();
    // The link-local address becomes usable (new, rightly news) before the client starts.
    let dad_done = poll_until(scaled(secs(10)), || {
        let out = std::process::Command::new("ip")
            .args(["-n", pair.dev.name(), "-6", "addr", "show", "dev", "veth0"])
            .arg("tentative")
            .output()
            .expect("ip");
        out.stdout.is_empty().then_some(())
    });
    assert!(
        dad_done.is_some(),
        "veth0's link-local address stays tentative"
    );
    // 503 without Retry-After: a plain backoff wait, which a new address would cut.
    let (server, url) = refusing_server(&pair, 503, &[]);
    let mut w = client(
        &pair,
        &["--backoff-initial", "250ms", "--backoff-max", "60s"],
        &url,
    );
    let (delay, seen) = wait_for_a_long_wait(&mut w, secs(4), scaled(secs(90)));
    let before = server.accepted();
    let logged_before = w.output().stderr.len();
    let window = delay
        .saturating_sub(seen.elapsed())
        .saturating_sub(secs(1))
        .min(secs(3));
    let rounds = churn(
        &pair,
        Churn {
            flap: false,
            refresh: true,
        },
        window,
    );
    let out = w.output();
    eprintln!(
        "waiting {delay:?}; {rounds} lifetime refreshes in {window:?}: {} attempts",
        server.accepted() - before
    );
    assert_eq!(
        server.accepted(),
        before,
        "the wait was cut\n{}",
        out.dump()
    );
    let during = out.stderr.get(logged_before..).unwrap_or_default();
    assert!(!network_changed_at_info(during), "{}", out.dump());
}

#[test]
fn a_flapping_address_cuts_each_wait_at_most_once() {
    if !netns::netns_available("a_flapping_address_cuts_each_wait_at_most_once") {
        return;
    }
    let pair = Pair::new();
    add_unrelated_interface(&pair);
    let (server, url) = refusing_server(&pair, 503, &[]);
    let mut w = Wsbeat::new()
        .in_netns(pair.dev.name())
        // The machine's own lines only, without the watcher's and the dialer's.
        .env("RUST_LOG", "info,wsbeat::rules::machine=debug")
        .args(["--ping-interval", "60s", "--backoff-initial", "1s"])
        .args(["--backoff-max", "60s", &url])
        .stdin_null()
        .spawn();
    wait_stderr(&mut w, "reconnecting in", WAIT());
    let flapping = Instant::now();
    let rounds = churn(
        &pair,
        Churn {
            flap: true,
            refresh: false,
        },
        scaled(secs(5)),
    );
    let elapsed = flapping.elapsed();
    let out = w.output();
    // Each wait: its line, then at most one cut at info; the repeats at debug.
    let (mut waits, mut cuts, mut repeats, mut most_cuts_in_a_wait) = (0, 0, 0, 0);
    let mut cuts_in_this_wait = 0;
    for line in out.stderr.lines() {
        if line.contains("network changed") {
            if line.starts_with("[INFO") {
                cuts += 1;
                cuts_in_this_wait += 1;
                most_cuts_in_a_wait = most_cuts_in_a_wait.max(cuts_in_this_wait);
            } else if line.starts_with("[DEBUG") {
                repeats += 1;
            }
        } else if line.contains("reconnecting in") {
            waits += 1;
            cuts_in_this_wait = 0;
        }
    }
    eprintln!(
        "{rounds} flaps in {elapsed:?}: {} attempts, {waits} waits, {cuts} cut at info, \
         {repeats} events at debug",
        server.accepted()
    );
    assert!(cuts >= 1, "no wait was cut\n{}", out.dump());
    assert!(
        most_cuts_in_a_wait <= 1,
        "a wait was cut more than once\n{}",
        out.dump()
    );
    assert!(
        repeats >= 1,
        "the repeated events are not at debug\n{}",
        out.dump()
    );
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
