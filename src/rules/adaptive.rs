//! The adaptive heartbeat (`--ping-interval auto[:MIN..MAX]`): learns the longest
//! idle gap the path tolerates and keeps the heartbeat just below it.
//!
//! A NAT box, proxy or load balancer on the way forgets an idle flow after some
//! time `T` nobody knows in advance (30 s on some carrier NATs, 30 min on others).
//! With `auto`, a heartbeat goes out only after the interval has passed with
//! nothing received, so a heartbeat after idle gap `g` tells whether the path
//! survives `g`: answered means `g < T`; a connection that dies right after it (or
//! a proxy's FIN in the middle of the gap) means `g >= T`. The learning is a search
//! between the two bounds it knows:
//!
//! - `good`: the longest gap a heartbeat has survived (starts at nothing; the
//!   first interval is `MIN`);
//! - `bad`: the shortest gap that lost the connection (unknown at first).
//!
//! While `bad` is unknown the interval doubles after every answered heartbeat, up
//! to `MAX` (15 s → 30 → 60 → 120 → 240 → 300 at the defaults: 8 minutes). Once a
//! gap has failed, the next probe is the middle of `(good, bad)`, until `good` is
//! within [`SETTLE_RATIO`] of `bad`; the interval then settles at
//! [`OPERATING_MARGIN`] × `good`, which is inside `[0.6 T, T)` because
//! `good >= 0.8 bad >= 0.8 T` (so at least 0.72 T). At most two or three
//! connections are lost while searching, and the search takes minutes, not
//! Mars' hours.
//!
//! Telling an idle timeout from an outage: a loss is only evidence once the next
//! connect has succeeded at once ([`Adaptive::on_reconnected`]): the path works,
//! it only forgot the flow. If the next attempt fails ([`Adaptive::on_connect_failed`])
//! the network was down and the loss is forgotten, so an outage never shrinks the
//! interval. A loss at a gap already proven safe is a doubt, not proof; two in a
//! row mean the path's timeout dropped, and the search starts again below.
//!
//! After settling, the path may change: a gap that now fails shows up as doubts
//! (above); a timeout that grew is found by re-probing `bad` once every
//! [`REPROBE_AFTER`], and a probe may cost a connection at most once per
//! [`PROBE_LOSS_SPACING`]. The learned value lives as long as the process (it
//! survives reconnects); with `--state-dir` [`Adaptive::learned`] is kept per network
//! path and [`Adaptive::resume`] starts a restart from it (the state store, `crate::report::state_store`), else a
//! restart learns again, which costs minutes.
//!
//! Pure: every method takes `now`; unit-tested over simulated days.

use crate::sync;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The search ends once `good >= SETTLE_RATIO * bad`.
pub const SETTLE_RATIO: f64 = 0.8;
/// The settled interval is this share of the longest gap proven safe (a margin for
/// NAT timers that are not exact).
pub const OPERATING_MARGIN: f64 = 0.9;
/// How long a settled interval is kept before the failing gap is tried again.
pub const REPROBE_AFTER: Duration = Duration::from_secs(12 * 3600);
/// Once settled, a failing probe is allowed at most this often.
pub const PROBE_LOSS_SPACING: Duration = Duration::from_secs(6 * 3600);
/// Default bounds of `auto`.
pub const DEFAULT_MIN: Duration = Duration::from_secs(15);
/// Default bounds of `auto`.
pub const DEFAULT_MAX: Duration = Duration::from_secs(300);

/// The learning state shared by the writer (answers, timing) and the supervisor
/// (losses, reconnects); it outlives connections.
pub type SharedAdaptive = Arc<Mutex<Adaptive>>;

/// What the reconnect loop tells the learning rule, as the machine decides it
/// (only about the current connection or attempt, never a straggler's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// The live connection died; idle this long, if that is how it died.
    Lost(Option<Duration>),
    /// The attempt after a loss connected: the path works.
    Reconnected,
    /// The attempt failed: the network was down.
    ConnectFailed,
}

