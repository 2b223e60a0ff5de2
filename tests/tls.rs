//! TLS and handshake options of the real binary: `wss://` with `--ca-file`, failure without
//! it, `--insecure`, mutual TLS, and `--header`/`--header-file`/`--subprotocol` as the server
//! sees them.

use crate::util::server::{Behavior, Kind, Server};
use crate::util::tls::Pki;
use std::time::Instant;

use crate::util::server::Event;
use crate::util::{TempDir, WAIT, Wsbeat, ms, poll_until, scaled};

#[test]
fn wss_with_ca_file() {
    let pki = Pki::new();
    let server = Server::start_tls(Behavior::echo(), &pki, false);
    let mut c = Wsbeat::new()
        .arg(server.url())
        .fast()
        .arg("--ca-file")
        .arg(&pki.ca_file)
        .spawn();
    server.expect_upgrades(WAIT(), 1);
    c.write_line("over tls");
    assert_eq!(c.next_line(WAIT()).as_deref(), Some("over tls"));
    server.expect(WAIT(), "a ping", |e| e.is_ping());
}

#[test]
fn wss_without_trusted_ca_fails_and_retries() {
    let pki = Pki::new();
    let server = Server::start_tls(Behavior::echo(), &pki, false);
    let mut c = Wsbeat::new().arg(server.url()).fast().spawn();
    server.expect_count(WAIT(), 3, "3 attempts", |e| e.is_accepted());
    assert_eq!(server.upgrades(), 0, "untrusted certificate accepted");
    assert!(c.is_running());
}

/// A certificate that names the host in its CN only (no subjectAltName) is refused, as RFC 9525
/// and browsers do, with the reason logged; OpenSSL alone would accept it. `--insecure` checks
/// no name and connects.
#[test]
fn a_certificate_without_subject_alt_name_is_refused() {
    let pki = Pki::with_cn_only_server();
    let server = Server::start_tls(Behavior::echo(), &pki, false);
    let url = format!("wss://localhost:{}/", server.port());
    let mut c = Wsbeat::new()
        .arg(&url)
        .fast()
        .arg("--ca-file")
        .arg(&pki.ca_file)
        .spawn();
    server.expect_count(WAIT(), 3, "3 attempts", |e| e.is_accepted());
    let reason = "the server's certificate has no subjectAltName; \
                  the CN is not used for host names (RFC 9525)";
    let logged = poll_until(WAIT(), || c.output().stderr.contains(reason).then_some(()));
    assert!(logged.is_some(), "{}", c.output().dump());
    assert_eq!(
        server.upgrades(),
        0,
        "CN-only certificate accepted\n{}",
        c.output().dump()
    );
    assert!(c.is_running());
    drop(c);

    let mut c = Wsbeat::new().arg(&url).fast().arg("--insecure").spawn();
    server.expect_upgrades(WAIT(), 1);
    c.write_line("x");
    assert_eq!(c.next_line(WAIT()).as_deref(), Some("x"));
    drop(c);

    // The same host name in a subjectAltName passes.
    let pki = Pki::new();
    let server = Server::start_tls(Behavior::echo(), &pki, false);
    let _c = Wsbeat::new()
        .arg(format!("wss://localhost:{}/", server.port()))
        .fast()
        .arg("--ca-file")
        .arg(&pki.ca_file)
        .spawn();
    server.expect_upgrades(WAIT(), 1);
}

#[test]
fn insecure_skips_verification() {
    let pki = Pki::new();
    let server = Server::start_tls(Behavior::echo(), &pki, false);
    let mut c = Wsbeat::new()
        .arg(server.url())
        .fast()
        .arg("--insecure")
        .spawn();
    server.expect_upgrades(WAIT(), 1);
    c.write_line("x");
    assert_eq!(c.next_line(WAIT()).as_deref(), Some("x"));
}

#[test]
fn mutual_tls_with_client_certificate() {
    let pki = Pki::new();
    let server = Server::start_tls(Behavior::echo(), &pki, true);
    let _c = Wsbeat::new()
        .arg(server.url())
        .fast()
        .arg("--ca-file")
        .arg(&pki.ca_file)
        .arg("--client-cert")
        .arg(&pki.client_cert_file)
        .arg("--client-key")
        .arg(&pki.client_key_file)
        .spawn();
    let up = server.expect_upgrades(WAIT(), 1);
    assert!(
        matches!(&up.kind, Kind::Upgraded { client_cert_cn: Some(cn), .. } if cn == "wsbeat-test-client"),
        "{up:?}"
    );
    server.expect(WAIT(), "a ping", |e| e.is_ping());
}

