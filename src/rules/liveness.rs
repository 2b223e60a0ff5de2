//! Whether a connection is alive, per the contract's rules: the pure bookkeeping
//! ([`Liveness`]) the reader feeds with answers and the writer with pings, and the
//! control ping payload that matches a pong to its ping. Pure: every method takes `now`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::sync;
use tungstenite::Bytes;

/// Pings older than this many unanswered ones are forgotten; the oldest decides death anyway.
const MAX_UNANSWERED: usize = 64;

/// How a heartbeat is sent and recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatMode {
    /// RFC 6455 Ping frames answered by Pong frames.
    Control,
    /// An application text message (`--ping-text`) answered by `--pong-text`.
    Text,
}

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

/// One heartbeat waiting for its answer.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    seq: u64,
    sent_at: Instant,
    /// The client had sent messages not yet covered by an answered heartbeat: only
    /// this heartbeat's own answer proves that the path carries what the client
    /// sends; other frames from the server defer the verdict, up to `own_by`.
    own_by: Option<Instant>,
}

/// What the judge (the supervisor) concludes at a check.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Alive; check again at this time (`None`: nothing to wait for).
    Alive(Option<Instant>),
    /// Dead, why (one line), and the idle gap before the heartbeat that went
    /// unanswered (evidence for the adaptive heartbeat), if that is what happened.
    Dead(String, Option<Duration>),
}

/// Whether the connection is known alive, per the contract's rules, for one connection.
///
/// Pure: every method takes `now`. Tolerates the writer thread's "ping sent"
/// report arriving after the reader's report of its answer. The writer thread
/// records pings, messages and writes; the reader records what arrives; the
/// supervisor, which never blocks in I/O, judges ([`Liveness::verdict`]).
#[derive(Debug)]
pub struct Liveness {
    mode: HeartbeatMode,
    strict: bool,
    pong_timeout: Duration,
    /// Origin of the microsecond timestamps carried in ping payloads.
    base: Instant,
    unanswered: VecDeque<Waiting>,
    /// Latest moment something counting as an answer arrived.
    answered_at: Option<Instant>,
    /// Latest moment a heartbeat's own answer arrived (matching pong, pong text).
    own_answer_at: Option<Instant>,
    /// Highest ping sequence answered by a matching pong (control mode).
    answered_seq: Option<u64>,
    /// Latest heartbeat sent; text pongs carry no sequence, so they are timed from it.
    last_sent: Option<Instant>,
    /// Earliest message sent that no answered heartbeat (sent after it) covers yet.
    unconfirmed_since: Option<Instant>,
    /// Latest message sent.
    last_message_at: Option<Instant>,
    /// The writer thread has been inside a socket write since then.
    writing_since: Option<Instant>,
    /// `--ping-interval auto`: the idle gap before the heartbeat waiting for its answer.
    probe: Option<Duration>,
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
            own_answer_at: None,
            answered_seq: None,
            last_sent: None,
            unconfirmed_since: None,
            last_message_at: None,
            writing_since: None,
            probe: None,
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

    /// The writer thread sent heartbeat `seq` at `sent_at`, at heartbeat
    /// interval `interval` (the bound on deferring its own answer).
    pub fn on_ping_sent(&mut self, seq: u64, sent_at: Instant, interval: Duration) {
        self.last_sent = self.last_sent.max(Some(sent_at));
        let own_by = (!self.strict && self.unconfirmed_since.is_some())
            .then(|| sent_at + interval + self.pong_timeout);
        let waiting = Waiting {
            seq,
            sent_at,
            own_by,
        };
        if self.is_answered(&waiting) {
            return;
        }
        if self.unanswered.len() == MAX_UNANSWERED {
            // Keep the oldest: it carries the earliest deadline.
            self.unanswered.pop_back();
        }
        self.unanswered.push_back(waiting);
    }

    /// The writer thread wrote messages of the client's own at `at`.
    pub fn on_messages_sent(&mut self, at: Instant) {
        self.unconfirmed_since = self.unconfirmed_since.or(Some(at));
        self.last_message_at = self.last_message_at.max(Some(at));
    }

