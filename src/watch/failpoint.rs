//! A test-only failpoint: make a watch stream's sender panic once.
//!
//! Set `CAIRN_FAILPOINT_WATCH_SENDER_PANIC=<watch id>:<key>` in the server's
//! environment and the first sender that is about to deliver an event on
//! `<key>` to a watch with id `<watch id>` panics, once per process. The
//! integration test `watch_sender_panic_resumes_without_gap` uses it to prove
//! that a failed sender is detected and its watchers resume from their last
//! delivered revision while other watchers carry on. Unset (always, outside
//! tests), the check is one relaxed atomic load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms the failpoint.
pub const SENDER_PANIC_ENV: &str = "CAIRN_FAILPOINT_WATCH_SENDER_PANIC";

/// (watch id, key) parsed from the environment, if armed.
fn armed() -> Option<&'static (i64, Vec<u8>)> {
    static ARMED: OnceLock<Option<(i64, Vec<u8>)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var(SENDER_PANIC_ENV).ok()?;
            let (id, key) = v.split_once(':')?;
            Some((id.parse().ok()?, key.as_bytes().to_vec()))
        })
        .as_ref()
}

/// Panics (once per process) if the failpoint is armed for this watch and
/// one of these keys.
pub fn sender_panic<'a>(watch_id: i64, mut keys: impl Iterator<Item = &'a [u8]>) {
    static FIRED: AtomicBool = AtomicBool::new(false);
    let Some((id, key)) = armed() else {
        return;
    };
    if *id != watch_id || FIRED.load(Ordering::Relaxed) || !keys.any(|k| k == key.as_slice()) {
        return;
    }
    if !FIRED.swap(true, Ordering::SeqCst) {
        panic!("failpoint {SENDER_PANIC_ENV}: watch {watch_id} sender panics");
    }
}
