//! The dialling side: [`Connector`], the tower service tonic channels
//! connect through (`Endpoint::connect_with_connector`).
//!
//! `http://` URIs get plain TCP; `https://` ones TCP then TLS, presenting
//! the configured certificate (peers: `--peer-cert-file`) and checking the
//! remote's against the trusted CA (`--peer-trusted-ca-file`) and the URI's
//! host, as Go's HTTP client does for etcd's peers. The TLS settings are
//! read from their files on every connect (peer links connect rarely), so a
//! rotated certificate is used from the next connection on. Auto-TLS
//! certificates are self-signed and not verified (etcd's
//! `InsecureSkipVerify`), and neither is the member's own certificate when
//! it dials its own client API ([`Connector::loopback`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use super::{files, TlsError, TlsInfo, TlsPolicy};

/// Dials `http://` and `https://` URIs for tonic channels.
#[derive(Clone, Default)]
pub struct Connector {
    /// None: plain TCP only (an `https://` URI is then an error).
    tls: Option<Arc<Settings>>,
}

struct Settings {
    info: TlsInfo,
    policy: TlsPolicy,
}

impl Connector {
    /// A connector for `http://` URIs only.
    pub fn plain() -> Connector {
        Connector::default()
    }

    /// A connector using `info` for `https://` URIs. The files are read
    /// once here, so a bad one fails start-up.
    pub fn new(info: &TlsInfo, policy: &TlsPolicy) -> Result<Connector, TlsError> {
        let settings = Settings {
            info: info.clone(),
            policy: policy.clone(),
        };
        settings.config()?;
        Ok(Connector {
            tls: Some(Arc::new(settings)),
        })
    }

    /// A connector with which the member dials its own client listener:
    /// it presents the member's own certificate (accepted when
    /// `--client-cert-auth` is on and that certificate chains to the
    /// trusted CA, as etcd's gateway relies on) and does not verify the
    /// remote's, which is its own.
    pub fn loopback(info: &TlsInfo, policy: &TlsPolicy) -> Result<Connector, TlsError> {
        let info = TlsInfo {
            skip_verify: true,
            ..info.clone()
        };
        Connector::new(&info, policy)
    }

    async fn connect(self, uri: http::Uri) -> io::Result<TokioIo<ClientStream>> {
        let invalid =
            |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: {what}"));
        let host = uri.host().ok_or_else(|| invalid("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        if !https {
            return Ok(TokioIo::new(ClientStream::Plain(tcp)));
        }
        let Some(settings) = &self.tls else {
            return Err(invalid(
                "https:// needs TLS settings (a certificate and a trusted CA)",
            ));
        };
        let config = settings
            .config()
            .map_err(|e| io::Error::other(e.to_string()))?;
        let name =
            ServerName::try_from(host).map_err(|e| invalid(&format!("bad server name: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        Ok(TokioIo::new(ClientStream::Tls(Box::new(tls))))
    }
}

impl Settings {
    /// A client configuration from the files as they are now.
    fn config(&self) -> Result<ClientConfig, TlsError> {
        let provider = super::provider(&self.policy);
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&self.policy.versions())?;
        let builder = match (&self.info.trusted_ca_file, self.info.skip_verify) {
            (_, true) | (None, false) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider.clone()))),
            (Some(ca), false) => builder.with_root_certificates(files::roots(ca)?),
        };
        let mut config = match (&self.info.cert_file, &self.info.key_file) {
            (Some(cert), Some(key)) => {
                let chain = files::certs(cert)?;
                let key = files::key(key)?;
                builder.with_client_auth_cert(chain, key)?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<ClientStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<ClientStream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

/// Accepts any server certificate, still checking the handshake signatures
/// with it: for self-signed auto-TLS certificates (no CA to check against)
/// and the member's own listener.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A dialled connection: plain TCP, or TLS over it.
pub type ClientStream = super::MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>;
