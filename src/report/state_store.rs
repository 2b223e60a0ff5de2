//! `--state-dir DIR`: what `--ping-interval auto` learned, kept across restarts, one
//! entry per network path ([`crate::net::netpath`] names the path).
//!
//! The file `DIR/heartbeat` is line-based text, versioned by its first line:
//!
//! ```text
//! wsbeat-state 1
//! # path good_ms bad_ms at (unix time)
//! wlan0/192.168.1.1/aa:bb:cc:dd:ee:ff good_ms=86400 bad_ms=108000 at=1764950000
//! wwan0 good_ms=300000 bad_ms=- at=1764940000
//! ```
//!
//! per path the longest idle gap proven (`good`), the shortest that lost the
//! connection (`bad`, `-` while unknown), and when it was kept. At most
//! [`MAX_ENTRIES`] paths, the most recent first: a device that roams keeps its
//! usual networks and forgets the hotel's.
//!
//! [`Store`] is pure (parse, render, look-up). [`Memory`] is the part the supervisor
//! holds: it reads the file once, follows the path the live connection takes, and
//! writes the file when what is learned changes (not on every heartbeat: the file
//! lives on flash), and at exit. Writes are atomic and exclusive, as the status
//! file's, and synced (the point is to survive power cuts). A file that cannot be
//! read, is corrupt or comes from a newer version is ignored with one warning and
//! replaced at the next write; nothing here ever stops the client.

use std::fmt::Write as _;
use std::io::{self, Read as _};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{Config, MAX_DURATION};
use crate::report::status_file::StatusFile;
use crate::rules::adaptive::{self, Adaptive, Learned, OnLearned, SharedAdaptive};

/// The file's name in `--state-dir`.
pub const FILE_NAME: &str = "heartbeat";
/// The first word of the file.
const MAGIC: &str = "wsbeat-state";
/// The format this build writes and reads.
pub const VERSION: u32 = 1;
/// Paths kept; the least recently kept beyond this are dropped.
pub const MAX_ENTRIES: usize = 16;
/// A larger file is not ours (16 entries take about 1.5 kB).
const MAX_FILE_BYTES: u64 = 64 * 1024;
/// Longest key kept.
pub const MAX_KEY_LEN: usize = 160;

/// A network path's name, e.g. `wlan0/192.168.1.1/aa:bb:cc:dd:ee:ff`: printable
/// ASCII without blanks, at most [`MAX_KEY_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathKey(String);

impl PathKey {
    /// `key` if it is one.
    pub fn new(key: &str) -> Option<PathKey> {
        let valid = !key.is_empty()
            && key.len() <= MAX_KEY_LEN
            && key.bytes().all(|b| b.is_ascii_graphic() && b != b'#');
        valid.then(|| PathKey(key.to_owned()))
    }

    /// The key as written.
    #[cfg(test)]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PathKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What is kept for one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path.
    pub key: PathKey,
    /// What the adaptive heartbeat learned there.
    pub learned: Learned,
    /// When it was kept, seconds since the Unix epoch.
    pub at: u64,
}

/// Why a file's text is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// Written by a newer wsbeat in a format this one does not know.
    Newer(u32),
    /// Not a state file, or damaged: what is wrong, and on which line.
    Corrupt(String),
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Newer(version) => write!(
                f,
                "format version {version} is newer than this wsbeat's ({VERSION})"
            ),
            Unusable::Corrupt(what) => write!(f, "corrupt: {what}"),
        }
    }
}

/// The entries, the most recently kept first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Store {
    entries: Vec<Entry>,
}

