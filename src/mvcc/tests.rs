//! Store-level tests: revisions, generations, historic reads, compaction,
//! Range options, the write overlay, restore and HashKV, driven through
//! [`BatchWriter`] directly (the request semantics are tested in `apply`).

use std::sync::Arc;

use super::backend::open_sled_for_test;
use super::store::{RANGE_STEP, REV_PREFIX};
use super::*;
use crate::error::EtcdError;
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::{AlarmType, RangeRequest};
use crate::proto::mvccpb::{event::EventType, KeyValue};

fn mem_store() -> Store {
    Store::open(Arc::new(MemBackend::new())).expect("open")
}

/// One batch with one transaction putting `kvs`; returns the revision.
fn put_all(s: &Store, kvs: &[(&str, &str)]) -> i64 {
    let mut w = BatchWriter::new(s);
    let mut t = w.txn();
    let mut rev = 0;
    for (k, v) in kvs {
        rev = t.put(k.as_bytes(), v.as_bytes(), 0);
    }
    t.commit();
    w.commit(s.applied_index() + 1).expect("commit");
    rev
}

fn put(s: &Store, k: &str, v: &str) -> i64 {
    put_all(s, &[(k, v)])
}

fn del(s: &Store, key: &str, end: &str) -> (i64, i64) {
    let mut w = BatchWriter::new(s);
    let mut t = w.txn();
    let out = t
        .delete_range(&KeyRange::new(key.as_bytes(), end.as_bytes()))
        .expect("delete");
    t.commit();
    w.commit(s.applied_index() + 1).expect("commit");
    out
}

/// Compacts at `rev` and waits for the compactor to remove the old records.
fn compact(s: &Store, rev: i64) -> Result<(), EtcdError> {
    let mut w = BatchWriter::new(s);
    let r = w.compact(rev);
    w.commit(s.applied_index() + 1).expect("commit");
    if r.is_ok() {
        s.wait_compacted(rev);
    }
    r
}

fn get_at(s: &Store, key: &str, rev: i64) -> Result<Option<KeyValue>, EtcdError> {
    let req = RangeRequest {
        key: key.into(),
        revision: rev,
        ..Default::default()
    };
    match s.range(&req) {
        Ok(r) => Ok(r.kvs.into_iter().next()),
        Err(ReadError::Client(e)) => Err(e),
        Err(ReadError::Storage(e)) => panic!("storage error: {e}"),
    }
}

/// (value, create_revision, mod_revision, version)
fn summary(kv: &KeyValue) -> (String, i64, i64, i64) {
    (
        String::from_utf8_lossy(&kv.value).into_owned(),
        kv.create_revision,
        kv.mod_revision,
        kv.version,
    )
}

fn all(s: &Store) -> Vec<(String, String)> {
    let req = RangeRequest {
        key: b"\0".to_vec(),
        range_end: b"\0".to_vec(),
        ..Default::default()
    };
    s.range(&req)
        .expect("range")
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect()
}

fn record_revisions(s: &Store) -> Vec<(i64, i64, bool)> {
    record_revisions_of(s.backend().as_ref())
}

#[test]
fn fresh_store_starts_at_revision_one() {
    let s = mem_store();
    assert_eq!(s.current_revision(), 1);
    assert_eq!(s.compact_revision(), NEVER_COMPACTED);
    assert_eq!(s.applied_index(), 0);
    assert_eq!(put(&s, "a", "1"), 2);
    assert_eq!(s.current_revision(), 2);
    assert_eq!(s.applied_index(), 1);
    let kv = get_at(&s, "a", 0).expect("read").expect("present");
    assert_eq!(summary(&kv), ("1".into(), 2, 2, 1));
    assert_eq!(kv.key, b"a");
}

#[test]
fn versions_generations_and_historic_reads() {
    let s = mem_store();
    assert_eq!(put(&s, "a", "v1"), 2);
    assert_eq!(put(&s, "a", "v2"), 3);
    assert_eq!(del(&s, "a", ""), (1, 4));
    assert_eq!(put(&s, "b", "x"), 5);
    assert_eq!(put(&s, "a", "v3"), 6);
    assert_eq!(put(&s, "a", "v4"), 7);

    struct Case {
        key: &'static str,
        rev: i64,
        want: Option<(&'static str, i64, i64, i64)>,
    }
    let cases = [
        Case {
            key: "a",
            rev: 1,
            want: None,
        },
        Case {
            key: "a",
            rev: 2,
            want: Some(("v1", 2, 2, 1)),
        },
        Case {
            key: "a",
            rev: 3,
            want: Some(("v2", 2, 3, 2)),
        },
        Case {
            key: "a",
            rev: 4,
            want: None,
        },
        Case {
            key: "a",
            rev: 5,
            want: None,
        },
        // Re-created: a new generation, version restarts at 1.
        Case {
            key: "a",
            rev: 6,
            want: Some(("v3", 6, 6, 1)),
        },
        Case {
            key: "a",
            rev: 7,
            want: Some(("v4", 6, 7, 2)),
        },
        Case {
            key: "a",
            rev: 0,
            want: Some(("v4", 6, 7, 2)),
        },
        Case {
            key: "a",
            rev: -1,
            want: Some(("v4", 6, 7, 2)),
        },
        Case {
            key: "b",
            rev: 4,
            want: None,
        },
        Case {
            key: "b",
            rev: 7,
            want: Some(("x", 5, 5, 1)),
        },
    ];
    for c in cases {
        let got = get_at(&s, c.key, c.rev).expect("read");
        let want = c.want.map(|(v, cr, m, ver)| (v.to_string(), cr, m, ver));
        assert_eq!(got.as_ref().map(summary), want, "{}@{}", c.key, c.rev);
    }
    // A historic read reports the current revision in its header.
    let r = s
        .range(&RangeRequest {
            key: b"a".to_vec(),
            revision: 2,
            ..Default::default()
        })
        .expect("range");
    assert_eq!(r.header.expect("header").revision, 7);
}

#[test]
fn read_revision_bounds() {
    let s = mem_store();
    put(&s, "a", "1"); // 2
    put(&s, "a", "2"); // 3
    put(&s, "a", "3"); // 4
    assert_eq!(get_at(&s, "a", 5), Err(EtcdError::FutureRev));
    compact(&s, 3).expect("compact");
    struct Case {
        rev: i64,
        want: Result<Option<&'static str>, EtcdError>,
    }
    let cases = [
        Case {
            rev: 1,
            want: Err(EtcdError::Compacted),
        },
        Case {
            rev: 2,
            want: Err(EtcdError::Compacted),
        },
        // The compaction revision itself is still readable.
        Case {
            rev: 3,
            want: Ok(Some("2")),
        },
        Case {
            rev: 4,
            want: Ok(Some("3")),
        },
        Case {
            rev: 5,
            want: Err(EtcdError::FutureRev),
        },
        Case {
            rev: 0,
            want: Ok(Some("3")),
        },
    ];
    for c in cases {
        let got = get_at(&s, "a", c.rev)
            .map(|kv| kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()));
        assert_eq!(got, c.want.map(|v| v.map(String::from)), "rev {}", c.rev);
    }
}

