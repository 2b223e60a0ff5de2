//! `--metrics-file`: the client's figures in the Prometheus text exposition format,
//! for node_exporter's textfile collector. Rendering is pure; the file is replaced
//! atomically together with the status file (see [`crate::report::status_file`]).

use std::fmt::Write as _;

use crate::error::FailureReason;
use crate::report::status_file::LocalCounts;

/// Everything the metrics file says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Upgraded and serving.
    pub connected: bool,
    /// Successful connects after the first.
    pub reconnects: u64,
    /// Failed attempts by [`FailureReason`].
    pub connect_failures: [u64; 6],
    /// Heartbeats sent.
    pub heartbeats: u64,
    /// Last heartbeat round trip, seconds.
    pub rtt_seconds: Option<f64>,
    /// The heartbeat interval in force, seconds (0: off).
    pub ping_interval_seconds: f64,
    /// Bytes written to the socket (frames; TLS records on `wss://`).
    pub bytes_sent: u64,
    /// Bytes read from the socket.
    pub bytes_received: u64,
    /// Text messages sent (stdin lines).
    pub messages_sent: u64,
    /// Text messages received.
    pub messages_received: u64,
    /// Stdin lines dropped from a full queue while disconnected.
    pub dropped: u64,
    /// Lines sent again after a link died before its TCP acknowledged them.
    pub resent: u64,
    /// When the current state began, seconds since the Unix epoch.
    pub state_since_seconds: f64,
    /// With a local socket (`--socket`) only: its counts.
    pub local: Option<LocalCounts>,
}

