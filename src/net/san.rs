//! Whether a server certificate names hosts in its subjectAltName, read from its DER.
//!
//! OpenSSL, under native-tls, still falls back to the subject's CN when a certificate has
//! no DNS name in its subjectAltName; RFC 9525 (§6.3) and current browsers do not. native-tls
//! exposes no switch for it (`X509_CHECK_FLAG_NEVER_CHECK_SUBJECT`), so after the handshake
//! the peer certificate is read here: just enough DER (X.690) to find the extension
//! 2.5.29.17 in the TBSCertificate and count its `dNSName` entries. Every length is checked
//! against what is left, so garbage gives an error, never a panic or an overread.

/// What the subjectAltName of a certificate holds, as far as host names go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostNames {
    /// No subjectAltName extension at all.
    NoSubjectAltName,
    /// A subjectAltName without any `dNSName` (only addresses, e-mail, URIs…).
    NoDnsName,
    /// This many `dNSName` entries.
    DnsNames(usize),
}

/// The certificate is not the DER this reader expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

const SEQUENCE: u8 = 0x30;
const OBJECT_IDENTIFIER: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
/// `[3] EXPLICIT Extensions` in the TBSCertificate (RFC 5280 §4.1).
const EXTENSIONS: u8 = 0xa3;
/// `dNSName [2] IA5String` in GeneralName (RFC 5280 §4.2.1.6), implicitly tagged.
const DNS_NAME: u8 = 0x82;
/// 2.5.29.17, id-ce-subjectAltName, as DER content octets.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// Reads the host names of the subjectAltName of the DER certificate `der`.
pub fn host_names(der: &[u8]) -> Result<HostNames, Malformed> {
    let certificate = expect(der, SEQUENCE)?;
    // The TBSCertificate comes first; the signature's algorithm and value follow it.
    let tbs = match element(certificate)? {
        (SEQUENCE, tbs, _) => tbs,
        _ => return Err(Malformed),
    };
    let mut fields = Elements(tbs);
    while let Some((tag, content)) = fields.next().transpose()? {
        if tag != EXTENSIONS {
            continue;
        }
        let mut extensions = Elements(expect(content, SEQUENCE)?);
        while let Some((tag, extension)) = extensions.next().transpose()? {
            if tag != SEQUENCE {
                return Err(Malformed);
            }
            let mut parts = Elements(extension);
            let (tag, oid) = parts.next().ok_or(Malformed)??;
            if tag != OBJECT_IDENTIFIER {
                return Err(Malformed);
            }
            if oid != SUBJECT_ALT_NAME {
                continue;
            }
            let (mut tag, mut value) = parts.next().ok_or(Malformed)??;
            if tag == BOOLEAN {
                (tag, value) = parts.next().ok_or(Malformed)??;
            }
            if tag != OCTET_STRING {
                return Err(Malformed);
            }
            let mut names = Elements(expect(value, SEQUENCE)?);
            let mut dns = 0;
            while let Some((tag, _)) = names.next().transpose()? {
                if tag == DNS_NAME {
                    dns += 1;
                }
            }
            return Ok(if dns == 0 {
                HostNames::NoDnsName
            } else {
                HostNames::DnsNames(dns)
            });
        }
        return Ok(HostNames::NoSubjectAltName);
    }
    Ok(HostNames::NoSubjectAltName)
}

/// The content of the one element `input` holds, which must have tag `tag` and fill it.
fn expect(input: &[u8], tag: u8) -> Result<&[u8], Malformed> {
    match element(input)? {
        (found, content, []) if found == tag => Ok(content),
        _ => Err(Malformed),
    }
}

/// The consecutive elements of a constructed element's content, as `(tag, content)`.
struct Elements<'a>(&'a [u8]);

impl<'a> Iterator for Elements<'a> {
    type Item = Result<(u8, &'a [u8]), Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        Some(element(self.0).map(|(tag, content, rest)| {
            self.0 = rest;
            (tag, content)
        }))
    }
}

/// The first element of `input`: its tag, its content and what follows it. Only the
/// definite, at most four-byte lengths and one-byte tags that certificates use.
fn element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), Malformed> {
    let (&tag, rest) = input.split_first().ok_or(Malformed)?;
    if tag & 0x1f == 0x1f {
        return Err(Malformed);
    }
    let (&first, rest) = rest.split_first().ok_or(Malformed)?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return Err(Malformed);
        }
        let (bytes, rest) = rest.split_at_checked(count).ok_or(Malformed)?;
        let length = bytes
            .iter()
            .fold(0usize, |length, &byte| (length << 8) | usize::from(byte));
        (length, rest)
    };
    let (content, rest) = rest.split_at_checked(length).ok_or(Malformed)?;
    Ok((tag, content, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::asn1::Asn1Time;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
    use openssl::x509::{X509, X509NameBuilder};

    /// A self-signed certificate with CN `localhost` and, if given, this subjectAltName
    /// (`critical` marks the extension critical, which adds the BOOLEAN).
    fn certificate(san: Option<(&[&str], &[&str], bool)>) -> Vec<u8> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_nid(Nid::COMMONNAME, "localhost")
            .unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        b.append_extension(BasicConstraints::new().build().unwrap())
            .unwrap();
        if let Some((dns, ips, critical)) = san {
            let mut ext = SubjectAlternativeName::new();
            for name in dns {
                ext.dns(name);
            }
            for ip in ips {
                ext.ip(ip);
            }
            ext.email("ops@example.com");
            if critical {
                ext.critical();
            }
            let ext = ext.build(&b.x509v3_context(None, None)).unwrap();
            b.append_extension(ext).unwrap();
        }
        b.sign(&key, MessageDigest::sha256()).unwrap();
        b.build().to_der().unwrap()
    }

    #[test]
    fn counts_the_dns_names_of_the_subject_alt_name() {
        assert_eq!(
            host_names(&certificate(None)),
            Ok(HostNames::NoSubjectAltName)
        );
        assert_eq!(
            host_names(&certificate(Some((&[], &["127.0.0.1", "::1"], false)))),
            Ok(HostNames::NoDnsName)
        );
        assert_eq!(
            host_names(&certificate(Some((&["localhost"], &["127.0.0.1"], false)))),
            Ok(HostNames::DnsNames(1))
        );
        assert_eq!(
            host_names(&certificate(Some((&["a.example", "b.example"], &[], true)))),
            Ok(HostNames::DnsNames(2))
        );
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let good = certificate(Some((&["localhost"], &[], false)));
        // Every truncation, and every single-byte change, of a real certificate.
        for end in 0..good.len() {
            assert_eq!(host_names(&good[..end]), Err(Malformed), "cut at {end}");
        }
        for at in 0..good.len() {
            for byte in [0x00, 0x30, 0x7f, 0x80, 0x81, 0x84, 0x85, 0xa3, 0xff] {
                let mut bad = good.clone();
                bad[at] = byte;
                let _ = host_names(&bad);
            }
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(host_names(&trailing), Err(Malformed));
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x80, 0x00, 0x00],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x85, 1, 0, 0, 0, 0],
            &[0x3f, 0x01, 0x00],
            &[0x30, 0x02, 0x31, 0x00],
            &[0x30, 0x04, 0x30, 0x02, 0x02, 0x05],
        ] {
            assert_eq!(host_names(bad), Err(Malformed), "{bad:?}");
        }
        // Well-formed but without extensions.
        assert_eq!(
            host_names(&[0x30, 0x04, 0x30, 0x02, 0x02, 0x00]),
            Ok(HostNames::NoSubjectAltName)
        );
    }
}
