//! The supervisor: the owner of all client state. It runs the reconnect loop over
//! one channel of [`Event`]s, tears down connections reported dead (by the reader,
//! or by the heartbeat thread, which judges liveness), picks reconnect delays, and
//! keeps the status file and systemd informed.
//!
//! It never touches the socket itself except to shut it down: writes go through
//! the connection's heartbeat thread, reads happen on its reader thread, and the
//! connect attempt runs on a connect thread. So the supervisor's own wait is
//! always a `recv_timeout` until its next deadline, and it stays responsive to
//! signals and the watchdog whatever the network does.

use std::net::{Shutdown, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tungstenite::protocol::WebSocketConfig;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::backoff::{Backoff, Failure, Random, SplitMix64};
use crate::config::{Config, HeartbeatMode};
use crate::delivery::{self, Delivery};
use crate::error::{ConfigError, ConnectError, Stage};
use crate::headers::read_header_file;
use crate::heartbeat::{self, Command, Liveness, Schedule, SharedLiveness, Writer};
use crate::outbox::Outbox;
use crate::reader::{Reader, SharedSocket};
use crate::sd_notify::{Notifier, Notify};
use crate::status_file::{State, Status, StatusFile};
use crate::tls::{Connector, TlsFiles};
use crate::transport::{self, Abort, Connection, Dial};

/// Identifies one connection attempt; every event carries it, so a late event
/// from a connection already torn down is recognised and ignored.
pub type ConnId = u64;

/// With the heartbeat off, a connection this old counts as proven alive.
const QUIET_PROOF: Duration = Duration::from_secs(10);
/// From SIGTERM/SIGINT to exit: the contract's "wait at most 2 s for the server's
/// Close", less a margin for joining the threads afterwards.
const STOP_BUDGET: Duration = Duration::from_millis(1800);
/// Bound on writing the Close of a SIGHUP reload.
const RELOAD_CLOSE_WRITE: Duration = Duration::from_millis(500);
/// How long any other ending waits for abandoned connect threads (stuck in DNS).
const LEAVE_GRACE: Duration = Duration::from_secs(2);
/// Slack past `--connect-timeout` before a connect thread stuck in DNS is abandoned.
const CONNECT_SLACK: Duration = Duration::from_secs(1);
/// Stack for per-connection threads; they hold little, and 32-bit boards have little address space.
const THREAD_STACK: usize = 256 * 1024;
/// Floor on status refreshes between state changes; see [`Supervisor::refresh_interval`].
const MIN_REFRESH: Duration = Duration::from_secs(30);

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
    },
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

/// How [`Supervisor::run`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// Stopped on request (signal or [`Handle::stop`]).
    Stopped,
    /// `--max-retries` attempts in a row failed; the last error.
    GaveUp(String),
    /// `--once`: the heartbeat was answered after this round trip.
    ProbeAnswered(Duration),
    /// `--once`: it was not; why.
    ProbeFailed(String),
}

/// A cloneable way to talk to a running supervisor from other threads.
#[derive(Clone)]
pub struct Handle(Sender<Event>, Arc<Outbox>);

impl Handle {
    /// Sends `text` to the server. While connected, a full queue (`--queue-size`
    /// lines or `--queue-bytes` bytes) makes this wait until the connection has
    /// taken lines, so nothing is dropped; while disconnected, a full queue drops
    /// its oldest line instead (counted in the status). Returns at once, with the
    /// line discarded, once the supervisor has stopped.
    pub fn send(&self, text: String) {
        self.1.push(text);
    }

    /// Close with 1001 and end [`Supervisor::run`].
    pub fn stop(&self) {
        let _ = self.0.send(Event::Terminate);
    }

    /// Re-read the header and TLS files and reconnect at once.
    pub fn reload(&self) {
        let _ = self.0.send(Event::Reload);
    }

    /// Tells the supervisor that input ended (only logged).
    pub fn input_closed(&self) {
        let _ = self.0.send(Event::InputClosed);
    }
}

/// systemd integration, read from the environment by the caller.
#[derive(Default)]
pub struct Systemd {
    /// `NOTIFY_SOCKET`.
    pub notifier: Option<Notifier>,
    /// Half of `WATCHDOG_USEC`.
    pub watchdog: Option<Duration>,
}

