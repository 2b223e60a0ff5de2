//! Command line and `WSBEAT_*` environment → [`Config`]. Pure: the caller passes
//! the arguments and an environment lookup, so tests never touch the process env.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use tungstenite::http::Uri;

use crate::error::UsageError;
use crate::headers::{TOKEN_PUNCTUATION, is_token_char};
use crate::proxy::Proxy;

/// How a heartbeat is sent and recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatMode {
    /// RFC 6455 Ping frames answered by Pong frames.
    Control,
    /// An application text message (`--ping-text`) answered by `--pong-text`.
    Text,
}

/// Where to connect: the URL as given plus the parts the transport needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as the user gave it (scheme lowercased, `/` added before a bare
    /// `?query`); used for the handshake request and in logs.
    pub url: String,
    /// `wss://`.
    pub tls: bool,
    /// Host name or IP literal, without brackets.
    pub host: String,
    /// Explicit port, or 80/443 from the scheme.
    pub port: u16,
}

/// Everything the client needs, validated. Defaults are the contract's.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Server URL.
    pub target: Target,
    /// Time between heartbeats; zero turns the heartbeat off.
    pub ping_interval: Duration,
    /// `--ping-interval auto[:MIN..MAX]`: learn the interval between these bounds
    /// (`ping_interval` is then `MIN`, the first interval).
    pub auto_interval: Option<(Duration, Duration)>,
    /// A heartbeat unanswered this long marks the connection dead.
    pub pong_timeout: Duration,
    /// Control frames or text messages.
    pub heartbeat: HeartbeatMode,
    /// Heartbeat message in text mode.
    pub ping_text: String,
    /// Expected reply in text mode; never printed.
    pub pong_text: String,
    /// Only a matching pong proves liveness.
    pub strict_pong: bool,
    /// Bound on DNS + TCP + TLS + upgrade together.
    pub connect_timeout: Duration,
    /// First reconnect delay cap.
    pub backoff_initial: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// Give up after this many failed attempts in a row; 0 = never.
    pub max_retries: u32,
    /// Extra handshake headers from `--header` / `WSBEAT_HEADER`.
    pub headers: Vec<(String, String)>,
    /// Headers re-read at every connect and on SIGHUP.
    pub header_file: Option<PathBuf>,
    /// `Sec-WebSocket-Protocol` values to request.
    pub subprotocols: Vec<String>,
    /// Extra PEM roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// PEM PKCS#8 key for `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Skip server certificate verification.
    pub insecure: bool,
    /// Larger incoming messages close the connection with 1009.
    pub max_message_size: usize,
    /// Stdin messages held while disconnected.
    pub queue_size: usize,
    /// Bytes those messages may hold; also the bound on received messages waiting for stdout.
    pub queue_bytes: usize,
    /// State file, replaced atomically.
    pub status_file: Option<PathBuf>,
    /// Prometheus textfile metrics, replaced atomically with the status file.
    pub metrics_file: Option<PathBuf>,
    /// Follow the kernel's address and route changes (rtnetlink).
    pub link_watch: bool,
    /// Probe mode: one heartbeat, print its RTT, exit.
    pub once: bool,
    /// HTTP CONNECT proxy for this target (`--proxy` or the proxy variables), if any.
    pub proxy: Option<Proxy>,
}

