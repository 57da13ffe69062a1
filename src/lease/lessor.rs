//! [`Lessor`]: the local, time-based half of lease state (etcd's lessor
//! minus the replicated map): when each lease expires, and whether this
//! member is the *primary* that may expire and renew leases.
//!
//! Plain code with no clock of its own: every method that needs the time
//! takes `now`, so tests drive it with made-up instants. The LeaseKeeper
//! actor ([`super::keeper`]) feeds it what was applied and what RaftStatus
//! says, and acts on what it returns.
//!
//! Rules, as in etcd 3.4:
//! * Only the primary tracks expiry. A member becomes primary once it is
//!   leader AND has applied the empty entry its term began with (so it has
//!   applied every grant and revoke of earlier terms); on promotion every
//!   lease expires at `now + extend + TTL` (etcd extends by one election
//!   timeout), so neither a restart nor a leader change expires a lease early.
//! * A non-primary holds every lease "forever"; on demotion expiries are dropped.
//! * Renew (keep-alive) resets expiry to `now + TTL` without touching the
//!   log; an expired lease cannot be renewed (its revoke is under way).
//! * An expired lease is handed out for revocation once, then again every
//!   `retry` until its revoke is applied (etcd's expiredLeaseRetryInterval).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::apply::LeaseChange;

pub use crate::msg::{LeaseTtl, NotAnswered};

#[derive(Debug, Clone, Copy)]
struct Tracked {
    /// Granted TTL in seconds.
    ttl: i64,
    /// Checkpointed remaining TTL (0 = none); used once, on promotion.
    remaining_ttl: i64,
    /// When the lease expires; None = never (not primary).
    expiry: Option<Instant>,
    /// Its entry in the check queue, if queued.
    check_at: Option<Instant>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Lessor {
    /// Every applied lease.
    leases: HashMap<i64, Tracked>,
    /// (when to look at it, lease id), earliest first; only while primary.
    queue: BTreeSet<(Instant, i64)>,
    /// How long after handing out an expired lease to hand it out again.
    retry: Duration,
    /// How much longer than its TTL a lease lives after a promotion.
    extend: Duration,
    /// The newest term whose opening empty entry this member has applied.
    noop_term: u64,
    /// The term this member is primary in; 0 = not primary.
    primary_term: u64,
}

impl Lessor {
    pub fn new(extend: Duration, retry: Duration) -> Lessor {
        Lessor {
            leases: HashMap::new(),
            queue: BTreeSet::new(),
            retry,
            extend,
            noop_term: 0,
            primary_term: 0,
        }
    }