#[test]
fn one_transaction_is_one_revision() {
    let s = mem_store();
    put(&s, "c", "old"); // 2
    let mut w = BatchWriter::new(&s);
    let mut t = w.txn();
    assert_eq!(t.begin_rev(), 2);
    assert_eq!(t.put(b"a", b"1", 0), 3);
    assert_eq!(t.put(b"b", b"2", 0), 3);
    assert_eq!(
        t.delete_range(&KeyRange::new(b"c", b"")).expect("del"),
        (1, 3)
    );
    // Reads inside the transaction see its writes.
    assert_eq!(t.read_rev(), 3);
    assert_eq!(
        t.get(b"a").expect("get").map(|kv| kv.value),
        Some(b"1".to_vec())
    );
    assert_eq!(t.get(b"c").expect("get"), None);
    t.commit();
    assert_eq!(w.rev(), 3);
    let events = w.commit(7).expect("commit");
    assert_eq!(s.current_revision(), 3);
    assert_eq!(s.applied_index(), 7);
    assert_eq!(
        record_revisions(&s),
        vec![(2, 0, false), (3, 0, false), (3, 1, false), (3, 2, true)]
    );
    let kinds: Vec<(i32, &[u8], i64)> = events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().expect("kv");
            (e.r#type, kv.key.as_slice(), kv.mod_revision)
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (EventType::Put as i32, &b"a"[..], 3),
            (EventType::Put as i32, &b"b"[..], 3),
            (EventType::Delete as i32, &b"c"[..], 3),
        ]
    );
    // A delete event carries the deleted value as prev_kv.
    let prev = events[2].prev_kv.as_ref().expect("prev_kv");
    assert_eq!((prev.value.as_slice(), prev.mod_revision), (&b"old"[..], 2));
}

#[test]
fn no_change_no_revision() {
    let s = mem_store();
    put(&s, "a", "1"); // 2
                       // Deleting nothing reports the current revision and does not bump it.
    assert_eq!(del(&s, "zz", ""), (0, 2));
    assert_eq!(del(&s, "b", "c"), (0, 2));
    assert_eq!(s.current_revision(), 2);
    // An empty transaction neither.
    let mut w = BatchWriter::new(&s);
    w.txn().commit();
    w.commit(s.applied_index() + 1).expect("commit");
    assert_eq!(s.current_revision(), 2);
    assert_eq!(put(&s, "a", "2"), 3);
}

#[test]
fn dropped_transaction_changes_nothing() {
    let s = mem_store();
    put(&s, "a", "1"); // 2
    let mut w = BatchWriter::new(&s);
    {
        let mut t = w.txn();
        t.put(b"a", b"2", 0);
        t.put(b"new", b"x", 0);
        t.delete_range(&KeyRange::new(b"a", b"")).expect("del");
        // dropped: rolled back
    }
    assert_eq!(w.rev(), 2);
    let mut t = w.txn();
    assert_eq!(
        t.get(b"a").expect("get").map(|kv| kv.value),
        Some(b"1".to_vec())
    );
    assert_eq!(t.get(b"new").expect("get"), None);
    // The next write reuses the revision the dropped one would have had.
    assert_eq!(t.put(b"b", b"1", 0), 3);
    t.commit();
    let events = w.commit(9).expect("commit");
    assert_eq!(events.len(), 1);
    assert_eq!(
        all(&s),
        vec![("a".into(), "1".into()), ("b".into(), "1".into())]
    );
    assert_eq!(
        get_at(&s, "a", 0).expect("read").map(|kv| kv.version),
        Some(1)
    );
    assert_eq!(record_revisions(&s), vec![(2, 0, false), (3, 0, false)]);
}

#[test]
fn batch_overlay_is_visible_to_the_batch_only() {
    let s = mem_store();
    put(&s, "a", "1"); // 2
    let mut w = BatchWriter::new(&s);
    let mut t = w.txn();
    t.put(b"a", b"2", 0);
    t.put(b"b", b"1", 0);
    t.commit();
    // Later requests of the batch see it...
    let mut t = w.txn();
    assert_eq!(t.begin_rev(), 3);
    let a = t.get(b"a").expect("get").expect("present");
    assert_eq!(summary(&a), ("2".into(), 2, 3, 2));
    t.put(b"a", b"3", 0);
    t.commit();
    let r = range::range(
        &w,
        &RangeRequest {
            key: b"a".to_vec(),
            range_end: b"c".to_vec(),
            ..Default::default()
        },
    )
    .expect("range");
    assert_eq!(r.count, 2);
    assert_eq!(r.header.expect("header").revision, 4);
    // ...readers of the store do not, until commit.
    assert_eq!(s.current_revision(), 2);
    assert_eq!(all(&s), vec![("a".into(), "1".into())]);
    w.commit(5).expect("commit");
    assert_eq!(s.current_revision(), 4);
    assert_eq!(
        all(&s),
        vec![("a".into(), "3".into()), ("b".into(), "1".into())]
    );
    let a = get_at(&s, "a", 0).expect("read").expect("present");
    assert_eq!(summary(&a), ("3".into(), 2, 4, 3));
}

