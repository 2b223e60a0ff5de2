//! Running the real `wsbeat` binary: a builder, the running child (stdout lines over a
//! channel, stdin, `/proc` counts, signals, killed on drop, its output printed when a
//! test fails), and the clean environment it runs in.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::watchdog;

use super::timing::{WAIT, ms, poll_until, scaled};

/// The runner prefix from `WSBEAT_TEST_RUNNER` (e.g. `qemu-aarch64 -L /usr/aarch64-linux-gnu`),
/// split on whitespace; empty when unset. Cross's `CROSS_RUNNER`-style hook.
pub fn runner_prefix() -> Vec<String> {
    std::env::var("WSBEAT_TEST_RUNNER")
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// Environment variables removed from the child so the test controls them: every `WSBEAT_*`
/// (the suite's own `WSBEAT_TEST_*` included), the systemd ones, `RUST_LOG` and the proxy
/// variables (a machine's `http_proxy` must not reroute the tests' loopback connections).
fn scrubbed(name: &str) -> bool {
    name.starts_with("WSBEAT_")
        || matches!(
            name,
            "NOTIFY_SOCKET" | "WATCHDOG_USEC" | "WATCHDOG_PID" | "JOURNAL_STREAM" | "RUST_LOG"
        )
        || matches!(
            name.to_ascii_lowercase().as_str(),
            "http_proxy" | "https_proxy" | "all_proxy" | "no_proxy"
        )
}

/// The real `wsbeat` binary behind the [`runner_prefix`] if any, with the scrubbed
/// environment described above and no arguments yet.
pub fn clean_command() -> Command {
    clean_command_within(&[])
}

/// [`clean_command`] run by `wrapper` (e.g. `ip netns exec <ns>`), the runner prefix after it.
pub fn clean_command_within(wrapper: &[OsString]) -> Command {
    watchdog::watch();
    let mut prefix: Vec<OsString> = wrapper.to_vec();
    prefix.extend(runner_prefix().into_iter().map(OsString::from));
    let bin = env!("CARGO_BIN_EXE_wsbeat");
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    for (k, _) in std::env::vars_os() {
        if scrubbed(&k.to_string_lossy()) {
            cmd.env_remove(&k);
        }
    }
    cmd
}

/// Spawns `cmd` and waits, bounded, until the child has reached exec: `/proc/<pid>/cmdline`
/// is the command's own argv (or empty: it has already exited). Under qemu-user a fork of this
/// multi-threaded binary can deadlock before exec; the test would then wait for a `wsbeat`
/// that never starts, and fail much later as if wsbeat were at fault. Instead the stuck child
/// is killed and the test fails at once, saying so. Natively `spawn` returns after the exec
/// (posix_spawn's vfork), so this costs one read of `/proc`. When the command's first
/// `wrapper` words exec the rest (`ip netns exec <ns> …`), the child has reached exec once it
/// shows the rest's argv.
pub fn spawn_checked_through(cmd: &mut Command, wrapper: usize) -> Child {
    let mut expected = Vec::new();
    for part in std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .skip(wrapper)
    {
        expected.extend_from_slice(part.as_encoded_bytes());
        expected.push(0);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    if !reached_exec(child.id(), &expected, WAIT()) {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the child for {:?} did not reach exec within {:?}: a fork of this multi-threaded \
             test binary is stuck before exec (a known qemu-user hazard); killed it",
            cmd.get_program(),
            WAIT()
        );
    }
    child
}

/// Whether process `pid` shows `argv` (each part NUL-terminated, as in `/proc/<pid>/cmdline`)
/// within `bound`, or has exited (an empty cmdline, or none).
pub fn reached_exec(pid: u32, argv: &[u8], bound: Duration) -> bool {
    let cmdline = format!("/proc/{pid}/cmdline");
    poll_until(bound, || {
        let now = std::fs::read(&cmdline).unwrap_or_default();
        (now.is_empty() || now == argv).then_some(())
    })
    .is_some()
}

/// Builder for one run of the real `wsbeat` binary (`env!("CARGO_BIN_EXE_wsbeat")`, behind
/// the [`runner_prefix`] if any). The child starts with a scrubbed environment (see above)
/// plus what [`Wsbeat::env`] adds; `RUST_LOG` defaults to `debug` so failures show detail.
#[derive(Debug, Clone)]
pub struct Wsbeat {
    wrapper: Vec<OsString>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    stdin_null: bool,
    stdout_null: bool,
    stderr_file: Option<PathBuf>,
}

impl Default for Wsbeat {
    fn default() -> Self {
        Wsbeat::new()
    }
}

impl Wsbeat {
    /// No arguments yet.
    pub fn new() -> Wsbeat {
        watchdog::watch();
        Wsbeat {
            wrapper: Vec::new(),
            args: Vec::new(),
            envs: vec![("RUST_LOG".into(), "debug".into())],
            stdin_null: false,
            stdout_null: false,
            stderr_file: None,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, a: impl Into<OsString>) -> Wsbeat {
        self.args.push(a.into());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Wsbeat
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Appends the short timing flags most end-to-end tests want:
    /// `--ping-interval 200ms --pong-timeout 500ms --backoff-initial 50ms --backoff-max 200ms`.
    /// Tests that need another value of one of these give only the others (a flag is never
    /// given twice, since SPEC does not say which occurrence wins).
    pub fn fast(self) -> Wsbeat {
        self.fast_with(&[])
    }

    /// [`Wsbeat::fast`] with some of its values replaced, e.g.
    /// `fast_with(&[("--pong-timeout", "2s")])`; other flags in `overrides` are appended.
    pub fn fast_with(self, overrides: &[(&str, &str)]) -> Wsbeat {
        let mut flags: Vec<(&str, &str)> = vec![
            ("--ping-interval", "200ms"),
            ("--pong-timeout", "500ms"),
            ("--backoff-initial", "50ms"),
            ("--backoff-max", "200ms"),
        ];
        for (k, v) in overrides {
            match flags.iter_mut().find(|(f, _)| f == k) {
                Some(slot) => slot.1 = v,
                None => flags.push((k, v)),
            }
        }
        flags.into_iter().fold(self, |w, (k, v)| w.arg(k).arg(v))
    }

    /// `--connect-timeout` of `d` scaled by [`time_scale`] (a bound that must not fire on a
    /// healthy but slow, emulated machine).
    pub fn connect_timeout_scaled(self, d: Duration) -> Wsbeat {
        self.arg("--connect-timeout")
            .arg(format!("{}ms", scaled(d).as_millis()))
    }

    /// Sets an environment variable for the child (after scrubbing).
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Wsbeat {
        self.envs.push((k.into(), v.into()));
        self
    }

    /// Gives the child `/dev/null` as stdin (as systemd does) instead of a pipe.
    pub fn stdin_null(mut self) -> Wsbeat {
        self.stdin_null = true;
        self
    }

    /// Sends the child's stdout to `/dev/null` (for floods; no lines are collected).
    pub fn stdout_null(mut self) -> Wsbeat {
        self.stdout_null = true;
        self
    }

    /// Sends the child's stderr to the file at `path` (created if missing, appended to)
    /// instead of a pipe, e.g. so that `JOURNAL_STREAM` can name its device and inode;
    /// [`Running::output`] reads it back. The child's exit is then seen by the end of its
    /// stdout, which must stay a pipe (not [`Wsbeat::stdout_null`]).
    pub fn stderr_to(mut self, path: impl Into<PathBuf>) -> Wsbeat {
        self.stderr_file = Some(path.into());
        self
    }

    /// Runs the binary inside network namespace `ns` (`ip netns exec <ns>`, so the files of
    /// `/etc/netns/<ns>/` such as `hosts` apply).
    pub fn in_netns(mut self, ns: &str) -> Wsbeat {
        self.wrapper = ["ip", "netns", "exec", ns].map(OsString::from).to_vec();
        self
    }

    fn command(&self) -> Command {
        let mut cmd = clean_command_within(&self.wrapper);
        cmd.args(&self.args);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// A shell-like rendering of the command, for failure messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.envs {
            s.push_str(&format!("{}={:?} ", k.to_string_lossy(), v));
        }
        let mut parts: Vec<String> = self
            .wrapper
            .iter()
            .map(|w| w.to_string_lossy().into_owned())
            .collect();
        parts.extend(runner_prefix());
        parts.push("wsbeat".into());
        s.push_str(&parts.join(" "));
        for a in &self.args {
            s.push_str(&format!(" {:?}", a));
        }
        s
    }

    /// Starts the child with piped stdin/stdout/stderr (unless set otherwise above).
    pub fn spawn(&self) -> Running {
        assert!(
            !(self.stdout_null && self.stderr_file.is_some()),
            "stdout_null with stderr_to leaves no pipe whose end shows the child's exit"
        );
        let mut cmd = self.command();
        cmd.stdin(if self.stdin_null {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(if self.stdout_null {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stderr(match &self.stderr_file {
            None => Stdio::piped(),
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap_or_else(|e| panic!("open {} for stderr: {e}", path.display()))
                .into(),
        });
        let mut child = spawn_checked_through(&mut cmd, self.wrapper.len());
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();

        // Each pipe from the child ends when it exits (nothing else holds them): that is the
        // event `wait_exit` blocks on. Each reader holds a sender; the last one dropped says it.
        let (pipe_open, pipes_closed) = mpsc::channel::<()>();
        let (line_tx, lines) = mpsc::channel();
        let stdout_log = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&stdout_log);
        let open = pipe_open.clone();
        let stdout_thread = thread::spawn(move || {
            let _open = open;
            let Some(stdout) = stdout else { return };
            let mut r = BufReader::new(stdout);
            loop {
                let mut buf = Vec::new();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let complete = buf.last() == Some(&b'\n');
                        if complete {
                            buf.pop();
                        }
                        let line = String::from_utf8_lossy(&buf).into_owned();
                        log.lock().expect("stdout log").push(line.clone());
                        let _ = line_tx.send(line);
                        if !complete {
                            break;
                        }
                    }
                }
            }
        });
        let stderr_log = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&stderr_log);
        let stderr_thread = thread::spawn(move || {
            let _open = pipe_open;
            let Some(mut r) = stderr else { return };
            let mut buf = [0u8; 4096];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => log.lock().expect("stderr log").extend_from_slice(&buf[..n]),
                }
            }
        });
        Running {
            desc: self.describe(),
            child,
            started: Instant::now(),
            stdin,
            lines,
            pending: VecDeque::new(),
            stdout_log,
            stderr_log,
            stderr_file: self.stderr_file.clone(),
            pipes_closed,
            readers: vec![stdout_thread, stderr_thread],
            status: None,
        }
    }

    /// Runs the child with stdin closed at once (EOF) and waits for it to exit within `timeout`
    /// (panics with the output if it does not; the child is killed).
    pub fn run(&self, timeout: Duration) -> Output {
        let mut r = self.spawn();
        r.close_stdin();
        let status = r.wait_exit(timeout);
        let out = r.output();
        match status {
            Some(_) => out,
            None => panic!(
                "{} did not exit within {timeout:?}\n--- stdout\n{}\n--- stderr\n{}",
                out.command, out.stdout, out.stderr
            ),
        }
    }
}