    /// The writer thread enters (`Some`) or leaves (`None`) a socket write.
    pub fn set_writing(&mut self, since: Option<Instant>) {
        self.writing_since = since;
    }

    /// The idle gap before the heartbeat just sent (`auto`), or `None` once its
    /// answer has been taught to the learning rule.
    pub fn set_probe(&mut self, gap: Option<Duration>) {
        self.probe = gap;
    }

    /// The idle gap before the heartbeat waiting for its answer (`auto`).
    pub fn probe(&self) -> Option<Duration> {
        self.probe
    }

    /// A frame arrived at `at`, or ([`Proof::Other`]) bytes of one still arriving.
    /// Returns the round trip it measured, if it was a matching pong.
    pub fn on_frame(&mut self, proof: &Proof, at: Instant) -> Option<Duration> {
        let (counts, own_sent_at, rtt) = match (proof, self.mode) {
            (Proof::Pong(payload), HeartbeatMode::Control) => match decode_pong(payload) {
                Some((seq, micros)) => {
                    self.answered_seq = self.answered_seq.max(Some(seq));
                    let sent_at = self.base + Duration::from_micros(micros);
                    (
                        true,
                        Some(sent_at),
                        Some(at.saturating_duration_since(sent_at)),
                    )
                }
                None => (!self.strict, None, None),
            },
            (Proof::TextPong, HeartbeatMode::Text) => {
                let rtt = self
                    .last_sent
                    .filter(|&sent_at| sent_at <= at)
                    .map(|sent_at| at - sent_at);
                // A pong text names no heartbeat: it answers at least the oldest waiting.
                let oldest = self.unanswered.front().map(|w| w.sent_at);
                (true, oldest.or(self.last_sent), rtt)
            }
            _ => (!self.strict, None, None),
        };
        if counts {
            self.answered_at = self.answered_at.max(Some(at));
        }
        if let Some(sent_at) = own_sent_at {
            self.own_answer_at = self.own_answer_at.max(Some(at));
            // TCP keeps order: a heartbeat answered after the messages before it
            // proves the server's side received them.
            if self.last_message_at.is_some_and(|last| last <= sent_at) {
                self.unconfirmed_since = None;
            } else if let Some(since) = &mut self.unconfirmed_since {
                *since = (*since).max(sent_at);
            }
        }
        let before = self.unanswered.len();
        let unanswered = std::mem::take(&mut self.unanswered);
        self.unanswered = unanswered
            .into_iter()
            .filter(|waiting| !self.is_answered(waiting))
            .collect();
        if self.unanswered.len() < before || rtt.is_some() {
            self.proven = true;
        }
        if rtt.is_some() {
            self.rtt = rtt;
        }
        rtt
    }

    fn is_answered(&self, waiting: &Waiting) -> bool {
        let own = match self.mode {
            HeartbeatMode::Control => self.answered_seq.is_some_and(|seq| seq >= waiting.seq),
            HeartbeatMode::Text => self.own_answer_at.is_some_and(|at| at >= waiting.sent_at),
        };
        let by_time = self.answered_at.is_some_and(|at| at >= waiting.sent_at);
        match (self.mode, self.strict) {
            (HeartbeatMode::Control, true) => own,
            _ if waiting.own_by.is_some() => own,
            _ => own || by_time,
        }
    }

    /// When the heartbeat waiting longest runs out of time; none while the reader
    /// is paused. A heartbeat that needs its own answer is kept alive by other
    /// frames (a pong may wait behind a large message) up to its `own_by`.
    pub fn deadline(&self) -> Option<Instant> {
        if self.paused {
            return None;
        }
        let resumed = |at: Instant| at.max(self.resumed_at.unwrap_or(at));
        self.unanswered
            .iter()
            .map(|waiting| {
                let silent_since = match waiting.own_by {
                    Some(_) => waiting
                        .sent_at
                        .max(self.answered_at.unwrap_or(waiting.sent_at)),
                    None => waiting.sent_at,
                };
                let silence = resumed(silent_since) + self.pong_timeout;
                match waiting.own_by {
                    Some(own_by) => silence.min(resumed(own_by)),
                    None => silence,
                }
            })
            .min()
    }

