//! Local hardening of the real binary: no secret reaches the log at any level (header values,
//! a URL's userinfo), the status file's temporary file follows no planted symlink, and stray
//! signals (SIGUSR1/SIGUSR2) do not kill the client.

use std::fs;
use std::path::Path;

use crate::util::server::{Behavior, Kind, Server};
use crate::util::{TempDir, WAIT, Wsbeat, ms, poll_until, refused_url, scaled};

// ---------------------------------------------------------------------------------------------
// Secrets in logs
// ---------------------------------------------------------------------------------------------

const ARGV_SECRET: &str = "argv-secret-5f1e0c";
const FILE_SECRET: &str = "file-secret-0d8c77";

/// Connects with a secret `--header` and a secret in `--header-file` under `rust_log`, lets
/// one heartbeat go by, stops, and returns everything the client logged.
fn log_of_a_connection(rust_log: &str, header_file: &Path) -> String {
    let server = Server::start(Behavior::default());
    let mut c = Wsbeat::new()
        .env("RUST_LOG", rust_log)
        .fast()
        .args(["--header", &format!("Authorization: Bearer {ARGV_SECRET}")])
        .arg("--header-file")
        .arg(header_file)
        .arg(server.url())
        .spawn();
    let up = server.expect_upgrades(WAIT(), 1);
    // The secrets did go out, so a log of the request would have shown them.
    assert_eq!(
        up.header("authorization"),
        Some(format!("Bearer {ARGV_SECRET}").as_str())
    );
    assert_eq!(up.header("x-api-key"), Some(FILE_SECRET));
    server.expect(WAIT(), "a heartbeat", |e| e.is_ping());
    c.signal(libc::SIGTERM);
    let code = c.wait_exit(WAIT());
    let out = c.output();
    assert_eq!(code, Some(0), "{}", out.dump());
    out.stderr
}

#[test]
fn no_log_level_prints_header_values() {
    let dir = TempDir::new();
    let file = dir.write("headers", format!("X-Api-Key: {FILE_SECRET}\n"));
    for rust_log in [
        "trace",
        "tungstenite=trace",
        "tungstenite::handshake::client=trace",
        "info,tungstenite::handshake=trace,wsbeat=trace",
    ] {
        let log = log_of_a_connection(rust_log, &file);
        for secret in [ARGV_SECRET, FILE_SECRET] {
            assert!(
                !log.contains(secret),
                "RUST_LOG={rust_log} logged the secret {secret}:\n{log}"
            );
        }
        if rust_log == "trace" {
            // The level did take effect: this is not a quiet log passing by accident.
            assert!(log.contains("DEBUG"), "RUST_LOG=trace: {log}");
        }
    }
}

/// A token in the URL's query string (`?token=…`, as devices that cannot set headers
/// authenticate) reaches the server but appears nowhere else: not in the log at trace level
/// (connects, a refused attempt, the stop), the status file or the metrics file, where the
/// query is shown with its values masked.
#[test]
fn query_string_secrets_are_masked_everywhere_but_the_request() {
    const SECRET: &str = "s3cr3t-q9f2";
    let server = Server::start_with(|n| {
        if n == 0 {
            Behavior::reject(503, &[])
        } else {
            Behavior::default()
        }
    });
    let dir = TempDir::new();
    let status = dir.join("status");
    let metrics = dir.join("metrics");
    let mut c = Wsbeat::new()
        .env("RUST_LOG", "trace")
        .fast()
        .arg("--status-file")
        .arg(&status)
        .arg("--metrics-file")
        .arg(&metrics)
        .arg(server.url_path(&format!("/ws?token={SECRET}&x=1&debug")))
        .spawn();
    let up = server.expect_upgrades(WAIT(), 1);
    match &up.kind {
        Kind::Upgraded { path, .. } => {
            assert_eq!(
                path,
                &format!("/ws?token={SECRET}&x=1&debug"),
                "the request"
            );
        }
        other => panic!("{other:?}"),
    }
    server.expect(WAIT(), "a heartbeat", |e| e.is_ping());
    let connected = poll_until(WAIT(), || {
        let text = fs::read_to_string(&status).ok()?;
        text.contains("state=connected").then_some(text)
    })
    .unwrap_or_else(|| panic!("no connected status\n{}", c.output().dump()));
    let masked = format!("{}ws?token=…&x=…&debug", server.url());
    assert!(
        connected.contains(&format!("url='{masked}'")),
        "{connected}"
    );
    let metrics_text = poll_until(WAIT(), || fs::read_to_string(&metrics).ok())
        .unwrap_or_else(|| panic!("no metrics file\n{}", c.output().dump()));
    c.signal(libc::SIGTERM);
    assert_eq!(c.wait_exit(WAIT()), Some(0), "{}", c.output().dump());
    let out = c.output();
    // The refused attempt and the connect were logged, with the URL, masked.
    assert!(out.stderr.contains("503"), "{}", out.dump());
    assert!(
        out.stderr.contains(&format!("connected to {masked}")),
        "{}",
        out.dump()
    );
    assert!(
        out.stderr.contains("TRACE") || out.stderr.contains("DEBUG"),
        "{}",
        out.dump()
    );
    let stopped = fs::read_to_string(&status).expect("status file");
    for (what, text) in [
        ("stderr", &out.stderr),
        ("stdout", &out.stdout),
        ("the status file", &connected),
        ("the final status file", &stopped),
        ("the metrics file", &metrics_text),
    ] {
        assert!(!text.contains(SECRET), "the secret is in {what}:\n{text}");
    }
}

