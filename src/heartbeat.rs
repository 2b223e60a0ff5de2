//! Heartbeat: the pure liveness bookkeeping ([`Liveness`]) and the per-connection
//! heartbeat thread, which is also the connection's only writer of data frames.
//!
//! The thread sleeps in `recv_timeout` on its command channel until the next ping
//! is due, the oldest unanswered ping runs out of time, or a command arrives, so an
//! idle connection wakes only for its heartbeat; dropping the command sender ends
//! the thread at once. The reader records answers in the shared [`Liveness`]
//! without waking anyone; this thread reads them at its next wake-up and reports
//! a dead connection to the supervisor itself.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Bytes, Message};

use crate::config::HeartbeatMode;
use crate::events::{ConnId, Event};
use crate::outbox::Outbox;
use crate::reader::SharedSocket;

/// Pings older than this many unanswered ones are forgotten; the oldest decides death anyway.
const MAX_UNANSWERED: usize = 64;

/// Control ping payload: sequence number and send time, so a pong is matched to its
/// ping and the round trip is measured even if events arrive out of order.
pub fn encode_ping(seq: u64, sent_micros: u64) -> [u8; 16] {
    let mut payload = [0u8; 16];
    payload[..8].copy_from_slice(&seq.to_be_bytes());
    payload[8..].copy_from_slice(&sent_micros.to_be_bytes());
    payload
}

/// Inverse of [`encode_ping`]; `None` for a payload we did not send.
pub fn decode_pong(payload: &[u8]) -> Option<(u64, u64)> {
    let payload: &[u8; 16] = payload.try_into().ok()?;
    let (seq, micros) = payload.split_at(8);
    Some((
        u64::from_be_bytes(seq.try_into().ok()?),
        u64::from_be_bytes(micros.try_into().ok()?),
    ))
}

/// What a received frame says about liveness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// A control Pong with its payload.
    Pong(Bytes),
    /// A text message equal to `--pong-text` (text heartbeat mode).
    TextPong,
    /// Any other frame; proves liveness unless `--strict-pong`.
    Other,
}

/// Whether the connection is known alive, per the contract's rules, for one connection.
///
/// Pure: every method takes `now`. Tolerates the heartbeat thread's "ping sent"
/// report arriving after the reader's report of its answer.
#[derive(Debug)]
pub struct Liveness {
    mode: HeartbeatMode,
    strict: bool,
    pong_timeout: Duration,
    /// Origin of the microsecond timestamps carried in ping payloads.
    base: Instant,
    unanswered: VecDeque<(u64, Instant)>,
    /// Latest moment something counting as an answer arrived.
    answered_at: Option<Instant>,
    /// Highest ping sequence answered by a matching pong (control mode).
    answered_seq: Option<u64>,
    /// Latest heartbeat sent; text pongs carry no sequence, so they are timed from it.
    last_sent: Option<Instant>,
    rtt: Option<Duration>,
    proven: bool,
    /// The reader is waiting for room in a full output buffer: answers may be
    /// sitting unread in the socket, so silence is not the server's fault.
    paused: bool,
    /// When the reader last went on after such a pause.
    resumed_at: Option<Instant>,
}

impl Liveness {
    /// Bookkeeping for a connection whose ping payloads count time from `base`.
    pub fn new(
        mode: HeartbeatMode,
        strict: bool,
        pong_timeout: Duration,
        base: Instant,
    ) -> Liveness {
        Liveness {
            mode,
            strict,
            pong_timeout,
            base,
            unanswered: VecDeque::new(),
            answered_at: None,
            answered_seq: None,
            last_sent: None,
            rtt: None,
            proven: false,
            paused: false,
            resumed_at: None,
        }
    }

    /// The reader stopped reading because the output (stdout) does not keep up.
    /// Until [`resume`](Liveness::resume), no heartbeat is judged unanswered.
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// The reader reads again at `at`: every heartbeat still unanswered gets a
    /// full `--pong-timeout` from now, time to read the answers that waited.
    pub fn resume(&mut self, at: Instant) {
        self.paused = false;
        self.resumed_at = self.resumed_at.max(Some(at));
    }

    /// The heartbeat thread sent heartbeat `seq` at `sent_at`.
    pub fn on_ping_sent(&mut self, seq: u64, sent_at: Instant) {
        self.last_sent = self.last_sent.max(Some(sent_at));
        if self.is_answered(seq, sent_at) {
            return;
        }
        if self.unanswered.len() == MAX_UNANSWERED {
            // Keep the oldest: it carries the earliest deadline.
            self.unanswered.pop_back();
        }
        self.unanswered.push_back((seq, sent_at));
    }