/// What a finished (or running) child printed.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command, for messages.
    pub command: String,
    /// Exit code; `None` if still running or killed by a signal.
    pub code: Option<i32>,
    /// Everything written to stdout so far.
    pub stdout: String,
    /// Everything written to stderr so far.
    pub stderr: String,
}

impl Output {
    /// Non-empty stderr lines.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    /// A dump for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "command: {}\nexit code: {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}

/// A running `wsbeat` child. Killed on drop; if the test is panicking, the command, stdout and
/// stderr are printed first.
pub struct Running {
    desc: String,
    child: Child,
    started: Instant,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    pending: VecDeque<String>,
    stdout_log: Arc<Mutex<Vec<String>>>,
    stderr_log: Arc<Mutex<Vec<u8>>>,
    /// Where stderr goes instead of `stderr_log`, if [`Wsbeat::stderr_to`] said so.
    stderr_file: Option<PathBuf>,
    /// Disconnects when the child's pipes (stdout, stderr) reach EOF, i.e. when it has exited.
    pipes_closed: Receiver<()>,
    readers: Vec<thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Running {
    /// Process id of the child (the emulator's when a runner prefix is used).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes `line` plus `\n` to the child's stdin and flushes. Panics if stdin is closed.
    pub fn write_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| stdin.flush())
            .expect("write to child's stdin");
    }

