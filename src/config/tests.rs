//! The command line and environment → `Config`, end to end through `parse`.

use super::*;
use crate::testing::{ms, secs};

const URL: &str = "ws://127.0.0.1:9001/ws";

fn no_env(_: &str) -> Option<String> {
    None
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn run_with(args: &[&str], env: &[(&str, &str)]) -> Result<Config, UsageError> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    match parse(os(args), &lookup)? {
        Parsed::Run(config) => Ok(*config),
        other => panic!("expected Run, got {other:?}"),
    }
}

fn run(args: &[&str]) -> Config {
    run_with(args, &[]).unwrap()
}

fn err_with(args: &[&str], env: &[(&str, &str)]) -> String {
    match run_with(args, env) {
        Ok(config) => panic!("expected an error for {args:?}, got {config:?}"),
        Err(err) => err.to_string(),
    }
}

fn err(args: &[&str]) -> String {
    err_with(args, &[])
}

#[test]
fn defaults_are_the_contract() {
    let config = run(&[URL]);
    let expected = Config::new(Target {
        url: URL.into(),
        tls: false,
        host: "127.0.0.1".into(),
        port: 9001,
    });
    assert_eq!(config, expected);
    assert_eq!(config.ping_interval, secs(20));
    assert_eq!(config.pong_timeout, secs(10));
    assert_eq!(config.heartbeat, HeartbeatMode::Control);
    assert_eq!(
        (config.ping_text.as_str(), config.pong_text.as_str()),
        ("ping", "pong")
    );
    assert!(!config.strict_pong && !config.insecure && !config.once);
    assert_eq!(config.connect_timeout, secs(10));
    assert_eq!(
        (config.backoff_initial, config.backoff_max),
        (secs(1), secs(60))
    );
    assert_eq!(config.max_retries, 0);
    assert_eq!(config.max_message_size, 1_048_576);
    assert_eq!(config.queue_size, 1000);
    assert_eq!(config.queue_bytes, 1_048_576);
    assert!(config.headers.is_empty() && config.subprotocols.is_empty());
    assert_eq!(config.header_file, None);
    assert_eq!(config.status_file, None);
}

