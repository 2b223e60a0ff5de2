//! Counters of what went over the wire, shared by the socket, the reader, the
//! writer and the supervisor (which reports them in the status and metrics files).
//! Relaxed atomics: each counter is read on its own, for a report.

use std::sync::atomic::{AtomicU64, Ordering};

/// Since start, across connections.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Bytes written to sockets (WebSocket frames, and TLS records on `wss://`,
    /// handshakes included).
    pub bytes_sent: AtomicU64,
    /// Bytes read from sockets.
    pub bytes_received: AtomicU64,
    /// Heartbeats sent.
    pub heartbeats: AtomicU64,
    /// Text messages sent (lines).
    pub messages_sent: AtomicU64,
    /// Text messages received.
    pub messages_received: AtomicU64,
    /// Lines queued again because a connection died before the peer's TCP
    /// acknowledged them.
    pub resent: AtomicU64,
}

impl Traffic {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value of `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
