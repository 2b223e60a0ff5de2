//! Command line of the real binary: exit codes 0/1/64/78, the one-line error naming the flag,
//! variable or file, `--help`/`--version`, `WSBEAT_*` variables, `--once` and `--max-retries`.

use std::time::Instant;

use crate::util::proxy::{Mode, Proxy};
use crate::util::server::{Behavior, Kind, Server};
use crate::util::{Output, TempDir, WAIT, Wsbeat, free_port, ms, refused_url, scaled};

/// Runs and asserts exit 64 with exactly one stderr line that names `name`.
fn usage_error(w: Wsbeat, name: &str) -> Output {
    let out = w.run(WAIT());
    assert_eq!(out.code, Some(64), "expected exit 64\n{}", out.dump());
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "expected one stderr line\n{}", out.dump());
    assert!(
        lines[0].contains(name),
        "stderr should name {name:?}\n{}",
        out.dump()
    );
    assert!(out.stdout.is_empty(), "nothing on stdout\n{}", out.dump());
    out
}

/// Runs and asserts exit 78 with one stderr line naming `file` (logging at warn and above, so
/// only problems are printed).
fn config_error(w: Wsbeat, file: &std::path::Path) -> Output {
    let out = w.env("RUST_LOG", "warn").run(WAIT());
    assert_eq!(out.code, Some(78), "expected exit 78\n{}", out.dump());
    let name = file.to_string_lossy();
    let naming: Vec<&str> = out
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains(&*name))
        .collect();
    assert_eq!(
        naming.len(),
        1,
        "one stderr line should name {name}\n{}",
        out.dump()
    );
    out
}

#[test]
fn unknown_flag_is_a_usage_error() {
    usage_error(
        Wsbeat::new().arg(refused_url()).arg("--bogus-flag"),
        "--bogus-flag",
    );
    usage_error(
        Wsbeat::new().arg("--bogus-flag=1").arg(refused_url()),
        "--bogus-flag",
    );
}

#[test]
fn missing_url_is_a_usage_error() {
    let out = Wsbeat::new().run(WAIT());
    assert_eq!(out.code, Some(64), "{}", out.dump());
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "{}", out.dump());
    assert!(lines[0].to_lowercase().contains("url"), "{}", out.dump());
}

#[test]
fn bad_url_or_scheme_is_a_usage_error() {
    for bad in [
        "http://127.0.0.1:1/",
        "127.0.0.1:1",
        "ws://",
        "ftp://example.com/x",
    ] {
        let out = Wsbeat::new().arg(bad).run(WAIT());
        assert_eq!(out.code, Some(64), "{bad}: {}", out.dump());
        let lines = out.stderr_lines();
        assert_eq!(lines.len(), 1, "{bad}: {}", out.dump());
        let l = lines[0].to_lowercase();
        assert!(
            l.contains("url") || l.contains(bad),
            "{bad}: {}",
            out.dump()
        );
    }
    // The same through the environment names the variable.
    usage_error(
        Wsbeat::new().env("WSBEAT_URL", "http://127.0.0.1:1/"),
        "WSBEAT_URL",
    );
}

#[test]
fn bad_durations_are_usage_errors() {
    for (flag, value) in [
        ("--ping-interval", "5x"),
        ("--pong-timeout", "-1s"),
        ("--connect-timeout", "abc"),
        ("--backoff-initial", ""),
        ("--backoff-max", "1.5.5s"),
        ("--ping-interval", "ms"),
    ] {
        usage_error(Wsbeat::new().arg(refused_url()).arg(flag).arg(value), flag);
        usage_error(
            Wsbeat::new()
                .arg(refused_url())
                .arg(format!("{flag}={value}")),
            flag,
        );
    }
}

#[test]
fn bad_numbers_are_usage_errors() {
    for (flag, value) in [
        ("--max-retries", "-1"),
        ("--max-retries", "three"),
        ("--queue-size", "abc"),
        ("--max-message-size", "1e3"),
        ("--max-message-size", "99999999999999999999999"),
    ] {
        usage_error(Wsbeat::new().arg(refused_url()).arg(flag).arg(value), flag);
    }
}

#[test]
fn bad_socket_mode_or_max_clients_are_usage_errors() {
    for (flag, value) in [
        ("--socket-mode", "rw-rw----"),
        ("--socket-mode", "0860"),
        ("--socket-mode", "+660"),
        ("--socket-mode", "10660"),
        ("--socket-max-clients", "0"),
        ("--socket-max-clients", "many"),
    ] {
        usage_error(Wsbeat::new().arg(refused_url()).arg(flag).arg(value), flag);
    }
    usage_error(
        Wsbeat::new()
            .arg(refused_url())
            .env("WSBEAT_SOCKET_MAX_CLIENTS", "0"),
        "WSBEAT_SOCKET_MAX_CLIENTS",
    );
}