#[test]
fn every_option_in_both_forms() {
    let spaced = run(&[
        "--ping-interval",
        "250ms",
        "--pong-timeout",
        "1.5s",
        "--heartbeat",
        "text",
        "--ping-text",
        "hi there",
        "--pong-text",
        "",
        "--strict-pong",
        "--connect-timeout",
        "3",
        "--backoff-initial",
        "100ms",
        "--backoff-max",
        "5m",
        "--max-retries",
        "4294967295",
        "--header",
        "Authorization: Bearer x",
        "--header",
        "X-Device:7",
        "--header-file",
        "/run/creds/headers",
        "--subprotocol",
        "chat.v2",
        "--subprotocol",
        "json",
        "--ca-file",
        "/etc/ca.pem",
        "--client-cert",
        "/etc/c.pem",
        "--client-key",
        "/etc/k.pem",
        "--insecure",
        "--max-message-size",
        "1073741824",
        "--queue-size",
        "0",
        "--status-file",
        "/run/wsbeat/status",
        "--once",
        "wss://[::1]/x?y=1",
    ]);
    let joined: Vec<String> = [
        "--ping-interval=250ms",
        "--pong-timeout=1.5s",
        "--heartbeat=text",
        "--ping-text=hi there",
        "--pong-text=",
        "--strict-pong",
        "--connect-timeout=3",
        "--backoff-initial=100ms",
        "--backoff-max=5m",
        "--max-retries=4294967295",
        "--header=Authorization: Bearer x",
        "--header=X-Device:7",
        "--header-file=/run/creds/headers",
        "--subprotocol=chat.v2",
        "--subprotocol=json",
        "--ca-file=/etc/ca.pem",
        "--client-cert=/etc/c.pem",
        "--client-key=/etc/k.pem",
        "--insecure",
        "--max-message-size=1073741824",
        "--queue-size=0",
        "--status-file=/run/wsbeat/status",
        "--once",
        "wss://[::1]/x?y=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let joined: Vec<&str> = joined.iter().map(String::as_str).collect();
    assert_eq!(spaced, run(&joined));

    assert_eq!(spaced.ping_interval, ms(250));
    assert_eq!(spaced.pong_timeout, ms(1500));
    assert_eq!(spaced.heartbeat, HeartbeatMode::Text);
    assert_eq!(spaced.ping_text, "hi there");
    assert_eq!(spaced.pong_text, "");
    assert!(spaced.strict_pong && spaced.insecure && spaced.once);
    assert_eq!(spaced.connect_timeout, secs(3));
    assert_eq!(
        (spaced.backoff_initial, spaced.backoff_max),
        (ms(100), secs(300))
    );
    assert_eq!(spaced.max_retries, u32::MAX);
    assert_eq!(
        spaced.headers,
        vec![
            ("Authorization".to_string(), "Bearer x".to_string()),
            ("X-Device".to_string(), "7".to_string())
        ]
    );
    assert_eq!(
        spaced.header_file,
        Some(PathBuf::from("/run/creds/headers"))
    );
    assert_eq!(spaced.subprotocols, vec!["chat.v2", "json"]);
    assert_eq!(spaced.ca_file, Some(PathBuf::from("/etc/ca.pem")));
    assert_eq!(spaced.client_cert, Some(PathBuf::from("/etc/c.pem")));
    assert_eq!(spaced.client_key, Some(PathBuf::from("/etc/k.pem")));
    assert_eq!(spaced.max_message_size, 1 << 30);
    assert_eq!(spaced.queue_size, 0);
    assert_eq!(
        spaced.status_file,
        Some(PathBuf::from("/run/wsbeat/status"))
    );
    assert_eq!(
        spaced.target,
        Target {
            url: "wss://[::1]/x?y=1".into(),
            tls: true,
            host: "::1".into(),
            port: 443
        }
    );
}

#[test]
fn values_may_start_with_a_dash_and_last_one_wins() {
    let config = run(&["--ping-text", "-V", "--ping-text", "--help", URL]);
    assert_eq!(config.ping_text, "--help");
    let config = run(&["--ping-interval", "1s", "--ping-interval=2s", URL]);
    assert_eq!(config.ping_interval, secs(2));
    // The first '=' splits; the value may hold more.
    assert_eq!(run(&["--ping-text=a=b", URL]).ping_text, "a=b");
}

#[test]
fn every_option_from_the_environment() {
    let env = [
        ("WSBEAT_URL", "wss://example.com:8443/ws"),
        ("WSBEAT_PING_INTERVAL", "5s"),
        ("WSBEAT_PONG_TIMEOUT", "2s"),
        ("WSBEAT_HEARTBEAT", "text"),
        ("WSBEAT_PING_TEXT", "p"),
        ("WSBEAT_PONG_TEXT", "q"),
        ("WSBEAT_STRICT_PONG", "yes"),
        ("WSBEAT_CONNECT_TIMEOUT", "4s"),
        ("WSBEAT_BACKOFF_INITIAL", "2s"),
        ("WSBEAT_BACKOFF_MAX", "30s"),
        ("WSBEAT_MAX_RETRIES", "3"),
        ("WSBEAT_HEADER", "X-Token: abc"),
        ("WSBEAT_HEADER_FILE", "/h"),
        ("WSBEAT_SUBPROTOCOL", "chat, json ,"),
        ("WSBEAT_CA_FILE", "/ca"),
        ("WSBEAT_CLIENT_CERT", "/c"),
        ("WSBEAT_CLIENT_KEY", "/k"),
        ("WSBEAT_INSECURE", "1"),
        ("WSBEAT_MAX_MESSAGE_SIZE", "2048"),
        ("WSBEAT_QUEUE_SIZE", "7"),
        ("WSBEAT_QUEUE_BYTES", "4096"),
        ("WSBEAT_STATUS_FILE", "/s"),
        ("WSBEAT_ONCE", "true"),
    ];
    let config = run_with(&[], &env).unwrap();
    assert_eq!(config.target.url, "wss://example.com:8443/ws");
    assert_eq!(
        (config.target.host.as_str(), config.target.port),
        ("example.com", 8443)
    );
    assert_eq!(
        (config.ping_interval, config.pong_timeout),
        (secs(5), secs(2))
    );
    assert_eq!(config.heartbeat, HeartbeatMode::Text);
    assert_eq!(
        (config.ping_text.as_str(), config.pong_text.as_str()),
        ("p", "q")
    );
    assert!(config.strict_pong && config.insecure && config.once);
    assert_eq!(config.connect_timeout, secs(4));
    assert_eq!(
        (config.backoff_initial, config.backoff_max),
        (secs(2), secs(30))
    );
    assert_eq!(config.max_retries, 3);
    assert_eq!(config.headers, vec![("X-Token".into(), "abc".into())]);
    assert_eq!(config.header_file, Some(PathBuf::from("/h")));
    assert_eq!(config.subprotocols, vec!["chat", "json"]);
    assert_eq!(config.ca_file, Some(PathBuf::from("/ca")));
    assert_eq!(config.client_cert, Some(PathBuf::from("/c")));
    assert_eq!(config.client_key, Some(PathBuf::from("/k")));
    assert_eq!((config.max_message_size, config.queue_size), (2048, 7));
    assert_eq!(config.queue_bytes, 4096);
    assert_eq!(config.status_file, Some(PathBuf::from("/s")));
}

#[test]
fn command_line_wins_over_environment() {
    let env = [
        ("WSBEAT_URL", "ws://env.example/"),
        ("WSBEAT_PING_INTERVAL", "5s"),
        ("WSBEAT_HEADER", "X-Env: 1"),
        ("WSBEAT_SUBPROTOCOL", "env"),
        ("WSBEAT_INSECURE", "0"),
    ];
    let config = run_with(
        &[
            "--ping-interval=7s",
            "--header",
            "X-Arg: 2",
            "--subprotocol",
            "arg",
            "--insecure",
            URL,
        ],
        &env,
    )
    .unwrap();
    assert_eq!(config.target.url, URL);
    assert_eq!(config.ping_interval, secs(7));
    assert_eq!(config.headers, vec![("X-Arg".into(), "2".into())]);
    assert_eq!(config.subprotocols, vec!["arg"]);
    assert!(config.insecure);

    // Without the flags the environment applies; "0"/"false"/"no" are off.
    let config = run_with(&[], &env).unwrap();
    assert_eq!(config.ping_interval, secs(5));
    assert_eq!(config.headers, vec![("X-Env".into(), "1".into())]);
    assert_eq!(config.subprotocols, vec!["env"]);
    for off in ["0", "false", "no"] {
        assert!(
            !run_with(&[URL], &[("WSBEAT_INSECURE", off)])
                .unwrap()
                .insecure
        );
    }
    // An empty variable is unset (as EnvironmentFile= lines like `WSBEAT_CA_FILE=`)...
    let config = run_with(
        &[URL],
        &[("WSBEAT_CA_FILE", ""), ("WSBEAT_PING_INTERVAL", "")],
    )
    .unwrap();
    assert_eq!(config, run(&[URL]));
    // ...except a switch's, which must be one of the six words.
    let err = run_with(&[URL], &[("WSBEAT_ONCE", "")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "WSBEAT_ONCE: invalid value '' (use 1, true, yes or 0, false, no)"
    );
    // A bad variable is not an error when the command line overrides it.
    assert!(
        run_with(
            &["--ping-interval", "1s", URL],
            &[("WSBEAT_PING_INTERVAL", "x")]
        )
        .is_ok()
    );
}

#[test]
fn help_and_version() {
    for (args, expected) in [
        (&["-h"][..], Parsed::Help),
        (&["--help"], Parsed::Help),
        (&["-V"], Parsed::Version),
        (&["--version"], Parsed::Version),
        // No URL needed, later arguments not checked.
        (
            &["--ping-interval", "1s", "--help", "--bogus"],
            Parsed::Help,
        ),
    ] {
        assert_eq!(parse(os(args), &no_env).unwrap(), expected, "{args:?}");
    }
    assert_eq!(
        parse(os(&["--help=1"]), &no_env).unwrap_err().to_string(),
        "--help: takes no value"
    );
    assert_eq!(version(), format!("wsbeat {}", env!("CARGO_PKG_VERSION")));
    let usage = USAGE.to_string();
    for option in OPTIONS.iter().map(|spec| spec.name) {
        assert!(
            usage.contains(&format!("--{option} ")) || usage.contains(&format!("--{option}\n")),
            "{option}"
        );
    }
    assert!(usage.contains("WSBEAT_") && usage.contains("64") && usage.contains("78"));
    assert!(usage.lines().all(|line| line.len() <= 80));
}

#[test]
fn the_defaults_in_the_help_are_the_defaults() {
    for spec in OPTIONS {
        if let Some(default) = spec.default {
            let flag = format!("--{}", spec.name);
            assert_eq!(run(&[&flag, default, URL]), run(&[URL]), "{flag} {default}");
        }
    }
}

#[test]
fn double_dash_ends_options() {
    let config = run(&["--once", "--", URL]);
    assert!(config.once);
    assert_eq!(
        err(&["--", "--once"]),
        "url: '--once' has no scheme (use ws://host[:port]/path or wss://host[:port]/path)"
    );
    assert_eq!(
        err(&["--", URL, "--"]),
        format!("url: unexpected second argument '--' after '{URL}' (only one URL may be given)")
    );
}

#[test]
fn command_line_errors_name_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus", URL], "--bogus: unknown option (see --help)"),
        (&["--bogus=1", URL], "--bogus: unknown option (see --help)"),
        (&["-x", URL], "-x: unknown option (see --help)"),
        (&["-hV"], "-hV: unknown option (see --help)"),
        (&["--ping"], "--ping: unknown option (see --help)"),
        (
            &["--bad\nflag"],
            "'--bad\\nflag': unknown option (see --help)",
        ),
        (&[URL, "--ping-interval"], "--ping-interval: missing value"),
        (&["--insecure=1", URL], "--insecure: takes no value"),
        (&["--once=", URL], "--once: takes no value"),
        (&["--version=2"], "--version: takes no value"),
        (&[], "url: missing (give it as an argument or WSBEAT_URL)"),
        (
            &["--once"],
            "url: missing (give it as an argument or WSBEAT_URL)",
        ),
        (
            &[URL, "ws://other/"],
            "url: unexpected second argument 'ws://other/' after 'ws://127.0.0.1:9001/ws' (only one URL may be given)",
        ),
        (
            &["--ping-interval", "5x", URL],
            "--ping-interval: invalid duration '5x' (use e.g. 250ms, 1.5s, 20s, 5m)",
        ),
        (
            &["--pong-timeout=-1s", URL],
            "--pong-timeout: invalid duration '-1s' (must not be negative)",
        ),
        (
            &["--connect-timeout", "", URL],
            "--connect-timeout: invalid duration '' (use e.g. 250ms, 1.5s, 20s, 5m)",
        ),
        (
            &["--connect-timeout", "0", URL],
            "--connect-timeout: must be greater than 0",
        ),
        (
            &["--backoff-initial", "1e3", URL],
            "--backoff-initial: invalid duration '1e3' (use e.g. 250ms, 1.5s, 20s, 5m)",
        ),
        (
            &["--backoff-max", "2401h", URL],
            "--backoff-max: invalid duration '2401h' (at most 100 days)",
        ),
        (
            &["--pong-timeout", "0", URL],
            "--pong-timeout: must be greater than 0 while the heartbeat is on (--ping-interval 0 turns it off)",
        ),
        (
            &["--pong-timeout", "0", "--ping-interval", "0", "--once", URL],
            "--pong-timeout: must be greater than 0 while the heartbeat is on (--ping-interval 0 turns it off)",
        ),
        (
            &["--backoff-initial", "90s", URL],
            "--backoff-initial: 90s is larger than --backoff-max (default 60s)",
        ),
        (
            &["--backoff-initial", "3s", "--backoff-max", "2s", URL],
            "--backoff-initial: 3s is larger than --backoff-max (2s)",
        ),
        (
            &["--backoff-max", "500ms", URL],
            "--backoff-max: 500ms is smaller than --backoff-initial (default 1s)",
        ),
        (
            &["--heartbeat", "Control", URL],
            "--heartbeat: invalid value 'Control' (use control or text)",
        ),
        (
            &["--max-retries", "-1", URL],
            "--max-retries: invalid number '-1' (use a whole number from 0 to 4294967295)",
        ),
        (
            &["--max-retries", "4294967296", URL],
            "--max-retries: invalid number '4294967296' (use a whole number from 0 to 4294967295)",
        ),
        (
            &["--max-retries", "+1", URL],
            "--max-retries: invalid number '+1' (use a whole number from 0 to 4294967295)",
        ),
        (
            &["--max-message-size", "0", URL],
            "--max-message-size: invalid number '0' (use a whole number of bytes from 1 to 1073741824)",
        ),
        (
            &["--max-message-size", "1073741825", URL],
            "--max-message-size: invalid number '1073741825' (use a whole number of bytes from 1 to 1073741824)",
        ),
        (
            &["--queue-size", "1k", URL],
            "--queue-size: invalid number '1k' (use a whole number, 0 or more)",
        ),
        (
            &["--header", "NoColon", URL],
            "--header: expected 'Name: value' (no ':' found)",
        ),
        (
            &["--header", "Host: x", URL],
            "--header: header 'Host' is set by the websocket handshake and cannot be given",
        ),
        (&["--header-file=", URL], "--header-file: empty path"),
        (&["--ca-file", "", URL], "--ca-file: empty path"),
        (&["--status-file=", URL], "--status-file: empty path"),
        (
            &["--client-cert", "/c", URL],
            "--client-cert: needs --client-key as well",
        ),
        (
            &["--client-key=/k", URL],
            "--client-key: needs --client-cert as well",
        ),
        (
            &["--subprotocol", "a b", URL],
            "--subprotocol: invalid subprotocol 'a b' (use letters, digits and !#$%&'*+-.^_`|~)",
        ),
        (
            &["--subprotocol", "", URL],
            "--subprotocol: empty subprotocol name",
        ),
        (
            &["--subprotocol", "chat", "--subprotocol", "chat", URL],
            "--subprotocol: subprotocol 'chat' given twice",
        ),
    ];
    for (args, expected) in cases {
        assert_eq!(err(args), *expected, "{args:?}");
    }
}

