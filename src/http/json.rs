//! grpc-gateway's JSON for any etcd message, written once from the protobuf
//! descriptors of the build (prost-reflect), not per message: proto field
//! names (`create_revision`, `ID`, `peerURLs`), 64-bit integers as strings,
//! bytes as base64, enums by name, fields at their default value left out —
//! what etcd 3.4's gateway emits. Requests accept what grpc-gateway accepts:
//! proto or JSON names, numbers or strings for integers, unknown fields
//! ignored.

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/cairn_descriptors.bin"))[..])
        .expect("the build's own descriptors decode")
});

/// A message type the gateway speaks, with its protobuf full name.
pub trait Named: prost::Message + Default {
    const NAME: &'static str;
}

macro_rules! named {
    ($($ty:ty => $name:literal),* $(,)?) => {
        $(impl Named for $ty { const NAME: &'static str = $name; })*
    };
}

use crate::proto::etcdserverpb as pb;
use crate::proto::v3electionpb as election;
use crate::proto::v3lockpb as lock;
named! {
    pb::RangeRequest => "etcdserverpb.RangeRequest",
    pb::RangeResponse => "etcdserverpb.RangeResponse",
    pb::PutRequest => "etcdserverpb.PutRequest",
    pb::PutResponse => "etcdserverpb.PutResponse",
    pb::DeleteRangeRequest => "etcdserverpb.DeleteRangeRequest",
    pb::DeleteRangeResponse => "etcdserverpb.DeleteRangeResponse",
    pb::TxnRequest => "etcdserverpb.TxnRequest",
    pb::TxnResponse => "etcdserverpb.TxnResponse",
    pb::CompactionRequest => "etcdserverpb.CompactionRequest",
    pb::CompactionResponse => "etcdserverpb.CompactionResponse",
    pb::LeaseGrantRequest => "etcdserverpb.LeaseGrantRequest",
    pb::LeaseGrantResponse => "etcdserverpb.LeaseGrantResponse",
    pb::LeaseRevokeRequest => "etcdserverpb.LeaseRevokeRequest",
    pb::LeaseRevokeResponse => "etcdserverpb.LeaseRevokeResponse",
    pb::LeaseTimeToLiveRequest => "etcdserverpb.LeaseTimeToLiveRequest",
    pb::LeaseTimeToLiveResponse => "etcdserverpb.LeaseTimeToLiveResponse",
    pb::LeaseLeasesRequest => "etcdserverpb.LeaseLeasesRequest",
    pb::LeaseLeasesResponse => "etcdserverpb.LeaseLeasesResponse",
    pb::LeaseKeepAliveRequest => "etcdserverpb.LeaseKeepAliveRequest",
    pb::LeaseKeepAliveResponse => "etcdserverpb.LeaseKeepAliveResponse",
    pb::MemberListRequest => "etcdserverpb.MemberListRequest",
    pb::MemberListResponse => "etcdserverpb.MemberListResponse",
    pb::StatusRequest => "etcdserverpb.StatusRequest",
    pb::StatusResponse => "etcdserverpb.StatusResponse",
    pb::AlarmRequest => "etcdserverpb.AlarmRequest",
    pb::AlarmResponse => "etcdserverpb.AlarmResponse",
    pb::HashKvRequest => "etcdserverpb.HashKVRequest",
    pb::HashKvResponse => "etcdserverpb.HashKVResponse",
    pb::WatchRequest => "etcdserverpb.WatchRequest",
    pb::WatchResponse => "etcdserverpb.WatchResponse",
    pb::HashRequest => "etcdserverpb.HashRequest",
    pb::HashResponse => "etcdserverpb.HashResponse",
    pb::DefragmentRequest => "etcdserverpb.DefragmentRequest",
    pb::DefragmentResponse => "etcdserverpb.DefragmentResponse",
    pb::SnapshotRequest => "etcdserverpb.SnapshotRequest",
    pb::SnapshotResponse => "etcdserverpb.SnapshotResponse",
    pb::MoveLeaderRequest => "etcdserverpb.MoveLeaderRequest",
    pb::MoveLeaderResponse => "etcdserverpb.MoveLeaderResponse",
    pb::MemberAddRequest => "etcdserverpb.MemberAddRequest",
    pb::MemberAddResponse => "etcdserverpb.MemberAddResponse",
    pb::MemberRemoveRequest => "etcdserverpb.MemberRemoveRequest",
    pb::MemberRemoveResponse => "etcdserverpb.MemberRemoveResponse",
    pb::MemberUpdateRequest => "etcdserverpb.MemberUpdateRequest",
    pb::MemberUpdateResponse => "etcdserverpb.MemberUpdateResponse",
    pb::MemberPromoteRequest => "etcdserverpb.MemberPromoteRequest",
    pb::MemberPromoteResponse => "etcdserverpb.MemberPromoteResponse",
    pb::AuthEnableRequest => "etcdserverpb.AuthEnableRequest",
    pb::AuthEnableResponse => "etcdserverpb.AuthEnableResponse",
    pb::AuthDisableRequest => "etcdserverpb.AuthDisableRequest",
    pb::AuthDisableResponse => "etcdserverpb.AuthDisableResponse",
    pb::AuthStatusRequest => "etcdserverpb.AuthStatusRequest",
    pb::AuthStatusResponse => "etcdserverpb.AuthStatusResponse",
    pb::AuthenticateRequest => "etcdserverpb.AuthenticateRequest",
    pb::AuthenticateResponse => "etcdserverpb.AuthenticateResponse",
    pb::AuthUserAddRequest => "etcdserverpb.AuthUserAddRequest",
    pb::AuthUserAddResponse => "etcdserverpb.AuthUserAddResponse",
    pb::AuthUserGetRequest => "etcdserverpb.AuthUserGetRequest",
    pb::AuthUserGetResponse => "etcdserverpb.AuthUserGetResponse",
    pb::AuthUserListRequest => "etcdserverpb.AuthUserListRequest",
    pb::AuthUserListResponse => "etcdserverpb.AuthUserListResponse",
    pb::AuthUserDeleteRequest => "etcdserverpb.AuthUserDeleteRequest",
    pb::AuthUserDeleteResponse => "etcdserverpb.AuthUserDeleteResponse",
    pb::AuthUserChangePasswordRequest => "etcdserverpb.AuthUserChangePasswordRequest",
    pb::AuthUserChangePasswordResponse => "etcdserverpb.AuthUserChangePasswordResponse",
    pb::AuthUserGrantRoleRequest => "etcdserverpb.AuthUserGrantRoleRequest",
    pb::AuthUserGrantRoleResponse => "etcdserverpb.AuthUserGrantRoleResponse",
    pb::AuthUserRevokeRoleRequest => "etcdserverpb.AuthUserRevokeRoleRequest",
    pb::AuthUserRevokeRoleResponse => "etcdserverpb.AuthUserRevokeRoleResponse",
    pb::AuthRoleAddRequest => "etcdserverpb.AuthRoleAddRequest",
    pb::AuthRoleAddResponse => "etcdserverpb.AuthRoleAddResponse",
    pb::AuthRoleGetRequest => "etcdserverpb.AuthRoleGetRequest",
    pb::AuthRoleGetResponse => "etcdserverpb.AuthRoleGetResponse",
    pb::AuthRoleListRequest => "etcdserverpb.AuthRoleListRequest",
    pb::AuthRoleListResponse => "etcdserverpb.AuthRoleListResponse",
    pb::AuthRoleDeleteRequest => "etcdserverpb.AuthRoleDeleteRequest",
    pb::AuthRoleDeleteResponse => "etcdserverpb.AuthRoleDeleteResponse",
    pb::AuthRoleGrantPermissionRequest => "etcdserverpb.AuthRoleGrantPermissionRequest",
    pb::AuthRoleGrantPermissionResponse => "etcdserverpb.AuthRoleGrantPermissionResponse",
    pb::AuthRoleRevokePermissionRequest => "etcdserverpb.AuthRoleRevokePermissionRequest",
    pb::AuthRoleRevokePermissionResponse => "etcdserverpb.AuthRoleRevokePermissionResponse",
    lock::LockRequest => "v3lockpb.LockRequest",
    lock::LockResponse => "v3lockpb.LockResponse",
    lock::UnlockRequest => "v3lockpb.UnlockRequest",
    lock::UnlockResponse => "v3lockpb.UnlockResponse",
    election::CampaignRequest => "v3electionpb.CampaignRequest",
    election::CampaignResponse => "v3electionpb.CampaignResponse",
    election::ProclaimRequest => "v3electionpb.ProclaimRequest",
    election::ProclaimResponse => "v3electionpb.ProclaimResponse",
    election::LeaderRequest => "v3electionpb.LeaderRequest",
    election::LeaderResponse => "v3electionpb.LeaderResponse",
    election::ResignRequest => "v3electionpb.ResignRequest",
    election::ResignResponse => "v3electionpb.ResignResponse",
}

/// `msg` as etcd's gateway writes it (fields in proto order).
pub fn to_json<M: Named>(msg: &M) -> Result<String, String> {
    let desc = POOL
        .get_message_by_name(M::NAME)
        .ok_or_else(|| format!("no descriptor for {}", M::NAME))?;
    let dynamic =
        DynamicMessage::decode(desc, msg.encode_to_vec().as_slice()).map_err(|e| e.to_string())?;
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(true)
        .skip_default_fields(true);
    let mut out = serde_json::Serializer::new(Vec::new());
    dynamic
        .serialize_with_options(&mut out, &options)
        .map_err(|e| e.to_string())?;
    String::from_utf8(out.into_inner()).map_err(|e| e.to_string())
}

/// A request from its JSON; the error text is what the client is told.
pub fn from_json<M: Named>(value: serde_json::Value) -> Result<M, String> {
    let desc = POOL
        .get_message_by_name(M::NAME)
        .ok_or_else(|| format!("no descriptor for {}", M::NAME))?;
    let options = DeserializeOptions::new().deny_unknown_fields(false);
    let dynamic = DynamicMessage::deserialize_with_options(desc, value, &options)
        .map_err(|e| e.to_string())?;
    M::decode(prost::Message::encode_to_vec(&dynamic).as_slice()).map_err(|e| e.to_string())
}

/// Every JSON value in a request body, in order (a streaming RPC's body
/// holds one request after another). An empty body is one empty request.
pub fn values(body: &[u8]) -> Result<Vec<serde_json::Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(vec![serde_json::Value::Object(Default::default())]);
    }
    serde_json::Deserializer::from_slice(body)
        .into_iter::<serde_json::Value>()
        .map(|v| v.map_err(|e| e.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mvccpb::KeyValue;

    #[test]
    fn responses_look_as_etcd_writes_them() {
        let resp = pb::RangeResponse {
            header: Some(pb::ResponseHeader {
                cluster_id: 14841639068965178418,
                member_id: 1,
                revision: 2,
                raft_term: 0,
            }),
            kvs: vec![KeyValue {
                key: b"foo".to_vec(),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                value: b"bar".to_vec(),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        let json = to_json(&resp).expect("json");
        assert_eq!(
            json,
            r#"{"header":{"cluster_id":"14841639068965178418","member_id":"1","revision":"2"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}"#
        );
    }

    #[test]
    fn requests_take_proto_names_strings_and_numbers() {
        let v = serde_json::json!({"key": "Zm9v", "limit": "5", "revision": 3, "sort_order": "DESCEND", "unknown": 1});
        let req: pb::RangeRequest = from_json(v).expect("parses");
        assert_eq!(
            (req.key.as_slice(), req.limit, req.revision, req.sort_order),
            (&b"foo"[..], 5, 3, 2)
        );
        let grant: pb::LeaseGrantRequest =
            from_json(serde_json::json!({"TTL": 60})).expect("parses");
        assert_eq!(grant.ttl, 60);
        assert!(from_json::<pb::RangeRequest>(serde_json::json!({"key": 5})).is_err());
    }
}
