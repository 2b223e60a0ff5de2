//! The heartbeat thread, which is also the connection's only writer of data frames.
//!
//! It sleeps in `recv_timeout` on its command channel until the next ping is due,
//! the oldest unanswered ping runs out of time, or a command arrives, so an idle
//! connection wakes only for its heartbeat; dropping every command sender ends the
//! thread at once. The reader records answers in the shared
//! [`Liveness`](super::liveness::Liveness) without
//! waking anyone; this thread reads them at its next wake-up and reports a dead
//! connection to the supervisor itself. Lines reach it through the [`Outbox`]: the
//! first line of a burst wakes it, and it writes batches until the outbox is empty.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::{Duration, Instant};

use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Bytes, Message};

use super::liveness::{SharedLiveness, encode_ping, lock};
use super::socket::SharedSocket;
use crate::adaptive::{self, SharedAdaptive};
use crate::config::HeartbeatMode;
use crate::events::{ConnId, Event};
use crate::outbox::Outbox;
use crate::traffic::Traffic;

/// What the supervisor (and the outbox) ask the heartbeat thread to do.
#[derive(Debug)]
pub enum Command {
    /// Lines wait in the outbox.
    Wake,
    /// Send a Close frame with this code and reason; no lines are written after it.
    Close(CloseCode, &'static str),
}

/// How the heartbeat thread pings.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Zero: no heartbeat.
    pub interval: Duration,
    /// Control or text.
    pub mode: HeartbeatMode,
    /// Text heartbeat payload.
    pub ping_text: String,
    /// Send the first heartbeat at once (`--once`) instead of after one interval.
    pub immediate: bool,
    /// `--ping-interval auto`: a heartbeat is due once the learned interval has
    /// passed with nothing received, and each answer teaches the learning rule.
    pub adaptive: Option<SharedAdaptive>,
}

/// Most bytes of lines written per lock of the socket: one `write(2)` for a burst
/// of small lines, and the reader and heartbeat get their turn between batches.
pub const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// Everything the heartbeat thread needs.
pub struct Writer {
    /// Connection this thread serves; tags every event.
    pub conn: ConnId,
    /// The shared WebSocket.
    pub socket: Arc<SharedSocket>,
    /// When and how to ping.
    pub schedule: Schedule,
    /// Shared with the reader.
    pub liveness: SharedLiveness,
    /// Lines to send.
    pub outbox: Arc<Outbox>,
    /// Wake-ups and the Close; dropping every sender ends the thread.
    pub commands: Receiver<Command>,
    /// The supervisor's channel.
    pub events: Sender<Event>,
    /// Heartbeats and lines sent are counted here.
    pub traffic: Arc<Traffic>,
}

