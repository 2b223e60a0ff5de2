//! Errors at each boundary, and the exit code each one maps to.
//!
//! Every `Display` is one lowercase line without trailing punctuation that names
//! the flag or file at fault, because that line goes to stderr, the journal and
//! the status file's `last_error=` unchanged.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// How the process ends; the only place exit codes are decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Stopped by a signal, or `--once` succeeded.
    Stopped = 0,
    /// `--max-retries` exhausted, or `--once` failed.
    GaveUp = 1,
    /// Bad command line or environment.
    Usage = 64,
    /// Unreadable or invalid file named by an option.
    Config = 78,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// A command-line or environment problem (exit 64). Fix the named flag.
#[derive(Clone, PartialEq, Eq)]
pub struct UsageError {
    /// The flag as the user wrote it (`--ping-interval`, or `WSBEAT_PING_INTERVAL`).
    pub flag: String,
    /// What is wrong with it.
    pub message: String,
}

impl UsageError {
    /// An error about `flag`.
    pub fn new(flag: impl Into<String>, message: impl Into<String>) -> UsageError {
        UsageError {
            flag: flag.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.flag, self.message)
    }
}

impl fmt::Debug for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for UsageError {}

/// A file named by an option cannot be used (exit 78). Fix or replace the file.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file at fault.
    pub path: PathBuf,
    /// The option that named it (`--ca-file`).
    pub flag: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.flag, self.path.display(), self.message)
    }
}

impl fmt::Debug for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for ConfigError {}

/// The step of connection set-up that a timeout interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stage {
    /// Name resolution, the first step.
    #[default]
    Resolve,
    /// TCP three-way handshake.
    Tcp,
    /// HTTP CONNECT exchange with a proxy.
    Proxy,
    /// TLS handshake.
    Tls,
    /// HTTP upgrade request and response.
    Upgrade,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Resolve => "resolve",
            Stage::Tcp => "tcp connect",
            Stage::Proxy => "proxy CONNECT",
            Stage::Tls => "tls handshake",
            Stage::Upgrade => "websocket upgrade",
        })
    }
}

/// Why a connection attempt failed; the supervisor logs it and picks the next delay from it.
/// New kinds of failure may be added: match with a wildcard arm.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectError {
    /// The host name did not resolve.
    Resolve(String),
    /// TCP connect failed (refused, unreachable).
    Tcp(std::io::Error),
    /// TLS handshake failed (certificate, protocol).
    Tls(String),
    /// The server answered the upgrade with a non-101 status.
    Rejected {
        /// HTTP status code.
        status: u16,
        /// `Retry-After`, already converted to a delay from the moment of the answer.
        retry_after: Option<Duration>,
    },
    /// `--connect-timeout` ran out during this stage.
    Timeout(Stage),
    /// Any other WebSocket handshake failure.
    Handshake(String),
    /// The HTTP proxy did not open the tunnel.
    Proxy {
        /// `http://host:port`, never the credentials.
        proxy: String,
        /// The proxy's answer to `CONNECT`, when it gave one (not 2xx).
        status: Option<u16>,
        /// The proxy's status line, or what went wrong.
        detail: String,
    },
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Resolve(msg) => write!(f, "resolve: {msg}"),
            ConnectError::Tcp(err) => write!(f, "connect: {err}"),
            ConnectError::Tls(msg) => write!(f, "tls: {msg}"),
            ConnectError::Rejected {
                status,
                retry_after: Some(after),
            } => write!(
                f,
                "handshake rejected: HTTP {status}, retry after {:.1}s",
                after.as_secs_f64()
            ),
            ConnectError::Rejected { status, .. } => write!(f, "handshake rejected: HTTP {status}"),
            ConnectError::Timeout(stage) => write!(f, "connect timeout during {stage}"),
            ConnectError::Handshake(msg) => write!(f, "handshake: {msg}"),
            ConnectError::Proxy {
                proxy,
                status: Some(_),
                detail,
            } => write!(f, "proxy {proxy} refused CONNECT: {detail}"),
            ConnectError::Proxy { proxy, detail, .. } => write!(f, "proxy {proxy}: {detail}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// Why an attempt failed, as the `reason` label says it: a small fixed set, so a
/// fleet's dashboards can sum over devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// Name resolution.
    Dns,
    /// TCP connect.
    Tcp,
    /// TLS handshake.
    Tls,
    /// The HTTP upgrade (rejected, or not a WebSocket answer).
    Http,
    /// `--connect-timeout` ran out.
    Timeout,
    /// The HTTP CONNECT proxy.
    Proxy,
}

impl FailureReason {
    /// Every reason, in the order they are written.
    pub const ALL: [FailureReason; 6] = [
        FailureReason::Dns,
        FailureReason::Tcp,
        FailureReason::Tls,
        FailureReason::Http,
        FailureReason::Timeout,
        FailureReason::Proxy,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            FailureReason::Dns => "dns",
            FailureReason::Tcp => "tcp",
            FailureReason::Tls => "tls",
            FailureReason::Http => "http",
            FailureReason::Timeout => "timeout",
            FailureReason::Proxy => "proxy",
        }
    }

    /// Its place in [`FailureReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl ConnectError {
    /// The `reason` label of this failure in the metrics.
    pub fn reason(&self) -> FailureReason {
        match self {
            ConnectError::Resolve(_) => FailureReason::Dns,
            ConnectError::Tcp(_) => FailureReason::Tcp,
            ConnectError::Tls(_) => FailureReason::Tls,
            ConnectError::Rejected { .. } | ConnectError::Handshake(_) => FailureReason::Http,
            ConnectError::Timeout(_) => FailureReason::Timeout,
            ConnectError::Proxy { .. } => FailureReason::Proxy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_naming_the_culprit() {
        let usage = UsageError::new("--ping-interval", "invalid duration 'x'");
        assert_eq!(usage.to_string(), "--ping-interval: invalid duration 'x'");
        let config = ConfigError {
            path: "/etc/ca.pem".into(),
            flag: "--ca-file",
            message: "no certificate found".into(),
        };
        assert_eq!(
            config.to_string(),
            "--ca-file /etc/ca.pem: no certificate found"
        );
        let rejected = ConnectError::Rejected {
            status: 503,
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(
            rejected.to_string(),
            "handshake rejected: HTTP 503, retry after 3.0s"
        );
    }

    #[test]
    fn errors_cross_threads() {
        fn is_send_sync<T: Send + Sync>() {}
        is_send_sync::<UsageError>();
        is_send_sync::<ConfigError>();
        is_send_sync::<ConnectError>();
    }

    #[test]
    fn exit_codes_match_the_contract() {
        assert_eq!(Exit::Stopped as u8, 0);
        assert_eq!(Exit::GaveUp as u8, 1);
        assert_eq!(Exit::Usage as u8, 64);
        assert_eq!(Exit::Config as u8, 78);
    }
}
