//! The listening side: [`Acceptor`] turns an accepted TCP connection into a
//! [`ServerStream`] (TLS terminated, or plain for `http://` listeners), and
//! [`incoming`] does that for a whole listener, each handshake on a task of
//! its own so a slow or hostile client never holds up the others.
//!
//! A connection that fails its handshake is logged once, at warn level, and
//! dropped; the listener carries on. A client that speaks plaintext to an
//! `https://` listener is recognised by its first byte (a TLS handshake
//! record starts with 22) and told so in the log; an HTTP/1 one also gets
//! Go's `400 Client sent an HTTP request to an HTTPS server`, as from etcd.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::files::{self, Reloading};
use super::{TlsError, TlsInfo, TlsPolicy};

/// How long a client has to finish its TLS handshake (Go's default for
/// clients; etcd sets none on the server, which lets idle sockets pile up).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in flight per listener before accepting pauses.
const MAX_PENDING_HANDSHAKES: usize = 256;

/// Which listener an acceptor serves, for log lines and error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Peer,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Peer => "peer",
        }
    }
}

/// Terminates TLS for one kind of listener.
#[derive(Clone)]
pub struct Acceptor {
    inner: tokio_rustls::TlsAcceptor,
    side: Side,
}

impl Acceptor {
    /// Builds the acceptor from `info`, reading its files once now (an error
    /// fails start-up) and again whenever they change.
    pub fn new(info: &TlsInfo, policy: &TlsPolicy, side: Side) -> Result<Acceptor, TlsError> {
        let (Some(cert), Some(key)) = (info.cert_file.clone(), info.key_file.clone()) else {
            return Err(TlsError::Verifier(format!(
                "{} TLS needs both a certificate and a key file",
                side.name()
            )));
        };
        let provider = super::provider(policy);
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&policy.versions())?;
        let builder = match info.client_cert_auth {
            true => builder.with_client_cert_verifier(Arc::new(ClientCerts::new(
                info,
                provider.clone(),
                side,
            )?)),
            false => builder.with_no_client_auth(),
        };
        let keys = Reloading::new(
            match side {
                Side::Client => "client TLS certificate",
                Side::Peer => "peer TLS certificate",
            },
            vec![cert.clone(), key.clone()],
            move || files::certified_key(&cert, &key, &provider),
        )?;
        let mut config = builder.with_cert_resolver(Arc::new(CertFiles(keys)));
        // gRPC over HTTP/2; HTTP/1.1 for the JSON gateway and /health.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Acceptor {
            inner: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            side,
        })
    }

    /// The TLS handshake on one accepted connection, bounded by
    /// [`HANDSHAKE_TIMEOUT`]. The error says why in words for the log.
    pub async fn accept(&self, tcp: TcpStream) -> Result<ServerStream, String> {
        let handshake = async {
            let mut first = [0u8; 1];
            match tcp.peek(&mut first).await {
                Ok(0) => return Err("closed before the TLS handshake".to_string()),
                Ok(_) if first[0] != TLS_HANDSHAKE_RECORD => {
                    return Err(refuse_plaintext(tcp).await);
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
            let tls = self.inner.accept(tcp).await.map_err(|e| describe(&e))?;
            Ok(ServerStream::tls(tls))
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no TLS handshake within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            )),
        }
    }
}

/// A failed handshake in words for the log.
fn describe(e: &io::Error) -> String {
    use rustls::AlertDescription as Alert;
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return e.to_string();
    };
    match tls {
        rustls::Error::AlertReceived(
            alert @ (Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::UnsupportedCertificate),
        ) => format!(
            "the client does not accept this member's certificate (it sent {alert:?}); \
             check its CA bundle and the certificate's names"
        ),
        rustls::Error::NoCertificatesPresented => {
            "the client presented no certificate (client certificate authentication is on)".into()
        }
        rustls::Error::InvalidCertificate(why) => {
            format!("the client's certificate is refused: {why}")
        }
        other => other.to_string(),
    }
}

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE_RECORD: u8 = 22;

