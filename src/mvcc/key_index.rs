//! The in-memory history of each key: which revisions touched it, grouped in
//! generations (etcd's `keyIndex`).
//!
//! A generation is one life of a key: it starts with the put that creates the
//! key and ends with the tombstone that deletes it; the next put starts a new
//! generation. From that, [`KeyIndex::get`] answers "what was this key at
//! revision R" (its mod revision, create revision and version) without
//! touching the backend; the value itself is then one backend lookup of the
//! revision record. The index is rebuilt at open by replaying the revision
//! records, and trimmed by [`KeyIndex::compact`].
//!
//! Example: put@2, put@3, delete@4, put@6 gives generations
//! `{created 2, ver 3, [2, 3, 4(tombstone)]}`, `{created 6, ver 1, [6]}`.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::revision::Revision;

/// The revisions of a key within one life (create .. delete).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Generation {
    /// The revision of the put that created the key (its `create_revision`).
    created: Revision,
    /// Number of revisions ever appended, including ones later compacted away,
    /// so the version of a revision stays right after compaction.
    ver: i64,
    /// The revisions still present in the backend, ascending. In a closed
    /// generation the last one is the tombstone.
    revs: Vec<Revision>,
}

impl Generation {
    fn is_empty(&self) -> bool {
        self.revs.is_empty()
    }
}

/// What a key was at some revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAt {
    /// The revision record holding the key's value at that time.
    pub modified: Revision,
    /// The revision that created this life of the key.
    pub created: Revision,
    /// Number of puts in this life up to and including `modified`.
    pub version: i64,
}

/// The history of one key. Always holds at least one generation; the last one
/// is the open generation (empty when the key is currently deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIndex {
    /// Oldest first; only the last may be open (no tombstone).
    generations: Vec<Generation>,
}

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex {
            generations: vec![Generation::default()],
        }
    }
}

