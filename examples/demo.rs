//! What wsbeat does, end to end, in under ten seconds on 127.0.0.1 only:
//!
//! ```text
//! cargo run --release --example demo
//! ```
//!
//! ```text
//!   wsbeat client ───> TCP proxy ───────> WebSocket echo server
//!   (Supervisor)       (can go silent)     (tungstenite)
//! ```
//!
//! 1. An in-process WebSocket echo server starts, with a small TCP proxy in front.
//! 2. The wsbeat library client connects through the proxy (heartbeat every 1 s,
//!    pong timeout 2 s) and prints its state changes, heartbeat round trips and
//!    the messages it receives.
//! 3. Two messages go out with `Handle::send` and come back echoed.
//! 4. Just after a heartbeat is answered (the worst moment), the proxy turns the
//!    live connection into a black hole: both sockets stay open but nothing is
//!    forwarded, no FIN, no RST. That is a half-open link, as when a NAT box or a
//!    mobile network silently drops its mapping: TCP reports nothing, and only the
//!    heartbeat can notice. wsbeat must notice within `ping_interval +
//!    pong_timeout`, then reconnect (new connections pass again). A message sent
//!    meanwhile waits in the client's queue and goes out after the reconnect.
//! 5. `Handle::stop` closes with 1001, every thread is joined, a summary is printed.
//!
//! The exit code is 0 only if the dead link was detected within its bound and the
//! client reconnected, so the demo doubles as a smoke test. Set `RUST_LOG=info`
//! (or `debug`) to see the library's own log lines on stderr as well.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tungstenite::Message;
use wsbeat::{Config, Ending, Handle, Observer, State, Status, Supervisor, parse_target};

const PING_INTERVAL: Duration = Duration::from_secs(1);
const PONG_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_INITIAL: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The contract's worst case from "peer goes silent" to "connection dropped".
const DETECTION_BOUND: Duration = PING_INTERVAL.saturating_add(PONG_TIMEOUT);
/// Allowance for thread scheduling on a busy machine before the demo calls it a failure.
const SLACK: Duration = Duration::from_millis(500);
/// The link goes silent at the first heartbeat answer after this (from the start).
const SILENCE_AT: Duration = Duration::from_secs(4);
/// Generous limit on every other wait (connect, echo, reconnect, stop).
const PATIENCE: Duration = Duration::from_secs(5);

const GREETINGS: [&str; 2] = ["hello from wsbeat", "second message"];
const WHILE_DOWN: &str = "sent while reconnecting";