#[test]
fn compaction_keeps_what_reads_above_it_need() {
    // History: a: 2,3,5   b: 4, deleted 6   c: 7, deleted 9   d: 8
    let s = mem_store();
    put(&s, "a", "a2");
    put(&s, "a", "a3");
    put(&s, "b", "b4");
    put(&s, "a", "a5");
    del(&s, "b", "");
    put(&s, "c", "c7");
    put(&s, "d", "d8");
    del(&s, "c", "");
    assert_eq!(s.current_revision(), 9);

    struct Case {
        at: i64,
        records: Vec<(i64, bool)>,
    }
    let cases = [
        Case {
            at: 2,
            records: vec![
                (2, false),
                (3, false),
                (4, false),
                (5, false),
                (6, true),
                (7, false),
                (8, false),
                (9, true),
            ],
        },
        Case {
            at: 4,
            records: vec![
                (3, false),
                (4, false),
                (5, false),
                (6, true),
                (7, false),
                (8, false),
                (9, true),
            ],
        },
        // b deleted at 6: its put and tombstone go.
        Case {
            at: 6,
            records: vec![(5, false), (7, false), (8, false), (9, true)],
        },
        Case {
            at: 8,
            records: vec![(5, false), (7, false), (8, false), (9, true)],
        },
        // c deleted at 9: gone entirely.
        Case {
            at: 9,
            records: vec![(5, false), (8, false)],
        },
    ];
    for c in cases {
        // Rebuild the same history each time.
        let s2 = mem_store();
        put(&s2, "a", "a2");
        put(&s2, "a", "a3");
        put(&s2, "b", "b4");
        put(&s2, "a", "a5");
        del(&s2, "b", "");
        put(&s2, "c", "c7");
        put(&s2, "d", "d8");
        del(&s2, "c", "");
        let before: Vec<_> = (c.at..=9)
            .map(|rev| {
                ["a", "b", "c", "d"]
                    .iter()
                    .map(|k| get_at(&s2, k, rev).expect("read"))
                    .collect::<Vec<_>>()
            })
            .collect();
        compact(&s2, c.at).expect("compact");
        assert_eq!(s2.compact_revision(), c.at);
        let got: Vec<(i64, bool)> = record_revisions(&s2)
            .into_iter()
            .map(|(m, _, t)| (m, t))
            .collect();
        assert_eq!(got, c.records, "records after compact({})", c.at);
        let after: Vec<_> = (c.at..=9)
            .map(|rev| {
                ["a", "b", "c", "d"]
                    .iter()
                    .map(|k| get_at(&s2, k, rev).expect("read"))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(before, after, "reads at >= {} unchanged", c.at);
        if c.at > 1 {
            assert_eq!(get_at(&s2, "a", c.at - 1), Err(EtcdError::Compacted));
        }
        // The revision goes on after compaction.
        assert_eq!(put(&s2, "e", "x"), 10);
    }
    drop(s);
}

#[test]
fn compaction_revision_checks() {
    let s = mem_store();
    put(&s, "a", "1"); // 2
    put(&s, "a", "2"); // 3
    struct Case {
        rev: i64,
        want: Result<(), EtcdError>,
        compact_after: i64,
    }
    let cases = [
        Case {
            rev: 4,
            want: Err(EtcdError::FutureRev),
            compact_after: NEVER_COMPACTED,
        },
        Case {
            rev: 2,
            want: Ok(()),
            compact_after: 2,
        },
        Case {
            rev: 2,
            want: Err(EtcdError::Compacted),
            compact_after: 2,
        },
        Case {
            rev: 1,
            want: Err(EtcdError::Compacted),
            compact_after: 2,
        },
        Case {
            rev: 3,
            want: Ok(()),
            compact_after: 3,
        },
    ];
    for c in cases {
        assert_eq!(compact(&s, c.rev), c.want, "compact({})", c.rev);
        assert_eq!(s.compact_revision(), c.compact_after);
    }
    assert_eq!(
        get_at(&s, "a", 3).expect("read").map(|kv| kv.value),
        Some(b"2".to_vec())
    );
}

#[test]
fn compaction_in_the_same_batch_as_writes() {
    let s = mem_store();
    put(&s, "a", "1"); // 2
    let mut w = BatchWriter::new(&s);
    let mut t = w.txn();
    t.put(b"a", b"2", 0); // 3
    t.commit();
    w.compact(3).expect("compact");
    // Reads below the new compaction fail at once, inside the batch too.
    assert!(matches!(
        range::range(
            &w,
            &RangeRequest {
                key: b"a".to_vec(),
                revision: 2,
                ..Default::default()
            }
        ),
        Err(ReadError::Client(EtcdError::Compacted))
    ));
    let mut t = w.txn();
    t.put(b"a", b"3", 0); // 4
    t.commit();
    w.commit(3).expect("commit");
    s.wait_compacted(3);
    assert_eq!(record_revisions(&s), vec![(3, 0, false), (4, 0, false)]);
    assert_eq!(
        get_at(&s, "a", 3).expect("read").map(|kv| kv.value),
        Some(b"2".to_vec())
    );
    assert_eq!(
        get_at(&s, "a", 4).expect("read").map(|kv| kv.version),
        Some(3)
    );
}

#[test]
fn range_options() {
    // Keys with distinct versions, create and mod revisions:
    // a: created 2, modified 6 (v2)   b: created 3 (v1)   c: created 4, modified 7, 8 (v3)
    // d: created 5 (v1)
    let s = mem_store();
    put(&s, "a", "zz"); // 2
    put(&s, "b", "yy"); // 3
    put(&s, "c", "xx"); // 4
    put(&s, "d", "ww"); // 5
    put(&s, "a", "vv"); // 6
    put(&s, "c", "uu"); // 7
    put(&s, "c", "tt"); // 8

    struct Case {
        name: &'static str,
        req: RangeRequest,
        keys: Vec<&'static str>,
        more: bool,
        count: i64,
    }
    let all = |f: fn(&mut RangeRequest)| {
        let mut r = RangeRequest {
            key: b"a".to_vec(),
            range_end: b"\0".to_vec(),
            ..Default::default()
        };
        f(&mut r);
        r
    };
    let cases = vec![
        Case {
            name: "from key",
            req: all(|_| {}),
            keys: vec!["a", "b", "c", "d"],
            more: false,
            count: 4,
        },
        Case {
            name: "prefix range",
            req: RangeRequest {
                key: b"b".to_vec(),
                range_end: b"d".to_vec(),
                ..Default::default()
            },
            keys: vec!["b", "c"],
            more: false,
            count: 2,
        },
        Case {
            name: "limit",
            req: all(|r| r.limit = 2),
            keys: vec!["a", "b"],
            more: true,
            count: 4,
        },
        Case {
            name: "limit equal to count",
            req: all(|r| r.limit = 4),
            keys: vec!["a", "b", "c", "d"],
            more: false,
            count: 4,
        },
        Case {
            name: "count only",
            req: all(|r| r.count_only = true),
            keys: vec![],
            more: false,
            count: 4,
        },
        Case {
            name: "descend by key",
            req: all(|r| r.sort_order = SortOrder::Descend as i32),
            keys: vec!["d", "c", "b", "a"],
            more: false,
            count: 4,
        },
        Case {
            name: "by version, default ascending, ties in key order",
            req: all(|r| r.sort_target = SortTarget::Version as i32),
            keys: vec!["b", "d", "a", "c"],
            more: false,
            count: 4,
        },
        Case {
            name: "by mod descending with limit",
            req: all(|r| {
                r.sort_target = SortTarget::Mod as i32;
                r.sort_order = SortOrder::Descend as i32;
                r.limit = 2;
            }),
            keys: vec!["c", "a"],
            more: true,
            count: 4,
        },
        Case {
            name: "by create ascending",
            req: all(|r| {
                r.sort_target = SortTarget::Create as i32;
                r.sort_order = SortOrder::Ascend as i32;
            }),
            keys: vec!["a", "b", "c", "d"],
            more: false,
            count: 4,
        },
        Case {
            name: "by value ascending",
            req: all(|r| {
                r.sort_target = SortTarget::Value as i32;
                r.sort_order = SortOrder::Ascend as i32;
            }),
            keys: vec!["c", "a", "d", "b"],
            more: false,
            count: 4,
        },
        Case {
            // etcd quirk: a non-key target with order NONE sorts ascending,
            // but only over the limit+1 keys fetched in key order.
            name: "implicit ascending sort applies to the fetched prefix only",
            req: all(|r| {
                r.sort_target = SortTarget::Mod as i32;
                r.limit = 1;
            }),
            keys: vec!["b"],
            more: true,
            count: 4,
        },
        Case {
            name: "min mod revision (count ignores filters, as etcd)",
            req: all(|r| r.min_mod_revision = 6),
            keys: vec!["a", "c"],
            more: false,
            count: 4,
        },
        Case {
            name: "max mod revision",
            req: all(|r| r.max_mod_revision = 5),
            keys: vec!["b", "d"],
            more: false,
            count: 4,
        },
        Case {
            name: "create revision window",
            req: all(|r| {
                r.min_create_revision = 3;
                r.max_create_revision = 4;
            }),
            keys: vec!["b", "c"],
            more: false,
            count: 4,
        },
        Case {
            name: "filter then limit",
            req: all(|r| {
                r.min_create_revision = 3;
                r.limit = 1;
            }),
            keys: vec!["b"],
            more: true,
            count: 4,
        },
        Case {
            name: "lock recipe: first by create revision",
            req: all(|r| {
                r.sort_target = SortTarget::Create as i32;
                r.sort_order = SortOrder::Ascend as i32;
                r.max_create_revision = 4;
                r.limit = 1;
            }),
            keys: vec!["a"],
            more: true,
            count: 4,
        },
        Case {
            name: "historic range",
            req: all(|r| r.revision = 3),
            keys: vec!["a", "b"],
            more: false,
            count: 2,
        },
        Case {
            name: "inverted range is empty",
            req: RangeRequest {
                key: b"d".to_vec(),
                range_end: b"a".to_vec(),
                ..Default::default()
            },
            keys: vec![],
            more: false,
            count: 0,
        },
        Case {
            name: "unknown sort target leaves key order",
            req: all(|r| {
                r.sort_target = 42;
                r.sort_order = SortOrder::Descend as i32;
            }),
            keys: vec!["a", "b", "c", "d"],
            more: false,
            count: 4,
        },
    ];
    for c in cases {
        let r = s.range(&c.req).expect(c.name);
        let keys: Vec<String> = r
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect();
        assert_eq!(keys, c.keys, "{}", c.name);
        assert_eq!(r.more, c.more, "{} more", c.name);
        assert_eq!(r.count, c.count, "{} count", c.name);
        assert_eq!(r.header.expect("header").revision, 8, "{} header", c.name);
    }

    let r = s
        .range(&RangeRequest {
            key: b"a".to_vec(),
            keys_only: true,
            ..Default::default()
        })
        .expect("keys only");
    let kv = &r.kvs[0];
    assert!(kv.value.is_empty());
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 6, 2));
}

