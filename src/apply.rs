//! The deterministic state-machine step: committed raft entries in, responses
//! and watch events out (etcd's `applierV3`).
//!
//! The Storage actor calls [`apply_batch`] with the entries of one Ready, in
//! log order. Each request runs against a [`BatchWriter`] overlay, so it sees
//! the requests before it in the same batch; at the end the whole batch,
//! together with its last raft index, is written to the backend in ONE atomic
//! batch and only then published to readers. Entries at or below the store's
//! applied index were applied before (e.g. replayed after a restart) and are
//! skipped, which makes application exactly-once.
//!
//! Request semantics follow etcd 3.4's `etcdserver/apply.go`: Put with
//! prev_kv / ignore_value / ignore_lease, DeleteRange over every range form,
//! Txn (all compares are evaluated and every op is checked before anything
//! executes, so a failing txn changes nothing), Compaction, Alarm with
//! the NOSPACE ("capped") and CORRUPT behaviours (decided by the replicated
//! alarms only, never by this member's own size: see `crate::quota`), and
//! the lease requests:
//! LeaseGrant (the proposer chose the id; the TTL is raised to the minimum
//! here), LeaseRevoke (every attached key deleted in ONE revision) and
//! LeaseCheckpoint. A put with a lease must name an existing one. The response
//! headers carry only `revision`, set exactly as etcd sets it; the server
//! fills in the rest.
//!
//! Lease grants and revokes are also reported in [`ApplyOutput::lease_changes`]
//! so the LeaseKeeper can track expiry times (which are not replicated).

use std::cmp::Ordering;

use crate::error::{EtcdError, StorageError};
use crate::lease::table::MAX_LEASE_TTL;
use crate::mvcc::range::{self, header, ReadView};
use crate::mvcc::{BatchWriter, KeyRange, ReadError, Store, WriteTxn};
use crate::proto::cairnpb::internal_request::Request;
use crate::proto::cairnpb::Lease;
use crate::proto::cairnpb::MemberRecord;
use crate::proto::cairnpb::{AuthStamp, InternalRequest};
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::request_op::Request as Op;
use crate::proto::etcdserverpb::response_op::Response as OpResponse;
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, AlarmType, CompactionRequest, CompactionResponse, Compare,
    DeleteRangeRequest, DeleteRangeResponse, LeaseCheckpointRequest, LeaseCheckpointResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse, PutRequest,
    PutResponse, RangeRequest, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::{Event, KeyValue};

/// A committed request and, for a client's, who sent it: judged again
/// before it applies (`apply::auth`).
#[derive(Debug, Clone)]
pub struct Proposed {
    pub request: Request,
    pub auth: Option<AuthStamp>,
}

impl From<Request> for Proposed {
    /// The member's own request (not judged).
    fn from(request: Request) -> Proposed {
        Proposed {
            request,
            auth: None,
        }
    }
}

impl Proposed {
    /// What a decoded log entry carries.
    pub fn of(entry: InternalRequest) -> Option<Proposed> {
        let auth = entry.auth;
        entry.request.map(|request| Proposed { request, auth })
    }
}

/// The answer to one applied request, typed by request kind.
#[derive(Debug, Clone, PartialEq)]
pub enum ApplyResponse {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    Alarm(AlarmResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    LeaseCheckpoint(LeaseCheckpointResponse),
    /// A member's published attributes were recorded (etcd's publish).
    MemberAttributes,
    /// A membership change was applied (member add, remove, update,
    /// promote): the member as it now is.
    Membership(MemberRecord),
    /// An auth store change was applied (src/auth/state.rs).
    Auth,
}

/// A change to the set of leases, for the LeaseKeeper (which owns expiry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseChange {
    /// Lease `id` was granted with `ttl` seconds (already raised to the minimum).
    Granted { id: i64, ttl: i64 },
    /// Lease `id` was revoked; its keys are gone.
    Revoked { id: i64 },
    /// Lease `id`'s remaining TTL was checkpointed (0 clears it).
    Checkpointed { id: i64, remaining_ttl: i64 },
}

