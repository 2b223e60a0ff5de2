//! Time bounds: every wait a test makes is bounded, stretched under emulation.

use std::thread;
use std::time::{Duration, Instant};

use super::process::runner_prefix;

/// Factor applied to every time bound: `WSBEAT_TEST_TIME_SCALE` if set, else 5 when
/// `WSBEAT_TEST_RUNNER` is set (emulation is ~5-10x slower), else 1.
pub fn time_scale() -> f64 {
    if let Some(s) = std::env::var("WSBEAT_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s >= 1.0)
    {
        return s;
    }
    if runner_prefix().is_empty() { 1.0 } else { 5.0 }
}

/// `d` stretched by [`time_scale`]. Use for every upper bound a test asserts or waits for.
pub fn scaled(d: Duration) -> Duration {
    d.mul_f64(time_scale())
}

/// The default bound for "this should happen soon": 10 s, scaled.
#[allow(non_snake_case)]
pub fn WAIT() -> Duration {
    scaled(Duration::from_secs(10))
}

/// Milliseconds as a `Duration` (short to write in tests).
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Locks `m`, taking over a lock poisoned by a panicking test thread (the
/// bookkeeping behind it stays consistent; the failure is reported elsewhere).
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `n` seconds.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Waits until `f` returns `Some`, polling every 10 ms, at most `timeout`. For state that has
/// no event to wait on (e.g. `/proc` counts); everything with an event uses channels instead.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(ms(10));
    }
}
