//! What the API layer uses to reach consensus: [`RaftClient::propose`] for
//! writes and [`RaftClient::read_barrier`] for linearizable reads.
//!
//! A proposal gets an id (unique across restarts, like etcd's: member bits,
//! start time, counter), is registered in [`Proposals`], encoded as a
//! `cairnpb::InternalRequest` and sent to the RaftNode actor. The Storage
//! actor completes the waiter when it applies the entry with that id, so the
//! caller is answered exactly when its write is applied.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::{Recipient, SendError};
use dashmap::DashMap;
use prost::Message as _;
use tokio::sync::{oneshot, watch};

use super::{Propose, RaftStatus, ReadIndex, TransferLeader};
use crate::apply::ApplyResponse;
use crate::error::EtcdError;
use crate::proto::cairnpb::{internal_request::Request, InternalRequest};

type Waiter = oneshot::Sender<Result<ApplyResponse, EtcdError>>;

/// Proposals of this member that wait for their entry to be applied.
pub struct Proposals {
    /// Next proposal id.
    next: AtomicU64,
    /// Waiters by proposal id; a DashMap because gRPC tasks on many threads
    /// register while the Storage actor completes.
    waiters: DashMap<u64, Waiter>,
    /// Proposals sent to raft whose caller stopped waiting before they
    /// were applied (timed out, went away, member stopping): etcd's
    /// etcd_server_proposals_failed_total.
    failed: AtomicU64,
}

impl Proposals {
    pub fn new(member_id: u64) -> Proposals {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        // 16 bits of member id, 40 bits of start time, 8 zero bits; the
        // counter then increments from there (etcd's idutil layout).
        let base = ((member_id & 0xffff) << 48) | ((ms & 0xff_ffff_ffff) << 8);
        Proposals {
            next: AtomicU64::new(base),
            waiters: DashMap::new(),
            failed: AtomicU64::new(0),
        }
    }

    fn register(&self) -> (u64, oneshot::Receiver<Result<ApplyResponse, EtcdError>>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(id, tx);
        (id, rx)
    }

    /// A fresh id from the same generator, for things other than proposals
    /// (lease ids: etcd draws them from its request id generator too).
    pub fn fresh_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Whether the waiter was still there (its proposal not applied).
    fn cancel(&self, id: u64) -> bool {
        self.waiters.remove(&id).is_some()
    }

    /// Proposals that failed (see the field).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Waiters registered and not yet completed or cancelled.
    pub fn pending(&self) -> usize {
        self.waiters.len()
    }

    /// Called by Storage when the entry carrying `id` has been applied.
    /// Ids proposed by other members (or before a restart) have no waiter.
    pub fn complete(&self, id: u64, result: Result<ApplyResponse, EtcdError>) {
        if let Some((_, tx)) = self.waiters.remove(&id) {
            let _ = tx.send(result);
        }
    }
}

