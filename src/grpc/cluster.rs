//! etcd's Cluster service: the member list and runtime reconfiguration.
//!
//! MemberAdd, MemberRemove and MemberPromote are raft conf changes (a
//! `ConfChange` entry whose context carries the member), MemberUpdate an
//! ordinary entry; all are checked here first with etcd's errors, applied
//! by Storage on every member alike (which checks again: the state may have
//! moved on meanwhile), and answered once applied on this member. RaftNode
//! then gives raft-rs the new configuration and the peer links follow.

use std::time::{SystemTime, UNIX_EPOCH};

use raft::eraftpb::ConfChangeType;
use tonic::{Request, Response, Status};

use super::Api;
use crate::apply::ApplyResponse;
use crate::error::EtcdError;
use crate::proto::cairnpb::internal_request::Request as Internal;
use crate::proto::cairnpb::MemberRecord;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::*;

/// How long a peer's link must have been up to count as active (etcd's
/// `HealthInterval`).
const HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// etcd allows one learner at a time (`maxLearners`).
const MAX_LEARNERS: usize = 1;

/// A change the strict reconfiguration check looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reconfig {
    Add,
    AddLearner,
    Promote,
    Remove(u64),
}

pub struct ClusterService {
    api: Api,
}

impl ClusterService {
    pub fn new(api: Api) -> ClusterService {
        ClusterService { api }
    }

    /// etcd's rule: with auth enabled, membership changes need root.
    fn admin<T>(&self, req: &tonic::Request<T>) -> Result<(), EtcdError> {
        self.api.auth.caller_of(req)?.check_admin()
    }

    fn members(&self) -> Vec<Member> {
        crate::cluster::member_list(
            &self.api.cluster,
            &self.api.store.membership(),
            &self.api.store.member_attributes(),
        )
    }

    /// etcd's `--strict-reconfig-check` (on by default), for a change to the
    /// voters: enough of them have started (published their attributes) to
    /// keep a quorum after the change, and, for an addition, this member's
    /// links reach every voter; for a removal, the voters left that it
    /// reaches still form a quorum. `change` is +1 (add, promote) or the
    /// member to remove.
    fn check_reconfig(&self, change: Reconfig) -> Result<(), EtcdError> {
        let membership = self.api.store.membership();
        let published = self.api.store.member_attributes();
        let local = self.api.cluster.local_id;
        let voters: Vec<u64> = membership
            .values()
            .filter(|m| !m.is_learner)
            .map(|m| m.id)
            .collect();
        let started = |id: &u64| published.get(id).is_some_and(|a| !a.name.is_empty());
        // etcd's HealthInterval: a peer counts as active once its link has
        // been up this long (a member just restarted or just reconnected
        // does not count yet).
        let active = |id: &u64| *id == local || self.api.peers.is_connected(*id, HEALTH_INTERVAL);
        match change {
            Reconfig::AddLearner => {
                if !voters.iter().all(active) {
                    return Err(EtcdError::Unhealthy);
                }
            }
            Reconfig::Add | Reconfig::Promote => {
                let nmembers = voters.len() + 1;
                let mut nstarted = voters.iter().filter(|id| started(id)).count();
                if change == Reconfig::Promote {
                    nstarted += 1;
                }
                let one_member_growing = change == Reconfig::Add && nstarted == 1 && nmembers == 2;
                if !one_member_growing && nstarted < nmembers / 2 + 1 {
                    return Err(EtcdError::NotEnoughStartedMembers);
                }
                if change == Reconfig::Add && !voters.iter().all(active) {
                    return Err(EtcdError::Unhealthy);
                }
            }
            Reconfig::Remove(id) => {
                if !voters.contains(&id) {
                    return Ok(());
                }
                let rest: Vec<&u64> = voters.iter().filter(|v| **v != id).collect();
                let nstarted = rest.iter().filter(|v| started(v)).count();
                if nstarted < rest.len() / 2 + 1 {
                    return Err(EtcdError::NotEnoughStartedMembers);
                }
                // A member that is down is safe to remove: it is not part of
                // the working quorum.
                if id != local && !active(&id) {
                    return Ok(());
                }
                let connected = voters.iter().filter(|v| active(v)).count();
                if connected - 1 < 1 + (voters.len() - 1) / 2 {
                    return Err(EtcdError::Unhealthy);
                }
            }
        }
        Ok(())
    }

    /// Proposes a membership change and returns the member as applied.
    async fn change(
        &self,
        change: ConfChangeType,
        member: MemberRecord,
    ) -> Result<MemberRecord, Status> {
        match self.api.raft.propose_conf_change(change, member).await? {
            ApplyResponse::Membership(m) => Ok(m),
            _ => Err(Status::internal(
                "apply returned a response of another kind",
            )),
        }
    }
}

