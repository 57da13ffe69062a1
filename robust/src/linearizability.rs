//! Linearizability of a KV history against a model of etcd's store.
//!
//! The search is Wing & Gong's, with Lowe's memoisation, as porcupine runs
//! it: walk the invocations and completions in time order; take an invoked
//! operation as the next one to happen if the model accepts its response from
//! the current state; backtrack when a completion arrives for an operation
//! not taken yet; never explore the same (set of operations taken, state)
//! twice.
//!
//! ```text
//!  history ──prepare──▶ steps: Known (acknowledged), Pinned (indeterminate write a read or a
//!                        │     watch saw: must happen, at that revision), Free (indeterminate
//!                        │     write nobody saw: may happen at any time after invocation, or never),
//!                        │     failed reads dropped (they change nothing)
//!                        ▼
//!  WGL search over (bitset of steps taken, EtcdState{revision, keys}) ──▶ Linearizable | Violation | Undecided
//! ```
//!
//! **Why it is fast.** etcd's responses carry revisions, and every write
//! that changes the store moves the revision by exactly one. The model keeps
//! the revision in its state and accepts a response only at the revision it
//! names (a put answered with revision 57 can only be the write that makes
//! revision 57; a get answered at revision 57 only happens while the store
//! is at 57), so among concurrent operations almost every order but the real
//! one is refused at its first step. Indeterminate writes would still
//! branch, so they are bounded the way etcd's robustness model does it: one
//! that any read or watch event saw is pinned to the revision it was seen
//! at; one nobody saw may only fill a revision that no known write claims,
//! and only with the event a watch saw there, if any.
//!
//! **Partitioning.** Linearizability is local (Herlihy & Wing): a history of
//! independent objects is linearizable iff each object's sub-history is. The
//! revision couples etcd's keys (a get's header revision orders it against
//! writes to every other key), so the full model is checked as one
//! partition; [`check_per_key`] checks the per-key projection (each key a
//! register with its own versions, revisions only compared within the key),
//! which is valid to partition and finds lost and stale values key by key.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::history::{Compare, Event, History, KeyValue, Operation, Outcome, Request, Response};

/// The search gives up (and says so) after this many moves (steps the
/// model accepted, each taken or found already explored).
pub const DEFAULT_STEP_BUDGET: u64 = 20_000_000;

/// A sequential specification: a state and a step that says whether an
/// operation, with the outcome recorded for it, can happen from a state.
pub trait Model {
    type State: Clone + Eq + Hash + std::fmt::Debug;
    fn init(&self) -> Self::State;
    /// The state after step `i` happens from `state` with its recorded
    /// outcome, or None if it cannot.
    fn step(&self, state: &Self::State, i: usize) -> Option<Self::State>;
}

/// One operation as the search sees it.
#[derive(Clone, Debug)]
pub struct Call {
    pub invoked: u64,
    /// `u64::MAX` for an operation that may happen at any time later.
    pub completed: u64,
    /// Whether the operation must happen (acknowledged, or pinned).
    pub required: bool,
}

/// The search's verdict.
#[derive(Debug)]
pub enum Search<S> {
    /// The steps in one order the model accepts (optional ones that were
    /// not needed left out).
    Linearizable(Vec<usize>),
    /// No order works. At the deepest point the search reached, `stuck` had
    /// to happen next (its completion came) and could not; `taken` are the
    /// last steps taken before it, `state` the model's state there.
    Violation {
        stuck: usize,
        taken: Vec<usize>,
        state: S,
        depth: usize,
    },
    /// The step budget ran out first.
    Undecided { steps: u64 },
}

const NIL: usize = usize::MAX;

/// Wing & Gong's search with Lowe's cache (porcupine's `checkSingle`).
pub fn search<M: Model>(model: &M, calls: &[Call], budget: u64) -> Search<M::State> {
    // Nodes: 0 is the head; then a call node and a return node per step.
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(calls.len() * 2);
    for (i, c) in calls.iter().enumerate() {
        events.push((c.invoked, 0, i));
        events.push((c.completed, 1, i));
    }
    // At equal times calls sort first: such operations count as concurrent.
    events.sort();
    let n = events.len() + 1;
    let mut next = vec![NIL; n];
    let mut prev = vec![NIL; n];
    let mut is_call = vec![false; n];
    let mut op = vec![0usize; n];
    let mut partner = vec![NIL; n];
    let mut call_node = vec![NIL; calls.len()];
    for (k, &(_, kind, i)) in events.iter().enumerate() {
        let node = k + 1;
        prev[node] = k;
        next[k] = node;
        is_call[node] = kind == 0;
        op[node] = i;
        if kind == 0 {
            call_node[i] = node;
        } else {
            partner[call_node[i]] = node;
            partner[node] = call_node[i];
        }
    }

    let mut required_left = calls.iter().filter(|c| c.required).count();
    let words = calls.len().div_ceil(64);
    let mut taken_bits = vec![0u64; words];
    let mut state = model.init();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut cache: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut steps = 0u64;
    let mut deepest: Option<(usize, usize, Vec<usize>, M::State)> = None;
    let mut entry = next[0];
    loop {
        if required_left == 0 {
            return Search::Linearizable(stack.iter().map(|(node, _)| op[*node]).collect());
        }
        let backtrack = entry == NIL || (!is_call[entry] && calls[op[entry]].required);
        if backtrack {
            if entry != NIL && deepest.as_ref().is_none_or(|d| stack.len() > d.0) {
                let tail = stack.len().saturating_sub(8);
                deepest = Some((
                    stack.len(),
                    op[entry],
                    stack[tail..].iter().map(|(node, _)| op[*node]).collect(),
                    state.clone(),
                ));
            }
            let Some((node, before)) = stack.pop() else {
                return match deepest {
                    Some((depth, stuck, taken, state)) => Search::Violation {
                        stuck,
                        taken,
                        state,
                        depth,
                    },
                    // Unreachable with a required step left (its return
                    // node is in the list), but never claim success.
                    None => Search::Undecided { steps },
                };
            };
            let i = op[node];
            state = before;
            taken_bits[i / 64] &= !(1 << (i % 64));
            if calls[i].required {
                required_left += 1;
            }
            // Put the call and its return back into the list.
            let ret = partner[node];
            next[prev[ret]] = ret;
            if next[ret] != NIL {
                prev[next[ret]] = ret;
            }
            next[prev[node]] = node;
            prev[next[node]] = node;
            entry = next[node];
            continue;
        }
        if !is_call[entry] {
            // An optional step's completion: it may never happen.
            entry = next[entry];
            continue;
        }
        let i = op[entry];
        if let Some(after) = model.step(&state, i) {
            // Only moves count: refused candidates cost one cheap check
            // each, at most one per list entry per move.
            steps += 1;
            if steps > budget {
                return Search::Undecided { steps };
            }
            taken_bits[i / 64] |= 1 << (i % 64);
            if cache.insert((taken_bits.clone(), after.clone())) {
                stack.push((entry, std::mem::replace(&mut state, after)));
                if calls[i].required {
                    required_left -= 1;
                }
                // Lift the call and its return out of the list.
                let ret = partner[entry];
                next[prev[entry]] = next[entry];
                prev[next[entry]] = prev[entry];
                next[prev[ret]] = next[ret];
                if next[ret] != NIL {
                    prev[next[ret]] = prev[ret];
                }
                entry = next[0];
                continue;
            }
            taken_bits[i / 64] &= !(1 << (i % 64));
        }
        entry = next[entry];
    }
}

/// The model's view of etcd's store: its revision, the keys it holds and
/// its leases.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct EtcdState {
    pub revision: i64,
    pub keys: BTreeMap<String, KeyValue>,
    /// The leases alive (granted, not yet revoked or expired). The traffic
    /// never grants an ID twice, so a lease that ended is simply gone: the
    /// state stays as small as the set of live leases.
    pub leases: BTreeSet<i64>,
    /// The lease each key is attached to (keys put without one are not
    /// here).
    pub attached: BTreeMap<String, i64>,
}

/// What the search knows of a step's outcome.
#[derive(Clone, Debug)]
enum Known {
    /// Acknowledged with this response.
    Response(Response),
    /// Indeterminate write of a value seen at this revision: it happened
    /// there.
    Pinned(i64),
    /// Indeterminate write nobody saw.
    Free,
}

