//! The supervisor's decisions as a state machine that does no I/O and reads no
//! clock (in the style of quinn-proto and rumqttc's state): it takes inputs with
//! the time they happened and yields [`Action`]s for the driver
//! ([`crate::supervisor`]) to carry out, and its next deadline from a table of
//! named [`Timer`]s. Randomness comes in through [`Random`].
//!
//! Phases: `Connecting` (an attempt runs) → `Connected` (reader and writer run)
//! → `Backoff` (waiting to retry) → `Connecting`…, and `Stopped` at the end.
//! Rules that live here:
//! - reconnect delays (full jitter, 401/403, `Retry-After`), counted from the end
//!   of the teardown ([`Input::TornDown`]): after a server restart a whole fleet
//!   tears down at once, and a delay spent inside a slow teardown would bunch
//!   them up again;
//! - a network change (new address or default route) cuts a plain backoff wait
//!   once, never a wait the server asked for (`Retry-After`, 401/403/407);
//! - the backoff counter resets once a connection proves alive (first heartbeat
//!   answered, or with the heartbeat off [`QUIET_PROOF`] up);
//! - `--max-retries` counts failed attempts in a row; an upgraded attempt breaks the row;
//! - SIGHUP closes (or, with writes in flight, cuts) and dials again at once;
//!   SIGTERM closes with 1001 and gives the server [`STOP_BUDGET`] to answer;
//! - `--once` ends with the first matching answer or the first failure;
//! - the watchdog is fed in every phase, outages included.

use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::CloseCode;

use crate::backoff::{Backoff, Failure, Random};
use crate::error::ConnectError;
use crate::events::{ConnId, Ending};
use crate::status_file::State;

