//! Connect attempts: each on a thread of its own under one deadline, cut short
//! by the supervisor when the machine says so.

use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use tungstenite::protocol::WebSocketConfig;

use super::{Supervisor, THREAD_STACK};
use crate::config::Config;
use crate::config::headers::read_header_file;
use crate::connection::writer::WRITE_BATCH_BYTES;
use crate::error::{ConnectError, Stage};
use crate::events::{ConnId, Event};
use crate::net::transport::{self, Abort, AttemptPlan};
use crate::rules::machine::Input;

/// A connect thread and the handle that cuts its handshakes short.
pub(super) struct Attempt {
    pub(super) thread: JoinHandle<()>,
    pub(super) abort: Arc<Abort>,
}

impl Supervisor {
    /// Starts attempt `conn`; reports its deadline, or why it could not start.
    pub(super) fn start_attempt(&mut self, conn: ConnId) -> Input {
        if let Some(path) = &self.config.header_file {
            // Re-read on every attempt so a rotated token is used without a restart.
            match read_header_file(path) {
                Ok(headers) => self.file_headers = headers,
                Err(err) => log::error!("{err}; using the headers read before"),
            }
        }
        if self.config.target.tls && self.connector.is_none() {
            match self.tls_files.connector() {
                Ok(connector) => self.connector = Some(connector),
                Err(err) => {
                    let error = ConnectError::Tls(err);
                    return Input::ConnectFailed { conn, error };
                }
            }
        }
        if self.tls_files.insecure() && self.config.target.tls {
            log::warn!("--insecure: the server's certificate is not verified");
        }
        let mut headers = self.config.headers.clone();
        headers.extend(self.file_headers.iter().cloned());
        let target = self.config.target.clone();
        let subprotocols = self.config.subprotocols.clone();
        let connector = self.connector.clone();
        let proxy = self.config.proxy.clone();
        let ws_config = ws_config(&self.config);
        let write_timeout = self.write_bound();
        // From now, not from when the machine decided: building the first TLS connector
        // (system roots, OpenSSL start-up) can take a second on a small board and is not
        // the network's time.
        let deadline = Instant::now() + self.config.connect_timeout;
        let events = self.events.clone();
        let traffic = Arc::clone(&self.traffic);
        let abort = Arc::new(Abort::default());
        let abort_handle = Arc::clone(&abort);
        let spawned = thread::Builder::new()
            .name("wsbeat-connect".into())
            .stack_size(THREAD_STACK)
            .spawn(move || {
                let dial = AttemptPlan {
                    target: &target,
                    headers: &headers,
                    subprotocols: &subprotocols,
                    tls: connector.as_ref(),
                    ws_config,
                    write_timeout,
                    traffic: &traffic,
                    proxy: proxy.as_ref(),
                };
                let result = transport::connect(&dial, deadline, &abort_handle).map(Box::new);
                let _ = events.send(Event::AttemptEnded { conn, result });
            });
        match spawned {
            Ok(thread) => {
                log::debug!(
                    "connecting to {} (attempt {conn})",
                    self.config.target.shown()
                );
                self.attempts.insert(conn, Attempt { thread, abort });
                Input::AttemptStarted { conn, deadline }
            }
            Err(err) => Input::ConnectFailed {
                conn,
                error: ConnectError::Tcp(err),
            },
        }
    }

    /// Cuts attempt `conn` short; its thread is joined when its result arrives.
    /// Returns the stage it had reached, for a timeout's message.
    pub(super) fn abandon(&mut self, conn: ConnId) -> Stage {
        match self.attempts.get(&conn) {
            Some(attempt) => {
                attempt.abort.abort();
                attempt.abort.stage()
            }
            None => Stage::Resolve,
        }
    }
}

pub(super) fn ws_config(config: &Config) -> WebSocketConfig {
    WebSocketConfig::default()
        // Small buffers: a device holds one connection, and messages are typically small.
        .read_buffer_size(4096)
        // Lines are written in batches with one flush; Pings, Pongs and Closes flush at once.
        .write_buffer_size(WRITE_BATCH_BYTES)
        .max_write_buffer_size(
            config
                .max_message_size
                .saturating_add(WRITE_BATCH_BYTES)
                .saturating_add(64 * 1024),
        )
        .max_message_size(Some(config.max_message_size))
        .max_frame_size(Some(config.max_message_size))
}
