//! Test PKI generated at test time with the `openssl` crate: a CA, a server certificate for
//! `127.0.0.1`/`::1`/`localhost` signed by it, and a client certificate for mutual TLS, all
//! written as PEM (keys as PKCS#8) into a [`TempDir`]. EC P-256 keys keep generation fast,
//! also under emulation.

use std::path::PathBuf;

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509NameBuilder};

use super::TempDir;

/// A generated CA with one server and one client certificate; the CA and the client's
/// certificate and key as PEM files (the server uses the objects directly).
pub struct Pki {
    /// Holds the files; removed when the `Pki` is dropped.
    _dir: TempDir,
    /// The CA certificate (`ca.pem`): pass as `--ca-file`.
    pub ca_file: PathBuf,
    /// Client certificate (`client.pem`), CN `wsbeat-test-client`: pass as `--client-cert`.
    pub client_cert_file: PathBuf,
    /// Client key, PKCS#8 (`client.key`): pass as `--client-key`.
    pub client_key_file: PathBuf,
    /// The CA, for the server's client-certificate verification.
    pub ca: X509,
    /// Server certificate.
    pub server_cert: X509,
    /// Server key.
    pub server_key: PKey<Private>,
}

fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    PKey::from_ec_key(EcKey::generate(&group).expect("ec key")).expect("pkey")
}

fn serial() -> Asn1Integer {
    let mut bn = BigNum::new().expect("bn");
    bn.rand(64, openssl::bn::MsbOption::MAYBE_ZERO, false)
        .expect("rand");
    bn.to_asn1_integer().expect("serial")
}

fn cert(
    cn: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    kind: Kind,
    extra_ips: &[&str],
) -> X509 {
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_nid(Nid::COMMONNAME, cn).expect("cn");
    let name = name.build();
    let mut b = X509::builder().expect("x509");
    b.set_version(2).expect("v3");
    b.set_serial_number(&serial()).expect("serial");
    b.set_subject_name(&name).expect("subject");
    b.set_issuer_name(issuer.map(|(c, _)| c.subject_name()).unwrap_or(&name))
        .expect("issuer");
    b.set_pubkey(key).expect("pubkey");
    // Valid from yesterday (clock skew between runs) for 30 days.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as libc::time_t;
    b.set_not_before(&Asn1Time::from_unix(now - 86_400).expect("time"))
        .expect("not before");
    b.set_not_after(&Asn1Time::from_unix(now + 30 * 86_400).expect("time"))
        .expect("not after");
    match kind {
        Kind::Ca => {
            b.append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
                .expect("ext");
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()
                    .expect("ku"),
            )
            .expect("ext");
        }
        Kind::Server | Kind::ServerCnOnly | Kind::Client => {
            b.append_extension(BasicConstraints::new().build().expect("bc"))
                .expect("ext");
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .digital_signature()
                    .key_agreement()
                    .build()
                    .expect("ku"),
            )
            .expect("ext");
            let mut eku = ExtendedKeyUsage::new();
            if kind != Kind::Client {
                eku.server_auth();
            } else {
                eku.client_auth();
            }
            b.append_extension(eku.build().expect("eku")).expect("ext");
        }
    }
    if kind == Kind::Server {
        let ctx = b.x509v3_context(issuer.map(|(c, _)| &**c), None);
        let mut san = SubjectAlternativeName::new();
        san.dns("localhost").ip("127.0.0.1").ip("::1");
        for ip in extra_ips {
            san.ip(ip);
        }
        let san = san.build(&ctx).expect("san");
        b.append_extension(san).expect("ext");
    }
    let signer = issuer.map(|(_, k)| k).unwrap_or(key);
    b.sign(signer, MessageDigest::sha256()).expect("sign");
    b.build()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ca,
    Server,
    /// A server certificate naming `localhost` in its CN only, without subjectAltName.
    ServerCnOnly,
    Client,
}

fn pem(c: &X509) -> Vec<u8> {
    c.to_pem().expect("pem")
}

fn key_pem(k: &PKey<Private>) -> Vec<u8> {
    k.private_key_to_pem_pkcs8().expect("pkcs8")
}

impl Pki {
    /// Generates a new CA, server and client certificate and writes them to a new temp dir.
    pub fn new() -> Pki {
        Pki::generate(Kind::Server, &[])
    }

    /// [`Pki::new`] with the server certificate also valid for `ips` (e.g. an address
    /// inside a test network namespace).
    pub fn with_server_ips(ips: &[&str]) -> Pki {
        Pki::generate(Kind::Server, ips)
    }

    /// [`Pki::new`] with a server certificate that names `localhost` in its CN only (no
    /// subjectAltName), which OpenSSL would still match to the host name `localhost`.
    pub fn with_cn_only_server() -> Pki {
        Pki::generate(Kind::ServerCnOnly, &[])
    }

    fn generate(server: Kind, ips: &[&str]) -> Pki {
        let ca_key = key();
        let ca = cert("wsbeat-test-ca", &ca_key, None, Kind::Ca, &[]);
        let server_key = key();
        let server_cert = cert("localhost", &server_key, Some((&ca, &ca_key)), server, ips);
        let client_key = key();
        let client_cert = cert(
            "wsbeat-test-client",
            &client_key,
            Some((&ca, &ca_key)),
            Kind::Client,
            &[],
        );
        let dir = TempDir::new();
        Pki {
            ca_file: dir.write("ca.pem", pem(&ca)),
            client_cert_file: dir.write("client.pem", pem(&client_cert)),
            client_key_file: dir.write("client.key", key_pem(&client_key)),
            _dir: dir,
            ca,
            server_cert,
            server_key,
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}
