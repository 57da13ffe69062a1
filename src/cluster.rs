//! Member and cluster identity, derived exactly as etcd derives them.
//!
//! A member's id is the first 8 bytes (big-endian) of SHA-1 over its sorted
//! peer URLs followed by the cluster token; the cluster id is the same over
//! the sorted member ids. Deriving them like etcd means ids are stable across
//! restarts without being stored, every member of a new cluster computes the
//! same ids from the same `--initial-cluster`, and an etcd user sees the ids
//! they expect (the default single member is `8e9e05c52164694d`).

use sha1::{Digest, Sha1};
use url::Url;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::msg::RaftClient;
use crate::mvcc::Store;
use crate::proto::cairnpb::internal_request::Request;
use crate::proto::cairnpb::{MemberAttributes, MemberIdentity, MemberRecord};
use crate::proto::etcdserverpb::Member as PbMember;

/// One member of the cluster as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Raft node id and the `ID` etcd clients see.
    pub id: u64,
    /// Human name from `--name` / `--initial-cluster`.
    pub name: String,
    /// Peer URLs in etcd's string form (no trailing slash), sorted.
    pub peer_urls: Vec<String>,
    /// Client URLs; known only for the local member until members publish
    /// their attributes through raft (clustering issue).
    pub client_urls: Vec<String>,
}

/// The cluster this member belongs to.
#[derive(Debug, Clone)]
pub struct ClusterInfo {
    pub cluster_id: u64,
    pub local_id: u64,
    /// All members, sorted by id.
    pub members: Vec<Member>,
}

/// etcd prints URLs without the trailing slash the `url` crate adds to an
/// empty path; ids hash the printed form, so it must match exactly.
pub fn url_string(u: &Url) -> String {
    let s = u.as_str();
    if u.path() == "/" && u.query().is_none() && u.fragment().is_none() {
        s.trim_end_matches('/').to_string()
    } else {
        s.to_string()
    }
}

fn first_8_bytes_of_sha1(data: &[u8]) -> u64 {
    let digest = Sha1::digest(data);
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(id)
}

/// etcd's member id: SHA-1 of the sorted peer URLs concatenated, then the token.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls: Vec<&String> = peer_urls.iter().collect();
    urls.sort();
    let mut data = Vec::new();
    for u in urls {
        data.extend_from_slice(u.as_bytes());
    }
    data.extend_from_slice(token.as_bytes());
    first_8_bytes_of_sha1(&data)
}

/// etcd's cluster id: SHA-1 of the sorted member ids, 8 bytes big-endian each.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let data: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    first_8_bytes_of_sha1(&data)
}

impl ClusterInfo {
    /// Builds the initial cluster from `--initial-cluster` (name → peer URL
    /// pairs; a name may appear several times), the token, and the local
    /// member's name and client URLs.
    pub fn from_initial_cluster(
        initial: &[(String, Url)],
        token: &str,
        local_name: &str,
        local_client_urls: &[Url],
    ) -> ClusterInfo {
        let mut by_name: Vec<(String, Vec<String>)> = Vec::new();
        for (name, url) in initial {
            match by_name.iter_mut().find(|(n, _)| n == name) {
                Some((_, urls)) => urls.push(url_string(url)),
                None => by_name.push((name.clone(), vec![url_string(url)])),
            }
        }
        let mut members: Vec<Member> = by_name
            .into_iter()
            .map(|(name, mut peer_urls)| {
                peer_urls.sort();
                let id = member_id(&peer_urls, token);
                let client_urls = if name == local_name {
                    local_client_urls.iter().map(url_string).collect()
                } else {
                    Vec::new()
                };
                Member {
                    id,
                    name,
                    peer_urls,
                    client_urls,
                }
            })
            .collect();
        members.sort_by_key(|m| m.id);
        let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        let local_id = members
            .iter()
            .find(|m| m.name == local_name)
            .map(|m| m.id)
            .unwrap_or(0);
        ClusterInfo {
            cluster_id: cluster_id(&ids),
            local_id,
            members,
        }
    }