    /// A frame arrived at `at`. Returns the round trip it measured, if it was a matching pong.
    pub fn on_frame(&mut self, proof: &Proof, at: Instant) -> Option<Duration> {
        let (counts, rtt) = match (proof, self.mode) {
            (Proof::Pong(payload), HeartbeatMode::Control) => match decode_pong(payload) {
                Some((seq, micros)) => {
                    self.answered_seq = self.answered_seq.max(Some(seq));
                    let sent_at = self.base + Duration::from_micros(micros);
                    (true, Some(at.saturating_duration_since(sent_at)))
                }
                None => (!self.strict, None),
            },
            (Proof::TextPong, HeartbeatMode::Text) => {
                let rtt = self
                    .last_sent
                    .filter(|&sent_at| sent_at <= at)
                    .map(|sent_at| at - sent_at);
                (true, rtt)
            }
            _ => (!self.strict, None),
        };
        if counts {
            self.answered_at = self.answered_at.max(Some(at));
        }
        // Sequence numbers and send times both grow along the queue, so the answered
        // heartbeats are always at its front.
        let before = self.unanswered.len();
        while let Some(&(seq, sent_at)) = self.unanswered.front() {
            if !self.is_answered(seq, sent_at) {
                break;
            }
            self.unanswered.pop_front();
        }
        if self.unanswered.len() < before || rtt.is_some() {
            self.proven = true;
        }
        if rtt.is_some() {
            self.rtt = rtt;
        }
        rtt
    }

    fn is_answered(&self, seq: u64, sent_at: Instant) -> bool {
        let by_seq = self.answered_seq.is_some_and(|answered| answered >= seq);
        let by_time = self.answered_at.is_some_and(|at| at >= sent_at);
        match (self.mode, self.strict) {
            (HeartbeatMode::Control, true) => by_seq,
            _ => by_seq || by_time,
        }
    }

    /// When the oldest unanswered heartbeat runs out of time; none while the reader is paused.
    pub fn deadline(&self) -> Option<Instant> {
        if self.paused {
            return None;
        }
        self.unanswered.front().map(|&(_, sent_at)| {
            sent_at.max(self.resumed_at.unwrap_or(sent_at)) + self.pong_timeout
        })
    }

    /// No proof of liveness arrived within `--pong-timeout` of a heartbeat.
    pub fn is_dead(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|deadline| now >= deadline)
    }

    /// A heartbeat has been answered on this connection (resets backoff).
    pub fn proven(&self) -> bool {
        self.proven
    }

    /// Last measured round trip.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }
}

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
}

/// Liveness shared by a connection's reader (which records answers) and its
/// heartbeat thread (which records pings and judges death).
pub type SharedLiveness = Arc<Mutex<Liveness>>;

