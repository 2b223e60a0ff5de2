//! The writer thread: the connection's only writer, of heartbeats and of lines.
//!
//! It sleeps in `recv_timeout` on its command channel until the next heartbeat is
//! due ([`Cadence::next_ping`]) or a command arrives, so an idle connection wakes
//! only for its heartbeat; dropping every command sender ends the thread at once.
//! It does not judge liveness: a thread that can block in a socket call cannot be
//! trusted to time itself out (a TLS write that waits on a read, during a
//! renegotiation, is bounded by no socket timeout). It records what it sends, and
//! when it is inside a write, in the shared [`Liveness`](crate::rules::liveness::Liveness);
//! the supervisor judges from there and shuts the socket down under a stuck thread.
//! Lines reach it through the [`Outbox`]: the first line of a burst wakes it, and
//! it writes batches until the outbox is empty.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::{Duration, Instant};

use std::net::TcpStream;
use std::os::fd::AsFd;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use tungstenite::{Bytes, Message, WebSocket};

use super::socket::SharedSocket;
use crate::config::HeartbeatMode;
use crate::events::{ConnId, Event, Input};
use crate::local::outbox::Outbox;
use crate::net::stream::Stream;
use crate::os;
use crate::report::traffic::Traffic;
use crate::rules::adaptive::{self, SharedAdaptive};
use crate::rules::heartbeat::Cadence;
use crate::rules::liveness::{SharedLiveness, encode_ping, lock};
use crate::rules::unacked::{self, Batch, SentWindow};