/// What [`apply_batch`] produced.
#[derive(Debug, Default)]
pub struct ApplyOutput {
    /// One per entry, in order; None for entries that carry no request (empty
    /// raft entries, conf changes) and for entries skipped as already applied.
    pub results: Vec<Option<Result<ApplyResponse, EtcdError>>>,
    /// Every event produced, in revision order (watchers will use these
    /// later). A delete's event carries `prev_kv`; a put's does not (it reads
    /// only the key index, as etcd's does), and the WatchBroadcaster reads it
    /// for a watcher that asks.
    pub events: Vec<Event>,
    /// Lease grants, revokes and checkpoints, in log order.
    pub lease_changes: Vec<LeaseChange>,
}

/// Applies committed entries (index, decoded request or None) in ONE backend
/// write batch, then advances the applied index to the last index. Entries
/// with index <= `store.applied_index()` are skipped (exactly-once across
/// restarts).
///
/// `min_lease_ttl` (seconds) is the TTL a shorter lease grant is raised to.
///
/// An `Err` is a storage failure: nothing of the batch was published and the
/// member must stop.
pub fn apply_batch<E: Into<Proposed>>(
    store: &Store,
    entries: Vec<(u64, Option<E>)>,
    min_lease_ttl: i64,
) -> Result<ApplyOutput, StorageError> {
    let applied = store.applied_index();
    let mut last = applied;
    let mut w = BatchWriter::new(store);
    let mut ctx = Ctx {
        min_lease_ttl,
        lease_changes: Vec::new(),
    };
    let mut results = Vec::with_capacity(entries.len());
    for (index, request) in entries {
        if index <= last {
            results.push(None);
            continue;
        }
        last = index;
        let Some(request) = request else {
            results.push(None);
            continue;
        };
        let Proposed {
            request,
            auth: stamp,
        } = request.into();
        let checked = match &stamp {
            Some(stamp) => auth::check(&w, &request, stamp),
            None => Ok(()),
        };
        let started = std::time::Instant::now();
        let applied = checked.and_then(|()| apply_request(&mut w, &mut ctx, request));
        crate::io_metrics::applied_since(started);
        match applied {
            Ok(resp) => results.push(Some(Ok(resp))),
            Err(Fail::Client(e)) => results.push(Some(Err(e))),
            Err(Fail::Storage(e)) => return Err(e),
        }
    }
    if last == applied {
        // Everything was applied before: nothing to write.
        return Ok(ApplyOutput {
            results,
            ..Default::default()
        });
    }
    let events = w.commit(last)?;
    Ok(ApplyOutput {
        results,
        events,
        lease_changes: ctx.lease_changes,
    })
}

/// Why a request did not apply: the client's problem (answered, batch goes
/// on) or the member's (fatal, batch abandoned).
#[derive(Debug)]
enum Fail {
    Client(EtcdError),
    Storage(StorageError),
}

impl From<EtcdError> for Fail {
    fn from(e: EtcdError) -> Self {
        Fail::Client(e)
    }
}

impl From<StorageError> for Fail {
    fn from(e: StorageError) -> Self {
        Fail::Storage(e)
    }
}

impl From<ReadError> for Fail {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Client(e) => Fail::Client(e),
            ReadError::Storage(e) => Fail::Storage(e),
        }
    }
}

/// Per-batch inputs that are not part of the replicated state.
struct Ctx {
    /// Shorter lease grants are raised to this TTL (seconds).
    min_lease_ttl: i64,
    /// Lease changes applied so far in this batch.
    lease_changes: Vec<LeaseChange>,
}

