//! Reconnect delays: full-jitter exponential backoff, `Retry-After`, and the
//! longer wait after 401/403. Pure: randomness comes in through [`Random`].

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// The longest a `Retry-After` header may make us wait.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

/// A source of uniform random durations; injectable so tests choose the draws.
pub trait Random {
    /// A uniformly random duration in `[0, max]`.
    fn below(&mut self, max: Duration) -> Duration;
}

/// SplitMix64: tiny, fast and plenty for spreading reconnects over a window.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator with a fixed seed (tests, reproducible runs).
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// A generator seeded from the OS (via std's hash seed), so devices that
    /// boot in the same millisecond still draw different delays.
    pub fn from_os() -> SplitMix64 {
        SplitMix64(RandomState::new().build_hasher().finish())
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Random for SplitMix64 {
    fn below(&mut self, max: Duration) -> Duration {
        let max_nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        if max_nanos == 0 {
            return Duration::ZERO;
        }
        // Multiply-shift maps 64 random bits onto [0, max] without modulo bias worth noticing.
        let draw = (u128::from(self.next_u64()) * (u128::from(max_nanos) + 1)) >> 64;
        Duration::from_nanos(draw as u64)
    }
}

/// Why the last attempt ended, as far as the next delay is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Refused, timed out, dropped, dead heartbeat: plain jittered backoff.
    Normal,
    /// 429/503 with `Retry-After`: wait that long plus up to 10 %.
    RetryAfter(Duration),
    /// 401/403: credentials will not fix themselves quickly; wait `[max/2, max]`.
    Unauthorized,
}

/// The reconnect policy: attempt `n` (from 0) waits a uniform time in
/// `[0, min(max, initial * 2^n)]`; the counter resets once a connection proved alive.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A policy with the given first cap and largest delay.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    /// `--backoff-initial`.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The upper bound of the next plain delay.
    pub fn cap(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .map_or(self.max, |cap| cap.min(self.max))
    }

    /// The delay before the next attempt; advances the attempt counter.
    pub fn next_delay<R: Random + ?Sized>(&mut self, failure: Failure, random: &mut R) -> Duration {
        let delay = match failure {
            Failure::Normal => random.below(self.cap()),
            Failure::RetryAfter(after) => {
                let after = after.min(RETRY_AFTER_CAP);
                (after + random.below(after / 10)).min(RETRY_AFTER_CAP)
            }
            Failure::Unauthorized => {
                let half = self.max / 2;
                half + random.below(self.max - half)
            }
        };
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// The connection proved alive: the next failure starts again from `initial`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ms;

    /// Always draws the top of the range, so the cap itself is observable.
    struct Highest;
    impl Random for Highest {
        fn below(&mut self, max: Duration) -> Duration {
            max
        }
    }

    /// Always draws zero.
    struct Lowest;
    impl Random for Lowest {
        fn below(&mut self, _max: Duration) -> Duration {
            Duration::ZERO
        }
    }

    #[test]
    fn caps_double_from_initial_up_to_max() {
        let mut backoff = Backoff::new(ms(1000), ms(60_000));
        let caps: Vec<_> = (0..9)
            .map(|_| backoff.next_delay(Failure::Normal, &mut Highest))
            .collect();
        let expected: Vec<_> = [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]
            .into_iter()
            .map(ms)
            .collect();
        assert_eq!(caps, expected);
    }

    #[test]
    fn full_jitter_can_reconnect_at_once() {
        let mut backoff = Backoff::new(ms(1000), ms(60_000));
        assert_eq!(
            backoff.next_delay(Failure::Normal, &mut Lowest),
            Duration::ZERO
        );
    }

    #[test]
    fn reset_starts_over_from_initial() {
        let mut backoff = Backoff::new(ms(100), ms(10_000));
        for _ in 0..5 {
            backoff.next_delay(Failure::Normal, &mut Highest);
        }
        assert_eq!(backoff.cap(), ms(3200));
        backoff.reset();
        assert_eq!(backoff.next_delay(Failure::Normal, &mut Highest), ms(100));
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut backoff = Backoff::new(Duration::from_secs(3600), Duration::from_secs(7200));
        for _ in 0..200 {
            assert!(backoff.next_delay(Failure::Normal, &mut Highest) <= Duration::from_secs(7200));
        }
    }

    #[test]
    fn retry_after_adds_up_to_ten_percent() {
        let mut backoff = Backoff::new(ms(100), ms(1000));
        let after = Duration::from_secs(30);
        assert_eq!(
            backoff.next_delay(Failure::RetryAfter(after), &mut Lowest),
            after
        );
        assert_eq!(
            backoff.next_delay(Failure::RetryAfter(after), &mut Highest),
            Duration::from_secs(33)
        );
    }

    #[test]
    fn retry_after_is_capped_at_one_hour() {
        let mut backoff = Backoff::new(ms(100), ms(1000));
        let day = Duration::from_secs(86_400);
        assert_eq!(
            backoff.next_delay(Failure::RetryAfter(day), &mut Highest),
            RETRY_AFTER_CAP
        );
        assert_eq!(
            backoff.next_delay(Failure::RetryAfter(day), &mut Lowest),
            RETRY_AFTER_CAP
        );
    }

    #[test]
    fn unauthorized_waits_between_half_max_and_max() {
        let mut backoff = Backoff::new(ms(100), ms(60_000));
        assert_eq!(
            backoff.next_delay(Failure::Unauthorized, &mut Lowest),
            ms(30_000)
        );
        assert_eq!(
            backoff.next_delay(Failure::Unauthorized, &mut Highest),
            ms(60_000)
        );
    }

    #[test]
    fn splitmix_draws_stay_in_range_and_spread() {
        let mut random = SplitMix64::new(7);
        let max = ms(1000);
        let mut buckets = [0u32; 10];
        for _ in 0..10_000 {
            let draw = random.below(max);
            assert!(draw <= max);
            buckets[(draw.as_millis() as usize).min(999) / 100] += 1;
        }
        // Uniform share is 1000 per bucket; a broken generator piles up far beyond 20 %.
        assert!(
            buckets.iter().all(|&n| (800..1200).contains(&n)),
            "{buckets:?}"
        );
        assert_eq!(random.below(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn os_seeds_differ() {
        assert_ne!(
            SplitMix64::from_os().next_u64(),
            SplitMix64::from_os().next_u64()
        );
    }
}