    /// The identity to store when this member is bootstrapped.
    pub fn identity(&self, token: &str) -> MemberIdentity {
        MemberIdentity {
            name: self.local().map(|m| m.name.clone()).unwrap_or_default(),
            member_id: self.local_id,
            cluster_id: self.cluster_id,
            cluster_token: token.to_string(),
        }
    }

    /// Adopts a stored identity: on restart it wins over what the flags
    /// computed. Flags that contradict it (another `--name`, another
    /// `--initial-cluster-token`) are an error naming both.
    pub fn adopt(&mut self, stored: &MemberIdentity, token: &str) -> Result<(), String> {
        let name = self.local().map(|m| m.name.clone()).unwrap_or_default();
        let whose = format!(
            "the data dir belongs to member {} ({:x}) of cluster {:x}",
            stored.name, stored.member_id, stored.cluster_id
        );
        if name != stored.name {
            return Err(format!("--name {name} contradicts it: {whose}"));
        }
        if token != stored.cluster_token {
            return Err(format!(
                "--initial-cluster-token {token} contradicts it: {whose}, token {}",
                stored.cluster_token
            ));
        }
        if let Some(m) = self.members.iter_mut().find(|m| m.id == self.local_id) {
            m.id = stored.member_id;
        }
        self.local_id = stored.member_id;
        self.cluster_id = stored.cluster_id;
        Ok(())
    }

    pub fn local(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.id == self.local_id)
    }

    /// Every member but this one: those a PeerLink connects to.
    pub fn remote_members(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.id != self.local_id)
    }

    pub fn voter_ids(&self) -> Vec<u64> {
        self.members.iter().map(|m| m.id).collect()
    }

    /// The members of a new cluster, as the state store keeps them.
    pub fn member_records(&self) -> Vec<MemberRecord> {
        self.members
            .iter()
            .map(|m| MemberRecord {
                id: m.id,
                name: m.name.clone(),
                peer_urls: m.peer_urls.clone(),
                is_learner: false,
            })
            .collect()
    }
}

/// A member of the configuration as clients see it, before its published
/// name and client URLs are filled in.
impl From<&MemberRecord> for PbMember {
    fn from(m: &MemberRecord) -> Self {
        PbMember {
            id: m.id,
            name: m.name.clone(),
            peer_ur_ls: m.peer_urls.clone(),
            client_ur_ls: Vec::new(),
            is_learner: m.is_learner,
        }
    }
}

/// etcd's `Peer URLs already exists`: whether a member other than `id`
/// uses any of `urls`.
pub fn peer_urls_taken(membership: &BTreeMap<u64, MemberRecord>, id: u64, urls: &[String]) -> bool {
    membership
        .values()
        .any(|m| m.id != id && m.peer_urls.iter().any(|u| urls.contains(u)))
}

/// The member list as clients see it (MemberList, `etcdctl member list`,
/// `endpoint status --cluster`): the members of the raft configuration in
/// the applied state, with the name and client URLs each has published
/// through the log (etcd's publish); the local member's own until its
/// publish is applied.
pub fn member_list(
    cluster: &ClusterInfo,
    membership: &BTreeMap<u64, MemberRecord>,
    published: &BTreeMap<u64, MemberAttributes>,
) -> Vec<PbMember> {
    membership
        .values()
        .map(|m| {
            let mut pb = PbMember::from(m);
            if m.id == cluster.local_id {
                if let Some(local) = cluster.local() {
                    pb.client_ur_ls = local.client_urls.clone();
                }
            }
            if let Some(p) = published.get(&m.id) {
                pb.name = p.name.clone();
                pb.client_ur_ls = p.client_urls.clone();
            }
            pb
        })
        .collect()
}