    /// Closes the child's stdin (EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Takes the stdin pipe, e.g. to write from another thread.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    /// The next stdout line (without `\n`) within `timeout`, or `None`.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        if let Some(l) = self.pending.pop_front() {
            return Some(l);
        }
        self.lines.recv_timeout(timeout).ok()
    }

    /// Skips stdout lines until one satisfies `pred`; `None` after `timeout`.
    pub fn wait_line(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = self.next_line(left)?;
            if pred(&l) {
                return Some(l);
            }
        }
    }

    /// Like [`Running::wait_line`] but panics with `what` and the output on timeout.
    pub fn expect_line(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl FnMut(&str) -> bool,
    ) -> String {
        match self.wait_line(timeout, pred) {
            Some(l) => l,
            None => panic!(
                "no stdout line {what} within {timeout:?}\n{}",
                self.output().dump()
            ),
        }
    }

    /// Stdout lines that arrive within `window` (no waiting beyond it).
    pub fn lines_within(&mut self, window: Duration) -> Vec<String> {
        let deadline = Instant::now() + window;
        let mut v = Vec::new();
        while let Some(l) = self.next_line(deadline.saturating_duration_since(Instant::now())) {
            v.push(l);
        }
        v
    }

    /// Waits up to `timeout` for the child to exit; its exit code (`Some(-signal)` if killed
    /// by a signal), or `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        if let Some(s) = self.try_status() {
            return Some(code_of(s));
        }
        match self.pipes_closed.recv_timeout(timeout) {
            Err(RecvTimeoutError::Timeout) => None,
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                let s = self.child.wait().expect("wait for the child");
                self.status = Some(s);
                Some(code_of(s))
            }
        }
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Sends `sig` (e.g. `libc::SIGTERM`) to the child, with `kill(2)`: no fork (see the
    /// module docs).
    pub fn signal(&self, sig: i32) {
        send_signal(self.pid(), sig);
    }

    /// Number of open file descriptors of the child (`/proc/<pid>/fd`).
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Number of threads of the child (`/proc/<pid>/task`).
    pub fn thread_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Everything printed so far (stdout lines joined with `\n`) and the exit code if exited.
    pub fn output(&mut self) -> Output {
        let status = self.try_status();
        if status.is_some() {
            // The pipes close when the process exits; give the reader threads a moment.
            let deadline = Instant::now() + ms(500);
            while self.readers.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
                thread::sleep(ms(5));
            }
        }
        Output {
            command: self.desc.clone(),
            code: status.map(code_of),
            stdout: self.stdout_log.lock().expect("stdout log").join("\n"),
            stderr: match &self.stderr_file {
                Some(path) => {
                    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
                }
                None => String::from_utf8_lossy(&self.stderr_log.lock().expect("stderr log"))
                    .into_owned(),
            },
        }
    }

    /// Kills the child (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            if let Ok(s) = self.child.wait() {
                self.status = Some(s);
            }
        }
    }
}

