//! The option table: each option once, with its flag, kind, default, help and what it
//! sets. It drives the command line ([`super::argv`]), the `WSBEAT_*` fallback and
//! `--help` ([`USAGE`]); [`super::parse`] applies the entries in table order, so the
//! first error reported does not depend on the order of the arguments.

use super::duration::{parse_auto, parse_duration};
use super::values::{number, path, socket_mode, subprotocols};
use super::{Config, HeartbeatMode, MAX_MESSAGE_SIZE_LIMIT, Parsed, quote};
use crate::config::headers::parse_header;

/// The `--help` section an option is listed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Heartbeat,
    Connection,
    Tls,
    Data,
    Info,
}

/// An option, named in code: a misspelt option is a compile error, not a silent miss.
/// Each has one entry in [`OPTIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Opt {
    PingInterval,
    PongTimeout,
    Heartbeat,
    PingText,
    PongText,
    StrictPong,
    ConnectTimeout,
    BackoffInitial,
    BackoffMax,
    MaxRetries,
    Header,
    HeaderFile,
    Subprotocol,
    Proxy,
    CaFile,
    ClientCert,
    ClientKey,
    Insecure,
    MaxMessageSize,
    QueueSize,
    QueueBytes,
    StatusFile,
    MetricsFile,
    NoLinkWatch,
    Socket,
    SocketMode,
    SocketMaxClients,
    StateDir,
    Once,
    Help,
    Version,
}

impl Opt {
    /// The option's table entry.
    pub(super) fn spec(self) -> &'static Spec {
        OPTIONS
            .iter()
            .find(|spec| spec.opt == self)
            .expect("every option has an entry in OPTIONS (tested)")
    }

    /// `--name`.
    pub(super) fn flag(self) -> String {
        format!("--{}", self.spec().name)
    }

    /// The option called `--name`.
    pub(super) fn named(name: &str) -> Option<Opt> {
        OPTIONS
            .iter()
            .find(|spec| spec.name == name)
            .map(|spec| spec.opt)
    }

    /// The option called `-c`.
    pub(super) fn short(c: char) -> Option<Opt> {
        OPTIONS
            .iter()
            .find(|spec| spec.short == Some(c))
            .map(|spec| spec.opt)
    }
}

/// Sets an option's part of a [`Config`] from one value; the error is the message for a
/// [`crate::error::UsageError`] naming the flag or variable the value came from.
pub(super) type Set = fn(&mut Config, &str) -> Result<(), String>;

