//! The messages actors exchange, and the handles they share.
//!
//! Every actor imports from here and from nothing of another actor, so
//! dependencies run one way: `grpc` → actors (`raft`, `storage`, `lease`,
//! `watch`) → `msg` → the plain layers below (`apply`, `mvcc`, `proto`,
//! `error`). Each message names the actor that takes it; an actor's
//! addresses are made before any actor starts ([`crate::supervise::mailbox`]),
//! so each is given its listeners when it is built, never later.
//!
//! ```text
//!  grpc ──Propose / ReadIndex (RaftClient)──▶ RaftNode ──ApplyCommitted──▶ Storage
//!  peers ──Step──────────────────────────────▶ RaftNode ◀──LogFlushed────── Storage
//!                                                         Storage ──AppliedLeases──▶ LeaseKeeper
//!                                                         Storage ──Applied────────▶ WatchBroadcaster
//! ```
//!
//! Shared handles: [`RaftStatus`] (consensus progress, published by
//! RaftNode, read by anyone), [`Proposals`] (waiters of this member's
//! proposals, completed by Storage) and [`RaftClient`] (how the API layer
//! and LeaseKeeper propose and read).

mod leases;
mod proposals;
mod status;

use std::sync::Arc;

use actix::prelude::*;
use raft::eraftpb::{Entry, Message as RaftMessage};

pub use leases::{ForwardToLeader, LeaseTtl, Leases, ListLeases, NotAnswered, Renew, TimeToLive};
pub use proposals::{Proposals, RaftClient, RaftInbox, MAX_APPLY_GAP};
pub use status::{Progress, RaftStatus};

use crate::apply::LeaseChange;
use crate::error::EtcdError;
use crate::proto::mvccpb::Event;

/// Mailbox depth of the core actors. Proposals are many and small: a deep
/// mailbox lets thousands of clients queue for the next Ready; past it,
/// `send` waits (backpressure).
pub const MAILBOX_CAPACITY: usize = 1 << 16;

/// Mailbox depth of the WatchBroadcaster: applied-batch notices (each with
/// its events) and stream requests. Storage `try_send`s into it; a notice
/// that does not fit becomes a catch-up from history (see Storage).
pub const WATCH_MAILBOX_CAPACITY: usize = 4096;

// ---- RaftNode's inbox -------------------------------------------------------

/// Appends an encoded `cairnpb::InternalRequest` to the log. No reply: the
/// proposer hears back only through its waiter in [`Proposals`], with the
/// applied result, or with the error if raft refused the proposal (one
/// wake-up of the proposer per write instead of two).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Propose {
    /// The proposal id (the waiter's key), also inside `data`.
    pub id: u64,
    /// An encoded `cairnpb.InternalRequest`, or for a conf change an
    /// encoded raft `ConfChange` whose context is a `cairnpb.ConfChangeContext`.
    pub data: Vec<u8>,
    /// Whether `data` is a conf change (membership), proposed as such.
    pub conf_change: bool,
}

/// Whether learner `id` has caught up with the leader's log (etcd's
/// rule: its matched index is at least 90% of the leader's). None when this
/// member does not lead (it does not know).
#[derive(Message)]
#[rtype(result = "Option<bool>")]
pub struct LearnerReady {
    pub id: u64,
}

/// A membership change was applied (Storage to RaftNode, in log order):
/// raft-rs takes the new configuration, and the peer links follow the
/// members. `change` is None when the change was refused at apply (every
/// member refuses it alike, and raft's configuration stays as it was) or
/// was no raft change at all (new peer URLs).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConfChanged {
    pub change: Option<raft::eraftpb::ConfChange>,
    /// Every member of the configuration after the change.
    pub members: Vec<crate::proto::cairnpb::MemberRecord>,
}

/// Asks for an index that a linearizable read must wait to be applied.
#[derive(Message)]
#[rtype(result = "Result<u64, EtcdError>")]
pub struct ReadIndex;

/// A raft message from a peer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Step(pub RaftMessage);

/// A PeerLink dropped a message to member `id` (queue full, or the link is
/// down): raft-rs stops streaming appends to it and probes it instead.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReportUnreachable {
    pub id: u64,
}

/// A MsgSnapshot to member `id` was delivered (`ok`) or lost: raft-rs waits
/// for this before it sends that member anything else.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReportSnapshot {
    pub id: u64,
    pub ok: bool,
}

/// From Storage: the state store has durably flushed everything up to
/// `applied_index`, so the log may be truncated behind it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LogFlushed {
    pub applied_index: u64,
}

/// Start handing leadership to voter `target` (Maintenance.MoveLeader).
#[derive(Message)]
#[rtype(result = "Result<(), EtcdError>")]
pub struct TransferLeader {
    pub target: u64,
}

/// A graceful stop begins: if this member leads another voter, start
/// handing leadership to the best one; answers whom (None: nothing to do).
#[derive(Message)]
#[rtype(result = "Option<u64>")]
pub struct StepDown;

/// Stop taking proposals and let the in-flight persist finish (shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

// ---- Storage's inbox --------------------------------------------------------

/// Committed entries, in log order, from RaftNode.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplyCommitted {
    pub entries: Vec<Entry>,
}

/// Make everything applied so far durable now (graceful shutdown).
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct FlushNow;

/// Take the first part of a consistent image of the applied state
/// (`snapshot::capture_head`), between two applied batches.
#[derive(Message)]
#[rtype(result = "Result<crate::snapshot::ImageHead, crate::error::StorageError>")]
pub struct CaptureImage;

/// Write an image of the applied state to the snapshot directory (RaftNode,
/// when raft-rs wants a snapshot for a lagging member). Answers with the
/// applied index the image is of, and the raft configuration at that
/// index, once the file is complete.
#[derive(Message)]
#[rtype(result = "Result<(u64, raft::eraftpb::ConfState), String>")]
pub struct MakeImage;

/// Replace the applied state with the image at `index` in the snapshot
/// directory (RaftNode, once the raft snapshot the leader sent is durable in
/// the log). Entries after it follow in the same mailbox.
#[derive(Message)]
#[rtype(result = "()")]
pub struct InstallSnapshot {
    pub index: u64,
}

// ---- WatchBroadcaster's inbox (from Storage) --------------------------------

/// What one applied batch changed, for watchers: every event in revision
/// order, and the store's revision after the batch (so a watcher can tell it
/// has seen everything up to there even when no event matched it).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Applied {
    pub revision: i64,
    pub events: Arc<Vec<Event>>,
}

// ---- LeaseKeeper's inbox (from Storage) -------------------------------------

/// What one applied batch did to leases.
#[derive(Message, Debug, Clone, Default)]
#[rtype(result = "()")]
pub struct AppliedLeases {
    /// Grants, revokes and checkpoints, in log order.
    pub changes: Vec<LeaseChange>,
    /// The term of the last empty leader entry in the batch: once a leader
    /// applied the entry opening its term, it may become the primary lessor.
    pub leader_noop_term: Option<u64>,
    /// The changes are a raft snapshot's install replacing the leases, not
    /// grants and revokes (not counted in `/metrics`).
    pub recovered: bool,
}