impl Config {
    /// A configuration with the contract's defaults for `url` (already validated).
    pub fn new(target: Target) -> Config {
        Config {
            target,
            ping_interval: Duration::from_secs(20),
            auto_interval: None,
            pong_timeout: Duration::from_secs(10),
            heartbeat: HeartbeatMode::Control,
            ping_text: "ping".into(),
            pong_text: "pong".into(),
            strict_pong: false,
            connect_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            max_retries: 0,
            headers: Vec::new(),
            header_file: None,
            subprotocols: Vec::new(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            insecure: false,
            max_message_size: 1 << 20,
            queue_size: 1000,
            queue_bytes: 1 << 20,
            status_file: None,
            metrics_file: None,
            link_watch: true,
            once: false,
            proxy: None,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// Run the client.
    Run(Box<Config>),
    /// Print [`USAGE`] and exit 0.
    Help,
    /// Print the version and exit 0.
    Version,
}

/// The help text printed by `-h` / `--help`.
pub const USAGE: &str = "\
wsbeat - keep one WebSocket connection alive with a ping/pong heartbeat

Usage: wsbeat [OPTIONS] [URL]

URL is ws://host[:port]/path or wss://host[:port]/path (required, here or as
WSBEAT_URL). Every option can also be set as WSBEAT_<NAME> (upper case, '-'
becomes '_', e.g. WSBEAT_PING_INTERVAL=5s); the command line wins. Switches
set in the environment take 1, true, yes or 0, false, no; other empty
variables count as unset. DURATION is a number with an optional unit ms, s,
m or h (250ms, 1.5s, 20s, 5m); a bare number means seconds.

Heartbeat:
      --ping-interval DURATION  time between heartbeats; 0 turns it off [20s];
                                auto[:MIN..MAX] learns the longest idle gap the
                                path tolerates and stays below it [15s..5m]
      --pong-timeout DURATION   a heartbeat unanswered this long marks the
                                connection dead [10s]
      --heartbeat control|text  Ping/Pong frames, or text messages [control]
      --ping-text TEXT          heartbeat message in text mode [ping]
      --pong-text TEXT          expected reply in text mode, not printed [pong]
      --strict-pong             only a matching pong proves liveness (by
                                default any frame from the server does)
      --once                    probe: send one heartbeat at once, print
                                rtt_ms=<float>, close and exit

Connection:
      --connect-timeout DURATION  bound on DNS + TCP + TLS + upgrade [10s]
      --backoff-initial DURATION  first reconnect delay cap [1s]
      --backoff-max DURATION      largest reconnect delay [60s]
      --max-retries N             exit 1 after N failed attempts in a row;
                                  0 = never give up [0]
      --header 'Name: value'      extra handshake header, repeatable
                                  (WSBEAT_HEADER holds one header and is used
                                  only when no --header is given)
      --header-file PATH          one 'Name: value' per line, '#' comments;
                                  re-read on every reconnect and on SIGHUP
      --subprotocol NAME          Sec-WebSocket-Protocol to request, repeatable
                                  (WSBEAT_SUBPROTOCOL: comma-separated list)
      --proxy URL|none            HTTP CONNECT proxy,
                                  http://[user:password@]host[:port]; none
                                  ignores the variables [https_proxy (wss://)
                                  or http_proxy (ws://), then all_proxy;
                                  hosts in no_proxy go direct]

TLS:
      --ca-file PATH        extra PEM root certificate(s) [system roots]
      --client-cert PATH    PEM client certificate for mutual TLS
      --client-key PATH     PEM PKCS#8 key for --client-cert
      --insecure            skip server certificate verification (warns at
                            every connect)

Data and state:
      --max-message-size BYTES  larger incoming messages close the connection
                                with 1009 [1048576]
      --queue-size N            stdin lines held while disconnected; the oldest
                                is dropped on overflow [1000]
      --queue-bytes BYTES       bound on the bytes those lines hold, and on
                                received messages waiting for stdout [1048576]
      --status-file PATH        key=value state file, replaced atomically
      --metrics-file PATH       Prometheus textfile metrics, replaced with it
      --no-link-watch           do not follow the kernel's address and route
                                changes

  -h, --help      print this help and exit
  -V, --version   print the version and exit

Each stdin line is sent as one text message; each text message received is
printed on stdout. Logs go to stderr, level from RUST_LOG (default info).
SIGTERM/SIGINT close with 1001 and exit 0; SIGHUP re-reads the files and
reconnects.

Exit codes: 0 stopped by a signal or --once succeeded; 1 gave up
(--max-retries) or --once failed; 64 usage error; 78 unreadable or invalid
file (CA, certificate, key or header file).
";

/// `wsbeat <version>`, printed by `-V` / `--version`.
pub fn version() -> String {
    format!("wsbeat {}", env!("CARGO_PKG_VERSION"))
}

/// Longest DURATION accepted (100 days), so `Instant + duration` cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 24 * 60 * 60);

/// Largest `--max-message-size` accepted (1 GiB).
pub const MAX_MESSAGE_SIZE_LIMIT: usize = 1 << 30;

/// Whether an option takes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `--flag VALUE` or `--flag=VALUE`.
    Value,
    /// `--flag`, no value.
    Switch,
}

/// Every long option except `--help` and `--version`, without the leading `--`.
const OPTIONS: &[(&str, Kind)] = &[
    ("ping-interval", Kind::Value),
    ("pong-timeout", Kind::Value),
    ("heartbeat", Kind::Value),
    ("ping-text", Kind::Value),
    ("pong-text", Kind::Value),
    ("strict-pong", Kind::Switch),
    ("connect-timeout", Kind::Value),
    ("backoff-initial", Kind::Value),
    ("backoff-max", Kind::Value),
    ("max-retries", Kind::Value),
    ("header", Kind::Value),
    ("header-file", Kind::Value),
    ("subprotocol", Kind::Value),
    ("proxy", Kind::Value),
    ("ca-file", Kind::Value),
    ("client-cert", Kind::Value),
    ("client-key", Kind::Value),
    ("insecure", Kind::Switch),
    ("max-message-size", Kind::Value),
    ("queue-size", Kind::Value),
    ("queue-bytes", Kind::Value),
    ("status-file", Kind::Value),
    ("metrics-file", Kind::Value),
    ("no-link-watch", Kind::Switch),
    ("once", Kind::Switch),
];

/// The environment variable for option `name` (`ping-interval` → `WSBEAT_PING_INTERVAL`).
fn env_name(name: &str) -> String {
    format!("WSBEAT_{}", name.to_ascii_uppercase().replace('-', "_"))
}

/// `'value'` for a message: escaped so the message stays one line, and shortened.
fn quote(value: &str) -> String {
    const MAX_CHARS: usize = 64;
    let mut out = String::from("'");
    for (index, c) in value.chars().enumerate() {
        if index == MAX_CHARS {
            out.push_str("...");
            break;
        }
        if c == '\'' || c == '\\' || c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// `url` with the userinfo of its authority (`user:password@`, or a token before `@`)
/// replaced by `***`, found by text alone so that URLs that fail to parse are covered too.
fn without_userinfo(url: &str) -> std::borrow::Cow<'_, str> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    match url[start..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]).into(),
        None => url.into(),
    }
}

/// A flag name as the user wrote it, made safe for a one-line message.
fn shown_flag(flag: &str) -> String {
    let quoted = quote(flag);
    let inner = &quoted[1..quoted.len() - 1];
    if inner == flag {
        flag.to_owned()
    } else {
        quoted
    }
}

/// A plain unsigned decimal number (no sign, no blanks), or `None`.
fn parse_number<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Whether `s` is an HTTP token (RFC 9110 `token`), as subprotocol names must be.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_token_char)
}

/// `auto` or `auto:MIN..MAX` (DURATIONs, `0 < MIN <= MAX`): the bounds of the adaptive heartbeat.
pub fn parse_auto(s: &str) -> Result<(Duration, Duration), String> {
    let hint = "use auto or auto:MIN..MAX, e.g. auto:15s..5m";
    let Some(rest) = s.strip_prefix("auto") else {
        return Err(format!("invalid value {} ({hint})", quote(s)));
    };
    if rest.is_empty() {
        return Ok((crate::adaptive::DEFAULT_MIN, crate::adaptive::DEFAULT_MAX));
    }
    let bounds = rest
        .strip_prefix(':')
        .and_then(|bounds| bounds.split_once(".."))
        .ok_or_else(|| format!("invalid value {} ({hint})", quote(s)))?;
    let min = parse_duration(bounds.0)?;
    let max = parse_duration(bounds.1)?;
    if min.is_zero() || min > max {
        return Err(format!(
            "invalid bounds {} (MIN must be above 0 and at most MAX)",
            quote(s)
        ));
    }
    Ok((min, max))
}

/// Parses a DURATION: a non-negative decimal number with an optional unit
/// `ms`, `s`, `m` or `h`; a bare number means seconds (`250ms`, `1.5s`, `20`, `5m`).
///
/// Surrounding blanks are ignored. Exact decimal arithmetic (no floats), rounded
/// down to whole nanoseconds. NaN, infinity, exponents, signs, empty input and
/// anything above [`MAX_DURATION`] are rejected. The error is a message
/// for a [`UsageError`], e.g. `invalid duration '5x' (use e.g. 250ms, 1.5s, 20s, 5m)`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "invalid duration {} (use e.g. 250ms, 1.5s, 20s, 5m)",
            quote(s)
        )
    };
    let too_large = || format!("invalid duration {} (at most 100 days)", quote(s));
    let trimmed = s.trim_ascii();
    if trimmed.starts_with('-') {
        return Err(format!(
            "invalid duration {} (must not be negative)",
            quote(s)
        ));
    }
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let unit_nanos: u128 = match unit {
        "" | "s" => 1_000_000_000,
        "ms" => 1_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(invalid()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(invalid());
    }
    // Both parts are ASCII digits only from here on.
    let whole = whole.trim_start_matches('0');
    if whole.len() > 20 {
        return Err(too_large());
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| invalid())?
    };
    // Digits past the 18th are below a nanosecond even for hours.
    let fraction = fraction.get(..fraction.len().min(18)).unwrap_or("");
    let fraction_nanos = if fraction.is_empty() {
        0
    } else {
        let digits: u128 = fraction.parse().map_err(|_| invalid())?;
        let scale = 10u128.pow(u32::try_from(fraction.len()).unwrap_or(18));
        digits * unit_nanos / scale
    };
    let nanos = whole
        .checked_mul(unit_nanos)
        .and_then(|n| n.checked_add(fraction_nanos))
        .ok_or_else(too_large)?;
    if nanos > MAX_DURATION.as_nanos() {
        return Err(too_large());
    }
    let nanos = u64::try_from(nanos).map_err(|_| too_large())?;
    Ok(Duration::from_nanos(nanos))
}

