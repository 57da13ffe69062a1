//! [`WatcherGroup`]: a set of watchers indexed by the keys they watch, so
//! that an event finds the watchers it concerns without visiting every
//! watcher (etcd's `watcherGroup`).
//!
//! Pure data, no I/O: the [`super::hub::Hub`] keeps two groups, *synced*
//! (live events go to them as they are applied) and *unsynced* (they catch up
//! from history), and moves watchers between them.
//!
//! Single-key watchers are found by a hash lookup. Range watchers (prefix,
//! from-key, explicit range) are grouped by their exact range, so a thousand
//! watchers on one prefix cost one range comparison per event, not a
//! thousand; an event is compared with each *distinct* range. etcd keeps an
//! interval tree for that; distinct ranges are few in practice (clients
//! watch a handful of prefixes), so a flat list of them is simpler and fast.

use std::collections::HashMap;

use crate::mvcc::KeyRange;
use crate::proto::mvccpb::Event;

use super::IdSet;

/// A watcher's handle inside the broadcaster: unique for the broadcaster's
/// lifetime (client watch ids are only unique per stream).
pub type WatcherKey = u64;

/// Watchers indexed by what they watch.
#[derive(Debug, Default)]
pub struct WatcherGroup {
    /// Single-key watchers, by key.
    keys: HashMap<Vec<u8>, IdSet<WatcherKey>>,
    /// Range watchers, by their exact range.
    ranges: HashMap<KeyRange, IdSet<WatcherKey>>,
    /// Number of watchers in the group.
    len: usize,
}

impl WatcherGroup {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a watcher; returns false if it was already in the group.
    pub fn add(&mut self, w: WatcherKey, range: &KeyRange) -> bool {
        let added = match range {
            KeyRange::Single(k) => self.keys.entry(k.clone()).or_default().insert(w),
            r => self.ranges.entry(r.clone()).or_default().insert(w),
        };
        self.len += usize::from(added);
        added
    }

    /// Removes a watcher; returns false if it was not in the group.
    pub fn remove(&mut self, w: WatcherKey, range: &KeyRange) -> bool {
        let removed = match range {
            KeyRange::Single(k) => remove_from(&mut self.keys, k, w),
            r => remove_from(&mut self.ranges, r, w),
        };
        self.len -= usize::from(removed);
        removed
    }

    /// Every watcher whose range holds `key` (each once).
    pub fn matching<'a>(&'a self, key: &'a [u8]) -> impl Iterator<Item = WatcherKey> + 'a {
        let single = self.keys.get(key).into_iter().flatten().copied();
        let ranged = self
            .ranges
            .iter()
            .filter(move |(r, _)| r.contains(key))
            .flat_map(|(_, ws)| ws.iter().copied());
        single.chain(ranged)
    }

    /// The events of `events[from..]` each set of watchers gets, by their
    /// keys: for every range (and every watched key) that holds at least one
    /// of the events, its watchers and the indexes of those events, in order.
    /// All watchers of a set share the range, so the key comparisons are made
    /// once per set, not once per watcher.
    pub fn select<'a>(
        &'a self,
        events: &[Event],
        from: usize,
    ) -> Vec<(&'a IdSet<WatcherKey>, Vec<u32>)> {
        let keyed = || {
            events
                .iter()
                .enumerate()
                .skip(from)
                .filter_map(|(i, e)| Some((i as u32, e.kv.as_ref()?.key.as_slice())))
        };
        let mut out = Vec::new();
        for (range, watchers) in &self.ranges {
            let indexes: Vec<u32> = keyed()
                .filter(|(_, k)| range.contains(k))
                .map(|(i, _)| i)
                .collect();
            if !indexes.is_empty() {
                out.push((watchers, indexes));
            }
        }
        if !self.keys.is_empty() {
            // Where each watched key's set is in `out`.
            let mut slot: HashMap<&[u8], usize> = HashMap::new();
            for (i, k) in keyed() {
                let Some((key, watchers)) = self.keys.get_key_value(k) else {
                    continue;
                };
                let at = *slot.entry(key.as_slice()).or_insert_with(|| {
                    out.push((watchers, Vec::new()));
                    out.len() - 1
                });
                if let Some((_, indexes)) = out.get_mut(at) {
                    indexes.push(i);
                }
            }
        }
        out
    }

    /// Whether any watcher's range holds `key` (the key filter of a history read).
    pub fn wants(&self, key: &[u8]) -> bool {
        self.keys.contains_key(key) || self.ranges.keys().any(|r| r.contains(key))
    }
}

