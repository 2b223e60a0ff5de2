//! heartbeat tests