/// A live connection and the two threads serving it.
struct Active {
    conn: ConnId,
    tcp: TcpStream,
    commands: Sender<Command>,
    reader: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
    liveness: SharedLiveness,
    /// Round trip last written to the status file and STATUS=.
    reported_rtt: Option<Duration>,
    connected_at: Instant,
    /// Set once a Close has been sent and we wait for the server's.
    closing_until: Option<Instant>,
    /// With the heartbeat off: up long enough to count as alive.
    quiet_proven: bool,
}

/// A connect thread and the handle that cuts its handshakes short.
struct Attempt {
    conn: ConnId,
    thread: JoinHandle<()>,
    abort: Arc<Abort>,
}

impl Active {
    /// With the heartbeat off, when this connection will count as proven alive.
    fn quiet_proof_at(&self, ping_interval: Duration) -> Option<Instant> {
        (!self.quiet_proven && ping_interval.is_zero()).then(|| self.connected_at + QUIET_PROOF)
    }
}

enum Phase {
    Connecting {
        give_up_at: Instant,
        attempt: Attempt,
    },
    Connected(Box<Active>),
    Backoff {
        until: Instant,
    },
}

/// The reconnect loop. Build with [`Supervisor::new`], then [`Supervisor::run`].
pub struct Supervisor {
    config: Config,
    file_headers: Vec<(String, String)>,
    tls_files: TlsFiles,
    connector: Option<Connector>,
    observer: Arc<dyn Observer>,
    systemd: Systemd,
    status_file: Option<StatusFile>,
    random: Box<dyn Random + Send>,
    events: Sender<Event>,
    inbox: Receiver<Event>,
    backoff: Backoff,
    phase: Phase,
    next_conn: ConnId,
    failures_in_row: u32,
    connects: u64,
    status: Status,
    status_dirty: bool,
    next_refresh: Option<Instant>,
    next_watchdog: Option<Instant>,
    /// Lines for the server (stdin), shared with [`Handle`]s and the writer.
    outbox: Arc<Outbox>,
    /// Received messages on their way to the observer.
    delivery: Arc<Delivery>,
    /// The thread that passes `delivery` on to the observer; started by `run`.
    delivery_thread: Option<JoinHandle<()>>,
    /// Set by SIGTERM/SIGINT: when the process must be on its way out.
    stop_by: Option<Instant>,
    /// Connect attempts abandoned (past their deadline, or by a stop or reload) and
    /// aborted; each is joined when its result arrives.
    stragglers: Vec<Attempt>,
}

impl Supervisor {
    /// Reads and checks the files the configuration names (exit 78 on failure).
    pub fn new(config: Config, observer: Arc<dyn Observer>) -> Result<Supervisor, ConfigError> {
        let tls_files = TlsFiles::load(&config)?;
        let file_headers = match &config.header_file {
            Some(path) => read_header_file(path)?,
            None => Vec::new(),
        };
        let (events, inbox) = mpsc::channel();
        let status = Status {
            state: State::Connecting,
            url: config.target.url.clone(),
            since_unix_ms: unix_ms_now(),
            rtt_ms: None,
            reconnects: 0,
            dropped: 0,
            last_error: None,
        };
        Ok(Supervisor {
            backoff: Backoff::new(config.backoff_initial, config.backoff_max),
            status_file: config.status_file.clone().map(StatusFile::new),
            outbox: Arc::new(Outbox::new(config.queue_size, config.queue_bytes)),
            delivery: Arc::new(Delivery::new(config.queue_bytes)),
            config,
            file_headers,
            tls_files,
            connector: None,
            observer,
            systemd: Systemd::default(),
            random: Box::new(SplitMix64::from_os()),
            events,
            inbox,
            phase: Phase::Backoff {
                until: Instant::now(),
            },
            next_conn: 0,
            failures_in_row: 0,
            connects: 0,
            status,
            status_dirty: false,
            next_refresh: None,
            next_watchdog: None,
            delivery_thread: None,
            stop_by: None,
            stragglers: Vec::new(),
        })
    }