#[test]
fn bad_heartbeat_mode_is_a_usage_error() {
    usage_error(
        Wsbeat::new()
            .arg(refused_url())
            .args(["--heartbeat", "smoke"]),
        "--heartbeat",
    );
}

#[test]
fn missing_flag_value_is_a_usage_error() {
    for flag in ["--ping-interval", "--header", "--ca-file", "--max-retries"] {
        usage_error(Wsbeat::new().arg(refused_url()).arg(flag), flag);
    }
}

#[test]
fn bad_env_values_name_the_variable() {
    usage_error(
        Wsbeat::new()
            .arg(refused_url())
            .env("WSBEAT_PING_INTERVAL", "soon"),
        "WSBEAT_PING_INTERVAL",
    );
    usage_error(
        Wsbeat::new()
            .arg(refused_url())
            .env("WSBEAT_MAX_RETRIES", "x"),
        "WSBEAT_MAX_RETRIES",
    );
    for bad in ["maybe", "2", "on?"] {
        usage_error(
            Wsbeat::new().arg(refused_url()).env("WSBEAT_INSECURE", bad),
            "WSBEAT_INSECURE",
        );
        usage_error(
            Wsbeat::new()
                .arg(refused_url())
                .env("WSBEAT_STRICT_PONG", bad),
            "WSBEAT_STRICT_PONG",
        );
    }
}

/// A proxy URL with a stray space (a quoting slip) says so, naming the flag or variable,
/// instead of a misleading "invalid port" or "unsupported scheme".
#[test]
fn proxy_url_with_stray_whitespace_says_so() {
    let cases = [
        (
            Wsbeat::new().args(["--proxy", " http://127.0.0.1:3128"]),
            "--proxy",
        ),
        (
            Wsbeat::new().env("WSBEAT_PROXY", "http://127.0.0.1:1 "),
            "WSBEAT_PROXY",
        ),
        (
            Wsbeat::new().env("http_proxy", "http://127.0.0.1:3128 "),
            "http_proxy",
        ),
        (
            Wsbeat::new().env("ALL_PROXY", "\thttp://127.0.0.1:3128"),
            "ALL_PROXY",
        ),
    ];
    for (w, name) in cases {
        let out = usage_error(w.arg(refused_url()), name);
        assert!(
            out.stderr.contains(&format!(
                "{name}: proxy URL has leading or trailing whitespace"
            )),
            "{}",
            out.dump()
        );
    }
}

#[test]
fn malformed_header_is_a_usage_error() {
    usage_error(
        Wsbeat::new()
            .arg(refused_url())
            .args(["--header", "no colon here"]),
        "--header",
    );
}

#[test]
fn help_and_version_print_to_stdout_and_exit_0() {
    for flag in ["--help", "-h"] {
        let out = Wsbeat::new().arg(flag).run(WAIT());
        assert_eq!(out.code, Some(0), "{}", out.dump());
        assert!(out.stdout.contains("--ping-interval"), "{}", out.dump());
        assert!(out.stdout.contains("--once"), "{}", out.dump());
    }
    for flag in ["--version", "-V"] {
        let out = Wsbeat::new().arg(flag).run(WAIT());
        assert_eq!(out.code, Some(0), "{}", out.dump());
        assert!(
            out.stdout.contains(env!("CARGO_PKG_VERSION")),
            "{}",
            out.dump()
        );
    }
    // Help wins even without a URL and with other flags.
    let out = Wsbeat::new()
        .args(["--ping-interval", "1s", "--help"])
        .run(WAIT());
    assert_eq!(out.code, Some(0), "{}", out.dump());
}

fn missing(dir: &TempDir) -> std::path::PathBuf {
    dir.join("does-not-exist.pem")
}

