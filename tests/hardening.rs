//! Local hardening of the real binary: no secret reaches the log at any level (header values,
//! a URL's userinfo).

use std::path::Path;

use crate::util::server::{Behavior, Server};
use crate::util::{TempDir, WAIT, Wsbeat};

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
