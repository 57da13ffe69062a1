//! `--cipher-suites`, `--tls-min-version` and `--tls-max-version`: etcd's
//! names, mapped onto what rustls offers.
//!
//! etcd takes Go's cipher suite names; Go applies the list to TLS 1.2 only
//! (TLS 1.3 suites are always on), and so does cairn. rustls implements the
//! six ECDHE AEAD suites of TLS 1.2; Go's other names (CBC, RSA key
//! exchange, RC4, 3DES) are refused at start-up with a line saying so, and a
//! name Go does not know gets etcd's `unexpected TLS cipher suite` error.
//! Likewise `TLS1.0` and `TLS1.1` are known versions rustls does not speak.

use rustls::crypto::CryptoProvider;
use rustls::{CipherSuite as Suite, SupportedProtocolVersion};

/// A TLS 1.2 cipher suite cairn can use, by its Go (etcd) name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CipherSuite(&'static str);

/// Go's names of the suites rustls implements, and their IANA codes.
const SUPPORTED: &[(&str, Suite)] = &[
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        Suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        Suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        Suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        Suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        Suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        Suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        Suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        Suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// TLS 1.3 suites: Go knows their names and ignores them in the list.
const TLS13_NAMES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Suites Go (and so etcd) knows that rustls does not implement.
const UNSUPPORTED: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

impl CipherSuite {
    /// One `--cipher-suites` item; `Ok(None)` for a TLS 1.3 name (always on).
    pub fn parse(name: &str) -> Result<Option<CipherSuite>, String> {
        let name = name.trim();
        if let Some((known, _)) = SUPPORTED.iter().find(|(n, _)| *n == name) {
            return Ok(Some(CipherSuite(known)));
        }
        if TLS13_NAMES.contains(&name) {
            return Ok(None);
        }
        if UNSUPPORTED.contains(&name) {
            let names: Vec<&str> = SUPPORTED.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "TLS cipher suite {name:?} is not supported by cairn (rustls offers only \
                 ECDHE AEAD suites: {})",
                names.join(", ")
            ));
        }
        Err(format!("unexpected TLS cipher suite {name:?}"))
    }

    pub fn name(&self) -> &'static str {
        self.0
    }

    fn code(&self) -> Option<Suite> {
        SUPPORTED
            .iter()
            .find(|(n, _)| *n == self.0)
            .map(|(_, code)| *code)
    }
}

/// A TLS protocol version rustls speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// etcd's names: `TLS1.2`, `TLS1.3` (`TLS1.0` and `TLS1.1` are refused).
    pub fn parse(name: &str) -> Result<TlsVersion, String> {
        match name.trim() {
            "TLS1.2" => Ok(TlsVersion::Tls12),
            "TLS1.3" => Ok(TlsVersion::Tls13),
            old @ ("TLS1.0" | "TLS1.1") => Err(format!(
                "{old} is not supported by cairn (rustls speaks TLS1.2 and TLS1.3 only)"
            )),
            other => Err(format!(
                "unexpected TLS version {other:?} (use TLS1.2 or TLS1.3)"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "TLS1.2",
            TlsVersion::Tls13 => "TLS1.3",
        }
    }
}

/// What both the client and peer sides share.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsPolicy {
    /// TLS 1.2 suites allowed, in order; empty: every suite rustls has.
    pub cipher_suites: Vec<CipherSuite>,
    /// Lowest version accepted; None: TLS 1.2.
    pub min_version: Option<TlsVersion>,
    /// Highest version accepted; None: TLS 1.3.
    pub max_version: Option<TlsVersion>,
}

