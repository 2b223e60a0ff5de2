//! The machine's deadlines, one table indexed by a [`Timer`] enum (as in
//! quinn-proto): every deadline of the reconnect loop lives here, none in a phase
//! or a thread, so the next wake-up is the minimum of one array and what fired is
//! found by one scan.

use std::time::Instant;

/// The machine's named deadlines, in the order they are handled when several
/// fire at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// systemd's watchdog is due.
    Watchdog,
    /// The status is due for a refresh.
    StatusRefresh,
    /// Backoff over: dial again (or, stopping, exit).
    Reconnect,
    /// The attempt ran past `--connect-timeout`: it is cut short whatever its
    /// thread is doing (a peer that drips handshake bytes never lets a read time out).
    ConnectGiveUp,
    /// The live connection's heartbeat answer or blocked write is due for judging.
    Liveness,
    /// A Close was sent; the server's answer is due.
    CloseWait,
    /// Heartbeat off: the connection has been up [`QUIET_PROOF`](super::QUIET_PROOF).
    QuietProof,
}

impl Timer {
    /// Every timer, in the order they are handled.
    pub const ALL: [Timer; 7] = [
        Timer::Watchdog,
        Timer::StatusRefresh,
        Timer::Reconnect,
        Timer::ConnectGiveUp,
        Timer::Liveness,
        Timer::CloseWait,
        Timer::QuietProof,
    ];

    /// The timers that belong to one phase of the loop (not the watchdog and the
    /// status refresh, which run through every phase).
    pub const PHASE: [Timer; 5] = [
        Timer::Reconnect,
        Timer::ConnectGiveUp,
        Timer::Liveness,
        Timer::CloseWait,
        Timer::QuietProof,
    ];
}

/// When each [`Timer`] fires; `None`: not armed.
#[derive(Debug, Default, Clone)]
pub struct TimerTable([Option<Instant>; Timer::ALL.len()]);

impl TimerTable {
    /// Arms `timer` at `at`, or disarms it (`None`).
    pub fn set(&mut self, timer: Timer, at: Option<Instant>) {
        self.0[timer as usize] = at;
    }

    /// When `timer` fires, if armed.
    pub fn get(&self, timer: Timer) -> Option<Instant> {
        self.0[timer as usize]
    }

    /// Disarms `timer`.
    pub fn stop(&mut self, timer: Timer) {
        self.set(timer, None);
    }

    /// Disarms `timer` if it has fired by `now`; whether it had.
    pub fn take_expired(&mut self, timer: Timer, now: Instant) -> bool {
        let expired = self.get(timer).is_some_and(|at| now >= at);
        if expired {
            self.stop(timer);
        }
        expired
    }

    /// The earliest armed timer's time.
    pub fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }

    /// Every timer and when it fires.
    #[cfg(test)]
    pub fn all(&self) -> [(Timer, Option<Instant>); Timer::ALL.len()] {
        Timer::ALL.map(|timer| (timer, self.get(timer)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_next_deadline_is_the_earliest_armed_timer_and_fires_once() {
        let t0 = Instant::now();
        let mut table = TimerTable::default();
        assert_eq!(table.next(), None);
        table.set(Timer::Reconnect, Some(t0 + Duration::from_secs(5)));
        table.set(Timer::Watchdog, Some(t0 + Duration::from_secs(2)));
        assert_eq!(table.next(), Some(t0 + Duration::from_secs(2)));
        assert!(!table.take_expired(Timer::Reconnect, t0 + Duration::from_secs(4)));
        assert!(table.take_expired(Timer::Reconnect, t0 + Duration::from_secs(5)));
        assert!(!table.take_expired(Timer::Reconnect, t0 + Duration::from_secs(6)));
        assert_eq!(table.next(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(table.all().iter().filter(|(_, at)| at.is_some()).count(), 1);
    }

    #[test]
    fn every_timer_has_its_own_slot() {
        let t0 = Instant::now();
        let mut table = TimerTable::default();
        for (n, timer) in Timer::ALL.into_iter().enumerate() {
            table.set(timer, Some(t0 + Duration::from_secs(n as u64)));
        }
        for (n, timer) in Timer::ALL.into_iter().enumerate() {
            assert_eq!(table.get(timer), Some(t0 + Duration::from_secs(n as u64)));
        }
    }
}
