//! `config::parse` never panics, keeps every error on one line, and only ever
//! returns configurations that satisfy the contract's invariants.
//!
//! Input: one item per `\n`-separated line. A line `WSBEAT_NAME=value` sets an
//! environment variable (the last one wins); any other line, including
//! non-UTF-8 bytes, is one command-line argument.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use wsbeat::config::{self, MAX_DURATION, MAX_MESSAGE_SIZE_LIMIT, Parsed};
use wsbeat::headers;

/// `WSBEAT_NAME=value` split in two, or `None` for a command-line argument.
fn env_assignment(line: &[u8]) -> Option<(&str, &str)> {
    let (key, value) = std::str::from_utf8(line).ok()?.split_once('=')?;
    key.starts_with("WSBEAT_").then_some((key, value))
}

fuzz_target!(|data: &[u8]| {
    let mut args = Vec::new();
    let mut env: Vec<(String, String)> = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        match env_assignment(line) {
            Some((key, value)) => env.push((key.to_owned(), value.to_owned())),
            None => args.push(OsString::from_vec(line.to_vec())),
        }
    }
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };

    let first = config::parse(args.clone(), &lookup);
    let again = config::parse(args, &lookup);
    assert_eq!(first, again, "parse is not deterministic");

    let config = match first {
        Err(err) => {
            let message = err.to_string();
            assert!(
                !message.contains(['\n', '\r']),
                "multi-line error: {message:?}"
            );
            assert!(!err.flag.is_empty(), "error names no flag: {message:?}");
            return;
        }
        Ok(Parsed::Help | Parsed::Version) => return,
        Ok(Parsed::Run(config)) => config,
    };

    // URL: validated, normalised once and for all.
    let target = &config.target;
    assert!(!target.host.is_empty());
    assert_ne!(target.port, 0);
    assert_eq!(
        config::parse_target(&target.url, "url").as_ref(),
        Ok(target),
        "normalising twice changes the target"
    );

    // Durations: bounded so deadlines never overflow; cross-checks held.
    for duration in [
        config.ping_interval,
        config.pong_timeout,
        config.connect_timeout,
        config.backoff_initial,
        config.backoff_max,
    ] {
        assert!(duration <= MAX_DURATION);
        assert!(Instant::now().checked_add(duration).is_some());
    }
    assert!(config.connect_timeout > Duration::ZERO);
    assert!(config.backoff_initial <= config.backoff_max);
    if !config.ping_interval.is_zero() || config.once {
        assert!(!config.pong_timeout.is_zero());
    }
    assert!((1..=MAX_MESSAGE_SIZE_LIMIT).contains(&config.max_message_size));
    assert_eq!(config.client_cert.is_some(), config.client_key.is_some());
    for path in [
        &config.header_file,
        &config.ca_file,
        &config.client_cert,
        &config.client_key,
        &config.status_file,
    ]
    .into_iter()
    .flatten()
    {
        assert!(!path.as_os_str().is_empty());
    }

    // Headers and subprotocols are safe to put on the wire as they are.
    for (name, value) in &config.headers {
        let line = format!("{name}: {value}");
        assert_eq!(
            headers::parse_header(&line),
            Ok((name.clone(), value.clone()))
        );
    }
    for (index, protocol) in config.subprotocols.iter().enumerate() {
        assert!(!protocol.is_empty());
        assert!(
            protocol
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"\"(),/:;<=>?@[\\]{}".contains(&b))
        );
        assert!(!config.subprotocols[..index].contains(protocol));
    }
});