    pub fn is_primary(&self) -> bool {
        self.primary_term != 0
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    fn schedule(&mut self, id: i64, at: Option<Instant>) {
        let Some(t) = self.leases.get_mut(&id) else {
            return;
        };
        if let Some(old) = t.check_at.take() {
            self.queue.remove(&(old, id));
        }
        t.check_at = at;
        if let Some(at) = at {
            self.queue.insert((at, id));
        }
    }

    /// Tracks lease `id` found in the store at start-up (not counted as a
    /// grant in `/metrics`, as etcd's lessor recovery counts none).
    pub fn recover(&mut self, id: i64, ttl: i64, now: Instant) {
        self.track(id, ttl, now);
    }

    fn track(&mut self, id: i64, ttl: i64, now: Instant) {
        let expiry = self.is_primary().then(|| now + secs(ttl));
        self.remove(id);
        self.leases.insert(
            id,
            Tracked {
                ttl,
                remaining_ttl: 0,
                expiry,
                check_at: None,
            },
        );
        self.schedule(id, expiry);
    }

    /// Follows one applied lease change (and counts it in `/metrics`).
    pub fn apply(&mut self, change: LeaseChange, now: Instant) {
        self.follow(change, now, true)
    }

    /// Follows a change that a raft snapshot's install made: the lessor
    /// takes the image's leases without counting them as grants or revokes
    /// (etcd's lessor recovers them from the backend the same way).
    pub fn apply_recovered(&mut self, change: LeaseChange, now: Instant) {
        self.follow(change, now, false)
    }

    fn follow(&mut self, change: LeaseChange, now: Instant, count: bool) {
        match change {
            LeaseChange::Granted { id, ttl } => {
                if count {
                    crate::io_metrics::LEASE.granted.inc();
                    crate::io_metrics::LEASE.ttl.observe(ttl as f64);
                }
                self.track(id, ttl, now);
            }
            LeaseChange::Revoked { id } => {
                if count && self.leases.contains_key(&id) {
                    crate::io_metrics::LEASE.revoked.inc();
                }
                self.remove(id);
            }
            LeaseChange::Checkpointed { id, remaining_ttl } => {
                if let Some(t) = self.leases.get_mut(&id) {
                    t.remaining_ttl = remaining_ttl;
                }
            }
        }
    }

    /// Forgets lease `id` (revoked, or found missing when revoking it).
    pub fn remove(&mut self, id: i64) {
        self.schedule(id, None);
        self.leases.remove(&id);
    }

    /// The entry that opened `term` has been applied on this member.
    pub fn noop_applied(&mut self, term: u64) {
        self.noop_term = self.noop_term.max(term);
    }

    /// Follows RaftStatus: promotes when this member leads the term whose
    /// opening entry it has applied, demotes when it no longer leads that term.
    /// Returns true if it was promoted by this call.
    pub fn observe(&mut self, is_leader: bool, term: u64, now: Instant) -> bool {
        let leading = is_leader && term != 0 && term == self.noop_term;
        if leading && self.primary_term != term {
            self.promote(term, now);
            return true;
        }
        if !leading && self.is_primary() {
            self.demote();
        }
        false
    }

    /// etcd's Promote: every lease expires `extend` + its (remaining) TTL from now.
    fn promote(&mut self, term: u64, now: Instant) {
        self.primary_term = term;
        let ids: Vec<i64> = self.leases.keys().copied().collect();
        for id in ids {
            let Some(t) = self.leases.get_mut(&id) else {
                continue;
            };
            let ttl = if t.remaining_ttl > 0 {
                t.remaining_ttl
            } else {
                t.ttl
            };
            let expiry = now + self.extend + secs(ttl);
            t.expiry = Some(expiry);
            self.schedule(id, Some(expiry));
        }
    }

    /// etcd's Demote: no expiry while not primary.
    fn demote(&mut self) {
        self.primary_term = 0;
        self.queue.clear();
        for t in self.leases.values_mut() {
            t.expiry = None;
            t.check_at = None;
        }
    }

    /// etcd's Renew: resets the expiry to `now + TTL` and returns the TTL.
    pub fn renew(&mut self, id: i64, now: Instant) -> Result<i64, NotAnswered> {
        if !self.is_primary() {
            return Err(NotAnswered::NotPrimary);
        }
        let t = self.leases.get_mut(&id).ok_or(NotAnswered::NotFound)?;
        if t.expiry.is_some_and(|e| e <= now) {
            return Err(NotAnswered::Expiring);
        }
        t.remaining_ttl = 0;
        let ttl = t.ttl;
        let expiry = now + secs(ttl);
        t.expiry = Some(expiry);
        self.schedule(id, Some(expiry));
        crate::io_metrics::LEASE.renewed.inc();
        Ok(ttl)
    }

    /// Granted and remaining TTL of lease `id` (only the primary knows).
    pub fn time_to_live(&self, id: i64, now: Instant) -> Result<LeaseTtl, NotAnswered> {
        if !self.is_primary() {
            return Err(NotAnswered::NotPrimary);
        }
        let t = self.leases.get(&id).ok_or(NotAnswered::NotFound)?;
        let remaining = match t.expiry {
            Some(e) if e >= now => (e - now).as_secs() as i64,
            Some(e) => -((now - e).as_secs() as i64),
            None => i64::MAX,
        };
        Ok(LeaseTtl {
            granted: t.ttl,
            remaining,
        })
    }

    /// Every lease id, soonest expiry first (etcd's Leases order), then by id.
    pub fn ids(&self) -> Vec<i64> {
        let mut all: Vec<(Option<Instant>, i64)> =
            self.leases.iter().map(|(&id, t)| (t.expiry, id)).collect();
        // None (never) sorts last.
        all.sort_by_key(|&(e, id)| (e.is_none(), e, id));
        all.into_iter().map(|(_, id)| id).collect()
    }

    /// Up to `limit` leases that have expired by `now` and should be revoked
    /// now; each is handed out again after `retry` if still not revoked.
    pub fn expired(&mut self, now: Instant, limit: usize) -> Vec<i64> {
        let mut out = Vec::new();
        if !self.is_primary() {
            return out;
        }
        while out.len() < limit {
            let Some(&(at, id)) = self.queue.first() else {
                break;
            };
            if at > now {
                break;
            }
            let expiry = self.leases.get(&id).and_then(|t| t.expiry);
            match expiry {
                Some(e) if e <= now => {
                    out.push(id);
                    self.schedule(id, Some(now + self.retry));
                }
                // Renewed since it was queued: look again at its expiry.
                other => self.schedule(id, other),
            }
        }
        out
    }
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64) * crate::failpoint::lease_ttl_multiplier()
        / crate::failpoint::lease_ttl_divisor()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXTEND: Duration = Duration::from_secs(1);
    const RETRY: Duration = Duration::from_secs(3);

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn grant(l: &mut Lessor, id: i64, ttl: i64, now: Instant) {
        l.apply(LeaseChange::Granted { id, ttl }, now);
    }