/// Locks the learning state; a poisoned lock is taken over (plain bookkeeping).
pub fn lock(adaptive: &SharedAdaptive) -> MutexGuard<'_, Adaptive> {
    sync::lock(adaptive)
}

/// What the rule knows about a path, the part worth keeping across restarts: the
/// longest idle gap proven and the shortest that lost the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Learned {
    /// The longest gap a heartbeat has survived.
    pub good: Option<Duration>,
    /// The shortest gap that lost the connection.
    pub bad: Option<Duration>,
}

/// Told when [`Learned`] changes (at most once per answered heartbeat or reconnect).
#[derive(Clone)]
pub struct OnLearned(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for OnLearned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnLearned")
    }
}

/// The learning state. See the module documentation.
#[derive(Debug, Clone)]
pub struct Adaptive {
    min: Duration,
    max: Duration,
    good: Option<Duration>,
    bad: Option<Duration>,
    /// Losses in a row at gaps already proven safe.
    doubts: u32,
    /// The idle gap of a lost connection, until the next connect tells what it meant.
    pending: Option<Duration>,
    /// When the search last ended.
    settled_at: Option<Instant>,
    /// When a probe last cost a connection after the first settling.
    last_probe_loss: Option<Instant>,
    /// The search has ended once: losses to probing are rationed from then on.
    ever_settled: bool,
    interval: Duration,
    on_learned: Option<OnLearned>,
}

impl Adaptive {
    /// Learns between `min` and `max` (`min <= max`); starts at `min`.
    pub fn new(min: Duration, max: Duration) -> Adaptive {
        let max = max.max(min);
        Adaptive {
            min,
            max,
            good: None,
            bad: None,
            doubts: 0,
            pending: None,
            settled_at: None,
            last_probe_loss: None,
            ever_settled: false,
            interval: min,
            on_learned: None,
        }
    }

    /// Calls `hook` whenever [`Adaptive::learned`] changes (the caller keeps it).
    pub fn set_on_learned(&mut self, hook: OnLearned) {
        self.on_learned = Some(hook);
    }

    /// What has been learned so far.
    pub fn learned(&self) -> Learned {
        Learned {
            good: self.good,
            bad: self.bad,
        }
    }

    /// Starts over on a path from what was `learned` there before (a restart, or a
    /// move back to a path seen before), with the usual doubt, re-probe and outage
    /// rules from here on: a settled path resumes at its settled interval, a search
    /// goes on where it stopped. `Learned::default()` starts afresh at `MIN`, as a
    /// first start does. An entry gone stale (the path's timeout dropped while the
    /// device was off) is no special case: a loss at the remembered interval is a
    /// loss at a proven gap, i.e. a doubt, exactly as on a path whose timeout drops
    /// while running.
    pub fn resume(&mut self, learned: Learned, now: Instant) {
        let on_learned = self.on_learned.take();
        *self = Adaptive::new(self.min, self.max);
        self.on_learned = on_learned;
        self.good = learned.good.filter(|good| !good.is_zero());
        // A failing gap at or below a proven one means the timeout grew since (as
        // `on_answered` concludes): only the proven one is kept.
        self.bad = learned
            .bad
            .filter(|bad| !bad.is_zero() && self.good.is_none_or(|good| *bad > good));
        if self.good.is_some() || self.bad.is_some() {
            self.choose(now);
        }
    }

    /// Tells the hook if what is learned differs from `before`.
    fn tell(&self, before: Learned) {
        if let Some(hook) = self
            .on_learned
            .as_ref()
            .filter(|_| self.learned() != before)
        {
            (hook.0)();
        }
    }

    /// The idle gap after which the next heartbeat is due.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    #[cfg(test)]
    /// The search has ended (the interval stays until the path changes or a re-probe).
    pub fn settled(&self) -> bool {
        self.settled_at.is_some()
    }

    /// A heartbeat sent after `gap` with nothing received was answered.
    pub fn on_answered(&mut self, gap: Duration, now: Instant) {
        let before = self.learned();
        self.answered(gap, now);
        self.tell(before);
    }

