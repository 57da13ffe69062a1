//! What a robustness run records: every KV operation a client issued, with
//! when it was invoked, when it completed and what it got back, and every
//! watch with the responses it received.
//!
//! Times are nanoseconds since the start of the run, on one clock shared by
//! all clients (the harness's `Instant`). An operation that ended in an error
//! or a timeout is *indeterminate*: it may have taken effect at any moment
//! after its invocation (even after the client gave up: a proposal can still
//! commit), or never. The checkers treat it so.
//!
//! Put values must be unique in a history (the traffic generators write
//! `<client>-<sequence>`): that is what lets the checkers tell which write a
//! read or a watch event saw, and so pin down indeterminate writes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// A key's state as a Range shows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyValue {
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
}

/// The condition of a compare-and-swap transaction, on its one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// `mod_revision(key) == n`; 0 means "the key does not exist", as etcd
    /// compares a missing key's revisions as 0.
    ModRevision(i64),
    /// `value(key) == v`; false for a missing key, as in etcd.
    Value(String),
}

/// One KV request, as the traffic generators issue them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Put {
        key: String,
        value: String,
    },
    /// A linearizable single-key Range.
    Get {
        key: String,
    },
    Delete {
        key: String,
    },
    /// `if compare(key) then put(key, value) else get(key)`.
    Txn {
        key: String,
        compare: Compare,
        value: String,
    },
    /// `if compare(key) then put(key, value), put(also, also_value) else
    /// get(key)`: a Kubernetes-style update conditioned on one key's
    /// mod_revision that writes a second key too, both at the txn's one
    /// revision.
    TxnPair {
        key: String,
        compare: Compare,
        value: String,
        also: String,
        also_value: String,
    },
    /// A linearizable Range of `[key, range_end)` (a Kubernetes-style
    /// list of a prefix).
    List {
        key: String,
        range_end: String,
    },
    /// LeaseGrant with an ID the client chose (so an indeterminate grant
    /// is still known by its ID) and a TTL in seconds.
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// A Put attached to a lease.
    LeasePut {
        key: String,
        value: String,
        lease: i64,
    },
    /// One keep-alive of a lease.
    LeaseKeepAlive {
        id: i64,
    },
    /// LeaseRevoke: the lease ends and every key attached to it is deleted,
    /// all at one revision (none if it had no key).
    LeaseRevoke {
        id: i64,
    },
    /// Never sent by a client: the checker adds one per granted lease, an
    /// optional step invoked at the earliest moment the lease may expire
    /// (its TTL after the grant's or the last acknowledged keep-alive's
    /// invocation): the lease ends there or later, like a revoke, or not
    /// within the history.
    LeaseExpire {
        id: i64,
    },
}

impl Request {
    /// The key the request is about: its one key, a List's start, a
    /// txn pair's compared key, or "" for a lease request.
    pub fn key(&self) -> &str {
        self.single_key().unwrap_or(match self {
            Request::List { key, .. } | Request::TxnPair { key, .. } => key,
            _ => "",
        })
    }
    /// The one key a single-key request reads or writes.
    pub fn single_key(&self) -> Option<&str> {
        match self {
            Request::Put { key, .. }
            | Request::Get { key }
            | Request::Delete { key }
            | Request::Txn { key, .. }
            | Request::LeasePut { key, .. } => Some(key),
            _ => None,
        }
    }
    /// The value a write puts, if any (values are unique in a history); a
    /// txn pair's first.
    pub fn value(&self) -> Option<&str> {
        match self {
            Request::Put { value, .. }
            | Request::Txn { value, .. }
            | Request::TxnPair { value, .. }
            | Request::LeasePut { value, .. } => Some(value),
            _ => None,
        }
    }
    /// Every (key, value) a write puts if it takes effect (a txn's success
    /// branch), all at one revision.
    pub fn puts(&self) -> Vec<(&str, &str)> {
        match self {
            Request::Put { key, value }
            | Request::Txn { key, value, .. }
            | Request::LeasePut { key, value, .. } => vec![(key, value)],
            Request::TxnPair {
                key,
                value,
                also,
                also_value,
                ..
            } => vec![(key, value), (also, also_value)],
            _ => Vec::new(),
        }
    }
}