    /// No proof of liveness arrived within `--pong-timeout` of a heartbeat.
    #[cfg(test)]
    pub fn is_dead(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|deadline| now >= deadline)
    }

    /// The judgement at `now`: dead if a heartbeat ran out of time or a write has
    /// been blocked for `write_bound`; otherwise when to look again, given when the
    /// next heartbeat is due (its answer is due `--pong-timeout` later).
    pub fn verdict(
        &self,
        now: Instant,
        next_ping: Option<Instant>,
        write_bound: Duration,
    ) -> Verdict {
        if let Some(since) = self
            .writing_since
            .filter(|&since| now >= since + write_bound)
        {
            let blocked = now.saturating_duration_since(since);
            return Verdict::Dead(
                format!(
                    "write blocked for {} ms: the server stopped reading",
                    blocked.as_millis()
                ),
                None,
            );
        }
        if let Some(deadline) = self.deadline().filter(|&deadline| now >= deadline) {
            let own = self
                .unanswered
                .iter()
                .any(|waiting| waiting.own_by.is_some_and(|own_by| deadline >= own_by));
            let reason = if own {
                "no answer to a heartbeat sent after our messages within ping-interval + \
                 --pong-timeout, though the server kept sending: what we send no longer arrives"
                    .to_string()
            } else {
                format!(
                    "no heartbeat answer within --pong-timeout ({} ms)",
                    self.pong_timeout.as_millis()
                )
            };
            return Verdict::Dead(reason, self.probe);
        }
        let answer_due = next_ping.map(|at| at + self.pong_timeout);
        let write_due = self.writing_since.map(|since| since + write_bound);
        let check_at = [self.deadline(), answer_due, write_due]
            .into_iter()
            .flatten()
            .min()
            // A heartbeat late past its answer's time: the writer is behind (or
            // blocked, which `write_due` catches); look again a timeout later.
            .map(|at| {
                if at <= now {
                    now + self.pong_timeout
                } else {
                    at
                }
            });
        Verdict::Alive(check_at)
    }

    /// A heartbeat has been answered on this connection (resets backoff).
    pub fn proven(&self) -> bool {
        self.proven
    }

    /// Latest moment something counting as an answer arrived (any frame, unless
    /// `--strict-pong`): the end of the current idle gap.
    pub fn last_proof(&self) -> Option<Instant> {
        self.answered_at
    }

    /// The end of the current idle gap as the heartbeat schedule sees it: while
    /// messages of ours are unconfirmed only a heartbeat's own answer ends it, so a
    /// talking server cannot keep the heartbeat from checking that they arrive.
    pub fn quiet_since(&self) -> Option<Instant> {
        match self.unconfirmed_since {
            Some(_) => self.own_answer_at,
            None => self.answered_at,
        }
    }

    /// Latest heartbeat sent.
    pub fn last_sent(&self) -> Option<Instant> {
        self.last_sent
    }

    /// No heartbeat is waiting for its answer.
    pub fn all_answered(&self) -> bool {
        self.unanswered.is_empty()
    }

    /// Origin of the timestamps in ping payloads.
    pub fn base(&self) -> Instant {
        self.base
    }

    /// Last measured round trip.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }
}

/// Liveness shared by a connection's reader (which records answers) and its
/// writer thread (which records pings and judges death).
pub type SharedLiveness = Arc<Mutex<Liveness>>;