/// etcd's KV semantics over the prepared steps of one history.
pub struct EtcdModel {
    initial: EtcdState,
    steps: Vec<(Request, Known)>,
    /// Revisions made by known writes: a free write cannot make them.
    claimed: HashSet<i64>,
    /// The highest revision anything in the history shows. A free write
    /// past it is one nobody could observe: the same as one that never
    /// happened, so the search need not try it.
    horizon: i64,
    /// The revisions a free write may make: up to the horizon, not claimed.
    open: BTreeSet<i64>,
    /// The event watches saw at each revision (first one wins; the watch
    /// checker reports disagreements).
    seen: HashMap<i64, Event>,
    /// Leases a keep-alive found gone: an indeterminate revoke or an
    /// expiry of one may end it without deleting anything. Any other may
    /// only happen as a change nobody could miss (deleting keys at a
    /// revision a watch saw), or the search could try it at every step.
    quiet: HashSet<i64>,
}

/// Applies a put to `state`; the new revision.
fn put(state: &mut EtcdState, key: &str, value: &str) -> i64 {
    put_at(state, key, value, state.revision + 1)
}

/// Applies a put to `state` at `revision` (the store's next, or its
/// current one for the second put of a txn); `revision`.
fn put_at(state: &mut EtcdState, key: &str, value: &str, revision: i64) -> i64 {
    let kv = match state.keys.get(key) {
        Some(old) => KeyValue {
            value: value.to_string(),
            create_revision: old.create_revision,
            mod_revision: revision,
            version: old.version + 1,
        },
        None => KeyValue {
            value: value.to_string(),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
        },
    };
    state.keys.insert(key.to_string(), kv);
    state.attached.remove(key);
    state.revision = revision;
    revision
}

/// Ends lease `id` if it lives: deletes its keys, at one new revision if it
/// had any. The keys deleted, or None if the lease was not alive.
fn end_lease(state: &mut EtcdState, id: i64) -> Option<Vec<String>> {
    if !state.leases.remove(&id) {
        return None;
    }
    let keys: Vec<String> = state
        .attached
        .iter()
        .filter(|(_, l)| **l == id)
        .map(|(k, _)| k.clone())
        .collect();
    for k in &keys {
        state.attached.remove(k);
        state.keys.remove(k);
    }
    if !keys.is_empty() {
        state.revision += 1;
    }
    Some(keys)
}

fn compare_holds(state: &EtcdState, key: &str, compare: &Compare) -> bool {
    let kv = state.keys.get(key);
    match compare {
        Compare::ModRevision(n) => kv.map_or(0, |kv| kv.mod_revision) == *n,
        Compare::Value(v) => kv.is_some_and(|kv| kv.value == *v),
    }
}

impl EtcdModel {
    /// Whether an indeterminate revoke (or an expiry) that deleted `keys`
    /// may have made `revision`: as a free write, with the event a watch
    /// saw there, if any, one of those deletes.
    fn free_deletes_fit(&self, revision: i64, keys: &[String]) -> bool {
        if revision > self.horizon || self.claimed.contains(&revision) {
            return false;
        }
        self.seen
            .get(&revision)
            .is_none_or(|e| e.value.is_none() && keys.contains(&e.key))
    }

    /// The lease requests, which may leave the revision alone.
    fn apply_lease(
        &self,
        state: &EtcdState,
        request: &Request,
        known: &Known,
    ) -> Option<EtcdState> {
        let mut s = state.clone();
        match (request, known) {
            (
                Request::LeaseGrant { id, .. },
                Known::Response(Response::LeaseGrant { revision, .. }),
            ) => (*revision == s.revision && s.leases.insert(*id)).then_some(s),
            (Request::LeaseGrant { id, .. }, Known::Free) => s.leases.insert(*id).then_some(s),
            (Request::LeaseKeepAlive { id }, Known::Response(Response::LeaseKeepAlive { ttl })) => {
                (s.leases.contains(id) == (*ttl > 0)).then_some(s)
            }
            (Request::LeaseRevoke { id }, Known::Response(Response::LeaseRevoke { revision })) => {
                end_lease(&mut s, *id)?;
                (*revision == s.revision).then_some(s)
            }
            (Request::LeaseRevoke { id } | Request::LeaseExpire { id }, Known::Free) => {
                let keys = end_lease(&mut s, *id)?;
                let fits = if keys.is_empty() {
                    self.quiet.contains(id)
                } else {
                    self.free_deletes_fit(s.revision, &keys)
                };
                fits.then_some(s)
            }
            _ => None,
        }
    }

    /// Whether a free write may make `event` at its revision.
    fn free_write_fits(&self, event: &Event) -> bool {
        self.free_writes_fit(std::slice::from_ref(event))
    }

    /// Whether a free write may make `events` (all at one revision): the
    /// event a watch saw there, if any, is one of them.
    fn free_writes_fit(&self, events: &[Event]) -> bool {
        let Some(revision) = events.first().map(|e| e.revision) else {
            return false;
        };
        if revision > self.horizon || self.claimed.contains(&revision) {
            return false;
        }
        self.seen
            .get(&revision)
            .is_none_or(|seen| events.contains(seen))
    }

    /// A cheap test, before any state is copied: can the step's revision
    /// fit at all? (Most candidates of the search fail here.)
    fn may_fit(&self, state: &EtcdState, known: &Known) -> bool {
        let next = state.revision + 1;
        match known {
            Known::Response(
                Response::Get { revision, .. }
                | Response::List { revision, .. }
                | Response::Delete {
                    revision,
                    deleted: 0,
                }
                | Response::Txn {
                    revision,
                    succeeded: false,
                    ..
                },
            ) => *revision == state.revision,
            Known::Response(
                Response::Put { revision }
                | Response::Delete { revision, .. }
                | Response::Txn { revision, .. },
            )
            | Known::Pinned(revision) => *revision == next,
            // Lease requests are judged by `apply_lease`.
            Known::Response(_) => false,
            Known::Free => next <= self.horizon && !self.claimed.contains(&next),
        }
    }

    /// The state after `request` with what is known of its outcome.
    fn apply(&self, state: &EtcdState, request: &Request, known: &Known) -> Option<EtcdState> {
        if matches!(
            request,
            Request::LeaseGrant { .. }
                | Request::LeaseKeepAlive { .. }
                | Request::LeaseRevoke { .. }
                | Request::LeaseExpire { .. }
        ) {
            return self.apply_lease(state, request, known);
        }
        if !self.may_fit(state, known) {
            return None;
        }
        let mut s = state.clone();
        match (request, known) {
            (Request::Get { key }, Known::Response(Response::Get { revision, kv })) => {
                (*revision == s.revision && s.keys.get(key) == kv.as_ref()).then_some(s)
            }
            (
                Request::List { key, range_end },
                Known::Response(Response::List { revision, kvs }),
            ) => {
                let range = s.keys.range::<str, _>((
                    std::ops::Bound::Included(key.as_str()),
                    std::ops::Bound::Excluded(range_end.as_str()),
                ));
                (*revision == s.revision && range.eq(kvs.iter().map(|(k, v)| (k, v)))).then_some(s)
            }
            (Request::LeasePut { key, value, lease }, known) => {
                if !s.leases.contains(lease) {
                    return None;
                }
                let revision = put(&mut s, key, value);
                s.attached.insert(key.clone(), *lease);
                let fits = match known {
                    Known::Response(Response::Put { revision: r }) | Known::Pinned(r) => {
                        *r == revision
                    }
                    Known::Free => self.free_write_fits(&Event {
                        revision,
                        key: key.clone(),
                        value: Some(value.clone()),
                    }),
                    Known::Response(_) => false,
                };
                fits.then_some(s)
            }
            (Request::Put { key, value }, known) => {
                let revision = put(&mut s, key, value);
                let fits = match known {
                    Known::Response(Response::Put { revision: r }) | Known::Pinned(r) => {
                        *r == revision
                    }
                    Known::Free => self.free_write_fits(&Event {
                        revision,
                        key: key.clone(),
                        value: Some(value.clone()),
                    }),
                    Known::Response(_) => false,
                };
                fits.then_some(s)
            }
            (Request::Delete { key }, known) => {
                let existed = s.keys.remove(key).is_some();
                s.attached.remove(key);
                if existed {
                    s.revision += 1;
                }
                let fits = match known {
                    Known::Response(Response::Delete { revision, deleted }) => {
                        *revision == s.revision && *deleted == i64::from(existed)
                    }
                    // A free delete of a missing key changes nothing: leaving
                    // it out is the same, and spares the search a branch.
                    Known::Free => {
                        existed
                            && self.free_write_fits(&Event {
                                revision: s.revision,
                                key: key.clone(),
                                value: None,
                            })
                    }
                    _ => false,
                };
                fits.then_some(s)
            }
            (
                Request::Txn {
                    key,
                    compare,
                    value,
                },
                known,
            ) => {
                let holds = compare_holds(&s, key, compare);
                match known {
                    Known::Response(Response::Txn {
                        revision,
                        succeeded,
                        kv,
                    }) => {
                        if *succeeded != holds {
                            return None;
                        }
                        if holds {
                            (put(&mut s, key, value) == *revision).then_some(s)
                        } else {
                            (*revision == s.revision && s.keys.get(key) == kv.as_ref()).then_some(s)
                        }
                    }
                    Known::Pinned(r) => (holds && put(&mut s, key, value) == *r).then_some(s),
                    // A free txn whose compare fails is a read: leave it out.
                    Known::Free => {
                        if !holds {
                            return None;
                        }
                        let revision = put(&mut s, key, value);
                        self.free_write_fits(&Event {
                            revision,
                            key: key.clone(),
                            value: Some(value.clone()),
                        })
                        .then_some(s)
                    }
                    Known::Response(_) => None,
                }
            }
            (
                Request::TxnPair {
                    key,
                    compare,
                    value,
                    also,
                    also_value,
                },
                known,
            ) => {
                let holds = compare_holds(&s, key, compare);
                // Both puts at one new revision.
                let both = |s: &mut EtcdState| {
                    let revision = put(s, key, value);
                    put_at(s, also, also_value, revision)
                };
                match known {
                    Known::Response(Response::Txn {
                        revision,
                        succeeded,
                        kv,
                    }) => {
                        if *succeeded != holds {
                            return None;
                        }
                        if holds {
                            (both(&mut s) == *revision).then_some(s)
                        } else {
                            (*revision == s.revision && s.keys.get(key) == kv.as_ref()).then_some(s)
                        }
                    }
                    Known::Pinned(r) => (holds && both(&mut s) == *r).then_some(s),
                    Known::Free => {
                        if !holds {
                            return None;
                        }
                        let revision = both(&mut s);
                        let event = |k: &String, v: &String| Event {
                            revision,
                            key: k.clone(),
                            value: Some(v.clone()),
                        };
                        self.free_writes_fit(&[event(key, value), event(also, also_value)])
                            .then_some(s)
                    }
                    Known::Response(_) => None,
                }
            }
            _ => None,
        }
    }
}

