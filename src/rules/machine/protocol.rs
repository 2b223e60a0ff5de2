//! What goes into the machine and what comes out: the configuration it needs
//! ([`Settings`]), what happened ([`Input`]), what to do ([`Action`]), and the
//! vocabulary it owns (connection ids, states, how a run ends). Plain data.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::CloseCode;

use crate::error::{ConnectError, FailureReason};
use crate::rules::adaptive::Evidence;

/// Identifies one connection attempt; every event carries it, so a late event
/// from a connection already torn down is recognised and ignored.
pub type ConnId = u64;

/// The connection state named by `state=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Resolving, connecting, TLS or upgrade in progress.
    Connecting,
    /// Upgraded; heartbeats are running.
    Connected,
    /// Waiting before the next connection attempt.
    Backoff,
    /// Shut down (signal, `--max-retries` exhausted).
    Stopped,
}

impl State {
    /// The word written to the status file.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Connected => "connected",
            State::Backoff => "backoff",
            State::Stopped => "stopped",
        }
    }
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

/// With the heartbeat off, a connection this old counts as proven alive.
pub const QUIET_PROOF: Duration = Duration::from_secs(10);
/// From SIGTERM/SIGINT to exit: the contract's "wait at most 2 s for the server's
/// Close", less a margin for joining the threads afterwards.
pub const STOP_BUDGET: Duration = Duration::from_millis(1800);
/// How long an ending other than a stop (gave up, `--once` decided) waits for
/// abandoned connect threads (stuck in DNS) and for the output to drain.
pub const LEAVE_GRACE: Duration = Duration::from_secs(2);
/// Bound on writing the Close of a SIGHUP reload.
pub const RELOAD_CLOSE_WRITE: Duration = Duration::from_millis(500);
/// How long a graceful teardown lets the writer thread finish its last write (a
/// Close) before the socket is shut down under it: a write that waits on a read (a
/// TLS renegotiation) is bounded by nothing else.
pub const CLOSE_DRAIN: Duration = Duration::from_millis(500);

/// What the machine needs to know of the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--once`: probe, then end.
    pub once: bool,
    /// `--max-retries`; 0 = never give up.
    pub max_retries: u32,
    /// `--ping-interval 0`: surviving [`QUIET_PROOF`] is the only proof of life.
    pub heartbeat_off: bool,
    /// Half of systemd's `WATCHDOG_USEC`, if set.
    pub watchdog: Option<Duration>,
    /// How often the status is refreshed between state changes; `None` when
    /// nothing reads it (no status file, no systemd), so an idle client sleeps.
    pub refresh: Option<Duration>,
}

/// What happened, as the driver reports it.
#[derive(Debug)]
pub enum Input {
    /// The attempt's thread runs, with this deadline (from after the TLS set-up).
    AttemptStarted {
        /// The attempt.
        conn: ConnId,
        /// When the attempt itself gives up.
        deadline: Instant,
    },
    /// The attempt upgraded; the driver holds the connection.
    Connected {
        /// The attempt.
        conn: ConnId,
    },
    /// The attempt failed (or could not start, or its connection could not be served).
    ConnectFailed {
        /// The attempt.
        conn: ConnId,
        /// Why.
        error: ConnectError,
    },
    /// The connection answered its first heartbeat.
    Proven {
        /// Connection.
        conn: ConnId,
        /// That heartbeat's round trip, if it was a matching pong.
        rtt: Option<Duration>,
    },
    /// The server closed with a Close frame (already answered).
    Closed {
        /// Connection.
        conn: ConnId,
        /// Its code, if any.
        code: Option<u16>,
        /// Its reason.
        reason: String,
    },
    /// The connection failed.
    Dead {
        /// Connection.
        conn: ConnId,
        /// Why, one line.
        reason: String,
        /// It died after this long with nothing received (evidence for the adaptive
        /// heartbeat), if that is how it died.
        idle: Option<Duration>,
    },
    /// A [`Action::Teardown`] has finished.
    TornDown,
    /// SIGHUP. `writes_idle`: no line is being written (else the Close could queue
    /// behind a write to a peer that stopped reading).
    Reload {
        /// Nothing queued or being written.
        writes_idle: bool,
    },
    /// SIGTERM / SIGINT.
    Terminate,
    /// A new address or default route appeared: the network may be back.
    NetworkChanged,
    /// The kernel removed a local address.
    AddressRemoved {
        /// The address.
        addr: IpAddr,
    },
    /// An interface went down.
    LinkDown {
        /// Its index.
        index: u32,
        /// Its name, if known.
        name: Option<String>,
    },
    /// The connection of [`Action::Activate`] is served: its threads run, from this
    /// local address (and its interface), which the link changes are held against.
    Serving {
        /// Connection.
        conn: ConnId,
        /// Local address and interface index, if known.
        local: Option<(IpAddr, Option<u32>)>,
    },
    /// The live connection's liveness was judged alive; judge it again at `at`.
    LivenessAt {
        /// Connection.
        conn: ConnId,
        /// The next check; `None`: nothing to wait for (heartbeat off, no write).
        at: Option<Instant>,
    },
}

