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
//! `snapshot-install` (Storage installing a raft snapshot's image, before
//! its last write), `compact-delete` (physical compaction, before each
//! batch of deletions), `auth-sweep`.
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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms a failpoint to panic.
pub const PANIC_ENV: &str = "CAIRN_FAILPOINT_PANIC";
/// The environment variable that arms a failpoint to abort the process.
pub const CRASH_ENV: &str = "CAIRN_FAILPOINT_CRASH";
/// The environment variable that makes a failpoint sleep at every hit.
pub const SLEEP_ENV: &str = "CAIRN_FAILPOINT_SLEEP";

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
            };
            (a.panic.is_some() || a.crash.is_some() || a.sleep.is_some()).then_some(a)
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