    /// Reports to systemd while running.
    pub fn with_systemd(mut self, systemd: Systemd) -> Supervisor {
        self.systemd = systemd;
        self
    }

    /// Replaces the random source (reproducible runs, fixed-delay comparisons).
    pub fn with_random(mut self, random: Box<dyn Random + Send>) -> Supervisor {
        self.random = random;
        self
    }

    /// A handle for other threads (stdin, signals, the embedding application).
    pub fn handle(&self) -> Handle {
        Handle(self.events.clone(), Arc::clone(&self.outbox))
    }

    /// Runs until stopped, given up, or the `--once` probe is decided.
    pub fn run(mut self) -> Ending {
        if let Err(err) = self.start_delivery() {
            // Without it nothing received could be passed on; there is no way to run.
            log::error!("output thread: {err}");
            return self.finish(Ending::GaveUp(format!("output thread: {err}")));
        }
        self.notify(&[Notify::Ready]);
        if let Some(interval) = self.systemd.watchdog {
            self.next_watchdog = Some(Instant::now() + interval);
        }
        if let Some(ending) = self.start_connect(Instant::now()) {
            return self.finish(ending);
        }
        loop {
            let now = Instant::now();
            if let Some(ending) = self.on_time(now) {
                return self.finish(ending);
            }
            let event = match self.next_deadline() {
                Some(deadline) => self
                    .inbox
                    .recv_timeout(deadline.saturating_duration_since(now)),
                None => self
                    .inbox
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            match event {
                Ok(event) => {
                    if let Some(ending) = self.on_event(event, Instant::now()) {
                        return self.finish(ending);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                // We hold a sender ourselves, so the channel cannot disconnect.
                Err(RecvTimeoutError::Disconnected) => return self.finish(Ending::Stopped),
            }
        }
    }

    fn start_delivery(&mut self) -> std::io::Result<()> {
        let delivery = Arc::clone(&self.delivery);
        // Probe mode prints only the round trip.
        let observer: Arc<dyn Observer> = if self.config.once {
            Arc::new(Silent)
        } else {
            Arc::clone(&self.observer)
        };
        let thread = thread::Builder::new()
            .name("wsbeat-output".into())
            .stack_size(THREAD_STACK)
            .spawn(move || delivery::run(&delivery, |batch| observer.messages(batch)))?;
        self.delivery_thread = Some(thread);
        Ok(())
    }

    /// The earliest moment something must happen without an event.
    fn next_deadline(&self) -> Option<Instant> {
        let phase = match &self.phase {
            Phase::Connecting { give_up_at, .. } => Some(*give_up_at),
            Phase::Backoff { until } => Some(*until),
            Phase::Connected(active) => [
                active.quiet_proof_at(self.config.ping_interval),
                active.closing_until,
            ]
            .into_iter()
            .flatten()
            .min(),
        };
        [phase, self.next_watchdog, self.next_refresh]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether anyone reads the status (file or systemd); without a reader, no refresh wake-ups.
    fn reports_status(&self) -> bool {
        self.status_file.is_some() || self.systemd.notifier.is_some()
    }

    /// Between state changes the status is refreshed (new RTT, drop count) at most
    /// once per ping interval, and not more often than [`MIN_REFRESH`] to keep an
    /// idle client asleep and spare the flash.
    fn refresh_interval(&self) -> Duration {
        self.config.ping_interval.max(MIN_REFRESH)
    }

    fn refresh_status(&mut self, now: Instant) {
        let dropped = self.outbox.dropped();
        if dropped != self.status.dropped {
            self.status.dropped = dropped;
            self.status_dirty = true;
        }
        if let Phase::Connected(active) = &mut self.phase {
            let rtt = heartbeat::lock(&active.liveness).rtt();
            if rtt != active.reported_rtt {
                active.reported_rtt = rtt;
                self.status.rtt_ms = rtt.map(|rtt| rtt.as_secs_f64() * 1000.0);
                self.status_dirty = true;
            }
        }
        if self.status_dirty {
            self.notify(&[Notify::Status(self.describe())]);
            self.write_status(now);
        }
        self.schedule_refresh(now);
    }

    /// The next refresh, only if someone reads the status.
    fn schedule_refresh(&mut self, now: Instant) {
        self.next_refresh = self.reports_status().then(|| now + self.refresh_interval());
    }

    /// Deadlines that have passed.
    fn on_time(&mut self, now: Instant) -> Option<Ending> {
        if let Some(at) = self.next_watchdog.filter(|&at| now >= at) {
            self.notify(&[Notify::Watchdog]);
            let interval = self.systemd.watchdog.unwrap_or(Duration::from_secs(1));
            self.next_watchdog = Some((at + interval).max(now));
        }
        if self.next_refresh.is_some_and(|at| now >= at) {
            self.refresh_status(now);
        }
        let ping_interval = self.config.ping_interval;
        match &mut self.phase {
            Phase::Backoff { until } if now >= *until => {
                if self.stop_by.is_some() {
                    return Some(Ending::Stopped);
                }
                return self.start_connect(now);
            }
            Phase::Connecting { give_up_at, .. } if now >= *give_up_at => {
                let attempt = self.take_attempt(now);
                self.abandon(attempt);
                return self.connect_failed(ConnectError::Timeout(Stage::Resolve), now);
            }
            Phase::Connected(active) => {
                if active.closing_until.is_some_and(|until| now >= until) {
                    let reason = "server did not answer our Close in time".to_string();
                    return self.connection_lost(reason, false);
                }
                if active
                    .quiet_proof_at(ping_interval)
                    .is_some_and(|at| now >= at)
                {
                    // Heartbeat off: surviving this long is the only proof available.
                    active.quiet_proven = true;
                    self.backoff.reset();
                    self.failures_in_row = 0;
                }
            }
            _ => {}
        }
        None
    }

    fn on_event(&mut self, event: Event, now: Instant) -> Option<Ending> {
        match event {
            Event::Connected { conn, result } => self.on_connected(conn, result, now),
            Event::Proven { conn, rtt } => self.on_proven(conn, rtt, now),
            Event::Closed { conn, code, reason } => {
                let closing = self.active_mut(conn)?.closing_until.is_some();
                let code_text = code.map_or("no code".to_string(), |c| c.to_string());
                if closing {
                    log::debug!("server answered our Close ({code_text})");
                    return self.connection_lost("closed".into(), true);
                }
                log::info!("server closed the connection: {code_text} {reason:?}");
                let reason = format!("server closed the connection: {code_text} {reason}");
                if self.config.once {
                    self.teardown(false);
                    return Some(Ending::ProbeFailed(reason));
                }
                self.connection_lost(reason, true)
            }
            Event::Dead { conn, reason } => {
                let closing = self.active_mut(conn)?.closing_until.is_some();
                if self.config.once && !closing {
                    self.teardown(false);
                    return Some(Ending::ProbeFailed(reason));
                }
                self.connection_lost(reason, false)
            }
            Event::InputClosed => {
                log::debug!("stdin closed; the connection stays up");
                None
            }
            Event::Reload => self.reload(now),
            Event::Terminate => self.terminate(now),
        }
    }

    fn active_mut(&mut self, conn: ConnId) -> Option<&mut Active> {
        match &mut self.phase {
            Phase::Connected(active) if active.conn == conn => Some(active),
            _ => None,
        }
    }

    fn replace_phase(&mut self, now: Instant) -> Phase {
        std::mem::replace(&mut self.phase, Phase::Backoff { until: now })
    }

    /// Starts an attempt; an attempt that fails before it starts counts as a failed
    /// one, so `--once` and `--max-retries` end the run from here too.
    fn start_connect(&mut self, now: Instant) -> Option<Ending> {
        if let Some(path) = &self.config.header_file {
            // Re-read on every attempt so a rotated token is used without a restart.
            match read_header_file(path) {
                Ok(headers) => self.file_headers = headers,
                Err(err) => log::error!("{err}; using the headers read before"),
            }
        }
        if self.config.target.tls && self.connector.is_none() {
            match self.tls_files.connector() {
                Ok(connector) => self.connector = Some(connector),
                Err(err) => {
                    self.phase = Phase::Backoff { until: now };
                    return self.connect_failed(ConnectError::Tls(err), now);
                }
            }
        }
        if self.tls_files.insecure() && self.config.target.tls {
            log::warn!("--insecure: the server's certificate is not verified");
        }
        self.next_conn += 1;
        let conn = self.next_conn;
        let mut headers = self.config.headers.clone();
        headers.extend(self.file_headers.iter().cloned());
        let target = self.config.target.clone();
        let subprotocols = self.config.subprotocols.clone();
        let connector = self.connector.clone();
        let ws_config = ws_config(&self.config);
        let write_timeout = self.config.pong_timeout.max(Duration::from_secs(1));
        // From now, not from `now`: building the first TLS connector (system roots,
        // OpenSSL start-up) can take a second on a small board and is not the network's time.
        let deadline = Instant::now() + self.config.connect_timeout;
        let events = self.events.clone();
        let abort = Arc::new(Abort::default());
        let abort_handle = Arc::clone(&abort);
        let spawned = thread::Builder::new()
            .name("wsbeat-connect".into())
            .stack_size(THREAD_STACK)
            .spawn(move || {
                let dial = Dial {
                    target: &target,
                    headers: &headers,
                    subprotocols: &subprotocols,
                    tls: connector.as_ref(),
                    ws_config,
                    write_timeout,
                };
                let result = transport::connect(&dial, deadline, &abort_handle).map(Box::new);
                let _ = events.send(Event::Connected { conn, result });
            });
        match spawned {
            Ok(thread) => {
                log::debug!(
                    "connecting to {} (attempt {})",
                    self.config.target.url,
                    conn
                );
                self.phase = Phase::Connecting {
                    give_up_at: deadline + CONNECT_SLACK,
                    attempt: Attempt {
                        conn,
                        thread,
                        abort,
                    },
                };
                self.set_state(State::Connecting, now);
                None
            }
            Err(err) => {
                self.phase = Phase::Backoff { until: now };
                self.connect_failed(ConnectError::Tcp(err), now)
            }
        }
    }

    /// The attempt of the `Connecting` phase the caller has just matched, leaving `Backoff`.
    fn take_attempt(&mut self, now: Instant) -> Attempt {
        match self.replace_phase(now) {
            Phase::Connecting { attempt, .. } => attempt,
            _ => unreachable!("called in the Connecting phase only"),
        }
    }

    /// Cuts an attempt short and keeps its thread to be joined when it has finished.
    fn abandon(&mut self, attempt: Attempt) {
        attempt.abort.abort();
        self.stragglers.push(attempt);
    }

    /// Joins an abandoned attempt that has reported: sending its result is the last
    /// thing its thread does, so the join does not wait.
    fn join_straggler(&mut self, conn: ConnId) {
        if let Some(index) = self.stragglers.iter().position(|a| a.conn == conn) {
            let _ = self.stragglers.swap_remove(index).thread.join();
        }
    }

    fn on_connected(
        &mut self,
        conn: ConnId,
        result: Result<Box<Connection>, ConnectError>,
        now: Instant,
    ) -> Option<Ending> {
        let current =
            matches!(&self.phase, Phase::Connecting { attempt, .. } if attempt.conn == conn);
        if !current {
            // A straggler finished late: its connection (if any) is dropped unused.
            self.join_straggler(conn);
            return None;
        }
        let attempt = self.take_attempt(now);
        let _ = attempt.thread.join();
        match result {
            Ok(connection) => self.on_open(conn, *connection, now),
            Err(err) => self.connect_failed(err, now),
        }
    }

    fn on_open(&mut self, conn: ConnId, connection: Connection, now: Instant) -> Option<Ending> {
        match &connection.subprotocol {
            Some(protocol) => log::info!(
                "connected to {} (subprotocol {protocol})",
                self.config.target.url
            ),
            None => log::info!("connected to {}", self.config.target.url),
        }
        let Connection { ws, tcp, .. } = connection;
        let base = now;
        let socket = Arc::new(SharedSocket::new(ws));
        // Probe mode needs the round trip of its own heartbeat, so only a matching answer counts.
        let strict = self.config.strict_pong || self.config.once;
        let liveness: SharedLiveness = Arc::new(Mutex::new(Liveness::new(
            self.config.heartbeat,
            strict,
            self.config.pong_timeout,
            base,
        )));
        let (commands, command_inbox) = mpsc::channel();
        let wait_on = match tcp.try_clone() {
            Ok(clone) => clone,
            Err(err) => return self.connect_failed(ConnectError::Tcp(err), now),
        };
        let reader = Reader {
            conn,
            socket: Arc::clone(&socket),
            wait_on,
            pong_text: (self.config.heartbeat == HeartbeatMode::Text)
                .then(|| self.config.pong_text.clone()),
            observer: Arc::clone(&self.observer),
            delivery: Arc::clone(&self.delivery),
            generation: self.delivery.generation(),
            liveness: Arc::clone(&liveness),
            events: self.events.clone(),
        };
        let schedule = Schedule {
            interval: self.config.ping_interval,
            mode: self.config.heartbeat,
            ping_text: self.config.ping_text.clone(),
            immediate: self.config.once,
        };
        let writer = Writer {
            conn,
            socket,
            schedule,
            liveness: Arc::clone(&liveness),
            outbox: Arc::clone(&self.outbox),
            commands: command_inbox,
            events: self.events.clone(),
        };
        let reader = thread::Builder::new()
            .name("wsbeat-reader".into())
            .stack_size(THREAD_STACK)
            .spawn(move || reader.run());
        let reader = match reader {
            Ok(reader) => reader,
            Err(err) => {
                let _ = tcp.shutdown(Shutdown::Both);
                return self.connect_failed(ConnectError::Tcp(err), now);
            }
        };
        let heartbeat = thread::Builder::new()
            .name("wsbeat-heartbeat".into())
            .stack_size(THREAD_STACK)
            .spawn(move || writer.run());
        let heartbeat = match heartbeat {
            Ok(heartbeat) => heartbeat,
            Err(err) => {
                let _ = tcp.shutdown(Shutdown::Both);
                let _ = reader.join();
                return self.connect_failed(ConnectError::Tcp(err), now);
            }
        };
        // From here on the outbox wakes the writer when lines wait (at once if some
        // queued up during the outage).
        let wake = commands.clone();
        self.outbox.attach(Box::new(move || {
            let _ = wake.send(Command::Wake);
        }));
        self.phase = Phase::Connected(Box::new(Active {
            conn,
            tcp,
            commands,
            reader,
            heartbeat,
            reported_rtt: None,
            liveness,
            connected_at: now,
            closing_until: None,
            quiet_proven: false,
        }));
        self.connects += 1;
        self.status.reconnects = self.connects.saturating_sub(1);
        // --max-retries counts failed attempts in a row; this one succeeded. (The backoff
        // counter resets only once the connection proves alive.)
        self.failures_in_row = 0;
        // last_error stays: beside `state=connected` and `reconnects=N` it tells why the
        // last reconnect happened (the contract's example shows exactly that).
        self.set_state(State::Connected, now);
        None
    }

    /// The connection answered its first heartbeat.
    fn on_proven(&mut self, conn: ConnId, rtt: Option<Duration>, now: Instant) -> Option<Ending> {
        let once = self.config.once;
        let active = self.active_mut(conn)?;
        if once {
            // Strict in probe mode: the first proof is the matching answer, with its round trip.
            let rtt = rtt?;
            let _ = active.commands.send(Command::Close(CloseCode::Normal, ""));
            self.teardown(true);
            return Some(Ending::ProbeAnswered(rtt));
        }
        self.backoff.reset();
        self.failures_in_row = 0;
        if let Some(rtt) = rtt {
            log::debug!(
                "first heartbeat answered in {:.1} ms",
                rtt.as_secs_f64() * 1000.0
            );
        }
        self.refresh_status(now);
        None
    }

    fn connect_failed(&mut self, err: ConnectError, now: Instant) -> Option<Ending> {
        let failure = match &err {
            ConnectError::Rejected {
                status: 401 | 403, ..
            } => {
                log::error!("{}: {err}; check the credentials", self.config.target.url);
                Failure::Unauthorized
            }
            ConnectError::Rejected {
                retry_after: Some(after),
                ..
            } => {
                log::warn!("{}: {err}", self.config.target.url);
                Failure::RetryAfter(*after)
            }
            _ => {
                log::warn!("{}: {err}", self.config.target.url);
                Failure::Normal
            }
        };
        self.status.last_error = Some(err.to_string());
        if self.config.once {
            return Some(Ending::ProbeFailed(err.to_string()));
        }
        self.failures_in_row = self.failures_in_row.saturating_add(1);
        if self.config.max_retries > 0 && self.failures_in_row >= self.config.max_retries {
            return Some(Ending::GaveUp(format!(
                "giving up after {} failed attempts in a row: {err}",
                self.failures_in_row
            )));
        }
        self.schedule_retry(failure, now);
        None
    }

    fn schedule_retry(&mut self, failure: Failure, now: Instant) {
        let delay = self.backoff.next_delay(failure, self.random.as_mut());
        log::info!("reconnecting in {}", fmt_duration(delay));
        self.phase = Phase::Backoff { until: now + delay };
        self.set_state(State::Backoff, now);
    }

    /// The live connection ended: tear it down and reconnect (or stop, if stopping).
    fn connection_lost(&mut self, reason: String, graceful: bool) -> Option<Ending> {
        self.teardown(graceful);
        if self.stop_by.is_some() {
            return Some(Ending::Stopped);
        }
        log::warn!("connection lost: {reason}");
        self.status.last_error = Some(reason);
        // Count the delay from the end of the teardown, not from when the loss was
        // noticed: after a server restart a whole fleet tears down at once, and a
        // delay already spent inside a slow teardown would bunch them all up again.
        self.schedule_retry(Failure::Normal, Instant::now());
        None
    }

    /// Ends the live connection and joins its threads. `graceful` lets queued
    /// writes (a Close) go out first; otherwise the socket is shut down at once,
    /// because a dead peer will never take them.
    fn teardown(&mut self, graceful: bool) {
        let now = Instant::now();
        let Phase::Connected(active) = self.replace_phase(now) else {
            return;
        };
        let Active {
            tcp,
            commands,
            reader,
            heartbeat,
            ..
        } = *active;
        // Lines go back to drop-oldest mode, and a reader waiting for room in the
        // output buffer is released; the outbox also drops its waker, the writer's
        // last command sender besides ours.
        self.outbox.detach();
        self.delivery.end_connection();
        if !graceful {
            let _ = tcp.shutdown(Shutdown::Both);
        }
        drop(commands);
        let _ = heartbeat.join();
        let _ = tcp.shutdown(Shutdown::Both);
        let _ = reader.join();
    }

    fn reload(&mut self, now: Instant) -> Option<Ending> {
        log::info!("SIGHUP: re-reading files and reconnecting");
        match TlsFiles::load(&self.config) {
            Ok(files) => {
                self.tls_files = files;
                self.connector = None;
            }
            Err(err) => log::error!("{err}; keeping the TLS files read before"),
        }
        // The header file needs nothing here: every attempt re-reads it.
        self.backoff.reset();
        self.failures_in_row = 0;
        match self.replace_phase(now) {
            Phase::Connected(active) => {
                // The teardown waits for the Close to be written, and the supervisor serves
                // nothing meanwhile (watchdog included). With lines still being written the
                // peer may have stopped reading and the Close would queue behind them for
                // up to --pong-timeout: cut the connection instead (unsent lines are kept).
                // Otherwise a full socket gets RELOAD_CLOSE_WRITE for the Close.
                let graceful = self.outbox.is_idle();
                if graceful {
                    let _ = active.tcp.set_write_timeout(Some(RELOAD_CLOSE_WRITE));
                    let _ = active
                        .commands
                        .send(Command::Close(CloseCode::Normal, "reload"));
                }
                self.phase = Phase::Connected(active);
                self.teardown(graceful);
            }
            Phase::Connecting { attempt, .. } => self.abandon(attempt),
            Phase::Backoff { .. } => {}
        }
        self.start_connect(now)
    }

    fn terminate(&mut self, now: Instant) -> Option<Ending> {
        if self.stop_by.is_some() {
            return None;
        }
        let stop_by = now + STOP_BUDGET;
        self.stop_by = Some(stop_by);
        self.notify(&[Notify::Stopping]);
        match &mut self.phase {
            Phase::Connected(active) => {
                log::info!("stopping: closing the connection (1001)");
                let _ = active
                    .commands
                    .send(Command::Close(CloseCode::Away, "shutting down"));
                active.closing_until = Some(stop_by);
                None
            }
            Phase::Connecting { .. } => {
                let attempt = self.take_attempt(now);
                self.abandon(attempt);
                Some(Ending::Stopped)
            }
            Phase::Backoff { .. } => Some(Ending::Stopped),
        }
    }

    fn finish(mut self, ending: Ending) -> Ending {
        // No more lines: a producer waiting for room goes on, its line discarded.
        self.outbox.close();
        self.teardown(false);
        if !matches!(ending, Ending::Stopped) {
            self.notify(&[Notify::Stopping]);
        }
        if let Ending::GaveUp(reason) | Ending::ProbeFailed(reason) = &ending {
            self.status.last_error = Some(reason.clone());
        }
        self.set_state(State::Stopped, Instant::now());
        // Aborted attempts end at once; one stuck in DNS or in the TCP connect cannot be
        // interrupted and gets a bounded wait before the process leaves it behind.
        let give_up = self.stop_by.unwrap_or_else(|| Instant::now() + LEAVE_GRACE);
        self.finish_delivery(give_up);
        while !self.stragglers.is_empty() {
            let left = give_up.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(left) {
                Ok(Event::Connected { conn, .. }) => self.join_straggler(conn),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        ending
    }

    /// Lets the delivery thread pass on what was received, until `deadline`: an
    /// output nobody reads must not hold up a stop. What is left is discarded.
    fn finish_delivery(&mut self, deadline: Instant) {
        self.delivery.close();
        let Some(thread) = self.delivery_thread.take() else {
            return;
        };
        if !self.delivery.wait_drained(deadline) {
            self.observer.interrupt();
            let lost = self.delivery.discard();
            log::warn!(
                "stopping: the output did not keep up; {lost} received message(s) not written"
            );
        }
        if thread.join().is_err() {
            log::error!("output thread panicked");
        }
    }

    fn set_state(&mut self, state: State, now: Instant) {
        if self.status.state != state {
            self.status.state = state;
            self.status.since_unix_ms = unix_ms_now();
        }
        self.notify(&[Notify::Status(self.describe())]);
        self.observer.state(&self.status);
        self.write_status(now);
    }

    fn describe(&self) -> String {
        let url = &self.config.target.url;
        let reconnects = self.status.reconnects;
        match self.status.state {
            State::Connecting => format!("connecting to {url}, {reconnects} reconnects"),
            State::Connected => match self.status.rtt_ms {
                Some(rtt) => {
                    format!("connected to {url}, rtt {rtt:.1} ms, {reconnects} reconnects")
                }
                None => format!("connected to {url}, {reconnects} reconnects"),
            },
            State::Backoff => format!(
                "waiting to reconnect to {url}: {}",
                self.status.last_error.as_deref().unwrap_or("")
            ),
            State::Stopped => format!("stopped, {reconnects} reconnects"),
        }
    }

    fn write_status(&mut self, now: Instant) {
        self.status_dirty = false;
        self.status.dropped = self.outbox.dropped();
        self.schedule_refresh(now);
        if let Some(file) = &self.status_file {
            if let Err(err) = file.write(&self.status) {
                log::warn!("--status-file {}: {err}", file.path().display());
            }
        }
    }

    fn notify(&self, states: &[Notify]) {
        if let Some(notifier) = &self.systemd.notifier {
            notifier.notify(states);
        }
    }
}

/// Drops server messages (`--once` prints only the round trip).
struct Silent;

impl Observer for Silent {
    fn message(&self, _text: &str) {}
}

fn ws_config(config: &Config) -> WebSocketConfig {
    WebSocketConfig::default()
        // Small buffers: a device holds one connection, and messages are typically small.
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(config.max_message_size.saturating_add(64 * 1024))
        .max_message_size(Some(config.max_message_size))
        .max_frame_size(Some(config.max_message_size))
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}