/// What an option takes, and what it does with it.
pub(super) enum Takes {
    /// `--flag`, no value; `WSBEAT_NAME` takes 1, true, yes or 0, false, no.
    Switch(fn(&mut Config)),
    /// `--flag VALUE` or `--flag=VALUE` (the value is named in `--help`); the last one
    /// given wins, else `WSBEAT_NAME`.
    Value(&'static str, Set),
    /// Like [`Takes::Value`] but repeatable: every value given, else `WSBEAT_NAME` as one.
    Values(&'static str, Set),
    /// A value that [`super::parse`] reads itself once the URL is known (`--proxy`).
    Later(&'static str),
    /// Stops parsing at once and says what to print instead of running.
    Stop(Parsed),
}

/// One option.
pub(super) struct Spec {
    /// How code names it.
    pub(super) opt: Opt,
    /// `--name` without the dashes; the variable is `WSBEAT_NAME` ([`Spec::env`]).
    pub(super) name: &'static str,
    /// `-c`, for the two that have one.
    pub(super) short: Option<char>,
    /// Switch, value, repeatable value...
    pub(super) takes: Takes,
    /// The value in effect when the option is not given, in the option's own syntax
    /// (giving it changes nothing: tested). Shown in `--help` where the text says `{default}`.
    pub(super) default: Option<&'static str>,
    /// Where `--help` lists it.
    pub(super) section: Section,
    /// Its `--help` lines, wrapped by hand to 80 columns.
    pub(super) help: &'static [&'static str],
}

impl Spec {
    /// The environment variable: `WSBEAT_` and the name in upper case, `-` as `_`
    /// (`ping-interval` → `WSBEAT_PING_INTERVAL`).
    pub(super) fn env(&self) -> String {
        env_name(self.name)
    }
}

/// `WSBEAT_` + `name` in upper case with `-` as `_`.
pub(super) fn env_name(name: &str) -> String {
    format!("WSBEAT_{}", name.to_ascii_uppercase().replace('-', "_"))
}

/// Every option, in the order [`super::parse`] checks them; `--help` lists them by
/// section in this order too.
pub(super) const OPTIONS: &[Spec] = &[
    Spec {
        opt: Opt::PingInterval,
        name: "ping-interval",
        short: None,
        takes: Takes::Value("DURATION", |config, value| {
            if value == "auto" || value.starts_with("auto:") {
                let (min, max) = parse_auto(value)?;
                config.auto_interval = Some((min, max));
                config.ping_interval = min;
            } else {
                config.ping_interval = parse_duration(value)?;
            }
            Ok(())
        }),
        default: Some("20s"),
        section: Section::Heartbeat,
        help: &[
            "time between heartbeats; 0 turns it off [{default}];",
            "auto[:MIN..MAX] learns the longest idle gap the",
            "path tolerates and stays below it [15s..5m]",
        ],
    },
    Spec {
        opt: Opt::PongTimeout,
        name: "pong-timeout",
        short: None,
        takes: Takes::Value("DURATION", |config, value| {
            config.pong_timeout = parse_duration(value)?;
            Ok(())
        }),
        default: Some("10s"),
        section: Section::Heartbeat,
        help: &[
            "a heartbeat unanswered this long marks the",
            "connection dead [{default}]",
        ],
    },
    Spec {
        opt: Opt::Heartbeat,
        name: "heartbeat",
        short: None,
        takes: Takes::Value("control|text", |config, value| {
            config.heartbeat = match value {
                "control" => HeartbeatMode::Control,
                "text" => HeartbeatMode::Text,
                _ => {
                    return Err(format!(
                        "invalid value {} (use control or text)",
                        quote(value)
                    ));
                }
            };
            Ok(())
        }),
        default: Some("control"),
        section: Section::Heartbeat,
        help: &["Ping/Pong frames, or text messages [{default}]"],
    },
    Spec {
        opt: Opt::PingText,
        name: "ping-text",
        short: None,
        takes: Takes::Value("TEXT", |config, value| {
            config.ping_text = value.to_owned();
            Ok(())
        }),
        default: Some("ping"),
        section: Section::Heartbeat,
        help: &["heartbeat message in text mode [{default}]"],
    },
    Spec {
        opt: Opt::PongText,
        name: "pong-text",
        short: None,
        takes: Takes::Value("TEXT", |config, value| {
            config.pong_text = value.to_owned();
            Ok(())
        }),
        default: Some("pong"),
        section: Section::Heartbeat,
        help: &["expected reply in text mode, not printed [{default}]"],
    },
    Spec {
        opt: Opt::StrictPong,
        name: "strict-pong",
        short: None,
        takes: Takes::Switch(|config| config.strict_pong = true),
        default: None,
        section: Section::Heartbeat,
        help: &[
            "only a matching pong proves liveness (by",
            "default any frame from the server does)",
        ],
    },
    Spec {
        opt: Opt::ConnectTimeout,
        name: "connect-timeout",
        short: None,
        takes: Takes::Value("DURATION", |config, value| {
            config.connect_timeout = parse_duration(value)?;
            Ok(())
        }),
        default: Some("10s"),
        section: Section::Connection,
        help: &["bound on DNS + TCP + TLS + upgrade [{default}]"],
    },
    Spec {
        opt: Opt::BackoffInitial,
        name: "backoff-initial",
        short: None,
        takes: Takes::Value("DURATION", |config, value| {
            config.backoff_initial = parse_duration(value)?;
            Ok(())
        }),
        default: Some("1s"),
        section: Section::Connection,
        help: &["first reconnect delay cap [{default}]"],
    },
    Spec {
        opt: Opt::BackoffMax,
        name: "backoff-max",
        short: None,
        takes: Takes::Value("DURATION", |config, value| {
            config.backoff_max = parse_duration(value)?;
            Ok(())
        }),
        default: Some("60s"),
        section: Section::Connection,
        help: &["largest reconnect delay [{default}]"],
    },
    Spec {
        opt: Opt::MaxRetries,
        name: "max-retries",
        short: None,
        takes: Takes::Value("N", |config, value| {
            config.max_retries = number(value, 0, u32::MAX, "a whole number from 0 to 4294967295")?;
            Ok(())
        }),
        default: Some("0"),
        section: Section::Connection,
        help: &[
            "exit 1 after N failed attempts in a row;",
            "0 = never give up [{default}]",
        ],
    },
    Spec {
        opt: Opt::Header,
        name: "header",
        short: None,
        takes: Takes::Values("'Name: value'", |config, value| {
            config.headers.push(parse_header(value)?);
            Ok(())
        }),
        default: None,
        section: Section::Connection,
        help: &[
            "extra handshake header, repeatable",
            "(WSBEAT_HEADER holds one header and is used",
            "only when no --header is given)",
        ],
    },
    Spec {
        opt: Opt::HeaderFile,
        name: "header-file",
        short: None,
        takes: Takes::Value("PATH", |config, value| {
            config.header_file = path(value)?;
            Ok(())
        }),
        default: None,
        section: Section::Connection,
        help: &[
            "one 'Name: value' per line, '#' comments;",
            "re-read on every reconnect and on SIGHUP",
        ],
    },
    Spec {
        opt: Opt::Subprotocol,
        name: "subprotocol",
        short: None,
        takes: Takes::Values("NAME", subprotocols),
        default: None,
        section: Section::Connection,
        help: &[
            "Sec-WebSocket-Protocol to request, repeatable",
            "(WSBEAT_SUBPROTOCOL: comma-separated list)",
        ],
    },
    Spec {
        opt: Opt::Proxy,
        name: "proxy",
        short: None,
        takes: Takes::Later("URL|none"),
        default: None,
        section: Section::Connection,
        help: &[
            "HTTP CONNECT proxy,",
            "http://[user:password@]host[:port]; none",
            "ignores the variables [https_proxy (wss://)",
            "or http_proxy (ws://), then all_proxy;",
            "hosts in no_proxy go direct]",
        ],
    },
    Spec {
        opt: Opt::CaFile,
        name: "ca-file",
        short: None,
        takes: Takes::Value("PATH", |config, value| {
            config.ca_file = path(value)?;
            Ok(())
        }),
        default: None,
        section: Section::Tls,
        help: &["extra PEM root certificate(s) [system roots]"],
    },
    Spec {
        opt: Opt::ClientCert,
        name: "client-cert",
        short: None,
        takes: Takes::Value("PATH", |config, value| {
            config.client_cert = path(value)?;
            Ok(())
        }),
        default: None,
        section: Section::Tls,
        help: &["PEM client certificate for mutual TLS"],
    },
    Spec {
        opt: Opt::ClientKey,
        name: "client-key",
        short: None,
        takes: Takes::Value("PATH", |config, value| {
            config.client_key = path(value)?;
            Ok(())
        }),
        default: None,
        section: Section::Tls,
        help: &["PEM PKCS#8 key for --client-cert"],
    },
    Spec {
        opt: Opt::Insecure,
        name: "insecure",
        short: None,
        takes: Takes::Switch(|config| config.insecure = true),
        default: None,
        section: Section::Tls,
        help: &[
            "skip server certificate verification (warns at",
            "every connect)",
        ],
    },
    Spec {
        opt: Opt::MaxMessageSize,
        name: "max-message-size",
        short: None,
        takes: Takes::Value("BYTES", |config, value| {
            config.max_message_size = number(
                value,
                1,
                MAX_MESSAGE_SIZE_LIMIT,
                "a whole number of bytes from 1 to 1073741824",
            )?;
            Ok(())
        }),
        default: Some("1048576"),
        section: Section::Data,
        help: &[
            "larger incoming messages close the connection",
            "with 1009 [{default}]",
        ],
    },
    Spec {
        opt: Opt::QueueSize,
        name: "queue-size",
        short: None,
        takes: Takes::Value("N", |config, value| {
            config.queue_size = number(value, 0, usize::MAX, "a whole number, 0 or more")?;
            Ok(())
        }),
        default: Some("1000"),
        section: Section::Data,
        help: &[
            "stdin lines held while disconnected; the oldest",
            "is dropped on overflow [{default}]",
        ],
    },
    Spec {
        opt: Opt::QueueBytes,
        name: "queue-bytes",
        short: None,
        takes: Takes::Value("BYTES", |config, value| {
            config.queue_bytes =
                number(value, 0, usize::MAX, "a whole number of bytes, 0 or more")?;
            Ok(())
        }),
        default: Some("1048576"),
        section: Section::Data,
        help: &[
            "bound on the bytes those lines hold, and on",
            "received messages waiting for stdout [{default}]",
        ],
    },
    Spec {
        opt: Opt::StatusFile,
        name: "status-file",
        short: None,
        takes: Takes::Value("PATH", |config, value| {
            config.status_file = path(value)?;
            Ok(())
        }),
        default: None,
        section: Section::Data,
        help: &["key=value state file, replaced atomically"],
    },
    Spec {
        opt: Opt::MetricsFile,
        name: "metrics-file",
        short: None,
        takes: Takes::Value("PATH", |config, value| {
            config.metrics_file = path(value)?;
            Ok(())
        }),
        default: None,
        section: Section::Data,
        help: &["Prometheus textfile metrics, replaced with it"],
    },
    Spec {
        opt: Opt::NoLinkWatch,
        name: "no-link-watch",
        short: None,
        takes: Takes::Switch(|config| config.link_watch = false),
        default: None,
        section: Section::Data,
        help: &["do not follow the kernel's address and route", "changes"],
    },
    Spec {
        opt: Opt::Socket,
        name: "socket",
        short: None,
        takes: Takes::Value("PATH", |config, value| {
            config.socket = path(value)?;
            Ok(())
        }),
        default: None,
        section: Section::Data,
        help: &[
            "local Unix socket: each line a client writes",
            "is sent, each message received goes to every",
            "client (instead of stdout)",
        ],
    },
    Spec {
        opt: Opt::SocketMode,
        name: "socket-mode",
        short: None,
        takes: Takes::Value("MODE", |config, value| {
            config.socket_mode = socket_mode(value)?;
            Ok(())
        }),
        default: Some("0660"),
        section: Section::Data,
        help: &["octal mode of the socket file [{default}]"],
    },
    Spec {
        opt: Opt::SocketMaxClients,
        name: "socket-max-clients",
        short: None,
        takes: Takes::Value("N", |config, value| {
            config.socket_max_clients =
                number(value, 1, 1 << 16, "a whole number from 1 to 65536")?;
            Ok(())
        }),
        default: Some("32"),
        section: Section::Data,
        help: &["local clients connected at once [{default}]"],
    },
    Spec {
        opt: Opt::StateDir,
        name: "state-dir",
        short: None,
        takes: Takes::Value("DIR", |config, value| {
            config.state_dir = path(value)?;
            Ok(())
        }),
        default: None,
        section: Section::Data,
        help: &[
            "keeps what --ping-interval auto learned",
            "across restarts, per network path",
        ],
    },
    Spec {
        opt: Opt::Once,
        name: "once",
        short: None,
        takes: Takes::Switch(|config| config.once = true),
        default: None,
        section: Section::Heartbeat,
        help: &[
            "probe: send one heartbeat at once, print",
            "rtt_ms=<float>, close and exit",
        ],
    },
    Spec {
        opt: Opt::Help,
        name: "help",
        short: Some('h'),
        takes: Takes::Stop(Parsed::Help),
        default: None,
        section: Section::Info,
        help: &["print this help and exit"],
    },
    Spec {
        opt: Opt::Version,
        name: "version",
        short: Some('V'),
        takes: Takes::Stop(Parsed::Version),
        default: None,
        section: Section::Info,
        help: &["print the version and exit"],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_has_one_entry_and_one_name() {
        for (index, spec) in OPTIONS.iter().enumerate() {
            assert_eq!(
                spec.opt.spec().name,
                spec.name,
                "{:?} listed twice",
                spec.opt
            );
            assert!(
                OPTIONS[..index].iter().all(|other| other.name != spec.name
                    && (spec.short.is_none() || other.short != spec.short)),
                "--{} listed twice",
                spec.name
            );
            assert_eq!(Opt::named(spec.name), Some(spec.opt));
            assert!(
                spec.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{}",
                spec.name
            );
        }
        assert_eq!(Opt::PingInterval.spec().env(), "WSBEAT_PING_INTERVAL");
        assert_eq!(Opt::NoLinkWatch.flag(), "--no-link-watch");
        assert_eq!(Opt::short('h'), Some(Opt::Help));
        assert_eq!(Opt::short('x'), None);
    }
}
