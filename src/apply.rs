//! (stub until the mvcc branch merges)
use crate::error::{EtcdError, StorageError};
use crate::mvcc::Store;
use crate::proto::cairnpb::internal_request::Request;
use crate::proto::etcdserverpb::*;
use crate::proto::mvccpb::Event;
#[derive(Debug, Clone)]
pub enum ApplyResponse {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    Alarm(AlarmResponse),
}
pub struct ApplyOutput {
    pub results: Vec<Option<Result<ApplyResponse, EtcdError>>>,
    pub events: Vec<Event>,
}
pub fn apply_batch(
    _store: &Store,
    entries: Vec<(u64, Option<Request>)>,
    _quota_bytes: u64,
    _member_id: u64,
) -> Result<ApplyOutput, StorageError> {
    Ok(ApplyOutput {
        results: entries.iter().map(|_| None).collect(),
        events: vec![],
    })
}
