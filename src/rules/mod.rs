//! The decisions, as pure code: no I/O, no clock (every rule takes `now`), no
//! thread. Each is unit-tested in virtual time; the threads only carry out what
//! these decide.
//!
//! - `machine`: the supervisor's state machine, which owns every deadline of
//!   the reconnect loop in one timer table;
//! - `backoff`: reconnect delays (full jitter, 401/403, `Retry-After`) and the
//!   random source;
//! - `adaptive`: the learned heartbeat interval (`--ping-interval auto`);
//! - `liveness`: whether a connection is alive (heartbeat answers, one-way
//!   failures, blocked writes);
//! - `heartbeat`: when the next heartbeat is due;
//! - `unacked`: which sent lines the peer's TCP has not acknowledged.

pub mod adaptive;
pub mod backoff;
pub mod heartbeat;
pub mod liveness;
pub mod machine;
pub mod unacked;
