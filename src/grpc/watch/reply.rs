//! [`WatchReply`]: what the Watch service streams to clients — the bytes of
//! a `WatchResponse`, built the cheap way for event responses.
//!
//! A batch's events go to every watcher of a range, and each watcher gets a
//! response of its own (etcd's protocol). Built as a `WatchResponse`, each
//! response would need its own copy of every event and encode it again; a
//! [`WatchReply::Events`] instead holds the events as bytes
//! ([`crate::watch::Selection::encoded`]: encoded once per selection) and
//! copies them after its own header, watch id and fragment flag. protobuf
//! writes a repeated message field as tag, length, bytes for each element,
//! so the result is byte for byte the `WatchResponse` an etcd client
//! expects (the tests below check it against prost's encoding).

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::proto::etcdserverpb::{ResponseHeader, WatchResponse};
use crate::watch::EncodedEvents;

/// Field numbers of `WatchResponse` (etcd's `rpc.proto`) that
/// [`WatchReply::Events`] writes; events are [`crate::watch::EVENTS_FIELD`].
const HEADER_FIELD: u32 = 1;
const WATCH_ID_FIELD: u32 = 2;
const FRAGMENT_FIELD: u32 = 7;

/// The most bytes an encoded header takes: tag, length, and four 64-bit
/// varints with their tags.
const HEADER_MAX: usize = 2 + 4 * 11;
/// The most bytes the fields before the events take: the header, the watch
/// id (tag and a 64-bit varint) and the fragment flag.
const PREFIX_MAX: usize = HEADER_MAX + 11 + 2;

/// A `ResponseHeader` encoded as field 1 of a `WatchResponse`: encoded once
/// for all the replies that carry it (every watcher of a batch gets the
/// same), as prost writes one varint a byte at a time, and into tonic's
/// buffer each byte is a call that checks the capacity and copies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EncodedHeader {
    bytes: [u8; HEADER_MAX],
    len: u8,
}

impl EncodedHeader {
    pub fn new(header: &ResponseHeader) -> Self {
        let mut bytes = [0; HEADER_MAX];
        let mut free = &mut bytes[..];
        encoding::message::encode(HEADER_FIELD, header, &mut free);
        let len = (HEADER_MAX - free.len()) as u8;
        EncodedHeader { bytes, len }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// One message of a Watch stream, encoded as a `WatchResponse`.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchReply {
    /// A response without events (created, canceled, progress, compacted).
    Plain(WatchResponse),
    /// Events for one watcher: the fields of its own, and its events as
    /// encoded bytes shared with other watchers.
    Events {
        header: EncodedHeader,
        watch_id: i64,
        /// More parts of this response follow (fragmented watches).
        fragment: bool,
        /// One or more events, each framed as field 11 ([`EncodedEvents`]).
        events: Bytes,
    },
}

impl Default for WatchReply {
    fn default() -> Self {
        WatchReply::Plain(WatchResponse::default())
    }
}

impl From<WatchResponse> for WatchReply {
    fn from(resp: WatchResponse) -> Self {
        WatchReply::Plain(resp)
    }
}

impl WatchReply {
    /// A watcher's response carrying all of `events`.
    pub fn events(header: EncodedHeader, watch_id: i64, events: &EncodedEvents) -> Self {
        WatchReply::Events {
            header,
            watch_id,
            fragment: false,
            events: events.bytes.clone(),
        }
    }

