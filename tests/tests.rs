//! End-to-end tests: the real `wsbeat` binary and library against in-process servers and a fault-injecting proxy.

mod util;

mod backpressure;
mod cellular;
mod cli;
mod data;
mod hardening;
mod heartbeat;
mod hostile;
mod link_watch;
mod nat;
mod network;
mod reconnect;
mod systemd;
mod tls;
