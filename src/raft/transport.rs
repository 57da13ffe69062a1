//! How raft messages reach other members.
//!
//! RaftNode hands outgoing messages to a [`Transport`]. In a cluster that is
//! `peer::PeerTransport`: one bounded queue per remote member, drained by
//! that member's PeerLink actor (supervised, so a broken link restarts
//! without touching raft or the other links). A single member has no peers,
//! so [`NoPeers`] only reports a message it was not expecting.
//!
//! `send` never blocks the raft thread. What could not even be queued comes
//! back as [`Undelivered`], and RaftNode tells raft-rs (`report_unreachable`,
//! `report_snapshot` failure) so that it probes the member again instead of
//! waiting for answers that will never come.

use raft::eraftpb::{Message, MessageType};

pub trait Transport: Send + 'static {
    /// Queues messages for delivery. Must not block: delivery is best
    /// effort, raft retries on its own.
    fn send(&mut self, msgs: Vec<Message>) -> Undelivered;

    /// The members of the configuration (id, peer URLs) after a membership
    /// change: links follow them.
    fn set_members(&mut self, _members: &[(u64, Vec<String>)]) {}
}

/// Members whose messages were dropped before they left this member.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Undelivered {
    /// Members with a dropped message (queue full, or no link to them).
    pub unreachable: Vec<u64>,
    /// Members whose MsgSnapshot was dropped: raft-rs must hear the
    /// snapshot failed, or it waits for it forever.
    pub snapshots: Vec<u64>,
}

