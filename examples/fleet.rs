//! Fleet reconnect storm: many wsbeat clients (the library, one supervisor thread
//! each) in one process against one local server. The server restarts; each client's
//! reconnect time is recorded and shown as a histogram of 100 ms buckets, with the
//! largest bucket as a multiple of the uniform share over the jitter window
//! `[0, backoff-initial]` (attempt 0 of the full-jitter policy): `clients / (window /
//! 100 ms)`, the same share for both runs.
//!
//! The same is then done with jitter disabled: a random source that always draws the
//! top of the range, i.e. a fixed delay (`--fixed-ms`, default backoff-initial), as a
//! hand-written "reconnect after N ms" loop does (websocat's 20 ms, a Node client's
//! fixed delay).
//!
//! ```text
//! cargo run --release --example fleet -- [--clients 1000] [--backoff-initial-ms 1000]
//!     [--fixed-ms BACKOFF_INITIAL] [--down-ms 0] [--rebind] [--ping-ms 1000] [--json PATH]
//! ```
//! The restart drops every connection while the listener stays open (a server behind
//! systemd socket activation or a load balancer); `--rebind` also closes the listener
//! for `--down-ms`, so early attempts are refused and back off further.
//!
//! In one process on 2 cores, tearing down 1000 connections (4000 threads) takes a few
//! hundred ms of CPU, so the clients notice the restart over that span, not at once as
//! separate devices would; the run prints when they entered backoff, to show this.
//! Bounded: every wait has a deadline; about 10 s and 200 MiB for 1000 clients.

use std::io::{ErrorKind, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use wsbeat::Random;
use wsbeat::{Config, Ending, Handle, Observer, State, Status, Supervisor, parse_target};

const BUCKET: Duration = Duration::from_millis(100);

struct Args {
    clients: usize,
    backoff_initial: Duration,
    down: Duration,
    ping: Duration,
    json: Option<String>,
    /// The delay of the jitter-disabled run.
    fixed: Option<Duration>,
    /// Close the listener during the restart too (else only the connections drop).
    rebind: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        clients: 1000,
        backoff_initial: Duration::from_millis(1000),
        down: Duration::ZERO,
        ping: Duration::from_millis(1000),
        json: None,
        rebind: false,
        fixed: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let val = argv.get(i + 1).cloned().unwrap_or_default();
        let num = || -> u64 {
            val.parse().unwrap_or_else(|_| {
                eprintln!("fleet: {} needs a number", argv[i]);
                std::process::exit(64)
            })
        };
        match argv[i].as_str() {
            "--clients" => a.clients = num() as usize,
            "--backoff-initial-ms" => a.backoff_initial = Duration::from_millis(num()),
            "--fixed-ms" => a.fixed = Some(Duration::from_millis(num())),
            "--down-ms" => a.down = Duration::from_millis(num()),
            "--ping-ms" => a.ping = Duration::from_millis(num()),
            "--json" => a.json = Some(val.clone()),
            "--rebind" => {
                a.rebind = true;
                i += 1;
                continue;
            }
            other => {
                eprintln!("fleet: unknown argument {other}");
                std::process::exit(64)
            }
        }
        i += 2;
    }
    a
}

// ------------------------------------------------------------------ server

