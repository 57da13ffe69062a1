//! The gRPC answer to a Range: [`RangeReply`], a RangeResponse whose
//! records are given up one by one as they are encoded.
//!
//! tonic encodes a response into one buffer before it sends it. With a
//! plain RangeResponse, a 100 MB answer would be in memory twice at that
//! moment: the decoded records and their encoding. RangeReply's encoding
//! takes the records out and drops each right after writing it, so the
//! peak is about one copy (plus the records' fixed-size structs). The
//! bytes on the wire are those prost writes for the same RangeResponse.

use parking_lot::Mutex;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::proto::etcdserverpb::{RangeResponse, ResponseHeader};
use crate::proto::mvccpb::KeyValue;

const HEADER_FIELD: u32 = 1;
const KVS_FIELD: u32 = 2;
const MORE_FIELD: u32 = 3;
const COUNT_FIELD: u32 = 4;

/// A RangeResponse that can be encoded once (the records go with it).
#[derive(Debug, Default)]
pub struct RangeReply {
    header: Option<ResponseHeader>,
    kvs: Mutex<Vec<KeyValue>>,
    more: bool,
    count: i64,
}

impl From<RangeResponse> for RangeReply {
    fn from(r: RangeResponse) -> RangeReply {
        RangeReply {
            header: r.header,
            kvs: Mutex::new(r.kvs),
            more: r.more,
            count: r.count,
        }
    }
}

impl RangeReply {
    /// Back to a plain response (what is left of it: nothing of the
    /// records once encoded).
    pub fn into_response(self) -> RangeResponse {
        RangeResponse {
            header: self.header,
            kvs: self.kvs.into_inner(),
            more: self.more,
            count: self.count,
        }
    }
}

impl Message for RangeReply {
    /// Writes the fields in order, as prost writes RangeResponse, and
    /// drops each record once written.
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(h) = &self.header {
            encoding::message::encode(HEADER_FIELD, h, buf);
        }
        let kvs = std::mem::take(&mut *self.kvs.lock());
        for kv in kvs {
            encoding::message::encode(KVS_FIELD, &kv, buf);
        }
        if self.more {
            encoding::bool::encode(MORE_FIELD, &self.more, buf);
        }
        if self.count != 0 {
            encoding::int64::encode(COUNT_FIELD, &self.count, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            HEADER_FIELD => encoding::message::merge(
                wire_type,
                self.header.get_or_insert_with(Default::default),
                buf,
                ctx,
            ),
            KVS_FIELD => encoding::message::merge_repeated(wire_type, self.kvs.get_mut(), buf, ctx),
            MORE_FIELD => encoding::bool::merge(wire_type, &mut self.more, buf, ctx),
            COUNT_FIELD => encoding::int64::merge(wire_type, &mut self.count, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        self.header
            .as_ref()
            .map_or(0, |h| encoding::message::encoded_len(HEADER_FIELD, h))
            + encoding::message::encoded_len_repeated(KVS_FIELD, &self.kvs.lock())
            + if self.more {
                encoding::bool::encoded_len(MORE_FIELD, &self.more)
            } else {
                0
            }
            + if self.count != 0 {
                encoding::int64::encoded_len(COUNT_FIELD, &self.count)
            } else {
                0
            }
    }

    fn clear(&mut self) {
        *self = RangeReply::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response() -> RangeResponse {
        RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 30,
                raft_term: 4,
            }),
            kvs: (0..3)
                .map(|i| KeyValue {
                    key: format!("k{i}").into_bytes(),
                    value: vec![b'v'; 100 * i],
                    create_revision: 2 + i as i64,
                    mod_revision: 10 + i as i64,
                    version: 1,
                    lease: 0,
                })
                .collect(),
            more: true,
            count: 7,
        }
    }

    #[test]
    fn encodes_the_bytes_prost_writes_and_lets_go_of_the_records() {
        let plain = response();
        let reply = RangeReply::from(plain.clone());
        assert_eq!(reply.encoded_len(), plain.encoded_len());
        let bytes = reply.encode_to_vec();
        assert_eq!(bytes, plain.encode_to_vec());
        assert!(reply.kvs.lock().is_empty(), "records dropped once encoded");
        let back = RangeReply::decode(bytes.as_slice()).expect("decode");
        assert_eq!(back.into_response(), plain);
    }

    #[test]
    fn defaults_are_omitted_as_prost_omits_them() {
        let plain = RangeResponse::default();
        assert_eq!(
            RangeReply::from(plain.clone()).encode_to_vec(),
            plain.encode_to_vec()
        );
    }
}
