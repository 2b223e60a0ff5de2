//! A per-test time budget for the whole test binary: a test that runs past it ends the
//! process with a message naming the test, instead of hanging until an outer timeout.
//!
//! Why: under qemu-user, a fork of this multi-threaded binary has deadlocked before exec
//! (armv7 CI, twice in two runs). A test waiting without a bound on such a child held the
//! target's whole run until `scripts/cross-test.sh`'s 900 s `TEST_TIMEOUT`, and the log said
//! only "timed out". Every helper in `util` waits with a bound, signals are sent without a
//! fork, and [`super::spawn_checked_through`] fails fast when a child never reaches exec; this
//! is the backstop for anything else. Budget: `WSBEAT_TEST_BUDGET_SECS`, else 60 s
//! [`super::scaled`] (the slowest test takes about 15 s natively, and emulation gets the usual
//! factor).
//!
//! libtest runs each test on its own thread, named after the test. The first call into
//! `util` from such a thread ([`watch`]: `Wsbeat::new`, `Server::start*`, `TempDir::new`,
//! `clean_command`) records the thread with the time; a thread-local guard removes it when
//! the thread ends. One thread checks every second. On an overrun it prints the test's name
//! on stderr (directly, past libtest's output capture), kills this process's children (the
//! `wsbeat` children, a fork stuck before exec) so none outlives the run holding its output
//! pipes, and exits with 101, libtest's own code for a failure.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

/// Registered test threads: id → (test name, first call into `util`, a longer budget if
/// the test asked for one with [`extend`]).
type Tests = HashMap<u64, (String, Instant, Option<Duration>)>;
static RUNNING: Mutex<Option<Tests>> = Mutex::new(None);
static NEXT_ID: AtomicU64 = AtomicU64::new(0);
static START: Once = Once::new();

thread_local! {
    static REGISTRATION: Registration = Registration::new();
}

/// Puts the calling test's thread under the watchdog (once per thread; cheap after that).
pub fn watch() {
    REGISTRATION.with(|_| {});
}

/// Gives the calling test `total` instead of [`budget`] (counted from its first call into
/// `util`), for the few tests that must watch a real clock for minutes (a NAT's idle timeout).
/// The caller scales `total`; the default budget still applies if it is the longer one.
pub fn extend(total: Duration) {
    watch();
    let id = REGISTRATION.with(|r| r.0);
    if let (Some(id), Some(map)) = (id, lock().as_mut()) {
        if let Some(entry) = map.get_mut(&id) {
            entry.2 = Some(total);
        }
    }
}

/// The budget of one test.
pub fn budget() -> Duration {
    std::env::var("WSBEAT_TEST_BUDGET_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or_else(|| super::scaled(Duration::from_secs(60)))
}

struct Registration(Option<u64>);

impl Registration {
    fn new() -> Registration {
        let current = thread::current();
        // Test threads carry the test's name; helper threads (unnamed, or named by us) and
        // the main thread are not tests.
        let name = match current.name() {
            Some(name) if name != "main" && !name.starts_with("test-") => name.to_owned(),
            _ => return Registration(None),
        };
        START.call_once(|| {
            let _ = thread::Builder::new()
                .name("test-watchdog".into())
                .spawn(check_forever);
        });
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        lock()
            .get_or_insert_with(HashMap::new)
            .insert(id, (name, Instant::now(), None));
        Registration(Some(id))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(id) = self.0 {
            if let Some(map) = lock().as_mut() {
                map.remove(&id);
            }
        }
    }
}

/// A poisoned lock only means a test panicked while holding it; the map is still good.
fn lock() -> std::sync::MutexGuard<'static, Option<Tests>> {
    RUNNING.lock().unwrap_or_else(|e| e.into_inner())
}

fn check_forever() {
    let budget = budget();
    loop {
        thread::sleep(Duration::from_secs(1));
        let overrun = lock().as_ref().and_then(|map| {
            map.values().find_map(|(name, since, extended)| {
                let budget = extended.map_or(budget, |extended| extended.max(budget));
                (since.elapsed() > budget).then(|| (name.clone(), since.elapsed(), budget))
            })
        });
        if let Some((name, ran, budget)) = overrun {
            give_up(&name, ran, budget);
        }
    }
}

fn give_up(name: &str, ran: Duration, budget: Duration) -> ! {
    let killed = kill_children();
    let message = format!(
        "\n=== test watchdog: `{name}` has run for {:.1} s, past its budget of {:.1} s \
         (WSBEAT_TEST_BUDGET_SECS). It is stuck; under qemu-user the usual cause is a fork of \
         this multi-threaded test binary deadlocked before exec. Killed {killed} child \
         process(es); ending the test binary with exit code 101. ===\n",
        ran.as_secs_f64(),
        budget.as_secs_f64()
    );
    let _ = std::io::stderr().write_all(message.as_bytes());
    std::process::exit(101);
}

/// SIGKILLs every process whose parent is this one (from `/proc/<pid>/stat`); returns how many.
fn kill_children() -> usize {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after
        // the last ')'.
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(me) {
            // SAFETY: kill(2) with a pid read from /proc and a valid signal number; at worst
            // the process is already gone and the call fails with ESRCH.
            if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                killed += 1;
            }
        }
    }
    killed
}
