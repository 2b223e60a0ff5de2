//! Locks and waits as every thread of the client takes them: a lock poisoned by a
//! thread that panicked is taken over as it is. Everything behind these locks is
//! plain bookkeeping that stays consistent between statements, and the client's
//! other threads must go on (and shut down) whatever one of them did.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Locks `mutex`, poisoned or not.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `condvar` with `guard`, poisoned or not.
pub fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `condvar` with `guard` for at most `timeout`, poisoned or not.
pub fn wait_timeout<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
) -> MutexGuard<'a, T> {
    condvar
        .wait_timeout(guard, timeout)
        .unwrap_or_else(PoisonError::into_inner)
        .0
}

/// Waits on `condvar` as one of the waiters the state counts (`waiters`), so
/// whoever makes room can tell whether anyone needs waking. For the producers
/// that wait for room in a bounded queue (the outbox, the delivery buffer).
pub fn wait_counted<'a, T>(
    condvar: &Condvar,
    mut guard: MutexGuard<'a, T>,
    waiters: fn(&mut T) -> &mut usize,
    timeout: Option<Duration>,
) -> MutexGuard<'a, T> {
    *waiters(&mut guard) += 1;
    let mut guard = match timeout {
        Some(timeout) => wait_timeout(condvar, guard, timeout),
        None => wait(condvar, guard),
    };
    *waiters(&mut guard) -= 1;
    guard
}