fn apply_request(
    w: &mut BatchWriter,
    ctx: &mut Ctx,
    request: Request,
) -> Result<ApplyResponse, Fail> {
    match request {
        Request::Put(p) => apply_put(w, &p).map(ApplyResponse::Put),
        Request::DeleteRange(d) => apply_delete_range(w, &d).map(ApplyResponse::DeleteRange),
        Request::Txn(t) => apply_txn(w, &t).map(ApplyResponse::Txn),
        Request::Compaction(c) => apply_compaction(w, &c).map(ApplyResponse::Compaction),
        Request::Alarm(a) => Ok(ApplyResponse::Alarm(apply_alarm(w, &a))),
        Request::LeaseGrant(g) => apply_lease_grant(w, ctx, &g).map(ApplyResponse::LeaseGrant),
        Request::LeaseRevoke(r) => apply_lease_revoke(w, ctx, &r).map(ApplyResponse::LeaseRevoke),
        Request::LeaseCheckpoint(c) => Ok(ApplyResponse::LeaseCheckpoint(apply_lease_checkpoint(
            w, ctx, &c,
        ))),
        Request::MemberAttributes(m) => {
            w.set_member_attributes(m);
            Ok(ApplyResponse::MemberAttributes)
        }
        Request::MemberUpdate(m) => apply_member_update(w, m)
            .map(ApplyResponse::Membership)
            .map_err(Fail::Client),
        auth => {
            // Applied on a copy: a refused change leaves the batch's state as it was.
            let mut next = w.auth_mut().clone();
            next.apply(&auth)?;
            *w.auth_mut() = next;
            Ok(ApplyResponse::Auth)
        }
    }
}

/// etcd's MemberUpdate: the member's new peer URLs, which no other member
/// may use.
fn apply_member_update(
    w: &mut BatchWriter,
    update: MemberRecord,
) -> Result<MemberRecord, EtcdError> {
    let membership = w.store().membership();
    let mut m = membership
        .get(&update.id)
        .cloned()
        .ok_or(EtcdError::MemberNotFound)?;
    if crate::cluster::peer_urls_taken(&membership, m.id, &update.peer_urls) {
        return Err(EtcdError::PeerUrlExist);
    }
    m.peer_urls = update.peer_urls;
    w.set_conf_member(m.clone());
    Ok(m)
}

/// What applying a raft conf change entry did.
pub struct ConfApplied {
    /// The proposer's answer.
    pub result: Result<ApplyResponse, EtcdError>,
    /// Whether raft takes the change (false: refused alike on every member).
    pub taken: bool,
    /// The member as the change left it (or as proposed, when refused).
    pub member: MemberRecord,
}

/// Applies a membership change (etcd's `ValidateConfigurationChange` and
/// `applyConfChange`) as its own batch at `index`. Every member decides
/// alike from the same applied state: a change that no longer holds (the
/// member meanwhile added, removed, or its URLs taken) is refused and
/// leaves raft's configuration as it was.
pub fn apply_conf_change(
    store: &Store,
    index: u64,
    cc: &raft::eraftpb::ConfChange,
    member: MemberRecord,
) -> Result<ConfApplied, StorageError> {
    use raft::eraftpb::ConfChangeType::*;
    let membership = store.membership();
    let existing = membership.get(&cc.node_id).cloned();
    let urls_taken = || crate::cluster::peer_urls_taken(&membership, member.id, &member.peer_urls);
    let decided: Result<Option<MemberRecord>, EtcdError> = match cc.get_change_type() {
        AddNode => match existing.clone() {
            // Promote: a learner becomes a voter.
            Some(m) if m.is_learner => Ok(Some(MemberRecord {
                is_learner: false,
                ..m
            })),
            Some(_) => Err(EtcdError::MemberExist),
            None if store.is_removed(cc.node_id) => Err(EtcdError::MemberNotFound),
            None if urls_taken() => Err(EtcdError::PeerUrlExist),
            None => Ok(Some(MemberRecord {
                is_learner: false,
                ..member.clone()
            })),
        },
        AddLearnerNode => match existing.clone() {
            Some(_) => Err(EtcdError::MemberExist),
            None if store.is_removed(cc.node_id) => Err(EtcdError::MemberNotFound),
            None if urls_taken() => Err(EtcdError::PeerUrlExist),
            None => Ok(Some(MemberRecord {
                is_learner: true,
                ..member.clone()
            })),
        },
        RemoveNode => match &existing {
            Some(_) => Ok(None),
            None => Err(EtcdError::MemberNotFound),
        },
    };
    let mut w = BatchWriter::new(store);
    let out = match decided {
        Ok(Some(m)) => {
            w.set_conf_member(m.clone());
            ConfApplied {
                result: Ok(ApplyResponse::Membership(m.clone())),
                taken: true,
                member: m,
            }
        }
        Ok(None) => {
            w.remove_conf_member(cc.node_id);
            let gone = existing.unwrap_or(member);
            ConfApplied {
                result: Ok(ApplyResponse::Membership(gone.clone())),
                taken: true,
                member: gone,
            }
        }
        Err(e) => ConfApplied {
            result: Err(e),
            taken: false,
            member,
        },
    };
    w.commit(index)?;
    Ok(out)
}

