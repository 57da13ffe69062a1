//! Hub tests: live dispatch, catch-up and its hand-over, slow consumers,
//! compaction, progress and restarts, driven with an in-memory store and the
//! real outbound channels (read with `try_recv`), no actor.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::*;
use crate::mvcc::{BatchWriter, MemBackend};
use crate::proto::etcdserverpb::watch_create_request::FilterType;
use crate::watch::{outbound_channel, STREAM_BUFFER};

struct Fixture {
    store: Arc<Store>,
    hub: Hub,
}

/// (type, key, mod revision, prev value) of a delivered event.
type Seen = (EventType, String, i64, Option<String>);

impl Fixture {
    fn new() -> Self {
        let store = Arc::new(Store::open(Arc::new(MemBackend::new())).expect("open"));
        Fixture {
            hub: Hub::new(store.clone()),
            store,
        }
    }

    /// Applies one batch with one txn per entry of `txns` (each a list of
    /// puts; a value of "" deletes the key) and hands its events to the hub.
    fn write(&mut self, txns: &[&[(&str, &str)]]) -> bool {
        let (rev, events) = self.write_unseen(txns);
        self.hub.applied(rev, Arc::new(events))
    }

    /// Like [`Fixture::write`], without telling the hub.
    fn write_unseen(&mut self, txns: &[&[(&str, &str)]]) -> (i64, Vec<Event>) {
        let mut w = BatchWriter::new(&self.store);
        for ops in txns {
            let mut t = w.txn();
            for (k, v) in *ops {
                if v.is_empty() {
                    t.delete_range(&KeyRange::new(k.as_bytes(), b""))
                        .expect("delete");
                } else {
                    t.put(k.as_bytes(), v.as_bytes(), 0);
                }
            }
            t.commit();
        }
        let events = w.commit(self.store.applied_index() + 1).expect("commit");
        (self.store.current_revision(), events)
    }

    fn put(&mut self, k: &str, v: &str) -> bool {
        self.write(&[&[(k, v)]])
    }

    fn compact(&mut self, rev: i64) {
        let mut w = BatchWriter::new(&self.store);
        w.compact(rev).expect("compact");
        w.commit(self.store.applied_index() + 1).expect("commit");
    }

    fn open(&mut self) -> (StreamId, mpsc::Receiver<Outbound>) {
        let (tx, rx) = outbound_channel();
        (self.hub.open_stream(tx), rx)
    }

    fn watch(&mut self, stream: StreamId, req: WatchCreateRequest) -> bool {
        self.hub.create(stream, req, None)
    }

    /// Runs catch-up passes until nothing is unsynced or they stop progressing.
    fn sync_all(&mut self) -> SyncOutcome {
        loop {
            match self.hub.sync() {
                SyncOutcome::Progressed => continue,
                other => return other,
            }
        }
    }
}

fn req(key: &str, end: &str, start: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.into(),
        range_end: end.into(),
        start_revision: start,
        ..Default::default()
    }
}

fn drain(rx: &mut mpsc::Receiver<Outbound>) -> Vec<Outbound> {
    let mut out = Vec::new();
    while let Ok(item) = rx.try_recv() {
        out.push(item);
    }
    out
}