impl KeyIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// A key first seen while replaying compacted history: its record says
    /// when it was created and which version it is.
    pub fn restored(created: i64, modified: Revision, version: i64) -> Self {
        KeyIndex {
            generations: vec![Generation {
                created: Revision::new(created, 0),
                ver: version,
                revs: vec![modified],
            }],
        }
    }

    fn open_generation(&mut self) -> &mut Generation {
        if self.generations.is_empty() {
            self.generations.push(Generation::default());
        }
        let last = self.generations.len() - 1;
        &mut self.generations[last]
    }

    /// Just enough of this history to continue it: the open generation's
    /// created revision, version and last revision. Answers [`KeyIndex::get`]
    /// like the full history for every revision from the last one on, which
    /// is all a batch of new writes needs.
    pub fn tail(&self) -> KeyIndex {
        match self.generations.last() {
            Some(g) if !g.is_empty() => KeyIndex {
                generations: vec![Generation {
                    created: g.created,
                    ver: g.ver,
                    revs: g.revs.last().copied().into_iter().collect(),
                }],
            },
            _ => KeyIndex::default(),
        }
    }

    /// True when no revision of the key is left (the key can be forgotten).
    pub fn is_empty(&self) -> bool {
        self.generations.iter().all(Generation::is_empty)
    }

    /// True when the key currently exists (its open generation has a put).
    pub fn is_live(&self) -> bool {
        self.generations.last().is_some_and(|g| !g.is_empty())
    }

    /// The latest revision of the key, if any is left.
    pub fn last_revision(&self) -> Option<Revision> {
        self.generations
            .iter()
            .rev()
            .find_map(|g| g.revs.last().copied())
    }

    /// Records a put at `rev` (which must be newer than every recorded revision).
    pub fn put(&mut self, rev: Revision) {
        let g = self.open_generation();
        if g.revs.is_empty() {
            g.created = rev;
            // Most keys keep one revision: room for exactly one (16 B), not
            // the four a first push would allocate.
            g.revs.reserve_exact(1);
        }
        g.revs.push(rev);
        g.ver += 1;
    }

    /// Records a delete at `rev` and closes the generation. Returns false (and
    /// records nothing) when the key is not live: there is nothing to delete.
    pub fn tombstone(&mut self, rev: Revision) -> bool {
        if !self.is_live() {
            return false;
        }
        self.put(rev);
        self.generations.push(Generation::default());
        true
    }

    /// The state of the key at main revision `at`, or None if it did not exist then.
    pub fn get(&self, at: i64) -> Option<KeyAt> {
        let last = self.generations.len().checked_sub(1)?;
        for (i, g) in self.generations.iter().enumerate().rev() {
            let (Some(first), Some(tail)) = (g.revs.first(), g.revs.last()) else {
                continue;
            };
            if i != last && tail.main <= at {
                // The newest generation begun by `at` was already closed by then.
                return None;
            }
            if first.main <= at {
                let n = g.revs.iter().rposition(|r| r.main <= at)?;
                return Some(KeyAt {
                    modified: g.revs[n],
                    created: g.created,
                    version: g.ver - (g.revs.len() - 1 - n) as i64,
                });
            }
        }
        None
    }

    /// Every revision still recorded, with whether it is a tombstone.
    pub fn revisions(&self) -> impl Iterator<Item = (Revision, bool)> + '_ {
        let last = self.generations.len().saturating_sub(1);
        self.generations.iter().enumerate().flat_map(move |(i, g)| {
            let n = g.revs.len();
            g.revs
                .iter()
                .enumerate()
                .map(move |(j, r)| (*r, i != last && j + 1 == n))
        })
    }

    /// [`KeyIndex::get`] as the index pruned at `compact` (by
    /// [`KeyIndex::compact`]) answers it, whether or not it has been pruned
    /// yet: for `at >= compact` pruning changes nothing; below it, only the
    /// revision live at `compact` is left, so that is the only answer (the
    /// background compactor prunes the index some time after a compaction
    /// is applied, and a revision it would prune may already be gone from
    /// the backend).
    pub fn get_compacted(&self, at: i64, compact: i64) -> Option<KeyAt> {
        let got = self.get(at)?;
        if at >= compact {
            return Some(got);
        }
        let kept = self.get(compact)?;
        (kept.modified == got.modified).then_some(got)
    }

    /// The revisions compaction at `at` removes: every revision with main <= at
    /// except the one the key had at `at` (if it was live then). So tombstones
    /// <= at go, and with them whole generations that ended by `at`.
    pub fn compaction_removals(&self, at: i64) -> Vec<(Revision, bool)> {
        let kept = self.get(at).map(|k| k.modified);
        self.revisions()
            .filter(|(r, _)| r.main <= at && Some(*r) != kept)
            .collect()
    }

    /// Applies compaction at `at` (see [`KeyIndex::compaction_removals`]) and
    /// returns what it removed.
    pub fn compact(&mut self, at: i64) -> Vec<(Revision, bool)> {
        let removed = self.compaction_removals(at);
        if removed.is_empty() {
            return removed;
        }
        let kept = self.get(at).map(|k| k.modified);
        for g in &mut self.generations {
            g.revs.retain(|r| r.main > at || Some(*r) == kept);
        }
        let last = self.generations.len().saturating_sub(1);
        let mut i = 0;
        self.generations.retain(|g| {
            let keep = !g.is_empty() || i == last;
            i += 1;
            keep
        });
        removed
    }
}

/// A key range as a pair of BTreeMap bounds.
pub type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// Which keys a request addresses, decoded from etcd's `key`/`range_end` pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyRange {
    /// `range_end` empty: just `key`.
    Single(Vec<u8>),
    /// `range_end` = "\0": every key >= `key` (with `key` = "\0": all keys).
    FromKey(Vec<u8>),
    /// `[key, range_end)`; empty when `range_end <= key`.
    Between(Vec<u8>, Vec<u8>),
}