/// What the supervisor (and the outbox) ask the writer thread to do.
#[derive(Debug)]
pub enum Command {
    /// Lines wait in the outbox.
    Wake,
    /// Send a Close frame with this code and reason; no lines are written after it.
    Close(CloseCode, &'static str),
}

/// How the writer thread pings.
#[derive(Debug, Clone)]
pub struct PingPlan {
    /// When: fixed interval (or none), or at once (`--once`).
    pub cadence: Cadence,
    /// Control or text.
    pub mode: HeartbeatMode,
    /// Text heartbeat payload.
    pub ping_text: String,
    /// `--ping-interval auto`: a heartbeat is due once the learned interval has
    /// passed with nothing received, and each answer teaches the learning rule.
    pub adaptive: Option<SharedAdaptive>,
}

impl PingPlan {
    /// The next heartbeat's due time and the interval it belongs to, from the
    /// shared bookkeeping. With `auto` an answered probe is taught to the learning
    /// rule first, so the interval is the freshest.
    pub fn next_ping(
        &self,
        liveness: &SharedLiveness,
        now: Instant,
    ) -> (Option<Instant>, Duration) {
        let mut live = lock(liveness);
        let learned = self.adaptive.as_ref().map(|adaptive| {
            let mut adaptive = adaptive::lock(adaptive);
            if let Some(gap) = live.probe().filter(|_| live.all_answered()) {
                adaptive.on_answered(gap, live.last_proof().unwrap_or(now));
                live.set_probe(None);
            }
            adaptive.on_time(now);
            adaptive.interval()
        });
        (
            self.cadence.next_ping(&live, learned),
            self.cadence.current(learned),
        )
    }
}

/// Most bytes of lines written per lock of the socket: one `write(2)` for a burst
/// of small lines, and the reader and heartbeat get their turn between batches.
pub const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// Everything the writer thread needs.
pub struct Writer {
    /// Connection this thread serves; tags every event.
    pub conn: ConnId,
    /// The shared WebSocket.
    pub socket: Arc<SharedSocket>,
    /// When and how to ping.
    pub plan: PingPlan,
    /// Shared with the reader and the supervisor.
    pub liveness: SharedLiveness,
    /// Lines to send.
    pub outbox: Arc<Outbox>,
    /// Wake-ups and the Close; dropping every sender ends the thread.
    pub commands: Receiver<Command>,
    /// The supervisor's channel.
    pub events: Sender<Event>,
    /// Heartbeats and lines sent are counted here.
    pub traffic: Arc<Traffic>,
    /// A handle on the TCP socket, to ask the kernel what the peer acknowledged.
    pub tcp: TcpStream,
    /// `--queue-bytes`: the most bytes of sent lines kept until acknowledged.
    pub unacked_bytes: usize,
}

/// While the sent-but-unacknowledged window is full, the kernel is asked again
/// after this as long as acknowledgements keep coming (a busy link: the window is
/// the pace), doubling up to [`WINDOW_RECHECK_MAX`] while none come (a clogged
/// link, which the judge declares dead meanwhile): acknowledgements wake nobody.
const WINDOW_RECHECK_MIN: Duration = Duration::from_millis(1);
/// See [`WINDOW_RECHECK_MIN`].
const WINDOW_RECHECK_MAX: Duration = Duration::from_millis(500);

impl Writer {
    /// Body of the writer thread: heartbeats when they are due, lines when the
    /// outbox has some, the Close when asked; a failed write ends the connection.
    /// Woken by the outbox, it writes lines in batches until the outbox runs dry,
    /// and puts back what a failed write did not take. Returns the lines sent and
    /// not yet known acknowledged (`None` where the kernel cannot tell), for the
    /// supervisor to queue again once the connection is gone.
    pub fn run(self) -> Option<SentWindow> {
        let base = lock(&self.liveness).base();
        let mut window = self
            .socket
            .write(|ws| ws.get_ref().written())
            .map(|_| SentWindow::new(self.unacked_bytes));
        let mut recheck = WINDOW_RECHECK_MIN;
        // The peer's acknowledgements when the window was last found full.
        let mut last_acked = 0u64;
        let mut seq: u64 = 0;
        let mut lines_waiting = false;
        let mut closing = false;
        let failed = loop {
            let now = Instant::now();
            let (next_ping, interval) = self.plan.next_ping(&self.liveness, now);
            if next_ping.is_some_and(|due| now >= due) {
                seq += 1;
                {
                    // Recorded before the write, so the answer can never be seen first.
                    let mut live = lock(&self.liveness);
                    live.on_ping_sent(seq, now, interval);
                    if self.plan.adaptive.is_some() {
                        // The path's real idle gap: any frame kept the flow alive.
                        let quiet_since = live.last_proof().unwrap_or(base).max(base);
                        live.set_probe(Some(now.saturating_duration_since(quiet_since)));
                    }
                }
                let message = match self.plan.mode {
                    HeartbeatMode::Control => {
                        let micros = now.saturating_duration_since(base).as_micros() as u64;
                        Message::Ping(Bytes::copy_from_slice(&encode_ping(seq, micros)))
                    }
                    HeartbeatMode::Text => Message::text(self.plan.ping_text.clone()),
                };
                Traffic::add(&self.traffic.heartbeats, 1);
                if let Err(err) = self.write(false, |ws| ws.send(message)) {
                    break describe_write_error(err);
                }
                continue;
            }
            let sending = lines_waiting && !closing;
            let (window_open, progressed) = if sending {
                self.window_has_room(&mut window, &mut last_acked)
            } else {
                (false, false)
            };
            let command = if window_open {
                recheck = WINDOW_RECHECK_MIN;
                let batch = self.outbox.take(WRITE_BATCH_BYTES);
                if batch.is_empty() {
                    lines_waiting = false;
                    continue;
                }
                if let Err(err) = self.write_lines(batch, &mut window) {
                    break describe_write_error(err);
                }
                // A long burst does not hold back a Close or the end of the connection.
                match self.commands.try_recv() {
                    Ok(command) => command,
                    Err(TryRecvError::Empty) => continue,
                    Err(TryRecvError::Disconnected) => return window,
                }
            } else {
                // Lines wait but the window is full: look at the acknowledgements again
                // later; the outbox fills meanwhile and pauses its producers.
                if progressed {
                    // Acknowledgements came since the last look: the link moves.
                    recheck = WINDOW_RECHECK_MIN;
                }
                let window_recheck = sending.then(|| {
                    let at = now + recheck;
                    recheck = (recheck * 2).min(WINDOW_RECHECK_MAX);
                    at
                });
                let wake = [next_ping, window_recheck].into_iter().flatten().min();
                let received = match wake {
                    Some(due) => self
                        .commands
                        .recv_timeout(due.saturating_duration_since(now)),
                    None => self
                        .commands
                        .recv()
                        .map_err(|_| RecvTimeoutError::Disconnected),
                };
                match received {
                    Ok(command) => command,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return window,
                }
            };
            match command {
                Command::Wake => lines_waiting = true,
                Command::Close(code, reason) => {
                    closing = true;
                    // `close` writes and flushes the frame itself.
                    let closed = self.write(false, |ws| {
                        ws.close(Some(CloseFrame {
                            code,
                            reason: reason.into(),
                        }))
                    });
                    if let Err(err) = closed {
                        break describe_write_error(err);
                    }
                }
            }
        };
        let _ = self.events.send(Event::Input(Input::Dead {
            conn: self.conn,
            reason: failed,
            idle: None,
        }));
        window
    }

