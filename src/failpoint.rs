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
