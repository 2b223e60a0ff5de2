//! Cellular economy and metrics (SPEC "Cellular economy and metrics"): the status file's
//! counters (`ping_interval_ms`, `heartbeats`, `bytes_sent`, `bytes_received`) and
//! `--metrics-file` read back by a real Prometheus parser (`prometheus_client`'s, from the
//! interop peers' venv). The adaptive heartbeat behind a real NAT is in `nat.rs`.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::server::{Behavior, Event, Server};
use crate::util::{Running, TempDir, WAIT, Wsbeat, ms, poll_until, scaled};

/// The events `server` has seen so far that match `pred` (no waiting).
pub fn seen(server: &Server, pred: impl FnMut(&Event) -> bool) -> Vec<Event> {
    server
        .wait_count(Duration::ZERO, 0, pred)
        .unwrap_or_default()
}

/// The status file's pairs (shared with the NAT tests).
pub use crate::util::read_status as status;

/// A numeric key of a status snapshot; panics naming the key (the fields predate nothing:
/// a status file without them is the behaviour before the counters existed).
pub fn number(status: &HashMap<String, String>, key: &str) -> u64 {
    let value = status
        .get(key)
        .unwrap_or_else(|| panic!("the status file has no {key}=: {status:?}"));
    value
        .parse()
        .unwrap_or_else(|e| panic!("{key}={value:?}: {e}; {status:?}"))
}

/// Waits (bounded) for a status snapshot that satisfies `pred`; panics with the last one
/// and the client's output if none does within `timeout`.
pub fn wait_status(
    w: &mut Running,
    path: &Path,
    timeout: Duration,
    what: &str,
    mut pred: impl FnMut(&HashMap<String, String>) -> bool,
) -> HashMap<String, String> {
    let mut last = None;
    let found = poll_until(timeout, || {
        let now = status(path)?;
        let hit = pred(&now).then(|| now.clone());
        last = Some(now);
        hit
    });
    match found {
        Some(found) => found,
        None => panic!(
            "no status file with {what} within {timeout:?}; last: {last:?}\n{}",
            w.output().dump()
        ),
    }
}

/// With a fixed interval the heartbeat keeps its cadence however busy the connection is (as
/// before `auto` existed), and the status file counts it: `ping_interval_ms` is the interval,
/// `heartbeats` and the byte counters are above zero and grow from one refresh to the next.
/// The default interval reads 20000.
#[test]
fn status_file_counts_heartbeats_and_bytes_with_a_fixed_interval() {
    let dir = TempDir::new();
    // The server talks every 300 ms: with `auto` that traffic would hold the heartbeat back;
    // a fixed interval pings every second regardless.
    let server = Server::start(Behavior::default().send_every(ms(300), "tick"));
    let path = dir.join("status");
    let mut w = Wsbeat::new()
        .args([
            "--ping-interval",
            "1s",
            "--pong-timeout",
            "2s",
            "--status-file",
        ])
        .arg(&path)
        .arg(server.url())
        .stdout_null()
        .spawn();
    let default_path = dir.join("default-status");
    let default_server = Server::start(Behavior::default());
    let mut default = Wsbeat::new()
        .arg("--status-file")
        .arg(&default_path)
        .arg(default_server.url())
        .spawn();

    // Published when the first heartbeat is answered.
    let first = wait_status(&mut w, &path, WAIT(), "a heartbeat counted", |s| {
        s.get("heartbeats").is_some_and(|h| h != "0")
    });
    assert_eq!(first["state"], "connected", "{first:?}");
    assert_eq!(number(&first, "ping_interval_ms"), 1000, "{first:?}");
    let heartbeats = number(&first, "heartbeats");
    let sent = number(&first, "bytes_sent");
    let received = number(&first, "bytes_received");
    // The upgrade request alone is well over 100 bytes, and each heartbeat is a masked Ping
    // with a 16-byte payload (22 bytes); the 101 response is over 100 bytes too.
    assert!(sent >= 100 + 22 * heartbeats, "{first:?}");
    assert!(received >= 100, "{first:?}");

    // Refreshed while connected (at most every 30 s between state changes).
    let later = wait_status(
        &mut w,
        &path,
        scaled(Duration::from_secs(45)),
        "a refresh",
        |s| {
            s.get("heartbeats")
                .and_then(|h| h.parse::<u64>().ok())
                .is_some_and(|h| h > heartbeats)
        },
    );
    let heartbeats_later = number(&later, "heartbeats");
    // A heartbeat is counted as it is sent, its bytes once the kernel took them: a
    // status written in between shows one heartbeat ahead of its bytes.
    let written = (heartbeats_later - heartbeats).saturating_sub(1);
    assert!(
        number(&later, "bytes_sent") >= sent + 22 * written,
        "{first:?} then {later:?}"
    );
    assert!(number(&later, "bytes_received") > received, "{later:?}");
    assert_eq!(number(&later, "ping_interval_ms"), 1000, "{later:?}");
    assert_eq!(number(&later, "reconnects"), 0, "{later:?}");
    // The server saw every counted heartbeat at the fixed cadence, busy as the connection
    // was (with `auto`, a server that talks every 300 ms would hold every heartbeat back).
    let pings: Vec<Instant> = server
        .expect_count(
            WAIT(),
            heartbeats_later as usize,
            "every counted heartbeat",
            Event::is_ping,
        )
        .into_iter()
        .map(|e| e.at)
        .collect();
    for pair in pings.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= ms(900) && gap <= scaled(ms(2500)),
            "a fixed 1 s heartbeat with the server talking every 300 ms: gap {gap:?}"
        );
    }

    let default_status = wait_status(&mut default, &default_path, WAIT(), "connected", |s| {
        s.get("state").is_some_and(|v| v == "connected")
    });
    assert_eq!(number(&default_status, "ping_interval_ms"), 20000);
}

