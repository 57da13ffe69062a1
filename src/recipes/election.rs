//! Leader election (clientv3's `concurrency.Election`).
//!
//! A candidate for `name` with a session on lease L puts its value at
//! `name/<L hex>`, attached to L. The leader is the candidate whose key has
//! the lowest create revision; the others wait in line exactly as mutex
//! waiters do. The leader's value is its key's value: [`proclaim`] rewrites
//! it, [`resign`] deletes the key. Both name the leadership by key *and*
//! create revision ([`LeaderKey`]), so a leader whose key was deleted and
//! re-created (lease expired, then a new campaign) cannot act on the old
//! term. [`observe`] follows the leader: the current one, each new value,
//! and each successor.

use tokio::sync::mpsc;

use super::wait::{wait_deletes, watch_key, Watcher};
use super::{
    created_at, delete, enqueue, first_created, get_key, lease_key, prefix_end, put, range_at,
    Cleanup, Client, Error, Session,
};
use crate::error::EtcdError;
use crate::proto::etcdserverpb::{ResponseHeader, TxnRequest, WatchCreateRequest};
use crate::proto::mvccpb::event::EventType;

pub use crate::proto::v3electionpb::{LeaderKey, LeaderResponse};

/// Observed leaders buffered before the observer waits for its reader.
const OBSERVE_BUFFER: usize = 16;

/// A won election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Elected {
    /// What names this leadership in Proclaim and Resign.
    pub leader: LeaderKey,
    /// The header of the campaign's Txn (etcd's `Election.Header()`).
    pub header: ResponseHeader,
}

/// Campaigns for `name` with `value` until elected. A session that is
/// already a candidate keeps its place in line (and its value is replaced,
/// through [`proclaim`], if it differs). Dropping the future while it waits
/// resigns the candidacy.
pub async fn campaign(session: &Session, name: &[u8], value: &[u8]) -> Result<Elected, Error> {
    let client = session.client();
    let prefix = [name, b"/"].concat();
    let key = lease_key(&prefix, session.lease());
    let txn = TxnRequest {
        compare: vec![created_at(&key, 0)],
        success: vec![put(&key, value, session.lease())],
        failure: vec![get_key(&key)],
    };
    let undo = TxnRequest {
        success: vec![delete(&key)],
        ..Default::default()
    };
    let resp = enqueue(client, txn, undo).await?;
    let header = resp.header.unwrap_or_default();
    let mut leader = LeaderKey {
        name: name.to_vec(),
        key,
        rev: header.revision,
        lease: session.lease(),
    };
    let mut proclaim_value = false;
    if !resp.succeeded {
        let Some(kv) = range_at(&resp.responses, 0)?.kvs.first() else {
            return Err(tonic::Status::internal("candidate key vanished inside a txn").into());
        };
        leader.rev = kv.create_revision;
        proclaim_value = kv.value != value;
    }

    let cleanup = Cleanup::new(client, resign_txn(&leader));
    if proclaim_value {
        if let Err(e) = proclaim(session, &leader, value).await {
            cleanup.disarm();
            let _ = resign(client, &leader).await;
            return Err(e);
        }
    }
    let waited = wait_deletes(client, &prefix, leader.rev - 1).await;
    // A failed wait leaves the candidacy in place, as clientv3 does unless
    // its context was cancelled (here: the future dropped, and the cleanup
    // resigns).
    cleanup.disarm();
    waited?;
    Ok(Elected { leader, header })
}

/// Sets the elected leader's value, if `leader` still is the leader's key
/// at the same create revision; otherwise `election: not leader`. The key is
/// written with the session's lease.
pub async fn proclaim(
    session: &Session,
    leader: &LeaderKey,
    value: &[u8],
) -> Result<ResponseHeader, Error> {
    let txn = TxnRequest {
        compare: vec![created_at(&leader.key, leader.rev)],
        success: vec![put(&leader.key, value, session.lease())],
        failure: vec![],
    };
    let resp = session.client().kv.clone().txn(txn).await?.into_inner();
    if !resp.succeeded {
        return Err(EtcdError::ElectionNotLeader.into());
    }
    Ok(resp.header.unwrap_or_default())
}