/// Locks the liveness state. A poisoned lock is taken over: its data is plain
/// bookkeeping that stays consistent between method calls.
pub fn lock(liveness: &SharedLiveness) -> MutexGuard<'_, Liveness> {
    liveness.lock().unwrap_or_else(PoisonError::into_inner)
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
            (live.base, live.pong_timeout)
        };
        let schedule = &self.schedule;
        let start = Instant::now();
        let mut next_ping = match (schedule.immediate, schedule.interval.is_zero()) {
            (true, _) => Some(start),
            (false, true) => None,
            (false, false) => Some(start + schedule.interval),
        };
        let mut seq: u64 = 0;
        let mut lines_waiting = false;
        let mut closing = false;
        let failed = loop {
            let now = Instant::now();
            let deadline = {
                let live = lock(&self.liveness);
                if live.is_dead(now) {
                    break format!(
                        "no heartbeat answer within --pong-timeout ({} ms)",
                        pong_timeout.as_millis()
                    );
                }
                live.deadline()
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
                if let Err(err) = self.socket.write(|ws| ws.send(message)) {
                    break describe_write_error(err);
                }
                // Keep the cadence, but never catch up on missed beats in a burst.
                let next = due + schedule.interval;
                next_ping = Some(if next > Instant::now() {
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
                    break describe_write_error(err);
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
                        break describe_write_error(err);
                    }
                }
            }
        };
        let _ = self.events.send(Event::Dead {
            conn: self.conn,
            reason: failed,
        });
    }

    /// Writes `batch` with one flush. On failure, the lines tungstenite did not
    /// take go back to the front of the outbox; a line it took may have reached
    /// the server and is not sent twice.
    fn write_lines(&self, batch: Vec<String>) -> Result<(), tungstenite::Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn pong(base: Instant, seq: u64, sent_at: Instant) -> Proof {
        let micros = sent_at.duration_since(base).as_micros() as u64;
        Proof::Pong(Bytes::copy_from_slice(&encode_ping(seq, micros)))
    }

    #[test]
    fn payload_round_trips_and_rejects_foreign_pongs() {
        assert_eq!(decode_pong(&encode_ping(42, 1234)), Some((42, 1234)));
        assert_eq!(decode_pong(b"hello"), None);
        assert_eq!(decode_pong(&[]), None);
    }

    #[test]
    fn unanswered_heartbeat_is_dead_after_pong_timeout() {
        let t0 = Instant::now();
        let mut live = Liveness::new(HeartbeatMode::Control, false, secs(10), t0);
        let ping_at = t0 + secs(20);
        live.on_ping_sent(1, ping_at);
        assert_eq!(live.deadline(), Some(ping_at + secs(10)));
        assert!(!live.is_dead(ping_at + secs(9)));
        assert!(live.is_dead(ping_at + secs(10)));
    }

    #[test]
    fn worst_case_detection_is_interval_plus_timeout() {
        // Peer goes silent right after answering a ping at t0: next ping at t0+20s, dead at t0+30s.
        let t0 = Instant::now();
        let mut live = Liveness::new(HeartbeatMode::Control, false, secs(10), t0);
        live.on_ping_sent(1, t0);
        live.on_frame(&pong(t0, 1, t0), t0 + ms(5));
        assert_eq!(live.deadline(), None);
        live.on_ping_sent(2, t0 + secs(20));
        assert_eq!(live.deadline(), Some(t0 + secs(30)));
    }

    #[test]
    fn matching_pong_measures_rtt_and_proves() {
        let t0 = Instant::now();
        let mut live = Liveness::new(HeartbeatMode::Control, true, secs(10), t0);
        let sent = t0 + secs(1);
        live.on_ping_sent(1, sent);
        assert!(!live.proven());
        assert_eq!(
            live.on_frame(&pong(t0, 1, sent), sent + ms(12)),
            Some(ms(12))
        );
        assert!(live.proven());
        assert_eq!(live.rtt(), Some(ms(12)));
        assert!(!live.is_dead(sent + secs(60)));
    }

    #[test]
    fn any_frame_proves_liveness_unless_strict() {
        let t0 = Instant::now();
        for strict in [false, true] {
            let mut live = Liveness::new(HeartbeatMode::Control, strict, secs(10), t0);
            live.on_ping_sent(1, t0);
            live.on_frame(&Proof::Other, t0 + secs(1));
            live.on_frame(&Proof::Pong(Bytes::from_static(b"wrong")), t0 + secs(2));
            assert_eq!(live.is_dead(t0 + secs(10)), strict, "strict={strict}");
        }
    }

    #[test]
    fn frame_before_the_ping_does_not_answer_it() {
        let t0 = Instant::now();
        let mut live = Liveness::new(HeartbeatMode::Control, false, secs(10), t0);
        live.on_frame(&Proof::Other, t0);
        live.on_ping_sent(1, t0 + secs(1));
        assert!(live.is_dead(t0 + secs(11)));
    }

    #[test]
    fn answer_reported_before_its_ping_still_counts() {
        // The reader may report the pong before the heartbeat thread reports the send.
        let t0 = Instant::now();
        for strict in [false, true] {
            let mut live = Liveness::new(HeartbeatMode::Control, strict, secs(10), t0);
            let sent = t0 + secs(1);
            live.on_frame(&pong(t0, 1, sent), sent + ms(3));
            live.on_ping_sent(1, sent);
            assert_eq!(live.deadline(), None, "strict={strict}");
        }
    }

    #[test]
    fn strict_pong_for_an_older_ping_leaves_newer_ones_waiting() {
        let t0 = Instant::now();
        let mut live = Liveness::new(HeartbeatMode::Control, true, secs(10), t0);
        live.on_ping_sent(1, t0);
        live.on_ping_sent(2, t0 + secs(5));
        live.on_frame(&pong(t0, 1, t0), t0 + secs(6));
        assert_eq!(live.deadline(), Some(t0 + secs(15)));
    }

    #[test]
    fn text_mode_pong_text_answers_and_measures() {
        let t0 = Instant::now();
        let mut live = Liveness::new(HeartbeatMode::Text, true, secs(3), t0);
        live.on_ping_sent(1, t0);
        assert_eq!(live.on_frame(&Proof::Other, t0 + ms(10)), None);
        assert!(live.deadline().is_some());
        assert_eq!(live.on_frame(&Proof::TextPong, t0 + ms(40)), Some(ms(40)));
        assert_eq!(live.deadline(), None);
        assert!(live.proven());
    }

    #[test]
    fn no_heartbeat_means_never_dead() {
        let t0 = Instant::now();
        let live = Liveness::new(HeartbeatMode::Control, true, secs(10), t0);
        assert_eq!(live.deadline(), None);
        assert!(!live.is_dead(t0 + secs(86_400)));
    }
}