/// Sends `sig` to process `pid` with `kill(2)`; panics if that fails (the process is not ours
/// or is gone, reaped already).
pub fn send_signal(pid: u32, sig: i32) {
    let target = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; `target` is a child of this process
    // that has not been reaped yet (a `Child` we hold), so the pid cannot have been reused.
    let r = unsafe { libc::kill(target, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

fn code_of(s: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().or_else(|| s.signal().map(|n| -n)).unwrap_or(-1)
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stdin = None;
        self.kill();
        if thread::panicking() {
            let out = self.output();
            eprintln!(
                "=== wsbeat child (ran {:?}) ===\n{}\n=== end of child ===",
                self.started.elapsed(),
                out.dump()
            );
        }
    }
}

/// Writes 16 KiB lines to a child's stdin on its own thread until stopped (or the pipe
/// breaks): to fill a socket whose peer has stopped reading. Stops and joins on drop.
pub struct StdinFlood {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    writer: Option<thread::JoinHandle<()>>,
}

impl StdinFlood {
    pub fn start(mut stdin: ChildStdin) -> StdinFlood {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let stop_writer = Arc::clone(&stop);
        let count = Arc::clone(&written);
        let writer = thread::spawn(move || {
            let line = format!("{}\n", "x".repeat(16 * 1024));
            while !stop_writer.load(Ordering::Relaxed) {
                if stdin.write_all(line.as_bytes()).is_err() {
                    break;
                }
                count.fetch_add(line.len() as u64, Ordering::Relaxed);
            }
        });
        StdinFlood {
            stop,
            written,
            writer: Some(writer),
        }
    }

    /// Waits (at most `timeout`) until the child has stopped taking input: nothing more
    /// was written for `quiet` — the pipe is full because the child stopped reading it.
    pub fn wait_stalled(&self, quiet: Duration, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut last = (self.written.load(Ordering::Relaxed), Instant::now());
        while Instant::now() < deadline {
            thread::sleep(ms(50));
            let now = self.written.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            } else if now > 0 && last.1.elapsed() >= quiet {
                return true;
            }
        }
        false
    }

    /// Stops writing; a write blocked on a full pipe ends when the child exits.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for StdinFlood {
    fn drop(&mut self) {
        self.stop();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}