    fn answered(&mut self, gap: Duration, now: Instant) {
        self.doubts = 0;
        if self.good.is_none_or(|good| gap > good) {
            self.good = Some(gap);
        }
        if self.bad.is_some_and(|bad| gap >= bad) {
            // The path's timeout grew past what failed before: learn it afresh.
            self.relearn();
            self.bad = None;
        }
        self.choose(now);
    }

    /// The connection died. `idle`: it had been idle this long (a heartbeat after
    /// that gap went unanswered, or the peer closed in the middle of the gap);
    /// `None` if it died while data flowed, which says nothing about idle timeouts.
    pub fn on_lost(&mut self, idle: Option<Duration>) {
        self.pending = idle;
    }

    /// The next connect succeeded: the path works, so a loss after an idle gap was
    /// the path forgetting the flow.
    pub fn on_reconnected(&mut self, now: Instant) {
        let before = self.learned();
        self.reconnected(now);
        self.tell(before);
    }

    fn reconnected(&mut self, now: Instant) {
        let Some(gap) = self.pending.take() else {
            return;
        };
        if gap < self.min.mul_f64(0.5) {
            // Far shorter than any gap we ever leave: not an idle timeout.
            return;
        }
        let proven = self.good.is_some_and(|good| gap <= good);
        if proven {
            self.doubts += 1;
            if self.doubts < 2 {
                return;
            }
            // Twice at a gap that used to be safe: the path's timeout dropped.
            self.relearn();
            self.good = None;
            self.bad = Some(gap);
        } else {
            if self.ever_settled {
                self.last_probe_loss = Some(now);
            }
            self.bad = Some(self.bad.map_or(gap, |bad| bad.min(gap)));
        }
        self.choose(now);
    }

    /// Takes `evidence` from the reconnect loop at `now`.
    pub fn learn(&mut self, evidence: Evidence, now: Instant) {
        match evidence {
            Evidence::Lost(idle) => self.on_lost(idle),
            Evidence::Reconnected => self.on_reconnected(now),
            Evidence::ConnectFailed => self.on_connect_failed(),
        }
    }

    /// The next connect failed: the network was down, and the loss before it
    /// (if any) is no evidence about idle timeouts.
    pub fn on_connect_failed(&mut self) {
        self.pending = None;
    }

    /// Time has passed: a settled interval is re-probed after [`REPROBE_AFTER`].
    pub fn on_time(&mut self, now: Instant) {
        if let Some(at) = self.settled_at {
            if now >= at + REPROBE_AFTER && self.may_lose_to_probe(now) {
                if let Some(bad) = self.bad {
                    self.settled_at = None;
                    self.interval = bad.min(self.max);
                }
            }
        }
    }

    /// The path changed: a new search, with the losses it takes (a search is
    /// short; the rationing is for the steady state).
    fn relearn(&mut self) {
        self.doubts = 0;
        self.settled_at = None;
        self.ever_settled = false;
        self.last_probe_loss = None;
    }

    fn may_lose_to_probe(&self, now: Instant) -> bool {
        self.last_probe_loss
            .is_none_or(|lost| now >= lost + PROBE_LOSS_SPACING)
    }

    fn settle(&mut self, interval: Duration, now: Instant) {
        self.interval = interval.clamp(self.min, self.max);
        // Every answered heartbeat confirms the settled value; the re-probe clock
        // runs from when the search ended.
        self.settled_at.get_or_insert(now);
        self.ever_settled = true;
    }

    /// Picks the next interval from what is known.
    fn choose(&mut self, now: Instant) {
        let good = self.good.unwrap_or(Duration::ZERO);
        match self.bad {
            None if good >= self.max => self.settle(self.max, now),
            None => {
                let next = if good.is_zero() { self.min } else { good * 2 };
                self.probe(next.clamp(self.min, self.max), now);
            }
            Some(bad) if bad <= self.min => self.settle(self.min, now),
            Some(bad) if good.as_secs_f64() >= SETTLE_RATIO * bad.as_secs_f64() => {
                self.settle(good.mul_f64(OPERATING_MARGIN), now)
            }
            Some(bad) => {
                let middle = if good.is_zero() {
                    (bad / 2).max(self.min)
                } else {
                    (good + bad) / 2
                };
                self.probe(middle.clamp(self.min, self.max), now);
            }
        }
    }

