//! The final lease check: leases must *end*. The linearizability model
//! checks that no lease expires early; it cannot check that one expires at
//! all (an expiry nobody observed is the same as a lease still alive). So
//! at the end of a run, when no client keeps anything alive any more, the
//! harness asks the cluster about every lease the traffic granted
//! (LeaseTimeToLive, again and again) and reads every key once more, and
//! this module judges what it saw:
//!
//! * every lease must be gone (TimeToLive answers TTL -1) by the latest
//!   moment it may expire: its TTL after the last moment anything renewed
//!   it (the grant's or a keep-alive's completion, acknowledged or not: a
//!   request that failed for its client may still have been served), or
//!   after leadership last changed, whichever is later (etcd's new leader
//!   renews every lease, `Promote`), plus one election timeout (etcd's
//!   promotion extension) and a slack for ticks, the revoke's own commit and
//!   a loaded machine;
//! * no key may still be attached to a lease that was already seen gone
//!   (the revoke deletes a lease's keys in the same step).
//!
//! Times are nanoseconds since the run started, as in the history.

use std::collections::BTreeMap;

use crate::history::{History, Outcome, Request, Response};

/// One LeaseTimeToLive answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub id: i64,
    /// When the answer arrived.
    pub at: u64,
    /// The remaining TTL; -1: the lease is gone (not found).
    pub ttl: i64,
}

/// A key the final read found attached to a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyLease {
    pub key: String,
    pub lease: i64,
    /// When the read was invoked.
    pub at: u64,
}

/// What the harness saw after the run, and the allowances.
#[derive(Clone, Debug, Default)]
pub struct Final {
    /// The last moment leadership was seen to change (or the faults were
    /// healed, if later): a new leader renews every lease.
    pub stable_since: u64,
    /// etcd's promotion extension: one election timeout.
    pub extend: u64,
    /// For lease ticks, the revoke's proposal and commit, a loaded machine.
    pub slack: u64,
    pub observations: Vec<Observation>,
    pub keys: Vec<KeyLease>,
}

/// What the history shows of one lease's life.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Life {
    /// The longest TTL it was granted or renewed to, in seconds.
    pub ttl: i64,
    /// The last completion of its grant or of a keep-alive that did not
    /// find it gone.
    pub renewed: u64,
}

/// Every lease the traffic granted (or tried to), and its life.
pub fn lives(history: &History) -> BTreeMap<i64, Life> {
    let mut lives: BTreeMap<i64, Life> = BTreeMap::new();
    for op in &history.operations {
        let (id, ttl) = match (&op.request, &op.outcome) {
            (Request::LeaseGrant { id, ttl }, Outcome::Ok(Response::LeaseGrant { ttl: t, .. })) => {
                (*id, (*ttl).max(*t))
            }
            (Request::LeaseGrant { id, ttl }, Outcome::Failed(_)) => (*id, *ttl),
            (Request::LeaseKeepAlive { id }, Outcome::Ok(Response::LeaseKeepAlive { ttl })) => {
                if *ttl <= 0 {
                    continue;
                }
                (*id, *ttl)
            }
            (Request::LeaseKeepAlive { id }, Outcome::Failed(_)) => (*id, 0),
            _ => continue,
        };
        let life = lives.entry(id).or_default();
        life.ttl = life.ttl.max(ttl);
        life.renewed = life.renewed.max(op.completed);
    }
    lives
}

/// The latest moment the lease may still be alive.
pub fn deadline(life: &Life, f: &Final) -> u64 {
    let ttl = u64::try_from(life.ttl.max(0)).unwrap_or(0) * 1_000_000_000;
    life.renewed.max(f.stable_since) + ttl + f.extend + f.slack
}

fn ms(ns: u64) -> String {
    format!("{:.0} ms", ns as f64 / 1e6)
}