/// The metrics file read by `prometheus_client`'s text parser (from the venv that
/// `scripts/install-peers.sh` makes): every family the SPEC names, with its `# HELP` and
/// `# TYPE`, the failure reasons, and counters that move between two writes.
#[cfg(feature = "interop")]
mod prometheus {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use super::{number, status, wait_status};
    use crate::util::server::{Behavior, Server};
    use crate::util::{
        TempDir, WAIT, Wsbeat, poll_until, refused_url, scaled, spawn_checked_through,
    };

    /// Parses a text exposition with `prometheus_client.parser` and prints one line per
    /// family (`F name type help`) and per sample (`S name labels value`), tab-separated.
    const PARSE: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
with open(sys.argv[1]) as f:
    text = f.read()
for fam in text_string_to_metric_families(text):
    print("F\t%s\t%s\t%s" % (fam.name, fam.type, fam.documentation))
    for s in fam.samples:
        labels = ",".join("%s=%s" % kv for kv in sorted(s.labels.items()))
        print("S\t%s\t%s\t%r" % (s.name, labels, s.value))
"#;

    fn python() -> PathBuf {
        let peers = std::env::var_os("WSBEAT_PEERS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/peers"));
        let python = peers.join("venv/bin/python");
        assert!(
            python.exists(),
            "interop peer missing: Python with prometheus_client ({}). Install the peers with \
             `scripts/install-peers.sh`, then run again.",
            python.display()
        );
        python
    }

    /// What the parser made of a metrics file.
    #[derive(Debug, Default)]
    struct Parsed {
        /// Family name → (type, help).
        families: HashMap<String, (String, String)>,
        /// `name{labels}` → value.
        samples: HashMap<String, f64>,
    }

    impl Parsed {
        fn sample(&self, key: &str) -> f64 {
            *self
                .samples
                .get(key)
                .unwrap_or_else(|| panic!("no sample {key}: {self:#?}"))
        }
    }

    /// Runs the real parser on `file` (bounded); panics with its stderr if it rejects it.
    fn parse(file: &Path) -> Parsed {
        let mut child = spawn_checked_through(
            Command::new(python())
                .args(["-c", PARSE])
                .arg(file)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
            0,
        );
        let status = poll_until(WAIT(), || child.try_wait().ok().flatten());
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the parser did not finish within {:?}", WAIT());
        };
        let out = child.wait_with_output().expect("parser output");
        let text = std::fs::read_to_string(file).unwrap_or_default();
        assert!(
            status.success(),
            "prometheus_client rejects the metrics file: {}\n--- file\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut parsed = Parsed::default();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let fields: Vec<&str> = line.splitn(4, '\t').collect();
            match fields.as_slice() {
                ["F", name, kind, help] => {
                    parsed
                        .families
                        .insert(name.to_string(), (kind.to_string(), help.to_string()));
                }
                ["S", name, labels, value] => {
                    let value: f64 = match *value {
                        "nan" => f64::NAN,
                        v => v.parse().unwrap_or_else(|e| panic!("{line:?}: {e}")),
                    };
                    let key = if labels.is_empty() {
                        name.to_string()
                    } else {
                        format!("{name}{{{labels}}}")
                    };
                    parsed.samples.insert(key, value);
                }
                _ => panic!("unexpected parser output {line:?}"),
            }
        }
        parsed
    }

    /// Every family the SPEC requires, as the parser names it (counters without `_total`),
    /// with the type it must declare.
    const FAMILIES: [(&str, &str); 10] = [
        ("wsbeat_connected", "gauge"),
        ("wsbeat_reconnects", "counter"),
        ("wsbeat_connect_failures", "counter"),
        ("wsbeat_heartbeats", "counter"),
        ("wsbeat_heartbeat_rtt_seconds", "gauge"),
        ("wsbeat_ping_interval_seconds", "gauge"),
        ("wsbeat_bytes", "counter"),
        ("wsbeat_messages", "counter"),
        ("wsbeat_dropped_messages", "counter"),
        ("wsbeat_state_since_timestamp_seconds", "gauge"),
    ];

    fn check_families(parsed: &Parsed) {
        for (name, kind) in FAMILIES {
            let (declared, help) = parsed
                .families
                .get(name)
                .unwrap_or_else(|| panic!("no family {name}: {parsed:#?}"));
            assert_eq!(declared, kind, "# TYPE of {name}");
            assert!(!help.trim().is_empty(), "no # HELP for {name}");
        }
        for reason in ["dns", "tcp", "tls", "http", "timeout", "proxy"] {
            parsed.sample(&format!("wsbeat_connect_failures_total{{reason={reason}}}"));
        }
    }

    #[test]
    fn metrics_file_passes_prometheus_clients_parser_and_counters_move() {
        let dir = TempDir::new();
        let server = Server::start(Behavior::default());
        let status_path = dir.join("status");
        let metrics_path = dir.join("wsbeat.prom");
        let mut w = Wsbeat::new()
            .args([
                "--ping-interval",
                "1s",
                "--pong-timeout",
                "2s",
                "--status-file",
            ])
            .arg(&status_path)
            .arg("--metrics-file")
            .arg(&metrics_path)
            .arg(server.url())
            .spawn();
        let first = wait_status(&mut w, &status_path, WAIT(), "a heartbeat counted", |s| {
            s.get("heartbeats").is_some_and(|h| h != "0")
        });
        // Written together with the status file (right after it): wait for the same figures.
        let heartbeats = number(&first, "heartbeats") as f64;
        let parsed = poll_until(WAIT(), || {
            let parsed = parse(&metrics_path);
            (parsed.samples.get("wsbeat_heartbeats_total") >= Some(&heartbeats)).then_some(parsed)
        })
        .unwrap_or_else(|| panic!("the metrics file never counted {heartbeats} heartbeats"));
        check_families(&parsed);
        assert_eq!(parsed.sample("wsbeat_connected"), 1.0);
        assert_eq!(parsed.sample("wsbeat_ping_interval_seconds"), 1.0);
        let rtt = parsed.sample("wsbeat_heartbeat_rtt_seconds");
        assert!(rtt > 0.0 && rtt < 1.0, "rtt {rtt}");
        let sent = parsed.sample("wsbeat_bytes_total{direction=sent}");
        let received = parsed.sample("wsbeat_bytes_total{direction=received}");
        assert!(sent > 0.0 && received > 0.0, "{parsed:#?}");
        assert_eq!(parsed.sample("wsbeat_reconnects_total"), 0.0);

        // The next write (the periodic refresh): the counters moved.
        let beats = parsed.sample("wsbeat_heartbeats_total");
        let later = poll_until(scaled(Duration::from_secs(45)), || {
            std::fs::metadata(&metrics_path).ok()?;
            let later = parse(&metrics_path);
            (later.sample("wsbeat_heartbeats_total") > beats).then_some(later)
        })
        .unwrap_or_else(|| panic!("the heartbeat counter never moved\n{}", w.output().dump()));
        check_families(&later);
        assert!(later.sample("wsbeat_bytes_total{direction=sent}") > sent);
        assert!(later.sample("wsbeat_bytes_total{direction=received}") > received);
        // The same figures as the status file written with it.
        let now = status(&status_path).expect("status file");
        if number(&now, "heartbeats") as f64 == later.sample("wsbeat_heartbeats_total") {
            assert_eq!(
                number(&now, "bytes_sent") as f64,
                later.sample("wsbeat_bytes_total{direction=sent}")
            );
        }

        // A refused connect is counted under its reason, and `connected` is 0.
        let refused_path = dir.join("refused.prom");
        let _refused = Wsbeat::new()
            .fast()
            .arg("--metrics-file")
            .arg(&refused_path)
            .arg(refused_url())
            .spawn();
        let failed = poll_until(WAIT(), || {
            std::fs::metadata(&refused_path).ok()?;
            let parsed = parse(&refused_path);
            (parsed.sample("wsbeat_connect_failures_total{reason=tcp}") >= 1.0).then_some(parsed)
        })
        .expect("a refused connect counted with reason tcp");
        check_families(&failed);
        assert_eq!(failed.sample("wsbeat_connected"), 0.0);
        assert!(failed.sample("wsbeat_heartbeat_rtt_seconds").is_nan());
    }
}