fn remove_from<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, IdSet<WatcherKey>>,
    k: &K,
    w: WatcherKey,
) -> bool {
    let Some(set) = map.get_mut(k) else {
        return false;
    };
    let removed = set.remove(&w);
    if set.is_empty() {
        map.remove(k);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(watchers: &[(WatcherKey, &[u8], &[u8])]) -> WatcherGroup {
        let mut g = WatcherGroup::new();
        for (w, key, end) in watchers {
            assert!(g.add(*w, &KeyRange::new(key, end)));
        }
        g
    }

    #[test]
    fn events_find_exactly_the_watchers_whose_range_holds_the_key() {
        // 1: key "foo"; 2: prefix "foo" (end "fop"); 3: from "m"; 4: every key;
        // 5: ["a", "c"); 6: an empty range; 7: key "foo" again.
        let g = group(&[
            (1, b"foo", b""),
            (2, b"foo", b"fop"),
            (3, b"m", b"\0"),
            (4, b"\0", b"\0"),
            (5, b"a", b"c"),
            (6, b"z", b"a"),
            (7, b"foo", b""),
        ]);
        struct Case {
            key: &'static [u8],
            want: &'static [WatcherKey],
        }
        let cases = [
            Case {
                key: b"foo",
                want: &[1, 2, 4, 7],
            },
            Case {
                key: b"foo/bar",
                want: &[2, 4],
            },
            Case {
                key: b"fop",
                want: &[4],
            },
            Case {
                key: b"m",
                want: &[3, 4],
            },
            Case {
                key: b"zzz",
                want: &[3, 4],
            },
            Case {
                key: b"a",
                want: &[4, 5],
            },
            Case {
                key: b"bzzz",
                want: &[4, 5],
            },
            Case {
                key: b"c",
                want: &[4],
            },
            Case {
                key: b"\0",
                want: &[4],
            },
        ];
        for c in &cases {
            let mut got: Vec<WatcherKey> = g.matching(c.key).collect();
            got.sort();
            assert_eq!(got, c.want, "key {:?}", String::from_utf8_lossy(c.key));
            assert!(g.wants(c.key), "key {:?}", String::from_utf8_lossy(c.key));
        }
        assert_eq!(g.len(), 7);
    }

    #[test]
    fn a_batch_is_selected_once_per_range_and_per_key() {
        use crate::proto::mvccpb::KeyValue;
        // 1, 2: prefix "p/"; 3: key "p/a"; 4, 5: key "q"; 6: key "z".
        let g = group(&[
            (1, b"p/", b"p0"),
            (2, b"p/", b"p0"),
            (3, b"p/a", b""),
            (4, b"q", b""),
            (5, b"q", b""),
            (6, b"z", b""),
        ]);
        let event = |key: &str| Event {
            kv: Some(KeyValue {
                key: key.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let events = [
            event("p/a"),
            event("q"),
            event("p/b"),
            Event::default(),
            event("q"),
            event("p/a"),
        ];
        let mut got: Vec<(Vec<WatcherKey>, Vec<u32>)> = g
            .select(&events, 1)
            .into_iter()
            .map(|(ws, indexes)| {
                let mut ws: Vec<WatcherKey> = ws.iter().copied().collect();
                ws.sort();
                (ws, indexes)
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (vec![1, 2], vec![2, 5]),
                (vec![3], vec![5]),
                (vec![4, 5], vec![1, 4]),
            ]
        );
    }

    #[test]
    fn one_shared_range_is_compared_once() {
        let mut g = WatcherGroup::new();
        for w in 0..1000 {
            g.add(w, &KeyRange::new(b"/p/", b"/p0"));
        }
        assert_eq!(g.ranges.len(), 1);
        assert_eq!(g.matching(b"/p/x").count(), 1000);
        assert_eq!(g.matching(b"/q").count(), 0);
        assert!(!g.wants(b"/q"));
    }

    #[test]
    fn add_and_remove_keep_the_count_and_forget_empty_entries() {
        let mut g = WatcherGroup::new();
        let single = KeyRange::new(b"k", b"");
        let prefix = KeyRange::new(b"k", b"l");
        assert!(g.add(1, &single));
        assert!(!g.add(1, &single), "double add");
        assert!(g.add(2, &prefix));
        assert_eq!(g.len(), 2);
        assert!(!g.remove(2, &single), "removed under the wrong range");
        assert!(g.remove(1, &single));
        assert!(!g.remove(1, &single), "double remove");
        assert!(g.remove(2, &prefix));
        assert!(g.is_empty());
        assert!(g.keys.is_empty() && g.ranges.is_empty());
        assert!(!g.wants(b"k"));
    }
}
