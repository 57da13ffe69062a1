//! Reading certificates, keys, CA bundles and CRLs from PEM files, and
//! [`Reloading`]: a value built from files and rebuilt when they change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use super::TlsError;

/// What identifies one version of a file: modification time and length
/// (None: it cannot be read).
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// A value built from some files, rebuilt when any of them changes.
///
/// [`Reloading::current`] stats the files (a few microseconds) and rebuilds
/// when a stamp differs from the one the current value was built from. A
/// rebuild that fails keeps the previous value and logs one warning; the
/// new stamps are remembered, so the next attempt waits for the next change
/// (a file still being written gets another mtime when it is finished).
pub(super) struct Reloading<T> {
    /// What the files are, for log lines ("client certificate").
    what: &'static str,
    paths: Vec<PathBuf>,
    build: Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>,
    /// The stamps the current value was built from, and that value. A
    /// parking_lot mutex: held only for the stat and, rarely, a rebuild.
    state: Mutex<(Vec<Stamp>, Arc<T>)>,
}

impl<T> Reloading<T> {
    /// Builds the first value; an error here fails start-up.
    pub fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Reloading<T>, TlsError> {
        let stamps = paths.iter().map(|p| stamp(p)).collect();
        let first = build()?;
        Ok(Reloading {
            what,
            paths,
            build: Box::new(build),
            state: Mutex::new((stamps, Arc::new(first))),
        })
    }

    /// The value for the files as they are now.
    pub fn current(&self) -> Arc<T> {
        let stamps: Vec<Stamp> = self.paths.iter().map(|p| stamp(p)).collect();
        let mut state = self.state.lock();
        if state.0 != stamps {
            state.0 = stamps;
            match (self.build)() {
                Ok(value) => {
                    tracing::info!(files = ?self.paths, "reloaded the {}", self.what);
                    state.1 = Arc::new(value);
                }
                Err(e) => tracing::warn!(
                    cause = %e,
                    "cannot reload the {}; keeping the previous one",
                    self.what
                ),
            }
        }
        state.1.clone()
    }
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.what)
            .field("paths", &self.paths)
            .finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_path_buf(),
        cause: e.to_string(),
    })
}

fn content(path: &Path, what: impl Into<String>) -> TlsError {
    TlsError::Content {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// Every certificate in a PEM file, in order (a chain or a CA bundle).
pub(super) fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| content(path, format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(content(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(super) fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| content(path, format!("no usable PEM private key: {e}")))
}

/// A certificate chain with its key, checked to match.
pub(super) fn certified_key(
    cert: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = certs(cert)?;
    let key = key(key_path)?;
    CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| content(key_path, format!("does not fit {}: {e}", cert.display())))
}

/// A CA bundle as trust anchors.
pub(super) fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path)? {
        roots
            .add(cert)
            .map_err(|e| content(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The revocation lists in a file: PEM (`X509 CRL` blocks) or one DER list.
pub(super) fn crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let pem = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| content(path, format!("bad PEM CRL: {e}")))?;
    match pem.is_empty() {
        true if bytes.is_empty() => Err(content(path, "empty CRL file")),
        true => Ok(vec![CertificateRevocationListDer::from(bytes)]),
        false => Ok(pem),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilds_only_when_a_file_changes_and_keeps_the_last_good_value() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("value");
        std::fs::write(&path, "1").expect("write");
        let builds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (p, b) = (path.clone(), builds.clone());
        let value = Reloading::new("test value", vec![path.clone()], move || {
            b.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let text = read(&p)?;
            String::from_utf8(text)
                .ok()
                .filter(|t| t.parse::<u32>().is_ok())
                .ok_or_else(|| content(&p, "not a number"))
        })
        .expect("first build");
        assert_eq!(*value.current(), "1");
        assert_eq!(*value.current(), "1");
        assert_eq!(builds.load(std::sync::atomic::Ordering::Relaxed), 1);

        std::fs::write(&path, "22").expect("write");
        assert_eq!(*value.current(), "22");
        std::fs::write(&path, "bad").expect("write");
        assert_eq!(
            *value.current(),
            "22",
            "a bad file keeps the last good value"
        );
        let after_bad = builds.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(*value.current(), "22");
        assert_eq!(
            builds.load(std::sync::atomic::Ordering::Relaxed),
            after_bad,
            "an unchanged bad file is not re-read on every call"
        );
    }
}
