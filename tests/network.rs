//! Real networks (SPEC "Real networks"): Happy Eyeballs on the kernel's own networking in
//! network namespaces joined by a veth pair (names from `/etc/netns/<ns>/hosts`, nftables
//! for silent drops), HTTP CONNECT proxies through a real tinyproxy, and the rtnetlink
//! watcher (`wsbeat::linkwatch`) on a namespace's real link, address and route changes.
//!
//! The namespace tests need root, iproute2 and nftables; the proxy tests need tinyproxy.
//! Without them they skip with the reason printed, unless `WSBEAT_TEST_REQUIRE_REAL_NET` is
//! set (CI sets it, so there they fail instead of skipping).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use wsbeat::linkwatch::{LinkEvent, LinkWatch};

use crate::util::netns::{self, Netns, Pair, SRV4, SRV6};
use crate::util::server::{Behavior, Event, Server};
use crate::util::tinyproxy::{Options, Tinyproxy};
use crate::util::tls::Pki;
use crate::util::{Running, TempDir, WAIT, Wsbeat, free_port, ms, poll_until, scaled};

/// A name with an IPv6 and an IPv4 address in the device namespace's hosts file.
const DUAL: &str = "dual.wsbeat.test";

/// The device namespace resolves [`DUAL`] to the server's IPv6 address first, then IPv4.
fn dual_stack() -> Pair {
    let pair = Pair::new();
    pair.dev.hosts(&[(SRV6, DUAL), (SRV4, DUAL)]);
    pair
}

/// Waits (bounded) until the child's stderr contains `needle`; panics with its output if not.
fn expect_stderr(w: &mut Running, needle: &str, timeout: Duration) -> String {
    match poll_until(timeout, || {
        let err = w.output().stderr;
        err.contains(needle).then_some(err)
    }) {
        Some(stderr) => stderr,
        None => panic!(
            "stderr never showed {needle:?} within {timeout:?}\n{}",
            w.output().dump()
        ),
    }
}

/// Byte offset of `needle` in `haystack`, panicking with `haystack` if absent.
fn position(haystack: &str, needle: &str) -> usize {
    haystack
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not found in:\n{haystack}"))
}

#[test]
fn dual_stack_with_ipv6_blackholed_connects_over_ipv4_quickly() {
    if !netns::netns_available("dual_stack_with_ipv6_blackholed_connects_over_ipv4_quickly") {
        return;
    }
    let pair = dual_stack();
    pair.dev.drop_tcp_to(&[SRV6]);
    // Listening on both families: without the drop, IPv6 would connect.
    let server = Server::start_on(
        pair.srv.bind("[::]:0".parse().unwrap()),
        Behavior::default(),
    );
    let url = format!("ws://{DUAL}:{}/", server.port());
    let started = Instant::now();
    let mut w = Wsbeat::new()
        .in_netns(pair.dev.name())
        .fast()
        .args(["--connect-timeout", "10s", &url])
        .spawn();
    let upgraded = server.expect_upgrades(WAIT(), 1);
    let took = upgraded.at.duration_since(started);
    eprintln!("dual stack, IPv6 blackholed: upgraded {took:?} after start");
    // About 250 ms (the attempt delay) plus process start; never the 10 s connect timeout.
    assert!(
        took < scaled(Duration::from_secs(2)),
        "took {took:?}\n{}",
        w.output().dump()
    );
    // The resolver's first family (IPv6) was tried first; IPv4 won.
    let stderr = expect_stderr(&mut w, &format!("tcp: connected to {SRV4}:"), WAIT());
    let port = server.port();
    let v6 = position(&stderr, &format!("tcp: trying [{SRV6}]:{port}"));
    let v4 = position(&stderr, &format!("tcp: trying {SRV4}:{port}"));
    assert!(v6 < v4, "IPv6 first:\n{stderr}");
}

