//! etcd's watch guarantees, checked over a recorded history.
//!
//! etcd promises (api/v3 docs, "Watch streams"), and its robustness suite
//! checks, that a watch is:
//!
//! * **ordered**: events arrive in revision order, never going back;
//! * **unique**: no event (revision, key) twice;
//! * **atomic**: all the events of one revision in one response (a
//!   revision's events never split across responses);
//! * **reliable**: no gap: every event of a revision between the watch's
//!   start and the last revision it observed (by an event or a progress
//!   notification) was delivered, as the whole history shows it;
//! * **resumable**: a watch started again at `r + 1` after seeing `r`
//!   continues exactly (the reliable check of the new watch from its start);
//! * **progress**: a progress notification at `R` is a promise that every
//!   event up to `R` was delivered; nothing at or below `R` may follow it;
//! * **compaction**: a watch is only canceled as compacted if its start
//!   revision really is below the compaction revision, and nothing follows.
//!   A watch that starts exactly at a compaction revision is not owed a
//!   delete made at that revision: compaction keeps no tombstone at or
//!   below its revision (etcd's rule, and cairn's).
//!
//! The reference ("what happened at revision r") is the union of every
//! watch's events and every acknowledged write's effect; if two sources
//! disagree about one (revision, key), that is a violation too (a watch
//! that made up or lost an event, or a write acknowledged at a revision
//! where something else happened).

use std::collections::{BTreeMap, HashSet};

use crate::history::{Event, History, Outcome, Request, Response, Watch};

/// The outcome of [`check`].
#[derive(Debug, Default)]
pub struct Report {
    pub watches: usize,
    /// Events delivered, over all watches.
    pub events: usize,
    /// Revisions the reference knows.
    pub revisions: usize,
    /// Every violation found, readably (at most [`MAX_VIOLATIONS`]).
    pub violations: Vec<String>,
}

/// The report keeps this many violations.
pub const MAX_VIOLATIONS: usize = 20;

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
    fn violation(&mut self, text: String) {
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(text);
        }
    }
}

/// What happened at each revision: key → value (None: deleted), with where
/// it was learnt.
type Reference = BTreeMap<i64, BTreeMap<String, (Option<String>, String)>>;

fn learn(reference: &mut Reference, report: &mut Report, e: &Event, source: String) {
    let at = reference.entry(e.revision).or_default();
    match at.get(&e.key) {
        None => {
            at.insert(e.key.clone(), (e.value.clone(), source));
        }
        Some((value, first)) if *value != e.value => {
            let text = format!(
                "revision {}: {first} shows {:?} = {value:?}, but {source} shows {:?}",
                e.revision, e.key, e.value
            );
            report.violation(text);
        }
        Some(_) => {}
    }
}

/// Checks every watch of `history` against etcd's guarantees.
pub fn check(history: &History) -> Report {
    let mut report = Report {
        watches: history.watches.len(),
        ..Report::default()
    };
    let mut reference = Reference::new();
    for (i, op) in history.operations.iter().enumerate() {
        let events: Vec<Event> = match (&op.request, &op.outcome) {
            (
                Request::Put { .. } | Request::LeasePut { .. },
                Outcome::Ok(Response::Put { revision }),
            )
            | (
                Request::Txn { .. } | Request::TxnPair { .. },
                Outcome::Ok(Response::Txn {
                    revision,
                    succeeded: true,
                    ..
                }),
            ) => op
                .request
                .puts()
                .into_iter()
                .map(|(key, value)| Event {
                    revision: *revision,
                    key: key.to_string(),
                    value: Some(value.to_string()),
                })
                .collect(),
            (
                Request::Delete { key },
                Outcome::Ok(Response::Delete {
                    revision,
                    deleted: 1..,
                }),
            ) => vec![Event {
                revision: *revision,
                key: key.clone(),
                value: None,
            }],
            _ => continue,
        };
        for event in &events {
            learn(
                &mut reference,
                &mut report,
                event,
                format!("acknowledged operation {i}"),
            );
        }
    }
    for (w, watch) in history.watches.iter().enumerate() {
        for r in &watch.responses {
            for e in &r.events {
                report.events += 1;
                learn(&mut reference, &mut report, e, format!("watch {w}"));
            }
        }
    }
    report.revisions = reference.len();
    let compactions: HashSet<i64> = history.compactions.iter().copied().collect();
    for (w, watch) in history.watches.iter().enumerate() {
        check_one(w, watch, &reference, &compactions, &mut report);
    }
    report
}

