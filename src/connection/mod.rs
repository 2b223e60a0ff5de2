//! One connection: the socket its two threads share ([`socket`]), the reader
//! ([`reader`]) and the writer thread that is also the only writer
//! ([`writer`]). The rules they apply are pure and live in [`crate::rules`]; the
//! counters they update are [`crate::report::traffic`]'s.

pub mod reader;
pub mod socket;
pub mod writer;