/// The events `items` deliver to `watch_id`, checking that each response
/// holds whole revisions in order.
fn seen(items: &[Outbound], watch_id: i64) -> Vec<Seen> {
    let mut out: Vec<Seen> = Vec::new();
    for item in items {
        let Outbound::Events(responses) = item else {
            continue;
        };
        for r in responses.iter().filter(|r| r.watch_id == watch_id) {
            for e in r.events() {
                let kv = e.kv.clone().unwrap_or_default();
                assert!(
                    kv.mod_revision <= r.through,
                    "event past the response's revision"
                );
                out.push((
                    EventType::try_from(e.r#type).expect("type"),
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    kv.mod_revision,
                    e.prev_kv
                        .map(|p| String::from_utf8_lossy(&p.value).into_owned()),
                ));
            }
        }
    }
    out
}

fn revs(seen: &[Seen]) -> Vec<i64> {
    seen.iter().map(|s| s.2).collect()
}

fn created_ids(items: &[Outbound]) -> Vec<i64> {
    items
        .iter()
        .filter_map(|i| match i {
            Outbound::Created { watch_id, .. } => Some(*watch_id),
            _ => None,
        })
        .collect()
}

#[test]
fn live_events_reach_exactly_the_matching_watchers() {
    struct Case {
        name: &'static str,
        req: WatchCreateRequest,
        /// (key, revision) of the events this watcher must get.
        want: &'static [(&'static str, i64)],
    }
    let filtered = |f: FilterType| WatchCreateRequest {
        filters: vec![f as i32],
        ..req("a", "", 0)
    };
    let cases = [
        Case {
            name: "single key",
            req: req("a", "", 0),
            want: &[("a", 2), ("a", 4), ("a", 5)],
        },
        Case {
            name: "prefix",
            req: req("b/", "b0", 0),
            want: &[("b/1", 3), ("b/2", 3)],
        },
        Case {
            name: "from key",
            req: req("b/2", "\0", 0),
            want: &[("b/2", 3), ("c", 3)],
        },
        Case {
            name: "all keys",
            req: req("\0", "\0", 0),
            want: &[
                ("a", 2),
                ("b/1", 3),
                ("b/2", 3),
                ("c", 3),
                ("a", 4),
                ("a", 5),
            ],
        },
        Case {
            name: "empty key means \\0",
            req: req("", "\0", 0),
            want: &[
                ("a", 2),
                ("b/1", 3),
                ("b/2", 3),
                ("c", 3),
                ("a", 4),
                ("a", 5),
            ],
        },
        Case {
            name: "NOPUT",
            req: filtered(FilterType::Noput),
            want: &[("a", 5)],
        },
        Case {
            name: "NODELETE",
            req: filtered(FilterType::Nodelete),
            want: &[("a", 2), ("a", 4)],
        },
        Case {
            name: "future start revision",
            req: req("a", "", 4),
            want: &[("a", 4), ("a", 5)],
        },
    ];
    let mut f = Fixture::new();
    let (sid, mut rx) = f.open();
    for (i, c) in cases.iter().enumerate() {
        let needs_sync = f.watch(
            sid,
            WatchCreateRequest {
                watch_id: 100 + i as i64,
                ..c.req.clone()
            },
        );
        assert!(!needs_sync, "{}: a watch from now is synced", c.name);
    }
    f.put("a", "1"); // 2
    f.write(&[&[("b/1", "1"), ("b/2", "1"), ("c", "1")]]); // 3: one txn
    f.put("a", "2"); // 4
    f.write(&[&[("a", "")]]); // 5: delete
    let items = drain(&mut rx);
    assert_eq!(created_ids(&items).len(), cases.len());
    for (i, c) in cases.iter().enumerate() {
        let got: Vec<(String, i64)> = seen(&items, 100 + i as i64)
            .into_iter()
            .map(|s| (s.1, s.2))
            .collect();
        let want: Vec<(String, i64)> = c.want.iter().map(|(k, r)| (k.to_string(), *r)).collect();
        assert_eq!(got, want, "{}", c.name);
    }
}

