//! wsbeat keeps one WebSocket connection from a device to its server alive.
//!
//! It proves the connection alive with a ping/pong heartbeat, notices within
//! `ping-interval + pong-timeout` when it is not (including half-open TCP
//! connections that never report an error), and reconnects by itself with
//! full-jitter exponential backoff, so a fleet does not stampede its server
//! after an outage.
//!
//! # In scope
//! One client connection, `ws://` and `wss://` (native-tls), control or text
//! heartbeats, stdin lines out and server text messages in, systemd
//! notification, a status file and Prometheus metrics, Happy Eyeballs on
//! dual-stack hosts, HTTP CONNECT proxies, the kernel's address changes
//! (rtnetlink), an adaptive heartbeat for metered links. Plain std threads; no
//! async runtime.
//!
//! # Out of scope
//! Servers, multiplexing, message acknowledgement (a line written to a socket
//! that dies before the server reads it is lost), proxies other than HTTP CONNECT
//! (SOCKS), compression.
//!
//! # Anatomy
//! ```text
//!   stdin thread ── Outbox (waits when full and connected) ──────┐
//!  signals thread ─┐                                             v
//!      link watch ─┼─ Event channel ─> supervisor ─ Command ─> heartbeat thread (only writer)
//!   reader thread ─┤                    │     ^ inputs  v actions
//! heartbeat thread ┘                    │   machine (pure decisions, virtual-time tests)
//!    connect thread (one per attempt) ──┘
//!   reader thread ── Delivery (bytes-bounded) ──> output thread ──> stdout
//! ```
//! The [`Supervisor`] is a driver: every decision (reconnect delays, `--max-retries`,
//! reload and stop in each phase, the watchdog) is made by the pure state machine (`machine`),
//! which reads no clock. Per connection (`connection`), the reader waits for
//! readability outside the socket lock; the heartbeat thread is the only writer
//! and sleeps until its next ping or a command. Lines reach it through the
//! outbox (stdin waits there while connected and full; drop-oldest while
//! disconnected); received messages leave the reader through the delivery
//! buffer to an output thread, so neither direction can stall the other or the
//! heartbeat, and both are bounded in bytes. Every event carries its
//! connection's id, so late events from a torn-down connection are ignored. The
//! supervisor joins every thread it starts.
//!
//! # Embedding
//! ```no_run
//! use std::sync::Arc;
//! use wsbeat::{parse_target, Config, Observer, Supervisor};
//!
//! struct Print;
//! impl Observer for Print {
//!     fn message(&self, text: &str) {
//!         println!("server says {text}");
//!     }
//! }
//!
//! let target = parse_target("wss://example.com/ws", "url").expect("valid URL");
//! let mut config = Config::new(target);
//! config.ping_interval = std::time::Duration::from_secs(5);
//! let supervisor = Supervisor::new(config, Arc::new(Print)).expect("readable files");
//! let handle = supervisor.handle();
//! let client = std::thread::spawn(move || supervisor.run());
//! handle.send("hello".into());
//! handle.stop();
//! let ending = client.join().expect("supervisor thread");
//! println!("{ending:?}");
//! ```
//!
//! # Limitations
//! A name lookup cannot be interrupted: a resolver that hangs past
//! `--connect-timeout` leaves its connect thread running until the lookup ends
//! (the attempt itself is abandoned on time).
#![deny(unsafe_code)]
#![warn(missing_docs)]

// The modules are private: the public API is the re-exported set below, so an
// internal type is not a semver promise. `config`, `headers`, `logging` and
// `linkwatch` stay reachable (hidden) for the binary, the fuzz targets and tests.
mod adaptive;
mod backoff;
#[doc(hidden)]
pub mod config;
mod connection;
mod delivery;
mod dial;
mod error;
mod events;
#[doc(hidden)]
pub mod headers;
#[doc(hidden)]
pub mod linkwatch;
#[doc(hidden)]
pub mod logging;
mod machine;
mod metrics;
mod netpath;
#[allow(unsafe_code)]
mod os;
mod outbox;
mod proxy;
mod report;
mod sd_notify;
mod signals;
mod state_store;
mod status_file;
mod stdin;
mod stdout;
mod supervisor;
#[cfg(feature = "tls")]
mod tls;
#[cfg(not(feature = "tls"))]
#[path = "no_tls.rs"]
mod tls;
mod traffic;
mod transport;

pub use backoff::{Random, SplitMix64};
pub use config::{Config, HeartbeatMode, Target, parse_target};
pub use error::{ConfigError, ConnectError, Exit, Stage, UsageError};
pub use events::{ConnId, Ending, Observer};
pub use status_file::{State, Status};
pub use stdout::StdoutLines;
pub use supervisor::{Handle, Supervisor, Systemd};

use std::sync::Arc;

/// Runs the command-line client: signals, stdin, systemd, the supervisor.
/// Returns how it ended; `Err` is a configuration file problem (exit 78).
pub fn run(config: Config) -> Result<Ending, ConfigError> {
    // Handlers first, before any thread exists, so every thread inherits them.
    let signals = match signals::SignalListener::install() {
        Ok(signals) => Some(signals),
        Err(err) => {
            log::error!("signal handlers: {err}");
            None
        }
    };
    // Also for a client certificate on ws://: checking the pair builds a TLS context,
    // which would otherwise parse the whole system CA bundle.
    if config.target.tls || config.client_cert.is_some() {
        tls::prefer_hashed_system_roots();
    }
    // One arena: a client that moves a few messages a second gains nothing from one
    // per thread and pays for each in resident memory. Before any thread starts.
    os::limit_malloc_arenas();
    let once = config.once;
    let max_line = config.max_message_size;
    let stdout = match StdoutLines::new() {
        Ok(stdout) => stdout,
        Err(err) => return Ok(Ending::GaveUp(format!("stdout: {err}"))),
    };
    let supervisor = Supervisor::new(config, Arc::new(stdout))?;
    let systemd = Systemd {
        notifier: sd_notify::Notifier::from_env(),
        watchdog: sd_notify::watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        ),
    };
    let supervisor = supervisor.with_systemd(systemd);
    let handle = supervisor.handle();
    let signal_thread = signals.and_then(|signals| {
        let handle = handle.clone();
        signals
            .spawn(move |signal| match signal {
                signals::Signal::Terminate => handle.stop(),
                signals::Signal::Reload => handle.reload(),
            })
            .map_err(|err| log::error!("signal thread: {err}"))
            .ok()
    });
    let stdin_thread = if once {
        None
    } else {
        let lines = handle.clone();
        let eof = handle.clone();
        stdin::spawn_reader(
            std::io::stdin(),
            max_line,
            move |line| lines.send(line),
            move || eof.input_closed(),
        )
        .map_err(|err| log::debug!("stdin not read: {err}"))
        .ok()
    };
    drop(handle);
    let ending = supervisor.run();
    if let Some(thread) = stdin_thread {
        thread.stop();
    }
    if let Some(thread) = signal_thread {
        thread.stop();
    }
    Ok(ending)
}
