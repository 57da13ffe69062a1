//! The little certificate reading TLS needs beyond rustls: a peer
//! certificate's subject Common Name (`--peer-cert-allowed-cn`) and whether
//! it is valid for a host name (`--peer-cert-allowed-hostname`).

use rustls::pki_types::{CertificateDer, ServerName};

/// DER encoding of the id-at-commonName OID (2.5.4.3).
const CN_OID: &[u8] = &[0x55, 0x04, 0x03];

/// The first Common Name in the certificate's subject, if it has one.
pub(super) fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut name = parsed.subject();
    // The Name may come with or without its outer SEQUENCE.
    if name.first() == Some(&0x30) {
        name = tlv(name)?.1;
    }
    let mut rdns = name;
    while !rdns.is_empty() {
        let (tag, set, rest) = tlv(rdns)?;
        rdns = rest;
        if tag != 0x31 {
            return None;
        }
        let mut attrs = set;
        while !attrs.is_empty() {
            let (_, attr, rest) = tlv(attrs)?;
            attrs = rest;
            let (oid_tag, oid, value) = tlv(attr)?;
            if oid_tag == 0x06 && oid == CN_OID {
                let (_, text, _) = tlv(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
}

/// Whether the certificate is valid for `host` (a DNS name or an IP address,
/// judged on its subject alternative names, as Go's `VerifyHostname`).
pub(super) fn valid_for(cert: &CertificateDer<'_>, host: &str) -> bool {
    let Ok(name) = ServerName::try_from(host) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
}

/// Splits one DER TLV off the front: (tag, value, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_common_name_and_checks_host_names() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec![
            "member1.example.com".to_string(),
            "127.0.0.1".to_string(),
        ])
        .expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "cairn");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "member1");
        let cert = params.self_signed(&key).expect("cert");
        let der = cert.der().clone();
        assert_eq!(common_name(&der).as_deref(), Some("member1"));
        assert!(valid_for(&der, "member1.example.com"));
        assert!(valid_for(&der, "127.0.0.1"));
        assert!(!valid_for(&der, "member2.example.com"));

        let mut bare = rcgen::CertificateParams::new(vec!["x.example".to_string()]).expect("p");
        bare.distinguished_name = rcgen::DistinguishedName::new();
        let cert = bare.self_signed(&key).expect("cert");
        assert_eq!(common_name(cert.der()), None);
        assert_eq!(common_name(&CertificateDer::from(vec![0x30, 0x82])), None);
    }
}