    /// Runs `write` on the socket, with the time it started in the shared
    /// bookkeeping for the supervisor to judge. `messages`: it carries lines of
    /// ours, which only an answered heartbeat sent after them proves delivered.
    fn write<T>(&self, messages: bool, write: impl FnOnce(&mut WebSocket<Stream>) -> T) -> T {
        {
            let now = Instant::now();
            let mut live = lock(&self.liveness);
            if messages {
                live.on_messages_sent(now);
            }
            live.set_writing(Some(now));
        }
        let result = self.socket.write(write);
        lock(&self.liveness).set_writing(None);
        result
    }

    /// Writes `batch` with one flush. On failure, the lines tungstenite did not
    /// take go back to the front of the outbox. The lines it took are kept in
    /// `window` until the peer's TCP acknowledges them (with the batch's end in the
    /// stream, or, for a failed batch, no known end), so a dead link loses none.
    fn write_lines(
        &self,
        batch: Vec<String>,
        window: &mut Option<SentWindow>,
    ) -> Result<(), tungstenite::Error> {
        let count = batch.len();
        let mut lines = VecDeque::from(batch);
        let mut kept = window
            .as_ref()
            .map(|_| Batch::with_capacity(lines.iter().map(String::len).sum()));
        let (written, end) = self.write(true, |ws| {
            let written = (|| {
                while let Some(line) = lines.pop_front() {
                    if !ws.can_write() {
                        // Closing: this line was never framed; it waits for the next connection.
                        lines.push_front(line);
                        return Err(tungstenite::Error::Protocol(
                            tungstenite::error::ProtocolError::SendAfterClosing,
                        ));
                    }
                    if let Some(kept) = &mut kept {
                        kept.push(&line);
                    }
                    ws.write(Message::text(line))?;
                }
                ws.flush()
            })();
            let end = ws.get_ref().written();
            (written, end)
        });
        let unsent = lines.len();
        if written.is_ok() {
            Traffic::add(&self.traffic.messages_sent, (count - unsent) as u64);
        }
        if let (Some(window), Some(kept)) = (window, kept) {
            let end = match (&written, end) {
                (Ok(()), Some(end)) => end,
                _ => unacked::UNKNOWN,
            };
            window.sent(kept, end);
        }
        self.outbox.taken_done(lines.into());
        written
    }

    /// Whether the window has room for more lines; when full, the kernel is asked
    /// what the peer has acknowledged since (only then, not per line).
    /// Returns that, and whether acknowledgements came since the last look
    /// (`last_acked`, updated).
    fn window_has_room(
        &self,
        window: &mut Option<SentWindow>,
        last_acked: &mut u64,
    ) -> (bool, bool) {
        let Some(window) = window else {
            return (true, false);
        };
        let mut progressed = false;
        if window.is_full() {
            if let Some(acked) = os::tcp_bytes_acked(self.tcp.as_fd()) {
                progressed = acked > *last_acked;
                *last_acked = acked;
                window.acknowledged(acked);
            }
        }
        (!window.is_full(), progressed)
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
