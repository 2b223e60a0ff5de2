//! When the next heartbeat is due: a pure rule over the connection's [`Liveness`],
//! shared by the writer thread (which sends it) and the supervisor (which
//! judges its answer `--pong-timeout` later without being told it was sent).
//! Tested in virtual time.

use std::time::{Duration, Instant};

use super::liveness::Liveness;

/// The least time any write is given (`--pong-timeout` is the bound otherwise): a
/// short pong timeout must not fail writes on a merely slow link.
pub const MIN_WRITE_BOUND: Duration = Duration::from_secs(1);

/// Bound on every write, after which the connection is dead: `--pong-timeout`,
/// at least [`MIN_WRITE_BOUND`].
pub fn write_bound(pong_timeout: Duration) -> Duration {
    pong_timeout.max(MIN_WRITE_BOUND)
}

/// Whether only a heartbeat's own answer proves liveness: with `--strict-pong`,
/// and for the `--once` probe, which must measure its own heartbeat's round trip.
pub fn own_answer_only(strict_pong: bool, once: bool) -> bool {
    strict_pong || once
}

/// How a connection's heartbeats are timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// Fixed interval; zero: no heartbeat (unless `learned` is given).
    pub interval: Duration,
    /// Send the first heartbeat at once (`--once`) instead of after one interval.
    pub immediate: bool,
}

impl Cadence {
    /// The next heartbeat's due time; `learned` is the adaptive interval with
    /// `--ping-interval auto`. `None`: no heartbeat at all.
    ///
    /// - fixed: one interval after the last heartbeat (or the connection's start),
    ///   whatever arrives in between, so the cadence holds and missed beats are not
    ///   caught up in a burst;
    /// - adaptive: once the learned interval has passed with nothing received
    ///   ([`Liveness::quiet_since`]: while our messages are unconfirmed only a
    ///   heartbeat's own answer counts, so a talking server cannot postpone it).
    pub fn next_ping(&self, live: &Liveness, learned: Option<Duration>) -> Option<Instant> {
        let start = live.base();
        if self.immediate && live.last_sent().is_none() {
            return Some(start);
        }
        match learned {
            None if self.interval.is_zero() => None,
            None => Some(live.last_sent().unwrap_or(start) + self.interval),
            Some(learned) => {
                let idle_since = [Some(start), live.quiet_since(), live.last_sent()]
                    .into_iter()
                    .flatten()
                    .max()
                    .unwrap_or(start);
                Some(idle_since + learned)
            }
        }
    }

