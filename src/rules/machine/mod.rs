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

mod network;
mod protocol;
mod timers;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::CloseCode;

use crate::error::ConnectError;
use crate::rules::adaptive::Evidence;
use crate::rules::backoff::{Backoff, Failure, Random};

use self::network::Cut;
pub use self::protocol::{
    Action, CLOSE_DRAIN, ConnId, Ending, Input, LEAVE_GRACE, QUIET_PROOF, RELOAD_CLOSE_WRITE,
    STOP_BUDGET, Settings, State, fmt_duration,
};
pub use self::timers::Timer;
use self::timers::TimerTable;

#[derive(Debug)]
enum Phase {
    /// Between a teardown and the decision what comes next.
    Idle,
    Connecting {
        conn: ConnId,
    },
    Connected {
        conn: ConnId,
        /// A Close of ours is out ([`Timer::CloseWait`] runs).
        closing: bool,
        /// Its local address and interface, once served.
        local: Option<(IpAddr, Option<u32>)>,
    },
    Backoff {
        /// Counted from the end of the teardown before it ([`Timer::Reconnect`]
        /// is armed then).
        delay: Duration,
        /// Whether a network change may still cut this wait short.
        cut: Cut,
    },
    Stopped,
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
    timers: TimerTable,
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
            timers: TimerTable::default(),
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

    /// When the run, over at `now`, must have left: a stop keeps its budget from
    /// SIGTERM; any other ending gives the stragglers [`LEAVE_GRACE`].
    pub fn leave_by(&self, now: Instant) -> Instant {
        self.stop_by.unwrap_or(now + LEAVE_GRACE)
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

    /// The earliest timer; `None`: wait for an input.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// The run begins: the first attempt starts at once.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        let watchdog = self.settings.watchdog.map(|interval| now + interval);
        self.timers.set(Timer::Watchdog, watchdog);
        self.start_attempt(now);
        self.take_actions()
    }

    /// Timers that have fired by `now`, each handled once, in [`Timer::ALL`]'s order
    /// (one that ends the phase disarms the phase's others).
    pub fn on_time(&mut self, now: Instant) -> Vec<Action> {
        for timer in Timer::ALL {
            if self.timers.take_expired(timer, now) {
                self.fire(timer, now);
            }
        }
        self.take_actions()
    }

    fn fire(&mut self, timer: Timer, now: Instant) {
        match (timer, &self.phase) {
            (Timer::Watchdog, _) => {
                self.actions.push(Action::Watchdog);
                let interval = self.settings.watchdog.unwrap_or(Duration::from_secs(1));
                self.timers.set(Timer::Watchdog, Some(now + interval));
            }
            (Timer::StatusRefresh, _) => {
                self.actions.push(Action::Refresh);
                self.schedule_refresh(now);
            }
            (Timer::Reconnect, Phase::Backoff { .. }) if self.stop_by.is_some() => {
                self.exit(Ending::Stopped, now);
            }
            (Timer::Reconnect, Phase::Backoff { .. }) => self.start_attempt(now),
            // The driver answers with the failure and the stage that ran out.
            (Timer::ConnectGiveUp, &Phase::Connecting { conn }) => {
                self.actions.push(Action::Abandon {
                    conn,
                    timed_out: true,
                });
            }
            // The driver answers with the next check or the death.
            (Timer::Liveness, &Phase::Connected { conn, .. }) => {
                self.actions.push(Action::CheckLiveness { conn });
            }
            (Timer::CloseWait, Phase::Connected { .. }) => {
                let reason = "server did not answer our Close in time".to_string();
                self.connection_lost(reason, false, now);
            }
            (Timer::QuietProof, Phase::Connected { .. }) => {
                // Heartbeat off: surviving this long is the only proof available.
                self.backoff.reset();
                self.failures_in_row = 0;
            }
            // Armed in one phase, found in another: the phase change should have
            // disarmed it; nothing to do.
            _ => {}
        }
    }

    /// Moves to `phase`; the old phase's timers are disarmed.
    fn enter(&mut self, phase: Phase) {
        for timer in Timer::PHASE {
            self.timers.stop(timer);
        }
        self.phase = phase;
    }