/// Answers a plaintext client as Go's HTTP server (and so etcd) does when
/// it looks like HTTP/1, then closes; returns the log reason.
async fn refuse_plaintext(mut tcp: TcpStream) -> String {
    let mut head = [0u8; 24];
    let n = tcp.peek(&mut head).await.unwrap_or(0);
    let head = &head[..n];
    if head.starts_with(b"PRI * HTTP/2") {
        return "plaintext HTTP/2 (gRPC) client on a TLS listener; use https:// and TLS".into();
    }
    let http1 = ["GET ", "POST ", "PUT ", "HEAD ", "DELETE ", "OPTIONS "]
        .iter()
        .any(|m| head.starts_with(m.as_bytes()));
    if http1 {
        let _ = tcp
            .write_all(
                b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n",
            )
            .await;
        let _ = tcp.shutdown().await;
        return "plaintext HTTP/1 client on a TLS listener; answered 400".into();
    }
    "the client did not start a TLS handshake (plaintext on a TLS listener?)".into()
}

/// Accepts TLS (when `acceptor` is given) on every connection of `tcp`.
///
/// Without an acceptor connections pass straight through. With one, each
/// handshake runs on a task of its own and only finished handshakes are
/// yielded; failures are logged (warn) and dropped. Accepting stops when
/// the returned stream is dropped.
pub fn incoming<S>(
    tcp: S,
    acceptor: Option<Acceptor>,
) -> Pin<Box<dyn Stream<Item = io::Result<ServerStream>> + Send>>
where
    S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
{
    // Small writes (raft heartbeats, unary responses) go out at once.
    let nodelay = |stream: TcpStream| {
        let _ = stream.set_nodelay(true);
        stream
    };
    let Some(acceptor) = acceptor else {
        return Box::pin(
            tcp.map(move |accepted| accepted.map(|s| ServerStream::plain(nodelay(s)))),
        );
    };
    let (tx, rx) = tokio::sync::mpsc::channel(MAX_PENDING_HANDSHAKES);
    tokio::spawn(async move {
        let mut tcp = std::pin::pin!(tcp);
        let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
        let refusals = Arc::new(Refusals::default());
        loop {
            let permit = tokio::select! {
                permit = pending.clone().acquire_owned() => permit,
                _ = tx.closed() => return,
            };
            let accepted = tokio::select! {
                accepted = tcp.next() => accepted,
                _ = tx.closed() => return,
            };
            let stream = match accepted {
                Some(Ok(stream)) => nodelay(stream),
                Some(Err(e)) => {
                    tracing::warn!(cause = %e, "cannot accept a {} connection", acceptor.side.name());
                    continue;
                }
                None => return,
            };
            let (acceptor, tx, refusals) = (acceptor.clone(), tx.clone(), refusals.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let remote = stream.peer_addr().ok();
                match acceptor.accept(stream).await {
                    Ok(stream) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Err(cause) => refusals.report(acceptor.side, remote, cause),
                }
            });
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// How long a refusal is logged only once per client address and cause: a
/// gRPC client retries its connection with backoff, and each attempt would
/// otherwise add a line.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The refusals logged recently, to log each (client address, cause) once
/// per [`REFUSAL_LOG_INTERVAL`]; repeats go to debug level.
#[derive(Default)]
struct Refusals(
    parking_lot::Mutex<
        std::collections::HashMap<(Option<std::net::IpAddr>, String), std::time::Instant>,
    >,
);

impl Refusals {
    fn report(&self, side: Side, remote: Option<SocketAddr>, cause: String) {
        let key = (remote.map(|a| a.ip()), cause);
        match self.first_in_interval(key.clone(), std::time::Instant::now()) {
            true => tracing::warn!(
                remote = ?remote,
                cause = %key.1,
                "refused a {} connection: TLS handshake failed",
                side.name()
            ),
            false => tracing::debug!(
                remote = ?remote,
                cause = %key.1,
                "refused a {} connection: TLS handshake failed (again)",
                side.name()
            ),
        }
    }

    /// Whether `key` was not reported within the interval before `now`
    /// (and records it if so).
    fn first_in_interval(
        &self,
        key: (Option<std::net::IpAddr>, String),
        now: std::time::Instant,
    ) -> bool {
        let mut seen = self.0.lock();
        // Bounded: a scan from many addresses cannot grow it for ever.
        if seen.len() >= MAX_REFUSALS_REMEMBERED {
            seen.retain(|_, at| now.duration_since(*at) < REFUSAL_LOG_INTERVAL);
            if seen.len() >= MAX_REFUSALS_REMEMBERED {
                seen.clear();
            }
        }
        match seen.get(&key) {
            Some(at) if now.duration_since(*at) < REFUSAL_LOG_INTERVAL => false,
            _ => {
                seen.insert(key, now);
                true
            }
        }
    }
}

/// How many (address, cause) pairs [`Refusals`] remembers at most.
const MAX_REFUSALS_REMEMBERED: usize = 1024;

/// What a connection tells the services about itself (tonic puts it in
/// every request's extensions): the TCP addresses and, for a TLS client
/// that presented a verified certificate, its subject Common Name (etcd
/// takes it as the user name when auth is on and no token is given).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub tcp: TcpConnectInfo,
    pub common_name: Option<String>,
}

/// An accepted connection: plain TCP, or TLS over it.
pub struct ServerStream {
    io: super::MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>,
    info: ConnInfo,
}

impl ServerStream {
    pub fn plain(tcp: TcpStream) -> ServerStream {
        ServerStream {
            info: ConnInfo {
                tcp: tcp.connect_info(),
                common_name: None,
            },
            io: super::MaybeTls::Plain(tcp),
        }
    }

    fn tls(tls: tokio_rustls::server::TlsStream<TcpStream>) -> ServerStream {
        let (tcp, session) = tls.get_ref();
        let common_name = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(super::x509::common_name);
        ServerStream {
            info: ConnInfo {
                tcp: tcp.connect_info(),
                common_name,
            },
            io: super::MaybeTls::Tls(Box::new(tls)),
        }
    }

    /// The remote address, when the socket still knows it.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.info.tcp.remote_addr()
    }
}

impl Connected for ServerStream {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The server certificate, re-read when its files change.
#[derive(Debug)]
struct CertFiles(Reloading<CertifiedKey>);

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

/// `--client-cert-auth` / `--peer-client-cert-auth`: a certificate is
/// required and must chain to the trusted CA, not be revoked by the CRL,
/// and (peers) carry the allowed Common Name or host name. The CA and CRL
/// are re-read when their files change.
#[derive(Debug)]
struct ClientCerts {
    verifier: Reloading<Arc<dyn ClientCertVerifier>>,
    allowed_cn: Option<String>,
    allowed_hostname: Option<String>,
    /// Which listener, to name its flags in refusals.
    side: Side,
}

impl ClientCerts {
    fn new(
        info: &TlsInfo,
        provider: Arc<rustls::crypto::CryptoProvider>,
        side: Side,
    ) -> Result<ClientCerts, TlsError> {
        let Some(ca) = info.trusted_ca_file.clone() else {
            return Err(TlsError::Verifier(format!(
                "{} client certificate authentication needs a trusted CA file",
                side.name()
            )));
        };
        let crl = info.crl_file.clone();
        let mut paths = vec![ca.clone()];
        paths.extend(crl.clone());
        let verifier = Reloading::new(
            match side {
                Side::Client => "client trusted CA and CRL",
                Side::Peer => "peer trusted CA and CRL",
            },
            paths,
            move || {
                let roots = Arc::new(files::roots(&ca)?);
                let mut builder =
                    WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
                if let Some(crl) = &crl {
                    // etcd refuses a certificate whose serial a CRL lists;
                    // certificates of a CA without a list are not refused.
                    builder = builder
                        .with_crls(files::crls(crl)?)
                        .allow_unknown_revocation_status();
                }
                builder
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))
            },
        )?;
        Ok(ClientCerts {
            verifier,
            allowed_cn: info.allowed_cn.clone(),
            allowed_hostname: info.allowed_hostname.clone(),
            side,
        })
    }
}

