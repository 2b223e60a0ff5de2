//! What the client tells the world about itself: the status file, the metrics
//! file, systemd's `STATUS=` and the observer's state callback, all from one
//! [`Facts`] gathered by the supervisor. It decides what a refresh must write;
//! the supervisor only says when.
//!
//! - `status_file`: the `key=value` state file, replaced atomically;
//! - `metrics`: the Prometheus textfile;
//! - `sd_notify`: systemd's notification socket and watchdog;
//! - `logging`: stderr lines, with journald priorities under systemd.

pub mod logging;
pub mod metrics;
pub mod observer;
pub mod sd_notify;
pub mod state_store;
pub mod status_file;
pub mod traffic;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use self::metrics::Snapshot;
use self::observer::Observer;
use self::sd_notify::{Notifier, Notify};
use self::status_file::{LocalCounts, State, Status, StatusFile};
use crate::error::FailureReason;

/// The current facts, as the supervisor knows them at a publish.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The machine's state.
    pub state: State,
    /// Successful connects after the first.
    pub reconnects: u64,
    /// The machine's last error.
    pub last_error: Option<String>,
    /// Connected: the last measured round trip, if any.
    pub rtt: Option<Duration>,
    /// A connection is being served.
    pub connected: bool,
    /// Lines dropped from the outbox.
    pub dropped: u64,
    /// The heartbeat interval in force.
    pub ping_interval: Duration,
    /// Heartbeats sent.
    pub heartbeats: u64,
    /// Lines sent again after a link died before its TCP acknowledged them.
    pub resent: u64,
    /// Bytes written.
    pub bytes_sent: u64,
    /// Bytes read.
    pub bytes_received: u64,
    /// Lines sent.
    pub messages_sent: u64,
    /// Messages received.
    pub messages_received: u64,
    /// With a local socket: its counts.
    pub local: Option<LocalCounts>,
}

/// The reporting side of the supervisor.
pub struct Report {
    url: String,
    status: Status,
    /// Round trip last written, so a refresh knows whether it changed.
    reported_rtt: Option<Duration>,
    status_file: Option<StatusFile>,
    metrics_file: Option<StatusFile>,
    notifier: Option<Notifier>,
    failures: Snapshot,
}

impl Report {
    /// Reports on `url` to these files and this notifier (each optional).
    pub fn new(
        url: String,
        status_file: Option<StatusFile>,
        metrics_file: Option<StatusFile>,
        notifier: Option<Notifier>,
        ping_interval: Duration,
    ) -> Report {
        Report {
            status: Status {
                state: State::Connecting,
                url: url.clone(),
                since_unix_ms: unix_ms_now(),
                rtt_ms: None,
                reconnects: 0,
                dropped: 0,
                resent: 0,
                last_error: None,
                ping_interval_ms: ping_interval.as_millis() as u64,
                heartbeats: 0,
                bytes_sent: 0,
                bytes_received: 0,
                local: None,
            },
            url,
            reported_rtt: None,
            status_file,
            metrics_file,
            notifier,
            failures: Snapshot::default(),
        }
    }

    /// systemd's notification socket, once known.
    pub fn set_notifier(&mut self, notifier: Option<Notifier>) {
        self.notifier = notifier;
    }

    /// Someone reads the status (a file or systemd): refreshes are worth waking for.
    pub fn is_read(&self) -> bool {
        self.status_file.is_some() || self.notifier.is_some()
    }

    /// Sends `states` to systemd, if it listens.
    pub fn notify(&self, states: &[Notify]) {
        if let Some(notifier) = &self.notifier {
            notifier.notify(states);
        }
    }

    /// Counts a failed attempt for the metrics.
    pub fn count_failure(&mut self, reason: FailureReason) {
        self.failures.count_failure(reason);
    }

    /// A new connection: its first round trip is news.
    pub fn connection_started(&mut self) {
        self.reported_rtt = None;
    }

    /// Publishes if something a reader would notice changed since the last publish.
    pub fn refresh(&mut self, facts: &Facts, observer: &dyn Observer) {
        let status = &self.status;
        let changed = (facts.connected && facts.rtt != self.reported_rtt)
            || facts.dropped != status.dropped
            || facts.heartbeats != status.heartbeats
            || facts.resent != status.resent
            || facts.bytes_received != status.bytes_received
            || facts.local != status.local
            || facts.ping_interval.as_millis() as u64 != status.ping_interval_ms;
        if changed {
            self.publish(facts, observer);
        }
    }

    /// Writes `facts` to the status file, the metrics file, `STATUS=` and the observer.
    pub fn publish(&mut self, facts: &Facts, observer: &dyn Observer) {
        let status = &mut self.status;
        if facts.state != status.state {
            status.state = facts.state;
            status.since_unix_ms = unix_ms_now();
        }
        status.reconnects = facts.reconnects;
        status.last_error = facts.last_error.clone();
        status.dropped = facts.dropped;
        if facts.connected {
            self.reported_rtt = facts.rtt;
            if let Some(rtt) = facts.rtt {
                status.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
            }
        }
        status.ping_interval_ms = facts.ping_interval.as_millis() as u64;
        status.heartbeats = facts.heartbeats;
        status.resent = facts.resent;
        status.bytes_sent = facts.bytes_sent;
        status.bytes_received = facts.bytes_received;
        status.local = facts.local;
        self.notify(&[Notify::Status(self.describe())]);
        observer.state(&self.status);
        if let Some(file) = &self.status_file {
            if let Err(err) = file.write(&self.status) {
                log::warn!("--status-file {}: {err}", file.path().display());
            }
        }
        if let Some(file) = &self.metrics_file {
            let text = metrics::render(&self.snapshot(facts));
            if let Err(err) = file.write_text(&text) {
                log::warn!("--metrics-file {}: {err}", file.path().display());
            }
        }
    }

    /// The metrics, from the status just published and the counters.
    fn snapshot(&self, facts: &Facts) -> Snapshot {
        let status = &self.status;
        Snapshot {
            connected: status.state == State::Connected,
            reconnects: status.reconnects,
            heartbeats: status.heartbeats,
            rtt_seconds: status.rtt_ms.map(|ms| ms / 1000.0),
            ping_interval_seconds: status.ping_interval_ms as f64 / 1000.0,
            bytes_sent: status.bytes_sent,
            bytes_received: status.bytes_received,
            messages_sent: facts.messages_sent,
            messages_received: facts.messages_received,
            dropped: status.dropped,
            resent: status.resent,
            state_since_seconds: status.since_unix_ms as f64 / 1000.0,
            local: status.local,
            ..self.failures.clone()
        }
    }

    /// The one-line `STATUS=` text.
    fn describe(&self) -> String {
        let url = &self.url;
        let status = &self.status;
        let reconnects = status.reconnects;
        match status.state {
            State::Connecting => format!("connecting to {url}, {reconnects} reconnects"),
            State::Connected => match status.rtt_ms {
                Some(rtt) => {
                    format!("connected to {url}, rtt {rtt:.1} ms, {reconnects} reconnects")
                }
                None => format!("connected to {url}, {reconnects} reconnects"),
            },
            State::Backoff => format!(
                "waiting to reconnect to {url}: {}",
                status.last_error.as_deref().unwrap_or("")
            ),
            State::Stopped => format!("stopped, {reconnects} reconnects"),
        }
    }
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