/// The response to a [`Request`] of the same variant. `revision` is the
/// response header's revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Put {
        revision: i64,
    },
    Get {
        revision: i64,
        kv: Option<KeyValue>,
    },
    Delete {
        revision: i64,
        deleted: i64,
    },
    /// `kv` is the else branch's get (None when it succeeded).
    Txn {
        revision: i64,
        succeeded: bool,
        kv: Option<KeyValue>,
    },
    /// Every key of the range, in key order.
    List {
        revision: i64,
        kvs: Vec<(String, KeyValue)>,
    },
    /// The TTL granted (it may be more than asked).
    LeaseGrant {
        revision: i64,
        ttl: i64,
    },
    /// The TTL the lease was renewed to; 0 or less: the lease was not
    /// found (it had expired or been revoked).
    LeaseKeepAlive {
        ttl: i64,
    },
    LeaseRevoke {
        revision: i64,
    },
}

impl Response {
    /// The response header's revision (none for a keep-alive).
    pub fn revision(&self) -> Option<i64> {
        match self {
            Response::Put { revision }
            | Response::Get { revision, .. }
            | Response::Delete { revision, .. }
            | Response::Txn { revision, .. }
            | Response::List { revision, .. }
            | Response::LeaseGrant { revision, .. }
            | Response::LeaseRevoke { revision } => Some(*revision),
            Response::LeaseKeepAlive { .. } => None,
        }
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(Response),
    /// An error or a timeout: indeterminate (the text is for the reader).
    Failed(String),
}

/// One client operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub client: usize,
    /// Nanoseconds since the run started, before the request was sent.
    pub invoked: u64,
    /// Nanoseconds since the run started, after the outcome arrived.
    pub completed: u64,
    pub request: Request,
    pub outcome: Outcome,
}

/// One event of a watch response.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    pub revision: i64,
    pub key: String,
    /// The value put, or None for a delete.
    pub value: Option<String>,
}

/// One response on a watch, as received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchResponse {
    /// Nanoseconds since the run started.
    pub received: u64,
    pub header_revision: i64,
    pub events: Vec<Event>,
    pub created: bool,
    pub canceled: bool,
    /// Nonzero when the watch was canceled because its start revision was
    /// compacted.
    pub compact_revision: i64,
}

impl WatchResponse {
    /// A progress notification: nothing but a revision (etcd's
    /// `IsProgressNotify`).
    pub fn is_progress(&self) -> bool {
        self.events.is_empty() && !self.created && !self.canceled && self.compact_revision == 0
    }
}

/// One watch, from its creation to the end of the run or of its stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Watch {
    pub client: usize,
    /// Keys watched: `[key, range_end)` as etcd takes them.
    pub key: String,
    pub range_end: String,
    /// The revision asked for (0: from the member's current revision + 1).
    pub start_revision: i64,
    pub responses: Vec<WatchResponse>,
}

impl Watch {
    pub fn covers(&self, key: &str) -> bool {
        if self.range_end.is_empty() {
            key == self.key
        } else {
            key >= self.key.as_str() && key < self.range_end.as_str()
        }
    }
}

/// Everything a run recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// The store's revision before any operation of the history.
    pub initial_revision: i64,
    /// The keys (of those the operations touch) that existed then.
    pub initial: BTreeMap<String, KeyValue>,
    pub operations: Vec<Operation>,
    pub watches: Vec<Watch>,
    /// Revisions compactions were requested at (whether or not the request
    /// was answered): a delete at exactly a compaction revision leaves no
    /// tombstone behind (etcd's compaction rule), so a watch starting there
    /// cannot see it.
    pub compactions: Vec<i64>,
}

impl History {
    /// The history as text, one operation or watch response per line, in
    /// the order recorded (for a failed run's `target/robustness/*.history`).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "initial revision {}", self.initial_revision);
        for (k, kv) in &self.initial {
            let _ = writeln!(out, "initial {k} = {kv:?}");
        }
        for (i, op) in self.operations.iter().enumerate() {
            let _ = writeln!(
                out,
                "op {i} client {} [{} .. {}] {:?} -> {:?}",
                op.client, op.invoked, op.completed, op.request, op.outcome
            );
        }
        let _ = writeln!(out, "compactions requested at {:?}", self.compactions);
        for (i, w) in self.watches.iter().enumerate() {
            let _ = writeln!(
                out,
                "watch {i} client {} [{:?}, {:?}) from {}",
                w.client, w.key, w.range_end, w.start_revision
            );
            for r in &w.responses {
                let _ = writeln!(out, "  {r:?}");
            }
        }
        out
    }

    /// Writes [`History::to_text`] to `path`, creating its directory.
    pub fn write_to(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, self.to_text())
    }
}