#[test]
fn restore_from_sled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || {
        let b = open_sled_for_test(dir.path());
        Store::open(Arc::new(b)).expect("open")
    };
    let (hash, snapshot) = {
        let s = open();
        put(&s, "a", "1"); // 2
        put(&s, "a", "2"); // 3
        put(&s, "b", "1"); // 4
        del(&s, "b", ""); // 5
        put(&s, "b", "2"); // 6
        put(&s, "c", "1"); // 7
        compact(&s, 4).expect("compact");
        del(&s, "c", ""); // 8
        let mut w = BatchWriter::new(&s);
        w.activate_alarm(7, AlarmType::Nospace as i32);
        w.commit(s.applied_index() + 1).expect("commit");
        assert_eq!(s.applied_index(), 9);
        s.backend().flush().expect("flush");
        let snapshot: Vec<_> = (4..=8)
            .map(|rev| {
                ["a", "b", "c"]
                    .iter()
                    .map(|k| get_at(&s, k, rev).expect("read"))
                    .collect::<Vec<_>>()
            })
            .collect();
        (s.hash_kv(0).expect("hash"), snapshot)
    };
    let s = open();
    assert_eq!(s.applied_index(), 9);
    assert_eq!(s.current_revision(), 8);
    assert_eq!(s.compact_revision(), 4);
    assert_eq!(s.alarms().len(), 1);
    assert_eq!(
        (s.alarms()[0].member_id, s.alarms()[0].alarm),
        (7, AlarmType::Nospace as i32)
    );
    let again: Vec<_> = (4..=8)
        .map(|rev| {
            ["a", "b", "c"]
                .iter()
                .map(|k| get_at(&s, k, rev).expect("read"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(again, snapshot);
    assert_eq!(get_at(&s, "a", 3), Err(EtcdError::Compacted));
    assert_eq!(s.hash_kv(0).expect("hash"), hash);
    // Revisions and versions continue where they were.
    assert_eq!(put(&s, "a", "3"), 9);
    let a = get_at(&s, "a", 0).expect("read").expect("present");
    assert_eq!(summary(&a), ("3".into(), 2, 9, 3));
    assert_eq!(put(&s, "c", "2"), 10);
    let c = get_at(&s, "c", 0).expect("read").expect("present");
    assert_eq!(summary(&c), ("2".into(), 10, 10, 1));
}

#[test]
fn restore_when_the_last_write_was_compacted_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || {
        let b = open_sled_for_test(dir.path());
        Store::open(Arc::new(b)).expect("open")
    };
    {
        let s = open();
        put(&s, "a", "1"); // 2
        del(&s, "a", ""); // 3
        compact(&s, 3).expect("compact");
        assert!(record_revisions(&s).is_empty());
    }
    let s = open();
    assert_eq!(s.current_revision(), 3);
    assert_eq!(s.compact_revision(), 3);
    assert_eq!(put(&s, "a", "2"), 4);
}

#[test]
fn hash_kv() {
    let build = |s: &Store| {
        put(s, "a", "1"); // 2
        put(s, "b", "1"); // 3
        put(s, "a", "2"); // 4
        del(s, "b", ""); // 5
    };
    let s1 = mem_store();
    build(&s1);
    let dir = tempfile::tempdir().expect("tempdir");
    let s2 = Store::open(Arc::new(open_sled_for_test(dir.path()))).expect("open");
    build(&s2);

    // Same history, same hash, whatever the backend.
    let h = s1.hash_kv(0).expect("hash");
    assert_eq!(h, s2.hash_kv(0).expect("hash"));
    assert_eq!(
        (h.compact_revision, h.current_revision),
        (NEVER_COMPACTED, 5)
    );
    // A hash at an older revision ignores later writes.
    let at3 = s1.hash_kv(3).expect("hash");
    put(&s1, "c", "1");
    assert_eq!(s1.hash_kv(3).expect("hash").hash, at3.hash);
    assert_ne!(s1.hash_kv(0).expect("hash").hash, h.hash);
    assert_ne!(at3.hash, h.hash);
    // Revision bounds, as etcd: at or below the compaction is Compacted.
    assert!(matches!(
        s1.hash_kv(7),
        Err(ReadError::Client(EtcdError::FutureRev))
    ));
    compact(&s1, 4).expect("compact");
    assert!(matches!(
        s1.hash_kv(4),
        Err(ReadError::Client(EtcdError::Compacted))
    ));
    assert!(s1.hash_kv(5).is_ok());
    // Compacting s2 the same way gives the same hash again.
    put(&s2, "c", "1");
    compact(&s2, 4).expect("compact");
    assert_eq!(s1.hash_kv(0).expect("hash"), s2.hash_kv(0).expect("hash"));
}

#[test]
fn concurrent_readers_never_see_half_a_batch() {
    // Each batch writes all ten keys to the same value in one transaction and
    // every fifth batch also compacts. Readers must always see ten equal
    // values, and historic reads either succeed consistently or are Compacted.
    let s = Arc::new(mem_store());
    let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let s = Arc::clone(&s);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let cur = s.current_revision();
                    for rev in [0, cur - 3] {
                        let req = RangeRequest {
                            key: b"k".to_vec(),
                            range_end: b"l".to_vec(),
                            revision: rev,
                            ..Default::default()
                        };
                        match s.range(&req) {
                            Ok(r) if r.kvs.is_empty() => {}
                            Ok(r) => {
                                assert_eq!(r.kvs.len(), 10);
                                let v = &r.kvs[0].value;
                                assert!(r.kvs.iter().all(|kv| &kv.value == v), "torn read");
                                assert!(r
                                    .kvs
                                    .iter()
                                    .all(|kv| kv.mod_revision == r.kvs[0].mod_revision));
                            }
                            Err(ReadError::Client(EtcdError::Compacted)) => {}
                            Err(e) => panic!("unexpected read error: {e}"),
                        }
                        reads += 1;
                    }
                }
                reads
            })
        })
        .collect();
    for i in 0..200 {
        let v = i.to_string();
        let mut w = BatchWriter::new(&s);
        let mut t = w.txn();
        for k in &keys {
            t.put(k.as_bytes(), v.as_bytes(), 0);
        }
        t.commit();
        if i % 5 == 4 {
            let r = w.rev() - 2;
            w.compact(r).expect("compact");
        }
        w.commit(i as u64 + 1).expect("commit");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.join().expect("reader panicked") > 0);
    }
    assert_eq!(s.current_revision(), 201);
}

