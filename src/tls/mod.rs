//! Transport security: TLS for the client listeners, the peer listeners and
//! the peer links, with etcd's flags and behaviour, on rustls (ring).
//!
//! ```text
//!  client listener:  TCP accept ─▶ Acceptor::accept ─▶ ServerStream ─▶ FixAuthority ─▶ hyper/h2 ─▶ tonic
//!                                  (https:// URLs only; a failed handshake is one warn line, and only
//!                                   that connection is dropped)
//!  peer listener:    TCP accept ─▶ Acceptor::accept ─▶ ServerStream ─▶ hyper/h2 ─▶ peer service
//!  peer link:        Connector (tower Service<Uri>): TCP connect ─▶ TLS for https:// ─▶ tonic Channel
//! ```
//!
//! [`TlsInfo`] holds one side's settings (etcd's `transport.TLSInfo`: the
//! client side from `--cert-file` …, the peer side from `--peer-cert-file`
//! …) and [`TlsPolicy`] what both sides share (`--cipher-suites`,
//! `--tls-min-version`, `--tls-max-version`); config fills them, this module
//! turns them into rustls configurations:
//!
//! * [`server::Acceptor`] terminates TLS on an accepted connection. Its
//!   certificate resolver and client-certificate verifier check the files'
//!   modification times on every handshake and re-read them when they
//!   change (etcd reads them per handshake), so a rotated certificate, CA or
//!   CRL takes effect on the next connection, with no restart. A file that
//!   fails to load then keeps the previous one in use, with a warning.
//! * [`client::Connector`] dials peers (and the member's own client API, for
//!   Lock and Election): TCP, then TLS for `https://` URLs, presenting the
//!   peer certificate and checking the remote's against the trusted CA.
//! * [`auto`] makes `--auto-tls` / `--peer-auto-tls` self-signed
//!   certificates with rcgen, under `<data-dir>/fixtures/`, as etcd does.
//!
//! etcd's rules kept here: `--client-cert-auth` requires and verifies a
//! client certificate against `--trusted-ca-file`; `--client-crl-file`
//! refuses revoked ones; `--peer-cert-allowed-cn` / `--peer-cert-allowed-hostname`
//! refuse peer certificates whose Common Name / names differ. Where cairn
//! departs: rustls speaks only TLS 1.2 and 1.3 and only AEAD cipher suites,
//! so `TLS1.0`, `TLS1.1` and CBC or RSA-key-exchange suites are start-up
//! errors rather than accepted ([`policy`]).

pub mod auto;
pub mod client;
mod files;
pub mod policy;
pub mod server;
mod x509;

use std::path::PathBuf;

pub use policy::{CipherSuite, TlsPolicy, TlsVersion};

/// One side's TLS settings (client or peer), as etcd's `transport.TLSInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsInfo {
    /// PEM certificate chain this member presents (`--cert-file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of that certificate (`--key-file`).
    pub key_file: Option<PathBuf>,
    /// PEM CA bundle that certificates presented to this member must chain
    /// to (`--trusted-ca-file`); for peers also what a remote member's
    /// server certificate must chain to.
    pub trusted_ca_file: Option<PathBuf>,
    /// Require and verify a certificate from every connecting client
    /// (`--client-cert-auth`).
    pub client_cert_auth: bool,
    /// PEM or DER certificate revocation list (`--client-crl-file`).
    pub crl_file: Option<PathBuf>,
    /// Make a self-signed certificate when none is given (`--auto-tls`).
    pub auto_tls: bool,
    /// Peers only: the Common Name a peer's certificate must carry.
    pub allowed_cn: Option<String>,
    /// Peers only: a name a peer's certificate must be valid for.
    pub allowed_hostname: Option<String>,
    /// Set for auto-TLS certificates: a connecting member does not verify
    /// the remote's (self-signed) certificate, as etcd's
    /// `InsecureSkipVerify` for auto-TLS.
    pub skip_verify: bool,
}

impl TlsInfo {
    /// etcd's `TLSInfo.Empty`: no certificate and no key given.
    pub fn is_empty(&self) -> bool {
        self.cert_file.is_none() && self.key_file.is_none()
    }
}