impl TlsPolicy {
    /// etcd's cross-checks: min not above max, and no suite list when only
    /// TLS 1.3 is allowed (TLS 1.3 suites are not configurable).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let (min, max) = (self.min(), self.max());
        if min > max {
            return Err((
                "tls-min-version",
                format!(
                    "min version ({}) is greater than max version ({})",
                    min.name(),
                    max.name()
                ),
            ));
        }
        if !self.cipher_suites.is_empty() && min == TlsVersion::Tls13 {
            return Err((
                "cipher-suites",
                "cipher suites cannot be configured when only TLS1.3 or greater is supported"
                    .to_string(),
            ));
        }
        Ok(())
    }

    fn min(&self) -> TlsVersion {
        self.min_version.unwrap_or(TlsVersion::Tls12)
    }

    fn max(&self) -> TlsVersion {
        self.max_version.unwrap_or(TlsVersion::Tls13)
    }

    /// The protocol versions to offer.
    pub(super) fn versions(&self) -> Vec<&'static SupportedProtocolVersion> {
        let mut versions = Vec::new();
        if (self.min()..=self.max()).contains(&TlsVersion::Tls13) {
            versions.push(&rustls::version::TLS13);
        }
        if (self.min()..=self.max()).contains(&TlsVersion::Tls12) {
            versions.push(&rustls::version::TLS12);
        }
        versions
    }

    /// Keeps only the listed TLS 1.2 suites (and every TLS 1.3 one).
    pub(super) fn restrict(&self, provider: &mut CryptoProvider) {
        if self.cipher_suites.is_empty() {
            return;
        }
        let wanted: Vec<Suite> = self
            .cipher_suites
            .iter()
            .filter_map(CipherSuite::code)
            .collect();
        provider
            .cipher_suites
            .retain(|s| s.version() == &rustls::version::TLS13 || wanted.contains(&s.suite()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_etcd_errors_or_suites() {
        struct Case {
            name: &'static str,
            ok: Option<Option<&'static str>>,
            error: &'static str,
        }
        let cases = [
            Case {
                name: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                ok: Some(Some("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")),
                error: "",
            },
            Case {
                name: "TLS_AES_128_GCM_SHA256",
                ok: Some(None),
                error: "",
            },
            Case {
                name: "TLS_RSA_WITH_AES_128_CBC_SHA",
                ok: None,
                error: "not supported by cairn",
            },
            Case {
                name: "not-a-cipher",
                ok: None,
                error: "unexpected TLS cipher suite \"not-a-cipher\"",
            },
        ];
        for case in cases {
            match (CipherSuite::parse(case.name), case.ok) {
                (Ok(got), Some(want)) => assert_eq!(got.map(|s| s.name()), want, "{}", case.name),
                (Err(e), None) => assert!(e.contains(case.error), "{}: {e}", case.name),
                (got, want) => panic!("{}: got {got:?}, want {want:?}", case.name),
            }
        }
    }

    #[test]
    fn versions_and_their_cross_checks() {
        assert!(TlsVersion::parse("TLS1.1")
            .expect_err("refused")
            .contains("not supported"));
        assert!(TlsVersion::parse("SSL3")
            .expect_err("refused")
            .contains("unexpected"));
        let inverted = TlsPolicy {
            min_version: Some(TlsVersion::Tls13),
            max_version: Some(TlsVersion::Tls12),
            ..TlsPolicy::default()
        };
        assert!(inverted.validate().is_err());
        let only13 = TlsPolicy {
            min_version: Some(TlsVersion::Tls13),
            cipher_suites: vec![CipherSuite("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")],
            ..TlsPolicy::default()
        };
        assert_eq!(only13.validate().map_err(|e| e.0), Err("cipher-suites"));
        let only12 = TlsPolicy {
            max_version: Some(TlsVersion::Tls12),
            ..TlsPolicy::default()
        };
        assert_eq!(only12.versions(), vec![&rustls::version::TLS12]);

        let mut provider = rustls::crypto::ring::default_provider();
        TlsPolicy {
            cipher_suites: vec![CipherSuite("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384")],
            ..TlsPolicy::default()
        }
        .restrict(&mut provider);
        let tls12: Vec<Suite> = provider
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .map(|s| s.suite())
            .collect();
        assert_eq!(tls12, vec![Suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]);
    }
}