/// `--state-dir` on loopback: what `auto` learned in one run is where the next run starts.
/// Bounds `500ms..4s` grow to 4 s in 7.5 s (0.5, 1, 2 and 4 s answered); after a SIGTERM a
/// new process's first heartbeat follows a 4 s gap, not `MIN` (it did before `--state-dir`).
#[test]
fn state_dir_resumes_the_learned_interval_after_a_restart() {
    let dir = TempDir::new();
    let state = dir.join("state");
    let server = Server::start(Behavior::default());
    let client = || {
        Wsbeat::new()
            .args(["--ping-interval", "auto:500ms..4s", "--pong-timeout", "2s"])
            .arg("--state-dir")
            .arg(&state)
            .arg(server.url())
            .stdin_null()
            .spawn()
    };
    let mut first = client();
    let file = state.join("heartbeat");
    let learned = poll_until(scaled(Duration::from_secs(20)), || {
        let text = std::fs::read_to_string(&file).ok()?;
        text.contains("lo good_ms=4").then_some(text)
    });
    let Some(learned) = learned else {
        panic!(
            "no 4 s gap kept in {}: {:?}\n{}\n{}",
            file.display(),
            std::fs::read_to_string(&file),
            server.dump(),
            first.output().dump()
        );
    };
    assert!(learned.starts_with("wsbeat-state 1\n"), "{learned}");
    first.signal(libc::SIGTERM);
    assert_eq!(
        first.wait_exit(WAIT()),
        Some(0),
        "{}",
        first.output().dump()
    );

    let mut second = client();
    let up = server.expect_upgrades(WAIT(), 2);
    let ping = server.expect_count(
        scaled(Duration::from_secs(8)),
        1,
        "a heartbeat on the second connection",
        |e| e.is_ping() && e.conn == up.conn,
    );
    let gap = ping[0].at.duration_since(up.at);
    assert!(
        gap >= ms(3900) && gap < scaled(ms(5000)),
        "first idle gap after the restart {gap:?}, learned 4 s\n{}\n{}",
        server.dump(),
        second.output().dump()
    );
    let output = second.output();
    assert!(
        output.stderr.contains("network path lo: resuming"),
        "{}",
        output.dump()
    );
}

