//! Serving a live connection: its reader and writer threads, judging its
//! liveness from the bookkeeping they share, and tearing it down (the socket shut
//! down before any join, unacknowledged lines queued again).

use std::net::{IpAddr, Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{Supervisor, THREAD_STACK};
use crate::config::HeartbeatMode;
use crate::connection::reader::Reader;
use crate::connection::socket::SharedSocket;
use crate::connection::writer::{Command, PingPlan, Writer};
use crate::error::ConnectError;
use crate::events::ConnId;
use crate::net::linkwatch;
use crate::net::stream::Connection;
use crate::os;
use crate::report::traffic::Traffic;
use crate::rules::heartbeat::{self, Cadence};
use crate::rules::liveness::{self, Liveness, SharedLiveness, Verdict};
use crate::rules::machine::{CLOSE_DRAIN, Input};
use crate::rules::unacked::SentWindow;

/// A live connection and the two threads serving it.
pub(super) struct Active {
    pub(super) conn: ConnId,
    /// A handle on the TCP socket: to shut it down under a stuck thread, and to ask
    /// the kernel what the peer acknowledged.
    pub(super) tcp: TcpStream,
    pub(super) commands: Sender<Command>,
    pub(super) reader: JoinHandle<()>,
    /// Returns the lines sent and not known acknowledged.
    pub(super) heartbeat: JoinHandle<Option<SentWindow>>,
    /// Disconnects when the writer thread has ended: a bounded wait for it.
    pub(super) heartbeat_done: Receiver<()>,
    pub(super) liveness: SharedLiveness,
    /// The writer thread's plan, to judge its answers by the same rule.
    pub(super) plan: PingPlan,
}

impl Supervisor {
    /// Judges the live connection from the bookkeeping its threads share (never
    /// from inside a socket call, so a thread stuck in one cannot hold the verdict
    /// back): dead, or when to look again.
    pub(super) fn check_liveness(&mut self, conn: ConnId) -> Option<Input> {
        let active = self.active.as_ref().filter(|active| active.conn == conn)?;
        let now = Instant::now();
        let (next_ping, _) = active.plan.next_ping(&active.liveness, now);
        let verdict = liveness::lock(&active.liveness).verdict(now, next_ping, self.write_bound());
        Some(match verdict {
            Verdict::Alive(at) => Input::LivenessAt { conn, at },
            Verdict::Dead(reason, idle) => Input::Dead { conn, reason, idle },
        })
    }

    /// Bound on every write ([`heartbeat::write_bound`]).
    pub(super) fn write_bound(&self) -> Duration {
        heartbeat::write_bound(self.config.pong_timeout)
    }

    /// Serves `connection`: its reader and writer threads, and the outbox's wake-ups.
    /// Returns its local address and interface, for the link changes.
    pub(super) fn activate(
        &mut self,
        conn: ConnId,
        connection: Connection,
    ) -> Result<Option<(IpAddr, Option<u32>)>, ConnectError> {
        match &connection.subprotocol {
            Some(protocol) => log::info!(
                "connected to {} (subprotocol {protocol})",
                self.config.target.shown()
            ),
            None => log::info!("connected to {}", self.config.target.shown()),
        }
        let Connection { ws, tcp, .. } = connection;
        let socket = Arc::new(SharedSocket::new(ws));
        let strict = heartbeat::own_answer_only(self.config.strict_pong, self.config.once);
        let liveness: SharedLiveness = Arc::new(Mutex::new(Liveness::new(
            self.config.heartbeat,
            strict,
            self.config.pong_timeout,
            Instant::now(),
        )));
        let (commands, command_inbox) = mpsc::channel();
        let wait_on = tcp.try_clone().map_err(ConnectError::Tcp)?;
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
            traffic: Arc::clone(&self.traffic),
        };
        let plan = PingPlan {
            cadence: Cadence {
                interval: self.config.ping_interval,
                immediate: self.config.once,
            },
            mode: self.config.heartbeat,
            ping_text: self.config.ping_text.clone(),
            adaptive: self.adaptive.clone(),
        };
        let writer = Writer {
            conn,
            socket,
            plan: plan.clone(),
            tcp: tcp.try_clone().map_err(ConnectError::Tcp)?,
            unacked_bytes: self.config.queue_bytes,
            liveness: Arc::clone(&liveness),
            outbox: Arc::clone(&self.outbox),
            commands: command_inbox,
            events: self.events.clone(),
            traffic: Arc::clone(&self.traffic),
        };
        let reader = thread::Builder::new()
            .name("wsbeat-reader".into())
            .stack_size(THREAD_STACK)
            .spawn(move || reader.run())
            .inspect_err(|_| {
                let _ = tcp.shutdown(Shutdown::Both);
            })
            .map_err(ConnectError::Tcp)?;
        let (done, heartbeat_done) = mpsc::channel::<()>();
        let heartbeat = thread::Builder::new()
            .name("wsbeat-writer".into())
            .stack_size(THREAD_STACK)
            .spawn(move || {
                let unacknowledged = writer.run();
                drop(done);
                unacknowledged
            });
        let heartbeat = match heartbeat {
            Ok(heartbeat) => heartbeat,
            Err(err) => {
                let _ = tcp.shutdown(Shutdown::Both);
                let _ = reader.join();
                return Err(ConnectError::Tcp(err));
            }
        };
        // From here on the outbox wakes the writer when lines wait (at once if some
        // queued up during the outage).
        let wake = commands.clone();
        self.outbox.attach(Box::new(move || {
            let _ = wake.send(Command::Wake);
        }));
        self.report.connection_started();
        let local = tcp.local_addr().ok().map(|addr| {
            let ip = addr.ip();
            (ip, linkwatch::interface_of(ip))
        });
        self.active = Some(Active {
            conn,
            tcp,
            commands,
            reader,
            heartbeat,
            heartbeat_done,
            liveness,
            plan,
        });
        Ok(local)
    }

    /// Ends the live connection and joins its threads. `graceful` lets queued
    /// writes (a Close) go out first, for at most [`CLOSE_DRAIN`]; otherwise the
    /// socket is shut down at once, because a dead peer will never take them.
    /// Either way the socket is shut down before any join, so a thread blocked in
    /// a socket call (a TLS write waiting on a read) cannot hold the join up.
    pub(super) fn teardown(&mut self, graceful: bool) {
        let Some(active) = self.active.take() else {
            return;
        };
        let Active {
            tcp,
            commands,
            reader,
            heartbeat,
            heartbeat_done,
            ..
        } = active;
        // Lines go back to drop-oldest mode, and a reader waiting for room in the
        // output buffer is released; the outbox also drops its waker, the writer's
        // last command sender besides ours.
        self.outbox.detach();
        self.delivery.end_connection();
        if !graceful {
            let _ = tcp.shutdown(Shutdown::Both);
        }
        drop(commands);
        if graceful {
            // Ends early when the thread has ended (its sender dropped).
            let _ = heartbeat_done.recv_timeout(CLOSE_DRAIN);
        }
        let _ = tcp.shutdown(Shutdown::Both);
        let window = heartbeat.join().ok().flatten();
        let _ = reader.join();
        if let Some(window) = window {
            self.resend_unacknowledged(&tcp, window);
        }
    }

    /// Lines the dead connection's peer never acknowledged go back to the front of
    /// the queue, for the next connection. The kernel's count is read now, before
    /// the socket is closed; a shutdown does not change it.
    pub(super) fn resend_unacknowledged(&mut self, tcp: &TcpStream, window: SentWindow) {
        let lines = window.unacknowledged(os::tcp_bytes_acked(tcp.as_fd()));
        if lines.is_empty() {
            return;
        }
        let count = lines.len();
        let kept = self.outbox.resend(lines);
        Traffic::add(&self.traffic.resent, kept as u64);
        log::info!(
            "{count} line(s) sent but not acknowledged by the peer's TCP; {kept} queued to send again"
        );
    }
}