#[test]
fn environment_errors_name_the_variable() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "WSBEAT_PING_INTERVAL",
            "5x",
            "WSBEAT_PING_INTERVAL: invalid duration '5x' (use e.g. 250ms, 1.5s, 20s, 5m)",
        ),
        (
            "WSBEAT_INSECURE",
            "on",
            "WSBEAT_INSECURE: invalid value 'on' (use 1, true, yes or 0, false, no)",
        ),
        (
            "WSBEAT_ONCE",
            "TRUE",
            "WSBEAT_ONCE: invalid value 'TRUE' (use 1, true, yes or 0, false, no)",
        ),
        (
            "WSBEAT_STRICT_PONG",
            " 1",
            "WSBEAT_STRICT_PONG: invalid value ' 1' (use 1, true, yes or 0, false, no)",
        ),
        (
            "WSBEAT_HEARTBEAT",
            "txt",
            "WSBEAT_HEARTBEAT: invalid value 'txt' (use control or text)",
        ),
        (
            "WSBEAT_QUEUE_SIZE",
            "-5",
            "WSBEAT_QUEUE_SIZE: invalid number '-5' (use a whole number, 0 or more)",
        ),
        (
            "WSBEAT_HEADER",
            "oops",
            "WSBEAT_HEADER: expected 'Name: value' (no ':' found)",
        ),
        (
            "WSBEAT_CLIENT_KEY",
            "/k",
            "WSBEAT_CLIENT_KEY: needs --client-cert as well",
        ),
        (
            "WSBEAT_SUBPROTOCOL",
            "a;b",
            "WSBEAT_SUBPROTOCOL: invalid subprotocol 'a;b' (use letters, digits and !#$%&'*+-.^_`|~)",
        ),
        (
            "WSBEAT_SUBPROTOCOL",
            " , ",
            "WSBEAT_SUBPROTOCOL: empty subprotocol name",
        ),
        (
            "WSBEAT_PONG_TIMEOUT",
            "0",
            "WSBEAT_PONG_TIMEOUT: must be greater than 0 while the heartbeat is on (--ping-interval 0 turns it off)",
        ),
        (
            "WSBEAT_BACKOFF_MAX",
            "0.5",
            "WSBEAT_BACKOFF_MAX: 500ms is smaller than --backoff-initial (default 1s)",
        ),
        (
            "WSBEAT_URL",
            "http://example.com/",
            "WSBEAT_URL: unsupported scheme 'http' in 'http://example.com/' (use ws:// or wss://)",
        ),
    ];
    for (var, value, expected) in cases {
        let args: &[&str] = if *var == "WSBEAT_URL" { &[] } else { &[URL] };
        assert_eq!(err_with(args, &[(var, value)]), *expected, "{var}={value}");
    }
    // Cross-checks name each side where it came from.
    assert_eq!(
        err_with(
            &["--backoff-initial=2m", URL],
            &[("WSBEAT_BACKOFF_MAX", "1m")]
        ),
        "--backoff-initial: 120s is larger than WSBEAT_BACKOFF_MAX (60s)"
    );
    assert_eq!(
        err_with(&[URL], &[("WSBEAT_CLIENT_CERT", "/c")]),
        "WSBEAT_CLIENT_CERT: needs --client-key as well"
    );
}

