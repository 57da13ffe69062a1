//! Corruption checks between members (etcd's `etcdserver/corrupt.go`).
//!
//! Every member's applied state is a deterministic function of the raft
//! log, so at one revision (and one compact revision) every member's HashKV
//! must be the same. Two checks compare them:
//!
//! * **At start-up** (`--initial-corrupt-check`, 3.4's
//!   `--experimental-initial-corrupt-check`): before this member joins raft
//!   or serves anything, it hashes its state store at its current revision
//!   and asks every peer for its HashKV at that revision. A peer with the
//!   same compact revision and another hash means this member diverged: it
//!   refuses to start with etcd's error, `<id> found data inconsistency with
//!   peers`. Peers that cannot answer (down, behind, compacted past the
//!   revision) are logged and skipped, as etcd does, so a cluster whose
//!   members all start at once is not blocked.
//! * **Periodically on the leader** (`--corrupt-check-time`, 3.4's
//!   `--experimental-corrupt-check-time`): the leader hashes its state, asks
//!   every follower for its hash at that revision, hashes again, and when a
//!   follower is ahead of it, compacted further, or has another hash at the
//!   same compact revision, proposes the CORRUPT alarm for that member
//!   through raft. The alarm is replicated state: from then on every
//!   member's apply refuses KV writes with `etcdserver: corrupt cluster`
//!   (`crate::apply`), and `etcdctl alarm list` shows it.
//!
//! Peers answer over the peer gRPC service (`cairnpb.Peer/HashKv` on
//! `--listen-peer-urls`, with the peer TLS settings), where etcd uses its
//! peer HTTP `/members/hashkv`: it needs no client credentials when auth is
//! on, and the member list it asks is the raft configuration's.
//!
//! The decisions ([`initial_findings`], [`periodic_suspect`]) are plain
//! functions of hashes, tested without a network.

use std::sync::Arc;
use std::time::Duration;

use tonic::Code;

use crate::error::EtcdError;
use crate::msg::RaftClient;
use crate::mvcc::{HashKv, Store};
use crate::proto::cairnpb::peer_client::PeerClient;
use crate::proto::cairnpb::{PeerHashKvRequest, PeerHashKvResponse};
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::{AlarmRequest, AlarmType};

/// One peer's answer to "your HashKV at revision R".
#[derive(Debug, Clone)]
pub struct PeerHash {
    pub id: u64,
    pub urls: Vec<String>,
    pub answer: Result<PeerHashKvResponse, PeerError>,
}

/// Why a peer gave no hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerError {
    /// The peer has not reached the revision yet (etcd's ErrFutureRev).
    Behind,
    /// The peer compacted past the revision (etcd's ErrCompacted).
    Compacted,
    /// Unreachable, another cluster, or any other failure.
    Other(String),
}

/// How the peers are reached.
#[derive(Clone)]
pub struct Peers {
    pub cluster_id: u64,
    /// Peer TLS (plain TCP for `http://` peer URLs).
    pub connector: crate::tls::client::Connector,
    /// Per request (connect and answer).
    pub timeout: Duration,
}

impl Peers {
    /// Asks every member in `members` (id, peer URLs), all at once, for its
    /// HashKV at `revision`; each member's URLs are tried in turn.
    pub async fn hashes(&self, members: &[(u64, Vec<String>)], revision: i64) -> Vec<PeerHash> {
        let asks = members.iter().map(|(id, urls)| async move {
            let mut answer = Err(PeerError::Other("no peer URL".into()));
            for url in urls {
                answer = self.ask(url, revision).await;
                if !matches!(answer, Err(PeerError::Other(_))) {
                    break;
                }
            }
            PeerHash {
                id: *id,
                urls: urls.clone(),
                answer,
            }
        });
        futures::future::join_all(asks).await
    }

