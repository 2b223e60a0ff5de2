//! A real HTTP CONNECT proxy for the tests: Debian's `tinyproxy`, started in the foreground
//! with a generated configuration (optionally with `BasicAuth`, optionally inside a network
//! namespace), killed and its files removed on drop. Its log (level `Connect`) records each
//! `CONNECT` it receives, so tests can tell a tunnelled connection from a direct one.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::netns::Netns;
use super::{TempDir, WAIT, free_port, poll_until};

/// A running tinyproxy.
pub struct Tinyproxy {
    child: Child,
    port: u16,
    dir: TempDir,
}

/// How to start one.
#[derive(Debug, Default, Clone)]
pub struct Options<'a> {
    /// `BasicAuth user password` (tinyproxy accepts letters, digits, `-`, `_`, `.`).
    pub auth: Option<(&'a str, &'a str)>,
    /// Run inside this namespace, listening on every address; else on 127.0.0.1.
    pub netns: Option<&'a Netns>,
    /// Port to listen on; a free one on 127.0.0.1 if `None`.
    pub port: Option<u16>,
}

impl Tinyproxy {
    /// Starts tinyproxy on a free port of 127.0.0.1, with `auth` if given.
    pub fn start(auth: Option<(&str, &str)>) -> Tinyproxy {
        Tinyproxy::start_with(Options {
            auth,
            ..Options::default()
        })
    }

    /// Starts tinyproxy as `options` say and waits until it accepts connections.
    pub fn start_with(options: Options<'_>) -> Tinyproxy {
        let dir = TempDir::new();
        let port = options.port.unwrap_or_else(free_port);
        let mut config = format!(
            "Port {port}\n\
             Timeout 60\n\
             MaxClients 50\n\
             LogLevel Connect\n\
             LogFile \"{}\"\n\
             DisableViaHeader Yes\n",
            dir.join("log").display()
        );
        if options.netns.is_none() {
            config.push_str("Listen 127.0.0.1\nAllow 127.0.0.1\n");
        }
        if let Some((user, password)) = options.auth {
            config.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        let conf = dir.write("tinyproxy.conf", config);
        let mut cmd = match options.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.name(), "tinyproxy"]);
                c
            }
            None => Command::new("tinyproxy"),
        };
        cmd.arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("start tinyproxy");
        let mut proxy = Tinyproxy { child, port, dir };
        // Logged once its listening sockets are open.
        let ready = poll_until(WAIT(), || {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("tinyproxy exited at start ({status}):\n{}", proxy.log());
            }
            proxy
                .log()
                .contains("done sending stored logs")
                .then_some(())
        });
        if ready.is_none() {
            panic!(
                "tinyproxy did not start within {:?}:\n{}",
                WAIT(),
                proxy.log()
            );
        }
        proxy
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// How many `CONNECT authority` requests the log shows.
    pub fn connects_to(&self, authority: &str) -> usize {
        let needle = format!("CONNECT {authority} HTTP/1.1");
        self.log().matches(&needle).count()
    }

    /// Waits (bounded) until the log shows a `CONNECT authority`; panics with the log if not.
    pub fn expect_connect(&self, authority: &str, timeout: Duration) {
        if poll_until(timeout, || (self.connects_to(authority) > 0).then_some(())).is_none() {
            panic!(
                "tinyproxy saw no CONNECT {authority} within {timeout:?}:\n{}",
                self.log()
            );
        }
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
