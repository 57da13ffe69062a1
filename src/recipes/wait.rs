//! Waiting on keys through the Watch API: a one-watch stream
//! ([`Watcher`]), and clientv3's `waitDeletes`, the queue discipline of both
//! the mutex and the election: wait, one predecessor at a time, until no key
//! under the prefix is older than one's own.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::{last_created_before, Client, Error};
use crate::error::EtcdError;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse};
use crate::proto::mvccpb::event::EventType;

/// One watch on its own stream. Dropping it ends the stream, which cancels
/// the watch on the server.
pub(crate) struct Watcher {
    /// Kept open for the watch's life: some servers take a client's
    /// half-close as the end of the stream.
    _requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
}

impl Watcher {
    /// Opens a stream and creates the watch. The create request is queued
    /// before the call is awaited: grpc-go (etcd) sends the response headers
    /// only with its first message, so awaiting the call first would wait
    /// forever.
    pub(crate) async fn start(client: &Client, create: WatchCreateRequest) -> Result<Self, Error> {
        let (tx, rx) = mpsc::channel(1);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        };
        // Cannot fail: the receiver is alive and the buffer empty.
        let _ = tx.send(create).await;
        let responses = client
            .watch
            .clone()
            .watch(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Watcher {
            _requests: tx,
            responses,
        })
    }

    /// The next response that carries events; the `created` response and
    /// progress notifications are skipped. A cancelled watch is an error, as
    /// clientv3's `WatchResponse::Err` reports it; a stream that ends is
    /// [`EtcdError::LostWatcher`].
    pub(crate) async fn next(&mut self) -> Result<WatchResponse, Error> {
        loop {
            let Some(resp) = self.responses.message().await? else {
                return Err(EtcdError::LostWatcher.into());
            };
            if resp.canceled {
                return Err(if resp.compact_revision != 0 {
                    EtcdError::Compacted.into()
                } else if !resp.cancel_reason.is_empty() {
                    tonic::Status::failed_precondition(resp.cancel_reason).into()
                } else {
                    EtcdError::FutureRev.into()
                });
            }
            if !resp.events.is_empty() {
                return Ok(resp);
            }
        }
    }
}

/// A watch on the single `key` from `start_revision`.
pub(crate) async fn watch_key(
    client: &Client,
    key: &[u8],
    start_revision: i64,
) -> Result<Watcher, Error> {
    let create = WatchCreateRequest {
        key: key.to_vec(),
        start_revision,
        ..Default::default()
    };
    Watcher::start(client, create).await
}

/// Returns once `key` has been deleted at or after `revision`.
async fn wait_delete(client: &Client, key: &[u8], revision: i64) -> Result<(), Error> {
    let mut watcher = watch_key(client, key, revision).await?;
    loop {
        let resp = watcher.next().await?;
        if resp
            .events
            .iter()
            .any(|e| e.r#type == EventType::Delete as i32)
        {
            return Ok(());
        }
    }
}

/// Waits until no key under `prefix` has a create revision at or below
/// `max_create_revision`; returns the header of the Range that found none.
///
/// Each round reads the youngest such key and watches it from the Range's
/// revision, so a delete that happens between the Range and the Watch is
/// still seen.
pub(crate) async fn wait_deletes(
    client: &Client,
    prefix: &[u8],
    max_create_revision: i64,
) -> Result<ResponseHeader, Error> {
    loop {
        let resp = client
            .kv
            .clone()
            .range(last_created_before(prefix, max_create_revision))
            .await?
            .into_inner();
        let header = resp.header.unwrap_or_default();
        match resp.kvs.first() {
            None => return Ok(header),
            Some(kv) => wait_delete(client, &kv.key, header.revision).await?,
        }
    }
}