    /// A lessor that is primary in term 2 since `t0`.
    fn primary(t0: Instant) -> Lessor {
        let mut l = Lessor::new(EXTEND, RETRY);
        l.noop_applied(2);
        assert!(l.observe(true, 2, t0));
        l
    }

    #[test]
    fn a_lease_expires_after_its_ttl_and_is_retried_until_revoked() {
        let t0 = Instant::now();
        let mut l = primary(t0);
        grant(&mut l, 7, 5, t0);
        assert_eq!(l.expired(at(t0, 4_999), 10), Vec::<i64>::new());
        assert_eq!(l.expired(at(t0, 5_000), 10), vec![7]);
        // Handed out once; again only after the retry interval.
        assert_eq!(l.expired(at(t0, 5_100), 10), Vec::<i64>::new());
        assert_eq!(l.expired(at(t0, 8_000), 10), vec![7]);
        // The revoke is applied: gone for good.
        l.apply(LeaseChange::Revoked { id: 7 }, at(t0, 8_100));
        assert_eq!(l.expired(at(t0, 60_000), 10), Vec::<i64>::new());
        assert!(l.is_empty());
    }

    #[test]
    fn a_snapshot_install_is_followed_but_not_counted_as_grants_and_revokes() {
        let t0 = Instant::now();
        let mut l = primary(t0);
        let metrics = &crate::io_metrics::LEASE;
        let (granted, revoked) = (metrics.granted.get(), metrics.revoked.get());
        // Other tests in this process may grant a few leases meanwhile,
        // never a thousand.
        for id in 1..=1_000 {
            l.apply_recovered(LeaseChange::Granted { id, ttl: 5 }, t0);
        }
        assert!(
            metrics.granted.get() - granted < 1_000,
            "recovered leases counted as grants"
        );
        assert_eq!(
            l.expired(at(t0, 5_000), 2_000).len(),
            1_000,
            "the recovered leases are followed"
        );
        for id in 1..=1_000 {
            l.apply_recovered(LeaseChange::Revoked { id }, at(t0, 5_001));
        }
        assert!(
            metrics.revoked.get() - revoked < 1_000,
            "dropped leases counted as revokes"
        );
        assert!(l.is_empty());
        // An applied grant is counted.
        let granted = metrics.granted.get();
        grant(&mut l, 7, 5, t0);
        assert!(metrics.granted.get() > granted);
    }

    #[test]
    fn keep_alive_postpones_expiry_without_the_log() {
        let t0 = Instant::now();
        let mut l = primary(t0);
        grant(&mut l, 1, 10, t0);
        assert_eq!(l.renew(1, at(t0, 8_000)), Ok(10));
        assert_eq!(l.expired(at(t0, 12_000), 10), Vec::<i64>::new());
        let ttl = l.time_to_live(1, at(t0, 12_000)).expect("ttl");
        assert_eq!(
            ttl,
            LeaseTtl {
                granted: 10,
                remaining: 6
            }
        );
        assert_eq!(l.expired(at(t0, 18_000), 10), vec![1]);
        // Expired: no longer renewable, but not gone before the revoke
        // lands (its keys still exist): the keep-alive must wait, as
        // etcd's does. Found by the robustness checker: a keep-alive
        // answered "not found" while the lease's key was still readable.
        assert_eq!(l.renew(1, at(t0, 18_001)), Err(NotAnswered::Expiring));
        l.apply(LeaseChange::Revoked { id: 1 }, at(t0, 18_002));
        assert_eq!(l.renew(1, at(t0, 18_003)), Err(NotAnswered::NotFound));
        assert_eq!(l.renew(99, at(t0, 18_001)), Err(NotAnswered::NotFound));
    }