impl Snapshot {
    /// Counts one failed attempt.
    pub fn count_failure(&mut self, reason: FailureReason) {
        self.connect_failures[reason.index()] += 1;
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The file's text.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::with_capacity(2048);
    metric(
        &mut out,
        "wsbeat_connected",
        "gauge",
        "1 while the WebSocket connection is up.",
    );
    let _ = writeln!(out, "wsbeat_connected {}", u8::from(s.connected));
    metric(
        &mut out,
        "wsbeat_reconnects_total",
        "counter",
        "Successful connects after the first.",
    );
    let _ = writeln!(out, "wsbeat_reconnects_total {}", s.reconnects);
    metric(
        &mut out,
        "wsbeat_connect_failures_total",
        "counter",
        "Failed connection attempts by reason.",
    );
    for reason in FailureReason::ALL {
        let _ = writeln!(
            out,
            "wsbeat_connect_failures_total{{reason=\"{}\"}} {}",
            reason.label(),
            s.connect_failures[reason.index()]
        );
    }
    metric(
        &mut out,
        "wsbeat_heartbeats_total",
        "counter",
        "Heartbeats sent.",
    );
    let _ = writeln!(out, "wsbeat_heartbeats_total {}", s.heartbeats);
    metric(
        &mut out,
        "wsbeat_heartbeat_rtt_seconds",
        "gauge",
        "Round trip of the last answered heartbeat (NaN before the first).",
    );
    let rtt = s
        .rtt_seconds
        .map_or("NaN".to_string(), |rtt| format!("{rtt}"));
    let _ = writeln!(out, "wsbeat_heartbeat_rtt_seconds {rtt}");
    metric(
        &mut out,
        "wsbeat_ping_interval_seconds",
        "gauge",
        "Heartbeat interval in force (the learned one with --ping-interval auto).",
    );
    let _ = writeln!(
        out,
        "wsbeat_ping_interval_seconds {}",
        s.ping_interval_seconds
    );
    metric(
        &mut out,
        "wsbeat_bytes_total",
        "counter",
        "Bytes written to and read from the socket (WebSocket frames; TLS records on wss://).",
    );
    let _ = writeln!(
        out,
        "wsbeat_bytes_total{{direction=\"sent\"}} {}",
        s.bytes_sent
    );
    let _ = writeln!(
        out,
        "wsbeat_bytes_total{{direction=\"received\"}} {}",
        s.bytes_received
    );
    metric(
        &mut out,
        "wsbeat_messages_total",
        "counter",
        "Text messages sent (stdin lines) and received.",
    );
    let _ = writeln!(
        out,
        "wsbeat_messages_total{{direction=\"sent\"}} {}",
        s.messages_sent
    );
    let _ = writeln!(
        out,
        "wsbeat_messages_total{{direction=\"received\"}} {}",
        s.messages_received
    );
    metric(
        &mut out,
        "wsbeat_dropped_messages_total",
        "counter",
        "Stdin lines dropped from a full queue while disconnected.",
    );
    let _ = writeln!(out, "wsbeat_dropped_messages_total {}", s.dropped);
    metric(
        &mut out,
        "wsbeat_resent_messages_total",
        "counter",
        "Lines sent again because a link died before the peer's TCP acknowledged them.",
    );
    let _ = writeln!(out, "wsbeat_resent_messages_total {}", s.resent);
    metric(
        &mut out,
        "wsbeat_state_since_timestamp_seconds",
        "gauge",
        "When the current state (connecting, connected, backoff, stopped) began.",
    );
    let _ = writeln!(
        out,
        "wsbeat_state_since_timestamp_seconds {:.3}",
        s.state_since_seconds
    );
    if let Some(local) = &s.local {
        render_local(&mut out, local);
    }
    out
}

/// The local socket's metrics.
fn render_local(out: &mut String, local: &LocalCounts) {
    metric(
        out,
        "wsbeat_local_clients",
        "gauge",
        "Programs connected to the local socket now.",
    );
    let _ = writeln!(out, "wsbeat_local_clients {}", local.clients);
    metric(
        out,
        "wsbeat_undelivered_messages_total",
        "counter",
        "Received messages dropped while no local client was connected.",
    );
    let _ = writeln!(
        out,
        "wsbeat_undelivered_messages_total {}",
        local.undelivered
    );
    metric(
        out,
        "wsbeat_local_lagging_disconnects_total",
        "counter",
        "Local clients disconnected for falling more than --queue-bytes behind.",
    );
    let _ = writeln!(
        out,
        "wsbeat_local_lagging_disconnects_total {}",
        local.lagging
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_help_type_and_a_sample() {
        let mut snapshot = Snapshot {
            connected: true,
            reconnects: 2,
            heartbeats: 118,
            rtt_seconds: Some(0.0123),
            ping_interval_seconds: 20.0,
            bytes_sent: 14230,
            bytes_received: 13988,
            messages_sent: 5,
            messages_received: 7,
            dropped: 1,
            state_since_seconds: 1_764_100_000.5,
            ..Snapshot::default()
        };
        snapshot.count_failure(FailureReason::Timeout);
        snapshot.count_failure(FailureReason::Timeout);
        let text = render(&snapshot);
        for name in [
            "wsbeat_connected",
            "wsbeat_reconnects_total",
            "wsbeat_connect_failures_total",
            "wsbeat_heartbeats_total",
            "wsbeat_heartbeat_rtt_seconds",
            "wsbeat_ping_interval_seconds",
            "wsbeat_bytes_total",
            "wsbeat_messages_total",
            "wsbeat_dropped_messages_total",
            "wsbeat_state_since_timestamp_seconds",
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
        assert!(text.contains("wsbeat_connect_failures_total{reason=\"timeout\"} 2\n"));
        assert!(text.contains("wsbeat_connect_failures_total{reason=\"proxy\"} 0\n"));
        assert!(text.contains("wsbeat_bytes_total{direction=\"received\"} 13988\n"));
        assert!(text.contains("wsbeat_heartbeat_rtt_seconds 0.0123\n"));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn the_local_socket_metrics_only_with_a_local_socket() {
        let names = [
            "wsbeat_local_clients",
            "wsbeat_undelivered_messages_total",
            "wsbeat_local_lagging_disconnects_total",
        ];
        let text = render(&Snapshot::default());
        assert!(names.iter().all(|name| !text.contains(name)), "{text}");
        let text = render(&Snapshot {
            local: Some(LocalCounts {
                clients: 3,
                undelivered: 7,
                lagging: 1,
            }),
            ..Snapshot::default()
        });
        for name in names {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
        assert!(text.contains("\nwsbeat_local_clients 3\n"));
        assert!(text.contains("\nwsbeat_undelivered_messages_total 7\n"));
        assert!(text.contains("\nwsbeat_local_lagging_disconnects_total 1\n"));
    }

    #[test]
    fn no_round_trip_yet_is_nan() {
        let text = render(&Snapshot::default());
        assert!(text.contains("wsbeat_heartbeat_rtt_seconds NaN\n"));
        assert!(text.contains("wsbeat_connected 0\n"));
    }
}