#[test]
fn historic_reads_of_keys_written_in_the_batch() {
    // The overlay keeps only the tail of a key's history; reads below the
    // batch's start must still see the full committed history.
    let s = mem_store();
    put(&s, "a", "1"); // 2
    put(&s, "a", "2"); // 3
    let mut w = BatchWriter::new(&s);
    let mut t = w.txn();
    t.put(b"a", b"3", 0); // 4
    t.commit();
    let mut t = w.txn();
    t.delete_range(&KeyRange::new(b"a", b"")).expect("del"); // 5
    t.commit();
    let read = |w: &BatchWriter, rev: i64| {
        range::range(
            w,
            &RangeRequest {
                key: b"a".to_vec(),
                revision: rev,
                ..Default::default()
            },
        )
        .expect("range")
        .kvs
        .pop()
        .map(|kv| summary(&kv))
    };
    let want = |rev: i64| match rev {
        2 => Some(("1".to_string(), 2, 2, 1)),
        3 => Some(("2".to_string(), 2, 3, 2)),
        4 => Some(("3".to_string(), 2, 4, 3)),
        _ => None,
    };
    for rev in 2..=5 {
        assert_eq!(read(&w, rev), want(rev), "in batch at {rev}");
    }
    w.commit(9).expect("commit");
    for rev in 2..=5 {
        let got = get_at(&s, "a", rev).expect("read").map(|kv| summary(&kv));
        assert_eq!(got, want(rev), "committed at {rev}");
    }
    // The committed index kept the whole history: compaction still works on it.
    compact(&s, 3).expect("compact");
    assert_eq!(
        record_revisions(&s),
        vec![(3, 0, false), (4, 0, false), (5, 0, true)]
    );
}

