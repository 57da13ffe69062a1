//! `--auto-tls` and `--peer-auto-tls`: a self-signed certificate made at
//! start-up when no certificate file is given, as etcd's `SelfCert`.
//!
//! The certificate (ECDSA P-256, valid one year, organisation `cairn`, the
//! listen URLs' hosts as subject alternative names) is written to
//! `<data-dir>/fixtures/client` or `…/peer` as `cert.pem` and `key.pem`,
//! and reused on later starts while both files exist. Nothing can verify a
//! self-signed certificate, so a member dialling a peer that uses one does
//! not (etcd's `InsecureSkipVerify`), and clients need etcdctl's
//! `--insecure-skip-tls-verify`: auto-TLS encrypts, it does not
//! authenticate.

use std::path::{Path, PathBuf};

use super::{TlsError, TlsInfo};

/// How long a generated certificate is valid (etcd's
/// `--self-signed-cert-validity` default: one year).
const VALIDITY: time::Duration = time::Duration::days(365);

/// Fills `info` with a generated certificate when it asks for auto-TLS and
/// names no certificate; `dir` is where the files go, `hosts` the names
/// and addresses the certificate is for. Returns whether it did.
pub fn apply(info: &mut TlsInfo, dir: &Path, hosts: &[String]) -> Result<bool, TlsError> {
    if !info.auto_tls || !info.is_empty() {
        return Ok(false);
    }
    let (cert, key) = self_signed(dir, hosts)?;
    info.cert_file = Some(cert);
    info.key_file = Some(key);
    info.skip_verify = true;
    Ok(true)
}

/// Writes (or reuses) `cert.pem` and `key.pem` in `dir`.
pub fn self_signed(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.is_file() && key_path.is_file() {
        return Ok((cert_path, key_path));
    }
    let generate = |e: &dyn std::fmt::Display| TlsError::Generate(e.to_string());
    let mut hosts: Vec<String> = hosts.to_vec();
    hosts.sort();
    hosts.dedup();
    let mut params = rcgen::CertificateParams::new(hosts).map_err(|e| generate(&e))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "cairn");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + VALIDITY;
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().map_err(|e| generate(&e))?;
    let cert = params.self_signed(&key).map_err(|e| generate(&e))?;
    let write = |path: &Path, text: String| {
        std::fs::write(path, text).map_err(|e| TlsError::Read {
            path: path.to_path_buf(),
            cause: format!("cannot write: {e}"),
        })
    };
    std::fs::create_dir_all(dir).map_err(|e| TlsError::Read {
        path: dir.to_path_buf(),
        cause: format!("cannot create: {e}"),
    })?;
    write(&key_path, key.serialize_pem())?;
    restrict_to_owner(&key_path);
    write(&cert_path, cert.pem())?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed TLS certificate (auto TLS)");
    Ok((cert_path, key_path))
}

/// A private key readable by its owner only (best effort, as etcd's 0600).
fn restrict_to_owner(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_and_reuses() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut info = TlsInfo {
            auto_tls: true,
            ..TlsInfo::default()
        };
        let fixtures = dir.path().join("fixtures/client");
        assert!(apply(&mut info, &fixtures, &["127.0.0.1".to_string()]).expect("generate"));
        assert!(info.skip_verify);
        let cert = info.cert_file.clone().expect("cert set");
        let first = std::fs::read(&cert).expect("cert written");
        let chain = super::super::files::certs(&cert).expect("a PEM certificate");
        assert!(super::super::x509::valid_for(&chain[0], "127.0.0.1"));

        let mut again = TlsInfo {
            auto_tls: true,
            ..TlsInfo::default()
        };
        apply(&mut again, &fixtures, &["127.0.0.1".to_string()]).expect("reuse");
        assert_eq!(
            std::fs::read(&cert).expect("cert"),
            first,
            "reused, not regenerated"
        );

        let mut given = TlsInfo {
            auto_tls: true,
            cert_file: Some("/given/cert.pem".into()),
            key_file: Some("/given/key.pem".into()),
            ..TlsInfo::default()
        };
        assert!(
            !apply(&mut given, &fixtures, &[]).expect("no-op"),
            "given files win"
        );
    }
}