/// What the driver must do, in order.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Start attempt `conn` (re-read the header file, set up TLS, spawn the thread),
    /// then report [`Input::AttemptStarted`] or [`Input::ConnectFailed`].
    StartAttempt {
        /// The new attempt.
        conn: ConnId,
    },
    /// Cut attempt `conn` short; join its thread when it reports. With `timed_out`,
    /// report [`Input::ConnectFailed`] with the stage that ran out.
    Abandon {
        /// The attempt.
        conn: ConnId,
        /// The connect deadline passed (else: a stop or reload).
        timed_out: bool,
    },
    /// Serve the connection of attempt `conn` (reader and writer threads), then
    /// report [`Input::Serving`] (or [`Input::ConnectFailed`]).
    Activate {
        /// The attempt.
        conn: ConnId,
    },
    /// Drop the connection of a stale attempt unused.
    Discard {
        /// The attempt.
        conn: ConnId,
    },
    /// Send a Close on the live connection; `write_bound` caps the socket's write timeout.
    Close {
        /// Close code.
        code: CloseCode,
        /// Close reason.
        reason: &'static str,
        /// A shorter write timeout for this Close.
        write_bound: Option<Duration>,
    },
    /// End the live connection and join its threads; `graceful` lets a queued Close
    /// go out first, otherwise the socket is shut down at once. Then report [`Input::TornDown`].
    Teardown {
        /// Let queued writes go out first.
        graceful: bool,
    },
    /// SIGHUP: re-read the TLS files.
    ReloadFiles,
    /// The state, last error or reconnect count changed: status file, `STATUS=`, observer.
    Publish,
    /// Periodic: re-read round trip and drop count, publish if they changed.
    Refresh,
    /// `WATCHDOG=1`.
    Watchdog,
    /// `STOPPING=1`.
    NotifyStopping,
    /// Count a failed attempt in the metrics, by reason.
    CountFailure(FailureReason),
    /// Tell the adaptive heartbeat (if any) what happened to the current
    /// connection or attempt. [`Evidence::Reconnected`] comes before the
    /// [`Action::Activate`] of that connection: its network path decides where the
    /// learning resumes, before the first heartbeat.
    Learn(Evidence),
    /// Judge the live connection's liveness now (heartbeat answers, blocked
    /// writes), then report [`Input::LivenessAt`] or [`Input::Dead`]. The driver
    /// judges from the shared bookkeeping, never from inside a socket call, so a
    /// thread stuck in I/O cannot hold the verdict back.
    CheckLiveness {
        /// Connection.
        conn: ConnId,
    },
    /// The run is over; nothing follows.
    Exit(Ending),
}

/// A delay the way the logs say it.
pub fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}