/// Removes a proposal's waiter when its caller goes away (a client that
/// disconnects, a timeout), so the waiter table never grows with abandoned
/// proposals whose entries are never applied here.
struct WaiterGuard<'a> {
    proposals: &'a Proposals,
    id: u64,
    /// Sent to raft: abandoning it now is a failed proposal.
    sent: bool,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        // A no-op when Storage already completed it.
        if self.proposals.cancel(self.id) && self.sent {
            self.proposals.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// etcd's `maxGapBetweenApplyAndCommitIndex`: proposals are refused with
/// "too many requests" while more entries than this are committed but not
/// yet applied, so a slow apply cannot queue unbounded work.
pub const MAX_APPLY_GAP: u64 = 5000;

/// RaftNode's inboxes that the API layer uses.
pub struct RaftInbox {
    pub learner_ready: Recipient<super::LearnerReady>,
    pub propose: Recipient<Propose>,
    pub read_index: Recipient<ReadIndex>,
    pub transfer: Recipient<TransferLeader>,
}

/// Cheap to clone; one per gRPC service.
#[derive(Clone)]
pub struct RaftClient {
    /// RaftNode's inbox for proposals.
    propose: Recipient<Propose>,
    /// RaftNode's inbox for read index requests.
    read_index: Recipient<ReadIndex>,
    /// RaftNode's inbox for leadership transfers.
    transfer: Recipient<TransferLeader>,
    /// RaftNode's inbox for a learner's progress.
    learner_ready: Recipient<super::LearnerReady>,
    proposals: Arc<Proposals>,
    /// The commit index, for the apply-gap admission check.
    status: Arc<RaftStatus>,
    /// Applied index published by Storage.
    applied: watch::Receiver<u64>,
    /// etcd's --max-request-bytes, checked on the encoded proposal.
    max_request_bytes: usize,
    /// How long a request may wait for commit and apply (etcd: 5 s plus two
    /// election timeouts) before the client gets "request timed out".
    timeout: Duration,
}

impl RaftClient {
    pub fn new(
        inbox: RaftInbox,
        proposals: Arc<Proposals>,
        status: Arc<RaftStatus>,
        applied: watch::Receiver<u64>,
        max_request_bytes: usize,
        timeout: Duration,
    ) -> RaftClient {
        let RaftInbox {
            learner_ready,
            propose,
            read_index,
            transfer,
        } = inbox;
        RaftClient {
            propose,
            read_index,
            transfer,
            learner_ready,
            proposals,
            status,
            applied,
            max_request_bytes,
            timeout,
        }
    }

    /// Replicates `request` and returns its applied result.
    pub async fn propose(&self, request: Request) -> Result<ApplyResponse, EtcdError> {
        self.propose_stamped(request, None).await
    }

    /// Replicates `request` stamped with who sent it (judged again at
    /// apply; None for the member's own requests) and returns its applied
    /// result.
    pub async fn propose_stamped(
        &self,
        request: Request,
        auth: Option<crate::proto::cairnpb::AuthStamp>,
    ) -> Result<ApplyResponse, EtcdError> {
        self.submit(false, |id| {
            InternalRequest {
                id,
                request: Some(request),
                auth,
            }
            .encode_to_vec()
        })
        .await
    }

    /// Proposes a membership change (a raft conf change of `change_type`
    /// for `member`) and waits until it is applied here.
    pub async fn propose_conf_change(
        &self,
        change_type: raft::eraftpb::ConfChangeType,
        member: crate::proto::cairnpb::MemberRecord,
    ) -> Result<ApplyResponse, EtcdError> {
        self.submit(true, |id| {
            let mut cc = raft::eraftpb::ConfChange {
                node_id: member.id,
                context: crate::proto::cairnpb::ConfChangeContext {
                    id,
                    member: Some(member),
                }
                .encode_to_vec()
                .into(),
                ..Default::default()
            };
            cc.set_change_type(change_type);
            protobuf::Message::write_to_bytes(&cc).unwrap_or_default()
        })
        .await
    }

    /// Registers a waiter, sends what `encode` makes of the proposal id to
    /// RaftNode and waits for the entry to be applied here.
    async fn submit(
        &self,
        conf_change: bool,
        encode: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<ApplyResponse, EtcdError> {
        if self.status.commit_index() > self.applied_index() + MAX_APPLY_GAP {
            return Err(EtcdError::TooManyRequests);
        }
        let (id, rx) = self.proposals.register();
        let mut guard = WaiterGuard {
            proposals: &self.proposals,
            id,
            sent: false,
        };
        let data = encode(id);
        if data.len() > self.max_request_bytes {
            return Err(EtcdError::RequestTooLarge);
        }
        // No reply to wait for: a refusal comes through the waiter. A full
        // mailbox makes the proposer wait for room (backpressure).
        let proposal = Propose {
            id,
            data,
            conf_change,
        };
        guard.sent = true;
        let sent = match self.propose.try_send(proposal) {
            Ok(()) => Ok(()),
            Err(SendError::Full(msg)) => self.propose.send(msg).await.map_err(|_| ()),
            Err(SendError::Closed(_)) => Err(()),
        };
        if sent.is_err() {
            return Err(EtcdError::Stopped);
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(EtcdError::Stopped),
            Err(_) => Err(EtcdError::Timeout),
        }
    }

    /// Returns once every write acknowledged before the call is visible to
    /// reads on this member: gets a read index from the leader, then waits
    /// for Storage to apply up to it.
    pub async fn read_barrier(&self) -> Result<(), EtcdError> {
        let wait = async {
            let index = self
                .read_index
                .send(ReadIndex)
                .await
                .map_err(|_| EtcdError::Stopped)??;
            let mut applied = self.applied.clone();
            applied
                .wait_for(|a| *a >= index)
                .await
                .map_err(|_| EtcdError::Stopped)?;
            Ok(())
        };
        tokio::time::timeout(self.timeout, wait)
            .await
            .unwrap_or(Err(EtcdError::Timeout))
    }

    /// An id for a lease granted without one: positive and nonzero, unique
    /// per member (etcd: `reqIDGen.Next() & (1<<63 - 1)`). The proposer picks
    /// it so that applying the grant stays deterministic.
    pub fn new_lease_id(&self) -> i64 {
        loop {
            let id = (self.proposals.fresh_id() & (i64::MAX as u64)) as i64;
            if id != 0 {
                return id;
            }
        }
    }

    /// etcd's MoveLeader: hands leadership to voter `target` and waits until
    /// this member sees it lead, up to the request timeout.
    pub async fn move_leader(&self, target: u64, poll: Duration) -> Result<(), EtcdError> {
        self.transfer
            .send(TransferLeader { target })
            .await
            .map_err(|_| EtcdError::Stopped)??;
        let deadline = tokio::time::Instant::now() + self.timeout;
        while self.status.leader_id() != target {
            if tokio::time::Instant::now() >= deadline {
                return Err(EtcdError::TimeoutLeaderTransfer);
            }
            tokio::time::sleep(poll).await;
        }
        Ok(())
    }

    /// Whether this member knows a leader now.
    /// See [`super::LearnerReady`].
    pub async fn learner_ready(&self, id: u64) -> Option<bool> {
        self.learner_ready
            .send(super::LearnerReady { id })
            .await
            .ok()
            .flatten()
    }

    pub fn leader_known(&self) -> bool {
        self.status.leader_id() != 0
    }

    /// Whether this member leads now.
    pub fn is_leader(&self) -> bool {
        self.status.is_leader()
    }

    /// How long a request may wait before "request timed out".
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Proposals waiting to be applied (etcd_server_proposals_pending).
    pub fn pending_proposals(&self) -> usize {
        self.proposals.pending()
    }

    /// Proposals that failed (etcd_server_proposals_failed_total).
    pub fn failed_proposals(&self) -> u64 {
        self.proposals.failed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::Progress;
    use crate::proto::etcdserverpb::PutRequest;
    use actix::{Actor, Context, Handler, System};

    /// A RaftNode that takes proposals and never commits them.
    struct BlackHole;

    impl Actor for BlackHole {
        type Context = Context<Self>;
    }

    impl Handler<Propose> for BlackHole {
        type Result = ();
        fn handle(&mut self, _: Propose, _: &mut Context<Self>) {}
    }

    impl Handler<TransferLeader> for BlackHole {
        type Result = Result<(), EtcdError>;
        fn handle(&mut self, _: TransferLeader, _: &mut Context<Self>) -> Self::Result {
            Ok(())
        }
    }

    impl Handler<ReadIndex> for BlackHole {
        type Result = Result<u64, EtcdError>;
        fn handle(&mut self, _: ReadIndex, _: &mut Context<Self>) -> Self::Result {
            Ok(0)
        }
    }

    impl Handler<crate::msg::LearnerReady> for BlackHole {
        type Result = Option<bool>;
        fn handle(&mut self, _: crate::msg::LearnerReady, _: &mut Context<Self>) -> Option<bool> {
            None
        }
    }

    fn client(status: Arc<RaftStatus>, applied: watch::Receiver<u64>) -> RaftClient {
        let node = BlackHole.start();
        RaftClient::new(
            RaftInbox {
                learner_ready: node.clone().recipient(),
                propose: node.clone().recipient(),
                read_index: node.clone().recipient(),
                transfer: node.recipient(),
            },
            Arc::new(Proposals::new(1)),
            status,
            applied,
            1 << 20,
            Duration::from_millis(200),
        )
    }

    fn put() -> Request {
        Request::Put(PutRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })
    }

    #[test]
    fn abandoned_and_timed_out_proposals_leave_no_waiter() {
        System::new().block_on(async {
            let (_tx, applied) = watch::channel(0);
            let c = client(Arc::new(RaftStatus::default()), applied);
            assert!(matches!(c.propose(put()).await, Err(EtcdError::Timeout)));
            assert_eq!(c.proposals.pending(), 0, "a timed-out waiter stays");

            // The caller goes away while its proposal is in flight.
            let abandoned = tokio::time::timeout(Duration::from_millis(20), c.propose(put()));
            assert!(abandoned.await.is_err());
            assert_eq!(c.proposals.pending(), 0, "an abandoned waiter stays");
            assert_eq!(c.failed_proposals(), 2, "both count as failed proposals");
        });
    }

    #[test]
    fn proposals_are_refused_past_the_apply_gap() {
        System::new().block_on(async {
            let status = Arc::new(RaftStatus::default());
            let (tx, applied) = watch::channel(100);
            let c = client(status.clone(), applied);
            status.publish(Progress {
                commit_index: 100 + MAX_APPLY_GAP + 1,
                ..Default::default()
            });
            assert!(matches!(
                c.propose(put()).await,
                Err(EtcdError::TooManyRequests)
            ));
            assert_eq!(c.proposals.pending(), 0);
            assert_eq!(c.failed_proposals(), 0, "refused before raft: not failed");
            // Apply catches up: proposals are taken again (and time out here).
            tx.send_replace(101);
            assert!(matches!(c.propose(put()).await, Err(EtcdError::Timeout)));
        });
    }
}
