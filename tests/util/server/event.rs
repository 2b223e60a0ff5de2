//! What the server saw: one [`Event`] per accept, upgrade, frame or disconnect.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// TCP accepted.
    Accepted,
    /// Upgrade completed.
    Upgraded {
        /// Request path and query.
        path: String,
        /// Request headers, names lower-cased, in order.
        headers: Vec<(String, String)>,
        /// Requested subprotocols (`Sec-WebSocket-Protocol`, split on commas).
        subprotocols: Vec<String>,
        /// Common name of the client's TLS certificate, if one was presented.
        client_cert_cn: Option<String>,
    },
    /// Upgrade request answered with this status instead.
    Rejected {
        /// The status sent.
        status: u16,
    },
    /// A text message from the client.
    Text(String),
    /// A binary message from the client.
    Binary(Vec<u8>),
    /// A Ping from the client, with its payload.
    Ping(Vec<u8>),
    /// A Pong from the client; `latency` is set when it answers one of the server's Pings.
    Pong {
        /// Payload.
        payload: Vec<u8>,
        /// Time since the matching server Ping was written.
        latency: Option<Duration>,
    },
    /// A Close frame from the client.
    Close {
        /// Status code, if any.
        code: Option<u16>,
        /// Reason.
        reason: String,
    },
    /// The client closed TCP, or the connection failed (also after a Close exchange).
    Disconnected,
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Connection id (TCP accept order, from 0).
    pub conn: usize,
    /// When the server saw it.
    pub at: Instant,
    /// What it was.
    pub kind: Kind,
}

impl Event {
    /// The text, if this is a [`Kind::Text`].
    pub fn text(&self) -> Option<&str> {
        match &self.kind {
            Kind::Text(t) => Some(t),
            _ => None,
        }
    }

    /// Whether this is an upgrade.
    pub fn is_upgraded(&self) -> bool {
        matches!(self.kind, Kind::Upgraded { .. })
    }

    /// Whether this is a TCP accept.
    pub fn is_accepted(&self) -> bool {
        matches!(self.kind, Kind::Accepted)
    }

    /// Whether this is a Ping.
    pub fn is_ping(&self) -> bool {
        matches!(self.kind, Kind::Ping(_))
    }

    /// The request header `name` (case-insensitive), if this is an upgrade carrying it.
    pub fn header(&self, name: &str) -> Option<&str> {
        match &self.kind {
            Kind::Upgraded { headers, .. } => headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}