/// Why a TLS option is refused by a build without the `tls` feature.
#[cfg(not(feature = "tls"))]
const WITHOUT_TLS: &str =
    "this wsbeat was built without TLS (cargo feature \"tls\"); only ws:// works";

/// Parses `url` into a [`Target`]; `flag` names where it came from in errors
/// (`url` for the argument, `WSBEAT_URL` for the environment).
///
/// The scheme must be `ws` or `wss` (any case; it is lowercased in
/// [`Target::url`]), a host must be present, and the port, when given, must be
/// 1 to 65535. Credentials (`user:pass@`) and `#fragment`s are rejected: the
/// first would leak into logs and never be sent, the second is forbidden by RFC 6455.
pub fn parse_target(url: &str, flag: &str) -> Result<Target, UsageError> {
    let error = |message: String| UsageError::new(flag, message);
    // Every message shows the URL without its userinfo: it is a password or a token.
    let shown = quote(&without_userinfo(url));
    if url.contains('#') {
        return Err(error(format!(
            "{shown} has a #fragment, which a websocket URL cannot have"
        )));
    }
    let uri: Uri = url.parse().map_err(|err| {
        error(format!(
            "invalid URL {shown} ({err}; use ws://host[:port]/path or wss://host[:port]/path)"
        ))
    })?;
    let scheme = uri.scheme_str().map(str::to_ascii_lowercase);
    let tls = match scheme.as_deref() {
        Some("ws") => false,
        #[cfg(not(feature = "tls"))]
        Some("wss") => return Err(error(WITHOUT_TLS.into())),
        #[cfg(feature = "tls")]
        Some("wss") => true,
        Some(other) => {
            return Err(error(format!(
                "unsupported scheme {} in {shown} (use ws:// or wss://)",
                quote(other)
            )));
        }
        None => {
            return Err(error(format!(
                "{shown} has no scheme (use ws://host[:port]/path or wss://host[:port]/path)"
            )));
        }
    };
    let Some(authority) = uri.authority() else {
        return Err(error(format!("missing host in {shown}")));
    };
    if authority.as_str().contains('@') {
        return Err(error(format!(
            "credentials in {shown} are not supported (send them with --header or --header-file)"
        )));
    }
    let raw_host = uri.host().unwrap_or("");
    let after_host = authority.as_str().strip_prefix(raw_host).unwrap_or("");
    let host = raw_host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(raw_host);
    if host.is_empty() {
        return Err(error(format!("missing host in {shown}")));
    }
    let default_port = if tls { 443 } else { 80 };
    let port = match after_host.strip_prefix(':') {
        None | Some("") => default_port,
        Some(port) => match parse_number::<u16>(port) {
            Some(port) if port != 0 => port,
            _ => {
                return Err(error(format!(
                    "invalid port {} in {shown} (use 1 to 65535)",
                    quote(port)
                )));
            }
        },
    };
    // tungstenite needs the scheme in lower case and a path before a query.
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    let url = if uri.scheme_str() == scheme.as_deref() && !path_and_query.starts_with('?') {
        url.to_owned()
    } else {
        let slash = if path_and_query.starts_with('?') {
            "/"
        } else {
            ""
        };
        format!(
            "{}://{}{slash}{path_and_query}",
            scheme.as_deref().unwrap_or("ws"),
            authority.as_str()
        )
    };
    Ok(Target {
        url,
        tls,
        host: host.to_owned(),
        port,
    })
}