/// Writes a mixed history through [`BatchWriter`] and returns every event the
/// writer reported (the live feed the Storage actor publishes), in order.
fn mixed_history(s: &Store) -> Vec<crate::proto::mvccpb::Event> {
    let mut live = Vec::new();
    let mut batch = |f: &dyn Fn(&mut WriteTxn)| {
        let mut w = BatchWriter::new(s);
        let mut t = w.txn();
        f(&mut t);
        t.commit();
        live.extend(w.commit(s.applied_index() + 1).expect("commit"));
    };
    batch(&|t| {
        t.put(b"a", b"1", 0);
    }); // 2
    batch(&|t| {
        t.put(b"b", b"1", 0);
        t.put(b"c", b"1", 0);
    }); // 3: one txn, two events
    batch(&|t| {
        t.put(b"a", b"2", 0);
    }); // 4
    batch(&|t| {
        t.delete_range(&KeyRange::new(b"a", b"c")).expect("delete");
    }); // 5: deletes a and b
    batch(&|t| {
        t.put(b"a", b"3", 7);
    }); // 6: a new generation of a
    live
}

#[test]
fn history_replays_exactly_the_live_feed() {
    for (name, s, _dir) in [("mem", mem_store(), None), {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = Arc::new(open_sled_for_test(&dir.path().join("db")));
        ("sled", Store::open(b).expect("open"), Some(dir))
    }] {
        let mut live = mixed_history(&s);
        assert_eq!(s.current_revision(), 6, "{name}");
        let replayed = s.history(2, 6, true, |_| true).expect("history");
        // A put's event carries no prev_kv when applied; the broadcaster
        // fills it for watchers that ask.
        assert!(live
            .iter()
            .any(|e| e.kv.as_ref().is_some_and(|kv| kv.version > 1) && e.prev_kv.is_none()));
        s.fill_prev_kvs(live.iter_mut()).expect("prev_kv");
        // Same events, same order, same prev_kv: what a watcher catching up
        // reads is what a synced watcher was sent.
        assert_eq!(replayed, live, "{name}");
    }
}

#[test]
fn history_windows_keys_and_prev_kv() {
    struct Case {
        from: i64,
        to: i64,
        keys: &'static [&'static str],
        /// (type, key, mod revision, prev value or "")
        want: &'static [(EventType, &'static str, i64, &'static str)],
    }
    use EventType::{Delete, Put};
    let cases = [
        Case {
            from: 2,
            to: 6,
            keys: &["a"],
            want: &[
                (Put, "a", 2, ""),
                (Put, "a", 4, "1"),
                (Delete, "a", 5, "2"),
                (Put, "a", 6, ""),
            ],
        },
        Case {
            from: 3,
            to: 3,
            keys: &["a", "b", "c"],
            want: &[(Put, "b", 3, ""), (Put, "c", 3, "")],
        },
        Case {
            from: 5,
            to: 5,
            keys: &["b"],
            want: &[(Delete, "b", 5, "1")],
        },
        Case {
            from: 4,
            to: 3,
            keys: &["a"],
            want: &[],
        },
        Case {
            from: 2,
            to: 6,
            keys: &["zz"],
            want: &[],
        },
    ];
    let s = mem_store();
    mixed_history(&s);
    for c in &cases {
        let got = s
            .history(c.from, c.to, true, |k| {
                c.keys.iter().any(|w| w.as_bytes() == k)
            })
            .expect("history");
        let got: Vec<(EventType, String, i64, String)> = got
            .iter()
            .map(|e| {
                let kv = e.kv.clone().unwrap_or_default();
                (
                    EventType::try_from(e.r#type).expect("event type"),
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    kv.mod_revision,
                    e.prev_kv
                        .as_ref()
                        .map(|p| String::from_utf8_lossy(&p.value).into_owned())
                        .unwrap_or_default(),
                )
            })
            .collect();
        let want: Vec<(EventType, String, i64, String)> = c
            .want
            .iter()
            .map(|(t, k, r, p)| (*t, k.to_string(), *r, p.to_string()))
            .collect();
        assert_eq!(got, want, "history({}, {}) over {:?}", c.from, c.to, c.keys);
    }
    // Without prev_kv nothing is looked up.
    let plain = s.history(2, 6, false, |_| true).expect("history");
    assert!(plain.iter().all(|e| e.prev_kv.is_none()));
    // A delete event carries only the key and the revision, as etcd's.
    let del = &s.history(5, 5, false, |k| k == b"a").expect("history")[0];
    assert_eq!(
        del.kv,
        Some(KeyValue {
            key: b"a".to_vec(),
            mod_revision: 5,
            ..Default::default()
        })
    );
}

#[test]
fn history_refuses_compacted_and_future_windows() {
    let s = mem_store();
    mixed_history(&s);
    compact(&s, 4).expect("compact");
    let err = |from, to| match s.history(from, to, false, |_| true) {
        Err(ReadError::Client(e)) => Some(e),
        Err(ReadError::Storage(e)) => panic!("storage error: {e}"),
        Ok(_) => None,
    };
    assert_eq!(err(3, 6), Some(EtcdError::Compacted));
    assert_eq!(err(4, 7), Some(EtcdError::FutureRev));
    // At the compact revision itself: what is left of it (a's put at 4 is
    // the value a had then), like etcd.
    let at = s.history(4, 6, true, |_| true).expect("history");
    let revs: Vec<i64> = at
        .iter()
        .map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision))
        .collect();
    assert_eq!(revs, vec![4, 5, 5, 6]);
    // a's prev at 3 was compacted away: no prev_kv rather than an error.
    assert_eq!(at[0].prev_kv, None);
}

