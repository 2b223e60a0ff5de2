//! Stand-in for `tls.rs` in a build without the `tls` feature: `wss://` URLs and
//! TLS options are refused while parsing the command line, so nothing here is
//! ever asked to make a TLS session.

use crate::config::Config;
use crate::error::ConfigError;

/// No value exists: a build without TLS cannot hold a TLS connector.
#[derive(Clone, Debug)]
pub enum Connector {}

/// No TLS files in a build without TLS.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles;

impl TlsFiles {
    /// Nothing to read: TLS options are usage errors in this build.
    pub fn load(_config: &Config) -> Result<TlsFiles, ConfigError> {
        Ok(TlsFiles)
    }

    /// Always an error; the configuration never gets a `wss://` URL this far.
    pub fn connector(&self) -> Result<Connector, String> {
        Err("this wsbeat was built without TLS (cargo feature \"tls\")".into())
    }

    /// Never.
    pub fn insecure(&self) -> bool {
        false
    }
}

/// Nothing to prefer without OpenSSL.
pub fn prefer_hashed_system_roots() {}
