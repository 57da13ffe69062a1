//! Test-only failpoints that make a core part panic, to prove the
//! supervision tree (see [`crate::supervise`]).
//!
//! `CAIRN_FAILPOINT_PANIC=<name>[@<n>]` in the server's environment makes the
//! n-th hit (default: the first) of the failpoint `<name>` panic, once per
//! process. Names: `raft-tick` (RaftNode's tick), `storage-apply` (Storage
//! applying a batch of committed entries), `lease-tick` (LeaseKeeper's tick),
//! `watch-applied` (WatchBroadcaster taking an applied batch),
//! `snapshot-install` (Storage installing a raft snapshot's image, before
//! its last write). Unset (always,
//! outside tests), a hit is one load of an initialised `OnceLock`.
//!
//! `CAIRN_FAILPOINT_STALE_READS=1` makes this member serve linearizable
//! Ranges from its local state without the read barrier ([`stale_reads`]): a
//! deliberate bug, so the robustness tests can show that their checker
//! catches the stale reads a follower cut off from the leader then serves.
//!
//! `CAIRN_FAILPOINT_AUTH_HOLD=<file>` holds the first judged Put until
//! `<file>` exists ([`auth_hold`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms a failpoint.
pub const PANIC_ENV: &str = "CAIRN_FAILPOINT_PANIC";

struct Armed {
    name: String,
    at: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var(PANIC_ENV).ok()?;
            let (name, at) = match v.split_once('@') {
                Some((name, at)) => (name.to_string(), at.parse().ok()?),
                None => (v, 1),
            };
            Some(Armed {
                name,
                at,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Panics if the failpoint `name` is armed and this is its n-th hit.
pub fn hit(name: &str) {
    let Some(a) = armed() else {
        return;
    };
    if a.name == name && a.hits.fetch_add(1, Ordering::SeqCst) + 1 == a.at {
        panic!("failpoint {PANIC_ENV}={name}@{}", a.at);
    }
}

/// The environment variable that makes linearizable reads skip the barrier.
pub const STALE_READS_ENV: &str = "CAIRN_FAILPOINT_STALE_READS";

/// Whether linearizable reads should skip the read barrier (a deliberate
/// bug, armed only by robustness tests through [`STALE_READS_ENV`]).
pub fn stale_reads() -> bool {
    static ARMED: OnceLock<bool> = OnceLock::new();
    *ARMED.get_or_init(|| std::env::var(STALE_READS_ENV).is_ok_and(|v| v == "1"))
}

/// The environment variable that corrupts this member's state store at
/// start-up ([`corrupt_state`]).
pub const CORRUPT_STATE_ENV: &str = "CAIRN_FAILPOINT_CORRUPT_STATE";

/// `CAIRN_FAILPOINT_CORRUPT_STATE=1`: before the store is loaded, rewrite
/// the value of the newest revision record in the state store behind raft's
/// back (etcd's corruption tests edit bbolt's file the same way), so this
/// member's HashKV differs from its peers' at the same revision. Returns the
/// revision it corrupted. Compiled into debug builds only: a release member
/// never has it.
#[cfg(debug_assertions)]
pub fn corrupt_state(
    backend: &dyn crate::mvcc::Backend,
) -> Result<Option<i64>, crate::error::StorageError> {
    use crate::mvcc::revision::Revision;
    use crate::mvcc::store::REV_PREFIX;
    use prost::Message as _;
    if std::env::var(CORRUPT_STATE_ENV).map_or(true, |v| v != "1") {
        return Ok(None);
    }
    let mut newest = None;
    for item in backend.scan_prefix(REV_PREFIX) {
        let (k, v) = item?;
        let (rev, tombstone) = Revision::from_bytes(&k[REV_PREFIX.len()..])?;
        if !tombstone {
            newest = Some((k, v, rev));
        }
    }
    let Some((key, value, rev)) = newest else {
        return Ok(None);
    };
    let mut kv = crate::proto::mvccpb::KeyValue::decode(value.as_slice())
        .map_err(|e| crate::error::StorageError::corrupt("revision record", e.to_string()))?;
    kv.value = format!("corrupted by {CORRUPT_STATE_ENV}").into_bytes();
    let mut batch = crate::mvcc::WriteBatch::new();
    batch.put(key, kv.encode_to_vec());
    backend.write_batch(batch)?;
    backend.flush()?;
    Ok(Some(rev.main))
}

/// Release builds have no corruption failpoint.
#[cfg(not(debug_assertions))]
pub fn corrupt_state(
    _: &dyn crate::mvcc::Backend,
) -> Result<Option<i64>, crate::error::StorageError> {
    Ok(None)
}

/// The environment variable that holds a judged write (see [`auth_hold`]).
pub const AUTH_HOLD_ENV: &str = "CAIRN_FAILPOINT_AUTH_HOLD";

/// Holds the first client Put judged with auth enabled, between the
/// judgement at the edge and its proposal, until the file named by
/// [`AUTH_HOLD_ENV`] exists, so that a test can change the auth store in
/// between (the race the apply-time check exists for) without relying on
/// timing. Logs `failpoint: holding a judged put` when it starts holding.
/// Unarmed, a call is one load of an initialised `OnceLock`.
pub async fn auth_hold() {
    static ARMED: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    static USED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let Some(release) = ARMED.get_or_init(|| std::env::var_os(AUTH_HOLD_ENV).map(Into::into))
    else {
        return;
    };
    if USED.swap(true, Ordering::SeqCst) {
        return;
    }
    tracing::warn!("failpoint: holding a judged put");
    while !release.exists() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