    /// The interval a heartbeat sent now belongs to: it bounds how long other
    /// frames may defer that heartbeat's own answer.
    pub fn current(&self, learned: Option<Duration>) -> Duration {
        learned.unwrap_or(self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::liveness::{HeartbeatMode, Proof, Verdict};
    use crate::testing::secs;

    const FIXED: Cadence = Cadence {
        interval: Duration::from_secs(2),
        immediate: false,
    };

    fn live(t0: Instant, pong_timeout: Duration) -> Liveness {
        Liveness::new(HeartbeatMode::Control, false, pong_timeout, t0)
    }

    #[test]
    fn policies_writes_get_at_least_a_second_and_the_probe_needs_its_own_answer() {
        assert_eq!(write_bound(Duration::from_millis(200)), secs(1));
        assert_eq!(write_bound(secs(10)), secs(10));
        assert!(own_answer_only(false, true));
        assert!(own_answer_only(true, false));
        assert!(!own_answer_only(false, false));
    }

    #[test]
    fn fixed_keeps_its_cadence_whatever_arrives() {
        let t0 = Instant::now();
        let mut live = live(t0, secs(1));
        assert_eq!(FIXED.next_ping(&live, None), Some(t0 + secs(2)));
        live.on_frame(&Proof::Other, t0 + secs(1));
        assert_eq!(FIXED.next_ping(&live, None), Some(t0 + secs(2)));
        live.on_ping_sent(1, t0 + secs(2), secs(2));
        assert_eq!(FIXED.next_ping(&live, None), Some(t0 + secs(4)));
    }

    #[test]
    fn off_means_never_and_once_means_at_once() {
        let t0 = Instant::now();
        let live = live(t0, secs(1));
        let off = Cadence {
            interval: Duration::ZERO,
            immediate: false,
        };
        assert_eq!(off.next_ping(&live, None), None);
        let once = Cadence {
            interval: Duration::ZERO,
            immediate: true,
        };
        assert_eq!(once.next_ping(&live, None), Some(t0));
    }

    #[test]
    fn adaptive_waits_for_the_learned_interval_of_silence() {
        let t0 = Instant::now();
        let mut live = live(t0, secs(1));
        let auto = Some(secs(30));
        assert_eq!(FIXED.next_ping(&live, auto), Some(t0 + secs(30)));
        // The server talking postpones it: the path is in use anyway.
        live.on_frame(&Proof::Other, t0 + secs(20));
        assert_eq!(FIXED.next_ping(&live, auto), Some(t0 + secs(50)));
    }

    #[test]
    fn adaptive_with_messages_of_ours_unconfirmed_is_not_postponed_by_the_server() {
        let t0 = Instant::now();
        let mut live = live(t0, secs(1));
        let auto = Some(secs(30));
        live.on_messages_sent(t0 + secs(5));
        live.on_frame(&Proof::Other, t0 + secs(20));
        assert_eq!(FIXED.next_ping(&live, auto), Some(t0 + secs(30)));
    }

    /// Issue 16 §3: a relay keeps both legs up, the server talks every 200 ms, and
    /// everything the client sends is swallowed from `t0 + 3 s`. Detected within
    /// `2 × ping-interval + pong-timeout` of the first swallowed message.
    #[test]
    fn a_swallowing_upstream_is_dead_within_two_intervals_and_a_timeout() {
        let t0 = Instant::now();
        let (interval, pong_timeout) = (secs(2), secs(1));
        for learned in [None, Some(interval)] {
            let mut live = live(t0, pong_timeout);
            let mut seq = 0;
            let first_swallowed = t0 + secs(3);
            let mut now = t0;
            let dead_at = loop {
                now += Duration::from_millis(100);
                assert!(now < t0 + secs(60), "never declared dead ({learned:?})");
                if FIXED
                    .next_ping(&live, learned)
                    .is_some_and(|due| now >= due)
                {
                    seq += 1;
                    live.on_ping_sent(seq, now, interval);
                    if now < first_swallowed {
                        live.on_frame(&pong_for(&live, seq, now), now);
                    }
                }
                if now.duration_since(t0).as_millis() % 200 == 0 {
                    live.on_frame(&Proof::Other, now);
                }
                if now.duration_since(t0).as_millis() % 300 == 0 {
                    live.on_messages_sent(now);
                }
                let next = FIXED.next_ping(&live, learned);
                if let Verdict::Dead(..) = live.verdict(now, next, secs(1)) {
                    break now;
                }
            };
            let bound = first_swallowed + interval * 2 + pong_timeout;
            assert!(dead_at <= bound, "{learned:?}: dead at {:?}", dead_at - t0);
            assert!(dead_at > first_swallowed, "{learned:?}");
        }
    }

    /// The other side of the rule: a client that sends nothing of its own is not
    /// torn down while the server talks, even if its heartbeats go unanswered.
    #[test]
    fn a_quiet_client_is_not_torn_down_while_the_server_talks() {
        let t0 = Instant::now();
        let mut live = live(t0, secs(1));
        let mut seq = 0;
        let mut now = t0;
        while now < t0 + secs(60) {
            now += Duration::from_millis(100);
            if FIXED.next_ping(&live, None).is_some_and(|due| now >= due) {
                seq += 1;
                live.on_ping_sent(seq, now, secs(2));
            }
            if now.duration_since(t0).as_millis() % 200 == 0 {
                live.on_frame(&Proof::Other, now);
            }
            let next = FIXED.next_ping(&live, None);
            assert!(matches!(
                live.verdict(now, next, secs(1)),
                Verdict::Alive(_)
            ));
        }
    }

    /// A large message still arriving (its bytes are proof) defers the verdict,
    /// but the heartbeat's own answer is still needed within interval + timeout.
    #[test]
    fn bytes_still_arriving_defer_the_verdict() {
        let t0 = Instant::now();
        let mut live = live(t0, secs(1));
        live.on_ping_sent(1, t0, secs(2));
        for tenth in 1..=25 {
            let now = t0 + Duration::from_millis(100 * tenth);
            live.on_frame(&Proof::Other, now);
            assert!(matches!(
                live.verdict(now, None, secs(1)),
                Verdict::Alive(_)
            ));
        }
    }

    #[test]
    fn the_judge_looks_again_when_the_next_answer_is_due() {
        let t0 = Instant::now();
        let live = live(t0, secs(1));
        let next = FIXED.next_ping(&live, None);
        assert_eq!(
            live.verdict(t0, next, secs(1)),
            Verdict::Alive(Some(t0 + secs(3)))
        );
    }

    #[test]
    fn a_write_blocked_past_its_bound_is_death_even_without_a_heartbeat() {
        let t0 = Instant::now();
        let mut live = live(t0, secs(10));
        live.set_writing(Some(t0 + secs(1)));
        assert_eq!(
            live.verdict(t0 + secs(2), None, secs(10)),
            Verdict::Alive(Some(t0 + secs(11)))
        );
        assert!(matches!(
            live.verdict(t0 + secs(11), None, secs(10)),
            Verdict::Dead(..)
        ));
        live.set_writing(None);
        assert!(matches!(
            live.verdict(t0 + secs(11), None, secs(10)),
            Verdict::Alive(None)
        ));
    }

    fn pong_for(live: &Liveness, seq: u64, sent_at: Instant) -> Proof {
        let micros = sent_at.duration_since(live.base()).as_micros() as u64;
        Proof::Pong(tungstenite::Bytes::copy_from_slice(
            &crate::rules::liveness::encode_ping(seq, micros),
        ))
    }
}
