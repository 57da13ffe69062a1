//! (stub until the mvcc branch merges)
use crate::error::EtcdError;
use crate::proto::etcdserverpb::*;
pub fn validate_range(_r: &RangeRequest) -> Result<(), EtcdError> {
    Ok(())
}
pub fn validate_put(_r: &PutRequest) -> Result<(), EtcdError> {
    Ok(())
}
pub fn validate_delete_range(_r: &DeleteRangeRequest) -> Result<(), EtcdError> {
    Ok(())
}
pub fn validate_txn(_r: &TxnRequest, _max: usize) -> Result<(), EtcdError> {
    Ok(())
}
pub fn validate_compaction(_r: &CompactionRequest) -> Result<(), EtcdError> {
    Ok(())
}