/// The one place that decides whether a put may attach `lease`: no lease,
/// or one that exists (counting this batch's grants and revokes).
/// `exists` looks the lease up in the batch being applied.
fn check_lease(lease: i64, exists: impl FnOnce(i64) -> bool) -> Result<(), EtcdError> {
    if lease == 0 || exists(lease) {
        Ok(())
    } else {
        Err(EtcdError::LeaseNotFound)
    }
}

/// etcd's lessor.Grant: id 0 is refused (the proposer picks a nonzero id
/// for clients that leave it to the server), too large a TTL is refused, an
/// existing id is refused, a short TTL is raised to the minimum.
fn apply_lease_grant(
    w: &mut BatchWriter,
    ctx: &mut Ctx,
    g: &LeaseGrantRequest,
) -> Result<LeaseGrantResponse, Fail> {
    check_corrupt(w)?;
    check_capped(w, crate::quota::LEASE_OVERHEAD)?;
    if g.id == 0 {
        return Err(EtcdError::LeaseNotFound.into());
    }
    if g.ttl > MAX_LEASE_TTL {
        return Err(EtcdError::LeaseTtlTooLarge.into());
    }
    if w.lease(g.id).is_some() {
        return Err(EtcdError::LeaseExist.into());
    }
    let ttl = g.ttl.max(ctx.min_lease_ttl);
    w.put_lease(Lease {
        id: g.id,
        ttl,
        remaining_ttl: 0,
    });
    ctx.lease_changes
        .push(LeaseChange::Granted { id: g.id, ttl });
    Ok(LeaseGrantResponse {
        header: header(w.rev()),
        id: g.id,
        ttl,
        error: String::new(),
    })
}

/// etcd's lessor.Revoke: every attached key is deleted in ONE write
/// transaction, in key order (one revision, sub-revisions by key, DELETE
/// events with prev_kv), and the lease goes in the same batch.
fn apply_lease_revoke(
    w: &mut BatchWriter,
    ctx: &mut Ctx,
    r: &LeaseRevokeRequest,
) -> Result<LeaseRevokeResponse, Fail> {
    check_corrupt(w)?;
    if w.lease(r.id).is_none() {
        return Err(EtcdError::LeaseNotFound.into());
    }
    let keys = w.lease_keys(r.id)?;
    let mut txn = w.txn();
    for key in &keys {
        txn.delete_range(&KeyRange::new(key, &[]))?;
    }
    txn.commit();
    w.remove_lease(r.id);
    ctx.lease_changes.push(LeaseChange::Revoked { id: r.id });
    Ok(LeaseRevokeResponse {
        header: header(w.rev()),
    })
}

/// etcd's lessor.Checkpoint: records each lease's remaining TTL (used when a
/// new leader takes over); unknown leases are skipped.
fn apply_lease_checkpoint(
    w: &mut BatchWriter,
    ctx: &mut Ctx,
    c: &LeaseCheckpointRequest,
) -> LeaseCheckpointResponse {
    for cp in &c.checkpoints {
        if let Some(mut rec) = w.lease(cp.id) {
            rec.remaining_ttl = cp.remaining_ttl;
            w.put_lease(rec);
            ctx.lease_changes.push(LeaseChange::Checkpointed {
                id: cp.id,
                remaining_ttl: cp.remaining_ttl,
            });
        }
    }
    LeaseCheckpointResponse {
        header: header(w.rev()),
    }
}