#[test]
fn dual_stack_with_ipv6_refused_connects_at_once() {
    if !netns::netns_available("dual_stack_with_ipv6_refused_connects_at_once") {
        return;
    }
    let pair = dual_stack();
    // Listening on IPv4 only: the kernel refuses IPv6 (RST).
    let listener = pair.srv.bind(format!("{SRV4}:0").parse().unwrap());
    let server = Server::start_on(listener, Behavior::default());
    let port = server.port();
    let started = Instant::now();
    let mut w = Wsbeat::new()
        .in_netns(pair.dev.name())
        .fast()
        .args(["--connect-timeout", "10s", &format!("ws://{DUAL}:{port}/")])
        .spawn();
    let took = server.expect_upgrades(WAIT(), 1).at.duration_since(started);
    eprintln!("dual stack, IPv6 refused: upgraded {took:?} after start");
    // No attempt delay: the refusal starts the next attempt at once.
    assert!(
        took < scaled(ms(1000)),
        "took {took:?}\n{}",
        w.output().dump()
    );
    let stderr = expect_stderr(&mut w, &format!("tcp: connected to {SRV4}:{port}"), WAIT());
    let refused = position(
        &stderr,
        &format!("tcp: [{SRV6}]:{port}: Connection refused"),
    );
    assert!(refused < position(&stderr, &format!("tcp: trying {SRV4}:{port}")));
}

#[test]
fn stop_cuts_every_connect_attempt_in_flight_at_once() {
    if !netns::netns_available("stop_cuts_every_connect_attempt_in_flight_at_once") {
        return;
    }
    let pair = dual_stack();
    pair.dev.drop_tcp_to(&[SRV6, SRV4]);
    let url = format!("ws://{DUAL}:9/");
    let mut w = Wsbeat::new()
        .in_netns(pair.dev.name())
        .fast()
        .args(["--connect-timeout", "60s", &url])
        .spawn();
    // Both attempts in flight (IPv4 starts 250 ms after IPv6); neither will ever answer.
    expect_stderr(&mut w, "connecting to ws://", WAIT());
    thread::sleep(ms(500));
    let stopping = Instant::now();
    w.signal(libc::SIGTERM);
    let code = w.wait_exit(WAIT());
    let took = stopping.elapsed();
    eprintln!("stop during two silent connect attempts: exited {took:?} after SIGTERM");
    assert_eq!(code, Some(0), "{}", w.output().dump());
    // A connect thread that cannot be woken holds the exit up for ~1.8 s.
    assert!(
        took < scaled(ms(1000)),
        "exit took {took:?}\n{}",
        w.output().dump()
    );
    let stderr = w.output().stderr;
    position(&stderr, &format!("tcp: trying [{SRV6}]:9"));
    position(&stderr, &format!("tcp: trying {SRV4}:9"));
}

#[test]
fn proxy_addresses_get_happy_eyeballs() {
    if !netns::netns_available("proxy_addresses_get_happy_eyeballs")
        || !netns::can_run("proxy_addresses_get_happy_eyeballs", true, &["tinyproxy"])
    {
        return;
    }
    let pair = Pair::new();
    pair.dev
        .hosts(&[(SRV6, "proxy.wsbeat.test"), (SRV4, "proxy.wsbeat.test")]);
    pair.dev.drop_tcp_to(&[SRV6]);
    // The server is on the proxy's loopback: only the proxy reaches it.
    let server = Server::start_on(
        pair.srv.bind("127.0.0.1:0".parse().unwrap()),
        Behavior::default(),
    );
    let proxy = Tinyproxy::start_with(Options {
        netns: Some(&pair.srv),
        port: Some(3128),
        ..Options::default()
    });
    let started = Instant::now();
    let _w = Wsbeat::new()
        .in_netns(pair.dev.name())
        .fast()
        .args([
            "--connect-timeout",
            "10s",
            "--proxy",
            "http://proxy.wsbeat.test:3128",
            &format!("ws://127.0.0.1:{}/", server.port()),
        ])
        .spawn();
    let took = server.expect_upgrades(WAIT(), 1).at.duration_since(started);
    eprintln!("through a dual-stack proxy, IPv6 blackholed: upgraded {took:?} after start");
    assert!(took < scaled(Duration::from_secs(2)), "took {took:?}");
    proxy.expect_connect(&format!("127.0.0.1:{}", server.port()), WAIT());
}

/// Whether tinyproxy is there (skips with the reason if not, unless required).
fn tinyproxy_available(test: &str) -> bool {
    netns::can_run(test, false, &["tinyproxy"])
}

