//! Self-tests of the helpers with a plain tungstenite client, so the server, proxy and PKI are
//! known good independently of `wsbeat`.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslStream};
use openssl::x509::X509;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use super::proxy::{Mode, Proxy};
use super::server::{Behavior, FIN, Kind, Msg, OP_PING, OP_TEXT, Pongs, Server, encode, frame};
use super::tls::Pki;
use super::{TempDir, WAIT, ms, poll_until, reached_exec, runner_prefix, send_signal};

type Ws = WebSocket<TcpStream>;

fn connect(url: &str) -> Ws {
    try_connect(url, &[]).expect("handshake")
}

fn try_connect(url: &str, headers: &[(&str, &str)]) -> Result<Ws, tungstenite::Error> {
    use tungstenite::client::IntoClientRequest;
    let rest = url.trim_start_matches("ws://");
    let addr = rest.split('/').next().expect("host:port").to_string();
    let tcp = TcpStream::connect(&addr).expect("tcp connect");
    tcp.set_read_timeout(Some(WAIT())).unwrap();
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    tungstenite::client(req, tcp)
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => panic!("interrupted"),
        })
}

/// Reads the next data or close message, skipping Pings/Pongs; `None` on read timeout.
fn read_msg(ws: &mut Ws, timeout: Duration) -> Option<Message> {
    ws.get_mut().set_read_timeout(Some(timeout)).unwrap();
    loop {
        match ws.read() {
            Ok(Message::Ping(_)) => continue,
            Ok(m) => return Some(m),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                return None;
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

#[test]
fn echo_headers_subprotocols_and_close_are_recorded() {
    let server = Server::start(Behavior::echo());
    let mut ws = try_connect(
        &server.url_path("/ws?x=1"),
        &[
            ("Authorization", "Bearer t0k3n"),
            ("Sec-WebSocket-Protocol", "chat.v2, chat.v1"),
        ],
    )
    .expect("handshake");
    let up = server.expect(WAIT(), "upgrade", |e| e.is_upgraded());
    assert_eq!(up.conn, 0);
    assert_eq!(up.header("authorization"), Some("Bearer t0k3n"));
    match &up.kind {
        Kind::Upgraded {
            path, subprotocols, ..
        } => {
            assert_eq!(path, "/ws?x=1");
            assert_eq!(subprotocols, &["chat.v2", "chat.v1"]);
        }
        k => panic!("{k:?}"),
    }
    ws.send(Message::text("hello")).unwrap();
    assert_eq!(read_msg(&mut ws, WAIT()), Some(Message::text("hello")));
    ws.send(Message::Ping(b"p1".to_vec().into())).unwrap();
    ws.get_mut().set_read_timeout(Some(WAIT())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Pong(b"p1".to_vec().into()));
    server.expect(WAIT(), "ping p1", |e| e.kind == Kind::Ping(b"p1".to_vec()));
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .unwrap();
    let c = server.expect(WAIT(), "close", |e| matches!(e.kind, Kind::Close { .. }));
    assert_eq!(
        c.kind,
        Kind::Close {
            code: Some(1000),
            reason: "done".into()
        }
    );
    // The server answers the Close and drops TCP.
    loop {
        match ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("expected a clean close, got {e}"),
        }
    }
    server.expect(WAIT(), "disconnect", |e| e.kind == Kind::Disconnected);
    assert_eq!(server.texts(0), ["hello"]);
}

#[test]
fn pongs_never_and_wrong_payload() {
    let server = Server::start_with(|n| {
        Behavior::default().pongs(if n == 0 {
            Pongs::Never
        } else {
            Pongs::WrongPayload
        })
    });
    let mut ws = connect(&server.url());
    ws.send(Message::Ping(b"a".to_vec().into())).unwrap();
    server.expect(WAIT(), "ping", |e| e.is_ping());
    assert_eq!(read_msg(&mut ws, ms(300)), None, "no pong expected");

    let mut ws = connect(&server.url());
    ws.send(Message::Ping(b"b".to_vec().into())).unwrap();
    ws.get_mut().set_read_timeout(Some(WAIT())).unwrap();
    match ws.read().unwrap() {
        Message::Pong(p) => assert_ne!(&p[..], b"b"),
        m => panic!("{m:?}"),
    }
}

#[test]
fn silent_server_does_not_answer() {
    let server = Server::start(Behavior::silent());
    let mut ws = connect(&server.url());
    ws.send(Message::Ping(b"a".to_vec().into())).unwrap();
    assert_eq!(read_msg(&mut ws, ms(300)), None);
    assert_eq!(server.count(|e| e.is_ping()), 0);
}

#[test]
fn server_pings_sends_and_close_with_code() {
    let server = Server::start(
        Behavior::default()
            .send("first")
            .send_every(ms(30), "tick")
            .ping_every(ms(30))
            .close_after(ms(300), 4000, "go away"),
    );
    let mut ws = connect(&server.url());
    assert_eq!(read_msg(&mut ws, WAIT()), Some(Message::text("first")));
    assert_eq!(read_msg(&mut ws, WAIT()), Some(Message::text("tick")));
    // tungstenite answers the server's pings while we keep reading.
    let close = loop {
        match read_msg(&mut ws, WAIT()) {
            Some(Message::Close(c)) => break c,
            Some(_) => continue,
            None => panic!("no close"),
        }
    };
    let close = close.expect("close frame");
    assert_eq!(u16::from(close.code), 4000);
    assert_eq!(close.reason.as_str(), "go away");
    let _ = ws.flush(); // send the automatic Close reply
    let pongs = server.expect_count(WAIT(), 1, "pong", |e| matches!(e.kind, Kind::Pong { .. }));
    match &pongs[0].kind {
        Kind::Pong { latency, .. } => assert!(latency.is_some()),
        _ => unreachable!(),
    }
    let c = server.expect(WAIT(), "close reply", |e| {
        matches!(e.kind, Kind::Close { .. })
    });
    assert!(
        matches!(
            c.kind,
            Kind::Close {
                code: Some(4000),
                ..
            }
        ),
        "{c:?}"
    );
}

#[test]
fn reject_with_status_and_headers() {
    let server = Server::start(Behavior::reject(503, &[("Retry-After", "7")]));
    match try_connect(&server.url(), &[]) {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503);
            assert_eq!(resp.headers()["retry-after"], "7");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("handshake should fail"),
    }
    server.expect(WAIT(), "rejected", |e| {
        e.kind == Kind::Rejected { status: 503 }
    });
}

#[test]
fn stall_accepts_tcp_and_says_nothing() {
    let server = Server::start(Behavior::stall());
    let tcp = TcpStream::connect(server.addr()).unwrap();
    tcp.set_read_timeout(Some(ms(300))).unwrap();
    let r = tungstenite::client(server.url(), tcp);
    assert!(r.is_err(), "handshake must not complete");
    assert_eq!(server.accepted(), 1);
}

fn tls_connect(
    server: &Server,
    pki: &Pki,
    client_cert: bool,
) -> Result<WebSocket<SslStream<TcpStream>>, String> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    let ca = X509::from_pem(&std::fs::read(&pki.ca_file).unwrap()).unwrap();
    b.cert_store_mut().add_cert(ca).unwrap();
    if client_cert {
        b.set_certificate_file(&pki.client_cert_file, openssl::ssl::SslFiletype::PEM)
            .unwrap();
        b.set_private_key_file(&pki.client_key_file, openssl::ssl::SslFiletype::PEM)
            .unwrap();
    }
    let tcp = TcpStream::connect(server.addr()).unwrap();
    tcp.set_read_timeout(Some(WAIT())).unwrap();
    let tls = b
        .build()
        .connect("127.0.0.1", tcp)
        .map_err(|e| e.to_string())?;
    let (mut ws, _) = tungstenite::client(server.url(), tls).map_err(|e| e.to_string())?;
    // With TLS 1.3 a rejected client certificate shows up at the first read.
    ws.send(Message::text("x")).map_err(|e| e.to_string())?;
    match ws.read() {
        Ok(Message::Text(t)) if t.as_str() == "x" => Ok(ws),
        r => Err(format!("{r:?}")),
    }
}