/// etcd swaps in a restricted applier while an alarm is active: with CORRUPT
/// every KV request fails; with NOSPACE ("capped") writes that add data fail.
fn check_corrupt(w: &BatchWriter) -> Result<(), EtcdError> {
    if w.alarm_active(AlarmType::Corrupt) {
        return Err(EtcdError::Corrupt);
    }
    Ok(())
}

/// etcd's capped applier: while any member's NOSPACE alarm is active, a
/// write that may add data (`cost` > 0, see `crate::quota`) fails. The
/// alarm is replicated state, so every member refuses the same writes; the
/// quota itself is checked at the edge, against the receiving member's size.
fn check_capped(w: &BatchWriter, cost: u64) -> Result<(), EtcdError> {
    if cost > 0 && w.alarm_active(AlarmType::Nospace) {
        return Err(EtcdError::NoSpace);
    }
    Ok(())
}

fn apply_put(w: &mut BatchWriter, p: &PutRequest) -> Result<PutResponse, Fail> {
    check_corrupt(w)?;
    check_capped(w, crate::quota::put_cost(p))?;
    check_lease(p.lease, |id| w.lease(id).is_some())?;
    let mut txn = w.txn();
    let resp = put_in(&mut txn, p)?;
    txn.commit();
    Ok(resp)
}

/// A put inside a write transaction (top level or in a txn); the header
/// revision is the revision the put created.
fn put_in(txn: &mut WriteTxn, p: &PutRequest) -> Result<PutResponse, Fail> {
    let prev = if p.ignore_value || p.ignore_lease || p.prev_kv {
        txn.get(&p.key)?
    } else {
        None
    };
    let (value, lease) = match (&prev, p.ignore_value || p.ignore_lease) {
        (None, true) => return Err(EtcdError::KeyNotFound.into()),
        (Some(prev), _) => (
            if p.ignore_value {
                &prev.value
            } else {
                &p.value
            },
            if p.ignore_lease { prev.lease } else { p.lease },
        ),
        (None, false) => (&p.value, p.lease),
    };
    let rev = txn.put(&p.key, value, lease);
    Ok(PutResponse {
        header: header(rev),
        prev_kv: if p.prev_kv { prev } else { None },
    })
}

fn apply_delete_range(
    w: &mut BatchWriter,
    d: &DeleteRangeRequest,
) -> Result<DeleteRangeResponse, Fail> {
    check_corrupt(w)?;
    let mut txn = w.txn();
    let resp = delete_in(&mut txn, d)?;
    txn.commit();
    Ok(resp)
}

/// A delete inside a write transaction. Header revision: the new revision if
/// the transaction has changed anything so far, else the revision it began at.
fn delete_in(txn: &mut WriteTxn, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse, Fail> {
    let range = KeyRange::new(&d.key, &d.range_end);
    let prev_kvs = if d.prev_kv {
        txn.range_kvs(&range)?
    } else {
        Vec::new()
    };
    let (deleted, rev) = txn.delete_range(&range)?;
    Ok(DeleteRangeResponse {
        header: header(rev),
        deleted,
        prev_kvs,
    })
}

/// Compaction on the apply thread is only the deterministic, cheap part:
/// the compact revision, written with the batch's applied index and
/// published with it (reads below it fail from then on). The store's
/// background compactor then prunes the key index and deletes the old
/// records in small batches; `physical` is honoured by the gRPC handler,
/// which waits for that ([`Store::wait_compacted`]).
fn apply_compaction(
    w: &mut BatchWriter,
    c: &CompactionRequest,
) -> Result<CompactionResponse, Fail> {
    check_corrupt(w)?;
    w.compact(c.revision)?;
    Ok(CompactionResponse {
        header: header(w.rev()),
    })
}

fn apply_alarm(w: &mut BatchWriter, a: &AlarmRequest) -> AlarmResponse {
    let alarms = match AlarmAction::try_from(a.action) {
        Ok(AlarmAction::Get) => w.alarms(a.alarm),
        Ok(AlarmAction::Activate) => vec![w.activate_alarm(a.member_id, a.alarm)],
        Ok(AlarmAction::Deactivate) => w
            .deactivate_alarm(a.member_id, a.alarm)
            .into_iter()
            .collect(),
        Err(_) => Vec::new(),
    };
    AlarmResponse {
        header: header(w.rev()),
        alarms,
    }
}

/// A txn after evaluating its compares: the branch taken, with every nested
/// txn in it already planned. etcd evaluates all compares, nested ones
/// included, against the state before the txn runs.
struct Plan<'a> {
    /// Whether the compares held (success branch) or not (failure branch).
    succeeded: bool,
    /// The ops of the branch taken, nested txns with their own plans.
    ops: Vec<Planned<'a>>,
    /// Compares evaluated (up to the first that failed), nested txns'
    /// included: each is a range read to etcd's metrics.
    compares: usize,
}

