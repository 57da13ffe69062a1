//! HTTP admin: etcd's JSON gateway (`/v3/…`, `/v3beta/…`), `/health`,
//! `/livez`, `/readyz`, `/version` and `/metrics`, on actix-web.
//!
//! etcd serves HTTP/1.x and gRPC on the same client URLs (cmux); so does
//! cairn. Every accepted client connection goes through [`route`]: the
//! [`sniff`] stage reads the first bytes; the HTTP/2 preface goes on to
//! `grpc::authority::FixAuthority` and tonic, anything else is spliced to
//! the [`Admin`] server, an actix-web server on a socket of the process's
//! own (`<data-dir>/cairn-http.sock`, mode 0600; a loopback port if that
//! path is too long for a socket). `--listen-metrics-urls` are served by a
//! second actix-web server with `/health`, `/livez`, `/readyz` and
//! `/metrics` only (and, with `--enable-pprof`, both serve [`pprof`]'s
//! `/debug/pprof/…`).
//!
//! ```text
//! TCP accept ─▶ (TLS) ─▶ sniff ─┬─ HTTP/2 ──▶ FixAuthority ─▶ tonic ─▶ KvService, …
//!                               └─ HTTP/1 ──▶ splice ─▶ actix-web ─▶ gateway ─▶ the same KvService, …
//! ```
//!
//! The gateway runs no RPC of its own: it decodes the JSON into the prost
//! request ([`json`]), calls the tonic service implementation of
//! `crate::grpc` on the gRPC runtime, and encodes its response (or its
//! `Status`, as grpc-gateway does) back.

pub mod conn;
pub mod cors;
pub mod gateway;
pub mod grpc_metrics;
pub mod health;
pub mod json;
pub mod metrics;
#[cfg(target_os = "linux")]
pub mod pprof;
pub mod sniff;
pub mod sse;
pub mod ui;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::grpc::Api;
use sniff::{Protocol, Rewind};

/// What the admin server needs besides the [`Api`].
pub struct AdminOptions {
    pub data_dir: PathBuf,
    pub max_request_bytes: usize,
    /// `--listen-metrics-urls`, resolved.
    pub metrics_addrs: Vec<SocketAddr>,
    /// Turns true when the member shuts down (ends gateway watch streams).
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// `--quota-backend-bytes`, reported as etcd_server_quota_backend_bytes.
    pub quota_backend_bytes: u64,
    /// What the Lock and Election services reach this member's API with.
    pub local: crate::grpc::LocalClient,
    /// `--enable-ui`: serve the dashboard ([`ui`]) on the client URLs.
    pub enable_ui: bool,
    /// `--cors`: the origins browsers may call the client URLs from.
    pub cors: Vec<String>,
    /// `--enable-pprof`: CPU profiles at `/debug/pprof/` ([`pprof`]).
    pub enable_pprof: bool,
}