    async fn ask(&self, url: &str, revision: i64) -> Result<PeerHashKvResponse, PeerError> {
        let other = |e: &dyn std::fmt::Display| PeerError::Other(e.to_string());
        let channel = crate::peer::link::peer_endpoint(url, self.timeout)
            .map_err(|e| other(&e))?
            .timeout(self.timeout)
            .connect_with_connector(self.connector.clone())
            .await
            .map_err(|e| other(&e))?;
        let asked = PeerClient::new(channel)
            .hash_kv(PeerHashKvRequest {
                cluster_id: self.cluster_id,
                revision,
            })
            .await;
        match asked {
            Ok(r) => Ok(r.into_inner()),
            Err(s) if s.code() == Code::OutOfRange => {
                if s.message() == EtcdError::FutureRev.to_string() {
                    Err(PeerError::Behind)
                } else {
                    Err(PeerError::Compacted)
                }
            }
            Err(s) => Err(PeerError::Other(s.message().to_string())),
        }
    }
}

/// What the start-up check concluded about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Same revision, same compact revision, another hash: corruption.
    HashMismatch { peer: u64, hash: u32 },
    /// Another hash, but the peer compacted to another revision, so the
    /// hashes cannot be compared.
    CompactMismatch { peer: u64, compact_revision: i64 },
    /// The peer has not reached this member's revision.
    PeerBehind { peer: u64 },
    /// The peer compacted past this member's revision.
    LocalBehind { peer: u64 },
    /// No answer.
    Unreachable { peer: u64, cause: String },
    /// Same hash.
    Agrees { peer: u64 },
}

/// etcd's `CheckInitialHashKV` rule, peer by peer.
pub fn initial_findings(local: &HashKv, peers: &[PeerHash]) -> Vec<Finding> {
    peers
        .iter()
        .map(|p| match &p.answer {
            Ok(r) if r.hash == local.hash => Finding::Agrees { peer: p.id },
            Ok(r) if r.compact_revision == local.compact_revision => Finding::HashMismatch {
                peer: p.id,
                hash: r.hash,
            },
            Ok(r) => Finding::CompactMismatch {
                peer: p.id,
                compact_revision: r.compact_revision,
            },
            Err(PeerError::Behind) => Finding::PeerBehind { peer: p.id },
            Err(PeerError::Compacted) => Finding::LocalBehind { peer: p.id },
            Err(PeerError::Other(cause)) => Finding::Unreachable {
                peer: p.id,
                cause: cause.clone(),
            },
        })
        .collect()
}

/// The start-up check: refuses (etcd's error) when a peer holds another
/// hash at this member's revision and compact revision. `members` lists the
/// others (id, peer URLs).
pub async fn check_at_start(
    store: Arc<Store>,
    local_id: u64,
    members: &[(u64, Vec<String>)],
    peers: &Peers,
) -> anyhow::Result<()> {
    let me = format!("{local_id:016x}");
    tracing::info!(local_member_id = %me, timeout = ?peers.timeout, "starting initial corruption check");
    let local = tokio::task::spawn_blocking(move || store.hash_kv(0))
        .await?
        .map_err(|e| anyhow::anyhow!("hashing the state store: {e:?}"))?;
    let answers = peers.hashes(members, local.current_revision).await;
    let mut mismatches = 0;
    for (finding, p) in initial_findings(&local, &answers).into_iter().zip(&answers) {
        let peer = format!("{:016x}", p.id);
        let (rev, crev, hash) = (local.current_revision, local.compact_revision, local.hash);
        match finding {
            Finding::HashMismatch { hash: theirs, .. } => {
                mismatches += 1;
                tracing::error!(local_member_id = %me, local_member_revision = rev, local_member_compact_revision = crev, local_member_hash = hash, remote_peer_id = %peer, remote_peer_endpoints = ?p.urls, remote_peer_hash = theirs, "found different hash values from remote peer");
            }
            Finding::CompactMismatch {
                compact_revision, ..
            } => {
                tracing::warn!(local_member_id = %me, local_member_revision = rev, local_member_compact_revision = crev, remote_peer_id = %peer, remote_peer_compact_revision = compact_revision, "found different compact revision values from remote peer");
            }
            Finding::PeerBehind { .. } => {
                tracing::warn!(local_member_id = %me, local_member_revision = rev, remote_peer_id = %peer, "cannot fetch hash from slow remote peer");
            }
            Finding::LocalBehind { .. } => {
                tracing::warn!(local_member_id = %me, local_member_revision = rev, remote_peer_id = %peer, "cannot fetch hash from remote peer; local member is behind");
            }
            Finding::Unreachable { cause, .. } => {
                tracing::warn!(local_member_id = %me, remote_peer_id = %peer, remote_peer_endpoints = ?p.urls, cause = %cause, "failed hash kv request");
            }
            Finding::Agrees { .. } => {}
        }
    }
    anyhow::ensure!(mismatches == 0, "{me} found data inconsistency with peers");
    tracing::info!(local_member_id = %me, "initial corruption checking passed; no corruption");
    Ok(())
}

