//! Logging: `env_logger` on stderr, level from `RUST_LOG` (default `info`).
//!
//! When stderr is connected to the journal, systemd sets `JOURNAL_STREAM` to the
//! `device:inode` of that stream. Then every line is written as `<N>message`,
//! `N` being the syslog priority ([`syslog_priority`]), without timestamp (the
//! journal has its own), so `journalctl -p warning` filters correctly. A message
//! spanning several lines gets the prefix on each line, since journald makes one
//! entry per line. Elsewhere (a terminal, a file) the usual env_logger format is used.
//!
//! No level prints a secret: tungstenite's trace records are dropped whatever `RUST_LOG`
//! says (see `NoSecrets`), and our own records never carry header values.

use std::io::{self, Write as _};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use log::{Level, Log, Metadata, Record};

/// Which line format to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `<N>message`, for the journal.
    Journal,
    /// env_logger's own format, for terminals and files.
    Plain,
}

/// The format for this process's stderr, from `JOURNAL_STREAM`.
fn current_format() -> Format {
    let journal_stream = std::env::var("JOURNAL_STREAM").ok();
    choose_format(journal_stream.as_deref(), stderr_identity())
}

/// Sets up the global logger. Call once, early in `main`; a second call is a
/// no-op (the first logger stays).
pub fn init() {
    let format = current_format();
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    builder.target(env_logger::Target::Stderr);
    if format == Format::Journal {
        builder.format(|buf, record| {
            let line = journal_line(record.level(), &record.args().to_string());
            buf.write_all(line.as_bytes())
        });
    }
    let logger = builder.build();
    let max_level = logger.filter();
    if log::set_boxed_logger(Box::new(NoSecrets(logger))).is_ok() {
        log::set_max_level(max_level);
    }
}

/// The logger with tungstenite's trace records taken out. At trace, tungstenite logs the
/// whole handshake request, header values (`authorization: Bearer …`) included, and every
/// frame. A filter directive cannot cap that reliably (`RUST_LOG=tungstenite::handshake=trace`
/// is more specific than any cap we would add, and wins), so the records are dropped here,
/// after the filter. Its debug records name no header and stay.
struct NoSecrets(env_logger::Logger);

impl Log for NoSecrets {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        may_log(metadata) && self.0.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if may_log(record.metadata()) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// Whether a record may be printed at all: not tungstenite's at trace level.
fn may_log(metadata: &Metadata<'_>) -> bool {
    let target = metadata.target();
    let tungstenite = target == "tungstenite" || target.starts_with("tungstenite::");
    !(tungstenite && metadata.level() == Level::Trace)
}

/// Prints a final one-line message that is not a log record (e.g. `main`'s
/// `wsbeat: <reason>` before exiting 1, 64 or 78) on stderr. On the journal it
/// gets the `<3>` (error) prefix like any error record, so `journalctl -p err`
/// shows why the service stopped; elsewhere it is printed as given. Works
/// before [`init`] too (usage errors).
pub fn print_error(message: &str) {
    let text = match current_format() {
        Format::Journal => journal_line(Level::Error, message),
        Format::Plain => format!("{message}\n"),
    };
    let _ = io::stderr().lock().write_all(text.as_bytes());
}

/// `(device, inode)` of whatever stderr is, or `None` if it cannot be examined
/// (closed). Uses fstat on a duplicate of fd 2, so no `/proc` is needed.
pub fn stderr_identity() -> Option<(u64, u64)> {
    let fd = io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// The decision, pure: journal format iff `JOURNAL_STREAM` is `device:inode`
/// (decimal) and equals `stderr`'s identity. systemd documents this check so
/// that a child whose stderr was redirected away from the journal (e.g. to a
/// file) does not print priority prefixes into it.
pub fn choose_format(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> Format {
    let parse = |s: &str| -> Option<(u64, u64)> {
        let (dev, ino) = s.trim().split_once(':')?;
        Some((dev.parse().ok()?, ino.parse().ok()?))
    };
    match (journal_stream.and_then(parse), stderr) {
        (Some(stream), Some(stderr)) if stream == stderr => Format::Journal,
        _ => Format::Plain,
    }
}

/// syslog priority for a log level: error 3, warn 4, info 6, debug and trace 7.
pub fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// `message` as journal lines: each line prefixed with `<N>`, each ending in `\n`.
pub fn journal_line(level: Level, message: &str) -> String {
    let prefix = format!("<{}>", syslog_priority(level));
    let mut out = String::with_capacity(message.len() + 4);
    let mut lines = message.split('\n').peekable();
    while let Some(line) = lines.next() {
        // A trailing newline in the message does not make an empty entry.
        if line.is_empty() && lines.peek().is_none() && !out.is_empty() {
            break;
        }
        out.push_str(&prefix);
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_only_when_the_stream_is_stderr() {
        let me = Some((64769, 123456));
        assert_eq!(choose_format(Some("64769:123456"), me), Format::Journal);
        assert_eq!(choose_format(Some("64769:123457"), me), Format::Plain);
        assert_eq!(choose_format(Some("1:123456"), me), Format::Plain);
        assert_eq!(choose_format(None, me), Format::Plain);
        assert_eq!(choose_format(Some(""), me), Format::Plain);
        assert_eq!(choose_format(Some("64769"), me), Format::Plain);
        assert_eq!(choose_format(Some("a:b"), me), Format::Plain);
        assert_eq!(choose_format(Some("64769:123456"), None), Format::Plain);
    }

    #[test]
    fn priorities_match_syslog() {
        assert_eq!(syslog_priority(Level::Error), 3);
        assert_eq!(syslog_priority(Level::Warn), 4);
        assert_eq!(syslog_priority(Level::Info), 6);
        assert_eq!(syslog_priority(Level::Debug), 7);
        assert_eq!(syslog_priority(Level::Trace), 7);
    }

    #[test]
    fn journal_lines_carry_the_prefix_on_every_line() {
        assert_eq!(journal_line(Level::Info, "connected"), "<6>connected\n");
        assert_eq!(journal_line(Level::Warn, "a\nb"), "<4>a\n<4>b\n");
        assert_eq!(journal_line(Level::Error, "a\n"), "<3>a\n");
        assert_eq!(journal_line(Level::Debug, ""), "<7>\n");
    }

    #[test]
    fn tungstenite_trace_records_are_never_printed() {
        let metadata = |target: &'static str, level: Level| {
            Metadata::builder().target(target).level(level).build()
        };
        assert!(!may_log(&metadata(
            "tungstenite::handshake::client",
            Level::Trace
        )));
        assert!(!may_log(&metadata("tungstenite", Level::Trace)));
        assert!(may_log(&metadata("tungstenite::protocol", Level::Debug)));
        assert!(may_log(&metadata("wsbeat::supervisor", Level::Trace)));
        assert!(may_log(&metadata("tungstenite_like", Level::Trace)));
    }

    #[test]
    fn stderr_has_an_identity() {
        // The test harness's stderr is open, so fstat works.
        assert!(stderr_identity().is_some());
    }
}
