//! [`PeerTransport`]: RaftNode's [`Transport`] in a cluster.
//!
//! Routes each outgoing raft message by `to` into that member's link queue
//! with `try_send`: the raft thread never waits for the network. A full
//! queue (the member is slow or unreachable) drops the message and reports
//! the member unreachable; raft-rs then probes it instead of streaming.
//! MsgSnapshot goes to that member's snapshot sender instead (one snapshot
//! in flight per member; its image streams beside the raft stream, see
//! [`super::snapshot`]); one that cannot be taken is reported failed at once
//! (raft-rs would otherwise wait for it forever).

use std::collections::HashMap;
use std::sync::Arc;

use raft::eraftpb::{Message, MessageType};
use tokio::sync::{mpsc, Mutex};

use super::link::QUEUE_CAPACITY;
use super::Directory;
use crate::raft::transport::{Transport, Undelivered};

/// One bounded queue per remote member, keyed by member id.
pub struct PeerTransport {
    pub(super) queues: HashMap<u64, mpsc::Sender<Message>>,
    /// Per remote member: its snapshot sender's queue (one at a time).
    pub(super) snapshots: HashMap<u64, mpsc::Sender<Message>>,
    /// This member's id (never linked to itself).
    pub(super) local_id: u64,
    /// The remote members and their peer URLs, shared with the peer
    /// service and the lease forwarder.
    pub(super) directory: Directory,
    /// Where new links are asked for (started on RaftNode's arbiter).
    pub(super) links: mpsc::UnboundedSender<NewLink>,
}

/// A link to start: the receiving ends of a new member's queues.
pub struct NewLink {
    pub id: u64,
    pub urls: Vec<String>,
    pub queue: super::link::Queue,
    pub snapshots: mpsc::Receiver<Message>,
}

impl PeerTransport {
    /// Makes the links follow the configuration: a link (and a snapshot
    /// sender) for every other member, started when it joins or its URLs
    /// change; a removed member's queues are dropped, which ends its link.
    pub fn set_members(&mut self, members: &[(u64, Vec<String>)]) {
        let wanted: HashMap<u64, Vec<String>> = members
            .iter()
            .filter(|(id, _)| *id != self.local_id)
            .cloned()
            .collect();
        let known = self.directory.snapshot();
        for (id, urls) in &wanted {
            if known.get(id) == Some(urls) && self.queues.contains_key(id) {
                continue;
            }
            let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
            let (snap_tx, snap_rx) = mpsc::channel(1);
            self.queues.insert(*id, tx);
            self.snapshots.insert(*id, snap_tx);
            let link = NewLink {
                id: *id,
                urls: urls.clone(),
                queue: Arc::new(Mutex::new(rx)),
                snapshots: snap_rx,
            };
            if self.links.send(link).is_err() {
                tracing::warn!(member = %format!("{id:x}"), "peer links are shutting down; no link started");
            }
        }
        self.queues.retain(|id, _| wanted.contains_key(id));
        self.snapshots.retain(|id, _| wanted.contains_key(id));
        self.directory.replace(wanted);
    }
}

impl Transport for PeerTransport {
    fn set_members(&mut self, members: &[(u64, Vec<String>)]) {
        PeerTransport::set_members(self, members)
    }

    fn send(&mut self, msgs: Vec<Message>) -> Undelivered {
        let mut undelivered = Undelivered::default();
        for m in msgs {
            let queues = if m.get_msg_type() == MessageType::MsgSnapshot {
                &self.snapshots
            } else {
                &self.queues
            };
            let Some(queue) = queues.get(&m.to) else {
                tracing::warn!(to = %format!("{:x}", m.to), msg_type = ?m.get_msg_type(), "no link to member; message dropped");
                crate::io_metrics::peer_failure(&crate::io_metrics::PEER_SENT_FAILURES, m.to);
                undelivered.dropped(&m);
                continue;
            };
            if let Err(e) = queue.try_send(m) {
                let m = match e {
                    mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => m,
                };
                tracing::debug!(to = %format!("{:x}", m.to), "peer queue full; message dropped");
                crate::io_metrics::peer_failure(&crate::io_metrics::PEER_SENT_FAILURES, m.to);
                undelivered.dropped(&m);
            }
        }
        undelivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(to: u64, t: MessageType) -> Message {
        let mut m = Message {
            to,
            ..Default::default()
        };
        m.set_msg_type(t);
        m
    }

    #[test]
    fn routes_by_member_and_reports_what_it_drops() {
        let (tx2, mut rx2) = mpsc::channel(1);
        let (tx3, mut rx3) = mpsc::channel(1);
        let (snap2, mut snap_rx2) = mpsc::channel(1);
        let (links, _) = mpsc::unbounded_channel();
        let mut t = PeerTransport {
            queues: HashMap::from([(2, tx2), (3, tx3)]),
            snapshots: HashMap::from([(2, snap2)]),
            local_id: 1,
            directory: Directory::default(),
            links,
        };
        let out = t.send(vec![
            msg(2, MessageType::MsgAppend),
            msg(3, MessageType::MsgHeartbeat),
            // 2's queue holds one message: this one is dropped.
            msg(2, MessageType::MsgHeartbeat),
            // Snapshots go to the member's snapshot sender, one at a time.
            msg(2, MessageType::MsgSnapshot),
            msg(2, MessageType::MsgSnapshot),
            // No snapshot sender for 3.
            msg(3, MessageType::MsgSnapshot),
            // No link to 9.
            msg(9, MessageType::MsgAppend),
        ]);
        assert_eq!(
            rx2.try_recv().map(|m| m.get_msg_type()),
            Ok(MessageType::MsgAppend)
        );
        assert_eq!(
            rx3.try_recv().map(|m| m.get_msg_type()),
            Ok(MessageType::MsgHeartbeat)
        );
        assert!(rx2.try_recv().is_err() && rx3.try_recv().is_err());
        assert_eq!(
            snap_rx2.try_recv().map(|m| m.get_msg_type()),
            Ok(MessageType::MsgSnapshot)
        );
        assert!(snap_rx2.try_recv().is_err());
        assert_eq!(
            out,
            Undelivered {
                unreachable: vec![2, 3, 9],
                snapshots: vec![2, 3],
            }
        );
    }
}
