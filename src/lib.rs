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
//! notification, a status file and Prometheus metrics, a local Unix socket
//! through which the device's programs share the connection (`--socket`, or
//! systemd socket activation), Happy Eyeballs on
//! dual-stack hosts, HTTP CONNECT proxies, the kernel's address changes
//! (rtnetlink), an adaptive heartbeat for metered links. Plain std threads; no
//! async runtime.
//!
//! # Out of scope
//! Servers, multiplexing, application-level acknowledgement (lines the peer's TCP
//! never acknowledged are sent again after a reconnect, so delivery is at least
//! once, but nothing confirms that the server *processed* a line), proxies other
//! than HTTP CONNECT (SOCKS), compression.
//!
//! # Anatomy: one folder per layer
//! Each layer imports only the layers below it (no import cycle, no arrow back up):
//! ```text
//! main.rs, lib.rs      the command line client: threads for stdin, signals, the local socket
//! supervisor/          the driver: owns the threads and joins them, carries out the machine's
//!                      actions (attempt: connect threads; serve: a connection's threads,
//!                      liveness verdicts, teardown)
//! connection/          one connection: the shared socket and its lock discipline, the reader,
//!                      the writer (heartbeats and lines)
//! local/               the device's side: stdin, the outbox, delivery to stdout, the local
//!                      socket (one poll(2) thread, a pure fan-out log), signals
//! events.rs            what the threads tell the supervisor
//! net/                 reaching the server: Happy Eyeballs, the proxy tunnel, TLS, the
//!                      upgrade under one deadline, the byte stream, the kernel's link changes
//! config/, report/     the command line and environment (proxy selection, header file);
//!                      what the client reports (status and metrics files, systemd, the
//!                      observer, counters, the learned-heartbeat store)
//! rules/               the decisions, pure: the machine and its timer table, backoff,
//!                      liveness, the heartbeat schedule, the adaptive interval, the
//!                      unacknowledged-lines window. No I/O, no clock, no thread.
//! error.rs, os.rs      the errors at each boundary; every raw OS call (the only unsafe code)
//! ```
//!
//! # Threads
//! ```text
//!   stdin thread ── Outbox (waits when full and connected) ──────┐
//!  signals thread ─┐                                             v
//!      link watch ─┼─ Event channel ─> supervisor ─ Command ─> writer thread (heartbeats, lines)
//!   reader thread ─┤                    │     ^ inputs  v actions
//!   writer thread ─┘                    │   machine (rules/: every deadline, one timer table)
//!    connect thread (one per attempt) ──┘
//!   reader thread ── Delivery (bytes-bounded) ──> output thread ──> stdout
//!   with --socket: local thread (one poll) ── lines ──> Outbox;
//!                  output thread ──> Fanout log ──> local thread ──> clients
//! ```
//! The [`Supervisor`] is a driver: every decision (reconnect delays, `--max-retries`,
//! reload and stop in each phase, the watchdog, when to judge a connection's
//! liveness) is made by the pure state machine, which reads no clock. Per
//! connection, the reader waits for readability outside the socket lock; the
//! writer thread is the only writer and sleeps until its next heartbeat or a
//! command. Neither judges liveness: the supervisor does, from their shared
//! bookkeeping, and shuts the socket down under a thread stuck in I/O. Lines reach
//! the writer through the outbox (stdin and the local socket wait there while
//! connected and full; drop-oldest while disconnected); received messages leave
//! the reader through the delivery buffer to an output thread, so neither
//! direction can stall the other or the heartbeat, and both are bounded in bytes.
//! Every event carries its connection's id, so late events from a torn-down
//! connection are ignored. The supervisor joins every thread it starts.
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
#[doc(hidden)]
pub mod config;
mod connection;
mod error;
mod events;
mod local;
mod net;
#[allow(unsafe_code)]
mod os;
mod report;
mod rules;
mod supervisor;
mod sync;
#[cfg(test)]
mod testing;