/// A proxy URL on a port nobody listens on: a connection through it is refused.
fn dead_proxy() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

#[test]
fn proxy_flag_tunnels_ws_and_wss() {
    if !tinyproxy_available("proxy_flag_tunnels_ws_and_wss") {
        return;
    }
    let proxy = Tinyproxy::start(None);
    let server = Server::start(Behavior::default());
    let w = Wsbeat::new()
        .fast()
        .args(["--proxy", &proxy.url(), &server.url()])
        .spawn();
    server.expect_upgrades(WAIT(), 1);
    // The heartbeat runs through the tunnel too.
    server.expect(WAIT(), "a ping through the proxy", Event::is_ping);
    assert_eq!(
        proxy.connects_to(&format!("127.0.0.1:{}", server.port())),
        1
    );
    drop(w);

    // TLS through the tunnel, with the target's name for SNI and verification.
    let pki = Pki::new();
    let tls = Server::start_tls(Behavior::default(), &pki, false);
    let authority = format!("localhost:{}", tls.port());
    let _w = Wsbeat::new()
        .fast()
        .arg("--ca-file")
        .arg(&pki.ca_file)
        .args(["--proxy", &proxy.url(), &format!("wss://{authority}/")])
        .spawn();
    tls.expect_upgrades(WAIT(), 1);
    assert_eq!(proxy.connects_to(&authority), 1, "{}", proxy.log());
}

#[test]
fn proxy_variables_follow_the_scheme() {
    if !tinyproxy_available("proxy_variables_follow_the_scheme") {
        return;
    }
    let proxy = Tinyproxy::start(None);
    let good = proxy.url();
    let dead = dead_proxy();
    let pki = Pki::new();
    type Vars<'a> = Vec<(&'static str, &'a str)>;
    let cases: Vec<(bool, Vars<'_>)> = vec![
        (false, vec![("http_proxy", &good), ("https_proxy", &dead)]),
        (true, vec![("https_proxy", &good), ("http_proxy", &dead)]),
        (false, vec![("HTTP_PROXY", &dead), ("http_proxy", &good)]),
        (true, vec![("HTTPS_PROXY", &good), ("all_proxy", &dead)]),
        (false, vec![("ALL_PROXY", &good)]),
        (true, vec![("ALL_PROXY", &dead), ("all_proxy", &good)]),
    ];
    for (tls, vars) in cases {
        let server = if tls {
            Server::start_tls(Behavior::default(), &pki, false)
        } else {
            Server::start(Behavior::default())
        };
        let scheme = if tls { "wss" } else { "ws" };
        let authority = format!("localhost:{}", server.port());
        let mut w = Wsbeat::new()
            .fast()
            .arg("--ca-file")
            .arg(&pki.ca_file)
            .arg(format!("{scheme}://{authority}/"));
        for (name, value) in &vars {
            w = w.env(*name, *value);
        }
        let _running = w.spawn();
        if server.wait_for(WAIT(), Event::is_upgraded).is_none() {
            panic!("{scheme}:// with {vars:?}: no upgrade\n{}", server.dump());
        }
        assert_eq!(
            proxy.connects_to(&authority),
            1,
            "{vars:?}\n{}",
            proxy.log()
        );
    }
}

#[test]
fn no_proxy_sends_listed_hosts_direct() {
    if !tinyproxy_available("no_proxy_sends_listed_hosts_direct") {
        return;
    }
    let proxy = Tinyproxy::start(None);
    let cases = [
        ("no_proxy", "localhost", "localhost", true),
        ("NO_PROXY", ".localhost", "localhost", true),
        ("no_proxy", "example.org, 127.0.0.1", "127.0.0.1", true),
        ("no_proxy", "*", "127.0.0.1", true),
        ("no_proxy", "127.0.0.2,host", "127.0.0.1", false),
        ("no_proxy", "calhost", "localhost", false),
    ];
    for (variable, list, host, direct) in cases {
        let server = Server::start(Behavior::default());
        let authority = format!("{host}:{}", server.port());
        let _w = Wsbeat::new()
            .fast()
            .env("http_proxy", proxy.url())
            .env(variable, list)
            .arg(format!("ws://{authority}/"))
            .spawn();
        if server.wait_for(WAIT(), Event::is_upgraded).is_none() {
            panic!("{variable}={list:?}: no upgrade\n{}", server.dump());
        }
        let through = proxy.connects_to(&authority);
        assert_eq!(
            through,
            usize::from(!direct),
            "{variable}={list:?} for {host}\n{}",
            proxy.log()
        );
    }
}

