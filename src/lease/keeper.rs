//! The LeaseKeeper actor: owns lease expiry on this member (a [`Lessor`]).
//!
//! Takes [`AppliedLeases`] from Storage (grants, revokes and checkpoints in
//! apply order, and the term of any applied leader no-op entry),
//! and from the gRPC Lease service
//! [`Renew`] (keep-alive), [`TimeToLive`] and [`ListLeases`]. Reads
//! [`RaftStatus`] on every tick to learn leadership. Sends LeaseRevoke
//! proposals through [`RaftClient::propose`] for leases that expired.
//!
//! Position in the write path: it is a *proposer*, like a client. Expiry is
//! decided here, on the leader only, from local time; the revoke goes
//! through the raft log, so every member deletes the keys at the same
//! revision. Keep-alives never touch the log. Proposals run as futures on
//! this actor's context (no blocking on its arbiter thread).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::lessor::{LeaseTtl, Lessor, NotAnswered};
use crate::error::EtcdError;
use crate::msg::{AppliedLeases, RaftClient, RaftStatus};
use crate::msg::{ListLeases, Renew, TimeToLive};
use crate::proto::cairnpb::internal_request::Request;
use crate::proto::etcdserverpb::LeaseRevokeRequest;
use crate::supervise::Lifeline;

/// How often expiry and leadership are checked: expired keys go within
/// about this much (plus one commit) of their TTL.
pub const TICK: Duration = Duration::from_millis(100);

/// At most this many revokes are proposed per tick (etcd: 500 per 500 ms).
const REVOKES_PER_TICK: usize = 100;

pub struct LeaseKeeper {
    /// Expiry times and the primary flag; plain code, see `lessor`.
    lessor: Lessor,
    /// Leadership and term, published by RaftNode.
    status: Arc<RaftStatus>,
    /// Proposes revokes of expired leases.
    proposer: RaftClient,
    /// A core actor: if it goes, the member stops (crate::supervise).
    _lifeline: Lifeline,
}

impl LeaseKeeper {
    /// `leases` are the (id, TTL) pairs in the store at start-up; they get
    /// expiry times only when this member is promoted.
    pub fn new(
        leases: impl IntoIterator<Item = (i64, i64)>,
        status: Arc<RaftStatus>,
        promote_extend: Duration,
        retry: Duration,
        proposer: RaftClient,
    ) -> LeaseKeeper {
        let mut lessor = Lessor::new(promote_extend, retry);
        let now = Instant::now();
        for (id, ttl) in leases {
            lessor.recover(id, ttl, now);
        }
        LeaseKeeper {
            lessor,
            status,
            proposer,
            _lifeline: Lifeline::new("LeaseKeeper"),
        }
    }

    fn observe_status(&mut self, now: Instant) {
        let (leader, term) = (self.status.is_leader(), self.status.term());
        if self.lessor.observe(leader, term, now) {
            tracing::info!(
                term,
                leases = self.lessor.len(),
                "promoted to primary lessor"
            );
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        crate::failpoint::hit("lease-tick");
        let now = Instant::now();
        self.observe_status(now);
        for id in self.lessor.expired(now, REVOKES_PER_TICK) {
            tracing::debug!(lease = %format!("{id:x}"), "lease expired; proposing revoke");
            let proposer = self.proposer.clone();
            let revoke = async move {
                proposer
                    .propose(Request::LeaseRevoke(LeaseRevokeRequest { id }))
                    .await
            };
            ctx.spawn(revoke.into_actor(self).map(move |r, act, _| match r {
                Ok(_) => {}
                // Revoked meanwhile (by a client): nothing left to expire.
                Err(EtcdError::LeaseNotFound) => act.lessor.remove(id),
                // Retried after the lessor's retry interval.
                Err(e) => tracing::warn!(lease = %format!("{id:x}"), cause = %e, "revoking an expired lease failed"),
            }));
        }
    }
}

impl Actor for LeaseKeeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(TICK, |act, ctx| act.tick(ctx));
    }
}

impl Handler<AppliedLeases> for LeaseKeeper {
    type Result = ();
    fn handle(&mut self, msg: AppliedLeases, _: &mut Context<Self>) {
        let now = Instant::now();
        for change in msg.changes {
            if msg.recovered {
                self.lessor.apply_recovered(change, now);
            } else {
                self.lessor.apply(change, now);
            }
        }
        if let Some(term) = msg.leader_noop_term {
            self.lessor.noop_applied(term);
            self.observe_status(now);
        }
    }
}

impl Handler<Renew> for LeaseKeeper {
    type Result = Result<i64, NotAnswered>;
    fn handle(&mut self, msg: Renew, _: &mut Context<Self>) -> Self::Result {
        let now = Instant::now();
        self.observe_status(now);
        self.lessor.renew(msg.id, now)
    }
}

impl Handler<TimeToLive> for LeaseKeeper {
    type Result = Result<LeaseTtl, NotAnswered>;
    fn handle(&mut self, msg: TimeToLive, _: &mut Context<Self>) -> Self::Result {
        let now = Instant::now();
        self.observe_status(now);
        self.lessor.time_to_live(msg.id, now)
    }
}

impl Handler<ListLeases> for LeaseKeeper {
    type Result = Vec<i64>;
    fn handle(&mut self, _: ListLeases, _: &mut Context<Self>) -> Self::Result {
        self.lessor.ids()
    }
}