fn check_one(
    w: usize,
    watch: &Watch,
    reference: &Reference,
    compactions: &HashSet<i64>,
    report: &mut Report,
) {
    // The first revision the watch owes: its start, or (start 0) the one
    // after the revision its creation was answered at.
    let from = match watch.start_revision {
        0 => watch
            .responses
            .iter()
            .find(|r| r.created)
            .map(|r| r.header_revision + 1),
        start => Some(start),
    };
    let mut seen: HashSet<(i64, &str)> = HashSet::new();
    let mut last_event = 0i64;
    // The highest revision the watch vouches for (events or progress).
    let mut vouched = 0i64;
    let mut ended = None::<usize>;
    let mut delivered: BTreeMap<i64, BTreeMap<&str, &Option<String>>> = BTreeMap::new();
    for (k, r) in watch.responses.iter().enumerate() {
        if let Some(end) = ended {
            if !r.events.is_empty() {
                report.violation(format!(
                    "watch {w}: response {k} carries events after the watch ended at response {end}"
                ));
            }
            continue;
        }
        if r.compact_revision > 0 {
            if watch.start_revision == 0 || watch.start_revision >= r.compact_revision {
                report.violation(format!(
                    "watch {w}: canceled as compacted at {}, but it started at {} (not compacted)",
                    r.compact_revision, watch.start_revision
                ));
            }
            ended = Some(k);
            continue;
        }
        if r.canceled {
            ended = Some(k);
        }
        if r.is_progress() {
            // A notification below what was already delivered is stale but
            // true (etcd 3.4 sends such); only what follows it is judged.
            vouched = vouched.max(r.header_revision);
            continue;
        }
        let first = r.events.first().map_or(0, |e| e.revision);
        if !r.events.is_empty() && first <= last_event {
            report.violation(format!(
                "watch {w}: response {k} starts at revision {first}, not after {last_event} \
                 (out of order, or one revision split across responses)"
            ));
        }
        if !r.events.is_empty() && first <= vouched && vouched > last_event {
            report.violation(format!(
                "watch {w}: response {k} delivers revision {first} after a progress \
                 notification vouched for {vouched}"
            ));
        }
        let mut prev = 0i64;
        for e in &r.events {
            if e.revision < prev {
                report.violation(format!(
                    "watch {w}: response {k} goes back from revision {prev} to {}",
                    e.revision
                ));
            }
            prev = e.revision;
            if !seen.insert((e.revision, e.key.as_str())) {
                report.violation(format!(
                    "watch {w}: event {:?} at revision {} delivered twice",
                    e.key, e.revision
                ));
            }
            if !watch.covers(&e.key) {
                report.violation(format!(
                    "watch {w}: event for {:?} outside the watched range",
                    e.key
                ));
            }
            if from.is_some_and(|f| e.revision < f) {
                report.violation(format!(
                    "watch {w}: event at revision {} before its start {}",
                    e.revision,
                    from.unwrap_or_default()
                ));
            }
            delivered
                .entry(e.revision)
                .or_default()
                .insert(e.key.as_str(), &e.value);
            last_event = last_event.max(e.revision);
        }
        vouched = vouched.max(last_event);
    }
    // Reliable: every revision the reference knows in [from, vouched] was
    // delivered, whole.
    let Some(from) = from.filter(|f| *f <= vouched) else {
        return;
    };
    for (revision, keys) in reference.range(from..=vouched) {
        // A watch that starts exactly at a compaction revision cannot see
        // a delete made at it: compaction keeps no tombstone at or below its
        // revision (etcd's keyIndex.keep, and cairn's).
        let tombstones_gone = *revision == from && compactions.contains(revision);
        let expected: BTreeMap<&str, &Option<String>> = keys
            .iter()
            .filter(|(k, (v, _))| watch.covers(k) && !(tombstones_gone && v.is_none()))
            .map(|(k, (v, _))| (k.as_str(), v))
            .collect();
        if expected.is_empty() {
            continue;
        }
        let got = delivered.get(revision).cloned().unwrap_or_default();
        if got != expected {
            let text = if got.is_empty() {
                format!(
                    "watch {w}: gap: revision {revision} ({expected:?}) never delivered, though \
                     the watch vouched for revisions {from}..={vouched}"
                )
            } else {
                format!(
                    "watch {w}: revision {revision} delivered as {got:?}, but it was {expected:?} \
                     (not atomic, or events lost)"
                )
            };
            report.violation(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Operation, WatchResponse};

    fn ev(revision: i64, key: &str, value: Option<&str>) -> Event {
        Event {
            revision,
            key: key.into(),
            value: value.map(str::to_string),
        }
    }
    fn resp(events: Vec<Event>) -> WatchResponse {
        let header_revision = events.last().map_or(0, |e| e.revision);
        WatchResponse {
            header_revision,
            events,
            ..WatchResponse::default()
        }
    }
    fn progress(revision: i64) -> WatchResponse {
        WatchResponse {
            header_revision: revision,
            ..WatchResponse::default()
        }
    }
    fn watch(start: i64, responses: Vec<WatchResponse>) -> Watch {
        Watch {
            key: "k".into(),
            range_end: "l".into(),
            start_revision: start,
            responses,
            ..Watch::default()
        }
    }
    fn history(watches: Vec<Watch>) -> History {
        History {
            initial_revision: 1,
            watches,
            ..History::default()
        }
    }
    /// Revisions 2..=5: a put, a put and a delete in one txn-like revision,
    /// a put, a put.
    fn full() -> Watch {
        watch(
            2,
            vec![
                resp(vec![ev(2, "k1", Some("a"))]),
                resp(vec![ev(3, "k2", Some("b")), ev(3, "k1", None)]),
                resp(vec![ev(4, "k1", Some("c")), ev(5, "k2", Some("d"))]),
            ],
        )
    }

    fn assert_violation(h: &History, needle: &str) {
        let report = check(h);
        assert!(
            report.violations.iter().any(|v| v.contains(needle)),
            "expected a violation containing {needle:?}, got {:?}",
            report.violations
        );
    }

    #[test]
    fn good_watches_pass_including_a_resumed_one_and_progress() {
        let resumed = watch(
            4,
            vec![
                resp(vec![ev(4, "k1", Some("c"))]),
                progress(4),
                resp(vec![ev(5, "k2", Some("d"))]),
                progress(5),
            ],
        );
        let report = check(&history(vec![full(), resumed]));
        assert!(report.ok(), "{:?}", report.violations);
        assert_eq!(report.events, 7);
    }

    #[test]
    fn a_duplicate_event_is_caught() {
        let mut w = full();
        w.responses.push(resp(vec![ev(5, "k2", Some("d"))]));
        assert_violation(&history(vec![w]), "twice");
    }

    #[test]
    fn a_gap_is_caught() {
        let mut gappy = full();
        gappy.start_revision = 3;
        gappy.responses.remove(0);
        gappy.responses.remove(0); // revision 3 missing
        assert_violation(&history(vec![full(), gappy]), "gap: revision 3");
    }

    #[test]
    fn a_gap_shown_by_an_acknowledged_write_alone_is_caught() {
        // No other watch saw revision 6, but a put was acknowledged there,
        // and the watch vouched for it with a progress notification.
        let mut w = full();
        w.responses.push(progress(6));
        let mut h = history(vec![w]);
        h.operations.push(Operation {
            client: 0,
            invoked: 0,
            completed: 1,
            request: Request::Put {
                key: "k3".into(),
                value: "e".into(),
            },
            outcome: Outcome::Ok(Response::Put { revision: 6 }),
        });
        assert_violation(&h, "gap: revision 6");
    }

    #[test]
    fn out_of_order_events_are_caught() {
        let w = watch(
            2,
            vec![
                resp(vec![ev(3, "k2", Some("b")), ev(3, "k1", None)]),
                resp(vec![ev(2, "k1", Some("a"))]),
            ],
        );
        assert_violation(&history(vec![full(), w]), "out of order");
    }

    #[test]
    fn a_revision_split_across_responses_is_caught() {
        let w = watch(
            2,
            vec![
                resp(vec![ev(2, "k1", Some("a")), ev(3, "k2", Some("b"))]),
                resp(vec![ev(3, "k1", None)]),
            ],
        );
        assert_violation(&history(vec![full(), w]), "split across responses");
    }

    #[test]
    fn a_progress_notification_that_lies_is_caught() {
        // Vouches for 5 having delivered only up to 3.
        let w = watch(
            2,
            vec![
                resp(vec![ev(2, "k1", Some("a"))]),
                resp(vec![ev(3, "k2", Some("b")), ev(3, "k1", None)]),
                progress(5),
            ],
        );
        assert_violation(&history(vec![full(), w]), "gap: revision 4");
    }

    #[test]
    fn watches_that_disagree_about_a_revision_are_caught() {
        let w = watch(5, vec![resp(vec![ev(5, "k2", Some("something else"))])]);
        assert_violation(&history(vec![full(), w]), "revision 5");
    }

    #[test]
    fn a_delete_at_the_compaction_revision_is_not_owed_to_a_watch_starting_there() {
        // Revision 3 holds a delete of k1 (and a put of k2).
        let from_three = || watch(3, vec![resp(vec![ev(3, "k2", Some("b"))]), progress(5)]);
        let mut h = history(vec![full(), from_three()]);
        assert_violation(&h, "revision 3");
        h.compactions.push(3);
        h.watches[1]
            .responses
            .push(resp(vec![ev(4, "k1", Some("c")), ev(5, "k2", Some("d"))]));
        h.watches[1].responses.remove(1);
        let report = check(&h);
        assert!(report.ok(), "{:?}", report.violations);
    }

    #[test]
    fn a_compaction_cancel_of_an_uncompacted_start_is_caught() {
        let good = watch(
            2,
            vec![WatchResponse {
                canceled: true,
                compact_revision: 4,
                ..WatchResponse::default()
            }],
        );
        assert!(check(&history(vec![full(), good])).ok());
        let bad = watch(
            5,
            vec![WatchResponse {
                canceled: true,
                compact_revision: 4,
                ..WatchResponse::default()
            }],
        );
        assert_violation(&history(vec![full(), bad]), "not compacted");
    }
}