/// `rounds` batches, each putting keys `k00000..` (`keys` of them) to the
/// round number: round r is revision r + 1.
fn rounds(s: &Store, keys: usize, rounds: usize) {
    for r in 1..=rounds {
        let mut w = BatchWriter::new(s);
        let mut t = w.txn();
        for i in 0..keys {
            t.put(format!("k{i:05}").as_bytes(), r.to_string().as_bytes(), 0);
        }
        t.commit();
        w.commit(s.applied_index() + 1).expect("commit");
    }
}

/// Applies a compaction at `rev` without waiting for the compactor.
fn compact_nowait(s: &Store, rev: i64) {
    let mut w = BatchWriter::new(s);
    w.compact(rev).expect("compact");
    w.commit(s.applied_index() + 1).expect("commit");
}

fn finished_meta(s: &Store) -> Option<i64> {
    s.backend()
        .get(super::store::META_FINISHED_COMPACT_REV)
        .expect("get")
        .map(|v| i64::from_be_bytes(v.as_slice().try_into().expect("8 bytes")))
}

#[test]
fn a_range_racing_compaction_reads_the_right_values_or_compacted() {
    // More keys than one step of the index walk, so reads let go of the
    // lock mid-walk; every historic revision gets compacted while readers
    // read at it.
    const KEYS: usize = RANGE_STEP + 500;
    const ROUNDS: usize = 4;
    let s = Arc::new(mem_store());
    rounds(&s, KEYS, ROUNDS);
    let last = s.current_revision();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|n| {
            let (s, stop) = (Arc::clone(&s), Arc::clone(&stop));
            std::thread::spawn(move || {
                let (mut good, mut compacted) = (0u32, 0u32);
                let mut i = n;
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    // At the compact revision (the one compaction keeps),
                    // just above it (the next one to be compacted) or newer.
                    let at = (s.compact_revision().max(2) + i % 3).min(last);
                    i += 1;
                    let req = RangeRequest {
                        key: b"k".to_vec(),
                        range_end: b"l".to_vec(),
                        revision: at,
                        ..Default::default()
                    };
                    match s.range(&req) {
                        Ok(r) => {
                            assert_eq!(r.kvs.len(), KEYS, "a read at {at} missed keys");
                            let want = (at - 1).to_string().into_bytes();
                            assert!(r.kvs.iter().all(|kv| kv.value == want), "at {at}");
                            assert_eq!(r.count, KEYS as i64);
                            good += 1;
                        }
                        Err(ReadError::Client(EtcdError::Compacted)) => compacted += 1,
                        Err(e) => panic!("read at {at}: {e}"),
                    }
                }
                (good, compacted)
            })
        })
        .collect();
    for rev in 2..=last {
        compact_nowait(&s, rev);
        s.wait_compacted(rev);
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    for r in readers {
        let (good, _compacted) = r.join().expect("reader panicked");
        assert!(good > 0, "no read succeeded");
    }
    assert_eq!(record_revisions(&s).len(), KEYS);
}

#[test]
fn the_compactor_waits_for_a_read_that_resolved_before_the_compaction() {
    // A read at 3 resolves its revisions, then compaction at 4 is applied
    // (the read was admitted before, so it must still get its values): the
    // compactor reaches the deletion, waits for the read, and deletes only
    // once it is done.
    let s = mem_store();
    rounds(&s, 300, 3); // revisions 2, 3, 4
    let all = KeyRange::new(b"k", b"l");
    let snap = s.snapshot(3).expect("snapshot");
    let revs = snap.live_revisions(&all, 3).expect("resolve");
    assert_eq!(revs.len(), 300);
    compact_nowait(&s, 4);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !s.compaction.waiting_for_readers() {
        assert!(
            std::time::Instant::now() < deadline,
            "the compactor did not reach the deletion within 10 s"
        );
        std::thread::yield_now();
    }
    for rev in &revs {
        let kv = snap.record(*rev).expect("a resolved record is still there");
        assert_eq!(kv.value, b"2");
    }
    assert!(s.compaction.waiting_for_readers(), "still held by the read");
    assert!(s.compaction_finished() < 4);
    drop(snap);
    s.wait_compacted(4);
    assert_eq!(record_revisions(&s).len(), 300);
}

#[test]
fn compacted_records_are_gone_once_the_compactor_finishes() {
    // Several deletion batches' worth: 3 revisions of 1,500 keys.
    let s = mem_store();
    rounds(&s, 1_500, 3);
    put(&s, "z", "1");
    del(&s, "z", ""); // a tombstone at the compaction revision
    let rev = s.current_revision();
    let before = s.range(&RangeRequest {
        key: b"\0".to_vec(),
        range_end: b"\0".to_vec(),
        ..Default::default()
    });
    compact_nowait(&s, rev);
    // Refused at once, whatever is still on disk.
    assert_eq!(get_at(&s, "k00000", rev - 1), Err(EtcdError::Compacted));
    s.wait_compacted(rev);
    assert_eq!(s.compaction_finished(), rev);
    assert_eq!(finished_meta(&s), Some(rev));
    let left = record_revisions(&s);
    assert_eq!(left.len(), 1_500, "one record per live key");
    assert!(left.iter().all(|&(main, _, tomb)| main == 4 && !tomb));
    let after = s.range(&RangeRequest {
        key: b"\0".to_vec(),
        range_end: b"\0".to_vec(),
        ..Default::default()
    });
    assert_eq!(before.expect("range"), after.expect("range"));
    // The index was pruned too: only live keys with one revision each.
    let c = s.committed.read();
    assert_eq!(c.index.len(), 1_500);
    assert!(c.index.iter().all(|(_, ki)| ki.revisions().count() == 1));
}