/// The delay of the first "reconnecting in X s" line of `stderr`.
fn first_retry_delay(stderr: &str) -> Duration {
    let line = stderr
        .lines()
        .find_map(|l| l.split("reconnecting in ").nth(1))
        .unwrap_or_else(|| panic!("no retry in:\n{stderr}"));
    let (number, unit) = line.trim().split_once(' ').expect("value and unit");
    let value: f64 = number.parse().expect("a number");
    match unit {
        "ms" => Duration::from_secs_f64(value / 1000.0),
        _ => Duration::from_secs_f64(value),
    }
}

#[test]
fn proxy_credentials_and_407() {
    if !tinyproxy_available("proxy_credentials_and_407") {
        return;
    }
    let proxy = Tinyproxy::start(Some(("alice", "s3cr-et.x")));
    let server = Server::start(Behavior::default());
    let authority = format!("127.0.0.1:{}", server.port());

    // No credentials: 407, logged as an error with the proxy's status line and retried
    // after a delay in [backoff-max / 2, backoff-max], like a 401/403 from the server.
    let mut w = Wsbeat::new()
        .args(["--backoff-initial", "10ms", "--backoff-max", "60s"])
        .args(["--proxy", &proxy.url(), &server.url()])
        .spawn();
    let stderr = expect_stderr(&mut w, "reconnecting in", WAIT());
    assert!(
        stderr.contains(&format!(
            "proxy {} refused CONNECT: HTTP/1.0 407 Proxy Authentication Required; check the credentials",
            proxy.url()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("ERROR"), "{stderr}");
    let delay = first_retry_delay(&stderr);
    assert!(delay >= Duration::from_secs(30), "{delay:?}\n{stderr}");
    drop(w);

    // Credentials through the environment (not argv), percent-encoded: the tunnel opens, and
    // nothing shows them, not even at trace level.
    let url = format!("http://%61lice:s3cr%2Det.x@127.0.0.1:{}/", proxy.port());
    let mut w = Wsbeat::new()
        .fast()
        .env("WSBEAT_PROXY", &url)
        .env("RUST_LOG", "trace")
        .arg(server.url())
        .spawn();
    server.expect_upgrades(WAIT(), 1);
    server.expect(WAIT(), "a ping through the proxy", Event::is_ping);
    proxy.expect_connect(&authority, WAIT());
    let stderr = w.output().stderr;
    for secret in ["s3cr", "YWxpY2U6czNjci1ldC54"] {
        assert!(!stderr.contains(secret), "{secret} in:\n{stderr}");
    }
    drop(w);

    // A wrong password: tinyproxy answers 401; neither the log nor the status file shows it.
    let dir = TempDir::new();
    let status = dir.join("status");
    let out = Wsbeat::new()
        .env("RUST_LOG", "trace")
        .args(["--max-retries", "1", "--status-file"])
        .arg(&status)
        .arg("--proxy")
        .arg(format!(
            "http://alice:wrong-pa55@127.0.0.1:{}",
            proxy.port()
        ))
        .arg(server.url())
        .run(WAIT());
    assert_eq!(out.code, Some(1), "{}", out.dump());
    assert!(out.stderr.contains("401 Unauthorized"), "{}", out.dump());
    let status = std::fs::read_to_string(&status).expect("status file");
    assert!(status.contains("refused CONNECT"), "{status}");
    for text in [&out.stderr, &out.stdout, &status] {
        assert!(!text.contains("pa55"), "{}\n{status}", out.dump());
    }
}

/// `no_proxy` entries with a port send that host direct on that port only. Needs no
/// tinyproxy: the proxy is dead, so only a direct connection can upgrade.
#[test]
fn no_proxy_entries_with_a_port_match_that_port_only() {
    let server = Server::start(Behavior::default());
    let port = server.port();
    for (list, host) in [
        (format!("127.0.0.1:{port}"), "127.0.0.1"),
        (format!("example.org, localhost:{port}"), "localhost"),
    ] {
        let _w = Wsbeat::new()
            .fast()
            .env("http_proxy", dead_proxy())
            .env("no_proxy", &list)
            .arg(format!("ws://{host}:{port}/"))
            .spawn();
        if server.wait_for(WAIT(), Event::is_upgraded).is_none() {
            panic!("no_proxy={list:?}: no direct connection\n{}", server.dump());
        }
        server.drop_all();
    }
    let other = if port == 65535 { port - 1 } else { port + 1 };
    let out = Wsbeat::new()
        .args(["--max-retries", "1"])
        .env("http_proxy", dead_proxy())
        .env("no_proxy", format!("127.0.0.1:{other}"))
        .arg(server.url())
        .run(WAIT());
    assert_eq!(out.code, Some(1), "{}", out.dump());
    assert!(
        out.stderr.contains("proxy http://127.0.0.1:"),
        "{}",
        out.dump()
    );
}

/// A CONNECT proxy that sends `answer` and then relays to `target`: one connection.
fn scripted_proxy(answer: &'static [u8], target: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        let Ok((mut client, _)) = listener.accept() else {
            return;
        };
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match client.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let Ok(mut server) = std::net::TcpStream::connect(target) else {
            return;
        };
        if client.write_all(answer).is_err() {
            return;
        }
        let (mut client_in, mut server_out) = (
            client.try_clone().expect("clone"),
            server.try_clone().expect("clone"),
        );
        thread::spawn(move || {
            let _ = std::io::copy(&mut client_in, &mut server_out);
            let _ = server_out.shutdown(std::net::Shutdown::Write);
        });
        let _ = std::io::copy(&mut server, &mut client);
        let _ = client.shutdown(std::net::Shutdown::Write);
    });
    addr
}