fn main() -> ExitCode {
    if std::env::var_os("RUST_LOG").is_some() {
        wsbeat::logging::init();
    }
    let clock = Clock(Instant::now());
    let (server, proxy) = match start_network(&clock) {
        Ok(pair) => pair,
        Err(err) => {
            eprintln!("demo: could not listen on 127.0.0.1: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = run_client(&clock, &proxy);
    // Both listeners stop and every connection thread is joined, success or not.
    proxy.stop();
    server.stop();
    clock.say(
        "demo",
        "echo server and proxy stopped, all their threads joined",
    );
    match result {
        Ok(report) => {
            report.print();
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("demo FAILED: {err}");
            ExitCode::FAILURE
        }
    }
}

// ------------------------------------------------------------------ the story

/// What the run measured, for the summary.
struct Report {
    detection: Duration,
    reconnect: Duration,
    tally: Tally,
    ending: Ending,
}

impl Report {
    fn print(&self) {
        let t = &self.tally;
        println!();
        println!("summary");
        println!(
            "  connections        {} ({} reconnect)",
            t.connects,
            t.connects.saturating_sub(1)
        );
        if let (Some(min), Some(max)) = (t.rtts.iter().min(), t.rtts.iter().max()) {
            let avg = t.rtts.iter().sum::<Duration>() / t.rtts.len() as u32;
            println!(
                "  heartbeats         {} answered, rtt min/avg/max {}/{}/{} ms",
                t.rtts.len(),
                ms(*min),
                ms(avg),
                ms(*max)
            );
        }
        println!(
            "  messages echoed    {} of {}",
            t.echoes.len(),
            GREETINGS.len() + 1
        );
        println!(
            "  dead link noticed  {} s after it went silent (bound {} s)",
            secs(self.detection),
            secs(DETECTION_BOUND)
        );
        println!("  back online        {} s after that", secs(self.reconnect));
        println!("  client ended       {:?}", self.ending);
    }
}

/// Runs the client on its own thread through the whole story, then stops it.
fn run_client(clock: &Clock, proxy: &Proxy) -> Result<Report, String> {
    let url = format!("ws://{}/demo", proxy.addr());
    let mut config = Config::new(parse_target(&url, "url").map_err(|e| e.to_string())?);
    config.ping_interval = PING_INTERVAL;
    config.pong_timeout = PONG_TIMEOUT;
    config.backoff_initial = BACKOFF_INITIAL;
    config.backoff_max = BACKOFF_MAX;
    clock.say(
        "demo",
        &format!(
            "wsbeat: ping_interval {PING_INTERVAL:?}, pong_timeout {PONG_TIMEOUT:?}, \
             backoff {BACKOFF_INITIAL:?} .. {BACKOFF_MAX:?}"
        ),
    );

    let (tx, rx) = mpsc::channel();
    let narrator = Narrator {
        clock: *clock,
        seen: tx,
    };
    let supervisor = Supervisor::new(config, Arc::new(narrator)).map_err(|e| e.to_string())?;
    let handle = supervisor.handle();
    let (ended_tx, ended_rx) = mpsc::channel();
    let client = thread::Builder::new()
        .name("wsbeat-client".into())
        .spawn(move || {
            let _ = ended_tx.send(supervisor.run());
        })
        .map_err(|e| format!("spawn the client thread: {e}"))?;

    let mut watch = Watch {
        seen: rx,
        tally: Tally::default(),
    };
    let story = tell_story(clock, &handle, &mut watch, proxy);

    clock.say(
        "demo",
        "handle.stop(): close with 1001 and end Supervisor::run",
    );
    handle.stop();
    // Bounded, so a client that fails to stop makes the demo fail instead of hang.
    let ending = match ended_rx.recv_timeout(PATIENCE) {
        Ok(ending) => ending,
        Err(_) => return Err(format!("the client did not stop within {PATIENCE:?}")),
    };
    client
        .join()
        .map_err(|_| "the client thread panicked".to_string())?;
    watch.drain();
    let (detection, reconnect) = story?;
    if ending != Ending::Stopped {
        return Err(format!("the client ended with {ending:?}, not Stopped"));
    }
    Ok(Report {
        detection,
        reconnect,
        tally: watch.tally,
        ending,
    })
}

/// Steps 2-4: connect, echo, go silent, detect, reconnect. Returns the detection
/// time (from silence to backoff) and the reconnect time (from backoff to connected).
fn tell_story(
    clock: &Clock,
    handle: &Handle,
    watch: &mut Watch,
    proxy: &Proxy,
) -> Result<(Duration, Duration), String> {
    watch.wait_for("the first connection", PATIENCE, is_state(State::Connected))?;

    for text in GREETINGS {
        clock.say("demo", &format!("handle.send({text:?})"));
        handle.send(text.into());
        watch.wait_for(&format!("the echo of {text:?}"), PATIENCE, is_echo(text))?;
    }

    // Let a few heartbeats show the link is healthy, then break it just after one
    // is answered: the worst case, as the next heartbeat goes out a full
    // ping_interval later and only then does the pong_timeout start.
    watch.run_until(clock.0 + SILENCE_AT);
    watch.wait_for("a heartbeat on the healthy link", PATIENCE, |seen| {
        matches!(seen, Seen::Heartbeat(_))
    })?;

    let silenced_at = Instant::now();
    let silenced = proxy.blackhole_existing();
    clock.say(
        "proxy",
        &format!(
            "link goes silent: no FIN, no RST ({silenced} connection now swallows every byte; \
             new connections pass)"
        ),
    );

    let detected_at = watch.wait_for(
        "detection of the dead link",
        DETECTION_BOUND + PATIENCE,
        is_state(State::Backoff),
    )?;
    let detection = detected_at - silenced_at;
    // Compared at the millisecond precision printed. The measurement also holds the
    // teardown of the dead connection (a fraction of a millisecond), and timers wake
    // a few ms late on a loaded machine, which is not the client's doing.
    let over = ((detection.as_secs_f64() - DETECTION_BOUND.as_secs_f64()) * 1000.0).round();
    let verdict = if over <= 0.0 {
        "within".to_string()
    } else {
        format!("{over} ms past")
    };
    clock.say(
        "demo",
        &format!(
            "dead link detected {} s after it went silent, {verdict} the bound \
             ping_interval + pong_timeout = {} s",
            secs(detection),
            secs(DETECTION_BOUND)
        ),
    );
    if detection > DETECTION_BOUND + SLACK {
        return Err(format!(
            "detection took {} s, more than the bound {} s plus {} ms for scheduling",
            secs(detection),
            secs(DETECTION_BOUND),
            SLACK.as_millis()
        ));
    }

    // Queued by the supervisor while there is no connection, sent after the reconnect.
    clock.say("demo", &format!("handle.send({WHILE_DOWN:?})"));
    handle.send(WHILE_DOWN.into());

    let reconnected_at = watch.wait_for("the reconnect", PATIENCE, is_state(State::Connected))?;
    let reconnect = reconnected_at - detected_at;
    clock.say(
        "demo",
        &format!(
            "reconnected {} s after the detection, {} s after the link went silent",
            secs(reconnect),
            secs(reconnected_at - silenced_at)
        ),
    );
    // The echo may come before the state change is reported: the writer sends the
    // queued line as soon as the connection's threads run.
    if !watch.tally.echoes.iter().any(|echo| echo == WHILE_DOWN) {
        watch.wait_for(
            &format!("the echo of {WHILE_DOWN:?}"),
            PATIENCE,
            is_echo(WHILE_DOWN),
        )?;
    }
    watch.wait_for("a heartbeat on the new connection", PATIENCE, |seen| {
        matches!(seen, Seen::Heartbeat(_))
    })?;
    Ok((detection, reconnect))
}

// ------------------------------------------------------------------ observing the client

/// What the client reported, passed from its threads to the demo's main thread.
enum Seen {
    State(State),
    Heartbeat(Duration),
    Echo(String),
}

fn is_state(state: State) -> impl Fn(&Seen) -> bool {
    move |seen| matches!(seen, Seen::State(s) if *s == state)
}

fn is_echo(text: &str) -> impl Fn(&Seen) -> bool + '_ {
    move |seen| matches!(seen, Seen::Echo(t) if t == text)
}

/// The demo's Observer: prints each report with a timestamp and forwards it, so
/// the main thread can wait for the moment it needs.
struct Narrator {
    clock: Clock,
    seen: Sender<(Instant, Seen)>,
}

impl Narrator {
    fn tell(&self, seen: Seen) {
        let _ = self.seen.send((Instant::now(), seen));
    }
}

impl Observer for Narrator {
    fn message(&self, text: &str) {
        self.clock.say("client", &format!("received {text:?}"));
        self.tell(Seen::Echo(text.to_string()));
    }

    fn state(&self, status: &Status) {
        let line = match status.state {
            State::Connecting => format!("connecting to {}", status.url),
            State::Connected => format!("connected (reconnects: {})", status.reconnects),
            State::Backoff => format!(
                "backoff (reconnects so far: {}, last_error: {})",
                status.reconnects,
                status.last_error.as_deref().unwrap_or("none")
            ),
            State::Stopped => format!("stopped (reconnects: {})", status.reconnects),
        };
        self.clock.say("client", &line);
        self.tell(Seen::State(status.state));
    }

    fn heartbeat(&self, rtt: Duration) {
        self.clock
            .say("client", &format!("heartbeat answered, rtt {} ms", ms(rtt)));
        self.tell(Seen::Heartbeat(rtt));
    }
}

/// Counts of everything seen, whatever the main thread was waiting for at the time.
#[derive(Default)]
struct Tally {
    connects: u32,
    rtts: Vec<Duration>,
    echoes: Vec<String>,
}

/// The main thread's end of the Narrator's channel.
struct Watch {
    seen: Receiver<(Instant, Seen)>,
    tally: Tally,
}

impl Watch {
    /// The next report before `deadline`, counted in the tally.
    fn next(&mut self, deadline: Instant) -> Result<(Instant, Seen), RecvTimeoutError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, seen) = self.seen.recv_timeout(left)?;
        match &seen {
            Seen::State(State::Connected) => self.tally.connects += 1,
            Seen::State(_) => {}
            Seen::Heartbeat(rtt) => self.tally.rtts.push(*rtt),
            Seen::Echo(text) => self.tally.echoes.push(text.clone()),
        }
        Ok((at, seen))
    }

    /// Waits up to `within` for a report that `wanted` accepts; returns when it happened.
    fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        wanted: impl Fn(&Seen) -> bool,
    ) -> Result<Instant, String> {
        let deadline = Instant::now() + within;
        loop {
            match self.next(deadline) {
                Ok((at, seen)) if wanted(&seen) => return Ok(at),
                Ok(_) => {}
                Err(_) => return Err(format!("no sign of {what} within {within:?}")),
            }
        }
    }

    /// Lets time pass until `until`, counting what happens meanwhile.
    fn run_until(&mut self, until: Instant) {
        while self.next(until).is_ok() {}
    }

    /// Counts what is left once the client has stopped.
    fn drain(&mut self) {
        while self.next(Instant::now()).is_ok() {}
    }
}