#[test]
fn tls_and_mutual_tls() {
    let pki = Pki::new();
    let server = Server::start_tls(Behavior::echo(), &pki, false);
    assert!(server.url().starts_with("wss://127.0.0.1:"));
    tls_connect(&server, &pki, false).expect("tls echo");
    let up = server.expect(WAIT(), "upgrade", |e| e.is_upgraded());
    assert!(matches!(
        up.kind,
        Kind::Upgraded {
            client_cert_cn: None,
            ..
        }
    ));

    let mtls = Server::start_tls(Behavior::echo(), &pki, true);
    assert!(
        tls_connect(&mtls, &pki, false).is_err(),
        "client cert required"
    );
    tls_connect(&mtls, &pki, true).expect("mtls echo");
    let up = mtls.expect(WAIT(), "upgrade", |e| e.is_upgraded());
    match up.kind {
        Kind::Upgraded { client_cert_cn, .. } => {
            assert_eq!(client_cert_cn.as_deref(), Some("wsbeat-test-client"))
        }
        _ => unreachable!(),
    }
}

#[test]
fn proxy_modes() {
    let server = Server::start(Behavior::echo());
    let proxy = Proxy::start(server.addr());
    let mut ws = connect(&proxy.url());
    assert!(proxy.wait_accepted(1, WAIT()));
    ws.send(Message::text("a")).unwrap();
    assert_eq!(read_msg(&mut ws, WAIT()), Some(Message::text("a")));

    proxy.set_mode(Mode::Blackhole);
    ws.send(Message::text("lost")).unwrap();
    assert_eq!(read_msg(&mut ws, ms(300)), None, "blackholed");
    proxy.set_mode(Mode::Pass);
    ws.send(Message::text("b")).unwrap();
    assert_eq!(read_msg(&mut ws, WAIT()), Some(Message::text("b")));
    assert_eq!(server.texts(0), ["a", "b"]);

    proxy.cut();
    ws.get_mut().set_read_timeout(Some(WAIT())).unwrap();
    assert!(ws.read().is_err(), "cut connection must end");

    proxy.set_mode(Mode::Refuse);
    let tcp = TcpStream::connect(proxy.addr()).unwrap();
    tcp.set_read_timeout(Some(WAIT())).unwrap();
    assert!(tungstenite::client(proxy.url(), tcp).is_err());
    assert_eq!(proxy.accepted(), 2);
    assert_eq!(proxy.accept_times().len(), 2);
}