/// A certificate refused by an etcd rule rustls does not know.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

fn refused(why: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(Refused(why)),
    )))
}

impl ClientCertVerifier for ClientCerts {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: Go clients then send their certificate whatever its
        // issuer, and a wrong one is refused with a clear reason.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified =
            self.verifier
                .current()
                .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(allowed) = &self.allowed_cn {
            let cn = super::x509::common_name(end_entity);
            if cn.as_deref() != Some(allowed.as_str()) {
                return Err(refused(format!(
                    "certificate CommonName {cn:?} is not the allowed {allowed:?} \
                     (--peer-cert-allowed-cn)"
                )));
            }
        }
        if let Some(host) = &self.allowed_hostname {
            if !super::x509::valid_for(end_entity, host) {
                return Err(refused(format!(
                    "certificate is not valid for the allowed host name {host:?} \
                     (--{}-cert-allowed-hostname)",
                    self.side.name()
                )));
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier
            .current()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier
            .current()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier.current().supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::client::Connector;
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
    use std::path::{Path, PathBuf};

    /// A CA written to `<name>-ca.pem`.
    fn ca(dir: &Path, name: &str) -> (Issuer<'static, KeyPair>, PathBuf) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        let cert = params.self_signed(&key).expect("CA");
        let path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&path, cert.pem()).expect("write");
        (Issuer::new(params, key), path)
    }

    /// A certificate for 127.0.0.1 with Common Name `cn`: (cert, key) files.
    fn leaf(dir: &Path, issuer: &Issuer<'static, KeyPair>, cn: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, issuer).expect("sign");
        let paths = (
            dir.join(format!("{cn}.pem")),
            dir.join(format!("{cn}-key.pem")),
        );
        std::fs::write(&paths.0, cert.pem()).expect("write");
        std::fs::write(&paths.1, key.serialize_pem()).expect("write");
        paths
    }

    /// One handshake: the server's outcome (the connection's Common Name,
    /// or the cause it logs) for a client with `client`'s settings.
    async fn handshake(acceptor: &Acceptor, client: TlsInfo) -> Result<Option<String>, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let dial = tokio::spawn(async move {
            let mut connector = Connector::new(&client, &TlsPolicy::default()).expect("client");
            let uri: http::Uri = format!("https://{addr}").parse().expect("uri");
            // Only the server's side is judged here.
            let _ = tower_service::Service::call(&mut connector, uri).await;
        });
        let (tcp, _) = listener.accept().await.expect("accept");
        let accepted = acceptor.accept(tcp).await;
        let _ = dial.await;
        accepted.map(|stream| stream.connect_info().common_name)
    }