impl Writer {
    /// Body of the heartbeat thread. It judges liveness itself, so an idle, healthy
    /// connection costs one wake-up per ping here and one in the reader, and none in
    /// the supervisor. It is also the only writer of lines: woken by the outbox, it
    /// writes them in batches until the outbox runs dry, and puts back what a
    /// failed write did not take.
    pub fn run(self) {
        let (base, pong_timeout) = {
            let live = lock(&self.liveness);
            (live.base(), live.pong_timeout())
        };
        let schedule = &self.schedule;
        let start = Instant::now();
        // Fixed interval: the next heartbeat keeps the cadence. Adaptive: computed at
        // every turn from how long nothing has been received.
        let mut next_fixed = match (schedule.immediate, schedule.interval.is_zero()) {
            (true, _) => Some(start),
            (false, true) => None,
            (false, false) => Some(start + schedule.interval),
        };
        let mut last_ping: Option<Instant> = None;
        // Adaptive: the idle gap before the heartbeat still waiting for its answer.
        let mut probe: Option<Duration> = None;
        let mut seq: u64 = 0;
        let mut lines_waiting = false;
        let mut closing = false;
        let (failed, idle) = loop {
            let now = Instant::now();
            let (deadline, last_proof, all_answered) = {
                let live = lock(&self.liveness);
                if live.is_dead(now) {
                    let reason = format!(
                        "no heartbeat answer within --pong-timeout ({} ms)",
                        pong_timeout.as_millis()
                    );
                    break (reason, probe);
                }
                (live.deadline(), live.last_proof(), live.all_answered())
            };
            let next_ping = match &schedule.adaptive {
                None => next_fixed,
                Some(adaptive) => {
                    let mut adaptive = adaptive::lock(adaptive);
                    if let Some(gap) = probe.filter(|_| all_answered) {
                        adaptive.on_answered(gap, last_proof.unwrap_or(now));
                        probe = None;
                    }
                    adaptive.on_time(now);
                    if schedule.immediate && last_ping.is_none() {
                        Some(start)
                    } else {
                        let idle_since = [Some(start), last_proof, last_ping]
                            .into_iter()
                            .flatten()
                            .max();
                        idle_since.map(|since| since + adaptive.interval())
                    }
                }
            };
            if let Some(due) = next_ping.filter(|&due| now >= due) {
                seq += 1;
                // Recorded before the write, so the answer can never be seen first.
                lock(&self.liveness).on_ping_sent(seq, now);
                let message = match schedule.mode {
                    HeartbeatMode::Control => {
                        let micros = now.saturating_duration_since(base).as_micros() as u64;
                        Message::Ping(Bytes::copy_from_slice(&encode_ping(seq, micros)))
                    }
                    HeartbeatMode::Text => Message::text(schedule.ping_text.clone()),
                };
                if schedule.adaptive.is_some() {
                    let quiet_since = last_proof.unwrap_or(start).max(start);
                    probe = Some(now.saturating_duration_since(quiet_since));
                }
                last_ping = Some(now);
                Traffic::add(&self.traffic.heartbeats, 1);
                if let Err(err) = self.socket.write(|ws| ws.send(message)) {
                    break (describe_write_error(err), None);
                }
                // Keep the cadence, but never catch up on missed beats in a burst.
                let next = due + schedule.interval;
                next_fixed = Some(if next > Instant::now() {
                    next
                } else {
                    Instant::now() + schedule.interval
                })
                .filter(|_| !schedule.interval.is_zero());
                continue;
            }
            let command = if lines_waiting && !closing {
                let batch = self.outbox.take(WRITE_BATCH_BYTES);
                if batch.is_empty() {
                    lines_waiting = false;
                    continue;
                }
                if let Err(err) = self.write_lines(batch) {
                    break (describe_write_error(err), None);
                }
                // A long burst does not hold back a Close or the end of the connection.
                match self.commands.try_recv() {
                    Ok(command) => command,
                    Err(TryRecvError::Empty) => continue,
                    Err(TryRecvError::Disconnected) => return,
                }
            } else {
                let wake = [next_ping, deadline].into_iter().flatten().min();
                let received = match wake {
                    Some(wake) => self
                        .commands
                        .recv_timeout(wake.saturating_duration_since(now)),
                    None => self
                        .commands
                        .recv()
                        .map_err(|_| RecvTimeoutError::Disconnected),
                };
                match received {
                    Ok(command) => command,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            match command {
                Command::Wake => lines_waiting = true,
                Command::Close(code, reason) => {
                    closing = true;
                    // `close` writes and flushes the frame itself.
                    let closed = self.socket.write(|ws| {
                        ws.close(Some(CloseFrame {
                            code,
                            reason: reason.into(),
                        }))
                    });
                    if let Err(err) = closed {
                        break (describe_write_error(err), None);
                    }
                }
            }
        };
        let _ = self.events.send(Event::Dead {
            conn: self.conn,
            reason: failed,
            idle,
        });
    }

    /// Writes `batch` with one flush. On failure, the lines tungstenite did not
    /// take go back to the front of the outbox; a line it took may have reached
    /// the server and is not sent twice.
    fn write_lines(&self, batch: Vec<String>) -> Result<(), tungstenite::Error> {
        let count = batch.len();
        let mut lines = VecDeque::from(batch);
        let written = self.socket.write(|ws| {
            while let Some(line) = lines.pop_front() {
                if !ws.can_write() {
                    // Closing: this line was never framed; it waits for the next connection.
                    lines.push_front(line);
                    return Err(tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::SendAfterClosing,
                    ));
                }
                ws.write(Message::text(line))?;
            }
            ws.flush()
        });
        let unsent = lines.len();
        if written.is_ok() {
            Traffic::add(&self.traffic.messages_sent, (count - unsent) as u64);
        }
        self.outbox.taken_done(lines.into());
        written
    }
}

fn describe_write_error(err: tungstenite::Error) -> String {
    match err {
        tungstenite::Error::Io(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            "write timed out: the server stopped reading".into()
        }
        err => format!("write: {err}"),
    }
}