/// `ws://user:password@host/` is refused (exit 64, naming the URL) and the message does not
/// repeat the userinfo, whatever else is wrong with the URL.
#[test]
fn url_userinfo_is_rejected_without_echoing_it() {
    let secrets = ["hunter2-pw", "tok-7c1a9e"];
    for url in [
        "ws://user:hunter2-pw@127.0.0.1:1/",
        "wss://tok-7c1a9e@example.com/ws?x=1",
        "ws://user:hunter2-pw@bad host/",
        "http://user:hunter2-pw@example.com/",
        "ws://user:hunter2-pw@example.com/#top",
        "ws://user:hunter2-pw@example.com:99999/",
    ] {
        for (w, name) in [
            (Wsbeat::new().arg(url), "url"),
            (Wsbeat::new().env("WSBEAT_URL", url), "WSBEAT_URL"),
        ] {
            let out = w.run(WAIT());
            assert_eq!(out.code, Some(64), "{url}\n{}", out.dump());
            let lines = out.stderr_lines();
            assert_eq!(lines.len(), 1, "{url}\n{}", out.dump());
            assert!(lines[0].contains(name), "{url}\n{}", out.dump());
            for secret in secrets {
                assert!(
                    !out.stderr.contains(secret),
                    "{url}: the userinfo is echoed\n{}",
                    out.dump()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Status file
// ---------------------------------------------------------------------------------------------

/// A symlink planted in the status file's folder at the temporary name the client used to
/// write through (`.status.<pid>.tmp`) is neither followed nor moved: its target is untouched
/// and the status file is still written.
#[test]
fn status_file_temp_follows_no_planted_symlink() {
    let dir = TempDir::new();
    let victim = dir.write("victim", "precious\n");
    // The folder does not exist yet: the client's first writes fail (logged), and the link is
    // planted once the client's pid, part of the old name, is known.
    let run = dir.join("run");
    let status = run.join("status");
    let mut c = Wsbeat::new()
        .fast()
        .arg("--status-file")
        .arg(&status)
        .arg(refused_url())
        .spawn();
    let planted = run.join(format!(".status.{}.tmp", c.pid()));
    fs::create_dir(&run).expect("create the status folder");
    std::os::unix::fs::symlink(&victim, &planted).expect("plant the symlink");

    // Attempts fail and back off every 50-200 ms, each a state change and a write: wait for
    // a status file, then for a later write replacing it.
    let regular = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_file());
    let first = poll_until(WAIT(), || {
        regular(&status)
            .then(|| fs::read_to_string(&status).ok())
            .flatten()
    });
    let first = first.unwrap_or_else(|| panic!("no status file\n{}", c.output().dump()));
    let rewritten = poll_until(WAIT(), || {
        let now = fs::read_to_string(&status).ok()?;
        (regular(&status) && now != first).then_some(())
    });
    assert!(rewritten.is_some(), "not rewritten\n{}", c.output().dump());
    c.signal(libc::SIGTERM);
    assert_eq!(c.wait_exit(WAIT()), Some(0), "{}", c.output().dump());

    assert_eq!(
        fs::read_to_string(&victim).expect("read the victim"),
        "precious\n",
        "the status was written through the planted symlink"
    );
    assert_eq!(
        fs::read_link(&planted).ok().as_deref(),
        Some(victim.as_path()),
        "the planted symlink was moved"
    );
    let text = fs::read_to_string(&status).expect("read the status file");
    assert!(text.starts_with("state=stopped\n"), "{text}");
    // Only the status file and the planted link: no temporary file left behind.
    let mut names: Vec<String> = fs::read_dir(&run)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected = vec![
        "status".to_string(),
        planted.file_name().unwrap().to_string_lossy().into_owned(),
    ];
    expected.sort();
    assert_eq!(names, expected);
}

// ---------------------------------------------------------------------------------------------
// Stray signals
// ---------------------------------------------------------------------------------------------

/// SIGUSR1 and SIGUSR2 (sent by careless scripts and log rotators) leave the connection as it
/// was; SIGTERM still closes it with 1001.
#[test]
fn sigusr1_and_sigusr2_are_ignored() {
    let server = Server::start(Behavior::default());
    let mut c = Wsbeat::new().fast().arg(server.url()).spawn();
    server.expect(WAIT(), "a heartbeat", |e| e.is_ping());
    c.signal(libc::SIGUSR1);
    c.signal(libc::SIGUSR2);
    assert_eq!(
        c.wait_exit(scaled(ms(500))),
        None,
        "a stray signal ended the client\n{}",
        c.output().dump()
    );
    let pings = server.count(|e| e.conn == 0 && e.is_ping());
    server.expect_count(WAIT(), pings + 2, "heartbeats after the signals", |e| {
        e.conn == 0 && e.is_ping()
    });
    assert_eq!(server.upgrades(), 1, "{}", server.dump());
    c.signal(libc::SIGTERM);
    let close = server.expect(WAIT(), "the Close", |e| {
        matches!(e.kind, Kind::Close { .. })
    });
    assert!(
        matches!(
            close.kind,
            Kind::Close {
                code: Some(1001),
                ..
            }
        ),
        "{close:?}"
    );
    assert_eq!(c.wait_exit(WAIT()), Some(0), "{}", c.output().dump());
}