#[test]
fn unreadable_or_invalid_files_exit_78_naming_the_file() {
    let dir = TempDir::new();
    let pki = crate::util::tls::Pki::new();
    let garbage = dir.write("garbage.pem", "this is not PEM\n");
    let gone = missing(&dir);
    for scheme_url in [refused_url(), format!("wss://127.0.0.1:{}/", free_port())] {
        for file in [&gone, &garbage] {
            config_error(
                Wsbeat::new().arg(&scheme_url).arg("--ca-file").arg(file),
                file,
            );
            config_error(
                Wsbeat::new()
                    .arg(&scheme_url)
                    .arg("--client-cert")
                    .arg(file)
                    .arg("--client-key")
                    .arg(&pki.client_key_file),
                file,
            );
            config_error(
                Wsbeat::new()
                    .arg(&scheme_url)
                    .arg("--client-cert")
                    .arg(&pki.client_cert_file)
                    .arg("--client-key")
                    .arg(file),
                file,
            );
        }
        // A valid key that belongs to another certificate: caught at start-up too, not at
        // every wss:// connect as a network failure retried forever.
        let other = crate::util::tls::Pki::new();
        let out = config_error(
            Wsbeat::new()
                .arg(&scheme_url)
                .arg("--client-cert")
                .arg(&pki.client_cert_file)
                .arg("--client-key")
                .arg(&other.client_key_file),
            &other.client_key_file,
        );
        assert!(
            out.stderr.contains("does not match --client-cert"),
            "{}",
            out.dump()
        );
        // Header file: missing, and a line that is not `Name: value`.
        let bad_headers = dir.write("headers", "X-Ok: 1\nthis line has no colon\n");
        for file in [&gone, &bad_headers] {
            config_error(
                Wsbeat::new()
                    .arg(&scheme_url)
                    .arg("--header-file")
                    .arg(file),
                file,
            );
        }
        // Through the environment too.
        config_error(
            Wsbeat::new().arg(&scheme_url).env("WSBEAT_CA_FILE", &gone),
            &gone,
        );
    }
}

fn assert_rtt_line(out: &Output) {
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one stdout line\n{}", out.dump());
    let v = lines[0]
        .strip_prefix("rtt_ms=")
        .unwrap_or_else(|| panic!("rtt_ms=<float> expected\n{}", out.dump()));
    let rtt: f64 = v
        .parse()
        .unwrap_or_else(|_| panic!("not a float: {v:?}\n{}", out.dump()));
    assert!((0.0..5000.0).contains(&rtt), "{}", out.dump());
}

#[test]
fn once_against_echo_server_prints_rtt_and_closes_with_1000() {
    let server = Server::start(Behavior::default());
    let t0 = Instant::now();
    // Default --ping-interval (20 s): the probe's heartbeat must go out at once.
    let out = Wsbeat::new().arg(server.url()).arg("--once").run(WAIT());
    let took = t0.elapsed();
    assert_eq!(out.code, Some(0), "{}", out.dump());
    assert_rtt_line(&out);
    assert!(
        took < scaled(ms(5000)),
        "--once took {took:?}\n{}",
        out.dump()
    );
    server.expect(WAIT(), "a ping", |e| e.is_ping());
    server.expect(WAIT(), "close 1000", |e| {
        matches!(
            e.kind,
            Kind::Close {
                code: Some(1000),
                ..
            }
        )
    });
}

#[test]
fn once_in_text_mode() {
    let server = Server::start(Behavior::default().reply("are you there", "yes"));
    let mut c = Wsbeat::new()
        .arg(server.url())
        .args([
            "--once",
            "--heartbeat",
            "text",
            "--ping-text",
            "are you there",
        ])
        .args(["--pong-text", "yes"])
        .spawn();
    c.close_stdin();
    let code = c.wait_exit(WAIT());
    let out = c.output();
    assert_eq!(code, Some(0), "{}\n{}", out.dump(), server.dump());
    assert_rtt_line(&out);
    assert_eq!(server.texts(0), ["are you there"]);
}

#[test]
fn once_against_silent_server_fails_within_pong_timeout() {
    let server = Server::start(Behavior::silent());
    let t0 = Instant::now();
    let out = Wsbeat::new()
        .arg(server.url())
        .args(["--once", "--pong-timeout", "500ms"])
        .run(WAIT());
    let took = t0.elapsed();
    assert_eq!(out.code, Some(1), "{}", out.dump());
    assert!(!out.stdout.contains("rtt_ms"), "{}", out.dump());
    assert!(
        !out.stderr_lines().is_empty(),
        "reason on stderr\n{}",
        out.dump()
    );
    assert!(took >= ms(450), "gave up before the pong timeout: {took:?}");
    assert!(took < scaled(ms(3000)), "took {took:?}\n{}", out.dump());
}

#[test]
fn once_against_refused_port_fails() {
    let out = Wsbeat::new().arg(refused_url()).arg("--once").run(WAIT());
    assert_eq!(out.code, Some(1), "{}", out.dump());
    assert!(out.stdout.is_empty(), "{}", out.dump());
    assert!(!out.stderr_lines().is_empty(), "{}", out.dump());
}

