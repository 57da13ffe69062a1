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
}

/// What the nemesis did, with times (ms since the run started), for the
/// report and for a failed run's history file.
pub type Log = Vec<String>;

/// Injects faults from `faults` (round-robin) until `deadline`; every fault
/// is healed before the next, and everything is healed on return.
pub fn run(
    cluster: Arc<Mutex<Cluster>>,
    faults: &[Fault],
    deadline: Instant,
    started: Instant,
    seed: u64,
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
        if Instant::now() + quiet + Duration::from_secs(2) >= deadline || faults.is_empty() {
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