#[test]
fn zero_values_that_are_allowed() {
    let config = run(&["--ping-interval", "0", "--pong-timeout", "0", URL]);
    assert!(config.ping_interval.is_zero() && config.pong_timeout.is_zero());
    let config = run(&["--backoff-initial", "0", "--backoff-max", "0ms", URL]);
    assert!(config.backoff_initial.is_zero() && config.backoff_max.is_zero());
    assert_eq!(run(&["--max-retries", "0", URL]).max_retries, 0);
    assert_eq!(run(&["--max-message-size", "1", URL]).max_message_size, 1);
    assert_eq!(
        run(&["--backoff-initial=60s", URL]).backoff_initial,
        secs(60)
    );
}

#[test]
#[cfg(unix)]
fn non_utf8_arguments_are_usage_errors() {
    use std::os::unix::ffi::OsStringExt;
    let bad = || OsString::from_vec(b"/tmp/\xff".to_vec());
    let check = |args: Vec<OsString>, expected: &str| {
        assert_eq!(parse(args, &no_env).unwrap_err().to_string(), expected);
    };
    check(vec![bad()], "url: not valid UTF-8");
    check(
        vec!["--ca-file".into(), bad()],
        "--ca-file: value is not valid UTF-8",
    );
    check(
        vec![OsString::from_vec(b"--ca-file=\xff".to_vec())],
        "--ca-file: value is not valid UTF-8",
    );
    check(
        vec![OsString::from_vec(b"--\xff".to_vec())],
        "--\u{fffd}: not valid UTF-8",
    );
    check(vec!["--".into(), bad()], "url: not valid UTF-8");
}

