//! Command line and `WSBEAT_*` environment → [`Config`]. Pure: the caller passes
//! the arguments and an environment lookup, so tests never touch the process env.
//!
//! - `options`: the option table (flag, kind, default, help, what it sets), which
//!   drives the command line, the environment fallback and `--help`;
//! - `argv`: the loop over the arguments and the `WSBEAT_*` fallback;
//! - this module: [`Config`], [`parse`] and the checks across options;
//! - `duration` and `target`: the DURATION and URL parsers (fuzzed);
//! - `proxy`: which HTTP CONNECT proxy a target goes through;
//! - `headers`: the `--header-file` format (fuzzed).

mod argv;
mod duration;
pub mod headers;
mod help;
mod options;
pub mod proxy;
mod target;
mod values;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use self::argv::{Scanned, Sources};
pub use self::duration::{MAX_DURATION, parse_auto, parse_duration};
pub use self::help::{USAGE, Usage};
use self::options::{OPTIONS, Opt};
pub use self::target::{Target, parse_target};
use crate::error::UsageError;
pub use crate::rules::liveness::HeartbeatMode;
use proxy::Proxy;

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
    /// `--socket`: the local Unix socket for the device's programs.
    pub socket: Option<PathBuf>,
    /// Permission bits of the socket file wsbeat creates.
    pub socket_mode: u32,
    /// Local clients connected at once.
    pub socket_max_clients: usize,
    /// `--state-dir`: where what `--ping-interval auto` learned is kept across restarts.
    pub state_dir: Option<PathBuf>,
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
            socket: None,
            socket_mode: 0o660,
            socket_max_clients: 32,
            state_dir: None,
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

/// `wsbeat <version>`, printed by `-V` / `--version`.
pub fn version() -> String {
    format!("wsbeat {}", env!("CARGO_PKG_VERSION"))
}

/// Largest `--max-message-size` accepted (1 GiB).
pub const MAX_MESSAGE_SIZE_LIMIT: usize = 1 << 30;

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
    let sources = match argv::scan(args)? {
        Scanned::Run(args) => Sources::new(args, env),
        Scanned::Stop(parsed) => return Ok(parsed),
    };
    let mut config = Config::new(Target::unset());
    for spec in OPTIONS {
        sources.apply(spec, &mut config)?;
    }
    config.target = match sources.url() {
        Some((from, url)) => parse_target(&url, &from)?,
        None => {
            return Err(UsageError::new(
                "url",
                "missing (give it as an argument or WSBEAT_URL)",
            ));
        }
    };
    config.proxy = proxy::select(sources.value(Opt::Proxy), &config.target, sources.env())?;
    check(&config, &|opt| sources.origin(opt))?;
    Ok(Parsed::Run(Box::new(config)))
}

/// The rules that tie options together, checked once all are read. `origin` says where
/// an option's value came from (`--name` or `WSBEAT_NAME`), `None` for its default.
fn check(config: &Config, origin: &dyn Fn(Opt) -> Option<String>) -> Result<(), UsageError> {
    let from = |opt: Opt| origin(opt).unwrap_or_else(|| opt.flag());
    if config.pong_timeout.is_zero() && (!config.ping_interval.is_zero() || config.once) {
        return Err(UsageError::new(
            from(Opt::PongTimeout),
            "must be greater than 0 while the heartbeat is on (--ping-interval 0 turns it off)",
        ));
    }
    if config.connect_timeout.is_zero() {
        return Err(UsageError::new(
            from(Opt::ConnectTimeout),
            "must be greater than 0",
        ));
    }
    if config.backoff_initial > config.backoff_max {
        // `where (value)`, or `--flag (default value)`.
        let describe = |opt: Opt, value: Duration| match origin(opt) {
            Some(from) => format!("{from} ({value:?})"),
            None => format!("{} (default {value:?})", opt.flag()),
        };
        let (initial, max) = (config.backoff_initial, config.backoff_max);
        return Err(
            match (origin(Opt::BackoffInitial), origin(Opt::BackoffMax)) {
                (Some(from), _) => UsageError::new(
                    from,
                    format!(
                        "{initial:?} is larger than {}",
                        describe(Opt::BackoffMax, max)
                    ),
                ),
                (None, Some(from)) => UsageError::new(
                    from,
                    format!(
                        "{max:?} is smaller than {}",
                        describe(Opt::BackoffInitial, initial)
                    ),
                ),
                (None, None) => UsageError::new("--backoff-initial", "larger than --backoff-max"),
            },
        );
    }
    #[cfg(not(feature = "tls"))]
    if let Some(from) = [Opt::CaFile, Opt::ClientCert, Opt::ClientKey]
        .into_iter()
        .find_map(origin)
    {
        return Err(UsageError::new(from, target::WITHOUT_TLS));
    }
    match (&config.client_cert, &config.client_key) {
        (Some(_), None) => Err(UsageError::new(
            from(Opt::ClientCert),
            "needs --client-key as well",
        )),
        (None, Some(_)) => Err(UsageError::new(
            from(Opt::ClientKey),
            "needs --client-cert as well",
        )),
        _ => Ok(()),
    }
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
mod tests;
