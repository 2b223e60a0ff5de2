//! The supervisor: the driver of the reconnect loop. It owns the threads and the
//! I/O; every decision is made by the pure [`Machine`]. It waits on one channel of
//! [`Event`]s until the machine's next deadline, turns what arrives into machine
//! inputs, and carries out the [`Action`]s the machine returns: start or abandon a
//! connect attempt, serve or tear down a connection, send a Close, write the
//! status file, talk to systemd, exit.
//!
//! It never touches the socket itself except to shut it down: writes go through
//! the connection's writer thread, reads happen on its reader thread, and the
//! connect attempt runs on a connect thread. So the supervisor's own wait is
//! always a `recv_timeout` until its next deadline, and it stays responsive to
//! signals and the watchdog whatever the network does.

mod attempt;
mod serve;

use self::attempt::Attempt;
use self::serve::Active;

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::config::headers::read_header_file;
use crate::connection::writer::Command;
use crate::error::{ConfigError, ConnectError};
pub use crate::events::{ConnId, Ending, Event, Observer};
use crate::local::delivery::{self, Delivery};
use crate::local::outbox::Outbox;
use crate::net::linkwatch::{LinkEvent, LinkWatch};
use crate::net::netpath;
use crate::net::stream::Connection;
use crate::net::tls::{Connector, TlsFiles};
use crate::report::sd_notify::{Notifier, Notify};
use crate::report::state_store::{self, Memory};
use crate::report::status_file::{LocalCounts, StatusFile};
use crate::report::traffic::Traffic;
use crate::report::{Facts, Report};
use crate::rules::adaptive::{self, Adaptive, Evidence, SharedAdaptive};
use crate::rules::backoff::{Backoff, Random, SplitMix64};
use crate::rules::liveness;
use crate::rules::machine::{Action, Input, Machine, Settings};

/// Stack for per-connection threads; they hold little, and 32-bit boards have little address space.
const THREAD_STACK: usize = 256 * 1024;
/// Floor on status refreshes between state changes: at most once per ping interval,
/// and not more often than this, to keep an idle client asleep and spare the flash.
const MIN_REFRESH: Duration = Duration::from_secs(30);

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
        let _ = self.0.send(Event::Input(Input::Terminate));
    }

    /// Re-read the header and TLS files and reconnect at once.
    pub fn reload(&self) {
        let _ = self.0.send(Event::Reload);
    }

    /// Tells the supervisor that input ended (only logged).
    pub fn input_closed(&self) {
        let _ = self.0.send(Event::InputClosed);
    }

    /// The queue [`send`](Handle::send) fills (the local socket offers lines without waiting).
    pub(crate) fn outbox(&self) -> Arc<Outbox> {
        Arc::clone(&self.1)
    }

    /// The local socket's counts changed: write the status again.
    pub(crate) fn local_changed(&self) {
        let _ = self.0.send(Event::LocalChanged);
    }
}

/// Reads the local socket's counts for the status file.
pub(crate) type LocalCountsReader = Box<dyn Fn() -> LocalCounts + Send>;

/// systemd integration: the notification socket and the watchdog, as systemd
/// passes them in the environment ([`Systemd::from_env`]); the default is none.
#[derive(Default)]
pub struct Systemd {
    /// `NOTIFY_SOCKET`.
    notifier: Option<Notifier>,
    /// Half of `WATCHDOG_USEC`.
    watchdog: Option<Duration>,
}

impl Systemd {
    /// What the service manager set up for this process: `NOTIFY_SOCKET`, and
    /// `WATCHDOG_USEC` when `WATCHDOG_PID` is unset or this process.
    pub fn from_env() -> Systemd {
        Systemd {
            notifier: Notifier::from_env(),
            watchdog: crate::report::sd_notify::watchdog_interval(
                std::env::var("WATCHDOG_USEC").ok().as_deref(),
                std::env::var("WATCHDOG_PID").ok().as_deref(),
                std::process::id(),
            ),
        }
    }
}

