//! One connection: the socket its two threads share ([`socket`]), the reader
//! ([`reader`]), the heartbeat thread that is also the only writer ([`writer`]),
//! and the pure liveness rules they apply ([`liveness`]).

pub mod heartbeat;
pub mod liveness;
pub mod reader;
pub mod socket;
pub mod unacked;
pub mod writer;
