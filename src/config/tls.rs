//! The transport security options (`--cert-file` … `--tls-max-version`):
//! read into [`crate::tls::Security`] and checked as etcd checks them.

use std::path::PathBuf;

use url::Url;

use super::{values, Config, ConfigError, Layers, Raw};
use crate::tls::{CipherSuite, Security, TlsInfo, TlsPolicy, TlsVersion};

/// Go's `strconv.ParseBool`, which etcd's bool flags use.
fn boolean(raw: &Raw) -> Result<bool, String> {
    match raw.text()?.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(format!("{other:?} is not a boolean (true or false)")),
    }
}

/// A path; empty means unset, as etcd's `""` defaults.
fn path(raw: &Raw) -> Result<Option<PathBuf>, String> {
    let text = raw.text()?.trim();
    Ok((!text.is_empty()).then(|| PathBuf::from(text)))
}

fn text(raw: &Raw) -> Result<Option<String>, String> {
    let text = raw.text()?.trim();
    Ok((!text.is_empty()).then(|| text.to_string()))
}

fn version(raw: &Raw) -> Result<Option<TlsVersion>, String> {
    let text = raw.text()?.trim();
    match text.is_empty() {
        true => Ok(None),
        false => TlsVersion::parse(text).map(Some),
    }
}

fn cipher_suites(raw: &Raw) -> Result<Vec<CipherSuite>, String> {
    let mut suites = Vec::new();
    for name in values::split_list(&raw.items()) {
        suites.extend(CipherSuite::parse(name)?);
    }
    Ok(suites)
}

impl Layers {
    /// Reads every TLS option; whatever no layer sets stays off.
    pub(super) fn security(&self) -> Result<Security, ConfigError> {
        let file = |key| Ok::<_, ConfigError>(self.get(key, path)?.flatten());
        let on = |key| Ok::<_, ConfigError>(self.get(key, boolean)?.unwrap_or(false));
        let word = |key| Ok::<_, ConfigError>(self.get(key, text)?.flatten());
        Ok(Security {
            client: TlsInfo {
                cert_file: file("cert_file")?,
                key_file: file("key_file")?,
                trusted_ca_file: file("trusted_ca_file")?,
                client_cert_auth: on("client_cert_auth")?,
                crl_file: file("client_crl_file")?,
                auto_tls: on("auto_tls")?,
                allowed_hostname: word("client_cert_allowed_hostname")?,
                ..TlsInfo::default()
            },
            peer: TlsInfo {
                cert_file: file("peer_cert_file")?,
                key_file: file("peer_key_file")?,
                trusted_ca_file: file("peer_trusted_ca_file")?,
                client_cert_auth: on("peer_client_cert_auth")?,
                crl_file: file("peer_crl_file")?,
                auto_tls: on("peer_auto_tls")?,
                allowed_cn: word("peer_cert_allowed_cn")?,
                allowed_hostname: word("peer_cert_allowed_hostname")?,
                skip_verify: false,
            },
            policy: TlsPolicy {
                cipher_suites: self
                    .get("cipher_suites", cipher_suites)?
                    .unwrap_or_default(),
                min_version: self.get("tls_min_version", version)?.flatten(),
                max_version: self.get("tls_max_version", version)?.flatten(),
            },
        })
    }
}

/// The flags naming one side's files, for error messages.
struct Side {
    cert: &'static str,
    key: &'static str,
    ca: &'static str,
    auth: &'static str,
    urls: &'static str,
    what: &'static str,
}

const CLIENT: Side = Side {
    cert: "cert-file",
    key: "key-file",
    ca: "trusted-ca-file",
    auth: "client-cert-auth",
    urls: "listen-client-urls",
    what: "client",
};

const PEER: Side = Side {
    cert: "peer-cert-file",
    key: "peer-key-file",
    ca: "peer-trusted-ca-file",
    auth: "peer-client-cert-auth",
    urls: "listen-peer-urls",
    what: "peer",
};