/// The reconnect loop. Build with [`Supervisor::new`], then [`Supervisor::run`].
pub struct Supervisor {
    config: Config,
    machine: Machine,
    file_headers: Vec<(String, String)>,
    tls_files: TlsFiles,
    connector: Option<Connector>,
    observer: Arc<dyn Observer>,
    /// Status file, metrics file, `STATUS=`.
    report: Report,
    events: Sender<Event>,
    inbox: Receiver<Event>,
    /// Connect attempts whose threads have not reported yet (the current one, and
    /// abandoned ones: each is joined when its result arrives).
    attempts: HashMap<ConnId, Attempt>,
    /// The connection of the attempt that just upgraded, until the machine says what to do.
    upgraded: Option<(ConnId, Connection)>,
    active: Option<Active>,
    /// Lines for the server (stdin), shared with [`Handle`]s and the writer.
    outbox: Arc<Outbox>,
    /// Received messages on their way to the observer.
    delivery: Arc<Delivery>,
    /// The thread that passes `delivery` on to the observer; started by `run`.
    delivery_thread: Option<JoinHandle<()>>,
    /// Bytes, heartbeats and messages since start.
    traffic: Arc<Traffic>,
    /// `--ping-interval auto`: what has been learned about the path, across connections.
    adaptive: Option<SharedAdaptive>,
    /// The kernel's address and route changes; started by `run`.
    link_watch: Option<LinkWatch>,
    /// With a local socket: its counts, for the status file.
    local_counts: Option<LocalCountsReader>,
    /// `--state-dir`: what `adaptive` learned, per network path, across restarts.
    memory: Option<Memory>,
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
        let report = Report::new(
            config.target.shown(),
            config.status_file.clone().map(StatusFile::new),
            config.metrics_file.clone().map(StatusFile::new),
            None,
            config.ping_interval,
        );
        let adaptive = config
            .auto_interval
            .map(|(min, max)| Arc::new(Mutex::new(Adaptive::new(min, max))));
        let learned = events.clone();
        let memory = state_store::open_for(&config, adaptive.as_ref(), move || {
            let _ = learned.send(Event::Learned);
        });
        let machine = Machine::new(
            settings(&config, None, report.is_read()),
            Backoff::new(config.backoff_initial, config.backoff_max),
            Box::new(SplitMix64::from_os()),
            config.target.shown(),
        );
        Ok(Supervisor {
            machine,
            report,
            outbox: Arc::new(Outbox::new(config.queue_size, config.queue_bytes)),
            delivery: Arc::new(Delivery::new(config.queue_bytes)),
            config,
            file_headers,
            tls_files,
            connector: None,
            observer,
            events,
            inbox,
            attempts: HashMap::new(),
            upgraded: None,
            active: None,
            delivery_thread: None,
            traffic: Arc::new(Traffic::default()),
            adaptive,
            link_watch: None,
            local_counts: None,
            memory,
        })
    }

    /// Reports the local socket's counts (`local_clients=` ...).
    pub(crate) fn with_local_counts(mut self, counts: LocalCountsReader) -> Supervisor {
        self.local_counts = Some(counts);
        self
    }

    /// Reports to systemd while running.
    pub fn with_systemd(mut self, systemd: Systemd) -> Supervisor {
        let Systemd { notifier, watchdog } = systemd;
        self.report.set_notifier(notifier);
        let reports_status = self.report.is_read();
        self.machine
            .set_settings(settings(&self.config, watchdog, reports_status));
        self
    }

    /// Replaces the random source (reproducible runs, fixed-delay comparisons).
    pub fn with_random(mut self, random: Box<dyn Random + Send>) -> Supervisor {
        self.machine.set_random(random);
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
        if self.config.link_watch {
            self.start_link_watch();
        }
        self.report.notify(&[Notify::Ready]);
        let actions = self.machine.start(Instant::now());
        if let Some(ending) = self.carry_out(actions) {
            return self.finish(ending);
        }
        loop {
            let now = Instant::now();
            let event = match self.machine.next_deadline() {
                Some(deadline) if deadline <= now => Err(RecvTimeoutError::Timeout),
                Some(deadline) => self.inbox.recv_timeout(deadline - now),
                None => self
                    .inbox
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            let actions = match event {
                Ok(event) => match self.input_for(event) {
                    Some(input) => self.feed(input),
                    None => continue,
                },
                Err(RecvTimeoutError::Timeout) => self.machine.on_time(Instant::now()),
                // We hold a sender ourselves, so the channel cannot disconnect.
                Err(RecvTimeoutError::Disconnected) => return self.finish(Ending::Stopped),
            };
            if let Some(ending) = self.carry_out(actions) {
                return self.finish(ending);
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

    /// Follows the kernel's address and route changes. Where netlink is unavailable
    /// (an old kernel, a sandbox without `AF_NETLINK`) the client carries on without.
    fn start_link_watch(&mut self) {
        let events = self.events.clone();
        match LinkWatch::spawn(move |event| {
            let _ = events.send(Event::Link(event));
        }) {
            Ok(watch) => self.link_watch = Some(watch),
            Err(err) => log::info!(
                "link watch unavailable ({err}); address changes are noticed by the heartbeat only"
            ),
        }
    }

    /// A kernel report as the machine's input: whether it matters (the live
    /// connection's address or interface gone, a new address or default route) is
    /// the machine's to decide.
    fn link_input(event: LinkEvent) -> Option<Input> {
        match event {
            LinkEvent::AddressRemoved { addr, .. } => Some(Input::AddressRemoved { addr }),
            LinkEvent::LinkDown { index, name } => Some(Input::LinkDown { index, name }),
            LinkEvent::AddressAdded { .. } | LinkEvent::DefaultRouteAdded { .. } => {
                Some(Input::NetworkChanged)
            }
            _ => None,
        }
    }

    /// Feeds `input` to the machine, with the time.
    fn feed(&mut self, input: Input) -> Vec<Action> {
        self.machine.handle(input, Instant::now())
    }

    /// What the machine says the adaptive heartbeat should learn. A reconnect's
    /// network path first decides where the learning resumes (`--state-dir`).
    fn learn(&mut self, evidence: Evidence) {
        let Some(adaptive) = &self.adaptive else {
            return;
        };
        let now = Instant::now();
        let mut adaptive = adaptive::lock(adaptive);
        if let (Evidence::Reconnected, Some(memory), Some((_, connection))) =
            (evidence, &mut self.memory, &self.upgraded)
        {
            if let (Ok(local), Ok(peer)) = (connection.tcp.local_addr(), connection.tcp.peer_addr())
            {
                let path = netpath::path_of(local.ip(), peer.ip());
                memory.connected_via(path, &mut adaptive, now);
            }
        }
        adaptive.learn(evidence, now);
    }

    /// The machine's view of an event; `None` for what only the driver cares about.
    fn input_for(&mut self, event: Event) -> Option<Input> {
        Some(match event {
            Event::AttemptEnded { conn, result } => {
                // Sending its result is the attempt thread's last act: join it now.
                if let Some(attempt) = self.attempts.remove(&conn) {
                    let _ = attempt.thread.join();
                }
                match result {
                    Ok(connection) => {
                        self.upgraded = Some((conn, *connection));
                        Input::Connected { conn }
                    }
                    Err(error) => Input::ConnectFailed { conn, error },
                }
            }
            Event::Input(input) => input,
            Event::Link(event) => return Self::link_input(event),
            Event::Learned => {
                if let (Some(memory), Some(adaptive)) = (&mut self.memory, &self.adaptive) {
                    memory.learned(&adaptive::lock(adaptive));
                }
                return None;
            }
            Event::InputClosed => {
                log::debug!("stdin closed; the connection stays up");
                return None;
            }
            Event::LocalChanged => {
                // Like a state change: written at once (the socket thread spaces them).
                let facts = self.facts();
                self.report.publish(&facts, self.observer.as_ref());
                return None;
            }
            Event::Reload => Input::Reload {
                writes_idle: self.outbox.is_idle(),
            },
        })
    }

    /// Carries out `actions` in order, feeding what they report back to the machine.
    fn carry_out(&mut self, actions: Vec<Action>) -> Option<Ending> {
        let mut queue = VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            if let Action::Exit(ending) = action {
                return Some(ending);
            }
            if let Some(input) = self.carry_out_one(action) {
                queue.extend(self.feed(input));
            }
        }
        None
    }

    fn carry_out_one(&mut self, action: Action) -> Option<Input> {
        match action {
            Action::StartAttempt { conn } => return Some(self.start_attempt(conn)),
            Action::Abandon { conn, timed_out } => {
                let stage = self.abandon(conn);
                if timed_out {
                    let error = ConnectError::Timeout(stage);
                    return Some(Input::ConnectFailed { conn, error });
                }
            }
            Action::Activate { conn } => {
                let connection = match self.upgraded.take() {
                    Some((upgraded, connection)) if upgraded == conn => connection,
                    _ => return None,
                };
                return Some(match self.activate(conn, connection) {
                    Ok(local) => Input::Serving { conn, local },
                    Err(error) => Input::ConnectFailed { conn, error },
                });
            }
            Action::CheckLiveness { conn } => return self.check_liveness(conn),
            Action::Discard { conn } => {
                if self.upgraded.as_ref().is_some_and(|(c, _)| *c == conn) {
                    self.upgraded = None;
                }
            }
            Action::Close {
                code,
                reason,
                write_bound,
            } => {
                if let Some(active) = &self.active {
                    if let Some(bound) = write_bound {
                        let _ = active.tcp.set_write_timeout(Some(bound));
                    }
                    let _ = active.commands.send(Command::Close(code, reason));
                }
            }
            Action::Teardown { graceful } => {
                self.teardown(graceful);
                return Some(Input::TornDown);
            }
            Action::ReloadFiles => match TlsFiles::load(&self.config) {
                Ok(files) => {
                    self.tls_files = files;
                    self.connector = None;
                }
                Err(err) => log::error!("{err}; keeping the TLS files read before"),
            },
            Action::Publish => {
                let facts = self.facts();
                self.report.publish(&facts, self.observer.as_ref());
            }
            Action::Refresh => {
                let facts = self.facts();
                self.report.refresh(&facts, self.observer.as_ref());
            }
            Action::CountFailure(reason) => self.report.count_failure(reason),
            Action::Learn(evidence) => self.learn(evidence),
            Action::Watchdog => self.report.notify(&[Notify::Watchdog]),
            Action::NotifyStopping => self.report.notify(&[Notify::Stopping]),
            Action::Exit(_) => {}
        }
        None
    }

    fn finish(mut self, ending: Ending) -> Ending {
        if let Some(watch) = self.link_watch.take() {
            watch.stop();
        }
        // No more lines: a producer waiting for room goes on, its line discarded.
        self.outbox.close();
        self.teardown(false);
        if let (Some(memory), Some(adaptive)) = (&mut self.memory, &self.adaptive) {
            memory.exit(&adaptive::lock(adaptive));
        }
        // Aborted attempts end at once; one stuck in DNS or in the TCP connect cannot be
        // interrupted and gets a bounded wait before the process leaves it behind.
        let give_up = self.machine.leave_by(Instant::now());
        self.finish_delivery(give_up);
        for attempt in self.attempts.values() {
            attempt.abort.abort();
        }
        while !self.attempts.is_empty() {
            let left = give_up.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(left) {
                Ok(Event::AttemptEnded { conn, .. }) => {
                    if let Some(attempt) = self.attempts.remove(&conn) {
                        let _ = attempt.thread.join();
                    }
                }
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

    /// The facts a publish reports, from the machine and the counters.
    fn facts(&self) -> Facts {
        Facts {
            state: self.machine.state(),
            reconnects: self.machine.reconnects(),
            last_error: self.machine.last_error().map(str::to_owned),
            rtt: self
                .active
                .as_ref()
                .and_then(|active| liveness::lock(&active.liveness).rtt()),
            connected: self.active.is_some(),
            dropped: self.outbox.dropped(),
            ping_interval: self.ping_interval(),
            heartbeats: Traffic::get(&self.traffic.heartbeats),
            resent: Traffic::get(&self.traffic.resent),
            bytes_sent: Traffic::get(&self.traffic.bytes_sent),
            bytes_received: Traffic::get(&self.traffic.bytes_received),
            messages_sent: Traffic::get(&self.traffic.messages_sent),
            messages_received: Traffic::get(&self.traffic.messages_received),
            local: self.local_counts.as_ref().map(|counts| counts()),
        }
    }

    /// The heartbeat interval in force: the learned one with `auto`.
    fn ping_interval(&self) -> Duration {
        match &self.adaptive {
            Some(adaptive) => adaptive::lock(adaptive).interval(),
            None => self.config.ping_interval,
        }
    }
}

/// The machine's settings for `config`: the status is refreshed only if someone reads
/// it (a status file or systemd), at most once per ping interval and [`MIN_REFRESH`].
fn settings(config: &Config, watchdog: Option<Duration>, reports_status: bool) -> Settings {
    Settings {
        once: config.once,
        max_retries: config.max_retries,
        heartbeat_off: config.ping_interval.is_zero(),
        watchdog,
        refresh: reports_status.then(|| config.ping_interval.max(MIN_REFRESH)),
    }
}

/// Drops server messages (`--once` prints only the round trip).
struct Silent;

impl Observer for Silent {
    fn message(&self, _text: &str) {}
}
