//! Reaching the server: resolving, TCP with Happy Eyeballs (`dial`), the HTTP
//! proxy's tunnel (`tunnel`), TLS (`tls`, `san`; `no_tls` in the ws://-only
//! build), the WebSocket upgrade under one deadline (`transport`), and the
//! kernel's address and route changes (`linkwatch`).

pub mod eyeballs;
pub mod linkwatch;
pub mod netpath;
#[cfg(feature = "tls")]
pub mod san;
pub mod stream;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(not(feature = "tls"))]
#[path = "no_tls.rs"]
pub mod tls;
pub mod transport;
pub mod tunnel;
