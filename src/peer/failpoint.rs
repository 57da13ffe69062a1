//! A test-only failpoint: make one peer link's sender panic once.
//!
//! Set `CAIRN_FAILPOINT_PEER_LINK_PANIC=<member id, hex>:<n>` in the
//! server's environment and the link to that member panics when it is about
//! to send its `n`-th batch (counted over the process's life), once per
//! process. The integration test `link_panic_restarts_the_link` uses it to
//! show that the link is restarted by its supervisor while raft and the other
//! links carry on. Unset (always, outside tests), the check is one relaxed
//! atomic load after a one-time parse. Only debug builds (what `cargo test`
//! builds) read the variable, as with every failpoint (`crate::failpoint`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms the failpoint.
pub const LINK_PANIC_ENV: &str = "CAIRN_FAILPOINT_PEER_LINK_PANIC";

/// (member id, batch number) parsed from the environment, if armed.
fn armed() -> Option<(u64, u64)> {
    static ARMED: OnceLock<Option<(u64, u64)>> = OnceLock::new();
    *ARMED.get_or_init(|| {
        let v = std::env::var(LINK_PANIC_ENV)
            .ok()
            .filter(|_| cfg!(debug_assertions))?;
        let (id, n) = v.split_once(':')?;
        Some((u64::from_str_radix(id, 16).ok()?, n.parse().ok()?))
    })
}

/// Called by the link to `to` before it sends a batch; panics (once per
/// process) on the armed batch of the armed member's link.
pub fn link_panic(to: u64) {
    static FIRED: AtomicBool = AtomicBool::new(false);
    static BATCHES: AtomicU64 = AtomicU64::new(0);
    let Some((id, n)) = armed() else {
        return;
    };
    if id != to || FIRED.load(Ordering::Relaxed) {
        return;
    }
    if BATCHES.fetch_add(1, Ordering::Relaxed) + 1 >= n && !FIRED.swap(true, Ordering::SeqCst) {
        panic!("failpoint {LINK_PANIC_ENV}: the link to {to:x} panics");
    }
}
