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
//! falls behind).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

pub struct Proxy {
    /// The port peers connect to (the member's advertised peer port).
    pub port: u16,
    blocked: Arc<AtomicBool>,
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
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let accept = tokio::spawn({
            let blocked = blocked.clone();
            let cut = cut.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if blocked.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let mut cut_rx = cut.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await
                        else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut_rx.changed() => {}
                        }
                    });
                }
            }
        });
        Proxy {
            port,
            blocked,
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
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