/// A state file that is corrupt, from a newer wsbeat, or not a file at all is ignored with
/// one warning; the client runs on, learns afresh and replaces the file with its own.
#[test]
fn an_unusable_state_file_gives_one_warning_and_the_client_runs_on() {
    for (case, bad) in [
        ("corrupt", Some("\u{0}garbage\nwsbeat-state 1\n")),
        (
            "newer",
            Some("wsbeat-state 7\nwhat a newer wsbeat writes\n"),
        ),
        ("a folder", None),
    ] {
        let dir = TempDir::new();
        let state = dir.join("state");
        std::fs::create_dir(&state).unwrap();
        let file = state.join("heartbeat");
        match bad {
            Some(text) => std::fs::write(&file, text).unwrap(),
            None => std::fs::create_dir(&file).unwrap(),
        }
        let server = Server::start(Behavior::default());
        let mut w = Wsbeat::new()
            .args(["--ping-interval", "auto:500ms..4s", "--pong-timeout", "2s"])
            .arg("--state-dir")
            .arg(&state)
            .arg(server.url())
            .stdin_null()
            .spawn();
        // Runs on: connects and its first heartbeat (at MIN, learning afresh) is answered.
        let up = server.expect_upgrades(WAIT(), 1);
        let ping = server.expect_count(WAIT(), 1, "a heartbeat", Event::is_ping);
        let gap = ping[0].at.duration_since(up.at);
        assert!(gap < scaled(ms(1500)), "{case}: first gap {gap:?}");
        if bad.is_some() {
            let replaced = poll_until(WAIT(), || {
                let text = std::fs::read_to_string(&file).ok()?;
                text.contains("lo good_ms=").then_some(text)
            });
            assert!(
                replaced.is_some_and(|text| text.starts_with("wsbeat-state 1\n")),
                "{case}: not replaced: {:?}",
                std::fs::read_to_string(&file)
            );
        } else {
            std::thread::sleep(ms(1500));
        }
        w.signal(libc::SIGTERM);
        assert_eq!(
            w.wait_exit(WAIT()),
            Some(0),
            "{case}: {}",
            w.output().dump()
        );
        let output = w.output();
        let warnings: Vec<&str> = output
            .stderr_lines()
            .into_iter()
            .filter(|line| line.contains("state file"))
            .collect();
        assert_eq!(warnings.len(), 1, "{case}: {}", output.dump());
        assert!(
            warnings[0].contains("WARN") && warnings[0].contains("learns afresh"),
            "{case}: {}",
            warnings[0]
        );
        assert_eq!(server.upgrades(), 1, "{case}: {}", server.dump());
    }
}