fn https(urls: &[Url]) -> Option<&Url> {
    urls.iter().find(|u| u.scheme() == "https")
}

fn validate_side(side: &Side, info: &TlsInfo, listen: &[Url]) -> Result<(), ConfigError> {
    match (&info.cert_file, &info.key_file) {
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                side.key,
                format!("is required with --{}", side.cert),
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                side.cert,
                format!("is required with --{}", side.key),
            ))
        }
        _ => {}
    }
    if let Some(url) = https(listen) {
        if info.is_empty() && !info.auto_tls {
            return Err(ConfigError::invalid(
                side.urls,
                format!(
                    "TLS key/cert (--{}, --{}) must be provided for {} url {} with HTTPS scheme",
                    side.cert,
                    side.key,
                    side.what,
                    values::display_url(url)
                ),
            ));
        }
    }
    if info.client_cert_auth && info.trusted_ca_file.is_none() {
        return Err(ConfigError::invalid(
            side.auth,
            format!(
                "needs --{} (the CA client certificates must chain to)",
                side.ca
            ),
        ));
    }
    Ok(())
}

impl Config {
    /// etcd's checks of the TLS options (see `validate`).
    pub(super) fn validate_security(&self) -> Result<(), ConfigError> {
        let security = &self.security;
        validate_side(&CLIENT, &security.client, &self.listen_client_urls)?;
        validate_side(&PEER, &security.peer, &self.listen_peer_urls)?;
        if security.peer.allowed_cn.is_some() && security.peer.allowed_hostname.is_some() {
            return Err(ConfigError::invalid(
                "peer-cert-allowed-cn",
                "cannot be set together with --peer-cert-allowed-hostname",
            ));
        }
        security
            .policy
            .validate()
            .map_err(|(flag, reason)| ConfigError::invalid(flag, reason))
    }

    /// Allowed TLS settings etcd warns about.
    pub(super) fn security_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let sides = [
            (
                &CLIENT,
                &self.security.client,
                &self.listen_client_urls,
                "auto-tls",
            ),
            (
                &PEER,
                &self.security.peer,
                &self.listen_peer_urls,
                "peer-auto-tls",
            ),
        ];
        for (side, info, listen, auto) in sides {
            if info.auto_tls && !info.is_empty() {
                warnings.push(format!(
                    "--{auto} ignored: --{} and --{} are given",
                    side.cert, side.key
                ));
            }
            if info.client_cert_auth {
                for url in listen.iter().filter(|u| u.scheme() == "http") {
                    warnings.push(format!(
                        "{} url {} is http while --{} is on; client certificates are not \
                         checked on it",
                        side.what,
                        values::display_url(url),
                        side.auth
                    ));
                }
            }
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: &[&str], env: &[(&str, &str)]) -> Result<(Config, Vec<String>), ConfigError> {
        let args = std::iter::once("cairn").chain(args.iter().copied());
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load_with_warnings(args, env)
    }

    const HTTPS: &[&str] = &[
        "--listen-client-urls=https://127.0.0.1:2379",
        "--advertise-client-urls=https://127.0.0.1:2379",
    ];