/// A [`MemBackend`] that counts the operations of each background batch
/// (the compactor's deletions).
#[derive(Default)]
struct CountingBackend {
    inner: MemBackend,
    /// Operations per `write_batch_background` call, in order.
    background: parking_lot::Mutex<Vec<usize>>,
}

impl Backend for CountingBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, crate::error::StorageError> {
        self.inner.get(key)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> super::backend::ScanIter<'_> {
        self.inner.scan_prefix(prefix)
    }
    fn scan_range(&self, start: &[u8], end: &[u8]) -> super::backend::ScanIter<'_> {
        self.inner.scan_range(start, end)
    }
    fn write_batch(&self, batch: WriteBatch) -> Result<(), crate::error::StorageError> {
        self.inner.write_batch(batch)
    }
    fn write_batch_background(&self, batch: WriteBatch) -> Result<(), crate::error::StorageError> {
        self.background.lock().push(batch.len());
        self.inner.write_batch(batch)
    }
    fn flush(&self) -> Result<(), crate::error::StorageError> {
        Ok(())
    }
    fn size_on_disk(&self) -> Result<u64, crate::error::StorageError> {
        self.inner.size_on_disk()
    }
}

#[test]
fn the_batch_limit_bounds_each_deletion_batch_and_the_pause_spaces_them() {
    let backend = Arc::new(CountingBackend::default());
    let s = Store::open(backend.clone()).expect("open");
    let pause = std::time::Duration::from_millis(20);
    s.set_compaction_batches(compaction::Batches { limit: 500, pause });
    // 4,500 records, 3,000 of them to delete.
    rounds(&s, 1_500, 3);
    let rev = s.current_revision();
    let t = std::time::Instant::now();
    compact(&s, rev).expect("compact");
    let took = t.elapsed();
    assert_eq!(record_revisions(&s).len(), 1_500);
    let batches = backend.background.lock().clone();
    // 9 batches of 500 examined records (the last three delete nothing:
    // they are the live revisions), then one that finds none left and
    // records the pass as finished; a pause after each of the first 9.
    assert_eq!(batches.len(), 10, "batches: {batches:?}");
    assert!(
        batches.iter().all(|&ops| ops <= 500),
        "a batch over the limit: {batches:?}"
    );
    assert!(took >= pause * 9, "{took:?} for 9 pauses of {pause:?}");
}

#[test]
fn physical_compaction_resumes_after_a_restart() {
    let backend: Arc<dyn Backend> = Arc::new(MemBackend::new());
    let (rev, reads) = {
        let s = Store::open(backend.clone()).expect("open");
        rounds(&s, 1_200, 3);
        put(&s, "gone", "1");
        del(&s, "gone", "");
        put(&s, "k00000", "last");
        let rev = s.current_revision() - 1;
        let reads: Vec<_> = (rev..=s.current_revision())
            .map(|at| get_at(&s, "k00000", at).expect("read"))
            .collect();
        (rev, reads)
    };
    // What a crash right after applying the compaction leaves: the compact
    // revision recorded, and only part of the old records deleted (the
    // compactor deletes in revision order).
    let mut wb = WriteBatch::new();
    wb.put(super::store::META_COMPACT_REV, rev.to_be_bytes().to_vec());
    for (main, sub, tomb) in record_revisions_of(backend.as_ref()) {
        if main == 2 && sub < 700 {
            wb.delete(super::store::rev_key(Revision::new(main, sub), tomb));
        }
    }
    backend.write_batch(wb).expect("write");
    let s = Store::open(backend.clone()).expect("reopen");
    assert_eq!(s.compact_revision(), rev);
    // Reads at and above the compaction are right before the pass is done.
    let again: Vec<_> = (rev..=s.current_revision())
        .map(|at| get_at(&s, "k00000", at).expect("read"))
        .collect();
    assert_eq!(again, reads);
    assert_eq!(get_at(&s, "k00001", rev - 1), Err(EtcdError::Compacted));
    s.wait_compacted(rev);
    assert_eq!(finished_meta(&s), Some(rev));
    // k00000 keeps its put at 4 (live at the compaction) and the one after;
    // every other key its round-3 put; "gone" nothing.
    let left = record_revisions(&s);
    assert_eq!(left.len(), 1_201);
    assert!(left.iter().all(|&(main, _, tomb)| main >= 4 && !tomb));
    let again: Vec<_> = (rev..=s.current_revision())
        .map(|at| get_at(&s, "k00000", at).expect("read"))
        .collect();
    assert_eq!(again, reads);
}

fn record_revisions_of(b: &dyn Backend) -> Vec<(i64, i64, bool)> {
    b.scan_prefix(REV_PREFIX)
        .map(|item| {
            let (k, _) = item.expect("scan");
            let (r, t) = Revision::from_bytes(&k[REV_PREFIX.len()..]).expect("decode");
            (r.main, r.sub, t)
        })
        .collect()
}

#[test]
fn hash_kv_is_the_same_before_during_and_after_physical_compaction() {
    // Two stores with the same history; one compacts and is hashed at once
    // (the hash waits for the compactor), from another thread while the
    // compactor works, and after it is done; the other is compacted and
    // finished before hashing. All agree, and agree after a reopen.
    let build = |s: &Store| {
        rounds(s, 2_500, 3);
        put(s, "x", "1");
        del(s, "x", "");
    };
    let a = Arc::new(mem_store());
    build(&a);
    let b = mem_store();
    build(&b);
    let rev = a.current_revision() - 2;
    compact_nowait(&a, rev);
    let during = {
        let a = Arc::clone(&a);
        std::thread::spawn(move || a.hash_kv(0).expect("hash"))
    };
    let first = a.hash_kv(0).expect("hash");
    compact(&b, rev).expect("compact");
    let reference = b.hash_kv(0).expect("hash");
    assert_eq!(first, reference);
    assert_eq!(during.join().expect("hash thread"), reference);
    a.wait_compacted(rev);
    assert_eq!(a.hash_kv(0).expect("hash"), reference);
    assert_eq!(
        a.hash_kv(rev + 1).expect("hash"),
        b.hash_kv(rev + 1).expect("hash")
    );
}