/// The command line, sorted but not yet interpreted.
#[derive(Debug, Default)]
struct Args {
    /// Values of [`Kind::Value`] options, in command-line order.
    values: Vec<(&'static str, String)>,
    /// [`Kind::Switch`] options given.
    switches: Vec<&'static str>,
    /// The positional URL.
    url: Option<String>,
}

/// Command line first, then the environment, for each option.
struct Sources<'a> {
    args: Args,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Sources<'_> {
    /// `(WSBEAT_NAME, value)` when that variable is set and not empty.
    fn env_var(&self, name: &str) -> Option<(String, String)> {
        let var = env_name(name);
        match (self.env)(&var) {
            Some(value) if !value.is_empty() => Some((var, value)),
            _ => None,
        }
    }

    /// `(where, value)` of the last `--name` given, else of `WSBEAT_NAME`.
    fn value(&self, name: &'static str) -> Option<(String, String)> {
        self.values(name).pop()
    }

    /// Every `--name` given, or else `WSBEAT_NAME` as the one value.
    fn values(&self, name: &'static str) -> Vec<(String, String)> {
        let given: Vec<_> = self
            .args
            .values
            .iter()
            .filter(|(option, _)| *option == name)
            .map(|(option, value)| (format!("--{option}"), value.clone()))
            .collect();
        if given.is_empty() {
            self.env_var(name).into_iter().collect()
        } else {
            given
        }
    }

    /// A switch: given on the command line, or `WSBEAT_NAME` set to a boolean.
    /// Unlike other variables, an empty one is an error: the contract allows only the
    /// six words, and `WSBEAT_INSECURE=` would otherwise silently mean "no".
    fn switch(&self, name: &'static str) -> Result<bool, UsageError> {
        if self.args.switches.contains(&name) {
            return Ok(true);
        }
        let var = env_name(name);
        match (self.env)(&var) {
            None => Ok(false),
            Some(value) => match value.as_str() {
                "1" | "true" | "yes" => Ok(true),
                "0" | "false" | "no" => Ok(false),
                _ => Err(UsageError::new(
                    var,
                    format!(
                        "invalid value {} (use 1, true, yes or 0, false, no)",
                        quote(&value)
                    ),
                )),
            },
        }
    }

    /// A DURATION option, with where it came from.
    fn duration(&self, name: &'static str) -> Result<Option<(String, Duration)>, UsageError> {
        match self.value(name) {
            None => Ok(None),
            Some((flag, value)) => match parse_duration(&value) {
                Ok(duration) => Ok(Some((flag, duration))),
                Err(message) => Err(UsageError::new(flag, message)),
            },
        }
    }

    /// A path option; an empty path is an error (an empty variable counts as unset).
    fn path(&self, name: &'static str) -> Result<Option<(String, PathBuf)>, UsageError> {
        match self.value(name) {
            None => Ok(None),
            Some((flag, value)) if value.is_empty() => Err(UsageError::new(flag, "empty path")),
            Some((flag, value)) => Ok(Some((flag, PathBuf::from(value)))),
        }
    }