/// etcd's `checkHashKV` rule on the leader: `before` and `after` are the
/// leader's hashes taken before and after asking the peers at
/// `before.current_revision`. Returns the first member to alarm, with why.
pub fn periodic_suspect(
    local_id: u64,
    before: &HashKv,
    after: &HashKv,
    peers: &[PeerHash],
) -> Option<(u64, &'static str)> {
    if after.hash != before.hash
        && after.current_revision == before.current_revision
        && after.compact_revision == before.compact_revision
    {
        return Some((local_id, "the leader's hash changed at the same revision"));
    }
    for p in peers {
        let Ok(r) = &p.answer else { continue };
        if r.revision > after.current_revision {
            return Some((
                p.id,
                "revision from follower must be less than or equal to leader's",
            ));
        }
        if r.compact_revision > after.compact_revision {
            return Some((
                p.id,
                "compact revision from follower must be less than or equal to leader's",
            ));
        }
        if r.compact_revision == before.compact_revision && r.hash != before.hash {
            return Some((p.id, "same compact revision then hashes must match"));
        }
    }
    None
}

/// The periodic check, until the process exits: every `interval`, on the
/// leader only, compare the followers' hashes with the leader's and raise
/// the CORRUPT alarm (through raft) for a member that diverged.
pub async fn monitor(
    interval: Duration,
    store: Arc<Store>,
    raft: RaftClient,
    directory: crate::peer::Directory,
    peers: Peers,
    local_id: u64,
) {
    tracing::info!(interval = ?interval, "enabled corruption checking");
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if !raft.is_leader() {
            continue;
        }
        if let Err(e) = check_once(&store, &raft, &directory, &peers, local_id).await {
            tracing::debug!(cause = %e, "failed to check hash KV");
        }
    }
}

async fn hash_now(store: &Arc<Store>) -> anyhow::Result<HashKv> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.hash_kv(0))
        .await?
        .map_err(|e| anyhow::anyhow!("hashing the state store: {e:?}"))
}