    #[test]
    fn only_the_promoted_leader_expires_or_renews() {
        let t0 = Instant::now();
        let mut l = Lessor::new(EXTEND, RETRY);
        grant(&mut l, 1, 2, t0);
        // Leader, but the opening entry of its term is not applied yet.
        assert!(!l.observe(true, 3, t0));
        assert_eq!(l.renew(1, t0), Err(NotAnswered::NotPrimary));
        assert_eq!(l.time_to_live(1, t0), Err(NotAnswered::NotPrimary));
        assert_eq!(l.expired(at(t0, 100_000), 10), Vec::<i64>::new());
        // Applied, but status still shows an old term.
        l.noop_applied(3);
        assert!(!l.observe(true, 2, t0));
        assert!(l.observe(true, 3, t0));
        assert!(!l.observe(true, 3, t0), "promoted once per term");
        assert!(l.is_primary());
        // Losing leadership demotes, and nothing expires meanwhile.
        l.observe(false, 4, at(t0, 1_000));
        assert!(!l.is_primary());
        assert_eq!(l.expired(at(t0, 100_000), 10), Vec::<i64>::new());
        assert_eq!(l.renew(1, at(t0, 100_000)), Err(NotAnswered::NotPrimary));
    }

    #[test]
    fn promotion_resets_every_expiry_to_extend_plus_ttl() {
        // A restart or leader change: leases come back from the store with
        // no expiry, and the new primary gives each its full TTL again.
        let t0 = Instant::now();
        let mut l = Lessor::new(EXTEND, RETRY);
        grant(&mut l, 1, 5, t0);
        grant(&mut l, 2, 30, t0);
        l.apply(
            LeaseChange::Checkpointed {
                id: 2,
                remaining_ttl: 10,
            },
            t0,
        );
        let t1 = at(t0, 100_000);
        l.noop_applied(5);
        assert!(l.observe(true, 5, t1));
        // Lease 1: 5 s TTL + 1 s extension; lease 2: 10 s checkpoint + 1 s.
        assert_eq!(
            l.expired(t1 + Duration::from_millis(5_999), 10),
            Vec::<i64>::new()
        );
        assert_eq!(l.expired(t1 + Duration::from_secs(6), 10), vec![1]);
        assert_eq!(l.ids(), vec![1, 2]);
        // Lease 1 is due again (retry), lease 2 for the first time.
        assert_eq!(l.expired(t1 + Duration::from_secs(11), 10), vec![1, 2]);
        // A later demotion and re-promotion starts over again.
        l.observe(false, 6, t1);
        l.noop_applied(7);
        let t2 = t1 + Duration::from_secs(50);
        assert!(l.observe(true, 7, t2));
        assert_eq!(
            l.time_to_live(1, t2).expect("ttl"),
            LeaseTtl {
                granted: 5,
                remaining: 6
            }
        );
    }

    #[test]
    fn expired_respects_the_limit_and_order() {
        let t0 = Instant::now();
        let mut l = primary(t0);
        for (id, ttl) in [(3, 3), (1, 1), (2, 2)] {
            grant(&mut l, id, ttl, t0);
        }
        assert_eq!(l.ids(), vec![1, 2, 3]);
        let now = at(t0, 10_000);
        assert_eq!(l.expired(now, 2), vec![1, 2]);
        assert_eq!(l.expired(now, 2), vec![3]);
    }

    #[test]
    fn time_to_live_truncates_like_etcd() {
        let t0 = Instant::now();
        let mut l = primary(t0);
        grant(&mut l, 1, 10, t0);
        let ttl = |now| l.time_to_live(1, now).expect("ttl").remaining;
        assert_eq!(ttl(at(t0, 0)), 10);
        assert_eq!(ttl(at(t0, 1)), 9);
        assert_eq!(ttl(at(t0, 9_999)), 0);
        assert_eq!(ttl(at(t0, 11_500)), -1);
    }
}
