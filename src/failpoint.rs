//! Test-only failpoints: make a core part panic (to prove the supervision
//! tree, see [`crate::supervise`]), crash the whole process at a chosen
//! point, or sleep there (the robustness tests, docs/robustness.md).
//!
//! `CAIRN_FAILPOINT_PANIC=<name>[@<n>]` in the server's environment makes the
//! n-th hit (default: the first) of the failpoint `<name>` panic, once per
//! process. `CAIRN_FAILPOINT_CRASH=<name>[@<n>]` makes it abort the process
//! instead (no unwinding, no flush: a crash at exactly that point, like
//! etcd's gofail `panic` failpoints). `CAIRN_FAILPOINT_SLEEP=<name>:<ms>`
//! makes every hit block its thread for `<ms>` milliseconds (at
//! `raft-before-save`: a slow disk). Names: `raft-tick` (RaftNode's tick),
//! `raft-before-save` / `raft-after-save` (around the raft log write and its
//! fsync), `storage-apply` / `storage-applied` (before and after Storage
//! applies a batch of committed entries), `lease-tick` (LeaseKeeper's tick),
//! `watch-applied` (WatchBroadcaster taking an applied batch),
//! `snapshot-send` (a leader about to stream a raft snapshot to a follower),
//! `snapshot-send-chunk` (a leader handing on each 1 MiB of an image it reads),
//! `snapshot-install` (Storage installing a raft snapshot's image, before
//! its last write), `compact-delete` (physical compaction, before each
//! batch of deletions), `auth-sweep`, `peer-link-send` (a peer link about
//! to send a batch of raft messages: a restartable part).
//!
//! Only debug builds (what `cargo test` builds) read these variables: in a
//! release build every failpoint is compiled to nothing armed, and a hit is
//! a load of an initialised `OnceLock` (as it is in a debug build with none
//! set).
//!
//! `CAIRN_FAILPOINT_EARLY_LEASE_EXPIRY=1` makes leases expire at half their
//! TTL ([`lease_ttl_divisor`]): the other deliberate bug the robustness
//! tests must catch.
//!
//! `CAIRN_FAILPOINT_STALE_READS=1` makes this member serve linearizable
//! Ranges from its local state without the read barrier ([`stale_reads`]): a
//! deliberate bug, so the robustness tests can show that their checker
//! catches the stale reads a follower cut off from the leader then serves.
//!
//! `CAIRN_FAILPOINT_TRIGGER_DIR=<dir>` arms failpoints on a running member:
//! a hit of `<name>` panics if it can remove the file `<dir>/<name>` (so
//! once per file the test creates). At `peer-link-send` (a peer link about
//! to send a batch, inside its restartable sender) the link restarts and
//! the member lives on; at a failpoint of a core actor the member stops.
//!
//! `CAIRN_FAILPOINT_LATE_LEASE_EXPIRY=1` makes leases expire at four times
//! their TTL ([`lease_ttl_multiplier`]): a deliberate bug for the
//! robustness tests' final lease check.
//!
//! `CAIRN_FAILPOINT_AUTH_HOLD=<file>` holds the first judged Put until
//! `<file>` exists ([`auth_hold`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms a failpoint to panic.
pub const PANIC_ENV: &str = "CAIRN_FAILPOINT_PANIC";
/// The environment variable that arms a failpoint to abort the process.
pub const CRASH_ENV: &str = "CAIRN_FAILPOINT_CRASH";
/// The environment variable that makes a failpoint sleep at every hit.
pub const SLEEP_ENV: &str = "CAIRN_FAILPOINT_SLEEP";
/// The environment variable naming the directory of trigger files.
pub const TRIGGER_ENV: &str = "CAIRN_FAILPOINT_TRIGGER_DIR";

/// A failpoint variable's value; never in a release build.
fn var(name: &str) -> Option<String> {
    if cfg!(debug_assertions) {
        std::env::var(name).ok()
    } else {
        None
    }
}

struct Armed {
    name: String,
    at: u64,
    hits: AtomicU64,
}

impl Armed {
    /// `<name>[@<n>]`.
    fn parse(v: String) -> Option<Armed> {
        let (name, at) = match v.split_once('@') {
            Some((name, at)) => (name.to_string(), at.parse().ok()?),
            None => (v, 1),
        };
        Some(Armed {
            name,
            at,
            hits: AtomicU64::new(0),
        })
    }
    /// Whether this hit of `name` is the armed one.
    fn fires(&self, name: &str) -> bool {
        self.name == name && self.hits.fetch_add(1, Ordering::SeqCst) + 1 == self.at
    }
}