/// Gives up a leadership or a candidacy: deletes the key if it still has the
/// create revision in `leader`. Succeeds either way, as etcd does.
pub async fn resign(client: &Client, leader: &LeaderKey) -> Result<ResponseHeader, Error> {
    let resp = client
        .kv
        .clone()
        .txn(resign_txn(leader))
        .await?
        .into_inner();
    Ok(resp.header.unwrap_or_default())
}

fn resign_txn(leader: &LeaderKey) -> TxnRequest {
    TxnRequest {
        compare: vec![created_at(&leader.key, leader.rev)],
        success: vec![delete(&leader.key)],
        failure: vec![],
    }
}

/// The current leader's key-value, with the Range's header; `election: no
/// leader` if nobody is campaigning for `name`.
pub async fn leader(client: &Client, name: &[u8]) -> Result<LeaderResponse, Error> {
    let prefix = [name, b"/"].concat();
    let resp = client
        .kv
        .clone()
        .range(first_created(&prefix))
        .await?
        .into_inner();
    match resp.kvs.into_iter().next() {
        Some(kv) => Ok(LeaderResponse {
            header: resp.header,
            kv: Some(kv),
        }),
        None => Err(EtcdError::ElectionNoLeader.into()),
    }
}

/// Follows the leader of `name`: first the current one (waiting for a first
/// candidate if there is none), then every new value it proclaims, then its
/// successor once its key is deleted, and so on. Intermediate values may be
/// skipped under load, never the latest.
///
/// The observer runs on a task of its own and stops when the receiver is
/// dropped; the channel closes when it fails (e.g. the server went away),
/// as clientv3's observe channel does.
pub fn observe(client: Client, name: &[u8]) -> mpsc::Receiver<LeaderResponse> {
    let (tx, rx) = mpsc::channel(OBSERVE_BUFFER);
    let prefix = [name, b"/"].concat();
    tokio::spawn(async move {
        tokio::select! {
            result = observe_loop(&client, &prefix, &tx) => {
                if let Err(e) = result {
                    tracing::debug!(cause = %e, "election observer ended");
                }
            }
            _ = tx.closed() => {}
        }
    });
    rx
}

async fn observe_loop(
    client: &Client,
    prefix: &[u8],
    tx: &mpsc::Sender<LeaderResponse>,
) -> Result<(), Error> {
    loop {
        let resp = client
            .kv
            .clone()
            .range(first_created(prefix))
            .await?
            .into_inner();
        let (header, kv) = match resp.kvs.into_iter().next() {
            Some(kv) => (resp.header.unwrap_or_default(), kv),
            None => {
                let from = resp.header.unwrap_or_default().revision;
                first_candidate(client, prefix, from).await?
            }
        };
        let watch_from = header.revision + 1;
        let key = kv.key.clone();
        if tx
            .send(LeaderResponse {
                header: Some(header),
                kv: Some(kv),
            })
            .await
            .is_err()
        {
            return Ok(());
        }

        // Every new value of this leader, until its key is deleted.
        let mut watcher = watch_key(client, &key, watch_from).await?;
        'leading: loop {
            let resp = watcher.next().await?;
            for event in resp.events {
                if event.r#type == EventType::Delete as i32 {
                    break 'leading;
                }
                let proclaimed = LeaderResponse {
                    header: resp.header,
                    kv: event.kv,
                };
                if tx.send(proclaimed).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Waits for the first put under `prefix` from revision `from`; the header
/// returned carries that put's revision.
async fn first_candidate(
    client: &Client,
    prefix: &[u8],
    from: i64,
) -> Result<(ResponseHeader, crate::proto::mvccpb::KeyValue), Error> {
    let create = WatchCreateRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        start_revision: from,
        ..Default::default()
    };
    let mut watcher = Watcher::start(client, create).await?;
    loop {
        let resp = watcher.next().await?;
        // Only a put names a candidate; a delete would make us spin.
        let put = resp
            .events
            .into_iter()
            .find(|e| e.r#type == EventType::Put as i32);
        if let Some(kv) = put.and_then(|e| e.kv) {
            let mut header = resp.header.unwrap_or_default();
            header.revision = kv.mod_revision;
            return Ok((header, kv));
        }
    }
}