/// Interim `1xx` answers before the proxy's `200` are skipped (RFC 9110 §15.2), and an answer
/// with bare-LF line endings opens the tunnel at once, not at `--connect-timeout`.
#[test]
fn a_proxy_answering_1xx_first_or_with_bare_lf_tunnels() {
    for answer in [
        &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"[..],
        b"HTTP/1.1 200 Connection established\nVia: lenient\n\n",
    ] {
        let server = Server::start(Behavior::default());
        let proxy = scripted_proxy(answer, server.addr());
        let started = Instant::now();
        let mut w = Wsbeat::new()
            .fast()
            .args(["--connect-timeout", "5s", "--max-retries", "1"])
            .args(["--proxy", &format!("http://{proxy}"), &server.url()])
            .spawn();
        let upgraded = server.wait_for(WAIT(), Event::is_upgraded);
        let took = started.elapsed();
        let shown = String::from_utf8_lossy(answer);
        assert!(upgraded.is_some(), "{shown:?}\n{}", w.output().dump());
        assert!(took < scaled(Duration::from_secs(3)), "{shown:?}: took {took:?}");
        server.expect(WAIT(), "a ping through the proxy", Event::is_ping);
    }
}

#[test]
fn a_proxy_that_never_answers_is_bounded_by_connect_timeout() {
    // Needs no tinyproxy: a listener that reads CONNECT and says nothing.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let holder = thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        let mut sink = [0u8; 1024];
        while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
    });
    let started = Instant::now();
    let out = Wsbeat::new()
        .args(["--connect-timeout", "1s", "--max-retries", "1"])
        .args(["--proxy", &format!("http://{addr}"), "ws://127.0.0.1:9/"])
        .run(WAIT());
    let took = started.elapsed();
    assert_eq!(out.code, Some(1), "{}", out.dump());
    assert!(
        out.stderr.contains("connect timeout during proxy CONNECT"),
        "{}",
        out.dump()
    );
    assert!(took < scaled(Duration::from_secs(3)), "took {took:?}");
    holder.join().expect("holder");
}

