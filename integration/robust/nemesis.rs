//! The nemesis: faults injected into the members while traffic flows, each
//! held for a while and then healed, until the deadline.
//!
//! | fault | how |
//! |---|---|
//! | `KillRandom`, `KillLeader` | SIGKILL one member, restart it on its data dir |
//! | `KillAll` | SIGKILL every member at once, restart them all |
//! | `Pause` | SIGSTOP a member (its leases, heartbeats, clients all freeze), SIGCONT |
//! | `IsolateLeader`, `IsolateFollower` | block the member's peer proxy: it hears no peer |
//! | `MoveLeader` | Maintenance MoveLeader to another member, under load |
//! | `Delay` | a member's peer proxy holds every chunk 50–300 ms |
//! | `Blackhole` | a member's peer proxy swallows every byte, both ways, closing nothing (a silent loss) |
//! | `LinkPanic` | the leader's next peer link send panics (`CAIRN_FAILPOINT_TRIGGER_DIR`); the link must restart by itself, the member must not exit |
//! | `Crash(name)` | restart a member with `CAIRN_FAILPOINT_CRASH=name@n`; once it has aborted there (or the hold is over), restart it clean |
//! | `Crash("snapshot-send")` | kill a follower; restart the others one by one with the failpoint armed; let the log move on; restart the follower, so the leader must send it a snapshot and crashes doing so; restart everyone clean |
//! | `Replace` | member replace: remove a follower, wipe it, add it back fresh (`--initial-cluster-state existing`), under load |
//! | `SlowDisk` | restart a member with `CAIRN_FAILPOINT_SLEEP=raft-before-save:<ms>` (every raft log write 20–100 ms slower), then clean |

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cluster::Cluster;
use super::traffic::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    KillRandom,
    KillLeader,
    KillAll,
    Pause,
    IsolateLeader,
    IsolateFollower,
    MoveLeader,
    Delay,
    /// Bytes to and from a member's peer listener are accepted and
    /// dropped; no connection is closed.
    Blackhole,
    /// A panic inside a peer link's sender (a restartable part): the
    /// member must live on and the link reconnect.
    LinkPanic,
    /// A crash failpoint inside cairn (`src/failpoint.rs`), e.g.
    /// `raft-before-save`.
    Crash(&'static str),
    SlowDisk,
    Replace,
}

/// What the nemesis did, with times (ms since the run started), for the
/// report and for a failed run's history file.
pub type Log = Vec<String>;

/// Marks a log line saying a member did not survive a fault it must
/// survive (the run then fails).
pub const NOT_SURVIVED: &str = "FAULT NOT SURVIVED";

/// What a member logs when a peer link's sender panicked (src/peer/link.rs).
const LINK_PANICKED: &str = "peer link sender panicked";