    /// An unsigned whole-number option within `min..=max`; `hint` says what is allowed.
    fn number<T>(
        &self,
        name: &'static str,
        min: T,
        max: T,
        hint: &str,
    ) -> Result<Option<T>, UsageError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display,
    {
        let Some((flag, value)) = self.value(name) else {
            return Ok(None);
        };
        match parse_number::<T>(&value) {
            Some(n) if n >= min && n <= max => Ok(Some(n)),
            _ => Err(UsageError::new(
                flag,
                format!("invalid number {} (use {hint})", quote(&value)),
            )),
        }
    }
}

/// `where (value)` or `flag (default value)` for messages comparing two options.
fn describe(source: &Option<(String, Duration)>, flag: &str, default: Duration) -> String {
    match source {
        Some((from, value)) => format!("{from} ({value:?})"),
        None => format!("{flag} (default {default:?})"),
    }
}

/// Sorts the command line into options and the URL; stops early for help and version.
fn scan<I>(args: I) -> Result<Result<Args, Parsed>, UsageError>
where
    I: IntoIterator<Item = OsString>,
{
    let mut out = Args::default();
    let mut args = args.into_iter();
    let mut options_ended = false;
    while let Some(arg) = args.next() {
        let arg = match arg.into_string() {
            Ok(arg) => arg,
            Err(raw) => return Err(not_utf8(&raw, options_ended)),
        };
        if options_ended || arg == "-" || !arg.starts_with('-') {
            if let Some(first) = &out.url {
                return Err(UsageError::new(
                    "url",
                    format!(
                        "unexpected second argument {} after {} (only one URL may be given)",
                        quote(&arg),
                        quote(first)
                    ),
                ));
            }
            out.url = Some(arg);
            continue;
        }
        if arg == "--" {
            options_ended = true;
            continue;
        }
        let Some(long) = arg.strip_prefix("--") else {
            return match arg.as_str() {
                "-h" => Ok(Err(Parsed::Help)),
                "-V" => Ok(Err(Parsed::Version)),
                _ => Err(UsageError::new(
                    shown_flag(&arg),
                    "unknown option (see --help)",
                )),
            };
        };
        let (name, inline) = match long.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (long, None),
        };
        let flag = format!("--{name}");
        let special = match name {
            "help" => Some(Parsed::Help),
            "version" => Some(Parsed::Version),
            _ => None,
        };
        if let Some(special) = special {
            return match inline {
                Some(_) => Err(UsageError::new(flag, "takes no value")),
                None => Ok(Err(special)),
            };
        }
        let Some(&(option, kind)) = OPTIONS.iter().find(|(option, _)| *option == name) else {
            return Err(UsageError::new(
                shown_flag(&flag),
                "unknown option (see --help)",
            ));
        };
        match kind {
            Kind::Switch => {
                if inline.is_some() {
                    return Err(UsageError::new(flag, "takes no value"));
                }
                out.switches.push(option);
            }
            Kind::Value => {
                let value = match inline {
                    Some(value) => value.to_owned(),
                    None => match args.next() {
                        None => return Err(UsageError::new(flag, "missing value")),
                        Some(value) => value
                            .into_string()
                            .map_err(|_| UsageError::new(flag, "value is not valid UTF-8"))?,
                    },
                };
                out.values.push((option, value));
            }
        }
    }
    Ok(Ok(out))
}

/// The usage error for an argument that is not UTF-8, naming the flag if it is one.
fn not_utf8(raw: &std::ffi::OsStr, options_ended: bool) -> UsageError {
    let lossy = raw.to_string_lossy();
    if options_ended || lossy == "-" || !lossy.starts_with('-') {
        return UsageError::new("url", "not valid UTF-8");
    }
    match lossy.split_once('=') {
        Some((flag, _)) if flag.starts_with("--") && !flag.contains('\u{fffd}') => {
            UsageError::new(shown_flag(flag), "value is not valid UTF-8")
        }
        _ => UsageError::new(shown_flag(&lossy), "not valid UTF-8"),
    }
}