/// With the heartbeat off, a connection this old counts as proven alive.
pub const QUIET_PROOF: Duration = Duration::from_secs(10);
/// From SIGTERM/SIGINT to exit: the contract's "wait at most 2 s for the server's
/// Close", less a margin for joining the threads afterwards.
pub const STOP_BUDGET: Duration = Duration::from_millis(1800);
/// Bound on writing the Close of a SIGHUP reload.
pub const RELOAD_CLOSE_WRITE: Duration = Duration::from_millis(500);
/// How long a graceful teardown lets the heartbeat thread finish its last write (a
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
    Dialing {
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
    /// then report [`Input::Dialing`] or [`Input::ConnectFailed`].
    Dial {
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
    /// Serve the connection of attempt `conn` (reader and writer threads).
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

/// The machine's named deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Backoff over: dial again (or, stopping, exit).
    Reconnect,
    /// The attempt ran past `--connect-timeout`: it is cut short whatever its
    /// thread is doing (a peer that drips handshake bytes never lets a read time out).
    ConnectGiveUp,
    /// A Close was sent; the server's answer is due.
    CloseWait,
    /// Heartbeat off: the connection has been up [`QUIET_PROOF`].
    QuietProof,
    /// The live connection's heartbeat answer or blocked write is due for judging.
    Liveness,
    /// systemd's watchdog is due.
    Watchdog,
    /// The status is due for a refresh.
    StatusRefresh,
}

#[derive(Debug)]
enum Phase {
    /// Between a teardown and the decision what comes next.
    Idle,
    Connecting {
        conn: ConnId,
        give_up_at: Option<Instant>,
    },
    Connected {
        conn: ConnId,
        since: Instant,
        closing_until: Option<Instant>,
        quiet_proven: bool,
        /// When the liveness is judged next.
        check_at: Option<Instant>,
    },
    Backoff {
        /// `None` until the teardown before it has finished.
        until: Option<Instant>,
        delay: Duration,
        /// Whether a network change may still cut this wait short.
        cut: Cut,
    },
    Stopped,
}

/// Whether a network change may cut a backoff wait short (SPEC "Network changes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// A plain backoff wait, not cut yet.
    Allowed,
    /// Cut once already: one draw per wait, or a flapping address would draw again
    /// and again until one lands near zero.
    Done,
    /// The server asked for this wait (`Retry-After`, or refused the credentials):
    /// a change of our network changes nothing for the server. Names why.
    Never(&'static str),
}

/// The reconnect loop's state. See the module documentation.
pub struct Machine {
    settings: Settings,
    backoff: Backoff,
    random: Box<dyn Random + Send>,
    phase: Phase,
    next_conn: ConnId,
    failures_in_row: u32,
    connects: u64,
    stop_by: Option<Instant>,
    watchdog_at: Option<Instant>,
    refresh_at: Option<Instant>,
    state: State,
    last_error: Option<String>,
    url: String,
    actions: Vec<Action>,
}

impl Machine {
    /// A machine before [`start`](Machine::start). `url` only names the server in logs.
    pub fn new(
        settings: Settings,
        backoff: Backoff,
        random: Box<dyn Random + Send>,
        url: String,
    ) -> Machine {
        Machine {
            settings,
            backoff,
            random,
            phase: Phase::Idle,
            next_conn: 0,
            failures_in_row: 0,
            connects: 0,
            stop_by: None,
            watchdog_at: None,
            refresh_at: None,
            state: State::Connecting,
            last_error: None,
            url,
            actions: Vec::new(),
        }
    }

    /// Replaces the settings (before [`start`](Machine::start)).
    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = settings;
    }

    /// Replaces the random source.
    pub fn set_random(&mut self, random: Box<dyn Random + Send>) {
        self.random = random;
    }

    /// The state for `state=`.
    pub fn state(&self) -> State {
        self.state
    }

    /// The last error for `last_error=`.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Successful connects after the first.
    pub fn reconnects(&self) -> u64 {
        self.connects.saturating_sub(1)
    }

    /// When a stop must be over, once SIGTERM came.
    pub fn stop_by(&self) -> Option<Instant> {
        self.stop_by
    }

    /// The attempt under way, if any.
    pub fn attempt(&self) -> Option<ConnId> {
        match self.phase {
            Phase::Connecting { conn, .. } => Some(conn),
            _ => None,
        }
    }

    /// The connection being served, if any.
    pub fn active(&self) -> Option<ConnId> {
        match self.phase {
            Phase::Connected { conn, .. } => Some(conn),
            _ => None,
        }
    }

    /// Every timer and when it fires.
    pub fn timers(&self) -> [(Timer, Option<Instant>); 7] {
        let (reconnect, give_up, close_wait, quiet, check) = match &self.phase {
            Phase::Backoff { until, .. } => (*until, None, None, None, None),
            Phase::Connecting { give_up_at, .. } => (None, *give_up_at, None, None, None),
            Phase::Connected {
                since,
                closing_until,
                quiet_proven,
                check_at,
                ..
            } => {
                let quiet =
                    (self.settings.heartbeat_off && !quiet_proven).then(|| *since + QUIET_PROOF);
                (None, None, *closing_until, quiet, *check_at)
            }
            Phase::Idle | Phase::Stopped => (None, None, None, None, None),
        };
        [
            (Timer::Reconnect, reconnect),
            (Timer::ConnectGiveUp, give_up),
            (Timer::CloseWait, close_wait),
            (Timer::QuietProof, quiet),
            (Timer::Liveness, check),
            (Timer::Watchdog, self.watchdog_at),
            (Timer::StatusRefresh, self.refresh_at),
        ]
    }

    /// The earliest timer; `None`: wait for an input.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers().iter().filter_map(|&(_, at)| at).min()
    }

    /// The run begins: the first attempt starts at once.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        self.watchdog_at = self.settings.watchdog.map(|interval| now + interval);
        self.dial(now);
        self.take_actions()
    }

    /// Timers that have fired by `now`.
    pub fn on_time(&mut self, now: Instant) -> Vec<Action> {
        if let Some(at) = self.watchdog_at.filter(|&at| now >= at) {
            self.actions.push(Action::Watchdog);
            let interval = self.settings.watchdog.unwrap_or(Duration::from_secs(1));
            self.watchdog_at = Some((at + interval).max(now));
        }
        if self.refresh_at.is_some_and(|at| now >= at) {
            self.actions.push(Action::Refresh);
            self.schedule_refresh(now);
        }
        match &mut self.phase {
            Phase::Backoff {
                until: Some(until), ..
            } if now >= *until => {
                if self.stop_by.is_some() {
                    self.exit(Ending::Stopped, now);
                } else {
                    self.dial(now);
                }
            }
            Phase::Connecting {
                conn,
                give_up_at: Some(at),
            } if now >= *at => {
                let conn = *conn;
                // Fired once: the driver answers with the failure and its stage.
                self.phase = Phase::Connecting {
                    conn,
                    give_up_at: None,
                };
                self.actions.push(Action::Abandon {
                    conn,
                    timed_out: true,
                });
            }
            Phase::Connected {
                conn,
                since,
                closing_until,
                quiet_proven,
                check_at,
            } => {
                if check_at.is_some_and(|at| now >= at) {
                    // Fired once: the driver answers with the next check or the death.
                    *check_at = None;
                    self.actions.push(Action::CheckLiveness { conn: *conn });
                }
                if closing_until.is_some_and(|until| now >= until) {
                    let reason = "server did not answer our Close in time".to_string();
                    self.connection_lost(reason, false, now);
                } else if self.settings.heartbeat_off
                    && !*quiet_proven
                    && now >= *since + QUIET_PROOF
                {
                    // Heartbeat off: surviving this long is the only proof available.
                    *quiet_proven = true;
                    self.backoff.reset();
                    self.failures_in_row = 0;
                }
            }
            _ => {}
        }
        self.take_actions()
    }

    /// Something happened at `now`.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        match input {
            Input::Dialing { conn, deadline } => {
                if let Phase::Connecting {
                    conn: current,
                    give_up_at,
                } = &mut self.phase
                {
                    if *current == conn {
                        *give_up_at = Some(deadline);
                    }
                }
            }
            Input::Connected { conn } => self.on_connected(conn, now),
            Input::ConnectFailed { conn, error } => match self.phase {
                Phase::Connecting { conn: current, .. } if current == conn => {
                    self.connect_failed(error, now);
                }
                Phase::Connected { conn: current, .. } if current == conn => {
                    // Its threads could not start: it never served, so it is no connect.
                    self.connects = self.connects.saturating_sub(1);
                    self.connect_failed(error, now);
                }
                // A late report from an abandoned attempt.
                _ => {}
            },
            Input::Proven { conn, rtt } => self.on_proven(conn, rtt, now),
            Input::Closed { conn, code, reason } => self.on_closed(conn, code, reason, now),
            Input::Dead { conn, reason } => {
                if let Some(closing) = self.closing(conn) {
                    if self.settings.once && !closing {
                        self.teardown(false);
                        self.exit(Ending::ProbeFailed(reason), now);
                    } else {
                        self.connection_lost(reason, false, now);
                    }
                }
            }
            Input::TornDown => {
                if let Phase::Backoff { until, delay, .. } = &mut self.phase {
                    if until.is_none() {
                        *until = Some(now + *delay);
                    }
                }
            }
            Input::Reload { writes_idle } => self.reload(writes_idle, now),
            Input::Terminate => self.terminate(now),
            Input::NetworkChanged => self.network_changed(now),
            Input::LivenessAt { conn, at } => {
                if let Phase::Connected {
                    conn: current,
                    check_at,
                    ..
                } = &mut self.phase
                {
                    if *current == conn {
                        *check_at = at;
                    }
                }
            }
        }
        self.take_actions()
    }

    fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Whether `conn` is the live connection, and if so whether it is closing.
    fn closing(&self, conn: ConnId) -> Option<bool> {
        match &self.phase {
            Phase::Connected {
                conn: current,
                closing_until,
                ..
            } if *current == conn => Some(closing_until.is_some()),
            _ => None,
        }
    }

    fn dial(&mut self, now: Instant) {
        self.next_conn += 1;
        self.phase = Phase::Connecting {
            conn: self.next_conn,
            give_up_at: None,
        };
        self.set_state(State::Connecting, now);
        self.actions.push(Action::Dial {
            conn: self.next_conn,
        });
    }

    fn on_connected(&mut self, conn: ConnId, now: Instant) {
        let current = matches!(self.phase, Phase::Connecting { conn: c, .. } if c == conn);
        if !current {
            // A straggler finished late: its connection is dropped unused.
            self.actions.push(Action::Discard { conn });
            return;
        }
        self.phase = Phase::Connected {
            conn,
            since: now,
            closing_until: None,
            quiet_proven: false,
            check_at: None,
        };
        self.connects += 1;
        // --max-retries counts failed attempts in a row; this one succeeded. (The backoff
        // counter resets only once the connection proves alive.)
        self.failures_in_row = 0;
        self.actions.push(Action::Activate { conn });
        // last_error stays: beside `state=connected` and `reconnects=N` it tells why the
        // last reconnect happened (the contract's example shows exactly that).
        self.set_state(State::Connected, now);
    }

    fn on_proven(&mut self, conn: ConnId, rtt: Option<Duration>, now: Instant) {
        if self.closing(conn).is_none() {
            return;
        }
        if self.settings.once {
            // Strict in probe mode: the first proof is the matching answer, with its round trip.
            let Some(rtt) = rtt else { return };
            self.actions.push(Action::Close {
                code: CloseCode::Normal,
                reason: "",
                write_bound: None,
            });
            self.teardown(true);
            self.exit(Ending::ProbeAnswered(rtt), now);
            return;
        }
        self.backoff.reset();
        self.failures_in_row = 0;
        if let Some(rtt) = rtt {
            log::debug!(
                "first heartbeat answered in {:.1} ms",
                rtt.as_secs_f64() * 1000.0
            );
        }
        self.actions.push(Action::Refresh);
        self.schedule_refresh(now);
    }

    fn on_closed(&mut self, conn: ConnId, code: Option<u16>, reason: String, now: Instant) {
        let Some(closing) = self.closing(conn) else {
            return;
        };
        let code_text = code.map_or("no code".to_string(), |c| c.to_string());
        if closing {
            log::debug!("server answered our Close ({code_text})");
            self.connection_lost("closed".into(), true, now);
            return;
        }
        log::info!("server closed the connection: {code_text} {reason:?}");
        let reason = format!("server closed the connection: {code_text} {reason}");
        if self.settings.once {
            self.teardown(false);
            self.exit(Ending::ProbeFailed(reason), now);
            return;
        }
        self.connection_lost(reason, true, now);
    }

    fn connect_failed(&mut self, error: ConnectError, now: Instant) {
        let failure = match &error {
            ConnectError::Rejected {
                status: 401 | 403, ..
            }
            | ConnectError::Proxy {
                status: Some(401 | 403 | 407),
                ..
            } => {
                log::error!("{}: {error}; check the credentials", self.url);
                Failure::Unauthorized
            }
            ConnectError::Rejected {
                retry_after: Some(after),
                ..
            } => {
                log::warn!("{}: {error}", self.url);
                Failure::RetryAfter(*after)
            }
            _ => {
                log::warn!("{}: {error}", self.url);
                Failure::Normal
            }
        };
        self.phase = Phase::Idle;
        self.last_error = Some(error.to_string());
        if self.settings.once {
            self.exit(Ending::ProbeFailed(error.to_string()), now);
            return;
        }
        self.failures_in_row = self.failures_in_row.saturating_add(1);
        if self.settings.max_retries > 0 && self.failures_in_row >= self.settings.max_retries {
            let reason = format!(
                "giving up after {} failed attempts in a row: {error}",
                self.failures_in_row
            );
            self.exit(Ending::GaveUp(reason), now);
            return;
        }
        self.schedule_retry(failure, Some(now), now);
    }

    /// Backoff with the next delay, counted from `from`, or (`None`) from the end of
    /// the teardown under way.
    fn schedule_retry(&mut self, failure: Failure, from: Option<Instant>, now: Instant) {
        let delay = self.backoff.next_delay(failure, self.random.as_mut());
        log::info!("reconnecting in {}", fmt_duration(delay));
        let cut = match failure {
            Failure::Normal => Cut::Allowed,
            Failure::RetryAfter(_) => Cut::Never("the server asked for it with Retry-After"),
            Failure::Unauthorized => Cut::Never("the credentials were refused"),
        };
        self.phase = Phase::Backoff {
            until: from.map(|from| from + delay),
            delay,
            cut,
        };
        self.set_state(State::Backoff, now);
    }

    /// The live connection ended: tear it down and reconnect (or stop, if stopping).
    fn connection_lost(&mut self, reason: String, graceful: bool, now: Instant) {
        self.teardown(graceful);
        if self.stop_by.is_some() {
            self.exit(Ending::Stopped, now);
            return;
        }
        log::warn!("connection lost: {reason}");
        self.last_error = Some(reason);
        self.schedule_retry(Failure::Normal, None, now);
    }

    fn teardown(&mut self, graceful: bool) {
        if matches!(self.phase, Phase::Connected { .. }) {
            self.actions.push(Action::Teardown { graceful });
            self.phase = Phase::Idle;
        }
    }

    fn reload(&mut self, writes_idle: bool, now: Instant) {
        if matches!(self.phase, Phase::Stopped) || self.stop_by.is_some() {
            return;
        }
        log::info!("SIGHUP: re-reading files and reconnecting");
        self.actions.push(Action::ReloadFiles);
        self.backoff.reset();
        self.failures_in_row = 0;
        match self.phase {
            Phase::Connected { .. } => {
                // With lines still being written the peer may have stopped reading and the
                // Close would queue behind them for up to --pong-timeout: cut the connection
                // instead (unsent lines are kept). Otherwise the Close gets a short bound.
                if writes_idle {
                    self.actions.push(Action::Close {
                        code: CloseCode::Normal,
                        reason: "reload",
                        write_bound: Some(RELOAD_CLOSE_WRITE),
                    });
                }
                self.teardown(writes_idle);
            }
            Phase::Connecting { conn, .. } => self.actions.push(Action::Abandon {
                conn,
                timed_out: false,
            }),
            _ => {}
        }
        self.dial(now);
    }

    /// While waiting to retry, a new address or default route cuts the wait to a
    /// random time in `[0, backoff-initial]`: the link is probably back, and the
    /// draw (the attempt counter unchanged) keeps a fleet that regains its link
    /// together from returning in lock-step. At most once per wait, and never a
    /// wait the server asked for; the events that change nothing are logged at
    /// debug, as a flapping interface sends many.
    fn network_changed(&mut self, now: Instant) {
        if self.stop_by.is_some() {
            return;
        }
        let Phase::Backoff {
            until: Some(until),
            cut,
            ..
        } = &mut self.phase
        else {
            return;
        };
        match *cut {
            Cut::Never(why) => {
                log::debug!("network changed: the wait stays, {why}");
            }
            Cut::Done => {
                log::debug!("network changed again: this wait was cut once already");
            }
            Cut::Allowed => {
                *cut = Cut::Done;
                let sooner = now + self.random.below(self.backoff.initial());
                if sooner < *until {
                    log::info!(
                        "network changed: reconnecting in {}",
                        fmt_duration(sooner - now)
                    );
                    *until = sooner;
                } else {
                    log::debug!("network changed: the wait ends sooner anyway");
                }
            }
        }
    }

    fn terminate(&mut self, now: Instant) {
        if self.stop_by.is_some() || matches!(self.phase, Phase::Stopped) {
            return;
        }
        let stop_by = now + STOP_BUDGET;
        self.stop_by = Some(stop_by);
        self.actions.push(Action::NotifyStopping);
        match &mut self.phase {
            Phase::Connected { closing_until, .. } => {
                log::info!("stopping: closing the connection (1001)");
                *closing_until = Some(stop_by);
                self.actions.push(Action::Close {
                    code: CloseCode::Away,
                    reason: "shutting down",
                    write_bound: None,
                });
            }
            Phase::Connecting { conn, .. } => {
                let conn = *conn;
                self.actions.push(Action::Abandon {
                    conn,
                    timed_out: false,
                });
                self.exit(Ending::Stopped, now);
            }
            _ => self.exit(Ending::Stopped, now),
        }
    }

    fn exit(&mut self, ending: Ending, now: Instant) {
        self.teardown(false);
        if !matches!(ending, Ending::Stopped) {
            self.actions.push(Action::NotifyStopping);
        }
        if let Ending::GaveUp(reason) | Ending::ProbeFailed(reason) = &ending {
            self.last_error = Some(reason.clone());
        }
        self.set_state(State::Stopped, now);
        self.phase = Phase::Stopped;
        self.refresh_at = None;
        self.watchdog_at = None;
        self.actions.push(Action::Exit(ending));
    }

    fn set_state(&mut self, state: State, now: Instant) {
        self.state = state;
        self.actions.push(Action::Publish);
        self.schedule_refresh(now);
    }

    fn schedule_refresh(&mut self, now: Instant) {
        self.refresh_at = self.settings.refresh.map(|every| now + every);
    }
}