// ------------------------------------------------------------------ the network

/// Starts the echo server and the proxy in front of it.
fn start_network(clock: &Clock) -> io::Result<(Service, Proxy)> {
    let clock = *clock;
    let server = Service::start(move |stream| {
        let socket = stream.try_clone()?;
        let thread = thread::Builder::new()
            .name("echo".into())
            .spawn(move || serve_echo(stream, clock))?;
        Ok(Tracked {
            sockets: vec![socket],
            threads: vec![thread],
        })
    })?;
    let proxy = Proxy::start(server.addr())?;
    clock.say(
        "demo",
        &format!(
            "echo server on {}, proxy on {} in front of it",
            server.addr(),
            proxy.addr()
        ),
    );
    Ok((server, proxy))
}

/// One echo connection: text and binary messages come back as they are. Pings
/// are answered by tungstenite inside `read`; `flush` sends the queued Pong (or
/// the reply to a Close) at once.
fn serve_echo(stream: TcpStream, clock: Clock) {
    let _ = stream.set_nodelay(true);
    let Ok(mut ws) = tungstenite::accept(stream) else {
        return;
    };
    clock.say("server", "WebSocket handshake done");
    loop {
        let sent = match ws.read() {
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => ws.send(message),
            Ok(Message::Close(frame)) => {
                let code = frame.map_or("none".to_string(), |f| {
                    format!("{} ({})", u16::from(f.code), f.reason)
                });
                clock.say("server", &format!("Close frame received, code {code}"));
                ws.flush()
            }
            Ok(_) => ws.flush(),
            // Closed by the client, or shut down by `Service::stop`.
            Err(_) => return,
        };
        if sent.is_err() {
            return;
        }
    }
}

