//! [`RaftStatus`]: consensus progress, published by RaftNode after every
//! Ready and read without a mailbox round trip (response headers, Status,
//! LeaseKeeper's leadership check, admission control).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A snapshot of the node's role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// This member's raft id.
    pub id: u64,
    pub term: u64,
    pub leader_id: u64,
    pub commit_index: u64,
    pub is_leader: bool,
}

/// The latest [`Progress`], one atomic per field.
#[derive(Debug, Default)]
pub struct RaftStatus {
    term: AtomicU64,
    leader_id: AtomicU64,
    commit_index: AtomicU64,
    is_leader: AtomicBool,
}

impl RaftStatus {
    /// RaftNode only.
    pub fn publish(&self, p: Progress) {
        self.term.store(p.term, Ordering::Release);
        self.leader_id.store(p.leader_id, Ordering::Release);
        self.commit_index.store(p.commit_index, Ordering::Release);
        self.is_leader.store(p.is_leader, Ordering::Release);
    }

    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }
    pub fn leader_id(&self) -> u64 {
        self.leader_id.load(Ordering::Acquire)
    }
    pub fn commit_index(&self) -> u64 {
        self.commit_index.load(Ordering::Acquire)
    }
    pub fn is_leader(&self) -> bool {
        self.is_leader.load(Ordering::Acquire)
    }
}
