//! etcd's concurrency recipes (clientv3's `concurrency` package): sessions,
//! mutexes and elections, built from nothing but the public etcd v3 API —
//! Txn, Range and DeleteRange on KV, LeaseGrant/KeepAlive/Revoke, and Watch —
//! over a tonic [`Channel`] to any etcd-API server (cairn or etcd).
//!
//! They hold no state of their own on the server: a lock or a candidacy is a
//! key `<name>/<lease id in hex>` attached to a session's lease, and waiting
//! means watching the key created just before one's own. So a lease expiry (or
//! revoke) releases a lock or a leadership by deleting the key, and a crashed
//! waiter leaves nothing behind once its lease is gone.
//!
//! ```text
//!  Lock / Campaign ─▶ Txn: create <name>/<lease> if absent (put with lease), else read it
//!                  ─▶ Range <name>/ sorted by create revision, ≤ own revision - 1, last one
//!                      └─ none: acquired ◀──────────────────────────────────────┐
//!                      └─ some key K: Watch K from the Range's revision until a DELETE ┘
//! ```
//!
//! The Lock and Election gRPC services (`grpc::lock`, `grpc::election`) are
//! thin shells over these, exactly as etcd's v3lock and v3election servers are
//! over clientv3: that keeps them independent of the watch and lease
//! internals. [`session`], [`mutex`] and [`election`] are the three recipes;
//! this module holds the client they share and the request builders.

pub mod election;
pub mod mutex;
pub mod session;
mod wait;

use tokio::sync::oneshot;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::{InterceptedService, Interceptor};
use tonic::transport::Channel;

use crate::error::EtcdError;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::request_op::Request as Op;
use crate::proto::etcdserverpb::response_op::Response as OpResponse;
use crate::proto::etcdserverpb::watch_client::WatchClient;
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse, RequestOp, ResponseOp,
    TxnRequest, TxnResponse,
};

pub use election::LeaderKey;
pub use session::{Session, DEFAULT_SESSION_TTL};

/// What a recipe can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused or failed one of the recipe's requests (e.g.
    /// `etcdserver: requested lease not found` when the session's lease is
    /// gone), or a watch was cancelled by it.
    #[error("{}", .0.message())]
    Rpc(#[from] tonic::Status),
    /// The recipe's own outcome: `election: not leader`, `election: no
    /// leader`, a watch that ended without the awaited delete, or a watch
    /// refused as clientv3 reports it (compacted, future revision).
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

/// The connection the recipes' requests travel on: a channel whose
/// requests carry an auth token when the caller sent one (etcd's Lock and
/// Election services act with their caller's credentials).
pub type Conn = InterceptedService<Channel, WithToken>;

/// Adds the caller's credentials metadata (its `token`, if any) to every
/// request.
#[derive(Clone, Debug, Default)]
pub struct WithToken(Vec<(&'static str, MetadataValue<Ascii>)>);

impl Interceptor for WithToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        for (key, value) in &self.0 {
            req.metadata_mut().insert(*key, value.clone());
        }
        Ok(req)
    }
}

/// The three etcd clients the recipes use, sharing one channel; cheap to
/// clone (tonic clients are handles on the channel).
#[derive(Clone, Debug)]
pub struct Client {
    pub kv: KvClient<Conn>,
    pub lease: LeaseClient<Conn>,
    pub watch: WatchClient<Conn>,
    /// The channel, for [`Client::with_metadata`].
    channel: Channel,
}

impl Client {
    pub fn new(channel: Channel) -> Client {
        Client::with(channel, WithToken::default())
    }

    fn with(channel: Channel, token: WithToken) -> Client {
        Client {
            kv: KvClient::with_interceptor(channel.clone(), token.clone()),
            lease: LeaseClient::with_interceptor(channel.clone(), token.clone()),
            watch: WatchClient::with_interceptor(channel.clone(), token),
            channel,
        }
    }

    /// The same connection, every request carrying `metadata` (a caller's
    /// credentials, `auth::Credentials::forwarded`).
    pub fn with_metadata(&self, metadata: Vec<(&'static str, MetadataValue<Ascii>)>) -> Client {
        Client::with(self.channel.clone(), WithToken(metadata))
    }
}

/// `<prefix><lease in hex>`, as Go's `fmt.Sprintf("%s%x", pfx, lease)`
/// spells it (lower case, a minus sign for negative ids).
pub fn lease_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    [prefix, hex.as_bytes()].concat()
}

/// The range end that makes `key` a prefix (clientv3's `GetPrefixRangeEnd`):
/// the last byte below 0xff incremented, what follows it dropped; "\0" (to
/// the end of the keyspace) if every byte is 0xff.
pub fn prefix_end(key: &[u8]) -> Vec<u8> {
    match key.iter().rposition(|&b| b < 0xff) {
        Some(i) => {
            let mut end = key[..=i].to_vec();
            end[i] += 1;
            end
        }
        None => vec![0],
    }
}

/// The oldest key under `prefix` (clientv3's `WithFirstCreate`): the lock
/// holder or the elected leader.
fn first_created(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        ..Default::default()
    }
}

