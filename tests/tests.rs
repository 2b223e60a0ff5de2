//! End-to-end tests: the real `wsbeat` binary and library against in-process servers and a
//! fault-injecting proxy, and with the `interop` feature against third-party peers. One
//! binary (`[[test]] name = "integration"`); helpers in `util`.

mod util;

mod backpressure;
mod cellular;
mod cli;
mod data;
mod hardening;
mod heartbeat;
mod hostile;
// Needs third-party peers (scripts/install-peers.sh); ripgrep gates its modules the same way.
#[cfg(feature = "interop")]
mod interop;
mod link_watch;
mod local_socket;
mod lossless;
mod manpage;
mod nat;
mod network;
mod reconnect;
mod stalls;
mod systemd;
mod tls;
