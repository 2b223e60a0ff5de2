//! wsbeat keeps one WebSocket connection alive.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod backoff;
pub mod config;
pub mod error;
pub mod headers;
pub mod heartbeat;
pub mod logging;
pub mod reader;
pub mod sd_notify;
#[allow(unsafe_code)]
pub mod signals;
pub mod status_file;
#[allow(unsafe_code)]
pub mod stdin;
pub mod supervisor;
pub mod tls;
pub mod transport;