struct Armings {
    panic: Option<Armed>,
    crash: Option<Armed>,
    /// (name, how long each hit sleeps).
    sleep: Option<(String, std::time::Duration)>,
    /// Where trigger files appear.
    triggers: Option<std::path::PathBuf>,
}

fn armed() -> Option<&'static Armings> {
    static ARMED: OnceLock<Option<Armings>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let a = Armings {
                panic: var(PANIC_ENV).and_then(Armed::parse),
                crash: var(CRASH_ENV).and_then(Armed::parse),
                sleep: var(SLEEP_ENV).and_then(|v| {
                    let (name, ms) = v.split_once(':')?;
                    Some((
                        name.to_string(),
                        std::time::Duration::from_millis(ms.parse().ok()?),
                    ))
                }),
                triggers: var(TRIGGER_ENV).map(Into::into),
            };
            (a.panic.is_some() || a.crash.is_some() || a.sleep.is_some() || a.triggers.is_some())
                .then_some(a)
        })
        .as_ref()
}

/// A failpoint: sleeps if `name` is armed to sleep; aborts the process or
/// panics if it is armed to and this is its n-th hit.
pub fn hit(name: &str) {
    let Some(a) = armed() else {
        return;
    };
    if let Some((_, pause)) = a.sleep.as_ref().filter(|(n, _)| n == name) {
        std::thread::sleep(*pause);
    }
    if let Some(c) = a.crash.as_ref().filter(|c| c.fires(name)) {
        eprintln!("failpoint {CRASH_ENV}={name}@{}: aborting", c.at);
        std::process::abort();
    }
    if let Some(p) = a.panic.as_ref().filter(|p| p.fires(name)) {
        panic!("failpoint {PANIC_ENV}={name}@{}", p.at);
    }
    // Removing the file is what fires it: one hit per file, whatever the
    // threads.
    if let Some(dir) = &a.triggers {
        if std::fs::remove_file(dir.join(name)).is_ok() {
            panic!("failpoint {TRIGGER_ENV}: {name} triggered");
        }
    }
}

/// The environment variable that makes leases outlive their TTL.
pub const LATE_EXPIRY_ENV: &str = "CAIRN_FAILPOINT_LATE_LEASE_EXPIRY";

/// What the lessor multiplies every TTL by when it sets an expiry: 1, or 4
/// when [`LATE_EXPIRY_ENV`]` = 1` (a deliberate bug, so the robustness
/// tests can show that their final lease check catches leases that outlive
/// their TTL).
pub fn lease_ttl_multiplier() -> u32 {
    static ARMED: OnceLock<u32> = OnceLock::new();
    *ARMED.get_or_init(|| {
        if var(LATE_EXPIRY_ENV).is_some_and(|v| v == "1") {
            4
        } else {
            1
        }
    })
}

/// The environment variable that makes leases expire at half their TTL.
pub const EARLY_EXPIRY_ENV: &str = "CAIRN_FAILPOINT_EARLY_LEASE_EXPIRY";

/// What the lessor divides every TTL by when it sets an expiry: 1, or 2
/// when [`EARLY_EXPIRY_ENV`]` = 1` (a deliberate bug, so the robustness
/// tests can show that their checker catches leases expiring early).
pub fn lease_ttl_divisor() -> u32 {
    static ARMED: OnceLock<u32> = OnceLock::new();
    *ARMED.get_or_init(|| {
        if var(EARLY_EXPIRY_ENV).is_some_and(|v| v == "1") {
            2
        } else {
            1
        }
    })
}

/// The environment variable that makes linearizable reads skip the barrier.
pub const STALE_READS_ENV: &str = "CAIRN_FAILPOINT_STALE_READS";

/// Whether linearizable reads should skip the read barrier (a deliberate
/// bug, armed only by robustness tests through [`STALE_READS_ENV`]).
pub fn stale_reads() -> bool {
    static ARMED: OnceLock<bool> = OnceLock::new();
    *ARMED.get_or_init(|| var(STALE_READS_ENV).is_some_and(|v| v == "1"))
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
