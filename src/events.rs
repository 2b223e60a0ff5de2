//! The vocabulary the client's threads share: connection ids, the events they
//! send the supervisor, the observer that receives what the server says, and
//! how a run ends. A leaf module, so the per-connection threads and the
//! supervisor depend on it instead of on each other.

use std::time::Duration;

use crate::error::ConnectError;
use crate::net::stream::Connection;
pub use crate::report::observer::Observer;
pub use crate::rules::machine::{ConnId, Ending};

/// Everything that wakes the supervisor.
pub enum Event {
    /// A connect attempt ended: upgraded, or failed.
    AttemptEnded {
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
    Link(crate::net::linkwatch::LinkEvent),
    /// Input ended; nothing to do but note it.
    InputClosed,
    /// The local socket's counts changed: the status is written again.
    LocalChanged,
    /// SIGHUP: re-read files, reconnect at once.
    Reload,
    /// SIGTERM/SIGINT: close with 1001 and stop.
    Terminate,
}