    /// Tries `gap` next if a loss may be risked now; else stays at what is proven.
    fn probe(&mut self, gap: Duration, now: Instant) {
        let risky = self.good.is_none_or(|good| gap > good);
        if risky && self.ever_settled && !self.may_lose_to_probe(now) {
            let safe = self.good.unwrap_or(self.min).mul_f64(OPERATING_MARGIN);
            self.interval = safe.clamp(self.min, self.max);
            // Searching resumes at the next re-probe.
            self.settled_at = Some(now);
            return;
        }
        self.settled_at = None;
        self.interval = gap;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::backoff::SplitMix64;
    use crate::testing::secs;

    /// A device on a path that forgets idle flows after `timeout`, with a server
    /// that never sends anything on its own: every heartbeat follows a full idle
    /// gap. Steps heartbeat by heartbeat in virtual time.
    struct Path {
        adaptive: Adaptive,
        now: Instant,
        start: Instant,
        timeout: Option<Duration>,
        pong_timeout: Duration,
        random: SplitMix64,
        /// Mean time between outages and their length; `None`: no outages.
        outages: Option<(Duration, Duration)>,
        outage_until: Option<Instant>,
        next_outage: Option<Instant>,
        /// When connections were lost to the path's idle timeout (not to outages).
        idle_losses: Vec<Instant>,
        /// When the interval first entered `[0.6 T, T)` and stayed there.
        settled_in_band_at: Option<Instant>,
    }

    impl Path {
        fn new(timeout: Option<Duration>) -> Path {
            let now = Instant::now();
            Path {
                adaptive: Adaptive::new(DEFAULT_MIN, DEFAULT_MAX),
                now,
                start: now,
                timeout,
                pong_timeout: secs(10),
                random: SplitMix64::new(7),
                outages: None,
                outage_until: None,
                next_outage: None,
                idle_losses: Vec::new(),
                settled_in_band_at: None,
            }
        }

        fn with_outages(mut self, every: Duration, lasting: Duration) -> Path {
            self.outages = Some((every, lasting));
            self.next_outage = Some(self.start + self.random_below(every * 2));
            self
        }

        fn random_below(&mut self, max: Duration) -> Duration {
            use crate::rules::backoff::Random;
            self.random.below(max)
        }

        fn in_outage(&mut self, at: Instant) -> bool {
            if let Some(start) = self.next_outage.filter(|&start| at >= start) {
                let (every, lasting) = self.outages.expect("outages");
                self.outage_until = Some(start + lasting);
                self.next_outage = Some(start + lasting + self.random_below(every * 2));
            }
            self.outage_until.is_some_and(|until| at < until)
        }

        fn in_band(&self) -> bool {
            let interval = self.adaptive.interval();
            match self.timeout {
                Some(t) if t <= DEFAULT_MAX => interval >= t.mul_f64(0.6) && interval < t,
                _ => interval == DEFAULT_MAX,
            }
        }

        /// One idle gap and its heartbeat (or the connection's loss).
        fn step(&mut self) {
            self.adaptive.on_time(self.now);
            let gap = self.adaptive.interval();
            let at = self.now + gap;
            let forgot = self.timeout.is_some_and(|t| gap >= t);
            if self.in_outage(at) {
                // Unanswered: dead after the pong timeout; reconnects fail until it ends.
                self.adaptive.on_lost(Some(gap));
                self.now = at + self.pong_timeout;
                while self.in_outage(self.now) {
                    self.adaptive.on_connect_failed();
                    self.now += secs(30);
                }
                self.adaptive.on_reconnected(self.now);
            } else if forgot {
                self.idle_losses.push(at);
                self.adaptive.on_lost(Some(gap));
                self.now = at + self.pong_timeout;
                self.adaptive.on_reconnected(self.now);
            } else {
                self.now = at;
                self.adaptive.on_answered(gap, self.now);
            }
            match (self.in_band(), self.settled_in_band_at) {
                (true, None) => self.settled_in_band_at = Some(self.now),
                (false, Some(_)) if self.adaptive.settled() => self.settled_in_band_at = None,
                _ => {}
            }
        }

        fn run_for(&mut self, duration: Duration) {
            let end = self.now + duration;
            while self.now < end {
                self.step();
            }
        }

        /// Losses to the idle timeout in any window of `window` from `from` on.
        fn most_losses_in(&self, from: Instant, window: Duration) -> usize {
            let losses: Vec<Instant> = self
                .idle_losses
                .iter()
                .copied()
                .filter(|&t| t >= from)
                .collect();
            losses
                .iter()
                .map(|&start| {
                    losses
                        .iter()
                        .filter(|&&t| t >= start && t < start + window)
                        .count()
                })
                .max()
                .unwrap_or(0)
        }
    }

    #[test]
    fn settles_below_the_idle_timeout_within_30_minutes() {
        for t in [20, 45, 60, 90, 120, 180, 250, 290] {
            let mut path = Path::new(Some(secs(t)));
            path.run_for(secs(30 * 60));
            let interval = path.adaptive.interval();
            assert!(path.in_band(), "T={t}s: interval {interval:?} after 30 min");
            assert!(path.adaptive.settled(), "T={t}s: still searching");
            let at = path.settled_in_band_at.expect("in band") - path.start;
            assert!(at <= secs(30 * 60), "T={t}s: in band after {at:?}");
        }
    }

    #[test]
    fn afterwards_at_most_one_connection_per_6_hours_is_lost_to_probing() {
        for t in [20, 60, 120, 250] {
            let mut path = Path::new(Some(secs(t)));
            path.run_for(secs(30 * 60));
            let settled = path.now;
            path.run_for(secs(7 * 24 * 3600));
            let worst = path.most_losses_in(settled, secs(6 * 3600));
            assert!(worst <= 1, "T={t}s: {worst} losses in 6 h");
            assert!(path.in_band(), "T={t}s: left the band");
        }
    }

    #[test]
    fn grows_to_max_where_nothing_forgets() {
        let mut path = Path::new(None);
        path.run_for(secs(20 * 60));
        assert_eq!(path.adaptive.interval(), DEFAULT_MAX);
        assert!(path.idle_losses.is_empty());
        // And a timeout just above MAX is the same.
        let mut path = Path::new(Some(secs(301)));
        path.run_for(secs(20 * 60));
        assert_eq!(path.adaptive.interval(), DEFAULT_MAX);
    }

    #[test]
    fn outages_do_not_shrink_the_interval() {
        // A settled device on a path that forgets after 4 minutes, with an outage of
        // 2 to 10 minutes about every 2 hours, for a week.
        let mut path = Path::new(Some(secs(240)));
        path.run_for(secs(30 * 60));
        let learned = path.adaptive.interval();
        assert!(path.in_band());
        let mut path = path.with_outages(secs(2 * 3600), secs(5 * 60));
        let mut lowest = learned;
        for _ in 0..7 * 24 {
            path.run_for(secs(3600));
            lowest = lowest.min(path.adaptive.interval());
        }
        assert!(path.in_band(), "{:?}", path.adaptive.interval());
        assert!(lowest >= secs(240).mul_f64(0.6), "fell to {lowest:?}");
    }

    #[test]
    fn follows_a_timeout_that_changes() {
        let mut path = Path::new(Some(secs(250)));
        path.run_for(secs(30 * 60));
        assert!(path.in_band());
        // The carrier shortens its NAT timeout: found within minutes.
        path.timeout = Some(secs(60));
        path.run_for(secs(30 * 60));
        assert!(path.in_band(), "down: {:?}", path.adaptive.interval());
        // And lengthens it again: found at the next re-probe, within a day.
        path.timeout = Some(secs(200));
        path.run_for(secs(24 * 3600));
        assert!(path.in_band(), "up: {:?}", path.adaptive.interval());
    }

    #[test]
    fn a_loss_followed_by_a_failed_connect_is_an_outage() {
        let now = Instant::now();
        let mut adaptive = Adaptive::new(secs(15), secs(300));
        adaptive.on_answered(secs(15), now);
        assert_eq!(adaptive.interval(), secs(30));
        adaptive.on_lost(Some(secs(30)));
        adaptive.on_connect_failed();
        adaptive.on_reconnected(now + secs(600));
        // No evidence: still probing 30 s.
        assert_eq!(adaptive.interval(), secs(30));
        // The same loss with a connect that works at once is evidence.
        adaptive.on_lost(Some(secs(30)));
        adaptive.on_reconnected(now + secs(700));
        assert!(adaptive.interval() < secs(30));
    }

    #[test]
    fn a_single_loss_at_a_proven_gap_is_only_a_doubt() {
        let now = Instant::now();
        let mut adaptive = Adaptive::new(secs(15), secs(300));
        for gap in [15, 30, 60, 120, 240] {
            adaptive.on_answered(secs(gap), now);
        }
        adaptive.on_lost(Some(secs(300)));
        adaptive.on_reconnected(now);
        let settled = adaptive.interval();
        assert!(adaptive.settled());
        adaptive.on_lost(Some(settled));
        adaptive.on_reconnected(now);
        assert_eq!(adaptive.interval(), settled, "one loss is a doubt");
        adaptive.on_lost(Some(settled));
        adaptive.on_reconnected(now);
        assert!(
            adaptive.interval() < settled,
            "two in a row: search again below"
        );
    }

    #[test]
    fn a_loss_while_data_flowed_says_nothing() {
        let now = Instant::now();
        let mut adaptive = Adaptive::new(secs(15), secs(300));
        adaptive.on_answered(secs(15), now);
        adaptive.on_lost(None);
        adaptive.on_reconnected(now);
        assert_eq!(adaptive.interval(), secs(30));
    }

    // A restart in virtual time: what the store keeps is `learned()`, what a new
    // process does with it on a known path is `resume()` (the file's round trip and
    // the path keys are the state store's tests).

    #[test]
    fn a_restart_on_the_same_path_resumes_with_nothing_lost() {
        for t in [20, 60, 120, 250] {
            let mut before = Path::new(Some(secs(t)));
            before.run_for(secs(30 * 60));
            let learned_interval = before.adaptive.interval();
            assert!(before.in_band(), "T={t}s");
            let kept = before.adaptive.learned();

            // The new process: fresh at MIN until its first connect tells the path.
            let mut after = Path::new(Some(secs(t)));
            assert_eq!(after.adaptive.interval(), DEFAULT_MIN);
            after.adaptive.resume(kept, after.now);
            assert_eq!(after.adaptive.interval(), learned_interval, "T={t}s");
            assert!(after.in_band() && after.adaptive.settled(), "T={t}s");
            // The first hour: no connection lost, no heartbeat below the band.
            let mut heartbeats = 0;
            let end = after.now + secs(3600);
            while after.now < end {
                after.step();
                heartbeats += 1;
                assert!(after.in_band(), "T={t}s: left the band");
            }
            assert!(
                after.idle_losses.is_empty(),
                "T={t}s: {:?}",
                after.idle_losses
            );
            let settled_rate = 3600.0 / learned_interval.as_secs_f64();
            assert!(
                f64::from(heartbeats) <= settled_rate + 1.0,
                "T={t}s: {heartbeats} heartbeats in the first hour, settled rate {settled_rate:.1}"
            );
        }
    }

    #[test]
    fn a_restart_on_another_path_starts_afresh_at_min() {
        let mut home = Path::new(Some(secs(250)));
        home.run_for(secs(30 * 60));
        let home_interval = home.adaptive.interval();
        let home_learned = home.adaptive.learned();

        // Another path has no entry: the new process starts as a first start does.
        let mut away = Path::new(Some(secs(45)));
        away.adaptive.resume(Learned::default(), away.now);
        assert_eq!(away.adaptive.interval(), DEFAULT_MIN);
        assert!(!away.adaptive.settled());
        away.run_for(secs(30 * 60));
        assert!(away.in_band(), "{:?}", away.adaptive.interval());
        // It never tried the home path's interval, far above this one's timeout.
        assert!(away.idle_losses.len() <= 3, "{:?}", away.idle_losses.len());

        // Back home (a reconnect in the same process): the home entry again.
        away.adaptive.resume(home_learned, away.now);
        assert_eq!(away.adaptive.interval(), home_interval);
    }

    #[test]
    fn a_stale_entry_follows_the_usual_rules() {
        // Learned behind a 250 s timeout; while the device was off the carrier cut it
        // to 60 s. The remembered interval is a proven gap: its first loss is a doubt
        // (as for a running device whose path changed), the second starts a search.
        let mut before = Path::new(Some(secs(250)));
        before.run_for(secs(30 * 60));
        let kept = before.adaptive.learned();
        let mut after = Path::new(Some(secs(60)));
        after.adaptive.resume(kept, after.now);
        let remembered = after.adaptive.interval();
        after.run_for(secs(30 * 60));
        assert!(after.in_band(), "{:?}", after.adaptive.interval());
        let at_remembered = after.idle_losses.len();
        // No special case: exactly what a running device loses when its path's
        // timeout drops from 250 s to 60 s under it.
        let mut running = Path::new(Some(secs(250)));
        running.run_for(secs(30 * 60));
        running.timeout = Some(secs(60));
        let dropped_at = running.now;
        running.run_for(secs(30 * 60));
        let while_running = running.most_losses_in(dropped_at, secs(30 * 60));
        assert!(
            at_remembered <= while_running,
            "{at_remembered} losses after resuming at {remembered:?}, {while_running} when the \
             timeout drops while running"
        );
        eprintln!(
            "stale entry (250 s learned, 60 s now): {at_remembered} connections lost settling \
             again, as a running device ({while_running})"
        );
        let settled = after.now;
        after.run_for(secs(7 * 24 * 3600));
        assert!(after.most_losses_in(settled, secs(6 * 3600)) <= 1);
    }

    #[test]
    fn resume_is_bounded_by_min_and_max_and_tells_only_real_changes() {
        let now = Instant::now();
        let mut adaptive = Adaptive::new(secs(15), secs(60));
        // Learned with wider bounds: held to this run's MAX.
        let wide = Learned {
            good: Some(secs(250)),
            bad: Some(secs(300)),
        };
        adaptive.resume(wide, now);
        assert_eq!(adaptive.interval(), secs(60));
        // A failing gap at or below the proven one: the timeout grew, keep the proven.
        adaptive.resume(
            Learned {
                good: Some(secs(40)),
                bad: Some(secs(30)),
            },
            now,
        );
        assert_eq!(adaptive.learned().bad, None);
        // Nothing known: MIN, as a first start.
        adaptive.resume(Learned::default(), now);
        assert_eq!(adaptive.interval(), secs(15));

        let told = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&told);
        adaptive.set_on_learned(OnLearned(Arc::new(move || {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })));
        let told = || told.load(std::sync::atomic::Ordering::Relaxed);
        adaptive.on_answered(secs(15), now);
        assert_eq!(told(), 1);
        // A shorter gap answered teaches nothing new.
        adaptive.on_answered(secs(10), now);
        assert_eq!(told(), 1);
        adaptive.on_lost(Some(secs(30)));
        adaptive.on_reconnected(now);
        assert_eq!(told(), 2, "a lost gap is learned");
        // The hook survives a resume.
        adaptive.resume(Learned::default(), now);
        adaptive.on_answered(secs(15), now);
        assert_eq!(told(), 3);
    }
}