    /// Something happened at `now`.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        match input {
            Input::AttemptStarted { conn, deadline } => {
                if self.attempt() == Some(conn) {
                    self.timers.set(Timer::ConnectGiveUp, Some(deadline));
                }
            }
            Input::Connected { conn } => self.on_connected(conn, now),
            Input::ConnectFailed { conn, error } => match self.phase {
                Phase::Connecting { conn: current, .. } if current == conn => {
                    self.actions.push(Action::CountFailure(error.reason()));
                    self.actions.push(Action::Learn(Evidence::ConnectFailed));
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
            Input::Dead { conn, reason, idle } => {
                if let Some(closing) = self.closing(conn) {
                    self.actions.push(Action::Learn(Evidence::Lost(idle)));
                    if self.settings.once && !closing {
                        self.teardown(false);
                        self.exit(Ending::ProbeFailed(reason), now);
                    } else {
                        self.connection_lost(reason, false, now);
                    }
                }
            }
            Input::TornDown => {
                if let Phase::Backoff { delay, .. } = self.phase {
                    if self.timers.get(Timer::Reconnect).is_none() {
                        self.timers.set(Timer::Reconnect, Some(now + delay));
                    }
                }
            }
            Input::Reload { writes_idle } => self.reload(writes_idle, now),
            Input::Terminate => self.terminate(now),
            Input::NetworkChanged => self.network_changed(now),
            Input::Serving { conn, local } => {
                if let Phase::Connected {
                    conn: current,
                    local: served_from,
                    ..
                } = &mut self.phase
                {
                    if *current == conn {
                        *served_from = local;
                        // Its first verdict: the driver says when the next is due.
                        self.actions.push(Action::CheckLiveness { conn });
                    }
                }
            }
            Input::AddressRemoved { addr } => self.address_removed(addr, now),
            Input::LinkDown { index, name } => self.link_down(index, name, now),
            Input::LivenessAt { conn, at } => {
                if self.active() == Some(conn) {
                    self.timers.set(Timer::Liveness, at);
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
                closing,
                ..
            } if *current == conn => Some(*closing),
            _ => None,
        }
    }

    fn start_attempt(&mut self, now: Instant) {
        self.next_conn += 1;
        self.enter(Phase::Connecting {
            conn: self.next_conn,
        });
        self.set_state(State::Connecting, now);
        self.actions.push(Action::StartAttempt {
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
        self.enter(Phase::Connected {
            conn,
            closing: false,
            local: None,
        });
        if self.settings.heartbeat_off {
            self.timers.set(Timer::QuietProof, Some(now + QUIET_PROOF));
        }
        self.connects += 1;
        // --max-retries counts failed attempts in a row; this one succeeded. (The backoff
        // counter resets only once the connection proves alive.)
        self.failures_in_row = 0;
        self.actions.push(Action::Learn(Evidence::Reconnected));
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
        self.enter(Phase::Idle);
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
        self.enter(Phase::Backoff { delay, cut });
        self.timers
            .set(Timer::Reconnect, from.map(|from| from + delay));
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
            self.enter(Phase::Idle);
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
        self.start_attempt(now);
    }

    fn terminate(&mut self, now: Instant) {
        if self.stop_by.is_some() || matches!(self.phase, Phase::Stopped) {
            return;
        }
        let stop_by = now + STOP_BUDGET;
        self.stop_by = Some(stop_by);
        self.actions.push(Action::NotifyStopping);
        match &mut self.phase {
            Phase::Connected { closing, .. } => {
                log::info!("stopping: closing the connection (1001)");
                *closing = true;
                self.timers.set(Timer::CloseWait, Some(stop_by));
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
        self.enter(Phase::Stopped);
        self.timers.stop(Timer::StatusRefresh);
        self.timers.stop(Timer::Watchdog);
        self.actions.push(Action::Exit(ending));
    }

    fn set_state(&mut self, state: State, now: Instant) {
        self.state = state;
        self.actions.push(Action::Publish);
        self.schedule_refresh(now);
    }

    fn schedule_refresh(&mut self, now: Instant) {
        let at = self.settings.refresh.map(|every| now + every);
        self.timers.set(Timer::StatusRefresh, at);
    }
}

#[cfg(test)]
mod tests;