impl Store {
    /// The store written as `text`. Strict: one bad line makes the whole file
    /// unusable (a half-read file could hold a wrong value for the current path).
    pub fn parse(text: &str) -> Result<Store, Unusable> {
        let corrupt = |line: usize, what: &str| Unusable::Corrupt(format!("line {line}: {what}"));
        let mut lines = text.lines().enumerate().map(|(i, line)| (i + 1, line));
        let (_, first) = lines
            .next()
            .ok_or_else(|| Unusable::Corrupt("empty".into()))?;
        let version = first
            .strip_prefix(MAGIC)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|version| version.parse::<u32>().ok())
            .ok_or_else(|| corrupt(1, "not a wsbeat state file"))?;
        if version > VERSION {
            return Err(Unusable::Newer(version));
        }
        if version != VERSION {
            return Err(corrupt(1, "unknown format version"));
        }
        let mut entries: Vec<Entry> = Vec::new();
        for (number, line) in lines {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entry = parse_entry(line).ok_or_else(|| corrupt(number, "not an entry"))?;
            if entries.iter().any(|other| other.key == entry.key) {
                return Err(corrupt(number, "a path listed twice"));
            }
            entries.push(entry);
        }
        let mut store = Store { entries };
        store.order();
        Ok(store)
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = format!("{MAGIC} {VERSION}\n# path good_ms bad_ms at (unix time)\n");
        let ms = |d: Option<Duration>| d.map_or("-".to_owned(), |d| d.as_millis().to_string());
        for entry in &self.entries {
            let _ = writeln!(
                out,
                "{} good_ms={} bad_ms={} at={}",
                entry.key,
                ms(entry.learned.good),
                ms(entry.learned.bad),
                entry.at
            );
        }
        out
    }

    /// What was learned on `key`, if it was kept.
    pub fn get(&self, key: &PathKey) -> Option<Learned> {
        self.entries
            .iter()
            .find(|entry| entry.key == *key)
            .map(|entry| entry.learned)
    }

    /// Keeps `learned` for `key` at unix time `at`, replacing what was kept before;
    /// beyond [`MAX_ENTRIES`] the least recently kept path goes.
    pub fn put(&mut self, key: PathKey, learned: Learned, at: u64) {
        self.entries.retain(|entry| entry.key != key);
        self.entries.insert(0, Entry { key, learned, at });
        self.order();
    }

    /// The entries, the most recently kept first.
    #[cfg(test)]
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Most recent first (stable: on equal times the one put last stays first),
    /// and no more than [`MAX_ENTRIES`].
    fn order(&mut self) {
        self.entries
            .sort_by_key(|entry| std::cmp::Reverse(entry.at));
        self.entries.truncate(MAX_ENTRIES);
    }
}

/// `KEY good_ms=N|- bad_ms=N|- at=N`.
fn parse_entry(line: &str) -> Option<Entry> {
    let mut words = line.split(' ');
    let key = PathKey::new(words.next()?)?;
    let good = duration(words.next()?.strip_prefix("good_ms=")?)?;
    let bad = duration(words.next()?.strip_prefix("bad_ms=")?)?;
    let at = words.next()?.strip_prefix("at=")?.parse().ok()?;
    if words.next().is_some() {
        return None;
    }
    Some(Entry {
        key,
        learned: Learned { good, bad },
        at,
    })
}

/// `-` (unknown) or whole milliseconds, above 0 and at most what a duration option
/// can say (so no arithmetic on it can overflow).
fn duration(value: &str) -> Option<Option<Duration>> {
    if value == "-" {
        return Some(None);
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ms: u64 = value.parse().ok()?;
    let d = Duration::from_millis(ms);
    (ms > 0 && d <= MAX_DURATION).then_some(Some(d))
}

/// Whether `now` is worth a write over `kept`: something became known or unknown,
/// or a value moved by 2 % or more (the search's own steps are 10 % and more). A path
/// with no idle timeout below `MAX` proves a gap a few milliseconds longer now and
/// then; that is not worth wearing the flash for.
pub fn worth_keeping(kept: Learned, now: Learned) -> bool {
    let moved = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) => {
            let delta = a.abs_diff(b);
            delta >= Duration::from_millis(10) && delta >= a.max(b) / 50
        }
        (None, None) => false,
        _ => true,
    };
    moved(kept.good, now.good) || moved(kept.bad, now.bad)
}

/// The [`Memory`] of `config`'s `--state-dir`, if it applies: with `--ping-interval
/// auto` (its `adaptive`), not for a `--once` probe. `on_learned` is called, on any
/// thread, when what is learned changes; the caller then calls [`Memory::learned`].
pub fn open_for(
    config: &Config,
    adaptive: Option<&SharedAdaptive>,
    on_learned: impl Fn() + Send + Sync + 'static,
) -> Option<Memory> {
    let dir = config.state_dir.as_ref()?;
    let Some(adaptive) = adaptive.filter(|_| !config.once) else {
        log::debug!("--state-dir: only --ping-interval auto learns something to keep");
        return None;
    };
    adaptive::lock(adaptive).set_on_learned(OnLearned(std::sync::Arc::new(on_learned)));
    Some(Memory::open(dir))
}

/// `--state-dir` at work: the store, the path the live connection takes, and what
/// the store holds for that path.
pub struct Memory {
    /// Where the file goes; `None`: kept in memory only (tests).
    file: Option<StatusFile>,
    store: Store,
    /// The path of the current (or last) connection.
    path: Option<PathKey>,
    /// What the store holds for `path`.
    kept: Learned,
    /// A write failed and was reported; later failures are logged at debug.
    write_failed: bool,
}