/// Injects faults from `faults` (round-robin) until `deadline`, or until
/// `enough` says the traffic has done enough; every fault is healed before
/// the next, and everything is healed on return.
pub fn run(
    cluster: Arc<Mutex<Cluster>>,
    faults: &[Fault],
    deadline: Instant,
    started: Instant,
    seed: u64,
    enough: impl Fn() -> bool,
) -> Log {
    let mut rng = Rng::new(seed);
    let mut log = Log::new();
    let stamp = |log: &mut Log, text: String| {
        log.push(format!("{:>7} ms  {text}", started.elapsed().as_millis()));
    };
    let mut turn = 0;
    loop {
        // Let traffic run undisturbed for a while between faults.
        let quiet = rng.millis(300, 1_000);
        if Instant::now() + quiet + Duration::from_secs(2) >= deadline
            || faults.is_empty()
            || enough()
        {
            break;
        }
        std::thread::sleep(quiet);
        let fault = faults[turn % faults.len()];
        turn += 1;
        let hold = rng.millis(500, 2_000);
        let mut c = cluster.lock().expect("cluster lock");
        let n = c.members.len();
        let random = rng.below(n as u64) as usize;
        let leader = c.leader();
        match fault {
            Fault::KillRandom | Fault::KillLeader => {
                let i = if fault == Fault::KillLeader {
                    leader.unwrap_or(random)
                } else {
                    random
                };
                c.kill(i);
                stamp(&mut log, format!("{fault:?}: killed m{}", i + 1));
                drop(c);
                std::thread::sleep(hold);
                let mut c = cluster.lock().expect("cluster lock");
                c.spawn(i);
                c.wait_ready(i);
                stamp(&mut log, format!("restarted m{}", i + 1));
            }
            Fault::KillAll => {
                for i in 0..n {
                    c.kill(i);
                }
                stamp(&mut log, "KillAll: killed every member".to_string());
                drop(c);
                std::thread::sleep(hold);
                let mut c = cluster.lock().expect("cluster lock");
                c.heal_all();
                stamp(&mut log, "restarted every member".to_string());
            }
            Fault::Pause => {
                c.pause(random);
                stamp(&mut log, format!("Pause: SIGSTOP m{}", random + 1));
                drop(c);
                std::thread::sleep(hold);
                cluster.lock().expect("cluster lock").resume(random);
                stamp(&mut log, format!("SIGCONT m{}", random + 1));
            }
            Fault::IsolateLeader | Fault::IsolateFollower => {
                let i = match (fault, leader) {
                    (Fault::IsolateLeader, Some(l)) => l,
                    (_, Some(l)) => (l + 1 + rng.below(n as u64 - 1) as usize) % n,
                    (_, None) => random,
                };
                c.members[i].proxy.block();
                stamp(&mut log, format!("{fault:?}: m{} hears no peer", i + 1));
                drop(c);
                std::thread::sleep(hold);
                cluster.lock().expect("cluster lock").members[i]
                    .proxy
                    .heal();
                stamp(&mut log, format!("healed m{}", i + 1));
            }
            Fault::Delay => {
                let ms = 50 + rng.below(251);
                c.members[random].proxy.delay(ms);
                stamp(
                    &mut log,
                    format!("Delay: m{} peers' traffic held {ms} ms", random + 1),
                );
                drop(c);
                std::thread::sleep(hold);
                cluster.lock().expect("cluster lock").members[random]
                    .proxy
                    .heal();
                stamp(&mut log, format!("healed m{}", random + 1));
            }
            Fault::Blackhole => {
                let swallowed = c.members[random].proxy.dropped();
                c.members[random].proxy.blackhole();
                stamp(
                    &mut log,
                    format!("Blackhole: m{}'s peer traffic silently dropped", random + 1),
                );
                drop(c);
                std::thread::sleep(hold);
                let c = cluster.lock().expect("cluster lock");
                c.members[random].proxy.heal();
                let swallowed = c.members[random].proxy.dropped() - swallowed;
                stamp(
                    &mut log,
                    format!("healed m{} ({swallowed} bytes swallowed)", random + 1),
                );
            }
            Fault::LinkPanic if n > 1 => {
                // The leader's links carry the appends: the busiest sends.
                let i = leader.unwrap_or(random);
                let before = c.logs(i).matches(LINK_PANICKED).count();
                let file = c.trigger(i, "peer-link-send");
                stamp(
                    &mut log,
                    format!("LinkPanic: m{}'s next peer link send panics", i + 1),
                );
                drop(c);
                let fired = crate::common::wait_until(hold * 3, || !file.exists());
                let _ = std::fs::remove_file(&file);
                // The link restarts after a backoff of at most a second.
                let reconnected = fired
                    && crate::common::wait_until(Duration::from_secs(10), || {
                        let logs = cluster.lock().expect("cluster lock").logs(i);
                        let mut panics = logs.match_indices(LINK_PANICKED).skip(before);
                        panics.next().is_some_and(|(at, _)| {
                            // The same link (remote_peer_id=…) connected again.
                            let mut lines = logs[at..].lines();
                            let peer = lines.next().and_then(|l| {
                                l.split_whitespace()
                                    .find(|w| w.starts_with("remote_peer_id="))
                            });
                            peer.is_some_and(|p| {
                                lines.any(|l| l.contains("peer link connected") && l.contains(p))
                            })
                        })
                    });
                let mut c = cluster.lock().expect("cluster lock");
                let exited = c.exited(i);
                let outcome = match (fired, exited, reconnected) {
                    (false, false, _) => "the failpoint was not reached".to_string(),
                    (true, false, true) => {
                        "its link panicked and reconnected; the member lives on".to_string()
                    }
                    (_, true, _) => format!("{NOT_SURVIVED}: the member exited"),
                    (true, false, false) => {
                        format!("{NOT_SURVIVED}: its link panicked and did not reconnect")
                    }
                };
                stamp(&mut log, format!("m{}: {outcome}", i + 1));
                if exited {
                    c.spawn(i);
                    c.wait_ready(i);
                }
            }
            Fault::LinkPanic => stamp(&mut log, "LinkPanic: one member, no link".to_string()),
            Fault::Crash("snapshot-send") if n > 1 => {
                let arm = "snapshot-send@1".to_string();
                let f = match leader {
                    Some(l) => (l + 1 + rng.below(n as u64 - 1) as usize) % n,
                    None => random,
                };
                c.kill(f);
                for j in (0..n).filter(|&j| j != f) {
                    c.kill(j);
                    c.spawn_with(j, &[("CAIRN_FAILPOINT_CRASH".to_string(), arm.clone())]);
                    c.wait_ready(j);
                }
                stamp(
                    &mut log,
                    format!("Crash: m{} killed, the others restarted with {arm}", f + 1),
                );
                drop(c);
                std::thread::sleep(hold);
                cluster.lock().expect("cluster lock").spawn(f);
                stamp(
                    &mut log,
                    format!("m{} restarted: it needs a snapshot", f + 1),
                );
                let crashed = crate::common::wait_until(hold * 3, || {
                    let mut c = cluster.lock().expect("cluster lock");
                    (0..n).filter(|&j| j != f).any(|j| c.exited(j))
                });
                let mut c = cluster.lock().expect("cluster lock");
                for j in (0..n).filter(|&j| j != f) {
                    c.kill(j);
                    c.spawn(j);
                }
                for j in 0..n {
                    c.wait_ready(j);
                }
                stamp(
                    &mut log,
                    format!(
                        "{}; everyone restarted clean",
                        if crashed {
                            "the leader crashed sending the snapshot"
                        } else {
                            "no snapshot was sent"
                        }
                    ),
                );
            }
            Fault::Crash(name) => {
                // The snapshot is sent by the leader; the rest anywhere.
                let i = if name == "snapshot-send" {
                    leader.unwrap_or(random)
                } else {
                    random
                };
                // Raft writes and applies come by the dozen a second;
                // compaction passes every 700 ms.
                let at = 1 + rng.below(if name.starts_with("compact") { 2 } else { 20 });
                let arm = format!("{name}@{at}");
                c.kill(i);
                c.spawn_with(i, &[("CAIRN_FAILPOINT_CRASH".to_string(), arm.clone())]);
                stamp(&mut log, format!("Crash: m{} restarted with {arm}", i + 1));
                drop(c);
                let crashed = crate::common::wait_until(hold * 3, || {
                    cluster.lock().expect("cluster lock").exited(i)
                });
                let mut c = cluster.lock().expect("cluster lock");
                c.kill(i);
                c.spawn(i);
                c.wait_ready(i);
                stamp(
                    &mut log,
                    format!(
                        "m{} {}; restarted clean",
                        i + 1,
                        if crashed {
                            "crashed at the failpoint"
                        } else {
                            "did not reach it"
                        }
                    ),
                );
            }
            Fault::SlowDisk => {
                let ms = 20 + rng.below(81);
                let arm = format!("raft-before-save:{ms}");
                c.kill(random);
                c.spawn_with(
                    random,
                    &[("CAIRN_FAILPOINT_SLEEP".to_string(), arm.clone())],
                );
                c.wait_ready(random);
                stamp(
                    &mut log,
                    format!("SlowDisk: m{} restarted with {arm}", random + 1),
                );
                drop(c);
                std::thread::sleep(hold);
                let mut c = cluster.lock().expect("cluster lock");
                c.kill(random);
                c.spawn(random);
                c.wait_ready(random);
                stamp(&mut log, format!("m{} restarted clean", random + 1));
            }
            Fault::Replace => {
                let Some(l) = leader else {
                    stamp(&mut log, "Replace: no agreed leader, skipped".to_string());
                    continue;
                };
                let f = (l + 1 + rng.below(n as u64 - 1) as usize) % n;
                let r = c.replace(f, l);
                stamp(&mut log, format!("Replace: {r:?}"));
            }
            Fault::MoveLeader => {
                let Some(l) = leader else {
                    stamp(
                        &mut log,
                        "MoveLeader: no agreed leader, skipped".to_string(),
                    );
                    continue;
                };
                let to = (l + 1 + rng.below(n as u64 - 1) as usize) % n;
                let r = c.move_leader(l, to);
                stamp(
                    &mut log,
                    format!("MoveLeader m{} -> m{}: {r:?}", l + 1, to + 1),
                );
            }
        }
    }
    cluster.lock().expect("cluster lock").heal_all();
    stamp(&mut log, "healed everything".to_string());
    log
}