impl Model for EtcdModel {
    type State = EtcdState;
    fn init(&self) -> EtcdState {
        self.initial.clone()
    }
    fn step(&self, state: &EtcdState, i: usize) -> Option<EtcdState> {
        let (request, known) = &self.steps[i];
        self.apply(state, request, known)
    }
}

/// Figures of one check, for reports.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Operations in the history.
    pub operations: usize,
    /// Steps searched: acknowledged + pinned + free.
    pub acknowledged: usize,
    pub pinned: usize,
    pub free: usize,
    /// Failed reads, left out.
    pub dropped_reads: usize,
    /// Free writes left out because no revision is open to them (the
    /// watches saw every revision they could have made): they never
    /// happened. Not counted in `free`.
    pub impossible: usize,
    pub elapsed: Duration,
}

/// The outcome of [`check`].
#[derive(Debug)]
pub struct Report {
    pub stats: Stats,
    /// None if linearizable; else what went wrong, readably.
    pub violation: Option<String>,
}

impl Report {
    pub fn is_linearizable(&self) -> bool {
        self.violation.is_none()
    }
}

/// The value → revision at which some read or watch saw it.
fn observed_values(history: &History) -> HashMap<&str, i64> {
    let mut seen = HashMap::new();
    for op in &history.operations {
        let kv = match &op.outcome {
            Outcome::Ok(Response::Get { kv: Some(kv), .. })
            | Outcome::Ok(Response::Txn { kv: Some(kv), .. }) => kv,
            Outcome::Ok(Response::List { kvs, .. }) => {
                for (_, kv) in kvs {
                    seen.insert(kv.value.as_str(), kv.mod_revision);
                }
                continue;
            }
            _ => continue,
        };
        seen.insert(kv.value.as_str(), kv.mod_revision);
    }
    for w in &history.watches {
        for r in &w.responses {
            for e in &r.events {
                if let Some(v) = &e.value {
                    seen.insert(v.as_str(), e.revision);
                }
            }
        }
    }
    seen
}

/// Turns a history into the search's steps and model.
fn prepare(history: &History) -> (EtcdModel, Vec<Call>, Vec<usize>, Stats) {
    let observed = observed_values(history);
    let mut stats = Stats {
        operations: history.operations.len(),
        ..Stats::default()
    };
    let mut steps = Vec::new();
    let mut calls = Vec::new();
    let mut origin = Vec::new();
    let mut claimed = HashSet::new();
    for (i, op) in history.operations.iter().enumerate() {
        let known = match (&op.request, &op.outcome) {
            (
                Request::Get { .. } | Request::List { .. } | Request::LeaseKeepAlive { .. },
                Outcome::Failed(_),
            ) => {
                stats.dropped_reads += 1;
                continue;
            }
            // An expiry known to have happened by `completed` (see
            // `with_lease_expiries`): required, at a revision unknown.
            (Request::LeaseExpire { .. }, Outcome::Ok(_)) => {
                stats.acknowledged += 1;
                Known::Free
            }
            (_, Outcome::Ok(resp)) => {
                match resp {
                    Response::Put { revision }
                    | Response::Delete {
                        revision,
                        deleted: 1..,
                    }
                    | Response::Txn {
                        revision,
                        succeeded: true,
                        ..
                    } => {
                        claimed.insert(*revision);
                    }
                    _ => {}
                }
                stats.acknowledged += 1;
                Known::Response(resp.clone())
            }
            (request, Outcome::Failed(_))
                if request.puts().iter().any(|(_, v)| observed.contains_key(v)) =>
            {
                let r = request
                    .puts()
                    .iter()
                    .find_map(|(_, v)| observed.get(v).copied())
                    .unwrap_or(0);
                claimed.insert(r);
                stats.pinned += 1;
                Known::Pinned(r)
            }
            (_, Outcome::Failed(_)) => {
                stats.free += 1;
                Known::Free
            }
        };
        let required = !matches!(known, Known::Free) || matches!(op.outcome, Outcome::Ok(_));
        calls.push(Call {
            invoked: op.invoked,
            completed: if matches!(op.outcome, Outcome::Ok(_)) {
                op.completed
            } else {
                u64::MAX
            },
            required,
        });
        steps.push((op.request.clone(), known));
        origin.push(i);
    }
    let mut seen = HashMap::new();
    for w in &history.watches {
        for r in &w.responses {
            for e in &r.events {
                seen.entry(e.revision).or_insert_with(|| e.clone());
            }
        }
    }
    let responses = history.operations.iter().filter_map(|o| match &o.outcome {
        Outcome::Ok(r) => r.revision(),
        Outcome::Failed(_) => None,
    });
    let horizon = responses
        .chain(seen.keys().copied())
        .chain(claimed.iter().copied())
        .max()
        .unwrap_or(history.initial_revision);
    let open: BTreeSet<i64> = (history.initial_revision + 1..=horizon)
        .filter(|r| !claimed.contains(r))
        .collect();
    // A free write no open revision can take never happened: leave it out,
    // or the search would try it again at every step.
    let unknown = open.iter().any(|r| !seen.contains_key(r));
    let deletable: HashSet<&str> = open
        .iter()
        .filter_map(|r| seen.get(r))
        .filter(|e| e.value.is_none())
        .map(|e| e.key.as_str())
        .collect();
    let placeable: Vec<bool> = steps
        .iter()
        .map(|step| match step {
            (_, Known::Response(_) | Known::Pinned(_)) => true,
            // They may leave the revision alone: always placeable.
            (
                Request::LeaseGrant { .. }
                | Request::LeaseRevoke { .. }
                | Request::LeaseExpire { .. },
                Known::Free,
            ) => true,
            (Request::Delete { key }, Known::Free) => unknown || deletable.contains(key.as_str()),
            (_, Known::Free) => unknown,
        })
        .collect();
    let impossible = placeable.iter().filter(|p| !**p).count();
    stats.free -= impossible;
    stats.impossible = impossible;
    let keep = |k: &usize| placeable[*k];
    let steps: Vec<_> = steps
        .into_iter()
        .enumerate()
        .filter(|(k, _)| keep(k))
        .map(|(_, s)| s)
        .collect();
    let calls: Vec<_> = calls
        .into_iter()
        .enumerate()
        .filter(|(k, _)| keep(k))
        .map(|(_, c)| c)
        .collect();
    let origin: Vec<_> = origin
        .into_iter()
        .enumerate()
        .filter(|(k, _)| keep(k))
        .map(|(_, o)| o)
        .collect();
    let quiet = history
        .operations
        .iter()
        .filter_map(|op| match (&op.request, &op.outcome) {
            (Request::LeaseKeepAlive { id }, Outcome::Ok(Response::LeaseKeepAlive { ttl })) => {
                (*ttl <= 0).then_some(*id)
            }
            _ => None,
        })
        .collect();
    let model = EtcdModel {
        quiet,
        horizon,
        open,
        initial: EtcdState {
            revision: history.initial_revision,
            keys: history.initial.clone(),
            ..EtcdState::default()
        },
        steps,
        claimed,
        seen,
    };
    (model, calls, origin, stats)
}