/// A WebSocket server on 127.0.0.1: one small thread per connection (tungstenite),
/// answering pings and closes. `stop` drops every connection and the listener.
struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    fn start(port: u16) -> Server {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline && e.kind() == ErrorKind::AddrInUse => {
                    thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("bind 127.0.0.1:{port}: {e}"),
            }
        };
        let port = listener.local_addr().expect("local addr").port();
        raise_backlog(&listener);
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (stop2, conns2) = (Arc::clone(&stop), Arc::clone(&conns));
        let accept = thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                if let Ok(clone) = stream.try_clone() {
                    conns2.lock().expect("conns lock").push(clone);
                }
                let spawned = thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || serve(stream));
                if spawned.is_err() {
                    eprintln!("fleet: server could not spawn a connection thread");
                }
            }
        });
        Server {
            port,
            stop,
            conns,
            accept: Some(accept),
        }
    }

    /// Drops every connection; the listener keeps accepting (a restart behind
    /// systemd socket activation or a load balancer).
    fn drop_connections(&self) {
        let conns: Vec<TcpStream> = self.conns.lock().expect("conns lock").drain(..).collect();
        for c in conns {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wake accept()
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for c in self.conns.lock().expect("conns lock").drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// std listens with a backlog of 128; a real server (nginx 511, somaxconn 4096) takes
/// more, and with 128 a burst of SYNs overflows the queue and those clients retry only
/// after the kernel's 1 s SYN timeout, which would be the harness's artefact.
fn raise_backlog(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: listen(2) on a valid listening socket fd we own; only changes its backlog.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    if rc != 0 {
        eprintln!("fleet: could not raise the listen backlog");
    }
}

/// The kernel's count of SYNs dropped on full listen queues (all sockets).
fn listen_overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(keys), Some(vals)) = (lines.next(), lines.next()) else {
        return 0;
    };
    keys.split_whitespace()
        .zip(vals.split_whitespace())
        .find(|(k, _)| *k == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn serve(stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let Ok(mut ws) = tungstenite::accept(stream) else {
        return;
    };
    loop {
        match ws.read() {
            Ok(_) => {
                // Pongs and Close replies are queued by tungstenite; send them now.
                if ws.flush().is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

// ------------------------------------------------------------------ clients

/// Records when its client reached `connected`.
struct Recorder {
    connected: Mutex<Vec<Instant>>,
    left: Mutex<Vec<Instant>>,
}

impl Observer for Recorder {
    fn message(&self, _text: &str) {}
    fn state(&self, status: &Status) {
        if status.state == State::Connected {
            self.connected
                .lock()
                .expect("recorder lock")
                .push(Instant::now());
        } else if status.state == State::Backoff {
            self.left
                .lock()
                .expect("recorder lock")
                .push(Instant::now());
        }
    }
}

/// Jitter disabled: always the top of the range, so every delay is the cap itself.
struct Highest;

impl Random for Highest {
    fn below(&mut self, max: Duration) -> Duration {
        max
    }
}

struct Run {
    label: String,
    offsets_ms: Vec<f64>,
    missing: usize,
    buckets: Vec<usize>,
    largest: usize,
    uniform_share: f64,
    ratio: f64,
    peak_threads: u64,
    peak_rss_kib: u64,
}

/// For each client, milliseconds from `t0` to the first event after it in the list
/// `events` picks; sorted, clients without one left out.
fn first_after(
    recorders: &[Arc<Recorder>],
    t0: Instant,
    events: impl Fn(&Recorder) -> &Mutex<Vec<Instant>>,
) -> Vec<f64> {
    let mut offsets: Vec<f64> = recorders
        .iter()
        .filter_map(|r| {
            let v = events(r).lock().expect("recorder lock");
            v.iter()
                .find(|t| **t > t0)
                .map(|t| (*t - t0).as_secs_f64() * 1000.0)
        })
        .collect();
    offsets.sort_by(f64::total_cmp);
    offsets
}

fn proc_status(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn run(args: &Args, jitter: bool) -> Run {
    let delay = if jitter {
        args.backoff_initial
    } else {
        args.fixed.unwrap_or(args.backoff_initial)
    };
    let label = if jitter {
        format!("full jitter, backoff-initial {} ms", delay.as_millis())
    } else {
        format!("jitter disabled: fixed {} ms delay", delay.as_millis())
    };
    eprintln!("fleet: {label}: starting {} clients", args.clients);
    let mut server = Server::start(0);
    let port = server.port;
    let target = parse_target(&format!("ws://127.0.0.1:{port}/fleet"), "url").expect("valid URL");
    let mut peak_threads = 0;

    let mut recorders = Vec::new();
    let mut handles: Vec<Handle> = Vec::new();
    let (done_tx, done_rx) = mpsc::channel::<Ending>();
    let mut threads = Vec::new();
    for _ in 0..args.clients {
        let mut config = Config::new(target.clone());
        config.ping_interval = args.ping;
        config.pong_timeout = Duration::from_secs(3);
        config.backoff_initial = delay;
        let rec = Arc::new(Recorder {
            connected: Mutex::new(Vec::new()),
            left: Mutex::new(Vec::new()),
        });
        let mut sup = Supervisor::new(config, Arc::clone(&rec) as Arc<dyn Observer>)
            .expect("no files to read");
        if !jitter {
            sup = sup.with_random(Box::new(Highest));
        }
        handles.push(sup.handle());
        recorders.push(rec);
        let tx = done_tx.clone();
        let t = thread::Builder::new()
            .name("fleet-client".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                let _ = tx.send(sup.run());
            })
            .expect("spawn client thread");
        threads.push(t);
    }

    // All connected and their first heartbeats answered (so backoff is at attempt 0).
    let all_connected = |after: Option<Instant>| {
        recorders
            .iter()
            .filter(|r| {
                let v = r.connected.lock().expect("recorder lock");
                v.iter().any(|t| after.is_none_or(|a| *t > a))
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while all_connected(None) < args.clients && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let up = all_connected(None);
    eprintln!(
        "fleet: {up}/{} connected; waiting for heartbeats",
        args.clients
    );
    thread::sleep(args.ping * 2 + Duration::from_millis(300));
    peak_threads = peak_threads.max(proc_status("Threads:"));

    // Restart.
    let overflows_before = listen_overflows();
    let t0 = Instant::now();
    if args.rebind {
        server.stop();
        thread::sleep(args.down);
        let t_down = t0.elapsed();
        server = Server::start(port);
        eprintln!(
            "fleet: server stopped in {t_down:?}, listening again after {:?}",
            t0.elapsed()
        );
    } else {
        server.drop_connections();
        thread::sleep(args.down);
        eprintln!(
            "fleet: connections dropped in {:?}; the listener stayed open",
            t0.elapsed()
        );
    }
    let bound = args.down + args.backoff_initial * 4 + Duration::from_secs(15);
    let deadline = t0 + bound;
    while all_connected(Some(t0)) < args.clients && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        peak_threads = peak_threads.max(proc_status("Threads:"));
    }

    let offsets_ms = first_after(&recorders, t0, |r| &r.connected);
    let missing = args.clients - offsets_ms.len();
    let noticed = first_after(&recorders, t0, |r| &r.left);
    if !noticed.is_empty() {
        eprintln!(
            "fleet: clients entered backoff {:.0} ms (first) / {:.0} ms (median) / {:.0} ms (last) after the restart",
            noticed[0],
            noticed[noticed.len() / 2],
            noticed[noticed.len() - 1]
        );
    }

    // Stop everyone, bounded.
    for h in &handles {
        h.stop();
    }
    drop(done_tx);
    let stop_deadline = Instant::now() + Duration::from_secs(15);
    let mut stopped = 0;
    while stopped < args.clients {
        let left = stop_deadline.saturating_duration_since(Instant::now());
        match done_rx.recv_timeout(left) {
            Ok(_) => stopped += 1,
            Err(_) => break,
        }
    }
    if stopped == args.clients {
        for t in threads {
            let _ = t.join();
        }
    } else {
        eprintln!(
            "fleet: only {stopped}/{} clients stopped within 15 s",
            args.clients
        );
    }
    server.stop();
    let overflows = listen_overflows() - overflows_before;
    if overflows > 0 {
        eprintln!("fleet: {overflows} SYNs dropped on full listen queues during the reconnect");
    }

    let last = offsets_ms.last().copied().unwrap_or(0.0);
    let window_ms = args.backoff_initial.as_secs_f64() * 1000.0;
    let n_buckets = ((last.max(window_ms) / BUCKET.as_secs_f64() / 1000.0).floor() as usize) + 1;
    let mut buckets = vec![0usize; n_buckets];
    for o in &offsets_ms {
        buckets[(*o / (BUCKET.as_secs_f64() * 1000.0)) as usize] += 1;
    }
    let largest = buckets.iter().copied().max().unwrap_or(0);
    let uniform_share = args.clients as f64 * BUCKET.as_secs_f64() * 1000.0
        / window_ms.max(BUCKET.as_secs_f64() * 1000.0);
    Run {
        label,
        missing,
        largest,
        uniform_share,
        ratio: largest as f64 / uniform_share,
        buckets,
        offsets_ms,
        peak_threads,
        peak_rss_kib: proc_status("VmHWM:"),
    }
}

fn print_run(r: &Run) {
    let bar_max = 50.0 / r.largest.max(1) as f64;
    println!("\n{}", r.label);
    println!("reconnect time after the restart (100 ms buckets):");
    for (i, n) in r.buckets.iter().enumerate() {
        let bar = "#".repeat((*n as f64 * bar_max).round() as usize);
        println!("  {:>5}-{:<5} ms {:>5} {bar}", i * 100, (i + 1) * 100, n);
    }
    let pct = |p: f64| -> f64 {
        if r.offsets_ms.is_empty() {
            return f64::NAN;
        }
        let k = ((p / 100.0 * r.offsets_ms.len() as f64).ceil() as usize)
            .clamp(1, r.offsets_ms.len())
            - 1;
        r.offsets_ms[k]
    };
    println!(
        "  reconnected {}/{} (missing {}), p50 {:.0} ms, p99 {:.0} ms, last {:.0} ms",
        r.offsets_ms.len(),
        r.offsets_ms.len() + r.missing,
        r.missing,
        pct(50.0),
        pct(99.0),
        pct(100.0)
    );
    println!(
        "  largest bucket {} = {:.2}x the uniform share ({:.1} per 100 ms over the jitter window)",
        r.largest, r.ratio, r.uniform_share
    );
    println!(
        "  peak threads {}, peak RSS {:.1} MiB",
        r.peak_threads,
        r.peak_rss_kib as f64 / 1024.0
    );
}

fn main() {
    let args = parse_args();
    let started = Instant::now();
    let runs = [run(&args, true), run(&args, false)];
    for r in &runs {
        print_run(r);
    }
    let goal = runs[0].ratio <= 2.0 && runs[0].missing == 0;
    println!(
        "\ngoal (full jitter: largest bucket <= 2x uniform share, all reconnected): {} — {:.2}x; \
         jitter disabled: {:.2}x; {:.1} s in all",
        if goal { "MET" } else { "NOT MET" },
        runs[0].ratio,
        runs[1].ratio,
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.json {
        let mut out = String::from("{\n");
        out.push_str(&format!("  \"clients\": {},\n  \"backoff_initial_ms\": {},\n  \"down_ms\": {},\n  \"runs\": [\n",
            args.clients, args.backoff_initial.as_millis(), args.down.as_millis()));
        for (i, r) in runs.iter().enumerate() {
            out.push_str(&format!(
                "    {{\"label\": \"{}\", \"reconnected\": {}, \"missing\": {}, \"largest_bucket\": {}, \
                 \"uniform_share\": {:.2}, \"ratio\": {:.3}, \"buckets_100ms\": {:?}, \"peak_threads\": {}, \
                 \"peak_rss_kib\": {}}}{}\n",
                r.label, r.offsets_ms.len(), r.missing, r.largest, r.uniform_share, r.ratio, r.buckets,
                r.peak_threads, r.peak_rss_kib, if i + 1 < runs.len() { "," } else { "" }
            ));
        }
        out.push_str(&format!("  ],\n  \"goal_met\": {goal}\n}}\n"));
        match std::fs::File::create(path).and_then(|mut f| f.write_all(out.as_bytes())) {
            Ok(()) => println!("JSON: {path}"),
            Err(e) => eprintln!("fleet: write {path}: {e}"),
        }
    }
    // Client threads that did not stop in time must not keep the process alive.
    std::process::exit(if goal { 0 } else { 1 });
}
