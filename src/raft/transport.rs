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

use raft::eraftpb::Message;

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
