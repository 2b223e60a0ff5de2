//! The device's side of the connection: what goes to the server and what comes
//! back, bounded in bytes whatever either side does.
//!
//! - `stdin`: lines read from standard input;
//! - `outbox`: the queue every line waits in until the connection takes it
//!   (backpressure while connected, drop-oldest while not);
//! - `delivery` and `stdout`: received messages on their way to standard output;
//! - `socket`: the local Unix socket through which the device's programs share
//!   the connection (`--socket`);
//! - `signals`: SIGTERM, SIGINT and SIGHUP, turned into requests.

pub mod delivery;
pub mod outbox;
pub mod signals;
pub mod socket;
pub mod stdin;
pub mod stdout;
