//! LeaseKeeper's inbox from the API layer and the peer service, and
//! [`Leases`], the handle both use to ask it: keep-alive and time-to-live
//! are answered by the primary lessor (the leader) without a log entry; a
//! follower forwards them to the leader, as etcd's does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::future::BoxFuture;

use super::RaftStatus;
use crate::error::EtcdError;

/// Pause between asks while this member is not yet the primary lessor.
const PRIMARY_POLL: Duration = Duration::from_millis(50);

/// Why a renew or time-to-live lookup was not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAnswered {
    /// This member is not (yet) the primary lessor; ask again or ask the leader.
    NotPrimary,
    /// No such lease.
    NotFound,
    /// Expired, its revoke not applied yet: its keys still exist, so it
    /// may not be called gone yet (etcd's Renew waits for the revoke);
    /// ask again.
    Expiring,
}

/// One lease's TTLs as the lessor knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTtl {
    /// The TTL the lease was granted with, in seconds.
    pub granted: i64,
    /// Seconds left, truncated toward zero (etcd's `int64(Remaining().Seconds())`).
    pub remaining: i64,
}

/// A keep-alive: reset the lease's expiry; answers its TTL.
#[derive(Message)]
#[rtype(result = "Result<i64, NotAnswered>")]
pub struct Renew {
    pub id: i64,
}

/// Granted and remaining TTL of a lease.
#[derive(Message)]
#[rtype(result = "Result<LeaseTtl, NotAnswered>")]
pub struct TimeToLive {
    pub id: i64,
}

/// Every lease id, soonest expiry first.
#[derive(Message)]
#[rtype(result = "Vec<i64>")]
pub struct ListLeases;

/// Asks the leader's lessor on a follower's behalf (the peer client).
pub trait ForwardToLeader: Send + Sync {
    /// Renews lease `id` on member `leader`: its TTL, or None if unknown.
    fn renew(&self, leader: u64, id: i64) -> BoxFuture<'static, Result<Option<i64>, EtcdError>>;
    /// Lease `id`'s TTLs on member `leader`, or None if unknown.
    fn time_to_live(
        &self,
        leader: u64,
        id: i64,
    ) -> BoxFuture<'static, Result<Option<LeaseTtl>, EtcdError>>;
    /// Whether learner `id` is in sync with member `leader`'s log (None:
    /// it does not lead).
    fn learner_ready(
        &self,
        leader: u64,
        id: u64,
    ) -> BoxFuture<'static, Result<Option<bool>, EtcdError>>;
}

/// How the gRPC Lease service and the peer service reach the lessor.
#[derive(Clone)]
pub struct Leases {
    renew: Recipient<Renew>,
    ttl: Recipient<TimeToLive>,
    list: Recipient<ListLeases>,
    /// Who leads, to forward to.
    status: Arc<RaftStatus>,
    local_id: u64,
    /// None on a single member (nobody to forward to).
    forward: Option<Arc<dyn ForwardToLeader>>,
    /// The request timeout.
    timeout: Duration,
}

/// One ask of the local lessor.
type Asked<T> = Result<Result<T, NotAnswered>, MailboxError>;

/// One ask of the leader's lessor, through the forwarder.
type Forward<T> =
    dyn Fn(&dyn ForwardToLeader, u64) -> BoxFuture<'static, Result<Option<T>, EtcdError>> + Sync;

impl Leases {
    /// How this member reaches the leader's peer service, if it has peers.
    pub fn forwarder(&self) -> Option<Arc<dyn ForwardToLeader>> {
        self.forward.clone()
    }

    /// `renew`, `ttl` and `list` are LeaseKeeper's inboxes.
    pub fn new(
        (renew, ttl, list): (
            Recipient<Renew>,
            Recipient<TimeToLive>,
            Recipient<ListLeases>,
        ),
        status: Arc<RaftStatus>,
        local_id: u64,
        forward: Option<Arc<dyn ForwardToLeader>>,
        timeout: Duration,
    ) -> Leases {
        Leases {
            renew,
            ttl,
            list,
            status,
            local_id,
            forward,
            timeout,
        }
    }

    /// A keep-alive: the lease's TTL, or None if it does not exist (or
    /// expired). Asked of this member's lessor when it is primary, else of
    /// the leader's; waits (up to the request timeout) while there is none.
    pub async fn renew(&self, id: i64) -> Result<Option<i64>, EtcdError> {
        self.ask(
            || self.renew.send(Renew { id }),
            Some(&move |f: &dyn ForwardToLeader, leader| f.renew(leader, id)),
        )
        .await
    }

    /// Granted and remaining TTL, as [`Leases::renew`] asks.
    pub async fn time_to_live(&self, id: i64) -> Result<Option<LeaseTtl>, EtcdError> {
        self.ask(
            || self.ttl.send(TimeToLive { id }),
            Some(&move |f: &dyn ForwardToLeader, leader| f.time_to_live(leader, id)),
        )
        .await
    }

    /// Like [`Leases::renew`], never forwarded: the leader's side of a
    /// follower's forward (no forwarding loops).
    pub async fn renew_here(&self, id: i64) -> Result<Option<i64>, EtcdError> {
        self.ask(|| self.renew.send(Renew { id }), None).await
    }

    /// Like [`Leases::time_to_live`], never forwarded.
    pub async fn time_to_live_here(&self, id: i64) -> Result<Option<LeaseTtl>, EtcdError> {
        self.ask(|| self.ttl.send(TimeToLive { id }), None).await
    }

    /// Every lease id this member's lessor knows.
    pub async fn list(&self) -> Result<Vec<i64>, EtcdError> {
        self.list
            .send(ListLeases)
            .await
            .map_err(|_| EtcdError::Stopped)
    }

    /// Asks this member's lessor until it answers as primary; while it is
    /// not, asks the leader's through `forward` (if given and another member
    /// leads); gives up at the request timeout.
    async fn ask<T, Fut>(
        &self,
        mut ask: impl FnMut() -> Fut,
        forward: Option<&Forward<T>>,
    ) -> Result<Option<T>, EtcdError>
    where
        Fut: std::future::Future<Output = Asked<T>>,
    {
        let deadline = Instant::now() + self.timeout;
        loop {
            match ask().await {
                Ok(Ok(v)) => return Ok(Some(v)),
                Ok(Err(NotAnswered::NotFound)) => return Ok(None),
                Ok(Err(NotAnswered::Expiring)) => {
                    // Asked again until the revoke lands (then NotFound)
                    // or this member stops being primary.
                    if Instant::now() >= deadline {
                        return Err(EtcdError::Timeout);
                    }
                    tokio::time::sleep(PRIMARY_POLL).await;
                    continue;
                }
                Ok(Err(NotAnswered::NotPrimary)) => {}
                Err(_) => return Err(EtcdError::Stopped),
            }
            // Not the primary lessor: the leader's answers, if another
            // member leads (a new leader becomes primary shortly).
            let leader = self.status.leader_id();
            let forwarding = self.forward.as_ref().zip(forward);
            if let (Some((f, forward)), true) = (forwarding, leader != 0 && leader != self.local_id)
            {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, forward(f.as_ref(), leader)).await {
                    Ok(Ok(answer)) => return Ok(answer),
                    Ok(Err(e)) => {
                        tracing::debug!(cause = %e, leader = %format!("{leader:x}"), "forwarding a lease request failed; retrying")
                    }
                    Err(_) => return Err(EtcdError::Timeout),
                }
            }
            if Instant::now() >= deadline {
                return Err(EtcdError::Timeout);
            }
            tokio::time::sleep(PRIMARY_POLL).await;
        }
    }
}