/// Parses the command line (`args` without argv\[0\]) and the `WSBEAT_*`
/// environment into what to do.
///
/// `env` looks a variable up (`|name| std::env::var(name).ok()` in production,
/// a map in tests); empty variables other than switches count as unset. Files are not read here:
/// checking them is exit 78, done at start-up by their owners. Every error is a
/// one-line [`UsageError`] naming the flag or variable (exit 64).
pub fn parse<I>(args: I, env: &dyn Fn(&str) -> Option<String>) -> Result<Parsed, UsageError>
where
    I: IntoIterator<Item = OsString>,
{
    let args = match scan(args)? {
        Ok(args) => args,
        Err(special) => return Ok(special),
    };
    let sources = Sources { args, env };

    let (ping_interval, auto_interval) = match sources.value("ping-interval") {
        Some((flag, value)) if value == "auto" || value.starts_with("auto:") => {
            let bounds = parse_auto(&value).map_err(|message| UsageError::new(flag, message))?;
            (None, Some(bounds))
        }
        _ => (sources.duration("ping-interval")?, None),
    };
    let pong_timeout = sources.duration("pong-timeout")?;
    let heartbeat = match sources.value("heartbeat") {
        None => None,
        Some((_, value)) if value == "control" => Some(HeartbeatMode::Control),
        Some((_, value)) if value == "text" => Some(HeartbeatMode::Text),
        Some((flag, value)) => {
            return Err(UsageError::new(
                flag,
                format!("invalid value {} (use control or text)", quote(&value)),
            ));
        }
    };
    let ping_text = sources.value("ping-text");
    let pong_text = sources.value("pong-text");
    let strict_pong = sources.switch("strict-pong")?;
    let connect_timeout = sources.duration("connect-timeout")?;
    let backoff_initial = sources.duration("backoff-initial")?;
    let backoff_max = sources.duration("backoff-max")?;
    let max_retries = sources.number::<u32>(
        "max-retries",
        0,
        u32::MAX,
        "a whole number from 0 to 4294967295",
    )?;
    let mut headers = Vec::new();
    for (flag, value) in sources.values("header") {
        let header = crate::headers::parse_header(&value)
            .map_err(|message| UsageError::new(flag, message))?;
        headers.push(header);
    }
    let header_file = sources.path("header-file")?;
    let mut subprotocols: Vec<String> = Vec::new();
    for (flag, value) in sources.values("subprotocol") {
        let mut any = false;
        for name in value
            .split(',')
            .map(str::trim_ascii)
            .filter(|n| !n.is_empty())
        {
            any = true;
            if !is_token(name) {
                return Err(UsageError::new(
                    flag,
                    format!(
                        "invalid subprotocol {} (use letters, digits and {TOKEN_PUNCTUATION})",
                        quote(name)
                    ),
                ));
            }
            if subprotocols.iter().any(|known| known == name) {
                return Err(UsageError::new(
                    flag,
                    format!("subprotocol {} given twice", quote(name)),
                ));
            }
            subprotocols.push(name.to_owned());
        }
        if !any {
            return Err(UsageError::new(flag, "empty subprotocol name"));
        }
    }
    let ca_file = sources.path("ca-file")?;
    let client_cert = sources.path("client-cert")?;
    let client_key = sources.path("client-key")?;
    let insecure = sources.switch("insecure")?;
    let max_message_size = sources.number::<usize>(
        "max-message-size",
        1,
        MAX_MESSAGE_SIZE_LIMIT,
        "a whole number of bytes from 1 to 1073741824",
    )?;
    let queue_size =
        sources.number::<usize>("queue-size", 0, usize::MAX, "a whole number, 0 or more")?;
    let queue_bytes = sources.number::<usize>(
        "queue-bytes",
        0,
        usize::MAX,
        "a whole number of bytes, 0 or more",
    )?;
    let status_file = sources.path("status-file")?;
    let metrics_file = sources.path("metrics-file")?;
    let no_link_watch = sources.switch("no-link-watch")?;
    let once = sources.switch("once")?;

    let target = match &sources.args.url {
        Some(url) => parse_target(url, "url")?,
        None => match sources.env_var("url") {
            Some((var, url)) => parse_target(&url, &var)?,
            None => {
                return Err(UsageError::new(
                    "url",
                    "missing (give it as an argument or WSBEAT_URL)",
                ));
            }
        },
    };

    let proxy = crate::proxy::select(sources.value("proxy"), &target, sources.env)?;

    let mut config = Config::new(target);
    config.proxy = proxy;
    let defaults = config.clone();
    if let Some((_, value)) = &ping_interval {
        config.ping_interval = *value;
    }
    if let Some((min, max)) = auto_interval {
        config.auto_interval = Some((min, max));
        config.ping_interval = min;
    }
    if let Some((flag, value)) = &pong_timeout {
        config.pong_timeout = *value;
        if value.is_zero() && (!config.ping_interval.is_zero() || once) {
            return Err(UsageError::new(
                flag.as_str(),
                "must be greater than 0 while the heartbeat is on (--ping-interval 0 turns it off)",
            ));
        }
    }
    if let Some(mode) = heartbeat {
        config.heartbeat = mode;
    }
    if let Some((_, text)) = ping_text {
        config.ping_text = text;
    }
    if let Some((_, text)) = pong_text {
        config.pong_text = text;
    }
    config.strict_pong = strict_pong;
    if let Some((flag, value)) = &connect_timeout {
        if value.is_zero() {
            return Err(UsageError::new(flag.as_str(), "must be greater than 0"));
        }
        config.connect_timeout = *value;
    }
    if let Some((_, value)) = &backoff_initial {
        config.backoff_initial = *value;
    }
    if let Some((_, value)) = &backoff_max {
        config.backoff_max = *value;
    }
    if config.backoff_initial > config.backoff_max {
        let initial = describe(
            &backoff_initial,
            "--backoff-initial",
            defaults.backoff_initial,
        );
        let max = describe(&backoff_max, "--backoff-max", defaults.backoff_max);
        return Err(match (&backoff_initial, &backoff_max) {
            (Some((flag, value)), _) => {
                UsageError::new(flag.as_str(), format!("{value:?} is larger than {max}"))
            }
            (None, Some((flag, value))) => UsageError::new(
                flag.as_str(),
                format!("{value:?} is smaller than {initial}"),
            ),
            (None, None) => UsageError::new("--backoff-initial", "larger than --backoff-max"),
        });
    }
    if let Some(retries) = max_retries {
        config.max_retries = retries;
    }
    config.headers = headers;
    config.header_file = header_file.map(|(_, path)| path);
    config.subprotocols = subprotocols;
    #[cfg(not(feature = "tls"))]
    if let Some((flag, _)) = ca_file
        .as_ref()
        .or(client_cert.as_ref())
        .or(client_key.as_ref())
    {
        return Err(UsageError::new(flag.clone(), WITHOUT_TLS));
    }
    config.ca_file = ca_file.map(|(_, path)| path);
    match (client_cert, client_key) {
        (Some((flag, _)), None) => {
            return Err(UsageError::new(flag, "needs --client-key as well"));
        }
        (None, Some((flag, _))) => {
            return Err(UsageError::new(flag, "needs --client-cert as well"));
        }
        (cert, key) => {
            config.client_cert = cert.map(|(_, path)| path);
            config.client_key = key.map(|(_, path)| path);
        }
    }
    config.insecure = insecure;
    if let Some(size) = max_message_size {
        config.max_message_size = size;
    }
    if let Some(size) = queue_size {
        config.queue_size = size;
    }
    if let Some(bytes) = queue_bytes {
        config.queue_bytes = bytes;
    }
    config.status_file = status_file.map(|(_, path)| path);
    config.metrics_file = metrics_file.map(|(_, path)| path);
    config.link_watch = !no_link_watch;
    config.once = once;
    Ok(Parsed::Run(Box::new(config)))
}

