//! One connection: the socket its two threads share ([`socket`]), the reader
//! ([`reader`]), the heartbeat thread that is also the only writer ([`writer`]),
//! and the byte and message counters ([`traffic`]). The rules they apply are
//! pure and live in [`crate::rules`].

pub mod reader;
pub mod socket;
pub mod traffic;
pub mod writer;