impl Plan<'_> {
    /// Range, put and delete-range ops run, nested txns' included.
    fn ops_run(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Planned::Txn(nested) => nested.ops_run(),
                Planned::Empty => 0,
                _ => 1,
            })
            .sum()
    }
}

/// Whether `t` holds only ranges, in either branch (etcd's isTxnReadonly).
fn reads_only(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(Op::RequestRange(_)) | None => true,
            Some(Op::RequestTxn(nested)) => reads_only(nested),
            Some(_) => false,
        })
}

enum Planned<'a> {
    Range(&'a RangeRequest),
    Put(&'a PutRequest),
    Delete(&'a DeleteRangeRequest),
    Txn(Plan<'a>),
    /// A RequestOp with no request set; etcd skips it.
    Empty,
}

fn plan<'a, V: ReadView + ?Sized>(view: &V, t: &'a TxnRequest) -> Result<Plan<'a>, ReadError> {
    let mut succeeded = true;
    let mut compares = 0;
    for c in &t.compare {
        compares += 1;
        if !compare_holds(view, c)? {
            succeeded = false;
            break;
        }
    }
    let branch = if succeeded { &t.success } else { &t.failure };
    let ops = branch
        .iter()
        .map(|op| {
            Ok(match &op.request {
                Some(Op::RequestRange(r)) => Planned::Range(r),
                Some(Op::RequestPut(p)) => Planned::Put(p),
                Some(Op::RequestDeleteRange(d)) => Planned::Delete(d),
                Some(Op::RequestTxn(t)) => Planned::Txn(plan(view, t)?),
                None => Planned::Empty,
            })
        })
        .collect::<Result<Vec<_>, ReadError>>()?;
    let nested: usize = ops
        .iter()
        .map(|op| match op {
            Planned::Txn(p) => p.compares,
            _ => 0,
        })
        .sum();
    Ok(Plan {
        succeeded,
        ops,
        compares: compares + nested,
    })
}

/// etcd's compare: over every key in the range (all must satisfy it). With no
/// key in the range, a VALUE compare fails and any other compares against a
/// zero KeyValue (so `create_revision == 0` tests absence).
fn compare_holds<V: ReadView + ?Sized>(view: &V, c: &Compare) -> Result<bool, ReadError> {
    let kvs = view.range_kvs(&KeyRange::new(&c.key, &c.range_end))?;
    if kvs.is_empty() {
        if c.target == CompareTarget::Value as i32 {
            return Ok(false);
        }
        return Ok(compare_kv(c, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_kv(c, kv)))
}

/// One key against one compare. A target_union that does not match the
/// target compares against zero / empty, and unknown enum values behave as
/// in etcd (unknown target: equal; unknown result: holds).
fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let int = |want: Option<i64>, have: i64| have.cmp(&want.unwrap_or(0));
    let ord = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        Ok(CompareTarget::Version) => int(
            match c.target_union {
                Some(TargetUnion::Version(v)) => Some(v),
                _ => None,
            },
            kv.version,
        ),
        Ok(CompareTarget::Create) => int(
            match c.target_union {
                Some(TargetUnion::CreateRevision(v)) => Some(v),
                _ => None,
            },
            kv.create_revision,
        ),
        Ok(CompareTarget::Mod) => int(
            match c.target_union {
                Some(TargetUnion::ModRevision(v)) => Some(v),
                _ => None,
            },
            kv.mod_revision,
        ),
        Ok(CompareTarget::Lease) => int(
            match c.target_union {
                Some(TargetUnion::Lease(v)) => Some(v),
                _ => None,
            },
            kv.lease,
        ),
        Err(_) => Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        Err(_) => true,
    }
}