/// etcd's publish: once a leader is known, proposes this member's name and
/// client URLs until they are applied (retrying each `retry`), unless the
/// store already holds exactly these. Ends when published or when `stop`
/// turns true.
pub async fn publish(
    raft: RaftClient,
    store: Arc<Store>,
    attributes: MemberAttributes,
    retry: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if store.member_attributes().get(&attributes.id) == Some(&attributes) {
            return;
        }
        if raft.leader_known() {
            match raft
                .propose(Request::MemberAttributes(attributes.clone()))
                .await
            {
                Ok(_) => {
                    tracing::info!(
                        name = %attributes.name,
                        client_urls = ?attributes.client_urls,
                        "published local member to cluster through raft"
                    );
                    return;
                }
                Err(e) => {
                    tracing::debug!(cause = %e, "publishing member attributes failed; retrying")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("test url")
    }

    #[test]
    fn default_single_member_matches_etcd() {
        // What a fresh `etcd` with no flags reports in `etcdctl member list`
        // and response headers.
        let c = ClusterInfo::from_initial_cluster(
            &[("default".into(), url("http://localhost:2380"))],
            "etcd-cluster",
            "default",
            &[url("http://localhost:2379")],
        );
        assert_eq!(format!("{:x}", c.local_id), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", c.cluster_id), "cdf818194e3a8c32");
        assert_eq!(
            c.local().map(|m| m.client_urls.clone()),
            Some(vec!["http://localhost:2379".to_string()])
        );
    }

    #[test]
    fn url_string_has_no_trailing_slash() {
        assert_eq!(
            url_string(&url("http://127.0.0.1:2380")),
            "http://127.0.0.1:2380"
        );
        assert_eq!(url_string(&url("https://host:1/x")), "https://host:1/x");
    }

    #[test]
    fn ids_do_not_depend_on_order() {
        let a = ClusterInfo::from_initial_cluster(
            &[
                ("a".into(), url("http://127.0.0.1:1")),
                ("b".into(), url("http://127.0.0.1:2")),
            ],
            "t",
            "a",
            &[],
        );
        let b = ClusterInfo::from_initial_cluster(
            &[
                ("b".into(), url("http://127.0.0.1:2")),
                ("a".into(), url("http://127.0.0.1:1")),
            ],
            "t",
            "a",
            &[],
        );
        assert_eq!(a.cluster_id, b.cluster_id);
        assert_eq!(a.local_id, b.local_id);
        assert_eq!(a.members.len(), 2);
        let remote: Vec<&str> = a.remote_members().map(|m| m.name.as_str()).collect();
        assert_eq!(remote, vec!["b"]);
    }

    #[test]
    fn a_stored_identity_wins_and_contradicting_flags_are_refused() {
        let initial = [("a".to_string(), url("http://127.0.0.1:1"))];
        let boot = ClusterInfo::from_initial_cluster(&initial, "t", "a", &[]);
        let stored = boot.identity("t");
        assert_eq!(
            (stored.name.as_str(), stored.member_id),
            ("a", boot.local_id)
        );

        // Restarted with the same flags: nothing changes.
        let mut same = ClusterInfo::from_initial_cluster(&initial, "t", "a", &[]);
        same.adopt(&stored, "t").expect("same flags");
        assert_eq!(
            (same.local_id, same.cluster_id),
            (boot.local_id, boot.cluster_id)
        );

        // Peer URLs changed since (member update): the stored ids win.
        let moved = [("a".to_string(), url("http://127.0.0.1:9"))];
        let mut c = ClusterInfo::from_initial_cluster(&moved, "t", "a", &[]);
        assert_ne!(c.local_id, boot.local_id);
        c.adopt(&stored, "t").expect("ids are not flags");
        assert_eq!((c.local_id, c.cluster_id), (boot.local_id, boot.cluster_id));
        assert_eq!(c.local().map(|m| m.id), Some(boot.local_id));

        let renamed = [("b".to_string(), url("http://127.0.0.1:1"))];
        let mut c = ClusterInfo::from_initial_cluster(&renamed, "t", "b", &[]);
        let err = c.adopt(&stored, "t").expect_err("another name");
        assert!(
            err.contains("--name b") && err.contains("member a"),
            "{err}"
        );

        let mut c = ClusterInfo::from_initial_cluster(&initial, "other", "a", &[]);
        let err = c.adopt(&stored, "other").expect_err("another token");
        assert!(err.contains("--initial-cluster-token other"), "{err}");
    }
}
