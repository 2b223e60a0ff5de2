//! TLS material from `--ca-file`, `--client-cert`/`--client-key` and `--insecure`,
//! read and checked at start-up (and on SIGHUP), and the native-tls connector
//! built from it only when a `wss://` URL needs one.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;

use native_tls::{Certificate, Identity, TlsConnector};

use crate::config::Config;

/// What builds TLS sessions for `wss://`.
pub type Connector = TlsConnector;
use crate::error::ConfigError;

/// Largest PEM file accepted; real bundles are a few hundred KiB at most.
const MAX_PEM_BYTES: u64 = 4 << 20;

/// Parsed TLS files. Holding parsed objects (not paths) means a file that breaks
/// after start-up cannot take down a running service; SIGHUP re-reads them.
#[derive(Clone, Default)]
pub struct TlsFiles {
    roots: Vec<Certificate>,
    identity: Option<Identity>,
    insecure: bool,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("roots", &self.roots.len())
            .field("identity", &self.identity.is_some())
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl TlsFiles {
    /// Reads and checks every TLS file the configuration names.
    pub fn load(config: &Config) -> Result<TlsFiles, ConfigError> {
        let roots = match &config.ca_file {
            Some(path) => read_roots(path)?,
            None => Vec::new(),
        };
        let identity = match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => Some(read_identity(cert, key)?),
            _ => None,
        };
        Ok(TlsFiles {
            roots,
            identity,
            insecure: config.insecure,
        })
    }

    /// A connector trusting the system roots plus `--ca-file`.
    pub fn connector(&self) -> Result<TlsConnector, String> {
        let mut builder = TlsConnector::builder();
        for root in &self.roots {
            builder.add_root_certificate(root.clone());
        }
        if let Some(identity) = &self.identity {
            builder.identity(identity.clone());
        }
        if self.insecure {
            builder
                .danger_accept_invalid_certs(true)
                .danger_accept_invalid_hostnames(true);
        }
        builder.build().map_err(|err| err.to_string())
    }

    /// `--insecure` was given.
    pub fn insecure(&self) -> bool {
        self.insecure
    }
}

/// Where Debian, Ubuntu, Alpine, Buildroot and Yocto keep the system roots, one
/// file per root plus `<subject-hash>.N` links made by `c_rehash`.
const HASHED_ROOTS_DIR: &str = "/etc/ssl/certs";

/// Makes OpenSSL find system roots through the hashed directory, one root per
/// handshake, instead of parsing the whole CA bundle (~140 certificates, about
/// 0.9 MB of heap on a device) when the connector is built. Same roots: both are
/// written by `update-ca-certificates`. Does nothing if the user set
/// `SSL_CERT_FILE` or `SSL_CERT_DIR`, or if the directory has no hash links.
///
/// Call it before any other thread starts: it sets environment variables, which
/// OpenSSL and native-tls read when the first connector is built.
pub fn prefer_hashed_system_roots() {
    if std::env::var_os("SSL_CERT_FILE").is_some() || std::env::var_os("SSL_CERT_DIR").is_some() {
        return;
    }
    let Ok(entries) = fs::read_dir(HASHED_ROOTS_DIR) else {
        return;
    };
    let hashed = entries
        .filter_map(Result::ok)
        .any(|entry| is_hash_link_name(&entry.file_name().to_string_lossy()));
    if hashed {
        let set = crate::os::set_env_single_threaded(&[
            ("SSL_CERT_FILE", OsStr::new("/dev/null")),
            ("SSL_CERT_DIR", OsStr::new(HASHED_ROOTS_DIR)),
        ]);
        if !set {
            log::debug!("threads are running: OpenSSL's default roots stay");
        }
    }
}

/// `5ad8a5d6.0`: eight hex digits of the subject hash, a dot, a collision counter.
fn is_hash_link_name(name: &str) -> bool {
    let Some((hash, counter)) = name.split_once('.') else {
        return false;
    };
    hash.len() == 8
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
        && !counter.is_empty()
        && counter.bytes().all(|b| b.is_ascii_digit())
}

fn read_pem(path: &Path, flag: &'static str) -> Result<Vec<u8>, ConfigError> {
    let error = |message: String| ConfigError {
        path: path.to_path_buf(),
        flag,
        message,
    };
    let meta = fs::metadata(path).map_err(|err| error(err.to_string()))?;
    if !meta.is_file() {
        return Err(error("not a regular file".into()));
    }
    if meta.len() > MAX_PEM_BYTES {
        return Err(error(format!("larger than {MAX_PEM_BYTES} bytes")));
    }
    fs::read(path).map_err(|err| error(err.to_string()))
}

fn read_roots(path: &Path) -> Result<Vec<Certificate>, ConfigError> {
    let pem = read_pem(path, "--ca-file")?;
    let error = |message: String| ConfigError {
        path: path.to_path_buf(),
        flag: "--ca-file",
        message,
    };
    let roots = Certificate::stack_from_pem(&pem)
        .map_err(|err| error(format!("invalid certificate: {err}")))?;
    if roots.is_empty() {
        return Err(error("no PEM certificate found".into()));
    }
    Ok(roots)
}

fn read_identity(cert: &Path, key: &Path) -> Result<Identity, ConfigError> {
    let cert_pem = read_pem(cert, "--client-cert")?;
    let key_pem = read_pem(key, "--client-key")?;
    if Certificate::stack_from_pem(&cert_pem).map_or(true, |certs| certs.is_empty()) {
        return Err(ConfigError {
            path: cert.to_path_buf(),
            flag: "--client-cert",
            message: "no PEM certificate found".into(),
        });
    }
    const PKCS8_BEGIN: &[u8] = b"-----BEGIN PRIVATE KEY-----";
    if !key_pem.windows(PKCS8_BEGIN.len()).any(|w| w == PKCS8_BEGIN) {
        return Err(ConfigError {
            path: key.to_path_buf(),
            flag: "--client-key",
            message: "no PKCS#8 private key found (expected BEGIN PRIVATE KEY; convert with `openssl pkcs8 -topk8 -nocrypt`)".into(),
        });
    }
    let error = |err: native_tls::Error| ConfigError {
        path: key.to_path_buf(),
        flag: "--client-key",
        message: format!("does not match --client-cert or is invalid: {err}"),
    };
    let identity = Identity::from_pkcs8(&cert_pem, &key_pem).map_err(error)?;
    // from_pkcs8 parses the two files but does not compare them; OpenSSL does when a
    // context takes the pair. Without this a mismatch would surface only at every
    // wss:// connect, as a network failure retried forever instead of exit 78.
    TlsConnector::builder()
        .identity(identity.clone())
        .disable_built_in_roots(true)
        .build()
        .map_err(error)?;
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_rehash_link_names() {
        assert!(is_hash_link_name("5ad8a5d6.0"));
        assert!(is_hash_link_name("002C0B4F.12"));
        assert!(!is_hash_link_name("ca-certificates.crt"));
        assert!(!is_hash_link_name("5ad8a5d6.pem"));
        assert!(!is_hash_link_name("5ad8a5d.0"));
        assert!(!is_hash_link_name("5ad8a5d6."));
    }
}
