//! Sessions (clientv3's `concurrency.Session`): the lease that a client's
//! lock and candidacy keys are attached to. When the session's lease ends —
//! revoked, or expired because nobody keeps it alive — every such key is
//! deleted with it, which releases the lock or the leadership.
//!
//! A session uses the lease it is given, or grants a fresh one
//! ([`DEFAULT_SESSION_TTL`], etcd's 60 s) when given 0. It keeps the lease
//! alive only when asked ([`Session::keep_alive`]): etcd's Lock and Election
//! servers "orphan" their sessions at once, leaving the lease's life to the
//! client, and so do cairn's.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use super::{Client, Error};
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest};

/// The TTL, in seconds, of a lease a session grants itself (etcd's
/// `defaultSessionTTL`).
pub const DEFAULT_SESSION_TTL: i64 = 60;

/// A lease used as the liveness of one client.
#[derive(Debug)]
pub struct Session {
    client: Client,
    lease: i64,
    /// The keep-alive task, while there is one; aborted on orphan and drop.
    keep_alive: Option<JoinHandle<()>>,
}

impl Session {
    /// A session on `lease`, or on a new lease with etcd's default TTL if
    /// `lease` is 0 (etcd's `NewSession(client, WithLease(lease))`). A lease
    /// that does not exist is not checked here: the first write with it
    /// fails with `requested lease not found`, as in etcd.
    pub async fn new(client: Client, lease: i64) -> Result<Session, Error> {
        Session::with_ttl(client, lease, DEFAULT_SESSION_TTL).await
    }

    /// Like [`Session::new`], granting `ttl` seconds (≤ 0: the default)
    /// when a lease must be granted.
    pub async fn with_ttl(client: Client, lease: i64, ttl: i64) -> Result<Session, Error> {
        let lease = if lease == 0 {
            let ttl = if ttl > 0 { ttl } else { DEFAULT_SESSION_TTL };
            let resp = client
                .lease
                .clone()
                .lease_grant(LeaseGrantRequest { ttl, id: 0 })
                .await?
                .into_inner();
            resp.id
        } else {
            lease
        };
        Ok(Session {
            client,
            lease,
            keep_alive: None,
        })
    }

    /// The lease id that this session's keys are attached to.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Starts keeping the lease alive, one keep-alive per third of its TTL
    /// (as clientv3), until [`Session::orphan`], [`Session::close`], drop, or
    /// the lease is found gone.
    pub fn keep_alive(&mut self) {
        if self.keep_alive.is_none() {
            let lease = self.client.lease.clone();
            self.keep_alive = Some(tokio::spawn(keep_alive(lease, self.lease)));
        }
    }

    /// Whether a keep-alive task is running (false once the lease is gone).
    pub fn is_kept_alive(&self) -> bool {
        self.keep_alive.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops keeping the lease alive; the lease lives on until its TTL runs
    /// out (etcd's `Orphan`).
    pub fn orphan(&mut self) {
        if let Some(task) = self.keep_alive.take() {
            task.abort();
        }
    }

    /// Orphans the session and revokes its lease, deleting its keys.
    pub async fn close(mut self) -> Result<(), Error> {
        self.orphan();
        self.client
            .lease
            .clone()
            .lease_revoke(LeaseRevokeRequest { id: self.lease })
            .await?;
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.orphan();
    }
}

/// Sends keep-alives for `id` on one stream until the server reports the
/// lease gone (TTL 0) or the stream fails.
async fn keep_alive(mut lease: LeaseClient<super::Conn>, id: i64) {
    let (tx, rx) = mpsc::channel(1);
    // The first request goes in before the call is awaited (see
    // `wait::Watcher::start`).
    let _ = tx.send(LeaseKeepAliveRequest { id }).await;
    let Ok(resp) = lease.lease_keep_alive(ReceiverStream::new(rx)).await else {
        return;
    };
    let mut responses = resp.into_inner();
    while let Ok(Some(resp)) = responses.message().await {
        if resp.ttl <= 0 {
            return;
        }
        let every = Duration::from_millis(resp.ttl.unsigned_abs() * 1000 / 3);
        tokio::time::sleep(every).await;
        if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
            return;
        }
    }
}