    #[test]
    fn a_repeated_refusal_is_logged_once_an_interval() {
        let refusals = Refusals::default();
        let t0 = std::time::Instant::now();
        let key = |ip: [u8; 4], cause: &str| (Some(std::net::IpAddr::from(ip)), cause.to_string());
        assert!(refusals.first_in_interval(key([127, 0, 0, 1], "plaintext"), t0));
        assert!(!refusals.first_in_interval(key([127, 0, 0, 1], "plaintext"), t0));
        assert!(refusals.first_in_interval(key([127, 0, 0, 1], "no certificate"), t0));
        assert!(refusals.first_in_interval(key([127, 0, 0, 2], "plaintext"), t0));
        let later = t0 + REFUSAL_LOG_INTERVAL;
        assert!(refusals.first_in_interval(key([127, 0, 0, 1], "plaintext"), later));
        for i in 0..(2 * MAX_REFUSALS_REMEMBERED) {
            let _ = refusals.first_in_interval(key([127, 0, 0, 3], &i.to_string()), later);
        }
        assert!(refusals.0.lock().len() <= MAX_REFUSALS_REMEMBERED);
    }

    #[tokio::test]
    async fn client_certificates_are_checked_and_their_common_name_is_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let (issuer, ca_pem) = ca(d, "main");
        let (other, other_pem) = ca(d, "other");
        let (cert, key) = leaf(d, &issuer, "n1");
        let alice = leaf(d, &issuer, "alice");
        let mallory = leaf(d, &other, "mallory");
        let info = TlsInfo {
            cert_file: Some(cert),
            key_file: Some(key),
            trusted_ca_file: Some(ca_pem.clone()),
            client_cert_auth: true,
            ..TlsInfo::default()
        };
        let acceptor = Acceptor::new(&info, &TlsPolicy::default(), Side::Client).expect("acceptor");
        let client = |pair: Option<&(PathBuf, PathBuf)>, trusts: &PathBuf| TlsInfo {
            trusted_ca_file: Some(trusts.clone()),
            cert_file: pair.map(|p| p.0.clone()),
            key_file: pair.map(|p| p.1.clone()),
            ..TlsInfo::default()
        };

        let ok = handshake(&acceptor, client(Some(&alice), &ca_pem)).await;
        assert_eq!(ok, Ok(Some("alice".to_string())));
        let none = handshake(&acceptor, client(None, &ca_pem)).await;
        assert!(
            none.as_ref()
                .is_err_and(|e| e.contains("presented no certificate")),
            "{none:?}"
        );
        let wrong = handshake(&acceptor, client(Some(&mallory), &ca_pem)).await;
        assert!(
            wrong
                .as_ref()
                .is_err_and(|e| e.contains("certificate is refused")),
            "{wrong:?}"
        );
        // A client that trusts another CA refuses the server: said so.
        let distrust = handshake(&acceptor, client(Some(&alice), &other_pem)).await;
        assert!(
            distrust
                .as_ref()
                .is_err_and(|e| e.contains("does not accept this member's certificate")),
            "{distrust:?}"
        );
    }
}