impl KeyRange {
    pub fn new(key: &[u8], range_end: &[u8]) -> Self {
        match range_end {
            [] => KeyRange::Single(key.to_vec()),
            [0] => KeyRange::FromKey(key.to_vec()),
            end => KeyRange::Between(key.to_vec(), end.to_vec()),
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeyRange::Single(key) => k == key.as_slice(),
            KeyRange::FromKey(key) => k >= key.as_slice(),
            KeyRange::Between(key, end) => k >= key.as_slice() && k < end.as_slice(),
        }
    }

    /// The range as BTreeMap bounds, or None when it is empty (BTreeMap::range
    /// panics on an inverted range, and clients can send one).
    pub fn bounds(&self) -> Option<KeyBounds<'_>> {
        match self {
            KeyRange::Single(key) => Some((Bound::Included(key), Bound::Included(key))),
            KeyRange::FromKey(key) => Some((Bound::Included(key), Bound::Unbounded)),
            KeyRange::Between(key, end) if key < end => {
                Some((Bound::Included(key), Bound::Excluded(end)))
            }
            KeyRange::Between(..) => None,
        }
    }
}

/// All keys' histories, ordered by key.
#[derive(Debug, Default, Clone)]
pub struct IndexTree {
    /// Key -> history; a key is dropped once compaction leaves it no revision.
    keys: BTreeMap<Vec<u8>, KeyIndex>,
}

