//! The vocabulary the client's threads share: connection ids, the events they
//! send the supervisor (most of them the machine's own inputs, carried as they
//! are), the observer that receives what the server says, and how a run ends. A leaf module, so the per-connection threads and the
//! supervisor depend on it instead of on each other.

use crate::error::ConnectError;
use crate::net::stream::Connection;
pub use crate::report::observer::Observer;
pub use crate::rules::machine::{ConnId, Ending, Input};

/// Everything that wakes the supervisor.
pub enum Event {
    /// A connect attempt ended: upgraded, or failed.
    AttemptEnded {
        /// The attempt.
        conn: ConnId,
        /// The connection, or why there is none.
        result: Result<Box<Connection>, ConnectError>,
    },
    /// What the machine takes as it is: a connection proven, closed by the
    /// server or dead, and the stop request.
    Input(Input),
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
}