#[test]
fn proxy_stop_reading_client_blocks_writes() {
    let server = Server::start(Behavior::default());
    let proxy = Proxy::start(server.addr());
    let mut ws = connect(&proxy.url());
    proxy.set_mode(Mode::StopReadingClient);
    ws.get_mut().set_write_timeout(Some(ms(200))).unwrap();
    let big = "x".repeat(64 * 1024);
    let deadline = Instant::now() + WAIT();
    let blocked = loop {
        match ws.send(Message::text(big.clone())) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                break true;
            }
            Err(e) => panic!("{e}"),
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    assert!(blocked, "writes should block when the proxy stops reading");
}

#[test]
fn proxy_freeze_holds_both_ways_until_pass() {
    let server = Server::start(Behavior::echo());
    let proxy = Proxy::start(server.addr());
    let mut ws = connect(&proxy.url());
    proxy.set_mode(Mode::Freeze);
    ws.send(Message::text("held")).unwrap();
    assert_eq!(read_msg(&mut ws, ms(300)), None, "frozen");
    assert!(server.texts(0).is_empty(), "nothing reached the server");
    proxy.set_mode(Mode::Pass);
    assert_eq!(read_msg(&mut ws, WAIT()), Some(Message::text("held")));
}

#[test]
fn proxy_drop_upstream_discards_only_what_the_client_sends() {
    let server = Server::start(Behavior::echo().send_every(ms(50), "tick"));
    let proxy = Proxy::start(server.addr());
    let mut ws = connect(&proxy.url());
    proxy.set_mode(Mode::DropUpstream);
    ws.send(Message::text("lost")).unwrap();
    let deadline = Instant::now() + ms(300);
    while Instant::now() < deadline {
        let m = read_msg(&mut ws, WAIT());
        assert_eq!(
            m,
            Some(Message::text("tick")),
            "server → client still flows"
        );
    }
    assert!(server.texts(0).is_empty(), "{:?}", server.texts(0));
}

