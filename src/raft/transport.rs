//! How raft messages reach other members.
//!
//! RaftNode hands outgoing messages to a [`Transport`]; PeerLink actors (one
//! per remote member, supervised so a broken link restarts without touching
//! the raft log) implement it when clustering lands. A single member has no
//! peers, so [`NoPeers`] only reports a message it was not expecting.

use raft::eraftpb::Message;

pub trait Transport: Send + 'static {
    /// Queues messages for delivery. Must not block: delivery is best
    /// effort, raft retries on its own.
    fn send(&mut self, msgs: Vec<Message>);
}

/// The transport of a one-member cluster.
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            tracing::warn!(to = m.to, msg_type = ?m.get_msg_type(), "no link to peer; message dropped");
        }
    }
}