// Reachable (hidden) for the binary, the fuzz targets and the tests.
#[doc(hidden)]
pub use config::headers;
#[doc(hidden)]
pub use net::linkwatch;
#[doc(hidden)]
pub use report::logging;

pub use config::{Config, HeartbeatMode, Target, parse_target};
pub use error::{ConfigError, ConnectError, Exit, Stage, UsageError};
pub use events::{ConnId, Ending, Observer};
pub use local::stdout::StdoutLines;
pub use report::status_file::{LocalCounts, State, Status};
pub use rules::backoff::{Random, SplitMix64};
pub use supervisor::{Handle, Supervisor, Systemd};

use std::sync::Arc;

/// Runs the command-line client: signals, stdin, systemd, the supervisor.
/// Returns how it ended; `Err` is a configuration file problem (exit 78).
pub fn run(config: Config) -> Result<Ending, ConfigError> {
    // Handlers first, before any thread exists, so every thread inherits them.
    let signals = match local::signals::SignalListener::install() {
        Ok(signals) => Some(signals),
        Err(err) => {
            log::error!("signal handlers: {err}");
            None
        }
    };
    // Also for a client certificate on ws://: checking the pair builds a TLS context,
    // which would otherwise parse the whole system CA bundle.
    if config.target.tls || config.client_cert.is_some() {
        net::tls::prefer_hashed_system_roots();
    }
    // One arena: a client that moves a few messages a second gains nothing from one
    // per thread and pays for each in resident memory. Before any thread starts.
    os::limit_malloc_arenas();
    let once = config.once;
    let max_line = config.max_message_size;
    let max_clients = config.socket_max_clients;
    // Still one thread: socket activation's variables are unset here.
    let local = if once {
        None
    } else {
        local::socket::Local::open(
            config.socket.as_deref(),
            config.socket_mode,
            config.queue_bytes,
        )?
    };
    // With a local socket, received messages go to its clients instead of stdout.
    let observer: Arc<dyn Observer> = match &local {
        Some(local) => local.observer(),
        None => match StdoutLines::new() {
            Ok(stdout) => Arc::new(stdout),
            Err(err) => return Ok(Ending::GaveUp(format!("stdout: {err}"))),
        },
    };
    let mut supervisor = Supervisor::new(config, observer)?;
    if let Some(local) = &local {
        supervisor = supervisor.with_local_counts(Box::new(local.counts()));
    }
    let supervisor = supervisor.with_systemd(Systemd::from_env());
    let handle = supervisor.handle();
    let signal_thread = signals.and_then(|signals| {
        let handle = handle.clone();
        signals
            .spawn(move |signal| match signal {
                local::signals::Signal::Terminate => handle.stop(),
                local::signals::Signal::Reload => handle.reload(),
            })
            .map_err(|err| log::error!("signal thread: {err}"))
            .ok()
    });
    let stdin_thread = if once {
        None
    } else {
        let lines = handle.clone();
        let eof = handle.clone();
        local::stdin::spawn_reader(
            std::io::stdin(),
            max_line,
            move |line| lines.send(line),
            move || eof.input_closed(),
        )
        .map_err(|err| log::debug!("stdin not read: {err}"))
        .ok()
    };
    let local_thread = local.and_then(|local| {
        let changed = handle.clone();
        local
            .spawn(handle.outbox(), max_line, max_clients, move || {
                changed.local_changed()
            })
            .map_err(|err| log::error!("local socket thread: {err}"))
            .ok()
    });
    drop(handle);
    let ending = supervisor.run();
    // After the server's Close: the clients get what arrived, then are closed.
    if let Some(thread) = local_thread {
        thread.stop();
    }
    if let Some(thread) = stdin_thread {
        thread.stop();
    }
    if let Some(thread) = signal_thread {
        thread.stop();
    }
    Ok(ending)
}