#[test]
fn watchers_of_one_range_share_events_unless_a_filter_or_start_sets_them_apart() {
    struct Case {
        name: &'static str,
        filters: &'static [FilterType],
        start: i64,
        /// (key, revision) of the events this watcher must get.
        want: &'static [(&'static str, i64)],
        /// Gets the same selection as the plain watchers (no copy of its own).
        shares: bool,
    }
    // One batch, two revisions: 2 puts m/1 and m/2; 3 deletes m/1, puts m/3.
    let all: &[(&str, i64)] = &[("m/1", 2), ("m/2", 2), ("m/1", 3), ("m/3", 3)];
    let cases = [
        Case {
            name: "plain",
            filters: &[],
            start: 0,
            want: all,
            shares: true,
        },
        Case {
            name: "plain, again",
            filters: &[],
            start: 0,
            want: all,
            shares: true,
        },
        Case {
            name: "start revision at the batch's first",
            filters: &[],
            start: 2,
            want: all,
            shares: true,
        },
        Case {
            name: "start revision inside the batch",
            filters: &[],
            start: 3,
            want: &[("m/1", 3), ("m/3", 3)],
            shares: false,
        },
        Case {
            name: "NOPUT",
            filters: &[FilterType::Noput],
            start: 0,
            want: &[("m/1", 3)],
            shares: false,
        },
        Case {
            name: "NODELETE",
            filters: &[FilterType::Nodelete],
            start: 0,
            want: &[("m/1", 2), ("m/2", 2), ("m/3", 3)],
            shares: false,
        },
        Case {
            name: "start revision past the batch",
            filters: &[],
            start: 4,
            want: &[],
            shares: false,
        },
    ];
    let mut f = Fixture::new();
    let (sid, mut rx) = f.open();
    for (i, c) in cases.iter().enumerate() {
        f.watch(
            sid,
            WatchCreateRequest {
                watch_id: i as i64,
                filters: c.filters.iter().map(|&f| f as i32).collect(),
                ..req("m/", "m0", c.start)
            },
        );
    }
    drain(&mut rx);
    f.write(&[&[("m/1", "1"), ("m/2", "1")], &[("m/1", ""), ("m/3", "1")]]);
    let items = drain(&mut rx);
    let responses: Vec<&EventsResponse> = items
        .iter()
        .filter_map(|i| match i {
            Outbound::Events(rs) => Some(rs),
            _ => None,
        })
        .flatten()
        .collect();
    let plain = responses
        .iter()
        .find(|r| r.watch_id == 0)
        .map(|r| r.selection.clone())
        .expect("the plain watcher's response");
    for (i, c) in cases.iter().enumerate() {
        let got: Vec<(String, i64)> = seen(&items, i as i64)
            .into_iter()
            .map(|s| (s.1, s.2))
            .collect();
        let want: Vec<(String, i64)> = c.want.iter().map(|(k, r)| (k.to_string(), *r)).collect();
        assert_eq!(got, want, "{}", c.name);
        let shares = responses
            .iter()
            .any(|r| r.watch_id == i as i64 && Arc::ptr_eq(&r.selection, &plain));
        assert_eq!(shares, c.shares, "{}", c.name);
    }
}

#[test]
fn prev_kv_only_when_asked() {
    let mut f = Fixture::new();
    let (sid, mut rx) = f.open();
    f.watch(
        sid,
        WatchCreateRequest {
            prev_kv: true,
            watch_id: 1,
            ..req("k", "", 0)
        },
    );
    f.watch(
        sid,
        WatchCreateRequest {
            watch_id: 2,
            ..req("k", "", 0)
        },
    );
    f.put("k", "1");
    f.put("k", "2");
    f.write(&[&[("k", "")]]);
    let items = drain(&mut rx);
    let with: Vec<Option<String>> = seen(&items, 1).into_iter().map(|s| s.3).collect();
    assert_eq!(with, vec![None, Some("1".into()), Some("2".into())]);
    assert!(seen(&items, 2).iter().all(|s| s.3.is_none()));
}