async fn check_once(
    store: &Arc<Store>,
    raft: &RaftClient,
    directory: &crate::peer::Directory,
    peers: &Peers,
    local_id: u64,
) -> anyhow::Result<()> {
    let before = hash_now(store).await?;
    let members: Vec<(u64, Vec<String>)> = directory.snapshot().into_iter().collect();
    let answers = peers.hashes(&members, before.current_revision).await;
    let after = hash_now(store).await?;
    let Some((member, why)) = periodic_suspect(local_id, &before, &after, &answers) else {
        return Ok(());
    };
    if store
        .alarms()
        .iter()
        .any(|a| a.member_id == member && a.alarm == AlarmType::Corrupt as i32)
    {
        return Ok(());
    }
    let theirs = answers.iter().find(|p| p.id == member);
    tracing::warn!(
        leader_revision = after.current_revision,
        leader_compact_revision = after.compact_revision,
        leader_hash = before.hash,
        member_id = %format!("{member:016x}"),
        member = ?theirs.and_then(|p| p.answer.as_ref().ok()),
        "{why}; raising the CORRUPT alarm"
    );
    let alarm = AlarmRequest {
        action: AlarmAction::Activate as i32,
        member_id: member,
        alarm: AlarmType::Corrupt as i32,
    };
    raft.propose(crate::proto::cairnpb::internal_request::Request::Alarm(
        alarm,
    ))
    .await
    .map_err(|e| anyhow::anyhow!("proposing the CORRUPT alarm: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(hash: u32, current_revision: i64, compact_revision: i64) -> HashKv {
        HashKv {
            hash,
            compact_revision,
            current_revision,
        }
    }

    fn answer(id: u64, hash: u32, revision: i64, compact_revision: i64) -> PeerHash {
        PeerHash {
            id,
            urls: vec![],
            answer: Ok(PeerHashKvResponse {
                member_id: id,
                hash,
                compact_revision,
                revision,
            }),
        }
    }

    fn failed(id: u64, e: PeerError) -> PeerHash {
        PeerHash {
            id,
            urls: vec![],
            answer: Err(e),
        }
    }

    #[test]
    fn the_start_up_check_counts_only_hashes_at_the_same_compact_revision() {
        let local = hash(7, 10, 3);
        let peers = [
            answer(2, 7, 12, 3),
            answer(3, 8, 12, 3),
            answer(4, 8, 12, 5),
            failed(5, PeerError::Behind),
            failed(6, PeerError::Compacted),
            failed(7, PeerError::Other("refused".into())),
        ];
        assert_eq!(
            initial_findings(&local, &peers),
            vec![
                Finding::Agrees { peer: 2 },
                Finding::HashMismatch { peer: 3, hash: 8 },
                Finding::CompactMismatch {
                    peer: 4,
                    compact_revision: 5
                },
                Finding::PeerBehind { peer: 5 },
                Finding::LocalBehind { peer: 6 },
                Finding::Unreachable {
                    peer: 7,
                    cause: "refused".into()
                },
            ]
        );
    }

    #[test]
    fn the_leader_names_the_follower_that_diverged() {
        struct Case {
            name: &'static str,
            after: HashKv,
            peers: Vec<PeerHash>,
            suspect: Option<u64>,
        }
        let before = hash(7, 10, 3);
        let cases = [
            Case {
                name: "every follower agrees",
                after: hash(7, 10, 3),
                peers: vec![answer(2, 7, 10, 3), answer(3, 7, 9, 3)],
                suspect: None,
            },
            Case {
                name: "another hash at the same compact revision",
                after: hash(7, 10, 3),
                peers: vec![answer(2, 7, 10, 3), answer(3, 9, 10, 3)],
                suspect: Some(3),
            },
            Case {
                name: "a follower compacted further",
                after: hash(7, 10, 3),
                peers: vec![answer(2, 9, 10, 4)],
                suspect: Some(2),
            },
            Case {
                name: "a follower ahead of the leader",
                after: hash(7, 10, 3),
                peers: vec![answer(2, 7, 11, 3)],
                suspect: Some(2),
            },
            Case {
                name: "the leader's own hash moved without a write",
                after: hash(8, 10, 3),
                peers: vec![answer(2, 7, 10, 3)],
                suspect: Some(1),
            },
            Case {
                name: "writes went on between the two hashes",
                after: hash(8, 11, 3),
                peers: vec![answer(2, 7, 11, 3)],
                suspect: None,
            },
            Case {
                name: "followers that cannot answer are skipped",
                after: hash(7, 10, 3),
                peers: vec![
                    failed(2, PeerError::Behind),
                    failed(3, PeerError::Other("down".into())),
                ],
                suspect: None,
            },
        ];
        for c in cases {
            assert_eq!(
                periodic_suspect(1, &before, &c.after, &c.peers).map(|(id, _)| id),
                c.suspect,
                "{}",
                c.name
            );
        }
    }
}