/// Locks the liveness state. A poisoned lock is taken over: its data is plain
/// bookkeeping that stays consistent between method calls.
pub fn lock(liveness: &SharedLiveness) -> MutexGuard<'_, Liveness> {
    sync::lock(liveness)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ms, secs};

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
        live.on_ping_sent(1, ping_at, secs(20));
        assert_eq!(live.deadline(), Some(ping_at + secs(10)));
        assert!(!live.is_dead(ping_at + secs(9)));
        assert!(live.is_dead(ping_at + secs(10)));
    }

    #[test]
    fn worst_case_detection_is_interval_plus_timeout() {
        // Peer goes silent right after answering a ping at t0: next ping at t0+20s, dead at t0+30s.
        let t0 = Instant::now();
        let mut live = Liveness::new(HeartbeatMode::Control, false, secs(10), t0);
        live.on_ping_sent(1, t0, secs(20));
        live.on_frame(&pong(t0, 1, t0), t0 + ms(5));
        assert_eq!(live.deadline(), None);
        live.on_ping_sent(2, t0 + secs(20), secs(20));
        assert_eq!(live.deadline(), Some(t0 + secs(30)));
    }

    #[test]
    fn matching_pong_measures_rtt_and_proves() {
        let t0 = Instant::now();
        let mut live = Liveness::new(HeartbeatMode::Control, true, secs(10), t0);
        let sent = t0 + secs(1);
        live.on_ping_sent(1, sent, secs(20));
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
            live.on_ping_sent(1, t0, secs(20));
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
        live.on_ping_sent(1, t0 + secs(1), secs(20));
        assert!(live.is_dead(t0 + secs(11)));
    }

    #[test]
    fn answer_reported_before_its_ping_still_counts() {
        // The reader may report the pong before the writer thread reports the send.
        let t0 = Instant::now();
        for strict in [false, true] {
            let mut live = Liveness::new(HeartbeatMode::Control, strict, secs(10), t0);
            let sent = t0 + secs(1);
            live.on_frame(&pong(t0, 1, sent), sent + ms(3));
            live.on_ping_sent(1, sent, secs(20));
            assert_eq!(live.deadline(), None, "strict={strict}");
        }
    }

    #[test]
    fn strict_pong_for_an_older_ping_leaves_newer_ones_waiting() {
        let t0 = Instant::now();
        let mut live = Liveness::new(HeartbeatMode::Control, true, secs(10), t0);
        live.on_ping_sent(1, t0, secs(20));
        live.on_ping_sent(2, t0 + secs(5), secs(20));
        live.on_frame(&pong(t0, 1, t0), t0 + secs(6));
        assert_eq!(live.deadline(), Some(t0 + secs(15)));
    }

    #[test]
    fn text_mode_pong_text_answers_and_measures() {
        let t0 = Instant::now();
        let mut live = Liveness::new(HeartbeatMode::Text, true, secs(3), t0);
        live.on_ping_sent(1, t0, secs(20));
        assert_eq!(live.on_frame(&Proof::Other, t0 + ms(10)), None);
        assert!(live.deadline().is_some());
        assert_eq!(live.on_frame(&Proof::TextPong, t0 + ms(40)), Some(ms(40)));
        assert_eq!(live.deadline(), None);
        assert!(live.proven());
    }

    #[test]
    fn a_paused_reader_is_not_blamed_and_gets_a_full_timeout_after() {
        // Stdout stopped taking output at 5 s; the reader reads again at 60 s.
        let t0 = Instant::now();
        let mut live = Liveness::new(HeartbeatMode::Control, false, secs(10), t0);
        live.on_ping_sent(1, t0 + secs(4), secs(20));
        live.pause();
        live.on_ping_sent(2, t0 + secs(24), secs(20));
        assert_eq!(live.deadline(), None);
        assert!(!live.is_dead(t0 + secs(59)));
        live.resume(t0 + secs(60));
        assert_eq!(live.deadline(), Some(t0 + secs(70)));
        assert!(!live.is_dead(t0 + secs(69)));
        // An answer read after the pause counts as usual.
        live.on_frame(&pong(t0, 2, t0 + secs(24)), t0 + secs(60));
        assert_eq!(live.deadline(), None);
        // A later heartbeat is judged normally again.
        live.on_ping_sent(3, t0 + secs(80), secs(20));
        assert!(live.is_dead(t0 + secs(90)));
    }

    #[test]
    fn no_heartbeat_means_never_dead() {
        let t0 = Instant::now();
        let live = Liveness::new(HeartbeatMode::Control, true, secs(10), t0);
        assert_eq!(live.deadline(), None);
        assert!(!live.is_dead(t0 + secs(86_400)));
    }
}