#[test]
fn mutual_tls_without_client_certificate_fails() {
    let pki = Pki::new();
    let server = Server::start_tls(Behavior::echo(), &pki, true);
    let mut c = Wsbeat::new()
        .arg(server.url())
        .fast()
        .arg("--ca-file")
        .arg(&pki.ca_file)
        .spawn();
    server.expect_count(WAIT(), 3, "3 attempts", |e| e.is_accepted());
    assert_eq!(server.upgrades(), 0);
    assert!(c.is_running());
}

#[test]
fn headers_header_file_and_subprotocols_reach_the_server() {
    let dir = TempDir::new();
    let hf = dir.write(
        "headers",
        "Authorization: Bearer s3cr3t-token-1\nX-From-File: yes\n",
    );
    let server = Server::start(Behavior::default());
    let mut c = Wsbeat::new()
        .arg(server.url_path("/ws/device?id=7"))
        .fast()
        .args(["--header", "X-One: 1", "--header", "X-Two: two words"])
        .arg("--header-file")
        .arg(&hf)
        .args(["--subprotocol", "chat.v2", "--subprotocol", "chat.v1"])
        .spawn();
    let up = server.expect_upgrades(WAIT(), 1);
    assert_eq!(up.header("x-one"), Some("1"));
    assert_eq!(up.header("x-two"), Some("two words"));
    assert_eq!(up.header("authorization"), Some("Bearer s3cr3t-token-1"));
    assert_eq!(up.header("x-from-file"), Some("yes"));
    match &up.kind {
        Kind::Upgraded {
            path, subprotocols, ..
        } => {
            assert_eq!(path, "/ws/device?id=7");
            assert_eq!(subprotocols, &["chat.v2", "chat.v1"]);
        }
        _ => unreachable!(),
    }

    // The header file is re-read on every reconnect.
    std::fs::write(&hf, "Authorization: Bearer s3cr3t-token-2\n").unwrap();
    server.drop_all();
    let up = server.expect_upgrades(WAIT(), 2);
    assert_eq!(up.header("authorization"), Some("Bearer s3cr3t-token-2"));
    assert_eq!(up.header("x-from-file"), None);
    assert_eq!(up.header("x-one"), Some("1"));

    // Header values never reach the logs (RUST_LOG=debug here).
    c.kill();
    let out = c.output();
    assert!(
        !out.stderr.contains("s3cr3t"),
        "secret logged\n{}",
        out.dump()
    );
}

/// SIGHUP re-reads --ca-file: after fixing the file, a signal (not a restart) gets connected.
#[test]
fn sighup_rereads_the_ca_file() {
    let pki = Pki::new();
    let other = Pki::new();
    let dir = TempDir::new();
    let ca = dir.write("ca.pem", std::fs::read(&other.ca_file).unwrap());
    let server = Server::start_tls(Behavior::default(), &pki, false);
    // A 1 h backoff: a retry that did not come from the SIGHUP would miss the bound below
    // (chance of a retry drawn under 3 s: below 1e-3).
    let mut c = Wsbeat::new()
        .arg(server.url())
        .args(["--ping-interval", "200ms"])
        .args(["--backoff-initial", "1h", "--backoff-max", "1h"])
        .arg("--ca-file")
        .arg(&ca)
        .spawn();
    server.expect(WAIT(), "the TLS handshake with the wrong CA to fail", |e| {
        e.conn == 0 && matches!(e.kind, Kind::Disconnected)
    });
    assert_eq!(server.upgrades(), 0, "certificate of another CA accepted");

    std::fs::copy(&pki.ca_file, &ca).expect("install the right CA");
    let sent = Instant::now();
    c.signal(libc::SIGHUP);
    let up = server.expect_upgrades(scaled(ms(3000)), 1);
    assert!(up.at - sent < scaled(ms(3000)), "took {:?}", up.at - sent);
    assert!(c.is_running());
}

/// --insecure logs its warning at every connect, not only at start-up.
#[test]
fn insecure_warns_at_every_connect() {
    const WARNING: &str = "--insecure: the server's certificate is not verified";
    let pki = Pki::new();
    let server = Server::start_tls(
        Behavior::default().close_after(ms(50), 1000, "again"),
        &pki,
        false,
    );
    let mut c = Wsbeat::new()
        .arg(server.url())
        .fast()
        .arg("--insecure")
        .spawn();
    server.expect_count(WAIT(), 3, "3 upgrades", Event::is_upgraded);
    let warned = poll_until(WAIT(), || {
        let n = c.output().stderr.matches(WARNING).count();
        (n >= 3).then_some(n)
    });
    assert!(warned.is_some(), "{}", c.output().dump());
}