/// A TCP proxy whose current connections can be turned into black holes.
struct Proxy {
    service: Service,
    /// One flag per connection not yet silenced; set, its bytes are dropped.
    live: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> io::Result<Proxy> {
        let live = Arc::new(Mutex::new(Vec::new()));
        let flags = Arc::clone(&live);
        let service = Service::start(move |client| {
            let server = TcpStream::connect(upstream)?;
            let silent = Arc::new(AtomicBool::new(false));
            let up = spawn_pump(&client, &server, &silent)?;
            let down = spawn_pump(&server, &client, &silent)?;
            lock(&flags).push(silent);
            Ok(Tracked {
                sockets: vec![client, server],
                threads: vec![up, down],
            })
        })?;
        Ok(Proxy { service, live })
    }

    fn addr(&self) -> SocketAddr {
        self.service.addr()
    }

    /// Silences the connections open now; later ones pass, so a reconnect works.
    /// Returns how many were silenced.
    fn blackhole_existing(&self) -> usize {
        let flags: Vec<_> = lock(&self.live).drain(..).collect();
        for flag in &flags {
            flag.store(true, Ordering::SeqCst);
        }
        flags.len()
    }

    fn stop(self) {
        self.service.stop();
    }
}

/// A thread copying `from` to `to` until either side ends.
fn spawn_pump(
    from: &TcpStream,
    to: &TcpStream,
    silent: &Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    let (mut from, mut to) = (from.try_clone()?, to.try_clone()?);
    let silent = Arc::clone(silent);
    let _ = from.set_nodelay(true);
    thread::Builder::new().name("pump".into()).spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Black hole: keep reading (so nothing backs up or errors) and forward nothing.
            if silent.load(Ordering::SeqCst) {
                continue;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        // One side is gone (the client gave up, or the proxy stops): end the pair,
        // which also wakes the pump running the other way.
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    })
}

/// What a connection leaves behind: sockets to shut down and threads to join.
struct Tracked {
    sockets: Vec<TcpStream>,
    threads: Vec<JoinHandle<()>>,
}

/// A listener on 127.0.0.1 with an accept thread that hands each connection to
/// `on_accept`, and a `stop` that ends it all and joins every thread.
struct Service {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    accept: JoinHandle<()>,
    tracked: Arc<Mutex<Vec<Tracked>>>,
}

impl Service {
    fn start(
        on_accept: impl Fn(TcpStream) -> io::Result<Tracked> + Send + 'static,
    ) -> io::Result<Service> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let tracked = Arc::new(Mutex::new(Vec::new()));
        let (stop, list) = (Arc::clone(&stopping), Arc::clone(&tracked));
        let accept = thread::Builder::new()
            .name("accept".into())
            .spawn(move || {
                // A blocking accept: `stop` wakes it with one last connection.
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    match on_accept(stream) {
                        Ok(conn) => lock(&list).push(conn),
                        Err(err) => eprintln!("demo: {addr}: connection not served: {err}"),
                    }
                }
            })?;
        Ok(Service {
            addr,
            stopping,
            accept,
            tracked,
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn stop(self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the blocked accept; it sees the flag and returns.
        let _ = TcpStream::connect(self.addr);
        let _ = self.accept.join();
        // Shutting a socket down wakes the thread blocked reading it.
        for conn in lock(&self.tracked).drain(..) {
            for socket in &conn.sockets {
                let _ = socket.shutdown(Shutdown::Both);
            }
            for thread in conn.threads {
                let _ = thread.join();
            }
        }
    }
}

// ------------------------------------------------------------------ small helpers

/// Seconds since the demo started, in front of every line.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn say(&self, who: &str, what: &str) {
        println!(
            "[{:>6.3} s] {who:<6} {what}",
            self.0.elapsed().as_secs_f64()
        );
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}