impl Memory {
    /// Reads `dir`'s file. A missing one is a first start; one that cannot be read
    /// or used is ignored with one warning (and replaced at the first write).
    pub fn open(dir: &Path) -> Memory {
        let path = dir.join(FILE_NAME);
        let store = match read(&path) {
            Ok(Some(text)) => match Store::parse(&text) {
                Ok(store) => {
                    log::debug!(
                        "{}: {} network path(s) known",
                        path.display(),
                        store.entries.len()
                    );
                    store
                }
                Err(why) => {
                    log::warn!(
                        "ignoring the state file {}: {why}; the heartbeat learns afresh",
                        path.display()
                    );
                    Store::default()
                }
            },
            Ok(None) => Store::default(),
            Err(err) => {
                log::warn!(
                    "ignoring the state file {}: {err}; the heartbeat learns afresh",
                    path.display()
                );
                Store::default()
            }
        };
        Memory {
            file: Some(StatusFile::new(path)),
            store,
            path: None,
            kept: Learned::default(),
            write_failed: false,
        }
    }

    /// A memory that writes no file, starting from `store`.
    #[cfg(test)]
    pub fn in_memory(store: Store) -> Memory {
        Memory {
            file: None,
            store,
            path: None,
            kept: Learned::default(),
            write_failed: false,
        }
    }

    /// A connection was made through `path`, before its first heartbeat. On the
    /// path of the connection before, nothing changes. On another one (the first
    /// connect, or the device moved) what was learned on the old path is kept and
    /// `adaptive` resumes from the new path's entry, or afresh at `MIN` if there is
    /// none; a loss on the old path is then no evidence about the new one.
    pub fn connected_via(&mut self, path: PathKey, adaptive: &mut Adaptive, now: Instant) {
        if self.path.as_ref() == Some(&path) {
            return;
        }
        self.keep(adaptive.learned(), false);
        let learned = self.store.get(&path).unwrap_or_default();
        adaptive.resume(learned, now);
        match self.store.get(&path) {
            Some(_) => log::info!(
                "network path {path}: resuming the learned heartbeat at {:?}",
                adaptive.interval()
            ),
            None => log::info!("network path {path}: new, the heartbeat learns it"),
        }
        self.path = Some(path);
        self.kept = learned;
    }

    /// What `adaptive` learned changed: written if [`worth_keeping`].
    pub fn learned(&mut self, adaptive: &Adaptive) {
        self.keep(adaptive.learned(), false);
    }

    /// At exit: whatever differs from what is kept is written.
    pub fn exit(&mut self, adaptive: &Adaptive) {
        self.keep(adaptive.learned(), true);
    }

    /// The store as it is now.
    #[cfg(test)]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Puts `learned` for the current path and writes the file if it is worth it
    /// (`exact`: any difference is).
    fn keep(&mut self, learned: Learned, exact: bool) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let changed = if exact {
            learned != self.kept
        } else {
            worth_keeping(self.kept, learned)
        };
        if !changed || learned == Learned::default() {
            return;
        }
        self.store.put(path, learned, unix_now());
        self.kept = learned;
        let Some(file) = &self.file else {
            return;
        };
        match write(file, &self.store.render()) {
            Ok(()) => self.write_failed = false,
            Err(err) if !self.write_failed => {
                self.write_failed = true;
                log::warn!(
                    "cannot keep the learned heartbeat in {}: {err}",
                    file.path().display()
                );
            }
            Err(err) => log::debug!("{}: {err}", file.path().display()),
        }
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The file's text; `None` if there is none. Larger than [`MAX_FILE_BYTES`] or not
/// UTF-8 is an error.
fn read(path: &Path) -> io::Result<Option<String>> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "larger than a state file can be",
        ));
    }
    Ok(Some(text))
}