/// Peer URLs as etcd accepts them in MemberAdd and MemberUpdate: each a
/// URL with a scheme and a host:port, and none twice; etcd's printed form.
fn peer_urls(urls: &[String]) -> Result<Vec<String>, EtcdError> {
    let mut out = Vec::with_capacity(urls.len());
    for u in urls {
        let parsed = url::Url::parse(u).map_err(|_| EtcdError::MemberBadUrls)?;
        let ok = matches!(parsed.scheme(), "http" | "https" | "unix" | "unixs")
            && parsed.host_str().is_some()
            && parsed.port().is_some()
            && (parsed.path().is_empty() || parsed.path() == "/");
        if !ok {
            return Err(EtcdError::MemberBadUrls);
        }
        out.push(crate::cluster::url_string(&parsed));
    }
    out.sort();
    let before = out.len();
    out.dedup();
    if out.is_empty() || out.len() != before {
        return Err(EtcdError::MemberBadUrls);
    }
    Ok(out)
}

/// A new member's id, as etcd's `NewMember` makes it: SHA-1 over the sorted
/// peer URLs, the cluster and the time, so an id is never reused.
fn new_member_id(urls: &[String], cluster_id: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    crate::cluster::member_id(urls, &format!("{cluster_id:x}{now}"))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.admin(&req)?;
        let req = req.into_inner();
        let urls = peer_urls(&req.peer_ur_ls)?;
        let membership = self.api.store.membership();
        if crate::cluster::peer_urls_taken(&membership, 0, &urls) {
            return Err(EtcdError::PeerUrlExist.into());
        }
        if req.is_learner && membership.values().filter(|m| m.is_learner).count() >= MAX_LEARNERS {
            return Err(EtcdError::TooManyLearners.into());
        }
        self.check_reconfig(if req.is_learner {
            Reconfig::AddLearner
        } else {
            Reconfig::Add
        })?;
        let member = MemberRecord {
            id: new_member_id(&urls, self.api.cluster.cluster_id),
            name: String::new(),
            peer_urls: urls,
            is_learner: req.is_learner,
        };
        let change = if req.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        let added = self.change(change, member).await?;
        Ok(Response::new(MemberAddResponse {
            header: Some(self.api.membership_header()),
            member: Some(Member::from(&added)),
            members: self.members(),
        }))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.admin(&req)?;
        let id = req.into_inner().id;
        let membership = self.api.store.membership();
        let member = membership
            .get(&id)
            .cloned()
            .ok_or(EtcdError::MemberNotFound)?;
        self.check_reconfig(Reconfig::Remove(id))?;
        self.change(ConfChangeType::RemoveNode, member).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: Some(self.api.membership_header()),
            members: self.members(),
        }))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.admin(&req)?;
        let req = req.into_inner();
        let urls = peer_urls(&req.peer_ur_ls)?;
        let membership = self.api.store.membership();
        let member = membership
            .get(&req.id)
            .cloned()
            .ok_or(EtcdError::MemberNotFound)?;
        if crate::cluster::peer_urls_taken(&membership, req.id, &urls) {
            return Err(EtcdError::PeerUrlExist.into());
        }
        let update = MemberRecord {
            peer_urls: urls,
            ..member
        };
        match self
            .api
            .raft
            .propose(Internal::MemberUpdate(update))
            .await?
        {
            ApplyResponse::Membership(_) => {}
            _ => {
                return Err(Status::internal(
                    "apply returned a response of another kind",
                ))
            }
        }
        Ok(Response::new(MemberUpdateResponse {
            header: Some(self.api.membership_header()),
            members: self.members(),
        }))
    }

    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse {
            header: Some(self.api.membership_header()),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.admin(&req)?;
        let id = req.into_inner().id;
        let member = self
            .api
            .store
            .membership()
            .get(&id)
            .cloned()
            .ok_or(EtcdError::MemberNotFound)?;
        if !member.is_learner {
            return Err(EtcdError::MemberNotLearner.into());
        }
        self.check_reconfig(Reconfig::Promote)?;
        // Known on the leader only (its view of the learner's log): a
        // follower asks the leader, as etcd's forwards the promote to it.
        let ready = match self.api.raft.learner_ready(id).await {
            Some(ready) => ready,
            None => {
                let leader = self.api.status.leader_id();
                let forward = self.api.leases.forwarder().ok_or(EtcdError::NoLeader)?;
                if leader == 0 {
                    return Err(EtcdError::NoLeader.into());
                }
                forward.learner_ready(leader, id).await?.unwrap_or(false)
            }
        };
        if !ready {
            return Err(EtcdError::LearnerNotReady.into());
        }
        self.change(ConfChangeType::AddNode, member).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: Some(self.api.membership_header()),
            members: self.members(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_are_checked_as_etcd_checks_them() {
        let ok = |u: &[&str]| peer_urls(&u.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            ok(&["http://127.0.0.1:2380/", "http://10.0.0.1:2380"]),
            Ok(vec![
                "http://10.0.0.1:2380".to_string(),
                "http://127.0.0.1:2380".to_string()
            ])
        );
        for bad in [
            &[][..],
            &["127.0.0.1:2380"],
            &["http://127.0.0.1"],
            &["http://127.0.0.1:2380/path"],
            &["http://127.0.0.1:2380", "http://127.0.0.1:2380"],
        ] {
            assert_eq!(ok(bad), Err(EtcdError::MemberBadUrls), "{bad:?}");
        }
    }
}