/// The `/debug/pprof/` routes when `--enable-pprof` asks for them.
fn pprof_routes(cfg: &mut web::ServiceConfig, enabled: bool) {
    #[cfg(target_os = "linux")]
    if enabled {
        pprof::routes(cfg);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (cfg, enabled);
}

/// Where the client URLs' HTTP/1 connections are spliced to.
enum Internal {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// Longest socket path that fits `sockaddr_un` on every unix.
const MAX_SOCKET_PATH: usize = 100;

/// The running admin server (see the module documentation).
pub struct Admin {
    internal: Internal,
    handles: Vec<ServerHandle>,
    /// gRPC's request counters, for `grpc::serve`'s layer.
    grpc_counters: Arc<grpc_metrics::GrpcCounters>,
}

/// What every handler shares; cheap to clone.
#[derive(Clone)]
pub struct State {
    pub api: Api,
    pub services: Arc<gateway::Services>,
    pub metrics: Arc<metrics::Metrics>,
    /// The gRPC call metrics, which the gateway's calls count in too.
    pub grpc: Arc<grpc_metrics::GrpcCounters>,
}

impl Admin {
    /// Binds the internal socket and the metrics URLs and starts the actix
    /// system on a thread of its own. Must be called inside the gRPC
    /// runtime: the gateway runs the services on it.
    pub fn start(api: Api, opts: AdminOptions) -> io::Result<Admin> {
        let runtime = tokio::runtime::Handle::current();
        let services = Arc::new(gateway::Services::new(
            api.clone(),
            opts.local,
            opts.max_request_bytes,
            opts.stopping,
            runtime.clone(),
        ));
        let metrics = Arc::new(metrics::Metrics::new(opts.quota_backend_bytes));
        let grpc_counters = grpc_metrics::GrpcCounters::register(metrics.registry());
        runtime.spawn(metrics::track_leader(api.status.clone(), metrics.clone()));
        let state = State {
            api,
            services,
            metrics,
            grpc: grpc_counters.clone(),
        };

        let socket = opts.data_dir.join("cairn-http.sock");
        let (internal, listener) = if socket.as_os_str().len() <= MAX_SOCKET_PATH {
            (
                Internal::Unix(socket.clone()),
                Listener::Unix(bind_private(&socket)?),
            )
        } else {
            let tcp = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
            (Internal::Tcp(tcp.local_addr()?), Listener::Tcp(tcp))
        };
        let metrics_listeners = opts
            .metrics_addrs
            .iter()
            .map(std::net::TcpListener::bind)
            .collect::<io::Result<Vec<_>>>()?;

        // A JSON body holds the request's bytes in base64 (4/3) and some
        // syntax: twice gRPC's own limit bounds it; beyond, 413.
        let body_limit = 2 * (opts.max_request_bytes + crate::grpc::GRPC_OVERHEAD_BYTES);
        let enable_ui = opts.enable_ui;
        let enable_pprof = opts.enable_pprof;
        let cors = cors::Cors::new(&opts.cors);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                let system = actix_web::rt::System::new();
                let served = system.block_on(async move {
                    let client_state = state.clone();
                    let client = HttpServer::new(move || {
                        let cors = cors.clone();
                        App::new()
                            .wrap_fn(move |req, srv| cors::middleware(&cors, req, srv))
                            .app_data(web::Data::new(client_state.clone()))
                            .app_data(web::PayloadConfig::new(body_limit))
                            .configure(health::routes)
                            .configure(metrics::routes)
                            .configure(sse::routes)
                            .configure(|cfg| {
                                if enable_ui {
                                    ui::routes(cfg)
                                }
                            })
                            .configure(|cfg| pprof_routes(cfg, enable_pprof))
                            .configure(gateway::routes)
                    })
                    .on_connect(conn::on_connect)
                    .workers(1)
                    .disable_signals()
                    .shutdown_timeout(1);
                    let client = match listener {
                        Listener::Unix(l) => client.listen_uds(l)?,
                        Listener::Tcp(l) => client.listen(l)?,
                    }
                    .run();
                    let mut handles = vec![client.handle()];
                    let mut servers = vec![client];
                    if !metrics_listeners.is_empty() {
                        let mut metrics = HttpServer::new(move || {
                            App::new()
                                .app_data(web::Data::new(state.clone()))
                                .configure(health::routes)
                                .configure(metrics::routes)
                                .configure(|cfg| pprof_routes(cfg, enable_pprof))
                        })
                        .workers(1)
                        .disable_signals()
                        .shutdown_timeout(1);
                        for l in metrics_listeners {
                            metrics = metrics.listen(l)?;
                        }
                        let metrics = metrics.run();
                        handles.push(metrics.handle());
                        servers.push(metrics);
                    }
                    let _ = tx.send(handles);
                    for result in futures::future::join_all(servers).await {
                        result?;
                    }
                    Ok::<(), io::Error>(())
                });
                if let Err(e) = served {
                    tracing::error!(cause = %e, "HTTP admin server failed");
                }
            })?;
        let handles = rx
            .recv()
            .map_err(|_| io::Error::other("the HTTP admin server did not start"))?;
        Ok(Admin {
            internal,
            handles,
            grpc_counters,
        })
    }

    /// Serves one HTTP/1.x connection: splices it to the admin server until
    /// either side closes.
    pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(&self, client: S) {
        let spliced = match &self.internal {
            Internal::Unix(path) => match tokio::net::UnixStream::connect(path).await {
                Ok(server) => splice(client, server).await,
                Err(e) => Err(e),
            },
            Internal::Tcp(addr) => match tokio::net::TcpStream::connect(addr).await {
                Ok(server) => {
                    let _ = server.set_nodelay(true);
                    splice(client, server).await
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = spliced {
            tracing::debug!(cause = %e, "HTTP connection ended");
        }
    }

    /// The layer that counts gRPC calls for `/metrics`.
    pub fn grpc_metrics(&self) -> grpc_metrics::GrpcMetricsLayer {
        grpc_metrics::GrpcMetricsLayer(self.grpc_counters.clone())
    }

    /// Stops the admin servers (after the gRPC drain).
    pub async fn stop(&self) {
        for handle in &self.handles {
            handle.stop(true).await;
        }
        if let Internal::Unix(path) = &self.internal {
            let _ = std::fs::remove_file(path);
        }
    }
}

enum Listener {
    Unix(std::os::unix::net::UnixListener),
    Tcp(std::net::TcpListener),
}

/// A unix socket only this user may connect to (a stale one from an
/// earlier run is replaced).
fn bind_private(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// How long the admin server's answer may go on once the client has closed
/// its side, with nothing more to send: an HTTP/1.x client that closes is
/// gone (Go's server, etcd's, cancels the request then), and the server
/// would not notice before its next write (a quiet watch may have none for
/// minutes). A client that half-closes after its request still gets an
/// answer that comes while the connection is busy.
const CLIENT_GONE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Copies both ways between the client and the admin server. When the
/// client closes its side, the admin server's side is shut down for
/// writing and the answer still flows until it pauses for
/// [`CLIENT_GONE_LINGER`]; then both are dropped, which ends a streaming
/// answer (a gateway watch) behind them.
async fn splice<C, S>(client: C, server: S) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let (mut from_server, mut to_server) = tokio::io::split(server);
    let upstream = async {
        let copied = tokio::io::copy(&mut from_client, &mut to_server).await;
        let _ = to_server.shutdown().await;
        copied
    };
    let mut upstream = std::pin::pin!(upstream);
    let mut client_closed = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = if client_closed {
            match tokio::time::timeout(CLIENT_GONE_LINGER, from_server.read(&mut buf)).await {
                Ok(read) => read,
                Err(_) => return Ok(()),
            }
        } else {
            tokio::select! {
                copied = &mut upstream => {
                    copied?;
                    client_closed = true;
                    continue;
                }
                read = from_server.read(&mut buf) => read,
            }
        };
        let n = read?;
        if n == 0 {
            return to_client.shutdown().await;
        }
        to_client.write_all(&buf[..n]).await?;
        to_client.flush().await?;
    }
}

/// How many sniffed gRPC connections may wait for tonic to take them.
const ACCEPT_BACKLOG: usize = 64;

/// The client connection pipeline's protocol stage: every connection of
/// `incoming` is sniffed on a task of its own (a slow client delays no
/// other); HTTP/2 ones come out of the returned stream for gRPC, HTTP/1
/// ones are served by `admin`. Ends when `incoming` does or the returned
/// stream is dropped.
pub fn route<S, I>(
    incoming: I,
    admin: Arc<Admin>,
) -> impl Stream<Item = io::Result<Rewind<S>>> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    I: Stream<Item = io::Result<S>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(ACCEPT_BACKLOG);
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            let accepted = tokio::select! {
                accepted = incoming.next() => accepted,
                _ = tx.closed() => return,
            };
            let stream = match accepted {
                Some(Ok(stream)) => stream,
                Some(Err(e)) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
                None => return,
            };
            let (tx, admin) = (tx.clone(), admin.clone());
            tokio::spawn(async move {
                match sniff::sniff(stream).await {
                    Ok(Some(Protocol::H2(stream))) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Some(Protocol::Http1(stream))) => {
                        drop(tx);
                        admin.serve_connection(stream).await;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(cause = %e, "connection closed before its protocol was known")
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