/// What the history shows of one lease.
#[derive(Default)]
struct LeaseFacts {
    /// The earliest moment it may expire.
    earliest: u64,
    granted_ok: bool,
    /// Some acknowledged request used it (so a failed grant did happen).
    used: bool,
    revoked_ok: bool,
    revoke_failed: bool,
    /// The first completion of a keep-alive that found it gone.
    gone_by: Option<u64>,
    keys: HashSet<String>,
}

/// `history` prepared for the lease model. Expiries are not client
/// operations, so this adds one [`Request::LeaseExpire`] per lease that
/// shows signs of ending without an acknowledged revoke, invoked at the
/// earliest moment the lease may expire: the latest of (grant or
/// acknowledged keep-alive invocation + the TTL it set). The server sets a
/// lease's expiry when it handles the grant or keep-alive, after its
/// invocation, and a new leader only extends it; so an expiry before that
/// moment is etcd's "lease expired early" bug, and the model refuses it.
///
/// An expiry that could happen at any time and change nothing would let
/// the search try it at every step (exponentially many orders); so:
/// * a lease a keep-alive found gone must have ended by that keep-alive's
///   completion: its expiry is required there (recorded as
///   `Outcome::Ok`), unless a failed revoke may have ended it instead;
/// * a lease one of whose keys some watch saw deleted at a revision no
///   acknowledged delete made may have expired: its expiry is optional
///   (`Outcome::Failed`), and only fits a revision where a watch saw its
///   keys deleted;
/// * a lease with no sign of ending gets none (it lived through the run,
///   as far as anything shows);
/// * a failed grant nothing acknowledged ever used is left out (it
///   changed nothing anyone saw).
///
/// None if no lease was granted.
pub fn with_lease_expiries(history: &History) -> Option<History> {
    let mut leases: BTreeMap<i64, LeaseFacts> = BTreeMap::new();
    let secs = |ttl: i64| u64::try_from(ttl.max(0)).unwrap_or(0) * 1_000_000_000;
    let mut acked_deletes = HashSet::new();
    for op in &history.operations {
        let ok = matches!(op.outcome, Outcome::Ok(_));
        match (&op.request, &op.outcome) {
            (Request::LeaseGrant { id, ttl }, outcome) => {
                let ttl = match outcome {
                    Outcome::Ok(Response::LeaseGrant { ttl, .. }) => *ttl,
                    _ => *ttl,
                };
                let l = leases.entry(*id).or_default();
                l.earliest = l.earliest.max(op.invoked + secs(ttl));
                l.granted_ok |= ok;
            }
            (Request::LeaseKeepAlive { id }, Outcome::Ok(Response::LeaseKeepAlive { ttl })) => {
                let l = leases.entry(*id).or_default();
                l.used = true;
                if *ttl > 0 {
                    l.earliest = l.earliest.max(op.invoked + secs(*ttl));
                } else {
                    l.gone_by = Some(l.gone_by.map_or(op.completed, |g| g.min(op.completed)));
                }
            }
            (Request::LeaseRevoke { id }, _) => {
                let l = leases.entry(*id).or_default();
                l.used |= ok;
                l.revoked_ok |= ok;
                l.revoke_failed |= !ok;
            }
            (Request::LeasePut { key, lease, .. }, _) => {
                let l = leases.entry(*lease).or_default();
                l.used |= ok;
                l.keys.insert(key.clone());
            }
            (
                Request::Delete { .. },
                Outcome::Ok(Response::Delete {
                    revision,
                    deleted: 1..,
                }),
            ) => {
                acked_deletes.insert(*revision);
            }
            _ => {}
        }
    }
    if leases.is_empty() {
        return None;
    }
    // Failed writes seen by a read or watch happened: their leases too.
    let observed = observed_values(history);
    for op in &history.operations {
        if let (Request::LeasePut { lease, value, .. }, Outcome::Failed(_)) =
            (&op.request, &op.outcome)
        {
            if observed.contains_key(value.as_str()) {
                leases.entry(*lease).or_default().used = true;
            }
        }
    }
    let mut deleted: HashSet<&str> = HashSet::new();
    for w in &history.watches {
        for r in &w.responses {
            for e in &r.events {
                if e.value.is_none() && !acked_deletes.contains(&e.revision) {
                    deleted.insert(e.key.as_str());
                }
            }
        }
    }
    let mut h = history.clone();
    h.operations.retain(|op| match (&op.request, &op.outcome) {
        (Request::LeaseGrant { id, .. }, Outcome::Failed(_)) => leases[id].used,
        _ => true,
    });
    for (id, l) in &leases {
        if l.revoked_ok || !(l.granted_ok || l.used) {
            continue;
        }
        let outcome = match l.gone_by {
            Some(by) if !l.revoke_failed => {
                Some((by, Outcome::Ok(Response::LeaseKeepAlive { ttl: 0 })))
            }
            _ if l.gone_by.is_some() || l.keys.iter().any(|k| deleted.contains(k.as_str())) => {
                Some((
                    l.earliest,
                    Outcome::Failed("may expire from here on".to_string()),
                ))
            }
            _ => None,
        };
        if let Some((completed, outcome)) = outcome {
            h.operations.push(Operation {
                client: usize::MAX,
                invoked: l.earliest,
                completed: completed.max(l.earliest),
                request: Request::LeaseExpire { id: *id },
                outcome,
            });
        }
    }
    Some(h)
}

/// Checks `history` against etcd's KV model; `budget` bounds the search.
pub fn check(history: &History, budget: u64) -> Report {
    let started = Instant::now();
    let with_expiries = with_lease_expiries(history);
    let history = with_expiries.as_ref().unwrap_or(history);
    let (model, calls, origin, mut stats) = prepare(history);
    let verdict = search(&model, &calls, budget);
    stats.elapsed = started.elapsed();
    let violation = match verdict {
        Search::Linearizable(_) => None,
        Search::Undecided { steps } => Some(format!(
            "undecided: the search gave up after {steps} steps (raise the budget or shorten the run)"
        )),
        Search::Violation {
            stuck,
            taken,
            state,
            depth,
        } => Some(explain(
            history,
            &origin,
            stuck,
            &taken,
            &state,
            depth,
            calls.len(),
        )),
    };
    Report { stats, violation }
}

/// A readable account of a violation: the operation that could not happen,
/// the state the model was in, the last operations before it and those
/// concurrent with it.
fn explain(
    history: &History,
    origin: &[usize],
    stuck: usize,
    taken: &[usize],
    state: &EtcdState,
    depth: usize,
    total: usize,
) -> String {
    let ops = &history.operations;
    let s = &ops[origin[stuck]];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "not linearizable: the longest valid order found takes {depth} of {total} operations; \
         then operation {} had completed and could not have happened:",
        origin[stuck]
    );
    let _ = writeln!(out, "  {}", describe(origin[stuck], s));
    let _ = writeln!(
        out,
        "model state there: revision {}, keys {:?}",
        state.revision, state.keys
    );
    if !state.leases.is_empty() {
        let _ = writeln!(
            out,
            "leases alive {:?}, keys attached {:?}",
            state.leases, state.attached
        );
    }
    let next: Vec<&Event> = history
        .watches
        .iter()
        .flat_map(|w| &w.responses)
        .flat_map(|r| &r.events)
        .filter(|e| e.revision == state.revision + 1)
        .collect();
    if let Some(e) = next.first() {
        let _ = writeln!(
            out,
            "what watches saw at the next revision, {}: {e:?} (made by no operation that could happen yet)",
            e.revision
        );
    }
    let _ = writeln!(out, "last operations taken before it:");
    for &t in taken {
        let _ = writeln!(out, "  {}", describe(origin[t], &ops[origin[t]]));
    }
    let _ = writeln!(
        out,
        "operations on key {:?} concurrent with it:",
        s.request.key()
    );
    for (i, o) in ops.iter().enumerate() {
        let overlaps = o.invoked <= s.completed && s.invoked <= o.completed;
        if i != origin[stuck] && overlaps && o.request.key() == s.request.key() {
            let _ = writeln!(out, "  {}", describe(i, o));
        }
    }
    out
}

