//! TLS material from `--ca-file`, `--client-cert`/`--client-key` and `--insecure`,
//! read and checked at start-up (and on SIGHUP), and the native-tls connector
//! built from it only when a `wss://` URL needs one.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::Path;

use native_tls::{Certificate, HandshakeError, Identity, TlsConnector, TlsStream};

use crate::config::Config;
use crate::error::ConfigError;
use crate::net::san::{self, HostNames};

/// What builds TLS sessions for `wss://`: native-tls's connector, plus the host-name rule
/// OpenSSL does not apply (RFC 9525: no fallback to the certificate's CN).
#[derive(Clone, Debug)]
pub struct Connector {
    tls: TlsConnector,
    /// Whether [`Connector::check_host_names`] applies; off with `--insecure`.
    verify_host_names: bool,
}

impl Connector {
    /// Starts the handshake with `host` over `stream` (native-tls's `connect`).
    pub fn connect<S: Read + Write>(
        &self,
        host: &str,
        stream: S,
    ) -> Result<TlsStream<S>, HandshakeError<S>> {
        self.tls.connect(host, stream)
    }

    /// After the handshake: refuses a certificate that OpenSSL matched to the host name
    /// `host` through its CN, that is one with no DNS name in its subjectAltName
    /// (RFC 9525 §6.3). IP addresses need no check: OpenSSL matches them against the
    /// subjectAltName only.
    pub fn check_host_names<S: Read + Write>(
        &self,
        stream: &TlsStream<S>,
        host: &str,
    ) -> Result<(), String> {
        if !self.verify_host_names || host.parse::<IpAddr>().is_ok() {
            return Ok(());
        }
        const WHY: &str = "the CN is not used for host names (RFC 9525)";
        let der = match stream.peer_certificate() {
            Ok(Some(certificate)) => certificate.to_der().map_err(|err| err.to_string())?,
            Ok(None) => return Err("the server sent no certificate".into()),
            Err(err) => return Err(err.to_string()),
        };
        match san::host_names(&der) {
            Ok(HostNames::DnsNames(_)) => Ok(()),
            Ok(HostNames::NoSubjectAltName) => Err(format!(
                "the server's certificate has no subjectAltName; {WHY}"
            )),
            Ok(HostNames::NoDnsName) => Err(format!(
                "the server's certificate has no DNS name in its subjectAltName; {WHY}"
            )),
            Err(san::Malformed) => {
                Err("the server's certificate could not be read (malformed DER)".into())
            }
        }
    }
}

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
    pub fn connector(&self) -> Result<Connector, String> {
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
        let tls = builder.build().map_err(|err| err.to_string())?;
        Ok(Connector {
            tls,
            verify_host_names: !self.insecure,
        })
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