#[test]
fn quote_keeps_messages_on_one_line() {
    assert_eq!(quote("a'b\\c\r\n"), "'a\\'b\\\\c\\r\\n'");
    assert_eq!(quote("é"), "'é'");
    assert_eq!(shown_flag("--ok"), "--ok");
    assert_eq!(shown_flag("--a\tb"), "'--a\\tb'");
}

#[test]
fn proxy_from_flag_environment_and_proxy_variables() {
    let proxy = |config: Config| config.proxy.map(|p| p.to_string());
    assert_eq!(proxy(run(&[URL])), None);
    assert_eq!(
        proxy(run(&["--proxy", "http://u:p@proxy:3128", URL])),
        Some("http://proxy:3128".into())
    );
    let env = [
        ("WSBEAT_PROXY", "http://wsbeat:1"),
        ("http_proxy", "http://lower:1"),
    ];
    assert_eq!(
        proxy(run_with(&[URL], &env).unwrap()),
        Some("http://wsbeat:1".into())
    );
    assert_eq!(proxy(run_with(&["--proxy=none", URL], &env).unwrap()), None);
    assert_eq!(
        proxy(run_with(&[URL], &env[1..]).unwrap()),
        Some("http://lower:1".into())
    );
    let direct = [env[1], ("no_proxy", "127.0.0.1")];
    assert_eq!(proxy(run_with(&[URL], &direct).unwrap()), None);
    assert!(
        err(&["--proxy", "socks5://p:1080", URL]).starts_with("--proxy: unsupported proxy scheme")
    );
    assert!(err_with(&[URL], &[("ALL_PROXY", "https://p")]).starts_with("ALL_PROXY: unsupported"));
    assert!(err(&["--proxy=", URL]).starts_with("--proxy: empty proxy URL"));
    assert_eq!(err(&["--proxy"]), "--proxy: missing value");
}