#[test]
fn ids_are_assigned_like_etcd_and_bad_creates_are_refused() {
    let mut f = Fixture::new();
    let (sid, mut rx) = f.open();
    // Auto ids start at 0 and skip ids the client chose.
    f.watch(
        sid,
        WatchCreateRequest {
            watch_id: 1,
            ..req("a", "", 0)
        },
    );
    f.watch(sid, req("a", "", 0));
    f.watch(sid, req("a", "", 0));
    f.watch(sid, req("a", "", 0));
    // A duplicate id, an empty range, a negative start revision.
    f.watch(
        sid,
        WatchCreateRequest {
            watch_id: 1,
            ..req("a", "", 0)
        },
    );
    f.watch(sid, req("b", "a", 0));
    f.watch(sid, req("a", "", -1));
    let items = drain(&mut rx);
    assert_eq!(created_ids(&items), vec![1, 0, 2, 3]);
    let reasons: Vec<String> = items
        .iter()
        .filter_map(|i| match i {
            Outbound::CreateFailed { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            ERR_DUPLICATE_ID.to_string(),
            ERR_EMPTY_RANGE.to_string(),
            EtcdError::Compacted.to_string()
        ]
    );
    // Another stream has its own ids.
    let (other, mut orx) = f.open();
    f.watch(other, req("a", "", 0));
    assert_eq!(created_ids(&drain(&mut orx)), vec![0]);
}

#[test]
fn cancel_answers_once_and_stops_events() {
    let mut f = Fixture::new();
    let (sid, mut rx) = f.open();
    f.watch(sid, req("a", "", 0));
    f.put("a", "1");
    f.hub.cancel(sid, 0, None);
    f.hub.cancel(sid, 0, None); // unknown now: no answer, as etcd
    f.hub.cancel(sid, 42, None);
    f.put("a", "2");
    let items = drain(&mut rx);
    let canceled = items
        .iter()
        .filter(|i| matches!(i, Outbound::Canceled { watch_id: 0, .. }))
        .count();
    assert_eq!(canceled, 1);
    assert_eq!(revs(&seen(&items, 0)), vec![2]);
    assert_eq!(f.hub.watcher_count(), 0);
}

#[test]
fn history_then_live_hands_over_without_gap_or_duplicate() {
    let mut f = Fixture::new();
    for i in 0..10 {
        f.put("k", &format!("v{i}")); // 2..=11
    }
    let (sid, mut rx) = f.open();
    assert!(f.watch(
        sid,
        WatchCreateRequest {
            prev_kv: true,
            ..req("k", "", 3)
        }
    ));
    // Batches applied before the catch-up pass runs are not sent live to
    // the unsynced watcher...
    f.put("k", "late1"); // 12
    f.put("k", "late2"); // 13
    assert_eq!(f.sync_all(), SyncOutcome::Done);
    // ...and after it the watcher is synced and gets live events.
    f.put("k", "live"); // 14
    let items = drain(&mut rx);
    let got = seen(&items, 0);
    assert_eq!(revs(&got), (3..=14).collect::<Vec<_>>());
    assert_eq!(got[0].3.as_deref(), Some("v0"), "prev_kv from history");
    assert_eq!(
        got.last().and_then(|s| s.3.clone()).as_deref(),
        Some("late2")
    );
}

#[test]
fn long_catch_up_reads_windows_of_whole_revisions() {
    let mut f = Fixture::new();
    let n = MAX_REVS_PER_SYNC as usize + 150;
    for i in 0..n {
        f.write(&[&[("p/a", &i.to_string()), ("p/b", &i.to_string())]]);
    }
    let (sid, mut rx) = f.open();
    f.watch(sid, req("p/", "p0", 2));
    assert_eq!(f.hub.sync(), SyncOutcome::Progressed);
    assert_eq!(f.hub.sync(), SyncOutcome::Done);
    let items = drain(&mut rx);
    let got = seen(&items, 0);
    assert_eq!(got.len(), 2 * n);
    // Two windows, each ending on a whole revision.
    let responses: Vec<(i64, usize)> = items
        .iter()
        .filter_map(|i| match i {
            Outbound::Events(r) => Some((r[0].through, r[0].selection.indexes.len())),
            _ => None,
        })
        .collect();
    assert_eq!(
        responses,
        vec![(MAX_REVS_PER_SYNC + 1, 2000), (n as i64 + 1, 300)]
    );
    let expected: Vec<i64> = (2..=n as i64 + 1).flat_map(|r| [r, r]).collect();
    assert_eq!(revs(&got), expected);
}

#[test]
fn a_slow_stream_falls_behind_alone_and_catches_up_exactly() {
    let mut f = Fixture::new();
    let (slow, mut slow_rx) = f.open();
    let (fast, mut fast_rx) = f.open();
    f.watch(slow, req("k", "", 0));
    f.watch(fast, req("k", "", 0));
    let mut fast_items = drain(&mut fast_rx);
    let total = STREAM_BUFFER as i64 + 200;
    let mut needs_sync = false;
    for i in 0..total {
        needs_sync |= f.put("k", &i.to_string());
        // The fast consumer keeps up; the slow one reads nothing.
        fast_items.extend(drain(&mut fast_rx));
    }
    assert!(
        needs_sync,
        "the slow stream's watcher must have been desynced"
    );
    assert!(f.hub.has_unsynced());
    let all: Vec<i64> = (2..total + 2).collect();
    assert_eq!(revs(&seen(&fast_items, 0)), all);
    // While the slow stream is full, catch-up cannot queue anything.
    assert_eq!(f.hub.sync(), SyncOutcome::Blocked);
    // The slow consumer reads; catch-up fills in the rest.
    let mut slow_items = drain(&mut slow_rx);
    loop {
        let outcome = f.sync_all();
        slow_items.extend(drain(&mut slow_rx));
        if outcome == SyncOutcome::Done {
            break;
        }
    }
    f.put("k", "after"); // live again
    slow_items.extend(drain(&mut slow_rx));
    let mut expected = all.clone();
    expected.push(total + 2);
    assert_eq!(revs(&seen(&slow_items, 0)), expected);
}

#[test]
fn compaction_while_unsynced_cancels_with_the_compact_revision() {
    let mut f = Fixture::new();
    for i in 0..5 {
        f.put("k", &i.to_string()); // 2..=6
    }
    let (sid, mut rx) = f.open();
    f.watch(sid, req("k", "", 2));
    f.compact(4);
    f.put("k", "x");
    assert_eq!(f.sync_all(), SyncOutcome::Done);
    let items = drain(&mut rx);
    assert!(matches!(items[0], Outbound::Created { watch_id: 0, .. }));
    assert!(matches!(
        items[1],
        Outbound::Compacted {
            watch_id: 0,
            compact_revision: 4
        }
    ));
    assert_eq!(items.len(), 2);
    assert_eq!(f.hub.watcher_count(), 0);
    // Starting at the compact revision itself is fine, as in etcd.
    // (Auto ids are not reused: this is watch 1.)
    f.watch(sid, req("k", "", 4));
    f.sync_all();
    assert_eq!(revs(&seen(&drain(&mut rx), 1)), vec![4, 5, 6, 7]);
}

#[test]
fn progress_request_waits_until_every_watcher_is_synced() {
    let mut f = Fixture::new();
    for i in 0..3 {
        f.put("k", &i.to_string()); // 2..=4
    }
    let (sid, mut rx) = f.open();
    f.watch(sid, req("k", "", 0));
    f.watch(sid, req("k", "", 2)); // unsynced until a pass runs
    f.hub.request_progress(sid, None);
    let progress = |items: &[Outbound]| -> Vec<i64> {
        items
            .iter()
            .filter_map(|i| match i {
                Outbound::Progress {
                    watch_id: -1,
                    revision,
                    ..
                } => Some(*revision),
                _ => None,
            })
            .collect()
    };
    let before = drain(&mut rx);
    assert!(
        progress(&before).is_empty(),
        "answered while a watcher is unsynced"
    );
    f.sync_all();
    let after = drain(&mut rx);
    // The answer comes after the history it vouches for.
    let last = after.len() - 1;
    assert!(matches!(
        after[last],
        Outbound::Progress {
            watch_id: -1,
            revision: 4,
            ..
        }
    ));
    assert_eq!(revs(&seen(&after, 1)), vec![2, 3, 4]);
    // Synced: answered at once.
    f.hub.request_progress(sid, None);
    assert_eq!(progress(&drain(&mut rx)), vec![4]);
}

#[test]
fn periodic_progress_is_elided_after_events() {
    let mut f = Fixture::new();
    let (sid, mut rx) = f.open();
    f.watch(
        sid,
        WatchCreateRequest {
            progress_notify: true,
            ..req("k", "", 0)
        },
    );
    f.watch(
        sid,
        WatchCreateRequest {
            watch_id: 9,
            ..req("k", "", 0)
        },
    );
    drain(&mut rx);
    let ticks = |f: &mut Fixture, rx: &mut mpsc::Receiver<Outbound>| -> Vec<(i64, i64)> {
        f.hub.progress_tick();
        drain(rx)
            .iter()
            .filter_map(|i| match i {
                Outbound::Progress {
                    watch_id, revision, ..
                } => Some((*watch_id, *revision)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(ticks(&mut f, &mut rx), vec![(0, 1)]);
    f.put("k", "v");
    drain(&mut rx);
    assert_eq!(ticks(&mut f, &mut rx), vec![], "events since the last tick");
    assert_eq!(ticks(&mut f, &mut rx), vec![(0, 2)]);
}

#[test]
fn restart_resumes_from_the_given_revision_in_a_new_epoch() {
    let mut f = Fixture::new();
    let (sid, mut rx) = f.open();
    f.watch(sid, req("k", "", 0));
    for i in 0..4 {
        f.put("k", &i.to_string()); // 2..=5
    }
    let first = drain(&mut rx);
    let epoch = match &first[1] {
        Outbound::Events(r) => r[0].epoch,
        other => panic!("expected events, got {other:?}"),
    };
    // The sender delivered up to 3, then failed.
    assert!(f.hub.restart(sid, 1, &[(0, epoch, 4)]));
    // A stale restart (old epoch) is ignored.
    assert!(!f.hub.restart(sid, 1, &[(0, epoch, 2)]) || f.hub.has_unsynced());
    f.sync_all();
    f.put("k", "live"); // 6
    let items = drain(&mut rx);
    let new_epochs: Vec<u64> = items
        .iter()
        .filter_map(|i| match i {
            Outbound::Events(r) => Some(r[0].epoch),
            _ => None,
        })
        .collect();
    assert!(new_epochs.iter().all(|e| *e != epoch));
    assert_eq!(revs(&seen(&items, 0)), vec![4, 5, 6]);
}

#[test]
fn missed_revisions_are_read_from_history() {
    let mut f = Fixture::new();
    let (sid, mut rx) = f.open();
    f.watch(sid, req("k", "", 0));
    f.put("k", "1"); // 2
    let _ = f.write_unseen(&[&[("k", "2")]]); // 3, never reported
    assert!(f.put("k", "3")); // 4: gap detected
    f.sync_all();
    assert_eq!(revs(&seen(&drain(&mut rx), 0)), vec![2, 3, 4]);
}

#[test]
fn closing_a_stream_forgets_its_watchers() {
    let mut f = Fixture::new();
    let (sid, _rx) = f.open();
    f.watch(sid, req("k", "", 0));
    f.watch(sid, req("j", "", 1));
    assert_eq!(f.hub.watcher_count(), 2);
    f.hub.close_stream(sid);
    assert_eq!(f.hub.watcher_count(), 0);
    assert!(!f.hub.has_unsynced());
    assert!(!f.put("k", "v"));
}

/// Storage tells the broadcaster with `try_send`; when its mailbox was full
/// the notices were dropped, and Storage later sends one with no events at
/// the current revision: the watchers catch up from history, missing nothing.
#[test]
fn an_empty_notice_past_the_last_revision_catches_up_from_history() {
    let mut f = Fixture::new();
    let (sid, mut rx) = f.open();
    f.watch(sid, req("k", "", 0));
    f.put("k", "1"); // 2
    let (rev, _) = f.write_unseen(&[&[("k", "2")], &[("k", "3")]]); // 3, 4: notices dropped
    assert_eq!(rev, 4);
    assert!(
        f.hub.applied(rev, Arc::new(Vec::new())),
        "a notice past the last revision with no events is a gap"
    );
    f.sync_all();
    assert_eq!(revs(&seen(&drain(&mut rx), 0)), vec![2, 3, 4]);
}