#[test]
fn proxy_drip_paces_what_the_server_sends() {
    let server = Server::start(Behavior::echo());
    let proxy = Proxy::start(server.addr());
    let mut ws = connect(&proxy.url());
    proxy.set_mode(Mode::Drip {
        chunk: 100,
        every: ms(20),
    });
    let text = "y".repeat(1000);
    let sent = Instant::now();
    ws.send(Message::text(text.clone())).unwrap();
    assert_eq!(read_msg(&mut ws, WAIT()), Some(Message::text(text)));
    // 1004 bytes on the way back: 11 pieces, 20 ms before each.
    assert!(sent.elapsed() >= ms(220), "{:?}", sent.elapsed());
}

#[test]
fn proxy_switches_mode_right_after_the_next_server_read() {
    let server = Server::start(Behavior::echo());
    let proxy = Proxy::start(server.addr());
    let mut ws = connect(&proxy.url());
    proxy.set_mode_after_next_from_server(Mode::Freeze);
    assert!(
        !proxy.wait_switched(ms(100)),
        "nothing came from the server yet"
    );
    ws.send(Message::text("first")).unwrap();
    assert_eq!(read_msg(&mut ws, WAIT()), Some(Message::text("first")));
    assert!(proxy.wait_switched(WAIT()));
    ws.send(Message::text("second")).unwrap();
    assert_eq!(
        read_msg(&mut ws, ms(300)),
        None,
        "frozen after the first echo"
    );
    assert_eq!(server.texts(0), ["first"]);
}

#[test]
fn temp_dir_is_removed_on_drop() {
    let d = TempDir::new();
    let p = d.write("f.txt", "x");
    assert!(p.exists());
    let dir = d.path().to_path_buf();
    drop(d);
    assert!(!dir.exists());
}

/// A hand-written upgrade request, so the test sees the server's bytes as they arrive.
const UPGRADE: &[u8] =
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

#[test]
fn with_101_frames_arrive_in_the_same_read_as_the_response() {
    let welcome = encode(OP_TEXT, b"welcome");
    let ping = encode(OP_PING, b"srv-hello");
    let server = Server::start(Behavior::default().with_101(&welcome).with_101(&ping));
    let mut tcp = TcpStream::connect(server.addr()).expect("connect");
    tcp.set_read_timeout(Some(WAIT())).unwrap();
    tcp.write_all(UPGRADE).expect("request");
    server.expect_upgrades(WAIT(), 1);
    // Everything was written at once; give loopback a moment, then one read must hold it all.
    std::thread::sleep(ms(100));
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).expect("read");
    let got = &buf[..n];
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(got)
    );
    let mut frames = welcome.clone();
    frames.extend_from_slice(&ping);
    assert!(got.ends_with(&frames), "{:?}", String::from_utf8_lossy(got));
}

