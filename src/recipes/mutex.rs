//! The distributed mutex (clientv3's `concurrency.Mutex`).
//!
//! Locking `name` with a session on lease L creates the key `name/<L hex>`
//! (empty value, attached to L) unless it exists — a session that already
//! holds or awaits the lock reuses its key. The holder is the key under
//! `name/` with the lowest create revision; everyone else waits, each on the
//! key created just before its own, until all older keys are deleted
//! (unlocked, or gone with their lease). One Txn does the whole uncontended
//! case.

use super::wait::wait_deletes;
use super::{
    created_at, delete, enqueue, first_created, get, get_key, lease_key, put, range_at, Cleanup,
    Client, Error, Session,
};
use crate::proto::etcdserverpb::{DeleteRangeRequest, ResponseHeader, TxnRequest};

/// A lock held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Locked {
    /// The lock key, `name/<lease hex>`: ownership lasts as long as it does,
    /// and deleting it ([`unlock`]) releases the lock.
    pub key: Vec<u8>,
    /// The key's create revision: a fencing token, increasing with every
    /// acquisition of the lock.
    pub create_revision: i64,
    /// The header of the response that made the lock ours: the Txn if the
    /// lock was free, else the Range that found no older key.
    pub header: ResponseHeader,
}

/// Acquires the lock `name` for `session`, waiting as long as it takes.
/// Dropping the future while it waits removes the key again.
pub async fn lock(session: &Session, name: &[u8]) -> Result<Locked, Error> {
    let client = session.client();
    let prefix = [name, b"/"].concat();
    let key = lease_key(&prefix, session.lease());
    let txn = TxnRequest {
        compare: vec![created_at(&key, 0)],
        success: vec![put(&key, b"", session.lease()), get(first_created(&prefix))],
        failure: vec![get_key(&key), get(first_created(&prefix))],
    };
    let resp = enqueue(client, txn, unlock_txn(&key)).await?;
    let header = resp.header.unwrap_or_default();
    let create_revision = if resp.succeeded {
        header.revision
    } else {
        // The compare failed, so the key exists and the Range found it.
        match range_at(&resp.responses, 0)?.kvs.first() {
            Some(kv) => kv.create_revision,
            None => return Err(tonic::Status::internal("lock key vanished inside a txn").into()),
        }
    };
    let owner = range_at(&resp.responses, 1)?.kvs.first();
    if owner.is_none_or(|kv| kv.create_revision == create_revision) {
        return Ok(Locked {
            key,
            create_revision,
            header,
        });
    }

    let cleanup = Cleanup::new(client, unlock_txn(&key));
    match wait_deletes(client, &prefix, create_revision - 1).await {
        Ok(header) => {
            cleanup.disarm();
            Ok(Locked {
                key,
                create_revision,
                header,
            })
        }
        Err(e) => {
            cleanup.disarm();
            // As clientv3: give the place in the queue back, then report.
            let _ = unlock(client, &key).await;
            Err(e)
        }
    }
}

/// Releases a lock by deleting its key; returns the DeleteRange's header.
pub async fn unlock(client: &Client, key: &[u8]) -> Result<ResponseHeader, Error> {
    let req = DeleteRangeRequest {
        key: key.to_vec(),
        ..Default::default()
    };
    let resp = client.kv.clone().delete_range(req).await?.into_inner();
    Ok(resp.header.unwrap_or_default())
}

fn unlock_txn(key: &[u8]) -> TxnRequest {
    TxnRequest {
        success: vec![delete(key)],
        ..Default::default()
    }
}