fn describe(i: usize, op: &Operation) -> String {
    format!(
        "#{i} client {} [{:.3} ms .. {:.3} ms] {:?} -> {:?}",
        op.client,
        op.invoked as f64 / 1e6,
        op.completed as f64 / 1e6,
        op.request,
        op.outcome
    )
}

/// The per-key projection of [`check`]: each key checked on its own, as a
/// register whose value, version and create/mod revisions must match, with
/// header revisions only required to grow. Valid to partition (keys are
/// independent objects in this weaker model), so it scales with the number
/// of keys; it finds stale and lost values but not cross-key revision
/// anomalies, which [`check`] finds.
pub fn check_per_key(history: &History, budget: u64) -> Report {
    let started = Instant::now();
    // Lease requests and lists are left to the full model.
    let mut keys: Vec<&str> = history
        .operations
        .iter()
        .flat_map(|o| match &o.request {
            Request::TxnPair { key, also, .. } => vec![key.as_str(), also.as_str()],
            r => r.single_key().into_iter().collect(),
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let (global, ..) = prepare(history);
    let mut stats = Stats::default();
    for key in keys {
        let sub = project(history, key);
        let report = check_projected(&sub, &global, budget);
        stats.operations += report.stats.operations;
        stats.acknowledged += report.stats.acknowledged;
        stats.pinned += report.stats.pinned;
        stats.free += report.stats.free;
        stats.dropped_reads += report.stats.dropped_reads;
        stats.impossible += report.stats.impossible;
        if let Some(v) = report.violation {
            stats.elapsed = started.elapsed();
            return Report {
                stats,
                violation: Some(format!("key {key:?}: {v}")),
            };
        }
    }
    stats.elapsed = started.elapsed();
    Report {
        stats,
        violation: None,
    }
}

/// The operations on `key`, with revisions made relative to the key: the
/// initial revision is forgotten, and a free write may take any revision
/// its observers allow.
fn project(history: &History, key: &str) -> History {
    History {
        compactions: history.compactions.clone(),
        initial_revision: history.initial_revision,
        initial: history
            .initial
            .iter()
            .filter(|(k, _)| k.as_str() == key)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        operations: history
            .operations
            .iter()
            .filter_map(|o| project_operation(o, key))
            .collect(),
        // Its events pin indeterminate writes of the key to revisions.
        watches: history
            .watches
            .iter()
            .map(|w| crate::history::Watch {
                responses: w
                    .responses
                    .iter()
                    .map(|r| crate::history::WatchResponse {
                        events: r.events.iter().filter(|e| e.key == key).cloned().collect(),
                        ..r.clone()
                    })
                    .collect(),
                ..w.clone()
            })
            .collect(),
    }
}

/// `op` as seen by `key` alone: a single-key operation on it as it is; a
/// txn pair as a compare-and-swap of its compared key, and as a put of its
/// second key (when it succeeded or may have: the condition is on another
/// key, which this projection cannot see).
fn project_operation(op: &Operation, key: &str) -> Option<Operation> {
    if op.request.single_key() == Some(key) {
        return Some(op.clone());
    }
    let Request::TxnPair {
        key: compared,
        compare,
        value,
        also,
        also_value,
    } = &op.request
    else {
        return None;
    };
    let (request, outcome) = if compared == key {
        let request = Request::Txn {
            key: key.to_string(),
            compare: compare.clone(),
            value: value.clone(),
        };
        (request, op.outcome.clone())
    } else if also == key {
        let request = Request::Put {
            key: key.to_string(),
            value: also_value.clone(),
        };
        let outcome = match &op.outcome {
            Outcome::Ok(Response::Txn {
                revision,
                succeeded: true,
                ..
            }) => Outcome::Ok(Response::Put {
                revision: *revision,
            }),
            Outcome::Ok(_) => return None,
            failed => failed.clone(),
        };
        (request, outcome)
    } else {
        return None;
    };
    Some(Operation {
        request,
        outcome,
        ..op.clone()
    })
}

/// One key as a register: its value and the revision that wrote it (None
/// when absent), and the revision of the key's last write; versions and
/// create revisions are left to the full model. A free write takes the
/// first revision after the key's last write that the whole history leaves
/// open for it (the full model's rule: not claimed by a known write, not
/// past the horizon, and the event a watch saw there, if any): one choice
/// per write keeps the search narrow.
struct KeyModel<'a> {
    initial: Option<KeyValue>,
    steps: Vec<(Request, Known)>,
    global: &'a EtcdModel,
}

type KeyState = (Option<(String, i64)>, i64);

fn seen_value(kv: &Option<KeyValue>) -> Option<(String, i64)> {
    kv.as_ref().map(|kv| (kv.value.clone(), kv.mod_revision))
}

impl KeyModel<'_> {
    /// The key after a write of `value` (None: a delete) at `revision`, or
    /// for a free write (None) at the first revision open to it.
    fn write(
        &self,
        state: &KeyState,
        key: &str,
        value: Option<&str>,
        revision: Option<i64>,
    ) -> Option<KeyState> {
        let r = match revision {
            Some(r) => r,
            None => self.global.open.range(state.1 + 1..).copied().find(|&r| {
                self.global.free_write_fits(&Event {
                    revision: r,
                    key: key.to_string(),
                    value: value.map(str::to_string),
                })
            })?,
        };
        (r > state.1).then(|| (value.map(|v| (v.to_string(), r)), r))
    }
}

impl Model for KeyModel<'_> {
    type State = KeyState;
    fn init(&self) -> KeyState {
        let last = self.initial.as_ref().map_or(0, |kv| kv.mod_revision);
        (seen_value(&self.initial), last)
    }
    fn step(&self, state: &KeyState, i: usize) -> Option<KeyState> {
        let (request, known) = &self.steps[i];
        let key = request.key();
        let read_fits =
            |revision: i64, kv: &Option<KeyValue>| revision >= state.1 && state.0 == seen_value(kv);
        let pinned = match known {
            Known::Pinned(r) => Some(*r),
            _ => None,
        };
        let holds = |compare: &Compare| match compare {
            Compare::ModRevision(n) => state.0.as_ref().map_or(0, |v| v.1) == *n,
            Compare::Value(v) => state.0.as_ref().is_some_and(|s| s.0 == *v),
        };
        match (request, known) {
            (Request::Get { .. }, Known::Response(Response::Get { revision, kv })) => {
                read_fits(*revision, kv).then(|| state.clone())
            }
            (
                Request::Put { value, .. } | Request::LeasePut { value, .. },
                Known::Response(Response::Put { revision }),
            ) => self.write(state, key, Some(value), Some(*revision)),
            (Request::Put { value, .. } | Request::LeasePut { value, .. }, _) => {
                self.write(state, key, Some(value), pinned)
            }
            (Request::Delete { .. }, Known::Response(Response::Delete { revision, deleted })) => {
                match (&state.0, deleted) {
                    (Some(_), 1) => self.write(state, key, None, Some(*revision)),
                    (None, 0) if *revision >= state.1 => Some(state.clone()),
                    _ => None,
                }
            }
            (Request::Delete { .. }, _) => state
                .0
                .as_ref()
                .and_then(|_| self.write(state, key, None, None)),
            (
                Request::Txn { compare, value, .. },
                Known::Response(Response::Txn {
                    revision,
                    succeeded,
                    kv,
                }),
            ) => match (holds(compare), succeeded) {
                (true, true) => self.write(state, key, Some(value), Some(*revision)),
                (false, false) => read_fits(*revision, kv).then(|| state.clone()),
                _ => None,
            },
            (Request::Txn { compare, value, .. }, _) => holds(compare)
                .then(|| self.write(state, key, Some(value), pinned))
                .flatten(),
            _ => None,
        }
    }
}