impl IndexTree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &[u8]) -> Option<&KeyIndex> {
        self.keys.get(key)
    }

    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut KeyIndex> {
        self.keys.get_mut(key)
    }

    pub fn insert(&mut self, key: Vec<u8>, ki: KeyIndex) {
        self.keys.insert(key, ki);
    }

    /// The slot of `key` (one search), for a caller that owns the key.
    pub fn slot(
        &mut self,
        key: Vec<u8>,
    ) -> std::collections::btree_map::Entry<'_, Vec<u8>, KeyIndex> {
        self.keys.entry(key)
    }

    pub fn entry(&mut self, key: &[u8]) -> &mut KeyIndex {
        self.keys.entry(key.to_vec()).or_default()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key histories in `range`, in key order.
    pub fn range<'a>(
        &'a self,
        range: &KeyRange,
    ) -> Box<dyn Iterator<Item = (&'a Vec<u8>, &'a KeyIndex)> + 'a> {
        match range.bounds() {
            Some(b) => Box::new(self.keys.range::<[u8], _>(b)),
            None => Box::new(std::iter::empty()),
        }
    }

    /// The key histories in `range` after key `after` (all of them for
    /// None), in key order: lets a long walk resume where it stopped after
    /// letting go of the lock.
    pub fn range_after<'a>(
        &'a self,
        range: &KeyRange,
        after: Option<&[u8]>,
    ) -> Box<dyn Iterator<Item = (&'a Vec<u8>, &'a KeyIndex)> + 'a> {
        let Some((start, end)) = range.bounds() else {
            return Box::new(std::iter::empty());
        };
        let start = match after {
            // `after` came from this range, so it is at or past its start.
            Some(a) => Bound::Excluded(a),
            None => start,
        };
        if let (Bound::Excluded(a), Bound::Excluded(e) | Bound::Included(e)) = (start, end) {
            // Nothing after the range's last key (and BTreeMap::range panics
            // on an empty excluded range).
            if a >= e {
                return Box::new(std::iter::empty());
            }
        }
        Box::new(self.keys.range::<[u8], _>((start, end)))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &KeyIndex)> {
        self.keys.iter()
    }

    /// Compacts every key at `at`, forgets keys left without revisions, and
    /// returns every removed revision (with its tombstone flag).
    pub fn compact(&mut self, at: i64) -> Vec<(Revision, bool)> {
        let mut removed = Vec::new();
        self.keys.retain(|_, ki| {
            removed.extend(ki.compact(at));
            !ki.is_empty()
        });
        removed.sort();
        removed
    }

    /// Compacts at `at` the next `max` keys after `after` (from the first
    /// key for None), forgetting keys left without revisions. Returns the
    /// last key visited when there may be more to do, None when the end of
    /// the index was reached: the background compactor prunes the index in
    /// such bounded steps, each under the write lock.
    pub fn compact_some(&mut self, at: i64, after: Option<&[u8]>, max: usize) -> Option<Vec<u8>> {
        let start = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        let mut emptied = Vec::new();
        let mut more = false;
        let mut last = None;
        for (n, (k, ki)) in self
            .keys
            .range_mut::<[u8], _>((start, Bound::Unbounded))
            .enumerate()
        {
            if n == max {
                more = true;
                break;
            }
            ki.compact(at);
            if ki.is_empty() {
                emptied.push(k.clone());
            }
            last = Some(k);
        }
        let next = if more { last.cloned() } else { None };
        for k in emptied {
            self.keys.remove(&k);
        }
        next
    }

    /// The revision each key live at `at` had then: what compaction at `at`
    /// keeps below `at` (etcd's `keep`, used by HashKV).
    pub fn keep(&self, at: i64) -> std::collections::HashSet<Revision> {
        self.keys
            .values()
            .filter_map(|ki| ki.get(at).map(|k| k.modified))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    /// put@2, put@3, delete@4, put@6, put@8 (the module doc's example, extended).
    fn sample() -> KeyIndex {
        let mut ki = KeyIndex::new();
        ki.put(r(2));
        ki.put(r(3));
        assert!(ki.tombstone(r(4)));
        ki.put(r(6));
        ki.put(r(8));
        ki
    }

    #[test]
    fn get_at_revision() {
        struct Case {
            at: i64,
            want: Option<(i64, i64, i64)>, // (modified, created, version)
        }
        let cases = [
            Case { at: 1, want: None },
            Case {
                at: 2,
                want: Some((2, 2, 1)),
            },
            Case {
                at: 3,
                want: Some((3, 2, 2)),
            },
            Case { at: 4, want: None },
            Case { at: 5, want: None },
            Case {
                at: 6,
                want: Some((6, 6, 1)),
            },
            Case {
                at: 7,
                want: Some((6, 6, 1)),
            },
            Case {
                at: 8,
                want: Some((8, 6, 2)),
            },
            Case {
                at: 100,
                want: Some((8, 6, 2)),
            },
        ];
        let ki = sample();
        for c in cases {
            let got = ki
                .get(c.at)
                .map(|k| (k.modified.main, k.created.main, k.version));
            assert_eq!(got, c.want, "at {}", c.at);
        }
    }

    #[test]
    fn tail_continues_like_the_full_history() {
        let mut full = sample();
        let mut tail = full.tail();
        assert_eq!(tail.revisions().count(), 1);
        full.put(r(9));
        tail.put(r(9));
        assert!(full.tombstone(r(10)));
        assert!(tail.tombstone(r(10)));
        full.put(r(11));
        tail.put(r(11));
        for at in 8..13 {
            assert_eq!(full.get(at), tail.get(at), "at {at}");
        }
        // A deleted key's tail is empty: the next put starts afresh.
        let mut dead = KeyIndex::new();
        dead.put(r(2));
        assert!(dead.tombstone(r(3)));
        assert!(dead.tail().is_empty());
    }

    #[test]
    fn tombstone_on_dead_key_is_refused() {
        let mut ki = KeyIndex::new();
        assert!(!ki.tombstone(r(2)));
        ki.put(r(3));
        assert!(ki.tombstone(r(4)));
        assert!(!ki.tombstone(r(5)));
        assert!(!ki.is_live());
        assert_eq!(ki.last_revision(), Some(r(4)));
    }

    #[test]
    fn same_main_revision_delete_then_put() {
        // A txn may delete a key (range delete) and then put it again.
        let mut ki = KeyIndex::new();
        ki.put(r(2));
        assert!(ki.tombstone(Revision::new(5, 0)));
        ki.put(Revision::new(5, 1));
        let k = ki.get(5).expect("live at 5");
        assert_eq!(
            (k.modified, k.created, k.version),
            (Revision::new(5, 1), Revision::new(5, 1), 1)
        );
        assert_eq!(ki.get(4).map(|k| k.modified), Some(r(2)));
    }

    #[test]
    fn compaction_keeps_latest_live_revision() {
        struct Case {
            at: i64,
            removed: Vec<(i64, bool)>,
            left: Vec<(i64, bool)>,
        }
        let cases = [
            Case {
                at: 1,
                removed: vec![],
                left: vec![(2, false), (3, false), (4, true), (6, false), (8, false)],
            },
            Case {
                at: 2,
                removed: vec![],
                left: vec![(2, false), (3, false), (4, true), (6, false), (8, false)],
            },
            Case {
                at: 3,
                removed: vec![(2, false)],
                left: vec![(3, false), (4, true), (6, false), (8, false)],
            },
            Case {
                at: 4,
                removed: vec![(2, false), (3, false), (4, true)],
                left: vec![(6, false), (8, false)],
            },
            Case {
                at: 7,
                removed: vec![(2, false), (3, false), (4, true)],
                left: vec![(6, false), (8, false)],
            },
            Case {
                at: 8,
                removed: vec![(2, false), (3, false), (4, true), (6, false)],
                left: vec![(8, false)],
            },
        ];
        for c in cases {
            let mut ki = sample();
            let before: Vec<_> = (0..10).map(|at| ki.get(at)).collect();
            let removed: Vec<_> = ki.compact(c.at).iter().map(|(r, t)| (r.main, *t)).collect();
            assert_eq!(removed, c.removed, "removed at {}", c.at);
            let left: Vec<_> = ki.revisions().map(|(r, t)| (r.main, t)).collect();
            assert_eq!(left, c.left, "left at {}", c.at);
            // Reads at or above the compaction point are unchanged.
            for at in c.at..10 {
                assert_eq!(
                    ki.get(at),
                    before[at as usize],
                    "get({at}) after compact({})",
                    c.at
                );
            }
        }
    }

    #[test]
    fn compaction_of_deleted_key_empties_it() {
        let mut ki = KeyIndex::new();
        ki.put(r(2));
        assert!(ki.tombstone(r(3)));
        assert_eq!(ki.compact(2), vec![]);
        assert!(!ki.is_empty());
        assert_eq!(ki.compact(3), vec![(r(2), false), (r(3), true)]);
        assert!(ki.is_empty());
    }

    #[test]
    fn restored_index_matches_live_one() {
        // A key whose history was compacted to revision 3 is restored from its
        // surviving records (3 with version 2, then 6) and must read the same.
        let mut live = KeyIndex::new();
        live.put(r(2));
        live.put(r(3));
        live.put(r(6));
        live.compact(4);
        let mut restored = KeyIndex::restored(2, r(3), 2);
        restored.put(r(6));
        for at in 4..8 {
            assert_eq!(live.get(at), restored.get(at), "at {at}");
        }
    }

    #[test]
    fn key_ranges() {
        struct Case {
            key: &'static [u8],
            end: &'static [u8],
            want: Vec<&'static [u8]>,
        }
        let mut tree = IndexTree::new();
        for (i, k) in [&b"a"[..], b"ab", b"b", b"c", b"\x00"].iter().enumerate() {
            tree.entry(k).put(r(i as i64 + 2));
        }
        let cases = [
            Case {
                key: b"a",
                end: b"",
                want: vec![b"a"],
            },
            Case {
                key: b"zz",
                end: b"",
                want: vec![],
            },
            Case {
                key: b"a",
                end: b"b",
                want: vec![b"a", b"ab"],
            },
            Case {
                key: b"a",
                end: b"\x00",
                want: vec![b"a", b"ab", b"b", b"c"],
            },
            Case {
                key: b"\x00",
                end: b"\x00",
                want: vec![b"\x00", b"a", b"ab", b"b", b"c"],
            },
            // Inverted and empty ranges select nothing (and must not panic).
            Case {
                key: b"c",
                end: b"a",
                want: vec![],
            },
            Case {
                key: b"b",
                end: b"b",
                want: vec![],
            },
        ];
        for c in cases {
            let range = KeyRange::new(c.key, c.end);
            let got: Vec<&[u8]> = tree.range(&range).map(|(k, _)| k.as_slice()).collect();
            assert_eq!(got, c.want, "key {:?} end {:?}", c.key, c.end);
            for k in [&b"a"[..], b"ab", b"b", b"c", b"\x00"] {
                assert_eq!(range.contains(k), c.want.contains(&k), "contains {k:?}");
            }
        }
    }

    #[test]
    fn get_compacted_answers_as_the_pruned_index() {
        for compact in 1..10 {
            let mut pruned = sample();
            pruned.compact(compact);
            for at in (compact - 1)..10 {
                assert_eq!(
                    sample().get_compacted(at, compact),
                    pruned.get(at),
                    "get({at}) after compact({compact})"
                );
            }
        }
    }

    #[test]
    fn compaction_in_steps_equals_compaction_at_once() {
        let build = || {
            let mut tree = IndexTree::new();
            for i in 0..10u8 {
                let k = [b'k', i];
                tree.entry(&k).put(r(2));
                tree.entry(&k).put(r(3 + i64::from(i % 3)));
                if i % 2 == 0 {
                    assert!(tree.entry(&k).tombstone(r(6)));
                }
            }
            tree
        };
        let mut whole = build();
        whole.compact(6);
        let mut steps = build();
        let mut after = None;
        let mut n = 0;
        while let Some(last) = steps.compact_some(6, after.as_deref(), 3) {
            after = Some(last);
            n += 1;
        }
        assert_eq!(n, 3, "10 keys in steps of 3");
        let keys = |t: &IndexTree| {
            t.iter()
                .map(|(k, ki)| (k.clone(), ki.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&steps), keys(&whole));
        assert_eq!(steps.len(), 5);
    }

    #[test]
    fn range_after_resumes_a_walk() {
        let mut tree = IndexTree::new();
        for k in [&b"a"[..], b"b", b"c", b"d"] {
            tree.entry(k).put(r(2));
        }
        let names = |it: Box<dyn Iterator<Item = (&Vec<u8>, &KeyIndex)> + '_>| {
            it.map(|(k, _)| k.clone()).collect::<Vec<_>>()
        };
        let between = KeyRange::new(b"a", b"d");
        assert_eq!(
            names(tree.range_after(&between, Some(b"a"))),
            vec![b"b".to_vec(), b"c".to_vec()]
        );
        assert!(names(tree.range_after(&between, Some(b"c"))).is_empty());
        let from = KeyRange::new(b"b", b"\0");
        assert_eq!(
            names(tree.range_after(&from, Some(b"c"))),
            vec![b"d".to_vec()]
        );
        let single = KeyRange::new(b"b", b"");
        assert!(names(tree.range_after(&single, Some(b"b"))).is_empty());
        assert_eq!(names(tree.range_after(&single, None)), vec![b"b".to_vec()]);
    }

    #[test]
    fn tree_compaction_forgets_dead_keys_and_keep_matches() {
        let mut tree = IndexTree::new();
        tree.entry(b"live").put(r(2));
        tree.entry(b"live").put(r(4));
        tree.entry(b"dead").put(r(3));
        assert!(tree.entry(b"dead").tombstone(r(5)));
        let keep = tree.keep(5);
        assert_eq!(keep, [r(4)].into_iter().collect());
        let removed = tree.compact(5);
        assert_eq!(removed, vec![(r(2), false), (r(3), false), (r(5), true)]);
        assert_eq!(tree.len(), 1);
        assert!(tree.get(b"dead").is_none());
    }
}