    /// The `WatchResponse` this encodes (for clients of the type and tests;
    /// the server only encodes).
    pub fn to_response(&self) -> Result<WatchResponse, DecodeError> {
        match self {
            WatchReply::Plain(resp) => Ok(resp.clone()),
            events => WatchResponse::decode(events.encode_to_vec().as_slice()),
        }
    }
}

impl Message for WatchReply {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            WatchReply::Plain(resp) => resp.encode_raw(buf),
            WatchReply::Events {
                header,
                watch_id,
                fragment,
                events,
            } => {
                // In field order, defaults omitted: as prost encodes
                // WatchResponse. The fields before the events are gathered
                // on the stack and copied in one piece (see EncodedHeader).
                let mut prefix = [0u8; PREFIX_MAX];
                let mut free = &mut prefix[..];
                free.put_slice(header.as_bytes());
                if *watch_id != 0 {
                    encoding::int64::encode(WATCH_ID_FIELD, watch_id, &mut free);
                }
                if *fragment {
                    encoding::bool::encode(FRAGMENT_FIELD, fragment, &mut free);
                }
                let used = PREFIX_MAX - free.len();
                buf.put_slice(&prefix[..used]);
                buf.put_slice(events);
            }
        }
    }

    /// Decoding yields a [`WatchReply::Plain`] (a reply is only decoded in
    /// tests; the server streams them out).
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if let WatchReply::Events { .. } = self {
            *self = WatchReply::Plain(self.to_response()?);
        }
        match self {
            WatchReply::Plain(resp) => resp.merge_field(tag, wire_type, buf, ctx),
            WatchReply::Events { .. } => unreachable!("turned plain above"),
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            WatchReply::Plain(resp) => resp.encoded_len(),
            WatchReply::Events {
                header,
                watch_id,
                fragment,
                events,
            } => {
                header.as_bytes().len()
                    + if *watch_id != 0 {
                        encoding::int64::encoded_len(WATCH_ID_FIELD, watch_id)
                    } else {
                        0
                    }
                    + if *fragment {
                        encoding::bool::encoded_len(FRAGMENT_FIELD, fragment)
                    } else {
                        0
                    }
                    + events.len()
            }
        }
    }

    fn clear(&mut self) {
        *self = WatchReply::default();
    }
}