#[test]
fn raw_frames_response_headers_and_trickle() {
    let bad = frame(FIN | 0x40 | OP_TEXT, Some([9, 8, 7, 6]), b"hi");
    assert_eq!(bad, [0xC1, 0x82, 9, 8, 7, 6, b'h' ^ 9, b'i' ^ 8]);
    assert_eq!(
        frame(FIN | OP_PING, None, &[0; 126])[..4],
        [0x89, 126, 0, 126]
    );
    let server = Server::start(
        Behavior::default()
            .response_header("Sec-WebSocket-Extensions", "permessage-deflate")
            .send_msg(Msg::Raw(bad.clone())),
    );
    let mut tcp = TcpStream::connect(server.addr()).expect("connect");
    tcp.set_read_timeout(Some(WAIT())).unwrap();
    tcp.write_all(UPGRADE).expect("request");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(&bad) {
        let n = tcp.read(&mut buf).expect("read");
        assert!(n > 0, "{:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(
        text.contains("sec-websocket-extensions: permessage-deflate\r\n"),
        "{text}"
    );

    let slow = Server::start(Behavior::trickle());
    let mut tcp = TcpStream::connect(slow.addr()).expect("connect");
    tcp.set_read_timeout(Some(WAIT())).unwrap();
    tcp.write_all(UPGRADE).expect("request");
    let started = Instant::now();
    let mut got = Vec::new();
    while got.len() < 47 {
        let n = tcp.read(&mut buf).expect("read");
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101 Switching Protocols\r\nX-Slow: a"));
    assert!(!got.windows(4).any(|w| w == b"\r\n\r\n"));
    // Five bytes of the endless header, one per 100 ms.
    let took = started.elapsed();
    assert!(took >= ms(350), "too fast: {took:?}");
}

#[test]
fn reached_exec_tells_the_argv_of_a_child() {
    let mut child = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let cmdline = format!("/proc/{}/cmdline", child.id());
    // Strictly (an exec still under way shows an empty cmdline, which `reached_exec` accepts).
    let shown = poll_until(WAIT(), || {
        (std::fs::read(&cmdline).ok()? == b"sleep\x0030\x00").then_some(())
    });
    assert!(shown.is_some());
    assert!(reached_exec(child.id(), b"sleep\x0030\x00", WAIT()));
    // What a fork stuck before exec looks like: the argv never becomes the expected one.
    assert!(!reached_exec(child.id(), b"wsbeat\x00", ms(100)));
    send_signal(child.id(), libc::SIGKILL);
    let _ = child.wait();
    // Exited: nothing left to wait for.
    assert!(reached_exec(child.id(), b"wsbeat\x00", ms(100)));
}

/// An ignored test that overruns its budget: run only by the test below, as a child.
#[test]
#[ignore = "run by watchdog_ends_an_overrunning_test_with_its_name"]
fn watchdog_target_sleeps_past_its_budget() {
    let _dir = TempDir::new();
    let mut sleeper = Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("spawn sleep");
    std::thread::sleep(Duration::from_secs(60));
    // Not reached: the watchdog ends the process first.
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

/// The watchdog ends the whole test binary (exit 101), naming the test and killing its
/// children. It runs this test binary again as a child, so not under emulation.
#[test]
fn watchdog_ends_an_overrunning_test_with_its_name() {
    if !runner_prefix().is_empty() {
        return;
    }
    let started = Instant::now();
    let out = Command::new(std::env::current_exe().expect("current exe"))
        .args(["--ignored", "--exact", "--nocapture"])
        .arg("util::selftest::watchdog_target_sleeps_past_its_budget")
        .env("WSBEAT_TEST_BUDGET_SECS", "1")
        .output()
        .expect("run the test binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(101), "{stderr}");
    assert!(
        stderr.contains("`util::selftest::watchdog_target_sleeps_past_its_budget` has run for"),
        "{stderr}"
    );
    assert!(stderr.contains("Killed 1 child"), "{stderr}");
    // `output()` returned, so no child kept the pipes open: the sleeper was killed.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}
