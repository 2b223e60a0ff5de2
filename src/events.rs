//! The vocabulary the client's threads share: connection ids, the events they
//! send the supervisor, the observer that receives what the server says, and
//! how a run ends. A leaf module, so the per-connection threads and the
//! supervisor depend on it instead of on each other.

use std::time::Duration;

use crate::error::ConnectError;
use crate::status_file::Status;
use crate::transport::Connection;

/// Identifies one connection attempt; every event carries it, so a late event
/// from a connection already torn down is recognised and ignored.
pub type ConnId = u64;

/// Everything that wakes the supervisor.
pub enum Event {
    /// A connect attempt finished.
    Connected {
        /// The attempt.
        conn: ConnId,
        /// The connection, or why there is none.
        result: Result<Box<Connection>, ConnectError>,
    },
    /// The connection answered its first heartbeat (or, heartbeat off, sent anything).
    Proven {
        /// Connection.
        conn: ConnId,
        /// The round trip of that heartbeat, if it was a matching pong.
        rtt: Option<Duration>,
    },
    /// The server closed the connection with a Close frame (already answered).
    Closed {
        /// Connection.
        conn: ConnId,
        /// Close code, if the frame had one.
        code: Option<u16>,
        /// Close reason.
        reason: String,
    },
    /// The connection failed (heartbeat unanswered, read or write error, oversized message).
    Dead {
        /// Connection.
        conn: ConnId,
        /// Why, one line.
        reason: String,
        /// It died after this long with nothing received (a heartbeat after that gap
        /// went unanswered, or the peer dropped it in the middle of the gap); `None`
        /// if that is not what happened. Evidence for the adaptive heartbeat.
        idle: Option<Duration>,
    },
    /// What `--ping-interval auto` learned changed (`--state-dir` keeps it).
    Learned,
    /// The kernel reported an address, link or route change.
    Link(crate::linkwatch::LinkEvent),
    /// Input ended; nothing to do but note it.
    InputClosed,
    /// SIGHUP: re-read files, reconnect at once.
    Reload,
    /// SIGTERM/SIGINT: close with 1001 and stop.
    Terminate,
}

/// Receives what the client gets from the server, and its state changes.
pub trait Observer: Send + Sync {
    /// A text message from the server (heartbeat replies excluded). Called on the
    /// delivery thread, never on the reader: it may take its time (received
    /// messages wait in a buffer bounded by `--queue-bytes`, and when that is full
    /// the client stops reading from the server).
    fn message(&self, text: &str);
    /// Several messages at once, in order; by default [`message`](Observer::message) each.
    fn messages(&self, texts: &[String]) {
        for text in texts {
            self.message(text);
        }
    }
    /// The client is stopping and will not wait any longer: a `message` call that
    /// is blocked (on a stdout nobody reads) should return soon.
    fn interrupt(&self) {}
    /// The state changed (connecting, connected, backoff, stopped).
    fn state(&self, _status: &Status) {}
    /// A heartbeat was answered after `rtt`. Called on the reader thread; keep it short.
    fn heartbeat(&self, _rtt: Duration) {}
}

/// How [`Supervisor::run`](crate::supervisor::Supervisor::run) ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// Stopped on request (signal or [`Handle::stop`](crate::supervisor::Handle::stop)).
    Stopped,
    /// `--max-retries` attempts in a row failed; the last error.
    GaveUp(String),
    /// `--once`: the heartbeat was answered after this round trip.
    ProbeAnswered(Duration),
    /// `--once`: it was not; why.
    ProbeFailed(String),
}
