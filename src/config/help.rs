//! `--help`, rendered from the option table: each option's flag, value name, help
//! lines and default, by section, between a fixed introduction and epilogue.

use std::fmt;

use super::options::{OPTIONS, Spec, Takes};

/// The `--help` section an option is listed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Heartbeat,
    Connection,
    Tls,
    Data,
    Info,
}

impl Section {
    /// In `--help` order.
    const ALL: [Section; 5] = [
        Section::Heartbeat,
        Section::Connection,
        Section::Tls,
        Section::Data,
        Section::Info,
    ];

    /// The heading, if the section has one.
    fn title(self) -> Option<&'static str> {
        match self {
            Section::Heartbeat => Some("Heartbeat"),
            Section::Connection => Some("Connection"),
            Section::Tls => Some("TLS"),
            Section::Data => Some("Data and state"),
            Section::Info => None,
        }
    }

    /// The column the help texts start at.
    fn column(self) -> usize {
        match self {
            Section::Heartbeat | Section::Data => 32,
            Section::Connection => 34,
            Section::Tls => 28,
            Section::Info => 18,
        }
    }
}

impl Spec {
    /// What `--help` shows before the text: `      --name VALUE` or `  -c, --name`.
    pub(super) fn head(&self) -> String {
        let mut head = match self.short {
            Some(c) => format!("  -{c}, --{}", self.name),
            None => format!("      --{}", self.name),
        };
        if let Takes::Value(value, _) | Takes::Values(value, _) | Takes::Later(value) = self.takes {
            head.push(' ');
            head.push_str(value);
        }
        head
    }
}

/// Before the options in `--help`.
const INTRO: &str = "\
wsbeat - keep one WebSocket connection alive with a ping/pong heartbeat

Usage: wsbeat [OPTIONS] [URL]

URL is ws://host[:port]/path or wss://host[:port]/path (required, here or as
WSBEAT_URL). Every option can also be set as WSBEAT_<NAME> (upper case, '-'
becomes '_', e.g. WSBEAT_PING_INTERVAL=5s); the command line wins. Switches
set in the environment take 1, true, yes or 0, false, no; other empty
variables count as unset. DURATION is a number with an optional unit ms, s,
m or h (250ms, 1.5s, 20s, 5m); a bare number means seconds.
";

/// After the options in `--help`.
const OUTRO: &str = "\
Each stdin line is sent as one text message; each text message received is
printed on stdout (with --socket: written to every client of the socket,
whose lines are sent like stdin's; systemd socket activation passes one).
Logs go to stderr, level from RUST_LOG (default info).
SIGTERM/SIGINT close with 1001 and exit 0; SIGHUP re-reads the files and
reconnects.

Exit codes: 0 stopped by a signal or --once succeeded; 1 gave up
(--max-retries) or --once failed; 64 usage error; 78 unreadable or invalid
file (CA, certificate, key or header file), or a --socket path in use or
taken by another kind of file.
";

/// The help text printed by `-h` / `--help`, rendered from the option table.
#[derive(Debug, Clone, Copy)]
pub struct Usage;

/// The help text printed by `-h` / `--help`: `print!("{USAGE}")`.
pub const USAGE: Usage = Usage;

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(INTRO)?;
        for section in Section::ALL {
            f.write_str("\n")?;
            if let Some(title) = section.title() {
                writeln!(f, "{title}:")?;
            }
            let column = section.column();
            for spec in OPTIONS.iter().filter(|spec| spec.section == section) {
                for (index, line) in spec.help.iter().enumerate() {
                    let line = match spec.default {
                        Some(default) => line.replace("{default}", default),
                        None => (*line).to_owned(),
                    };
                    if index == 0 {
                        writeln!(f, "{:column$}{line}", spec.head())?;
                    } else {
                        writeln!(f, "{:column$}{line}", "")?;
                    }
                }
            }
        }
        f.write_str("\n")?;
        f.write_str(OUTRO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_shows_every_option_and_its_default() {
        let usage = USAGE.to_string();
        for spec in OPTIONS {
            let head = spec.head();
            assert!(usage.lines().any(|line| line.starts_with(&head)), "{head}");
            assert!(
                head.len() + 2 <= spec.section.column(),
                "{head}: widen the section's column"
            );
            let placeholders = spec
                .help
                .iter()
                .filter(|line| line.contains("{default}"))
                .count();
            let expected = usize::from(spec.default.is_some());
            assert_eq!(placeholders, expected, "{head}: [{{default}}] in its help");
        }
        assert!(!usage.contains("{default}"));
    }
}
