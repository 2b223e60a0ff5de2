//! Command line and `WSBEAT_*` environment → [`Config`]. Pure: the caller passes
//! the arguments and an environment lookup, so tests never touch the process env.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::UsageError;

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
    /// The URL exactly as the user gave it; used for the handshake request and in logs.
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
    /// State file, replaced atomically.
    pub status_file: Option<PathBuf>,
    /// Probe mode: one heartbeat, print its RTT, exit.
    pub once: bool,
}

impl Config {
    /// A configuration with the contract's defaults for `url` (already validated).
    pub fn new(target: Target) -> Config {
        Config {
            target,
            ping_interval: Duration::from_secs(20),
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
            status_file: None,
            once: false,
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

/// Parses `url` into a [`Target`]; `flag` names where it came from in errors.
pub fn parse_target(url: &str, flag: &str) -> Result<Target, UsageError> {
    let _ = (url, flag);
    todo!("config helper")
}