/// Every TLS setting of a member.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Security {
    /// The client listeners (`--cert-file` …).
    pub client: TlsInfo,
    /// The peer listeners and links (`--peer-cert-file` …).
    pub peer: TlsInfo,
    /// Cipher suites and protocol versions, for both.
    pub policy: TlsPolicy,
}

/// Why a TLS configuration could not be built (at start-up; later reloads
/// keep the previous files and only warn).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {cause}")]
    Read { path: PathBuf, cause: String },
    #[error("{path}: {what}")]
    Content { path: PathBuf, what: String },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0}")]
    Verifier(String),
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
}

/// A connection that is plain TCP or TLS over it (`S`: a tokio-rustls
/// server or client stream), read and written alike.
pub enum MaybeTls<S> {
    Plain(tokio::net::TcpStream),
    Tls(Box<S>),
}

macro_rules! either {
    ($self:expr, $method:ident($($arg:expr),*)) => {
        match $self.get_mut() {
            MaybeTls::Plain(s) => std::pin::Pin::new(s).$method($($arg),*),
            MaybeTls::Tls(s) => std::pin::Pin::new(s.as_mut()).$method($($arg),*),
        }
    };
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for MaybeTls<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        either!(self, poll_read(cx, buf))
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for MaybeTls<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        either!(self, poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        either!(self, poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        either!(self, poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        either!(self, poll_shutdown(cx))
    }
}

/// The rustls crypto provider cairn uses everywhere (ring), restricted to
/// the configured cipher suites.
fn provider(policy: &TlsPolicy) -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    policy.restrict(&mut provider);
    std::sync::Arc::new(provider)
}

/// The client listeners' TLS, ready to serve.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// For `https://` client URLs; None when every one is `http://`.
    pub acceptor: Option<server::Acceptor>,
    /// How the member dials its own first client URL (Lock, Election):
    /// None for `http://`.
    pub loopback: Option<client::Connector>,
}

/// The peer side's TLS, ready to serve and dial.
#[derive(Clone, Default)]
pub struct PeerTls {
    /// For `https://` peer listen URLs; None when every one is `http://`.
    pub acceptor: Option<server::Acceptor>,
    /// Dials the other members (TLS for their `https://` URLs).
    pub connector: client::Connector,
}

/// Builds both sides from the configuration, once at start-up: makes the
/// auto-TLS certificates (under `<data_dir>/fixtures/`) and reads every
/// file, so a missing or bad one fails start-up with its path.
pub fn setup(
    security: &Security,
    data_dir: &std::path::Path,
    listen_client: &[url::Url],
    listen_peer: &[url::Url],
) -> Result<(ClientTls, PeerTls), TlsError> {
    let hosts = |urls: &[url::Url]| -> Vec<String> {
        urls.iter()
            .filter_map(|u| u.host_str())
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
            .collect()
    };
    let https = |urls: &[url::Url]| urls.iter().any(|u| u.scheme() == "https");
    let policy = &security.policy;
    let (mut client, mut peer) = (security.client.clone(), security.peer.clone());
    auto::apply(
        &mut client,
        &data_dir.join("fixtures/client"),
        &hosts(listen_client),
    )?;
    auto::apply(
        &mut peer,
        &data_dir.join("fixtures/peer"),
        &hosts(listen_peer),
    )?;

    let client_tls = match https(listen_client) {
        true => ClientTls {
            acceptor: Some(server::Acceptor::new(
                &client,
                policy,
                server::Side::Client,
            )?),
            loopback: Some(client::Connector::loopback(&client, policy)?),
        },
        false => ClientTls::default(),
    };
    let peer_tls = PeerTls {
        acceptor: match https(listen_peer) {
            true => Some(server::Acceptor::new(&peer, policy, server::Side::Peer)?),
            false => None,
        },
        connector: match peer.is_empty() {
            true => client::Connector::plain(),
            false => {
                if peer.trusted_ca_file.is_none() && !peer.skip_verify {
                    tracing::warn!(
                        "peer TLS without --peer-trusted-ca-file: the other members' \
                         certificates are not verified"
                    );
                }
                client::Connector::new(&peer, policy)?
            }
        },
    };
    Ok((client_tls, peer_tls))
}
