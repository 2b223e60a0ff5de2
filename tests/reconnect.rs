//! reconnect tests