impl Undelivered {
    /// Records a dropped message (each member once).
    pub fn dropped(&mut self, msg: &Message) {
        if msg.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot
            && !self.snapshots.contains(&msg.to)
        {
            self.snapshots.push(msg.to);
        }
        if !self.unreachable.contains(&msg.to) {
            self.unreachable.push(msg.to);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.unreachable.is_empty() && self.snapshots.is_empty()
    }
}

/// Entries merged into one MsgAppend stop growing past this many bytes
/// (raft's `max_size_per_msg`, which bounds every append raft-rs makes).
pub const COALESCED_APPEND_BYTES: usize = 1024 * 1024;

/// Merges, per member, each run of MsgAppends that continue one another
/// into one message, and each run of proposals a follower forwards to the
/// leader into one MsgProp: what raft-rs's own `batch_append` does for
/// appends, but bounded in size (raft-rs's merge has no bound, so a follower
/// catching up from the log could be sent one message of hundreds of MiB).
///
/// A leader makes one MsgAppend per follower for every proposal, and one
/// more (entries-free) every time the commit index moves; each costs the
/// follower a step and a MsgAppendResponse, and each response costs the
/// leader a step and often another commit broadcast. Sent as one message
/// per Ready, the follower does the same work once: appending
/// `[i+1..j]` then `[j+1..k]` with commit `c` then `c'` is appending
/// `[i+1..k]` with commit `c'` (`c' >= c`), and one response acknowledging
/// `k` frees in the leader's flow control everything the two would have.
/// Likewise a follower forwards each client's proposal as a MsgProp of its
/// own; the leader appends a MsgProp's entries in order, as it would the
/// separate ones (only plain entries are merged, so a membership change is
/// never refused or accepted together with other entries). And a follower
/// that stepped several appends in one Ready answers each; the leader only
/// moves a follower's progress forward, so the last acceptance (the highest
/// index) says all the earlier ones did: only it is sent.
///
/// Only messages that agree on everything but their entries (and an
/// append's commit) are merged, each onto the last message kept for the
/// same member (never across another message to it, so every member sees
/// its messages in the order raft made them).
pub fn coalesce(msgs: Vec<Message>) -> Vec<Message> {
    if msgs.len() < 2 {
        return msgs;
    }
    let mut out: Vec<Message> = Vec::with_capacity(msgs.len());
    // Per member: where its last kept message is in `out`, and the bytes of
    // entries that message carries.
    let mut last: Vec<(u64, usize, usize)> = Vec::new();
    for m in msgs {
        let bytes: usize = m
            .entries
            .iter()
            .map(|e| e.data.len() + e.context.len())
            .sum();
        let slot = last.iter().position(|(to, _, _)| *to == m.to);
        if let Some(s) = slot {
            let (_, at, carried) = last[s];
            if supersedes(&out[at], &m) {
                out[at] = m;
                continue;
            }
            let (appends, proposals) = (continues(&out[at], &m), joins(&out[at], &m));
            if carried + bytes <= COALESCED_APPEND_BYTES && (appends || proposals) {
                let prev = &mut out[at];
                let mut m = m;
                if appends {
                    prev.commit = m.commit;
                    prev.commit_term = m.commit_term;
                }
                let mut entries: Vec<_> = prev.take_entries().into();
                entries.extend(m.take_entries());
                prev.set_entries(entries.into());
                last[s].2 = carried + bytes;
                continue;
            }
        }
        let at = out.len();
        match slot {
            Some(s) => last[s] = (m.to, at, bytes),
            None => last.push((m.to, at, bytes)),
        }
        out.push(m);
    }
    out
}

/// Whether `prev` and `next` are plain proposals forwarded to the same
/// leader.
fn joins(prev: &Message, next: &Message) -> bool {
    let plain = |m: &Message| {
        m.entries
            .iter()
            .all(|e| e.get_entry_type() == raft::eraftpb::EntryType::EntryNormal)
    };
    same_kind(prev, next, MessageType::MsgPropose)
        && plain(prev)
        && plain(next)
        && prev.index == next.index
        && prev.log_term == next.log_term
        && prev.commit == next.commit
}

/// Whether `next` accepts appends up to at least where `prev` did, both
/// plain acceptances (no rejection) in the same term: the leader reads from
/// them only how far the follower's log matches its own.
fn supersedes(prev: &Message, next: &Message) -> bool {
    same_kind(prev, next, MessageType::MsgAppendResponse) && next.index >= prev.index
}

/// Whether `next` is a MsgAppend that picks up where `prev` (one too) ends.
fn continues(prev: &Message, next: &Message) -> bool {
    let (end_index, end_term) = match prev.entries.last() {
        Some(e) => (e.index, e.term),
        None => (prev.index, prev.log_term),
    };
    same_kind(prev, next, MessageType::MsgAppend)
        && next.index == end_index
        && next.log_term == end_term
        && next.commit >= prev.commit
}

/// Both messages are of type `kind`, from the same member in the same term,
/// and carry nothing but entries and indexes (no rejection, snapshot,
/// snapshot request, context or priority of their own).
fn same_kind(prev: &Message, next: &Message, kind: MessageType) -> bool {
    let bare = |m: &Message| {
        m.get_msg_type() == kind
            && !m.reject
            && m.reject_hint == 0
            && m.request_snapshot == 0
            && m.context.is_empty()
            && !m.has_snapshot()
    };
    bare(prev)
        && bare(next)
        && prev.from == next.from
        && prev.term == next.term
        && prev.priority == next.priority
        && prev.deprecated_priority == next.deprecated_priority
}

/// The transport of a one-member cluster.
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&mut self, msgs: Vec<Message>) -> Undelivered {
        let mut undelivered = Undelivered::default();
        for m in msgs {
            tracing::warn!(to = m.to, msg_type = ?m.get_msg_type(), "no link to peer; message dropped");
            undelivered.dropped(&m);
        }
        undelivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::Entry;
    use raft::storage::MemStorage;
    use raft::{Config, RawNode};

    fn append(to: u64, index: u64, log_term: u64, entries: &[(u64, u64)], commit: u64) -> Message {
        let mut m = Message {
            to,
            from: 1,
            term: 2,
            index,
            log_term,
            commit,
            ..Default::default()
        };
        m.set_msg_type(MessageType::MsgAppend);
        let entries: Vec<Entry> = entries
            .iter()
            .map(|&(index, term)| Entry {
                index,
                term,
                data: vec![b'x'; 10].into(),
                ..Default::default()
            })
            .collect();
        m.set_entries(entries.into());
        m
    }

    fn shape(msgs: &[Message]) -> Vec<(u64, MessageType, u64, Vec<u64>, u64)> {
        msgs.iter()
            .map(|m| {
                let idx = m.entries.iter().map(|e| e.index).collect();
                (m.to, m.get_msg_type(), m.index, idx, m.commit)
            })
            .collect()
    }

    #[test]
    fn continuing_appends_merge_per_member_and_keep_the_later_commit() {
        let out = coalesce(vec![
            append(2, 10, 2, &[(11, 2)], 9),
            append(3, 10, 2, &[(11, 2)], 9),
            append(2, 11, 2, &[(12, 2)], 9),
            // Entries-free: only moves the commit index.
            append(2, 12, 2, &[], 11),
            append(3, 11, 2, &[(12, 2)], 10),
        ]);
        assert_eq!(
            shape(&out),
            vec![
                (2, MessageType::MsgAppend, 10, vec![11, 12], 11),
                (3, MessageType::MsgAppend, 10, vec![11, 12], 10),
            ]
        );
    }

    #[test]
    fn what_does_not_continue_stays_apart_and_in_order() {
        let mut heartbeat = Message {
            to: 2,
            from: 1,
            term: 2,
            ..Default::default()
        };
        heartbeat.set_msg_type(MessageType::MsgHeartbeat);
        let mut other_term = append(2, 14, 2, &[(15, 3)], 9);
        other_term.term = 3;
        let out = coalesce(vec![
            append(2, 10, 2, &[(11, 2)], 9),
            // Never merged across another message to the same member.
            heartbeat,
            append(2, 11, 2, &[(12, 2)], 9),
            // A gap (13 is missing).
            append(2, 13, 2, &[(14, 2)], 9),
            // The previous message's last entry has term 2, not 1.
            append(2, 14, 1, &[(15, 2)], 9),
            // Another leader term.
            other_term,
        ]);
        assert_eq!(
            shape(&out),
            vec![
                (2, MessageType::MsgAppend, 10, vec![11], 9),
                (2, MessageType::MsgHeartbeat, 0, vec![], 0),
                (2, MessageType::MsgAppend, 11, vec![12], 9),
                (2, MessageType::MsgAppend, 13, vec![14], 9),
                (2, MessageType::MsgAppend, 14, vec![15], 9),
                (2, MessageType::MsgAppend, 14, vec![15], 9),
            ]
        );
    }

    fn proposal(data: &str, conf_change: bool) -> Message {
        let mut m = Message {
            to: 1,
            from: 2,
            ..Default::default()
        };
        m.set_msg_type(MessageType::MsgPropose);
        let mut e = Entry {
            data: data.as_bytes().to_vec().into(),
            ..Default::default()
        };
        if conf_change {
            e.set_entry_type(raft::eraftpb::EntryType::EntryConfChange);
        }
        m.set_entries(vec![e].into());
        m
    }

    #[test]
    fn forwarded_proposals_merge_but_a_membership_change_stays_alone() {
        let out = coalesce(vec![
            proposal("a", false),
            proposal("b", false),
            proposal("cc", true),
            proposal("c", false),
            proposal("d", false),
        ]);
        let data: Vec<Vec<String>> = out
            .iter()
            .map(|m| {
                m.entries
                    .iter()
                    .map(|e| String::from_utf8_lossy(&e.data).into_owned())
                    .collect()
            })
            .collect();
        assert_eq!(data, vec![vec!["a", "b"], vec!["cc"], vec!["c", "d"]]);
    }

    #[test]
    fn a_later_acceptance_replaces_an_earlier_one_but_not_a_rejection() {
        let response = |index: u64, reject: bool| {
            let mut m = Message {
                to: 1,
                from: 2,
                term: 2,
                index,
                reject,
                ..Default::default()
            };
            m.set_msg_type(MessageType::MsgAppendResponse);
            m
        };
        let out = coalesce(vec![
            response(11, false),
            response(14, false),
            response(14, true),
            response(15, false),
            response(17, false),
        ]);
        let kept: Vec<(u64, bool)> = out.iter().map(|m| (m.index, m.reject)).collect();
        assert_eq!(kept, vec![(14, false), (14, true), (17, false)]);
    }

    #[test]
    fn a_merged_append_stops_growing_at_the_size_bound() {
        let big = |index: u64| {
            let mut m = append(2, index, 2, &[(index + 1, 2)], 1);
            m.entries[0].data = vec![0u8; COALESCED_APPEND_BYTES / 3 + 1].into();
            m
        };
        let out = coalesce((10..16).map(big).collect());
        let sizes: Vec<usize> = out.iter().map(|m| m.entries.len()).collect();
        assert_eq!(sizes, vec![2, 2, 2]);
        for m in &out {
            let bytes: usize = m.entries.iter().map(|e| e.data.len()).sum();
            assert!(bytes <= COALESCED_APPEND_BYTES);
        }
    }

    type LogEntry = (u64, u64, Vec<u8>);

    /// Three raft-rs members in memory; every message a member sends goes
    /// through `coalesce` when `coalesce` is set.
    struct World {
        nodes: Vec<RawNode<MemStorage>>,
        coalesce: bool,
        delivered: usize,
    }

    impl World {
        fn new(coalesce: bool) -> World {
            let logger = slog::Logger::root(slog::Discard, slog::o!());
            let nodes = (1..=3)
                .map(|id| {
                    let store = MemStorage::new_with_conf_state((vec![1, 2, 3], vec![]));
                    let cfg = Config {
                        id,
                        max_inflight_msgs: 256,
                        ..Default::default()
                    };
                    RawNode::new(&cfg, store, &logger).expect("raw node")
                })
                .collect();
            World {
                nodes,
                coalesce,
                delivered: 0,
            }
        }

        /// Handles every Ready and delivers every message until all is quiet.
        fn settle(&mut self) {
            loop {
                let mut out = Vec::new();
                for n in &mut self.nodes {
                    if !n.has_ready() {
                        continue;
                    }
                    let mut rd = n.ready();
                    out.extend(rd.take_messages());
                    let store = n.raft.raft_log.store.clone();
                    if !rd.snapshot().is_empty() {
                        panic!("no snapshot expected");
                    }
                    store.wl().append(rd.entries()).expect("append");
                    if let Some(hs) = rd.hs() {
                        store.wl().set_hardstate(hs.clone());
                    }
                    out.extend(rd.take_persisted_messages());
                    let mut light = n.advance(rd);
                    out.extend(light.take_messages());
                    if let Some(commit) = light.commit_index() {
                        store.wl().mut_hard_state().commit = commit;
                    }
                    n.advance_apply();
                }
                if out.is_empty() {
                    return;
                }
                let out = if self.coalesce { coalesce(out) } else { out };
                self.delivered += out.len();
                for m in out {
                    let to = (m.to - 1) as usize;
                    let _ = self.nodes[to].step(m);
                }
            }
        }

        /// Per member: its commit index and its log (index, term, data).
        fn logs(&self) -> Vec<(u64, Vec<LogEntry>)> {
            self.nodes
                .iter()
                .map(|n| {
                    let log = &n.raft.raft_log;
                    let entries = log
                        .entries(1, u64::MAX, raft::GetEntriesContext::empty(false))
                        .expect("entries")
                        .into_iter()
                        .map(|e| (e.index, e.term, e.data.to_vec()))
                        .collect();
                    (log.committed, entries)
                })
                .collect()
        }
    }

    /// Coalescing changes how many messages travel, never what the members
    /// end up with: the same proposals, made in bursts as clients make
    /// them, leave every member with the same log and commit index either
    /// way (and raft-rs itself checks every merged message it steps).
    #[test]
    fn members_end_with_the_same_log_through_far_fewer_messages() {
        let mut worlds = [World::new(false), World::new(true)];
        for w in &mut worlds {
            w.nodes[0].campaign().expect("campaign");
            w.settle();
            assert_eq!(w.nodes[0].raft.leader_id, 1);
            let before = w.delivered;
            for burst in 0..20u32 {
                for i in 0..=(burst % 7) * 5 {
                    // Clients on every member: a follower forwards its
                    // proposals to the leader.
                    let data = format!("b{burst}-{i}").into_bytes();
                    let on = (burst as usize + i as usize) % 3;
                    w.nodes[on].propose(vec![], data).expect("propose");
                }
                w.settle();
            }
            w.delivered -= before;
        }
        let [plain, merged] = &worlds;
        let logs = plain.logs();
        assert_eq!(logs, merged.logs());
        let last = logs[0].1.last().map(|e| e.0).unwrap_or(0);
        assert!(logs.iter().all(|(commit, _)| *commit == last), "{logs:?}");
        assert!(
            merged.delivered * 5 < plain.delivered,
            "merged {} vs {} messages",
            merged.delivered,
            plain.delivered
        );
    }
}