fn check_projected(history: &History, global: &EtcdModel, budget: u64) -> Report {
    let (model, calls, origin, stats) = prepare(history);
    let key_model = KeyModel {
        initial: model.initial.keys.values().next().cloned(),
        steps: model.steps,
        global,
    };
    let violation = match search(&key_model, &calls, budget) {
        Search::Linearizable(_) => None,
        Search::Undecided { steps } => Some(format!("undecided after {steps} steps")),
        Search::Violation {
            stuck,
            depth,
            taken,
            ..
        } => {
            let ops = &history.operations;
            let mut out = format!(
                "not linearizable: after {depth} of {} operations, this one could not have happened:\n  {}\nlast taken:\n",
                calls.len(),
                describe(origin[stuck], &ops[origin[stuck]])
            );
            for t in taken {
                let _ = writeln!(out, "  {}", describe(origin[t], &ops[origin[t]]));
            }
            Some(out)
        }
    };
    Report { stats, violation }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(value: &str, create: i64, modr: i64, version: i64) -> Option<KeyValue> {
        Some(KeyValue {
            value: value.to_string(),
            create_revision: create,
            mod_revision: modr,
            version,
        })
    }
    fn op(client: usize, span: (u64, u64), request: Request, outcome: Outcome) -> Operation {
        Operation {
            client,
            invoked: span.0,
            completed: span.1,
            request,
            outcome,
        }
    }
    fn put(k: &str, v: &str) -> Request {
        Request::Put {
            key: k.into(),
            value: v.into(),
        }
    }
    fn get(k: &str) -> Request {
        Request::Get { key: k.into() }
    }
    fn del(k: &str) -> Request {
        Request::Delete { key: k.into() }
    }
    fn cas(k: &str, modr: i64, v: &str) -> Request {
        Request::Txn {
            key: k.into(),
            compare: Compare::ModRevision(modr),
            value: v.into(),
        }
    }
    fn put_ok(revision: i64) -> Outcome {
        Outcome::Ok(Response::Put { revision })
    }
    fn get_ok(revision: i64, kv: Option<KeyValue>) -> Outcome {
        Outcome::Ok(Response::Get { revision, kv })
    }
    fn failed() -> Outcome {
        Outcome::Failed("deadline exceeded".into())
    }
    fn history(operations: Vec<Operation>) -> History {
        History {
            initial_revision: 1,
            operations,
            ..History::default()
        }
    }
    fn assert_both(h: &History, linearizable: bool) {
        let full = check(h, DEFAULT_STEP_BUDGET);
        assert_eq!(
            full.is_linearizable(),
            linearizable,
            "full model: {:?}",
            full.violation
        );
        let per_key = check_per_key(h, DEFAULT_STEP_BUDGET);
        assert_eq!(
            per_key.is_linearizable(),
            linearizable,
            "per-key model: {:?}",
            per_key.violation
        );
    }

    #[test]
    fn a_sequential_history_with_every_request_kind_is_linearizable() {
        let h = history(vec![
            op(0, (0, 1), put("a", "1"), put_ok(2)),
            op(0, (2, 3), get("a"), get_ok(2, kv("1", 2, 2, 1))),
            op(0, (4, 5), put("a", "2"), put_ok(3)),
            op(
                0,
                (6, 7),
                cas("a", 3, "3"),
                Outcome::Ok(Response::Txn {
                    revision: 4,
                    succeeded: true,
                    kv: None,
                }),
            ),
            op(
                0,
                (8, 9),
                cas("a", 3, "4"),
                Outcome::Ok(Response::Txn {
                    revision: 4,
                    succeeded: false,
                    kv: kv("3", 2, 4, 3),
                }),
            ),
            op(
                0,
                (10, 11),
                del("a"),
                Outcome::Ok(Response::Delete {
                    revision: 5,
                    deleted: 1,
                }),
            ),
            op(
                0,
                (12, 13),
                del("a"),
                Outcome::Ok(Response::Delete {
                    revision: 5,
                    deleted: 0,
                }),
            ),
            op(0, (14, 15), get("a"), get_ok(5, None)),
        ]);
        assert_both(&h, true);
    }

    #[test]
    fn concurrent_puts_may_take_effect_in_either_order() {
        // Both overlap; the second invoked took effect first.
        let h = history(vec![
            op(0, (0, 10), put("a", "x"), put_ok(3)),
            op(1, (1, 9), put("a", "y"), put_ok(2)),
            op(2, (11, 12), get("a"), get_ok(3, kv("x", 2, 3, 2))),
        ]);
        assert_both(&h, true);
    }

    #[test]
    fn a_stale_read_is_rejected() {
        // The put completed before the get started; the get missed it.
        let h = history(vec![
            op(0, (0, 10), put("a", "x"), put_ok(2)),
            op(1, (20, 30), get("a"), get_ok(1, None)),
        ]);
        assert_both(&h, false);
        let report = check(&h, DEFAULT_STEP_BUDGET);
        let text = report.violation.expect("a violation");
        assert!(text.contains("Get"), "the report names the read: {text}");
    }

    #[test]
    fn a_lost_acknowledged_write_is_rejected() {
        // The second put was acknowledged, then a read shows the first.
        let h = history(vec![
            op(0, (0, 10), put("a", "x"), put_ok(2)),
            op(0, (11, 20), put("a", "y"), put_ok(3)),
            op(1, (30, 40), get("a"), get_ok(3, kv("x", 2, 2, 1))),
        ]);
        assert_both(&h, false);
    }

    #[test]
    fn a_read_at_the_wrong_revision_is_rejected_by_the_full_model() {
        // Right value, but the header claims a revision no state had with
        // it: only the revision-aware model can tell.
        let h = history(vec![
            op(0, (0, 10), put("a", "x"), put_ok(2)),
            op(0, (11, 20), put("b", "y"), put_ok(3)),
            op(1, (30, 40), get("a"), get_ok(2, kv("x", 2, 2, 1))),
        ]);
        assert!(!check(&h, DEFAULT_STEP_BUDGET).is_linearizable());
        assert!(check_per_key(&h, DEFAULT_STEP_BUDGET).is_linearizable());
    }

    #[test]
    fn an_indeterminate_write_may_have_happened_later_or_never() {
        let seen = history(vec![
            op(0, (0, 10), put("a", "x"), failed()),
            // Seen long after the client gave up on it: still fine.
            op(1, (50, 60), get("a"), get_ok(2, kv("x", 2, 2, 1))),
        ]);
        assert_both(&seen, true);
        let unseen = history(vec![
            op(0, (0, 10), put("a", "x"), failed()),
            op(1, (50, 60), get("a"), get_ok(1, None)),
        ]);
        assert_both(&unseen, true);
        // Unseen, but the revision it took shows in the next write's.
        let gap = history(vec![
            op(0, (0, 10), put("a", "x"), failed()),
            op(1, (20, 30), put("b", "y"), put_ok(3)),
            op(
                2,
                (40, 50),
                del("a"),
                Outcome::Ok(Response::Delete {
                    revision: 4,
                    deleted: 1,
                }),
            ),
        ]);
        assert_both(&gap, true);
    }

    #[test]
    fn a_write_seen_before_it_was_invoked_is_rejected() {
        let h = history(vec![
            op(1, (0, 10), get("a"), get_ok(2, kv("x", 2, 2, 1))),
            op(0, (20, 30), put("a", "x"), failed()),
        ]);
        assert_both(&h, false);
    }

    #[test]
    fn two_compare_and_swaps_on_the_same_revision_cannot_both_succeed() {
        let ok = |revision| {
            Outcome::Ok(Response::Txn {
                revision,
                succeeded: true,
                kv: None,
            })
        };
        let h = history(vec![
            op(0, (0, 1), put("a", "0"), put_ok(2)),
            op(1, (10, 20), cas("a", 2, "x"), ok(3)),
            op(2, (10, 20), cas("a", 2, "y"), ok(4)),
        ]);
        assert_both(&h, false);
    }

    #[test]
    fn an_unacknowledged_gap_nobody_can_fill_is_rejected() {
        // Revision 2 was made by nothing in the history.
        let h = history(vec![
            op(0, (0, 10), put("a", "x"), put_ok(3)),
            op(0, (20, 30), get("a"), get_ok(3, kv("x", 3, 3, 1))),
        ]);
        assert!(!check(&h, DEFAULT_STEP_BUDGET).is_linearizable());
    }

    #[test]
    fn free_writes_no_revision_is_open_to_are_left_out() {
        // A watch saw every revision; a thousand failed writes it never
        // saw cannot have happened, and the search must not try them.
        let mut ops = vec![
            op(0, (0, 10), put("a", "x"), put_ok(2)),
            op(0, (20, 30), get("a"), get_ok(2, kv("x", 2, 2, 1))),
        ];
        for i in 0..1_000u64 {
            ops.push(op(1, (i, i + 1), put("a", &format!("lost-{i}")), failed()));
            ops.push(op(2, (i, i + 1), del("a"), failed()));
        }
        let mut h = history(ops);
        h.watches.push(crate::history::Watch {
            key: "a".into(),
            start_revision: 2,
            responses: vec![crate::history::WatchResponse {
                events: vec![Event {
                    revision: 2,
                    key: "a".into(),
                    value: Some("x".into()),
                }],
                ..Default::default()
            }],
            ..Default::default()
        });
        let report = check(&h, DEFAULT_STEP_BUDGET);
        assert!(report.is_linearizable(), "{:?}", report.violation);
        assert_eq!(report.stats.impossible, 2_000);
        assert_eq!(report.stats.free, 0);
    }

    /// A random history of `n` operations by `clients` clients, made by
    /// running a real sequential store: each operation takes effect at a
    /// random point inside its interval; a few fail (some after taking
    /// effect).
    pub(crate) fn generated(n: usize, clients: usize, seed: u64) -> History {
        let mut rng = seed | 1;
        let mut rand = move |m: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % m
        };
        let mut state = EtcdState {
            revision: 1,
            ..EtcdState::default()
        };
        let mut ops = Vec::new();
        let mut clock = vec![0u64; clients];
        // (time it takes effect, client, request, failed?, invoked, completed)
        let mut planned = Vec::new();
        for i in 0..n {
            let c = i % clients;
            let invoked = clock[c] + rand(5);
            let effect = invoked + 1 + rand(20);
            let completed = effect + 1 + rand(20);
            clock[c] = completed;
            let key = format!("k{}", rand(4));
            let value = format!("{c}-{i}");
            let request = match rand(10) {
                0..=3 => get(&key),
                4..=5 => put(&key, &value),
                6 => del(&key),
                _ => cas(
                    &key,
                    rand(3) as i64 + state.revision.saturating_sub(2),
                    &value,
                ),
            };
            planned.push((effect, c, request, rand(30) == 0, invoked, completed));
        }
        planned.sort_by_key(|p| p.0);
        let mut events = Vec::new();
        for (_, c, request, fails, invoked, completed) in planned {
            // Half the failed operations never take effect.
            if fails && rand(2) == 0 {
                ops.push(op(c, (invoked, completed), request, failed()));
                continue;
            }
            let mut s = state.clone();
            let response = match &request {
                Request::Get { key } => Response::Get {
                    revision: s.revision,
                    kv: s.keys.get(key).cloned(),
                },
                Request::Put { key, value } => Response::Put {
                    revision: super::put(&mut s, key, value),
                },
                Request::Delete { key } => {
                    let deleted = i64::from(s.keys.remove(key).is_some());
                    s.revision += deleted;
                    Response::Delete {
                        revision: s.revision,
                        deleted,
                    }
                }
                Request::Txn {
                    key,
                    compare,
                    value,
                } => {
                    if compare_holds(&s, key, compare) {
                        Response::Txn {
                            revision: super::put(&mut s, key, value),
                            succeeded: true,
                            kv: None,
                        }
                    } else {
                        Response::Txn {
                            revision: s.revision,
                            succeeded: false,
                            kv: s.keys.get(key).cloned(),
                        }
                    }
                }
                other => unreachable!("the generator makes no {other:?}"),
            };
            if s.revision > state.revision {
                let key = request.key().to_string();
                events.push(Event {
                    revision: s.revision,
                    value: s.keys.get(&key).map(|kv| kv.value.clone()),
                    key,
                });
            }
            state = s;
            let outcome = if fails {
                failed()
            } else {
                Outcome::Ok(response)
            };
            ops.push(op(c, (invoked, completed), request, outcome));
        }
        ops.sort_by_key(|o| o.invoked);
        let mut h = history(ops);
        // A watch of everything, as the robustness runs keep one.
        h.watches.push(crate::history::Watch {
            key: "k".into(),
            range_end: "l".into(),
            start_revision: 2,
            responses: vec![crate::history::WatchResponse {
                events,
                ..Default::default()
            }],
            ..Default::default()
        });
        h
    }

    #[test]
    fn a_generated_history_of_ten_thousand_operations_checks_in_seconds() {
        let h = generated(10_000, 8, 42);
        let full = check(&h, DEFAULT_STEP_BUDGET);
        assert!(full.is_linearizable(), "{:?}", full.violation);
        assert!(
            full.stats.elapsed < Duration::from_secs(30),
            "{:?}",
            full.stats
        );
        let per_key = check_per_key(&h, DEFAULT_STEP_BUDGET);
        assert!(per_key.is_linearizable(), "{:?}", per_key.violation);
    }

    #[test]
    fn a_generated_history_with_one_read_made_stale_is_rejected() {
        let mut h = generated(2_000, 8, 7);
        // Make one read that saw a value see the key's previous state.
        let victim = h
            .operations
            .iter()
            .position(|o| {
                matches!(
                    o.outcome,
                    Outcome::Ok(Response::Get {
                        kv: Some(KeyValue { version: 1, .. }),
                        ..
                    })
                ) && o.invoked > 1_000
            })
            .expect("some read of a fresh key");
        if let Outcome::Ok(Response::Get { kv, .. }) = &mut h.operations[victim].outcome {
            *kv = None;
        }
        assert!(!check(&h, DEFAULT_STEP_BUDGET).is_linearizable());
    }

    const SEC: u64 = 1_000_000_000;

    fn grant(id: i64, ttl: i64) -> Request {
        Request::LeaseGrant { id, ttl }
    }
    fn grant_ok(revision: i64, ttl: i64) -> Outcome {
        Outcome::Ok(Response::LeaseGrant { revision, ttl })
    }
    fn lput(k: &str, v: &str, lease: i64) -> Request {
        Request::LeasePut {
            key: k.into(),
            value: v.into(),
            lease,
        }
    }
    fn keep(id: i64) -> Request {
        Request::LeaseKeepAlive { id }
    }
    fn keep_ok(ttl: i64) -> Outcome {
        Outcome::Ok(Response::LeaseKeepAlive { ttl })
    }
    fn revoke(id: i64) -> Request {
        Request::LeaseRevoke { id }
    }
    fn revoke_ok(revision: i64) -> Outcome {
        Outcome::Ok(Response::LeaseRevoke { revision })
    }
    /// A watch that saw `key` deleted at `revision` (as the reference
    /// watch of a run sees an expiry).
    fn deleted_at(revision: i64, key: &str) -> crate::history::Watch {
        crate::history::Watch {
            key: key.into(),
            start_revision: revision,
            responses: vec![crate::history::WatchResponse {
                header_revision: revision,
                events: vec![Event {
                    revision,
                    key: key.into(),
                    value: None,
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }
    fn full(h: &History) -> Report {
        check(h, DEFAULT_STEP_BUDGET)
    }

    /// A lease's life: grant, attach, keep-alive, expiry (its key vanishes
    /// at a revision of its own, a TTL after the keep-alive), and a second
    /// lease revoked by a client (its two keys vanish at one revision); a
    /// revoke of a lease without keys makes no revision.
    #[test]
    fn lease_grant_attach_keepalive_expiry_and_revoke_are_linearizable() {
        let h = history(vec![
            op(0, (0, 10), grant(7, 1), grant_ok(1, 1)),
            op(0, (20, 30), lput("a", "1", 7), put_ok(2)),
            op(1, (40, 50), keep(7), keep_ok(1)),
            op(1, (100, 110), get("a"), get_ok(2, kv("1", 2, 2, 1))),
            // Expired: gone at revision 3, 2 s in (earliest 1 s + 40 ns).
            op(1, (2 * SEC, 2 * SEC + 10), get("a"), get_ok(3, None)),
            op(1, (2 * SEC + 20, 2 * SEC + 30), keep(7), keep_ok(0)),
            op(0, (3 * SEC, 3 * SEC + 10), grant(8, 60), grant_ok(3, 60)),
            op(
                0,
                (3 * SEC + 20, 3 * SEC + 30),
                lput("b", "2", 8),
                put_ok(4),
            ),
            op(
                2,
                (3 * SEC + 25, 3 * SEC + 35),
                lput("c", "3", 8),
                put_ok(5),
            ),
            op(0, (3 * SEC + 40, 3 * SEC + 50), revoke(8), revoke_ok(6)),
            op(1, (3 * SEC + 60, 3 * SEC + 70), get("c"), get_ok(6, None)),
            op(
                0,
                (3 * SEC + 80, 3 * SEC + 90),
                grant(9, 60),
                grant_ok(6, 60),
            ),
            op(0, (3 * SEC + 100, 3 * SEC + 110), revoke(9), revoke_ok(6)),
            op(0, (3 * SEC + 120, 3 * SEC + 130), put("b", "4"), put_ok(7)),
        ]);
        let r = full(&h);
        assert!(r.is_linearizable(), "{:?}", r.violation);
    }

    /// The key of a 5 s lease gone 1 s after the grant: expired early.
    #[test]
    fn a_lease_expiring_before_its_ttl_is_rejected() {
        let h = history(vec![
            op(0, (0, 10), grant(7, 5), grant_ok(1, 5)),
            op(0, (20, 30), lput("a", "1", 7), put_ok(2)),
            op(1, (SEC, SEC + 10), get("a"), get_ok(3, None)),
        ]);
        let mut h = h;
        h.watches.push(deleted_at(3, "a"));
        let r = full(&h);
        assert!(!r.is_linearizable(), "an early expiry passed");
        let v = r.violation.unwrap_or_default();
        assert!(v.contains("leases"), "{v}");
        // The same read after the TTL is fine.
        let mut late = h.clone();
        late.operations[2].invoked = 5 * SEC + 30;
        late.operations[2].completed = 5 * SEC + 40;
        assert!(full(&late).is_linearizable());
    }

    /// A keep-alive pushes the earliest expiry out by the TTL it grants.
    #[test]
    fn an_expiry_before_the_ttl_after_a_keepalive_is_rejected() {
        let h = history(vec![
            op(0, (0, 10), grant(7, 2), grant_ok(1, 2)),
            op(0, (20, 30), lput("a", "1", 7), put_ok(2)),
            op(0, (SEC, SEC + 10), keep(7), keep_ok(2)),
            op(1, (2 * SEC + 500, 2 * SEC + 510), get("a"), get_ok(3, None)),
        ]);
        let mut h = h;
        h.watches.push(deleted_at(3, "a"));
        assert!(
            !full(&h).is_linearizable(),
            "expiry 1.5 s after a 2 s keep-alive passed"
        );
    }

    #[test]
    fn a_key_outliving_its_revoked_lease_is_rejected() {
        let h = history(vec![
            op(0, (0, 10), grant(7, 60), grant_ok(1, 60)),
            op(0, (20, 30), lput("a", "1", 7), put_ok(2)),
            op(0, (40, 50), revoke(7), revoke_ok(3)),
            op(1, (60, 70), get("a"), get_ok(3, kv("1", 2, 2, 1))),
        ]);
        assert!(!full(&h).is_linearizable());
    }

    #[test]
    fn a_revoked_lease_kept_alive_or_attached_is_rejected() {
        let base = vec![
            op(0, (0, 10), grant(7, 60), grant_ok(1, 60)),
            op(0, (20, 30), revoke(7), revoke_ok(1)),
        ];
        let mut alive = base.clone();
        alive.push(op(1, (40, 50), keep(7), keep_ok(60)));
        assert!(!full(&history(alive)).is_linearizable());
        let mut attached = base.clone();
        attached.push(op(1, (40, 50), lput("a", "1", 7), put_ok(2)));
        assert!(!full(&history(attached)).is_linearizable());
        // Never granted at all.
        let never = vec![op(1, (40, 50), lput("a", "1", 8), put_ok(2))];
        assert!(!full(&history(never)).is_linearizable());
    }

    /// A revoke that failed may still have happened: its keys may vanish
    /// (at a revision no known write claims), or stay.
    #[test]
    fn an_indeterminate_revoke_may_or_may_not_happen() {
        let gone = history(vec![
            op(0, (0, 10), grant(7, 60), grant_ok(1, 60)),
            op(0, (20, 30), lput("a", "1", 7), put_ok(2)),
            op(0, (40, 50), revoke(7), failed()),
            op(1, (60, 70), get("a"), get_ok(3, None)),
            op(1, (80, 90), keep(7), keep_ok(0)),
        ]);
        assert!(full(&gone).is_linearizable(), "{:?}", full(&gone).violation);
        let stayed = history(vec![
            op(0, (0, 10), grant(7, 60), grant_ok(1, 60)),
            op(0, (20, 30), lput("a", "1", 7), put_ok(2)),
            op(0, (40, 50), revoke(7), failed()),
            op(1, (60, 70), get("a"), get_ok(2, kv("1", 2, 2, 1))),
        ]);
        assert!(full(&stayed).is_linearizable());
    }

    #[test]
    fn a_list_must_show_every_key_of_its_range_at_its_revision() {
        let list = |revision, kvs: Vec<(&str, Option<KeyValue>)>| {
            Outcome::Ok(Response::List {
                revision,
                kvs: kvs
                    .into_iter()
                    .filter_map(|(k, v)| Some((k.to_string(), v?)))
                    .collect(),
            })
        };
        let prefix = || Request::List {
            key: "p/".into(),
            range_end: "p0".into(),
        };
        let ops = |answer| {
            history(vec![
                op(0, (0, 10), put("p/a", "1"), put_ok(2)),
                op(0, (20, 30), put("p/b", "2"), put_ok(3)),
                op(0, (40, 50), put("q", "3"), put_ok(4)),
                op(1, (60, 70), prefix(), answer),
            ])
        };
        let good = ops(list(
            4,
            vec![("p/a", kv("1", 2, 2, 1)), ("p/b", kv("2", 3, 3, 1))],
        ));
        assert!(full(&good).is_linearizable(), "{:?}", full(&good).violation);
        let missing = ops(list(4, vec![("p/a", kv("1", 2, 2, 1))]));
        assert!(!full(&missing).is_linearizable());
        let stale = ops(list(
            3,
            vec![("p/a", kv("1", 2, 2, 1)), ("p/b", kv("2", 3, 3, 1))],
        ));
        assert!(!full(&stale).is_linearizable());
    }

    fn pair(k: &str, modr: i64, v: &str, also: &str, also_v: &str) -> Request {
        Request::TxnPair {
            key: k.into(),
            compare: Compare::ModRevision(modr),
            value: v.into(),
            also: also.into(),
            also_value: also_v.into(),
        }
    }
    fn txn_ok(revision: i64, succeeded: bool, kv: Option<KeyValue>) -> Outcome {
        Outcome::Ok(Response::Txn {
            revision,
            succeeded,
            kv,
        })
    }

    /// A Kubernetes-style txn writing two keys on one key's mod_revision:
    /// both at one revision, or neither.
    #[test]
    fn a_txn_pair_writes_both_keys_at_one_revision() {
        let ops = |get_s: Outcome| {
            history(vec![
                op(0, (0, 10), put("p", "1"), put_ok(2)),
                op(
                    0,
                    (20, 30),
                    pair("p", 2, "2", "s", "3"),
                    txn_ok(3, true, None),
                ),
                // A stale compare fails and writes nothing.
                op(
                    1,
                    (40, 50),
                    pair("p", 2, "4", "s", "5"),
                    txn_ok(3, false, kv("2", 2, 3, 2)),
                ),
                op(1, (60, 70), get("s"), get_s),
            ])
        };
        assert_both(&ops(get_ok(3, kv("3", 3, 3, 1))), true);
        // The second key missing after the pair: not atomic.
        assert_both(&ops(get_ok(3, None)), false);
        // The second key written by the failed pair.
        assert_both(&ops(get_ok(3, kv("5", 3, 3, 1))), false);
    }

    /// A list must show both keys of a pair or neither.
    #[test]
    fn a_list_showing_half_a_txn_pair_is_rejected() {
        let list = |kvs: Vec<(&str, Option<KeyValue>)>| {
            Outcome::Ok(Response::List {
                revision: 2,
                kvs: kvs
                    .into_iter()
                    .filter_map(|(k, v)| Some((k.to_string(), v?)))
                    .collect(),
            })
        };
        let prefix = || Request::List {
            key: "p".into(),
            range_end: "q".into(),
        };
        let ops = |answer| {
            history(vec![
                op(0, (0, 10), pair("p/a", 0, "1", "p/s", "2"), failed()),
                op(1, (20, 30), prefix(), answer),
            ])
        };
        let both = ops(list(vec![
            ("p/a", kv("1", 2, 2, 1)),
            ("p/s", kv("2", 2, 2, 1)),
        ]));
        assert!(full(&both).is_linearizable(), "{:?}", full(&both).violation);
        let half = ops(list(vec![("p/a", kv("1", 2, 2, 1))]));
        assert!(!full(&half).is_linearizable());
    }

    /// An indeterminate pair seen through its second key happened, both
    /// keys at once.
    #[test]
    fn an_indeterminate_txn_pair_seen_through_its_second_key_happened_whole() {
        let ops = |get_p: Outcome| {
            history(vec![
                op(0, (0, 10), pair("p", 0, "1", "s", "2"), failed()),
                op(1, (20, 30), get("s"), get_ok(2, kv("2", 2, 2, 1))),
                op(1, (40, 50), get("p"), get_p),
            ])
        };
        assert!(full(&ops(get_ok(2, kv("1", 2, 2, 1)))).is_linearizable());
        assert!(!full(&ops(get_ok(2, None))).is_linearizable());
    }
}