/// etcd's `sendFragments`: a response of at least `max_bytes` with two or
/// more events is split into parts, each as large as possible below
/// `max_bytes` but holding at least one event; every part but the last
/// has `fragment: true`.
pub fn fragments(
    header: EncodedHeader,
    watch_id: i64,
    events: &EncodedEvents,
    max_bytes: usize,
) -> Vec<WatchReply> {
    let whole = WatchReply::events(header, watch_id, events);
    if whole.encoded_len() < max_bytes || events.len() < 2 {
        return vec![whole];
    }
    let WatchReply::Events { header, .. } = whole else {
        unreachable!("built as events above");
    };
    let part = |from: usize, to: usize, fragment: bool| WatchReply::Events {
        header,
        watch_id,
        fragment,
        events: events.bytes.slice(from..to),
    };
    let base = part(0, 0, true).encoded_len();
    let mut parts = Vec::new();
    // The current part holds the events between `from` and `end`.
    let (mut from, mut end) = (0, 0);
    for &next in &events.ends {
        let len = next - end;
        if end > from && base + (end - from) + len >= max_bytes {
            parts.push(part(from, end, true));
            from = end;
        }
        end = next;
    }
    parts.push(part(from, end, false));
    parts
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::proto::mvccpb::event::EventType;
    use crate::proto::mvccpb::{Event, KeyValue};
    use crate::watch::Selection;

    fn kv(key: &str, value_len: usize, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: vec![b'x'; value_len],
            create_revision: 2,
            mod_revision: rev,
            version: rev - 1,
            lease: 0,
        }
    }

    fn put(key: &str, value_len: usize) -> Event {
        Event {
            kv: Some(kv(key, value_len, 3)),
            prev_kv: Some(kv(key, 7, 2)),
            ..Default::default()
        }
    }

    fn header() -> ResponseHeader {
        ResponseHeader {
            cluster_id: 0xcdf8_1819_4e3a_8c32,
            member_id: 0x8e9e_05c5_2164_694d,
            revision: 3,
            raft_term: 2,
        }
    }

    /// The selection of all of `events`.
    fn selection(events: Vec<Event>) -> Selection {
        let indexes = (0..events.len() as u32).collect();
        Selection::new(Arc::new(events), indexes)
    }

    /// The WatchResponse prost would send for these events.
    fn response(watch_id: i64, events: &[Event], prev_kv: bool) -> WatchResponse {
        WatchResponse {
            header: Some(header()),
            watch_id,
            events: events
                .iter()
                .map(|e| Event {
                    prev_kv: e.prev_kv.clone().filter(|_| prev_kv),
                    ..e.clone()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn encoded_headers_are_prost_s() {
        let headers = [
            ResponseHeader::default(),
            header(),
            ResponseHeader {
                cluster_id: u64::MAX,
                member_id: u64::MAX,
                revision: i64::MAX,
                raft_term: u64::MAX,
            },
            ResponseHeader {
                revision: -1,
                ..header()
            },
        ];
        for h in headers {
            let want = WatchResponse {
                header: Some(h),
                ..Default::default()
            }
            .encode_to_vec();
            assert_eq!(EncodedHeader::new(&h).as_bytes(), want, "{h:?}");
        }
    }

    #[test]
    fn event_replies_are_the_bytes_of_the_watch_response() {
        struct Case {
            name: &'static str,
            events: Vec<Event>,
            watch_id: i64,
        }
        let delete = Event {
            r#type: EventType::Delete as i32,
            kv: Some(kv("gone", 0, 3)),
            prev_kv: Some(kv("gone", 5, 2)),
        };
        let cases = [
            Case {
                name: "one put",
                events: vec![put("k", 256)],
                watch_id: 7,
            },
            Case {
                name: "watch id 0 is omitted, as prost omits it",
                events: vec![put("k", 10)],
                watch_id: 0,
            },
            Case {
                name: "puts and a delete",
                events: vec![put("a", 1), delete, put("b", 300)],
                watch_id: 1 << 40,
            },
            Case {
                name: "no prev_kv anywhere",
                events: vec![Event {
                    prev_kv: None,
                    ..put("k", 20)
                }],
                watch_id: 3,
            },
        ];
        for c in cases {
            let s = selection(c.events.clone());
            for prev_kv in [false, true] {
                let reply = WatchReply::events(
                    EncodedHeader::new(&header()),
                    c.watch_id,
                    s.encoded(prev_kv),
                );
                let want = response(c.watch_id, &c.events, prev_kv);
                assert_eq!(reply.encoded_len(), want.encoded_len(), "{}", c.name);
                assert_eq!(
                    reply.encode_to_vec(),
                    want.encode_to_vec(),
                    "{} (prev_kv {prev_kv})",
                    c.name
                );
                assert_eq!(reply.to_response(), Ok(want), "{}", c.name);
            }
        }
    }

    #[test]
    fn fragments_split_at_event_boundaries_like_etcd() {
        struct Case {
            name: &'static str,
            values: &'static [usize],
            max: usize,
            /// Events per part.
            want: &'static [usize],
        }
        let cases = [
            Case {
                name: "small enough: untouched",
                values: &[10, 10, 10],
                max: 1000,
                want: &[3],
            },
            Case {
                name: "one event is never split, however large",
                values: &[5000],
                max: 1000,
                want: &[1],
            },
            Case {
                name: "two per part",
                values: &[400, 400, 400, 400, 400],
                max: 1000,
                want: &[2, 2, 1],
            },
            Case {
                name: "an oversized event gets a part of its own",
                values: &[100, 3000, 100],
                max: 1000,
                want: &[1, 1, 1],
            },
            Case {
                name: "exactly at the limit: split (etcd splits at >=)",
                values: &[400, 400, 10],
                max: 0, // set below to the size of the first two
                want: &[1, 2],
            },
        ];
        for c in &cases {
            let events: Vec<Event> = c.values.iter().map(|&n| put("k", n)).collect();
            let s = selection(events.clone());
            let encoded = s.encoded(false);
            let max = if c.max == 0 {
                let two = response(7, &events[..2], false);
                WatchResponse {
                    fragment: true,
                    ..two
                }
                .encoded_len()
            } else {
                c.max
            };
            let parts = fragments(EncodedHeader::new(&header()), 7, encoded, max);
            let parts: Vec<WatchResponse> = parts
                .iter()
                .map(|p| p.to_response().expect("decodes"))
                .collect();
            let sizes: Vec<usize> = parts.iter().map(|p| p.events.len()).collect();
            assert_eq!(sizes, c.want, "{}", c.name);
            let flags: Vec<bool> = parts.iter().map(|p| p.fragment).collect();
            let mut want_flags = vec![true; parts.len()];
            if let Some(last) = want_flags.last_mut() {
                *last = false;
            }
            assert_eq!(flags, want_flags, "{}", c.name);
            for p in &parts {
                assert_eq!((p.watch_id, p.header), (7, Some(header())), "{}", c.name);
                assert!(
                    p.events.len() == 1 || p.encoded_len() < max,
                    "{}: a part of {} bytes",
                    c.name,
                    p.encoded_len()
                );
            }
            let all: Vec<Event> = parts.into_iter().flat_map(|p| p.events).collect();
            assert_eq!(all, response(7, &events, false).events, "{}", c.name);
        }
    }
}