/// A delay the way the logs say it.
pub fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Stage;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Always draws the largest delay allowed, so waits are exact.
    struct Longest;

    impl Random for Longest {
        fn below(&mut self, max: Duration) -> Duration {
            max
        }
    }

    fn settings() -> Settings {
        Settings {
            once: false,
            max_retries: 0,
            heartbeat_off: false,
            watchdog: None,
            refresh: None,
        }
    }

    /// A machine and a virtual clock; the driver's part is played by the test.
    struct Run {
        machine: Machine,
        now: Instant,
    }

    impl Run {
        fn new(settings: Settings) -> Run {
            Run {
                machine: Machine::new(
                    settings,
                    Backoff::new(secs(1), secs(60)),
                    Box::new(Longest),
                    "ws://test/".into(),
                ),
                now: Instant::now(),
            }
        }

        fn start(&mut self) -> Vec<Action> {
            let now = self.now;
            self.machine.start(now)
        }

        fn input(&mut self, input: Input) -> Vec<Action> {
            let now = self.now;
            self.machine.handle(input, now)
        }

        /// Jumps the clock to the next deadline and fires it.
        fn next(&mut self) -> (Duration, Vec<Action>) {
            let at = self.machine.next_deadline().expect("a deadline");
            let waited = at.saturating_duration_since(self.now);
            self.now = self.now.max(at);
            let now = self.now;
            (waited, self.machine.on_time(now))
        }

        fn advance(&mut self, by: Duration) -> Vec<Action> {
            self.now += by;
            let now = self.now;
            self.machine.on_time(now)
        }

        fn dialed(actions: &[Action]) -> ConnId {
            actions
                .iter()
                .find_map(|a| match a {
                    Action::Dial { conn } => Some(*conn),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("no Dial in {actions:?}"))
        }

        /// Dials, connects, and returns the live connection's id.
        fn connect(&mut self, conn: ConnId) {
            let deadline = self.now + secs(10);
            self.input(Input::Dialing { conn, deadline });
            let actions = self.input(Input::Connected { conn });
            assert!(actions.contains(&Action::Activate { conn }), "{actions:?}");
        }

        fn refuse(&mut self, conn: ConnId) -> Vec<Action> {
            self.input(Input::ConnectFailed {
                conn,
                error: ConnectError::Tcp(std::io::ErrorKind::ConnectionRefused.into()),
            })
        }

        /// The connection dies; the teardown ends at once. Returns the next delay.
        fn lose(&mut self, conn: ConnId) -> Duration {
            let actions = self.input(Input::Dead {
                conn,
                reason: "gone".into(),
            });
            assert!(actions.contains(&Action::Teardown { graceful: false }));
            self.input(Input::TornDown);
            let (waited, actions) = self.next();
            Self::dialed(&actions);
            waited
        }
    }

    fn exit_of(actions: &[Action]) -> Option<&Ending> {
        actions.iter().find_map(|a| match a {
            Action::Exit(ending) => Some(ending),
            _ => None,
        })
    }

    #[test]
    fn backoff_doubles_and_resets_once_a_heartbeat_is_answered() {
        let mut run = Run::new(settings());
        let mut conn = Run::dialed(&run.start());
        let mut delays = Vec::new();
        for _ in 0..4 {
            run.connect(conn);
            delays.push(run.lose(conn));
            conn = run.machine.next_conn;
        }
        assert_eq!(delays, [secs(1), secs(2), secs(4), secs(8)]);
        // A connection that proves alive resets the counter.
        run.connect(conn);
        run.input(Input::Proven {
            conn,
            rtt: Some(ms(3)),
        });
        assert_eq!(run.lose(conn), secs(1));
    }

    #[test]
    fn with_the_heartbeat_off_ten_quiet_seconds_are_the_proof() {
        let mut run = Run::new(Settings {
            heartbeat_off: true,
            ..settings()
        });
        let mut conn = Run::dialed(&run.start());
        for _ in 0..3 {
            run.connect(conn);
            run.lose(conn);
            conn = run.machine.next_conn;
        }
        // 9.9 s up is not enough: the next delay keeps growing.
        run.connect(conn);
        run.advance(ms(9_900));
        assert_eq!(run.lose(conn), secs(8));
        conn = run.machine.next_conn;
        run.connect(conn);
        let (waited, _) = run.next();
        assert_eq!(waited, QUIET_PROOF);
        assert_eq!(run.lose(conn), secs(1));
    }

    #[test]
    fn the_delay_counts_from_the_end_of_the_teardown() {
        let mut run = Run::new(settings());
        let conn = Run::dialed(&run.start());
        run.connect(conn);
        run.input(Input::Dead {
            conn,
            reason: "gone".into(),
        });
        assert_eq!(
            run.machine.next_deadline(),
            None,
            "no timer before the teardown ends"
        );
        run.now += secs(5); // a slow teardown
        let torn_down_at = run.now;
        run.input(Input::TornDown);
        assert_eq!(run.machine.next_deadline(), Some(torn_down_at + secs(1)));
    }

    #[test]
    fn max_retries_counts_failures_in_a_row_and_an_upgrade_breaks_the_row() {
        let mut run = Run::new(Settings {
            max_retries: 3,
            ..settings()
        });
        let conn = Run::dialed(&run.start());
        run.refuse(conn);
        let (_, actions) = run.next();
        let conn = Run::dialed(&actions);
        run.refuse(conn);
        // Third attempt upgrades, then dies before proving anything.
        let (_, actions) = run.next();
        let conn = Run::dialed(&actions);
        run.connect(conn);
        run.lose(conn);
        let conn = run.machine.next_conn;
        run.refuse(conn);
        let (_, actions) = run.next();
        let conn = Run::dialed(&actions);
        run.refuse(conn);
        let (_, actions) = run.next();
        let conn = Run::dialed(&actions);
        let actions = run.refuse(conn);
        match exit_of(&actions) {
            Some(Ending::GaveUp(reason)) => {
                assert!(reason.contains("3 failed attempts"), "{reason}")
            }
            other => panic!("expected GaveUp, got {other:?}"),
        }
        assert_eq!(run.machine.state(), State::Stopped);
        assert!(run.machine.last_error().unwrap().contains("giving up"));
    }

    #[test]
    fn unauthorized_waits_between_half_and_all_of_backoff_max() {
        let mut run = Run::new(settings());
        let conn = Run::dialed(&run.start());
        run.input(Input::ConnectFailed {
            conn,
            error: ConnectError::Rejected {
                status: 401,
                retry_after: None,
            },
        });
        assert_eq!(run.next().0, secs(60));
        // And with the smallest draw, half of it.
        let mut run = Run::new(settings());
        run.machine
            .set_random(Box::new(crate::backoff::SplitMix64::new(0)));
        struct Smallest;
        impl Random for Smallest {
            fn below(&mut self, _: Duration) -> Duration {
                Duration::ZERO
            }
        }
        run.machine.set_random(Box::new(Smallest));
        let conn = Run::dialed(&run.start());
        run.input(Input::ConnectFailed {
            conn,
            error: ConnectError::Rejected {
                status: 403,
                retry_after: None,
            },
        });
        assert_eq!(run.next().0, secs(30));
    }

    #[test]
    fn a_proxy_refusing_credentials_waits_like_401() {
        struct Smallest;
        impl Random for Smallest {
            fn below(&mut self, _: Duration) -> Duration {
                Duration::ZERO
            }
        }
        for (status, unauthorized) in [(407, true), (401, true), (403, true), (502, false)] {
            let mut run = Run::new(settings());
            run.machine.set_random(Box::new(Smallest));
            let conn = Run::dialed(&run.start());
            run.input(Input::ConnectFailed {
                conn,
                error: ConnectError::Proxy {
                    proxy: "http://proxy:3128".into(),
                    status: Some(status),
                    detail: format!("HTTP/1.1 {status} No"),
                },
            });
            let expected = if unauthorized {
                secs(30)
            } else {
                Duration::ZERO
            };
            assert_eq!(run.next().0, expected, "proxy answered {status}");
        }
    }

    #[test]
    fn retry_after_waits_that_long_plus_up_to_ten_percent() {
        let mut run = Run::new(settings());
        let conn = Run::dialed(&run.start());
        run.input(Input::ConnectFailed {
            conn,
            error: ConnectError::Rejected {
                status: 503,
                retry_after: Some(secs(120)),
            },
        });
        assert_eq!(run.next().0, secs(132));
    }

    /// Draws these durations in turn (each capped at the `max` asked for), then `max`.
    struct Draws(std::collections::VecDeque<Duration>);

    impl Random for Draws {
        fn below(&mut self, max: Duration) -> Duration {
            self.0.pop_front().map_or(max, |draw| draw.min(max))
        }
    }

    /// After refused attempts with waits of 1, 2 and 4 s, the client waits 8 s.
    fn waiting_eight_seconds() -> Run {
        let mut run = Run::new(settings());
        let mut conn = Run::dialed(&run.start());
        for expected in [1, 2, 4] {
            run.refuse(conn);
            let (waited, actions) = run.next();
            assert_eq!(waited, secs(expected));
            conn = Run::dialed(&actions);
        }
        run.refuse(conn);
        run
    }

    #[test]
    fn a_network_change_cuts_a_plain_wait_once() {
        let mut run = waiting_eight_seconds();
        let draws = [ms(600), ms(10), ms(10), ms(10)];
        run.machine.set_random(Box::new(Draws(draws.into())));
        run.advance(secs(1));
        assert!(run.input(Input::NetworkChanged).is_empty());
        // Cut to the draw from [0, backoff-initial].
        assert_eq!(run.machine.next_deadline(), Some(run.now + ms(600)));
        // A flapping interface: more events, each would draw shorter, none counts.
        for _ in 0..3 {
            run.advance(ms(100));
            run.input(Input::NetworkChanged);
        }
        let (waited, actions) = run.next();
        assert_eq!(
            waited,
            ms(300),
            "one cut only: 600 ms after the first event"
        );
        let conn = Run::dialed(&actions);
        run.machine.set_random(Box::new(Longest));
        // The attempt counter is unchanged: the next wait is the fifth (16 s) ...
        run.refuse(conn);
        assert_eq!(run.machine.next_deadline(), Some(run.now + secs(16)));
        // ... and it is a new wait, which a change may cut once again.
        run.input(Input::NetworkChanged);
        assert_eq!(run.machine.next_deadline(), Some(run.now + secs(1)));
    }

    #[test]
    fn a_network_change_that_draws_longer_than_the_rest_is_the_one_cut() {
        let mut run = waiting_eight_seconds();
        run.advance(ms(7_500));
        // 500 ms are left; the draw is 1 s: the wait stays, and later events draw no more.
        run.input(Input::NetworkChanged);
        run.machine
            .set_random(Box::new(Draws([Duration::ZERO].into())));
        run.input(Input::NetworkChanged);
        assert_eq!(run.machine.next_deadline(), Some(run.now + ms(500)));
    }

    #[test]
    fn a_wait_the_server_asked_for_is_never_cut() {
        let proxy_refused = || ConnectError::Proxy {
            proxy: "http://proxy:3128".into(),
            status: Some(407),
            detail: "HTTP/1.1 407 Proxy Authentication Required".into(),
        };
        let refusals: [(fn() -> ConnectError, Duration); 4] = [
            (
                || ConnectError::Rejected {
                    status: 503,
                    retry_after: Some(secs(120)),
                },
                secs(132),
            ),
            (
                || ConnectError::Rejected {
                    status: 401,
                    retry_after: None,
                },
                secs(60),
            ),
            (
                || ConnectError::Rejected {
                    status: 403,
                    retry_after: Some(secs(5)),
                },
                secs(60),
            ),
            (proxy_refused, secs(60)),
        ];
        for (error, wait) in refusals {
            let mut run = Run::new(settings());
            let conn = Run::dialed(&run.start());
            run.input(Input::ConnectFailed {
                conn,
                error: error(),
            });
            let until = run.now + wait;
            assert_eq!(run.machine.next_deadline(), Some(until), "{:?}", error());
            for _ in 0..5 {
                run.advance(secs(1));
                assert!(run.input(Input::NetworkChanged).is_empty());
            }
            assert_eq!(run.machine.next_deadline(), Some(until), "{:?}", error());
        }
        // A 503 without Retry-After is a plain wait: cut.
        let mut run = Run::new(settings());
        let conn = Run::dialed(&run.start());
        run.input(Input::ConnectFailed {
            conn,
            error: ConnectError::Rejected {
                status: 503,
                retry_after: None,
            },
        });
        run.machine.set_random(Box::new(Draws([ms(200)].into())));
        run.input(Input::NetworkChanged);
        assert_eq!(run.machine.next_deadline(), Some(run.now + ms(200)));
    }

    #[test]
    fn a_stalled_attempt_is_abandoned_at_its_deadline_whatever_its_thread_does() {
        let mut run = Run::new(settings());
        let conn = Run::dialed(&run.start());
        let deadline = run.now + secs(10);
        run.input(Input::Dialing { conn, deadline });
        let (waited, actions) = run.next();
        assert_eq!(waited, secs(10));
        assert_eq!(
            actions,
            [Action::Abandon {
                conn,
                timed_out: true
            }]
        );
        // The driver reports the stage that ran out; a backoff follows.
        let actions = run.input(Input::ConnectFailed {
            conn,
            error: ConnectError::Timeout(Stage::Upgrade),
        });
        assert!(actions.contains(&Action::Publish));
        assert_eq!(run.machine.state(), State::Backoff);
        assert!(run.machine.last_error().unwrap().contains("upgrade"));
        // The real thread's late report is ignored.
        assert!(run.refuse(conn).is_empty());
        assert_eq!(run.machine.state(), State::Backoff);
    }

    #[test]
    fn the_liveness_is_judged_when_the_driver_said_and_once() {
        let mut run = Run::new(settings());
        let conn = Run::dialed(&run.start());
        run.connect(conn);
        run.input(Input::LivenessAt {
            conn,
            at: Some(run.now + secs(30)),
        });
        let (waited, actions) = run.next();
        assert_eq!(waited, secs(30));
        assert_eq!(actions, [Action::CheckLiveness { conn }]);
        // Until the driver answers, nothing more is due.
        assert_eq!(run.machine.next_deadline(), None);
        // A late answer for an older connection changes nothing.
        run.input(Input::LivenessAt {
            conn: conn + 7,
            at: Some(run.now),
        });
        assert_eq!(run.machine.next_deadline(), None);
        // The verdict "dead" ends the connection like any other death.
        let actions = run.input(Input::Dead {
            conn,
            reason: "no heartbeat answer".into(),
        });
        assert!(actions.contains(&Action::Teardown { graceful: false }));
    }

    #[test]
    fn reload_during_a_connect_abandons_it_and_dials_again_at_once() {
        let mut run = Run::new(settings());
        let first = Run::dialed(&run.start());
        let actions = run.input(Input::Reload { writes_idle: true });
        assert_eq!(actions[0], Action::ReloadFiles);
        assert!(actions.contains(&Action::Abandon {
            conn: first,
            timed_out: false
        }));
        let second = Run::dialed(&actions);
        assert_ne!(first, second);
        // The first one's success arrives late: its connection is discarded.
        let actions = run.input(Input::Connected { conn: first });
        assert_eq!(actions, [Action::Discard { conn: first }]);
        run.connect(second);
        assert_eq!(run.machine.active(), Some(second));
    }

    #[test]
    fn reload_while_connected_closes_or_cuts_and_resets_the_backoff() {
        let mut run = Run::new(settings());
        let mut conn = Run::dialed(&run.start());
        for _ in 0..3 {
            run.connect(conn);
            run.lose(conn);
            conn = run.machine.next_conn;
        }
        run.connect(conn);
        let actions = run.input(Input::Reload { writes_idle: true });
        assert!(actions.contains(&Action::Close {
            code: CloseCode::Normal,
            reason: "reload",
            write_bound: Some(RELOAD_CLOSE_WRITE)
        }));
        assert!(actions.contains(&Action::Teardown { graceful: true }));
        let conn = Run::dialed(&actions);
        run.connect(conn);
        // Writes in flight: no Close queued behind them, the socket is cut.
        let actions = run.input(Input::Reload { writes_idle: false });
        assert!(!actions.iter().any(|a| matches!(a, Action::Close { .. })));
        assert!(actions.contains(&Action::Teardown { graceful: false }));
        let conn = Run::dialed(&actions);
        run.connect(conn);
        assert_eq!(run.lose(conn), secs(1), "the backoff was reset");
    }

    #[test]
    fn stop_while_connected_closes_with_1001_and_waits_at_most_the_budget() {
        let mut run = Run::new(settings());
        let conn = Run::dialed(&run.start());
        run.connect(conn);
        let actions = run.input(Input::Terminate);
        assert_eq!(
            actions,
            [
                Action::NotifyStopping,
                Action::Close {
                    code: CloseCode::Away,
                    reason: "shutting down",
                    write_bound: None
                }
            ]
        );
        // The server never answers.
        let (waited, actions) = run.next();
        assert_eq!(waited, STOP_BUDGET);
        assert!(actions.contains(&Action::Teardown { graceful: false }));
        assert_eq!(exit_of(&actions), Some(&Ending::Stopped));
    }

    #[test]
    fn stop_after_the_server_answers_the_close_exits_at_once() {
        let mut run = Run::new(settings());
        let conn = Run::dialed(&run.start());
        run.connect(conn);
        run.input(Input::Terminate);
        let actions = run.input(Input::Closed {
            conn,
            code: Some(1001),
            reason: String::new(),
        });
        assert_eq!(actions[0], Action::Teardown { graceful: true });
        assert_eq!(exit_of(&actions), Some(&Ending::Stopped));
    }

    #[test]
    fn stop_while_connecting_or_in_backoff_exits_at_once() {
        let mut run = Run::new(settings());
        let conn = Run::dialed(&run.start());
        let actions = run.input(Input::Terminate);
        assert!(actions.contains(&Action::Abandon {
            conn,
            timed_out: false
        }));
        assert_eq!(exit_of(&actions), Some(&Ending::Stopped));

        let mut run = Run::new(settings());
        let conn = Run::dialed(&run.start());
        run.refuse(conn);
        let actions = run.input(Input::Terminate);
        assert_eq!(exit_of(&actions), Some(&Ending::Stopped));
        assert_eq!(run.machine.state(), State::Stopped);
        // A second signal does nothing more.
        assert!(run.input(Input::Terminate).is_empty());
    }

    #[test]
    fn the_watchdog_is_fed_through_an_outage() {
        let mut run = Run::new(Settings {
            watchdog: Some(secs(15)),
            ..settings()
        });
        let mut conn = Run::dialed(&run.start());
        let mut fed = 0;
        // Ten minutes of refused attempts.
        let end = run.now + secs(600);
        while run.now < end {
            let actions = if run.machine.state() == State::Connecting {
                run.refuse(conn)
            } else {
                run.next().1
            };
            fed += actions.iter().filter(|a| **a == Action::Watchdog).count();
            if let Some(next) = actions.iter().find_map(|a| match a {
                Action::Dial { conn } => Some(*conn),
                _ => None,
            }) {
                conn = next;
            }
            assert!(exit_of(&actions).is_none());
        }
        assert!((39..=41).contains(&fed), "fed {fed} times in 600 s");
    }

    #[test]
    fn once_ends_with_the_first_matching_answer_or_the_first_failure() {
        let once = Settings {
            once: true,
            ..settings()
        };
        let mut run = Run::new(once.clone());
        let conn = Run::dialed(&run.start());
        run.connect(conn);
        // Any frame is no answer in probe mode.
        assert!(run.input(Input::Proven { conn, rtt: None }).is_empty());
        let actions = run.input(Input::Proven {
            conn,
            rtt: Some(ms(7)),
        });
        assert!(actions.contains(&Action::Teardown { graceful: true }));
        assert_eq!(exit_of(&actions), Some(&Ending::ProbeAnswered(ms(7))));

        let mut run = Run::new(once);
        let conn = Run::dialed(&run.start());
        let actions = run.refuse(conn);
        assert!(matches!(exit_of(&actions), Some(Ending::ProbeFailed(_))));
    }

    #[test]
    fn status_refreshes_only_when_someone_reads_it() {
        let mut run = Run::new(settings());
        let conn = Run::dialed(&run.start());
        run.connect(conn);
        assert_eq!(run.machine.next_deadline(), None, "an idle client sleeps");

        let mut run = Run::new(Settings {
            refresh: Some(secs(30)),
            ..settings()
        });
        let conn = Run::dialed(&run.start());
        run.connect(conn);
        let (waited, actions) = run.next();
        assert_eq!((waited, actions), (secs(30), vec![Action::Refresh]));
    }

    #[test]
    fn reconnects_count_connects_after_the_first() {
        let mut run = Run::new(settings());
        let mut conn = Run::dialed(&run.start());
        for _ in 0..3 {
            run.connect(conn);
            run.lose(conn);
            conn = run.machine.next_conn;
        }
        run.connect(conn);
        assert_eq!(run.machine.reconnects(), 3);
        assert_eq!(run.machine.last_error(), Some("gone"));
    }
}