#[test]
fn max_retries_gives_up_after_exactly_n_attempts() {
    let server = Server::start(Behavior::default());
    let proxy = Proxy::start(server.addr());
    proxy.set_mode(Mode::Refuse);
    let out = Wsbeat::new()
        .arg(proxy.url())
        .fast()
        .args(["--max-retries", "3"])
        .run(WAIT());
    assert_eq!(out.code, Some(1), "{}", out.dump());
    assert_eq!(proxy.accepted(), 3, "attempts\n{}", out.dump());
    assert_eq!(server.upgrades(), 0);

    // A port where nothing listens: same exit.
    let out = Wsbeat::new()
        .arg(refused_url())
        .fast()
        .args(["--max-retries", "3"])
        .run(WAIT());
    assert_eq!(out.code, Some(1), "{}", out.dump());

    // "In a row": an attempt that upgrades (even if the server then closes at once) breaks
    // the row, so two failures, a success and three more failures make six attempts.
    let server = Server::start_with(|n| {
        if n == 2 {
            Behavior::echo().close_after(ms(0), 1011, "bye")
        } else {
            Behavior::reject(500, &[])
        }
    });
    let out = Wsbeat::new()
        .arg(server.url())
        .fast()
        .args(["--max-retries", "3"])
        .run(WAIT());
    assert_eq!(out.code, Some(1), "{}", out.dump());
    assert_eq!(server.upgrades(), 1, "{}", out.dump());
    assert_eq!(
        server.count(|e| e.is_accepted()),
        6,
        "attempts\n{}",
        out.dump()
    );
}

#[test]
fn env_vars_are_equivalent_to_flags() {
    let server = Server::start(Behavior::default());
    let out = Wsbeat::new()
        .env("WSBEAT_URL", server.url())
        .env("WSBEAT_ONCE", "yes")
        .env("WSBEAT_SUBPROTOCOL", "proto.env")
        .env("WSBEAT_HEADER", "X-From-Env: 1")
        .run(WAIT());
    assert_eq!(out.code, Some(0), "{}", out.dump());
    assert_rtt_line(&out);
    let up = server.expect(WAIT(), "upgrade", |e| e.is_upgraded());
    assert_eq!(up.header("x-from-env"), Some("1"), "{up:?}");
    assert!(
        matches!(&up.kind, Kind::Upgraded { subprotocols, .. } if subprotocols == &["proto.env"]),
        "{up:?}"
    );
    assert_eq!(server.count(|e| e.is_ping()), 1, "{}", server.dump());
}

#[test]
fn env_vars_configure_the_heartbeat() {
    let server = Server::start(Behavior::default().reply("hb?", "hb!"));
    let _c = Wsbeat::new()
        .env("WSBEAT_URL", server.url())
        .env("WSBEAT_HEARTBEAT", "text")
        .env("WSBEAT_PING_TEXT", "hb?")
        .env("WSBEAT_PONG_TEXT", "hb!")
        .env("WSBEAT_PING_INTERVAL", "200ms")
        .env("WSBEAT_STRICT_PONG", "true")
        .spawn();
    let pings = server.expect_count(WAIT(), 4, "4 text heartbeats", |e| e.text() == Some("hb?"));
    for w in pings.windows(2) {
        let gap = w[1].at - w[0].at;
        assert!(
            gap >= ms(150) && gap <= ms(200) + scaled(ms(400)),
            "{gap:?}"
        );
    }
    assert_eq!(server.upgrades(), 1, "{}", server.dump());
}

#[test]
fn command_line_wins_over_environment() {
    let server = Server::start(Behavior::default());
    let out = Wsbeat::new()
        .env("WSBEAT_URL", refused_url())
        .env("WSBEAT_HEARTBEAT", "text")
        .env("WSBEAT_HEADER", "X-From-Env: 1")
        .arg(server.url())
        .args([
            "--once",
            "--heartbeat",
            "control",
            "--header",
            "X-From-Cli: 2",
        ])
        .run(WAIT());
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let up = server.expect(WAIT(), "upgrade", |e| e.is_upgraded());
    assert_eq!(up.header("x-from-cli"), Some("2"), "{up:?}");
    assert_eq!(
        up.header("x-from-env"),
        None,
        "WSBEAT_HEADER is used only without --header"
    );
    assert_eq!(server.count(|e| e.is_ping()), 1, "{}", server.dump());
}