    #[test]
    fn every_layer_sets_the_tls_options() {
        let mut args = HTTPS.to_vec();
        args.extend([
            "--cert-file=/c.pem",
            "--key-file",
            "/k.pem",
            "--client-cert-auth=true",
            "--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_AES_128_GCM_SHA256",
            "--tls-max-version=TLS1.2",
            "--peer-cert-allowed-cn=member",
        ]);
        let env = [
            ("CAIRN_TRUSTED_CA_FILE", "/ca.pem"),
            ("CAIRN_PEER_AUTO_TLS", "1"),
        ];
        let (config, warnings) = load(&args, &env).expect("loads");
        let s = &config.security;
        assert_eq!(s.client.cert_file, Some(PathBuf::from("/c.pem")));
        assert_eq!(s.client.key_file, Some(PathBuf::from("/k.pem")));
        assert_eq!(s.client.trusted_ca_file, Some(PathBuf::from("/ca.pem")));
        assert!(s.client.client_cert_auth && !s.client.auto_tls);
        assert!(s.peer.auto_tls);
        assert_eq!(s.peer.allowed_cn.as_deref(), Some("member"));
        let names: Vec<&str> = s.policy.cipher_suites.iter().map(|c| c.name()).collect();
        assert_eq!(names, ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]);
        assert_eq!(s.policy.max_version, Some(TlsVersion::Tls12));
        assert_eq!(warnings, Vec::<String>::new());
    }

    #[test]
    fn etcds_rules_fail_with_the_flag_at_fault() {
        struct Case {
            args: &'static [&'static str],
            flag: &'static str,
            text: &'static str,
        }
        let cases = [
            Case {
                args: &[],
                flag: "listen-client-urls",
                text: "TLS key/cert (--cert-file, --key-file) must be provided for client url \
                       https://127.0.0.1:2379 with HTTPS scheme",
            },
            Case {
                args: &["--cert-file=/c.pem"],
                flag: "key-file",
                text: "is required with --cert-file",
            },
            Case {
                args: &[
                    "--cert-file=/c.pem",
                    "--key-file=/k.pem",
                    "--client-cert-auth=true",
                ],
                flag: "client-cert-auth",
                text: "needs --trusted-ca-file",
            },
            Case {
                args: &["--auto-tls=yes"],
                flag: "auto-tls",
                text: "is not a boolean",
            },
            Case {
                args: &[
                    "--auto-tls=true",
                    "--cipher-suites=TLS_RSA_WITH_RC4_128_SHA",
                ],
                flag: "cipher-suites",
                text: "not supported by cairn",
            },
            Case {
                args: &["--auto-tls=true", "--cipher-suites=bogus"],
                flag: "cipher-suites",
                text: "unexpected TLS cipher suite \"bogus\"",
            },
            Case {
                args: &["--auto-tls=true", "--tls-min-version=TLS1.0"],
                flag: "tls-min-version",
                text: "TLS1.0 is not supported by cairn",
            },
            Case {
                args: &[
                    "--auto-tls=true",
                    "--tls-min-version=TLS1.3",
                    "--tls-max-version=TLS1.2",
                ],
                flag: "tls-min-version",
                text: "is greater than max version",
            },
            Case {
                args: &[
                    "--auto-tls=true",
                    "--tls-min-version=TLS1.3",
                    "--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                ],
                flag: "cipher-suites",
                text: "cannot be configured when only TLS1.3",
            },
            Case {
                args: &[
                    "--auto-tls=true",
                    "--peer-cert-allowed-cn=a",
                    "--peer-cert-allowed-hostname=b",
                ],
                flag: "peer-cert-allowed-cn",
                text: "cannot be set together",
            },
            Case {
                args: &[
                    "--auto-tls=true",
                    "--listen-peer-urls=https://127.0.0.1:2380",
                    "--initial-advertise-peer-urls=https://127.0.0.1:2380",
                ],
                flag: "listen-peer-urls",
                text: "(--peer-cert-file, --peer-key-file) must be provided for peer url",
            },
        ];
        for case in cases {
            let mut args = HTTPS.to_vec();
            args.extend_from_slice(case.args);
            let err = load(&args, &[]).expect_err(case.text);
            assert_eq!(err.flag(), Some(case.flag), "{args:?}: {err}");
            assert!(err.to_string().contains(case.text), "{args:?}: {err}");
        }
    }

    #[test]
    fn etcds_warnings() {
        let (_, warnings) = load(
            &[
                "--auto-tls=true",
                "--cert-file=/c.pem",
                "--key-file=/k.pem",
                "--trusted-ca-file=/ca.pem",
                "--client-cert-auth=true",
            ],
            &[],
        )
        .expect("loads");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("--auto-tls ignored"), "{warnings:?}");
        assert!(warnings[1].contains("is http while --client-cert-auth is on"));
    }
}