/// Replaces the file with `text`, creating its folder (mode 0700) if needed: the
/// unit's `StateDirectory=` makes it, a command line may name a new one.
fn write(file: &StatusFile, text: &str) -> io::Result<()> {
    if let Some(dir) = file
        .path()
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
    {
        if !dir.is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    file.write_synced(text)
}

/// The file `--state-dir DIR` keeps its entries in.
#[cfg(test)]
pub fn file_in(dir: &Path) -> std::path::PathBuf {
    dir.join(FILE_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::status_file::test_support::TempDir;
    use crate::testing::secs;

    fn key(s: &str) -> PathKey {
        PathKey::new(s).expect("valid key")
    }

    fn learned(good: Option<u64>, bad: Option<u64>) -> Learned {
        Learned {
            good: good.map(secs),
            bad: bad.map(secs),
        }
    }

    #[test]
    fn round_trip() {
        let mut store = Store::default();
        store.put(key("wwan0"), learned(Some(300), None), 100);
        store.put(
            key("wlan0/192.168.1.1/aa:bb:cc:dd:ee:ff"),
            Learned {
                good: Some(Duration::from_millis(86_400)),
                bad: Some(secs(108)),
            },
            200,
        );
        store.put(key("eth0/fe80::1"), learned(None, Some(30)), 150);
        let text = store.render();
        assert!(text.starts_with("wsbeat-state 1\n"), "{text}");
        assert!(
            text.contains(
                "wlan0/192.168.1.1/aa:bb:cc:dd:ee:ff good_ms=86400 bad_ms=108000 at=200\n"
            ),
            "{text}"
        );
        let back = Store::parse(&text).expect("parses");
        assert_eq!(back, store);
        // Most recent first.
        let keys: Vec<&str> = back.entries().iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "wlan0/192.168.1.1/aa:bb:cc:dd:ee:ff",
                "eth0/fe80::1",
                "wwan0"
            ]
        );
        assert_eq!(back.get(&key("wwan0")), Some(learned(Some(300), None)));
        assert_eq!(back.get(&key("wwan1")), None);
    }

    #[test]
    fn a_corrupt_file_is_unusable_as_a_whole() {
        let good = "wsbeat-state 1\nwwan0 good_ms=1000 bad_ms=- at=5\n";
        assert!(Store::parse(good).is_ok());
        for bad in [
            "",
            "\n",
            "wsbeat-state\n",
            "wsbeat-state one\n",
            "wsbeat-state 0\n",
            "something else 1\n",
            "wsbeat-state 1\nwwan0 good_ms=1000 bad_ms=- at=5 extra=1\n",
            "wsbeat-state 1\nwwan0 good_ms=1000 bad_ms=-\n",
            "wsbeat-state 1\nwwan0 good_ms=-1000 bad_ms=- at=5\n",
            "wsbeat-state 1\nwwan0 good_ms=+1000 bad_ms=- at=5\n",
            "wsbeat-state 1\nwwan0 good_ms=0 bad_ms=- at=5\n",
            "wsbeat-state 1\nwwan0 good_ms=99999999999999999999 bad_ms=- at=5\n",
            "wsbeat-state 1\nwwan0 good_ms=9000000000000 bad_ms=- at=5\n",
            "wsbeat-state 1\nwwan0  good_ms=1000 bad_ms=- at=5\n",
            "wsbeat-state 1\nwwan0 bad_ms=- good_ms=1000 at=5\n",
            "wsbeat-state 1\nwwan0 good_ms=1000 bad_ms=- at=x\n",
            "wsbeat-state 1\nwwan0 good_ms=1000 bad_ms=- at=5\nwwan0 good_ms=2000 bad_ms=- at=6\n",
            "wsbeat-state 1\nwwan0 good_ms=1000 bad_ms=- at=5\n\u{0}\u{1}garbage\n",
        ] {
            assert!(
                matches!(Store::parse(bad), Err(Unusable::Corrupt(_))),
                "{bad:?}: {:?}",
                Store::parse(bad)
            );
        }
    }

    #[test]
    fn a_newer_version_is_not_read() {
        let text = "wsbeat-state 2\nwhatever a newer wsbeat writes\n";
        assert_eq!(Store::parse(text), Err(Unusable::Newer(2)));
        assert!(Unusable::Newer(2).to_string().contains("newer"));
    }

    #[test]
    fn at_most_16_paths_the_least_recent_go() {
        let mut store = Store::default();
        for n in 0..40u64 {
            store.put(
                key(&format!("wlan0/10.0.0.{n}")),
                learned(Some(n + 1), None),
                n,
            );
        }
        assert_eq!(store.entries().len(), MAX_ENTRIES);
        assert_eq!(store.entries()[0].key, key("wlan0/10.0.0.39"));
        assert!(store.get(&key("wlan0/10.0.0.23")).is_none());
        assert!(store.get(&key("wlan0/10.0.0.24")).is_some());
        // A file with more entries (hand-written) is cut the same way.
        let mut text = String::from("wsbeat-state 1\n");
        for n in 0..20 {
            text.push_str(&format!("p{n} good_ms=1000 bad_ms=- at={n}\n"));
        }
        let store = Store::parse(&text).unwrap();
        assert_eq!(store.entries().len(), MAX_ENTRIES);
        assert!(store.get(&key("p3")).is_none() && store.get(&key("p4")).is_some());
    }

    #[test]
    fn path_keys_are_printable_and_bounded() {
        assert!(PathKey::new("wlan0/192.168.1.1/aa:bb:cc:dd:ee:ff").is_some());
        assert!(PathKey::new("eth0/fe80::1").is_some());
        for bad in ["", "a b", "a\nb", "a#b", "é", &"x".repeat(MAX_KEY_LEN + 1)] {
            assert!(PathKey::new(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn small_changes_are_not_worth_a_write() {
        let kept = learned(Some(300), None);
        let jitter = Learned {
            good: Some(secs(300) + Duration::from_millis(4)),
            bad: None,
        };
        assert!(!worth_keeping(kept, jitter));
        assert!(worth_keeping(kept, learned(Some(300), Some(400))));
        assert!(worth_keeping(
            learned(Some(3), None),
            learned(Some(6), None)
        ));
        assert!(worth_keeping(Learned::default(), learned(Some(3), None)));
        assert!(!worth_keeping(kept, kept));
        assert!(worth_keeping(
            Learned {
                good: Some(Duration::from_millis(3002)),
                bad: None
            },
            Learned {
                good: Some(Duration::from_millis(3999)),
                bad: None
            }
        ));
    }

    /// A restart reads its own file back, and a device that moves between paths
    /// (in one process) resumes each path's entry and keeps the others.
    #[test]
    fn each_path_resumes_its_own_entry_and_keeps_the_others() {
        let mut store = Store::default();
        let home = key("wlan0/192.168.1.1/aa:bb:cc:dd:ee:ff");
        store.put(home.clone(), learned(Some(100), Some(120)), 1);
        let mut memory = Memory::in_memory(Store::parse(&store.render()).expect("own file"));
        let now = Instant::now();
        let mut adaptive = Adaptive::new(secs(15), secs(300));
        memory.connected_via(home.clone(), &mut adaptive, now);
        let home_interval = adaptive.interval();
        assert!(home_interval > secs(15), "{home_interval:?}");
        // Same interface and gateway address, another router: another path, at MIN.
        let away = key("wlan0/192.168.1.1/11:22:33:44:55:66");
        memory.connected_via(away, &mut adaptive, now);
        assert_eq!(adaptive.interval(), secs(15));
        adaptive.on_answered(secs(15), now);
        memory.connected_via(home, &mut adaptive, now);
        assert_eq!(adaptive.interval(), home_interval);
        assert_eq!(memory.store().entries().len(), 2);
    }

    #[test]
    fn memory_writes_on_learning_and_reads_it_back() {
        let dir = TempDir::new("state-store");
        let now = Instant::now();
        let mut adaptive = Adaptive::new(secs(15), secs(300));
        let mut memory = Memory::open(dir.path());
        memory.connected_via(key("wwan0"), &mut adaptive, now);
        assert!(
            !file_in(dir.path()).exists(),
            "nothing learned, nothing written"
        );
        adaptive.on_answered(secs(15), now);
        memory.learned(&adaptive);
        let text = std::fs::read_to_string(file_in(dir.path())).unwrap();
        assert!(text.contains("wwan0 good_ms=15000 bad_ms=- at="), "{text}");
        // No stray temporary files.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let again = Memory::open(dir.path());
        assert_eq!(
            again.store().get(&key("wwan0")),
            Some(learned(Some(15), None))
        );
    }

    #[test]
    fn an_unusable_file_is_ignored_and_replaced() {
        let dir = TempDir::new("state-store-bad");
        let path = file_in(dir.path());
        for text in ["garbage\n", "wsbeat-state 9\nfuture\n"] {
            std::fs::write(&path, text).unwrap();
            let now = Instant::now();
            let mut memory = Memory::open(dir.path());
            assert!(memory.store().entries().is_empty());
            let mut adaptive = Adaptive::new(secs(15), secs(300));
            memory.connected_via(key("eth0"), &mut adaptive, now);
            assert_eq!(adaptive.interval(), secs(15));
            adaptive.on_answered(secs(15), now);
            memory.learned(&adaptive);
            let store = Store::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(store.get(&key("eth0")), Some(learned(Some(15), None)));
        }
        // A folder where the file should be: unreadable, ignored too.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let memory = Memory::open(dir.path());
        assert!(memory.store().entries().is_empty());
    }
}