/// The newest key under `prefix` created at or before `max_create_revision`
/// (`WithLastCreate` + `WithMaxCreateRev`): the one to wait for.
fn last_created_before(prefix: &[u8], max_create_revision: i64) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Create as i32,
        max_create_revision,
        ..Default::default()
    }
}

/// `create_revision(key) == revision` (0: the key does not exist).
fn created_at(key: &[u8], revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(TargetUnion::CreateRevision(revision)),
        range_end: Vec::new(),
    }
}

fn get(req: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestRange(req)),
    }
}

fn get_key(key: &[u8]) -> RequestOp {
    get(RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    })
}

fn put(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

fn delete(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

/// The range response at `index` of a txn's responses. A server that
/// answers a Range op with anything else is broken, which is reported as an
/// internal error rather than a panic.
fn range_at(responses: &[ResponseOp], index: usize) -> Result<&RangeResponse, Error> {
    match responses.get(index).and_then(|r| r.response.as_ref()) {
        Some(OpResponse::ResponseRange(r)) => Ok(r),
        _ => Err(Error::Rpc(tonic::Status::internal(
            "txn response lacks the expected range response",
        ))),
    }
}

/// A request that undoes a recipe's key if the recipe is abandoned midway:
/// when the caller of a lock or a campaign goes away (its future is
/// dropped, e.g. a gRPC client cancels), the key must not stay queued, as
/// clientv3 unlocks or resigns when its context is cancelled. Sent from a
/// task of its own, since a drop cannot wait.
struct Cleanup {
    client: Client,
    txn: Option<TxnRequest>,
}

impl Cleanup {
    fn new(client: &Client, txn: TxnRequest) -> Cleanup {
        Cleanup {
            client: client.clone(),
            txn: Some(txn),
        }
    }

    /// The recipe finished (or cleaned up itself): nothing to undo.
    fn disarm(mut self) {
        self.txn = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Some(txn) = self.txn.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let mut kv = self.client.kv.clone();
            runtime.spawn(async move {
                if let Err(e) = kv.txn(txn).await {
                    tracing::warn!(cause = %e, "could not remove an abandoned lock or candidacy key; its lease will");
                }
            });
        }
    }
}

/// Sends the Txn that queues a lock or candidacy key, on a task of its own.
/// If the caller goes away while it is in flight, the Txn still completes,
/// and a key it created is deleted again (`undo`) rather than left queued
/// until its lease ends — a window clientv3 leaves open. The undo travels
/// with the response as a [`Cleanup`] guard: a response that is sent but
/// never read (the caller was dropped in between) undoes its key when the
/// channel drops it; a caller that reads it disarms the guard at once, with
/// no await before its own guard takes over.
async fn enqueue(client: &Client, txn: TxnRequest, undo: TxnRequest) -> Result<TxnResponse, Error> {
    let mut kv = client.kv.clone();
    let guard_client = client.clone();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let answer = kv
            .txn(txn)
            .await
            .map(tonic::Response::into_inner)
            .map(|resp| {
                let guard = resp.succeeded.then(|| Cleanup::new(&guard_client, undo));
                (resp, guard)
            });
        // If the caller is gone, the answer (and its guard) drops here.
        let _ = tx.send(answer);
    });
    match rx.await {
        Ok(Ok((resp, guard))) => {
            if let Some(guard) = guard {
                guard.disarm();
            }
            Ok(resp)
        }
        Ok(Err(status)) => Err(status.into()),
        Err(_) => Err(tonic::Status::internal("the txn task ended without an answer").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_keys_are_spelt_as_go_does() {
        struct Case {
            lease: i64,
            key: &'static [u8],
        }
        let cases = [
            Case {
                lease: 0,
                key: b"p/0",
            },
            Case {
                lease: 0x694d_7b5e_1c3a_2f01,
                key: b"p/694d7b5e1c3a2f01",
            },
            Case {
                lease: 255,
                key: b"p/ff",
            },
            Case {
                lease: -1,
                key: b"p/-1",
            },
            Case {
                lease: i64::MIN,
                key: b"p/-8000000000000000",
            },
        ];
        for c in cases {
            assert_eq!(lease_key(b"p/", c.lease), c.key, "lease {}", c.lease);
        }
    }

    #[test]
    fn prefix_end_increments_the_last_byte_below_ff() {
        assert_eq!(prefix_end(b"lock/"), b"lock0");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }
}