#[test]
fn a_proxy_url_of_another_scheme_is_a_usage_error() {
    let pki_free_wss = "wss://127.0.0.1:9/";
    let cases: Vec<(Wsbeat, &str)> = vec![
        (
            Wsbeat::new().args(["--proxy", "socks5://127.0.0.1:1080", "ws://127.0.0.1:9/"]),
            "--proxy",
        ),
        (
            Wsbeat::new()
                .env("WSBEAT_PROXY", "https://user:pw@127.0.0.1:3128")
                .arg("ws://127.0.0.1:9/"),
            "WSBEAT_PROXY",
        ),
        (
            Wsbeat::new()
                .env("https_proxy", "socks5h://127.0.0.1:1080")
                .arg(pki_free_wss),
            "https_proxy",
        ),
        (
            Wsbeat::new()
                .env("ALL_PROXY", "socks4://127.0.0.1:1080")
                .arg("ws://127.0.0.1:9/"),
            "ALL_PROXY",
        ),
    ];
    for (w, name) in cases {
        let out = w.run(WAIT());
        assert_eq!(out.code, Some(64), "{}", out.dump());
        let lines = out.stderr_lines();
        assert_eq!(lines.len(), 1, "{}", out.dump());
        assert!(
            lines[0].contains(&format!("{name}: unsupported proxy scheme")),
            "{}",
            out.dump()
        );
        assert!(!lines[0].contains("pw@"), "{}", out.dump());
    }
}

/// Voluntary context switches of this process's thread named `name`, if there is one.
fn thread_switches(name: &str) -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            return status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse().ok());
        }
    }
    None
}

#[test]
fn link_watch_reports_the_kernels_changes_without_polling() {
    if !netns::netns_available("link_watch_reports_the_kernels_changes_without_polling") {
        return;
    }
    let ns = Netns::new("lw");
    let (tx, events) = mpsc::channel();
    // The socket belongs to the namespace of the thread that opens it.
    let watch = ns.within(move || {
        LinkWatch::spawn(move |event| {
            let _ = tx.send(event);
        })
        .expect("netlink")
    });
    // Idle: the watcher's thread sleeps in poll(2) and is not woken.
    thread::sleep(ms(200));
    let before = thread_switches("wsbeat-netlink").expect("the watcher's thread");
    thread::sleep(ms(1000));
    let after = thread_switches("wsbeat-netlink").expect("the watcher's thread");
    assert_eq!(after, before, "woken while nothing changed");

    ns.ip(&[
        "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
    ]);
    ns.ip(&["addr", "add", "10.231.0.1/24", "dev", "veth0"]);
    ns.ip(&["link", "set", "veth1", "up"]);
    ns.ip(&["link", "set", "veth0", "up"]);
    ns.ip(&["route", "add", "default", "via", "10.231.0.2"]);
    ns.ip(&["addr", "del", "10.231.0.1/24", "dev", "veth0"]);
    ns.ip(&["link", "set", "veth0", "down"]);
    let addr: IpAddr = "10.231.0.1".parse().unwrap();
    let veth0 = Some("veth0".to_string());
    type Wanted<'a> = Box<dyn Fn(&LinkEvent) -> bool + 'a>;
    let expected: Vec<Wanted<'_>> = vec![
        Box::new(|e| matches!(e, LinkEvent::AddressAdded { addr: a, .. } if *a == addr)),
        Box::new(|e| matches!(e, LinkEvent::LinkUp { name, .. } if *name == veth0)),
        Box::new(|e| {
            matches!(e, LinkEvent::DefaultRouteAdded { gateway: Some(g), .. }
                if *g == "10.231.0.2".parse::<IpAddr>().unwrap())
        }),
        Box::new(|e| matches!(e, LinkEvent::AddressRemoved { addr: a, .. } if *a == addr)),
        Box::new(|e| matches!(e, LinkEvent::LinkDown { name, .. } if *name == veth0)),
    ];
    let mut seen = Vec::new();
    for (n, wanted) in expected.iter().enumerate() {
        loop {
            match events.recv_timeout(WAIT()) {
                Ok(event) => {
                    let found = wanted(&event);
                    seen.push(event);
                    if found {
                        break;
                    }
                }
                Err(_) => panic!("expected event {n} never came; saw {seen:#?}"),
            }
        }
    }
    let stopping = Instant::now();
    watch.stop();
    assert!(
        stopping.elapsed() < ms(500),
        "stop took {:?}",
        stopping.elapsed()
    );
}