/// Checks every put in the planned branches before anything runs: ignore_value
/// / ignore_lease need an existing key, a lease must exist.
fn check_puts(view: &WriteTxn, plan: &Plan) -> Result<(), Fail> {
    for op in &plan.ops {
        match op {
            Planned::Put(p) => {
                if (p.ignore_value || p.ignore_lease) && view.get(&p.key)?.is_none() {
                    return Err(EtcdError::KeyNotFound.into());
                }
                check_lease(p.lease, |id| view.lease(id).is_some())?;
            }
            Planned::Txn(nested) => check_puts(view, nested)?,
            _ => {}
        }
    }
    Ok(())
}

/// Checks every range's revision before anything runs (etcd's
/// checkRequestRange: 0 is fine, above the current revision is FutureRev,
/// below the compact revision is Compacted, so a negative one is too once
/// the store was compacted).
fn check_ranges<V: ReadView + ?Sized>(view: &V, plan: &Plan) -> Result<(), EtcdError> {
    for op in &plan.ops {
        match op {
            Planned::Range(r) => match r.revision {
                0 => {}
                rev if rev > view.rev() => return Err(EtcdError::FutureRev),
                rev if rev < view.compact_rev() => return Err(EtcdError::Compacted),
                _ => {}
            },
            Planned::Txn(nested) => check_ranges(view, nested)?,
            _ => {}
        }
    }
    Ok(())
}

fn apply_txn(w: &mut BatchWriter, t: &TxnRequest) -> Result<TxnResponse, Fail> {
    check_corrupt(w)?;
    check_capped(w, crate::quota::txn_cost(t))?;
    let mut txn = w.txn();
    let plan = plan(&txn, t)?;
    check_puts(&txn, &plan)?;
    check_ranges(&txn, &plan)?;
    let mut resp = execute(&mut txn, &plan)?;
    crate::io_metrics::txn_applied(plan.compares, plan.ops_run(), reads_only(t));
    // etcd: the revision the txn began at, plus one if it wrote anything.
    resp.header = header(txn.read_rev());
    txn.commit();
    Ok(resp)
}

/// Runs a planned branch. Sub-responses carry their own header revisions as
/// etcd sets them; a nested txn's own header is left with revision 0, as in
/// etcd. An error here drops the transaction, which undoes its writes.
fn execute(txn: &mut WriteTxn, plan: &Plan) -> Result<TxnResponse, Fail> {
    let mut responses = Vec::with_capacity(plan.ops.len());
    for op in &plan.ops {
        let response = match op {
            Planned::Range(r) => Some(OpResponse::ResponseRange(range::range(&*txn, r)?)),
            Planned::Put(p) => Some(OpResponse::ResponsePut(put_in(txn, p)?)),
            Planned::Delete(d) => Some(OpResponse::ResponseDeleteRange(delete_in(txn, d)?)),
            Planned::Txn(nested) => Some(OpResponse::ResponseTxn(execute(txn, nested)?)),
            Planned::Empty => None,
        };
        responses.push(ResponseOp { response });
    }
    Ok(TxnResponse {
        header: Some(ResponseHeader::default()),
        succeeded: plan.succeeded,
        responses,
    })
}

mod auth;
#[cfg(test)]
mod tests;