/// [`parse`] over the real process arguments and environment.
///
/// Unlike `std::env::var(..).ok()`, a `WSBEAT_*` variable that is not UTF-8 is
/// a usage error naming it instead of being silently ignored.
pub fn parse_process() -> Result<Parsed, UsageError> {
    for (key, value) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("WSBEAT_") && value.to_str().is_none() {
            return Err(UsageError::new(key, "not valid UTF-8"));
        }
    }
    parse(std::env::args_os().skip(1), &|name| {
        std::env::var(name).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
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
        for (option, _) in OPTIONS {
            assert!(
                USAGE.contains(&format!("--{option} ")) || USAGE.contains(&format!("--{option}\n")),
                "{option}"
            );
        }
        assert!(USAGE.contains("WSBEAT_") && USAGE.contains("64") && USAGE.contains("78"));
        assert!(USAGE.lines().all(|line| line.len() <= 80));
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
            format!(
                "url: unexpected second argument '--' after '{URL}' (only one URL may be given)"
            )
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
    fn targets() {
        let target = |url: &str| parse_target(url, "url").unwrap();
        let t = target("ws://example.com/ws");
        assert_eq!((t.tls, t.host.as_str(), t.port), (false, "example.com", 80));
        assert_eq!(t.url, "ws://example.com/ws");
        let t = target("wss://example.com");
        assert_eq!((t.tls, t.host.as_str(), t.port), (true, "example.com", 443));
        assert_eq!(t.url, "wss://example.com");
        let t = target("wss://example.com:8443/a/b?c=d&e");
        assert_eq!((t.tls, t.port), (true, 8443));
        assert_eq!(t.url, "wss://example.com:8443/a/b?c=d&e");
        let t = target("ws://[::1]:9001/ws");
        assert_eq!((t.host.as_str(), t.port), ("::1", 9001));
        assert_eq!(t.url, "ws://[::1]:9001/ws");
        let t = target("wss://[2001:db8::1]/");
        assert_eq!((t.host.as_str(), t.port, t.tls), ("2001:db8::1", 443, true));
        let t = target("ws://127.0.0.1:65535");
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 65535));
        // An empty port means the default one (RFC 3986).
        assert_eq!(target("ws://h:/").port, 80);
        // Normalised for tungstenite: lower-case scheme, '/' before a bare query.
        let t = target("WSS://Example.com:444/P");
        assert_eq!(
            (t.url.as_str(), t.tls, t.port),
            ("wss://Example.com:444/P", true, 444)
        );
        assert_eq!(target("ws://h?token=1").url, "ws://h/?token=1");
    }

    #[test]
    fn bad_targets() {
        let error = |url: &str| parse_target(url, "WSBEAT_URL").unwrap_err().to_string();
        assert_eq!(
            error("http://example.com/"),
            "WSBEAT_URL: unsupported scheme 'http' in 'http://example.com/' (use ws:// or wss://)"
        );
        assert_eq!(
            error("example.com"),
            "WSBEAT_URL: 'example.com' has no scheme (use ws://host[:port]/path or wss://host[:port]/path)"
        );
        assert_eq!(
            error("/ws"),
            "WSBEAT_URL: '/ws' has no scheme (use ws://host[:port]/path or wss://host[:port]/path)"
        );
        assert_eq!(
            error("ws:///ws"),
            "WSBEAT_URL: invalid URL 'ws:///ws' (invalid format; use ws://host[:port]/path or wss://host[:port]/path)"
        );
        assert_eq!(
            error("ws://:80/"),
            "WSBEAT_URL: missing host in 'ws://:80/'"
        );
        assert_eq!(
            error("ws://h:0/"),
            "WSBEAT_URL: invalid port '0' in 'ws://h:0/' (use 1 to 65535)"
        );
        assert_eq!(
            error("ws://h:65536/"),
            "WSBEAT_URL: invalid port '65536' in 'ws://h:65536/' (use 1 to 65535)"
        );
        assert_eq!(
            error("ws://h/#top"),
            "WSBEAT_URL: 'ws://h/#top' has a #fragment, which a websocket URL cannot have"
        );
        assert_eq!(
            error("wss://user:pw@h/"),
            "WSBEAT_URL: credentials in 'wss://***@h/' are not supported (send them with --header or --header-file)"
        );
        // Never echoed, whatever else is wrong with the URL.
        for url in [
            "ws://user:pw@h/#top",
            "ws://user:pw@h h/",
            "http://user:pw@h/",
            "ws://token@h:99999/",
            "user:pw@h/ws",
        ] {
            let message = error(url);
            assert!(
                !message.contains("pw") && !message.contains("token"),
                "{message}"
            );
        }
        assert_eq!(
            without_userinfo("ws://a:b@c@h:1/p@q?x@y"),
            "ws://***@h:1/p@q?x@y"
        );
        assert_eq!(without_userinfo("ws://h/p@q"), "ws://h/p@q");
        assert!(error("ws://h h/").starts_with("WSBEAT_URL: invalid URL 'ws://h h/'"));
        assert!(error("ws://[::1/").starts_with("WSBEAT_URL: invalid URL"));
        assert!(error("").starts_with("WSBEAT_URL: invalid URL ''"));
        // Messages stay on one line whatever the input.
        let message = error("ws://a\nb/");
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn durations() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0ms"), Duration::ZERO);
        assert_eq!(ok("250ms"), ms(250));
        assert_eq!(ok("1.5s"), ms(1500));
        assert_eq!(ok("20s"), secs(20));
        assert_eq!(ok("20"), secs(20));
        assert_eq!(ok("5m"), secs(300));
        assert_eq!(ok("2h"), secs(7200));
        assert_eq!(ok("0.5"), ms(500));
        assert_eq!(ok(".5s"), ms(500));
        assert_eq!(ok("5."), secs(5));
        assert_eq!(ok("007s"), secs(7));
        assert_eq!(ok(" 3s\t"), secs(3));
        assert_eq!(ok("0.1ms"), Duration::from_micros(100));
        assert_eq!(ok("1.0000000001s"), Duration::from_nanos(1_000_000_000));
        assert_eq!(ok("0.000000001"), Duration::from_nanos(1));
        assert_eq!(ok("0.0000000009"), Duration::ZERO);
        assert_eq!(ok("1.25h"), secs(4500));
        assert_eq!(ok("0.1m"), secs(6));
        assert_eq!(
            ok("0.33333333333333333333333333333333333h"),
            Duration::from_nanos(1_199_999_999_999)
        );
        assert_eq!(ok("2400h"), MAX_DURATION);
        assert_eq!(ok("144000m"), MAX_DURATION);
        assert_eq!(ok("8640000s"), MAX_DURATION);
        assert_eq!(ok("000000000000000000000000000000001s"), secs(1));

        let bad = |s: &str| parse_duration(s).unwrap_err();
        let usage = |s: &str| format!("invalid duration '{s}' (use e.g. 250ms, 1.5s, 20s, 5m)");
        for s in [
            "", " ", ".", "s", "ms", "5x", "5 s", "5S", "5sec", "1.2.3", "1e3", "+5", "NaN", "nan",
            "inf", "infinity", "5d", "5us", "1s2", "1s ms", "0x10", "1_000", "..5", "\u{661}s",
        ] {
            assert_eq!(bad(s), usage(s), "{s:?}");
        }
        assert_eq!(bad("-1"), "invalid duration '-1' (must not be negative)");
        assert_eq!(bad("-0"), "invalid duration '-0' (must not be negative)");
        assert_eq!(
            bad("-inf"),
            "invalid duration '-inf' (must not be negative)"
        );
        for s in [
            "2400.000001h",
            "8640000.000000001",
            "99999999999999999999999999999999999999999999",
            "340282366920938463463374607431768211456h",
            "18446744073709551616",
        ] {
            assert!(bad(s).ends_with("(at most 100 days)"), "{s}");
        }
        // Long or multi-line input is shortened and escaped in the message.
        let long = "9".repeat(200) + "x";
        let message = bad(&long);
        assert!(message.len() < 140 && message.contains("..."), "{message}");
        assert_eq!(
            bad("1\n2"),
            "invalid duration '1\\n2' (use e.g. 250ms, 1.5s, 20s, 5m)"
        );
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
            err(&["--proxy", "socks5://p:1080", URL])
                .starts_with("--proxy: unsupported proxy scheme")
        );
        assert!(
            err_with(&[URL], &[("ALL_PROXY", "https://p")]).starts_with("ALL_PROXY: unsupported")
        );
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
}
