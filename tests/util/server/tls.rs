//! `wss://`: the OpenSSL acceptor (certificates from [`Pki`], optionally demanding a
//! client certificate) and the TLS accept before the upgrade.

use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openssl::ssl::{SslAcceptor, SslMethod, SslStream, SslVerifyMode};

use super::conn::Io;
use super::handshake::{callback, drain};
use super::{Behavior, Handshake, Kind, Pki, Shared};

/// Read timeout of TLS connections after the upgrade, so writers get the shared lock.
const TLS_POLL: Duration = Duration::from_millis(5);

/// An acceptor with `pki`'s server certificate; `require_client_cert` makes it demand a
/// client certificate signed by the test CA (mutual TLS).
pub(super) fn acceptor(pki: &Pki, require_client_cert: bool) -> SslAcceptor {
    let mut b =
        SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).expect("ssl acceptor");
    b.set_private_key(&pki.server_key).expect("server key");
    b.set_certificate(&pki.server_cert).expect("server cert");
    b.check_private_key().expect("key matches cert");
    if require_client_cert {
        b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        b.cert_store_mut()
            .add_cert(pki.ca.clone())
            .expect("trust test CA");
        b.add_client_ca(&pki.ca).expect("client CA list");
    }
    b.build()
}

/// A TLS connection through the TLS and opening handshakes (or the stall `b` asks for):
/// the stream once upgraded, `None` when the connection is over.
pub(super) fn accept(
    sh: &Arc<Shared>,
    id: usize,
    tcp: TcpStream,
    b: &Behavior,
    acceptor: &SslAcceptor,
) -> Option<Io> {
    let raw = tcp.try_clone().ok()?;
    let mut tls = match acceptor.accept(tcp) {
        Ok(s) => s,
        Err(_) => {
            sh.emit(id, Kind::Disconnected);
            return None;
        }
    };
    if b.handshake == Handshake::StallUpgrade {
        drain(&mut tls);
        sh.emit(id, Kind::Disconnected);
        return None;
    }
    let cn = tls.ssl().peer_certificate().and_then(|c| {
        c.subject_name()
            .entries_by_nid(openssl::nid::Nid::COMMONNAME)
            .next()
            .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
    });
    let tls = upgrade_tls(sh, id, tls, b, cn)?;
    let _ = raw.set_read_timeout(Some(TLS_POLL));
    Some(Io::Tls {
        stream: Mutex::new(tls),
        tcp: raw,
    })
}

/// The opening handshake over TLS, recording the client certificate's common name `cn`.
fn upgrade_tls(
    sh: &Arc<Shared>,
    id: usize,
    tls: SslStream<TcpStream>,
    b: &Behavior,
    cn: Option<String>,
) -> Option<SslStream<TcpStream>> {
    match tungstenite::accept_hdr_with_config(tls, callback(sh, id, b, cn), None) {
        Ok(ws) => Some(ws.into_inner()),
        Err(_) => {
            sh.emit(id, Kind::Disconnected);
            None
        }
    }
}
