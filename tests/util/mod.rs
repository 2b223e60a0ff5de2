//! Test helpers shared by every integration test: temp dirs, a runner for the real `wsbeat`
//! binary, time bounds, plus the in-process WebSocket [`server`], the fault-injecting TCP
//! [`proxy`], the test PKI in [`tls`] and a real `openssl s_server` in [`s_server`].
//!
//! Everything here waits with a bound: a helper that would block returns `None`/`false` or
//! panics with a description after its timeout, never hangs.
//!
//! API summary (kept stable; `tests/systemd.rs` uses it too):
//! - [`TempDir::new`], [`TempDir::path`], [`TempDir::write`]: a directory removed on drop.
//! - [`Wsbeat::new`] (builder: [`Wsbeat::arg`], [`Wsbeat::args`], [`Wsbeat::env`],
//!   [`Wsbeat::stdin_null`], [`Wsbeat::stderr_to`] a file) then [`Wsbeat::run`] (wait for exit,
//!   bounded) or [`Wsbeat::spawn`]
//!   → [`Running`] (stdout lines over a channel, stdin writer, `/proc` counts, signals, kill on
//!   drop; command, stdout and stderr are printed if the test panics).
//! - [`scaled`] / [`WAIT`]: time bounds stretched by `WSBEAT_TEST_TIME_SCALE` (emulation).
//! - [`free_port`]: a port nobody listens on (connection refused).
//! - [`spawn_checked_through`]: spawn and make sure the child reached exec; [`watchdog`]: a
//!   per-test budget for the whole binary.
//!
//! Nothing here forks except to start `wsbeat` itself: under qemu-user a fork of this
//! multi-threaded binary can deadlock before exec, so signals go out with `kill(2)`, not by
//! running `kill`.

pub mod netns;
pub mod proxy;
pub mod s_server;
pub mod server;
pub mod tinyproxy;
pub mod tls;
pub mod watchdog;

mod files;
mod process;
mod timing;

pub use files::*;
pub use process::*;
pub use timing::*;

#[cfg(test)]
mod selftest;

/// A TCP port on 127.0.0.1 where nothing listens (bound, then released), so connects are refused.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A `ws://` URL on a [`free_port`]: every connect to it is refused.
pub fn refused_url() -> String {
    format!("ws://127.0.0.1:{}/", free_port())
}