/// The violations: leases alive past their deadline, keys outliving their
/// lease.
pub fn check(history: &History, f: &Final) -> Vec<String> {
    let lives = lives(history);
    let mut violations = Vec::new();
    let mut gone_at: BTreeMap<i64, u64> = BTreeMap::new();
    for o in &f.observations {
        if o.ttl < 0 {
            let g = gone_at.entry(o.id).or_insert(o.at);
            *g = (*g).min(o.at);
        }
    }
    for (id, life) in &lives {
        let due = deadline(life, f);
        let late = f
            .observations
            .iter()
            .filter(|o| o.id == *id && o.ttl >= 0 && o.at > due)
            .max_by_key(|o| o.at);
        if let Some(o) = late {
            violations.push(format!(
                "lease {id:x} (TTL {} s, last renewed at {}, leadership stable since {}) \
                 still alive at {} (TimeToLive {} s): {} past the latest moment it may expire",
                life.ttl,
                ms(life.renewed),
                ms(f.stable_since),
                ms(o.at),
                o.ttl,
                ms(o.at - due)
            ));
        }
    }
    for k in f.keys.iter().filter(|k| k.lease != 0) {
        if let Some(gone) = gone_at.get(&k.lease).filter(|g| **g <= k.at) {
            violations.push(format!(
                "key {:?} still attached to lease {:x} at {}, though the lease was gone at {}",
                k.key,
                k.lease,
                ms(k.at),
                ms(*gone)
            ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Operation;

    const S: u64 = 1_000_000_000;

    fn op(span: (u64, u64), request: Request, outcome: Outcome) -> Operation {
        Operation {
            client: 1,
            invoked: span.0,
            completed: span.1,
            request,
            outcome,
        }
    }

    /// A lease of 2 s granted at 1 s, kept alive (to 2 s) at 3 s.
    fn history() -> History {
        History {
            operations: vec![
                op(
                    (S, S + 5),
                    Request::LeaseGrant { id: 7, ttl: 2 },
                    Outcome::Ok(Response::LeaseGrant {
                        revision: 1,
                        ttl: 2,
                    }),
                ),
                op(
                    (3 * S, 3 * S + 5),
                    Request::LeaseKeepAlive { id: 7 },
                    Outcome::Ok(Response::LeaseKeepAlive { ttl: 2 }),
                ),
            ],
            ..History::default()
        }
    }

    fn fin(observations: Vec<(u64, i64)>) -> Final {
        Final {
            stable_since: 0,
            extend: S / 2,
            slack: S,
            observations: observations
                .into_iter()
                .map(|(at, ttl)| Observation { id: 7, at, ttl })
                .collect(),
            keys: Vec::new(),
        }
    }

    #[test]
    fn a_lease_gone_within_its_ttl_and_allowances_passes() {
        // Renewed at 3 s + 5 ns, TTL 2 s, extend 0.5 s, slack 1 s.
        let f = fin(vec![(4 * S, 1), (6 * S, 0), (6 * S + S / 2, -1)]);
        assert_eq!(deadline(&lives(&history())[&7], &f), 6 * S + S / 2 + 5);
        assert!(check(&history(), &f).is_empty());
    }

    #[test]
    fn a_lease_outliving_its_ttl_is_reported() {
        let f = fin(vec![(5 * S, 1), (7 * S, 1), (8 * S, -1)]);
        let v = check(&history(), &f);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].contains("lease 7") && v[0].contains("still alive"),
            "{v:?}"
        );
    }

    #[test]
    fn a_leadership_change_renews_every_lease() {
        // A new leader at 5 s: alive at 7 s is allowed (5 + 2 + 0.5 + 1).
        let mut f = fin(vec![(7 * S, 1), (8 * S, -1)]);
        f.stable_since = 5 * S;
        assert!(check(&history(), &f).is_empty());
        // ... but not at 9 s.
        f.observations.push(Observation {
            id: 7,
            at: 9 * S,
            ttl: 1,
        });
        assert_eq!(check(&history(), &f).len(), 1);
    }

    #[test]
    fn a_failed_keep_alive_may_still_have_renewed_the_lease() {
        let mut h = history();
        h.operations.push(op(
            (4 * S, 5 * S),
            Request::LeaseKeepAlive { id: 7 },
            Outcome::Failed("timed out".into()),
        ));
        // Renewed at 5 s at the latest: alive at 8 s is allowed.
        assert!(check(&h, &fin(vec![(8 * S, 1), (9 * S, -1)])).is_empty());
    }

    #[test]
    fn a_key_outliving_its_lease_is_reported() {
        let mut f = fin(vec![(5 * S, -1)]);
        f.keys.push(KeyLease {
            key: "/robust/l0".into(),
            lease: 7,
            at: 6 * S,
        });
        let v = check(&history(), &f);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("/robust/l0"), "{v:?}");
        // A key read before the lease ended is fine.
        f.keys[0].at = 4 * S;
        assert!(check(&history(), &f).is_empty());
    }
}
