//! A TCP proxy in front of one member's peer listener, so the nemesis can
//! cut that member off without root, iptables or failpoints in cairn.
//!
//! Every member advertises its proxy's port as its peer URL (member ids
//! follow the advertised URLs, so every member agrees on them), and listens
//! for peers on its own port behind it: all raft traffic *to* a member
//! passes through its proxy. [`Proxy::block`] closes every connection
//! through it and refuses new ones until [`Proxy::heal`]: the member then
//! hears nobody (a deaf member: what it sends still arrives, so the leader,
//! if it is the one cut off, steps down by check-quorum, and a follower
//! falls behind). [`Proxy::delay`] holds every chunk of bytes, both ways,
//! for a while before passing it on (a slow network: latency, not loss).
//! [`Proxy::blackhole`] keeps every connection open and accepts new ones,
//! but reads and discards every byte, both ways, until [`Proxy::heal`]: a
//! silent network loss (nothing is closed or refused, so the members learn
//! of it only from their own timeouts; bytes lost mid-stream leave the
//! streams corrupt, to be noticed and re-opened after the heal).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Copies `from` to `to`, each chunk `delay` milliseconds (read when the
/// chunk arrives) after it was read, in order; while `blackhole` is set,
/// chunks are read and dropped.
async fn delayed_copy<R, W>(
    mut from: R,
    mut to: W,
    delay: Arc<AtomicU64>,
    blackhole: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
) where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if blackhole.load(Ordering::SeqCst) {
            dropped.fetch_add(n as u64, Ordering::SeqCst);
            continue;
        }
        let due = tokio::time::Instant::now() + Duration::from_millis(delay.load(Ordering::SeqCst));
        if tx.send((due, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

pub struct Proxy {
    /// The port peers connect to (the member's advertised peer port).
    pub port: u16,
    blocked: Arc<AtomicBool>,
    /// Milliseconds every chunk is held (0: none).
    delay: Arc<AtomicU64>,
    /// Every byte through the proxy is dropped, silently.
    blackhole: Arc<AtomicBool>,
    /// Bytes the blackhole swallowed so far.
    dropped: Arc<AtomicU64>,
    /// Bumped on every block: each connection ends when it changes.
    cut: tokio::sync::watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let blocked = Arc::new(AtomicBool::new(false));
        let delay = Arc::new(AtomicU64::new(0));
        let blackhole = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let accept = tokio::spawn({
            let blocked = blocked.clone();
            let delay = delay.clone();
            let blackhole = blackhole.clone();
            let dropped = dropped.clone();
            let cut = cut.clone();
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if blocked.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let mut cut_rx = cut.subscribe();
                    let delay = delay.clone();
                    let blackhole = blackhole.clone();
                    let dropped = dropped.clone();
                    tokio::spawn(async move {
                        let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                            return;
                        };
                        let (in_r, in_w) = inbound.into_split();
                        let (out_r, out_w) = outbound.into_split();
                        let there = tokio::spawn(delayed_copy(
                            in_r,
                            out_w,
                            delay.clone(),
                            blackhole.clone(),
                            dropped.clone(),
                        ));
                        let back =
                            tokio::spawn(delayed_copy(out_r, in_w, delay, blackhole, dropped));
                        let (a, b) = (there.abort_handle(), back.abort_handle());
                        tokio::select! {
                            _ = there => {}
                            _ = back => {}
                            _ = cut_rx.changed() => {}
                        }
                        // Either way ends both (dropping the halves closes
                        // the sockets).
                        a.abort();
                        b.abort();
                    });
                }
            }
        });
        Proxy {
            port,
            blocked,
            delay,
            blackhole,
            dropped,
            cut,
            accept,
        }
    }

    /// Cuts every connection through the proxy and refuses new ones.
    pub fn block(&self) {
        self.blocked.store(true, Ordering::SeqCst);
        self.cut.send_modify(|g| *g += 1);
    }

    pub fn heal(&self) {
        self.blocked.store(false, Ordering::SeqCst);
        self.delay.store(0, Ordering::SeqCst);
        self.blackhole.store(false, Ordering::SeqCst);
    }

    /// Drops every byte through the proxy, both ways, without closing or
    /// refusing anything, until [`Proxy::heal`].
    pub fn blackhole(&self) {
        self.blackhole.store(true, Ordering::SeqCst);
    }

    /// Bytes the blackhole has swallowed since the proxy started.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }

    /// Holds every chunk through the proxy for `ms` milliseconds (0: none).
    pub fn delay(&self, ms: u64) {
        self.delay.store(ms, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