#[test]
fn auto_interval_bounds() {
    let config = run(&["--ping-interval", "auto", URL]);
    assert_eq!(config.auto_interval, Some((secs(15), secs(300))));
    assert_eq!(config.ping_interval, secs(15), "the first interval is MIN");
    let config = run(&["--ping-interval=auto:30s..30m", URL]);
    assert_eq!(config.auto_interval, Some((secs(30), secs(1800))));
    assert_eq!(Config::new(config.target.clone()).auto_interval, None);
    for bad in [
        "auto:",
        "auto:5m..1m",
        "auto:0..1m",
        "auto:1m",
        "auto:x..1m",
        "autox",
    ] {
        let err = run_with(&["--ping-interval", bad, URL], &[]).unwrap_err();
        assert!(
            err.to_string().starts_with("--ping-interval: "),
            "{bad}: {err}"
        );
    }
}

#[test]
fn metrics_file_and_link_watch() {
    let config = run(&["--metrics-file", "/m.prom", "--no-link-watch", URL]);
    assert_eq!(config.metrics_file, Some(PathBuf::from("/m.prom")));
    assert!(!config.link_watch);
    assert!(run(&[URL]).link_watch);
}

#[test]
fn state_dir_from_the_flag_or_the_environment() {
    assert_eq!(run(&[URL]).state_dir, None);
    let config = run(&["--state-dir", "/var/lib/wsbeat", URL]);
    assert_eq!(config.state_dir, Some(PathBuf::from("/var/lib/wsbeat")));
    let config = run_with(&[URL], &[("WSBEAT_STATE_DIR", "/s")]).unwrap();
    assert_eq!(config.state_dir, Some(PathBuf::from("/s")));
    let err = run_with(&["--state-dir", "", URL], &[]).unwrap_err();
    assert!(err.to_string().starts_with("--state-dir: "), "{err}");
}
