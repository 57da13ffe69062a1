//! The raft-rs Ready loop as plain functions, with no actor and no threads.
//!
//! ```text
//!   propose / step / tick ──▶ RawNode ──▶ begin_ready() ──▶ ReadyWork
//!                                                     │ send_now:  messages a leader may send before its own append is durable
//!                                                     │ apply:     committed entries (already durable)
//!                                                     │ entries + hard state to persist: ONE fsync for the whole batch
//!                                                     │ (entries are staged in the log store, readable at once)
//!                          (caller runs the persist on a blocking thread)
//!                                   finish_ready(work) ──▶ messages that had to wait for the persist
//!                                   (newly committed entries come out of the next begin_ready)
//! ```
//!
//! This is raft-rs's async-persist API (`advance_append_async` then
//! `on_persist_ready`), with one persist in flight at a time: proposals
//! that arrive while it runs wait in raft's unstable log and all go into the
//! next Ready, which is what makes many clients share one fsync (group
//! commit). The synchronous `advance_append` cannot be used here: it
//! requires that nothing is proposed between `ready()` and the advance.

use raft::eraftpb::{Entry, HardState, Message, SnapshotMetadata};
use raft::{Config as RaftConfig, RawNode, StateRole};

use super::log_store::LogStore;
use crate::error::{EtcdError, StorageError};
use crate::msg::Progress;

/// Bytes of proposals a leader holds uncommitted before it refuses more
/// (etcd's `MaxUncommittedEntriesSize`, 1 GiB).
pub const MAX_UNCOMMITTED_BYTES: u64 = 1 << 30;

/// A follower's request to its leader: a forwarded proposal or ReadIndex,
/// which says nothing about the follower's own log.
fn is_request(m: &Message) -> bool {
    matches!(
        m.get_msg_type(),
        raft::eraftpb::MessageType::MsgPropose | raft::eraftpb::MessageType::MsgReadIndex
    )
}

/// What a Ready asks of the caller before it can be advanced.
pub struct ReadyWork {
    /// raft-rs's number for this Ready, reported back once it is durable.
    number: u64,
    /// Messages that may go out immediately (leader appends and heartbeats).
    pub send_now: Vec<Message>,
    /// Entries committed earlier, safe to apply now.
    pub apply: Vec<Entry>,
    /// A snapshot from the leader that replaces the log (and, once
    /// persisted, the applied state: RaftNode has Storage install its image).
    pub snapshot: Option<SnapshotMetadata>,
    /// Entries to append to the durable log.
    pub entries: Vec<Entry>,
    /// New hard state to store with them, if it changed.
    pub hard_state: Option<HardState>,
    /// raft-rs's `must_sync`: entries, term or vote changed. A Ready whose
    /// only change is the commit index needs no write at all: the commit
    /// index need not be durable (a restarted member learns it again), so
    /// it is stored with the next write instead of costing an fsync.
    must_sync: bool,
    /// Messages (votes, append responses) that must wait for the persist.
    persisted_messages: Vec<Message>,
    /// Answered ReadIndex requests: (request ctx, read index).
    pub read_states: Vec<(u64, u64)>,
}

impl ReadyWork {
    /// True when the Ready has nothing to write, so no fsync is needed.
    pub fn nothing_to_persist(&self) -> bool {
        self.entries.is_empty() && !self.must_sync && self.snapshot.is_none()
    }
}

/// Where the log may be truncated once the state store has durably flushed
/// everything up to `flushed`: `keep` entries behind it stay for slow
/// followers, and never past `persisted_commit`, the commit index in the
/// durable hard state. A Ready that only advances the commit index is not
/// written (it needs no fsync), so after a burst the persisted commit can lag
/// far behind what was applied; truncating past it leaves a log raft-rs
/// refuses to load ("hs.commit is out of range"). Truncation waits until
/// the log holds at least `threshold` entries (etcd's --snapshot-count).
/// Returns the last index to drop, if any.
pub fn truncation_point(
    first_index: u64,
    flushed: u64,
    persisted_commit: u64,
    keep: u64,
    threshold: u64,
) -> Option<u64> {
    if flushed.saturating_sub(first_index) < threshold {
        return None;
    }
    let upto = flushed.saturating_sub(keep).min(persisted_commit);
    (upto >= first_index).then_some(upto)
}

/// Member-local consensus state: a RawNode over the raft-engine log.
pub struct Core {
    node: RawNode<LogStore>,
}

impl Core {
    /// `applied` is the state store's applied index: raft-rs will hand out
    /// committed entries after it (so a restart re-applies what the state
    /// store lost, and nothing twice).
    pub fn new(
        id: u64,
        store: LogStore,
        applied: u64,
        election_tick: usize,
        heartbeat_tick: usize,
        logger: &slog::Logger,
    ) -> Result<Core, raft::Error> {
        let commit = store.hard_state().commit;
        let cfg = RaftConfig {
            id,
            election_tick,
            heartbeat_tick,
            // A restarted member may have applied (and flushed) more than the
            // commit index it had persisted; raft-rs wants applied <= commit.
            applied: applied.min(commit),
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            // etcd's MaxUncommittedEntriesSize: a leader refuses proposals
            // (ProposalDropped) once this many bytes wait for a quorum.
            max_uncommitted_size: MAX_UNCOMMITTED_BYTES,
            ..Default::default()
        };
        cfg.validate()?;
        let node = RawNode::new(&cfg, store, logger)?;
        Ok(Core { node })
    }

    /// A member that is the only voter need not wait an election timeout.
    pub fn campaign_if_alone(&mut self) -> Result<(), raft::Error> {
        let voters = self.node.raft.prs().conf().voters().ids().len();
        if voters == 1 && self.node.raft.state != StateRole::Leader {
            self.node.campaign()?;
        }
        Ok(())
    }

    pub fn tick(&mut self) {
        self.node.tick();
    }

    pub fn step(&mut self, msg: Message) -> Result<(), raft::Error> {
        self.node.step(msg)
    }

    /// Appends a proposal to the log (not yet durable). On a follower,
    /// raft-rs forwards it to the leader as a MsgProp; either way the
    /// proposer's waiter is completed when the entry is applied here (its
    /// id travels inside the entry). Refused when no leader is known.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), EtcdError> {
        if self.node.raft.leader_id == raft::INVALID_ID {
            return Err(EtcdError::NoLeader);
        }
        self.node.propose(Vec::new(), data).map_err(|e| match e {
            // raft-rs drops a proposal when there is no leader (a candidate,
            // or a follower that just lost it), during a leadership transfer,
            // and on a member removed from the configuration.
            raft::Error::ProposalDropped if self.node.raft.leader_id == raft::INVALID_ID => {
                EtcdError::NoLeader
            }
            raft::Error::ProposalDropped => EtcdError::LeaderChanged,
            _ => EtcdError::Stopped,
        })
    }

    /// Proposes a membership change (`data`: an encoded raft ConfChange).
    /// raft-rs refuses a second one while another is not yet applied.
    pub fn propose_conf_change(&mut self, data: &[u8]) -> Result<(), EtcdError> {
        let cc: raft::eraftpb::ConfChange =
            protobuf::Message::parse_from_bytes(data).map_err(|_| EtcdError::Stopped)?;
        if self.node.raft.leader_id == raft::INVALID_ID {
            return Err(EtcdError::NoLeader);
        }
        self.node
            .propose_conf_change(Vec::new(), cc)
            .map_err(|e| match e {
                raft::Error::ProposalDropped if self.node.raft.leader_id == raft::INVALID_ID => {
                    EtcdError::NoLeader
                }
                raft::Error::ProposalDropped => EtcdError::LeaderChanged,
                _ => EtcdError::Stopped,
            })
    }

    /// Takes an applied membership change into raft's configuration;
    /// returns the new configuration.
    pub fn apply_conf_change(
        &mut self,
        cc: &raft::eraftpb::ConfChange,
    ) -> Result<raft::eraftpb::ConfState, raft::Error> {
        self.node.apply_conf_change(cc)
    }

    /// Whether learner `id` matched at least 90% of this leader's log
    /// (etcd's readiness rule for a promotion); None when not leading.
    pub fn learner_ready(&self, id: u64) -> Option<bool> {
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader {
            return None;
        }
        let leader = raft.raft_log.last_index();
        let matched = raft.prs().get(id).map_or(0, |p| p.matched);
        Some(matched as f64 >= leader as f64 * 0.9)
    }

    /// Starts handing leadership to voter `to` (etcd's MoveLeader): only a
    /// leader can, and only to a voter of the current configuration.
    pub fn transfer_leader(&mut self, to: u64) -> Result<(), EtcdError> {
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader {
            return Err(EtcdError::NotLeader);
        }
        if !raft.prs().conf().voters().contains(to) {
            return Err(EtcdError::BadLeaderTransferee);
        }
        if to != raft.id {
            self.node.transfer_leader(to);
        }
        Ok(())
    }

    /// The voter to hand leadership to before this leader stops (etcd
    /// transfers leadership on a graceful stop): the other voter with the
    /// longest matched log, so the transfer completes at once. None when
    /// this member does not lead or is the only voter.
    pub fn best_transferee(&self) -> Option<u64> {
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader {
            return None;
        }
        let voters = raft.prs().conf().voters();
        raft.prs()
            .iter()
            .filter(|(id, _)| **id != raft.id && voters.contains(**id))
            .max_by_key(|(id, p)| (p.matched, **id))
            .map(|(id, _)| *id)
    }

    /// The commit index if this member can serve a linearizable read with
    /// no round trip: it is the only voter and has committed an entry in its
    /// own term (before that, an entry acknowledged under the previous term
    /// may not yet count as committed here). `None` means: on a single
    /// member, ask again after the next Ready; in a cluster, go through
    /// [`Core::request_read`].
    pub fn read_index(&self) -> Option<u64> {
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader || !raft.prs().is_singleton() {
            return None;
        }
        let committed = raft.raft_log.committed;
        match raft.raft_log.term(committed) {
            Ok(t) if t == raft.term => Some(committed),
            _ => None,
        }
    }

    /// True when this member is the only voter (no peers to ask).
    pub fn is_alone(&self) -> bool {
        self.node.raft.prs().is_singleton()
    }

    /// Messages that may leave now, even while a persist is in flight, taken
    /// out of raft-rs's outbox: all of a leader's (raft-rs sends those
    /// before the leader's own append is durable, thesis 10.2.1, and would
    /// only hold them until the next Ready), and a follower's forwarded
    /// proposals and ReadIndex requests. raft-rs holds every message of a
    /// follower's Ready until that Ready is persisted, because most of them
    /// (append and vote responses) vouch for this member's log; these two
    /// only ask the leader for something, so making them wait for this
    /// member's fsync (and for the one before it) only delays the client.
    pub fn take_sendable(&mut self) -> Vec<Message> {
        let raft = &mut self.node.raft;
        if raft.state == StateRole::Leader {
            return std::mem::take(&mut raft.msgs);
        }
        raft.msgs.extract_if(.., |m| is_request(m)).collect()
    }

    /// Starts raft's ReadIndex protocol for the reads batched under `ctx`:
    /// the leader confirms it still leads with a heartbeat round, and the
    /// answer comes out of a later Ready as a read state (`ReadyWork::
    /// read_states`). raft-rs drops the request silently when no leader is
    /// known or the leader has not yet committed in its term, so the caller
    /// issues it again until it is answered or its caller gives up. `ctx`
    /// must never be reused, by any member, across restarts: the leader
    /// merges requests with equal ctxs.
    pub fn request_read(&mut self, ctx: u64) {
        self.node.read_index(ctx.to_be_bytes().to_vec());
    }

    /// A message to `id` was dropped before leaving this member.
    pub fn report_unreachable(&mut self, id: u64) {
        self.node.report_unreachable(id);
    }

    /// A snapshot sent to `id` was delivered (`ok`) or lost.
    pub fn report_snapshot(&mut self, id: u64, ok: bool) {
        let status = if ok {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.node.report_snapshot(id, status);
    }

    pub fn progress(&self) -> Progress {
        let raft = &self.node.raft;
        Progress {
            id: raft.id,
            term: raft.term,
            leader_id: raft.leader_id,
            commit_index: raft.raft_log.committed,
            is_leader: raft.state == StateRole::Leader,
        }
    }

    /// Takes the next Ready, if any. A Ready carrying a snapshot from the
    /// leader stages it in the log store (readable at once, like entries).
    pub fn begin_ready(&mut self) -> Option<ReadyWork> {
        if !self.node.has_ready() {
            return None;
        }
        let mut ready = self.node.ready();
        let snapshot = (!ready.snapshot().is_empty()).then(|| {
            let meta = ready.snapshot().get_metadata().clone();
            self.node.store().stage_snapshot(&meta);
            meta
        });
        let entries = ready.take_entries();
        let must_sync = ready.must_sync();
        // Every write carries the current hard state, commit index included.
        // raft-rs reports a changed hard state only once, and a Ready whose
        // only change is the commit index is not written (no fsync), so
        // storing just `ready.hs()` would leave the durable commit index
        // behind for good; log truncation is bounded by it.
        let hard_state = if !entries.is_empty() || must_sync {
            Some(self.node.raft.hard_state())
        } else {
            ready.hs().cloned()
        };
        let work = ReadyWork {
            number: ready.number(),
            send_now: ready.take_messages(),
            apply: ready.take_committed_entries(),
            snapshot,
            entries,
            hard_state,
            must_sync,
            persisted_messages: ready.take_persisted_messages(),
            read_states: ready
                .take_read_states()
                .into_iter()
                .filter_map(|rs| {
                    let ctx: [u8; 8] = rs.request_ctx.as_slice().try_into().ok()?;
                    Some((u64::from_be_bytes(ctx), rs.index))
                })
                .collect(),
        };
        self.node.store().stage(&work.entries);
        self.node.advance_append_async(ready);
        // Committed entries are handed to Storage, which applies them in log
        // order; raft-rs only needs to know they were handed out. A snapshot
        // counts as applied only once it is persisted (raft-rs wants
        // applied <= persisted): see `finish_ready`.
        if work.snapshot.is_none() {
            self.node.advance_apply();
        }
        Some(work)
    }

    /// Runs the persist synchronously (tests and shutdown use this).
    pub fn persist(store: &LogStore, work: &ReadyWork) -> Result<(), StorageError> {
        if work.nothing_to_persist() {
            return Ok(());
        }
        if let Some(meta) = &work.snapshot {
            let hs = work
                .hard_state
                .clone()
                .unwrap_or_else(|| store.hard_state());
            store.persist_snapshot(meta, &hs)?;
        }
        store.persist(&work.entries, work.hard_state.as_ref())
    }

    /// Reports a Ready durable; returns the messages that waited for it.
    /// What it makes committed comes out of the next `begin_ready`.
    pub fn finish_ready(&mut self, work: ReadyWork) -> Vec<Message> {
        if let Some(last) = work.entries.last() {
            self.node.store().unstage(last.index);
        }
        self.node.on_persist_ready(work.number);
        if work.snapshot.is_some() {
            // Storage installs it next, before any later entry.
            self.node.advance_apply();
        }
        work.persisted_messages
    }

    pub fn store(&self) -> &LogStore {
        self.node.store()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logger() -> slog::Logger {
        slog::Logger::root(slog::Discard, slog::o!())
    }

    /// Drives Readies synchronously until none is left; returns what was
    /// handed out for applying.
    fn cycle(core: &mut Core) -> Vec<Entry> {
        let mut applied = Vec::new();
        while let Some(work) = core.begin_ready() {
            applied.extend(work.apply.clone());
            Core::persist(&core.store().clone(), &work).expect("persist");
            core.finish_ready(work);
        }
        applied
    }

    /// A single-member node on the log in `dir`, elected and caught up.
    fn elected(dir: &std::path::Path, applied: u64) -> Core {
        let store = LogStore::open(dir).expect("open");
        if store.is_new() {
            store.bootstrap(vec![1]).expect("bootstrap");
        }
        let mut core = Core::new(1, store, applied, 10, 1, &logger()).expect("core");
        core.campaign_if_alone().expect("campaign");
        cycle(&mut core);
        core
    }

    /// The payloads of normal entries, leader no-ops left out.
    fn payloads(entries: Vec<Entry>) -> Vec<Vec<u8>> {
        entries
            .into_iter()
            .filter(|e| !e.data.is_empty())
            .map(|e| e.data.to_vec())
            .collect()
    }

    #[test]
    fn single_member_commits_a_batch_of_proposals_with_one_persist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::open(dir.path()).expect("open");
        store.bootstrap(vec![1]).expect("bootstrap");
        let mut core = Core::new(1, store, 0, 10, 1, &logger()).expect("core");
        assert_eq!(core.propose(b"x".to_vec()), Err(EtcdError::NoLeader));
        core.campaign_if_alone().expect("campaign");
        cycle(&mut core);
        assert!(core.progress().is_leader);
        // Leader committed its empty entry in its term: reads may be served.
        let ri = core.read_index().expect("read index");

        for i in 0..3u8 {
            core.propose(vec![i]).expect("propose");
        }
        let work = core.begin_ready().expect("ready");
        assert_eq!(
            work.entries.len(),
            3,
            "all queued proposals share one Ready"
        );
        Core::persist(&core.store().clone(), &work).expect("persist");
        core.finish_ready(work);
        // The Ready that hands out the committed entries only moves the
        // commit index: it costs no fsync.
        let work = core.begin_ready().expect("ready with committed entries");
        assert!(
            work.nothing_to_persist(),
            "a commit-only Ready must not be synced"
        );
        let data: Vec<Vec<u8>> = work.apply.iter().map(|e| e.data.to_vec()).collect();
        assert_eq!(data, vec![vec![0], vec![1], vec![2]]);
        core.finish_ready(work);
        assert_eq!(core.read_index(), Some(ri + 3));
    }

    #[test]
    fn proposals_made_while_a_persist_runs_join_the_next_ready() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut core = elected(dir.path(), 0);

        core.propose(b"a".to_vec()).expect("propose");
        let first = core.begin_ready().expect("ready");
        // The fsync of `first` is running: more proposals arrive meanwhile.
        core.propose(b"b".to_vec()).expect("propose");
        core.propose(b"c".to_vec()).expect("propose");
        Core::persist(&core.store().clone(), &first).expect("persist");
        core.finish_ready(first);
        assert_eq!(
            payloads(cycle(&mut core)),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
    }

    /// A burst larger than the keep window, then truncation, then a
    /// restart: the log must load. Truncating at `flushed - keep` alone
    /// passes the persisted commit index and the reopened log is refused.
    #[test]
    fn truncation_never_passes_the_persisted_commit_index() {
        const KEEP: u64 = 50;
        let burst = |dir: &std::path::Path| -> (LogStore, u64) {
            let mut core = elected(dir, 0);
            // One Ready carries the whole burst; the Ready that then commits
            // it only moves the commit index, so it is never written.
            for i in 0..(3 * KEEP) {
                core.propose(i.to_le_bytes().to_vec()).expect("propose");
            }
            let applied = cycle(&mut core).last().map(|e| e.index).expect("applied");
            let log = core.store().clone();
            assert!(
                log.hard_state().commit < applied - KEEP,
                "the burst's commit is not persisted"
            );
            (log, applied)
        };
        // raft-rs panics on such a log (its `fatal!`) rather than erring.
        let reopen = |dir: &std::path::Path, applied: u64| -> bool {
            let dir = dir.to_path_buf();
            std::panic::catch_unwind(move || {
                let store = LogStore::open(&dir).expect("reopen");
                Core::new(1, store, applied, 10, 1, &logger()).is_ok()
            })
            .unwrap_or(false)
        };

        // The seeded fault: the old rule, `applied - keep`.
        let bad = tempfile::tempdir().expect("tempdir");
        let (log, applied) = burst(bad.path());
        log.compact_to(applied - KEEP).expect("compact");
        drop(log);
        assert!(!reopen(bad.path(), applied), "raft-rs must refuse this log");

        let good = tempfile::tempdir().expect("tempdir");
        let (log, applied) = burst(good.path());
        let first = raft::Storage::first_index(&log).expect("first");
        let at = |log: &LogStore, flushed| {
            truncation_point(first, flushed, log.hard_state().commit, KEEP, 10)
        };
        let commit = log.hard_state().commit;
        assert_eq!(
            at(&log, applied),
            Some(commit).filter(|c| *c >= first),
            "bounded by the persisted commit, not the keep window"
        );
        // The next write persists the burst's commit with it; now the keep
        // window is what limits truncation.
        let mut core = Core::new(1, log.clone(), applied, 10, 1, &logger()).expect("core");
        core.campaign_if_alone().expect("campaign");
        cycle(&mut core);
        core.propose(b"next".to_vec()).expect("propose");
        let applied = cycle(&mut core).last().map(|e| e.index).expect("applied");
        assert_eq!(at(&log, applied), Some(applied - KEEP));
        log.compact_to(applied - KEEP).expect("compact");
        drop((core, log));
        assert!(reopen(good.path(), applied), "the truncated log loads");
    }

    #[test]
    fn truncation_point_keeps_the_window_and_waits_for_the_threshold() {
        // Below the threshold: nothing.
        assert_eq!(truncation_point(1, 900, 900, 100, 1000), None);
        // Keep window behind the flushed index.
        assert_eq!(truncation_point(1, 5000, 5000, 100, 1000), Some(4900));
        // Clamped by the persisted commit.
        assert_eq!(truncation_point(1, 5000, 3000, 100, 1000), Some(3000));
        // Nothing left to drop.
        assert_eq!(truncation_point(4000, 5050, 3000, 100, 1000), None);
    }

    #[test]
    fn restart_redelivers_committed_but_unapplied_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut core = elected(dir.path(), 0);
            core.propose(b"a".to_vec()).expect("propose");
            core.propose(b"b".to_vec()).expect("propose");
            cycle(&mut core);
        }
        // The state store had applied only the leader's empty entry (index 2
        // after the term-1 election entry), so "a" and "b" come back.
        let store = LogStore::open(dir.path()).expect("reopen");
        let mut core = Core::new(1, store, 2, 10, 1, &logger()).expect("core");
        core.campaign_if_alone().expect("campaign");
        assert_eq!(
            payloads(cycle(&mut core)),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
    }

    /// Three cores joined by an in-memory network whose links can be cut;
    /// each `round` runs every core's Ready loop once and delivers what it
    /// sent (raft messages never cross a real socket here).
    struct Net {
        _dirs: Vec<tempfile::TempDir>,
        cores: Vec<Core>,
        /// Members cut off from everyone (their messages are dropped).
        isolated: Vec<u64>,
        /// Read states seen, per member: (ctx, index).
        reads: Vec<Vec<(u64, u64)>>,
        /// Entries handed out for applying, per member.
        applied: Vec<Vec<Entry>>,
    }

    impl Net {
        fn new() -> Net {
            let mut dirs = Vec::new();
            let mut cores = Vec::new();
            for id in 1..=3u64 {
                let dir = tempfile::tempdir().expect("tempdir");
                let store = LogStore::open(dir.path()).expect("open");
                store.bootstrap(vec![1, 2, 3]).expect("bootstrap");
                cores.push(Core::new(id, store, 0, 10, 1, &logger()).expect("core"));
                dirs.push(dir);
            }
            Net {
                _dirs: dirs,
                cores,
                isolated: Vec::new(),
                reads: vec![Vec::new(); 3],
                applied: vec![Vec::new(); 3],
            }
        }

        fn round(&mut self) {
            let mut wire = Vec::new();
            for (i, core) in self.cores.iter_mut().enumerate() {
                while let Some(mut work) = core.begin_ready() {
                    wire.append(&mut work.send_now);
                    self.reads[i].append(&mut work.read_states);
                    self.applied[i].append(&mut work.apply);
                    Core::persist(&core.store().clone(), &work).expect("persist");
                    wire.extend(core.finish_ready(work));
                }
            }
            for m in wire {
                if self.isolated.contains(&m.from) || self.isolated.contains(&m.to) {
                    continue;
                }
                let _ = self.cores[(m.to - 1) as usize].step(m);
            }
        }

        fn tick_until(&mut self, what: &str, mut done: impl FnMut(&Net) -> bool) {
            for _ in 0..500 {
                if done(self) {
                    return;
                }
                for core in &mut self.cores {
                    core.tick();
                }
                self.round();
            }
            panic!("{what}: not within 500 ticks");
        }

        fn leader(&self) -> Option<usize> {
            let leaders: Vec<usize> = (0..3)
                .filter(|&i| {
                    !self.isolated.contains(&(i as u64 + 1)) && self.cores[i].progress().is_leader
                })
                .collect();
            (leaders.len() == 1).then(|| leaders[0])
        }
    }

    #[test]
    fn cluster_forwards_follower_proposals_and_serves_read_index_on_followers() {
        let mut net = Net::new();
        assert_eq!(
            net.cores[0].propose(b"x".to_vec()),
            Err(EtcdError::NoLeader)
        );
        net.tick_until("a leader elected", |n| {
            n.leader().is_some() && n.cores.iter().all(|c| c.progress().leader_id != 0)
        });
        let leader = net.leader().expect("leader");
        let follower = (leader + 1) % 3;
        assert_eq!(
            net.cores[follower].read_index(),
            None,
            "no shortcut with peers"
        );

        net.cores[follower]
            .propose(b"from-follower".to_vec())
            .expect("forwarded");
        net.tick_until("the follower's proposal applied everywhere", |n| {
            n.applied
                .iter()
                .all(|a| a.iter().any(|e| e.data.as_ref() == b"from-follower"))
        });

        let commit = net.cores[leader].progress().commit_index;
        net.cores[follower].request_read(7);
        net.tick_until("the follower's read answered", |n| {
            !n.reads[follower].is_empty()
        });
        assert_eq!(net.reads[follower], vec![(7, commit)]);
    }

    /// Runs `from`'s Readies to the end and delivers their messages to `to`
    /// only (0-based indexes).
    fn ready_to(net: &mut Net, from: usize, to: usize) {
        let mut wire = Vec::new();
        while let Some(mut work) = net.cores[from].begin_ready() {
            wire.append(&mut work.send_now);
            Core::persist(&net.cores[from].store().clone(), &work).expect("persist");
            wire.extend(net.cores[from].finish_ready(work));
        }
        for m in wire.into_iter().filter(|m| m.to == to as u64 + 1) {
            net.cores[to].step(m).expect("step");
        }
    }

    fn kinds(msgs: &[Message]) -> Vec<raft::eraftpb::MessageType> {
        msgs.iter().map(|m| m.get_msg_type()).collect()
    }

    #[test]
    fn a_followers_requests_leave_during_its_persist_and_its_acceptances_wait() {
        use raft::eraftpb::MessageType::*;
        let mut net = Net::new();
        net.tick_until("a leader elected", |n| {
            n.leader().is_some() && n.cores.iter().all(|c| c.progress().leader_id != 0)
        });
        let leader = net.leader().expect("leader");
        let follower = (leader + 1) % 3;
        // Rounds without ticks until nobody has anything left to do.
        for _ in 0..20 {
            if net.cores.iter().all(|c| !c.node.has_ready()) {
                break;
            }
            net.round();
        }

        // A leader's messages may always leave: its appends, at once.
        net.cores[leader].propose(b"one".to_vec()).expect("propose");
        let appends = net.cores[leader].take_sendable();
        assert_eq!(kinds(&appends), vec![MsgAppend, MsgAppend]);
        for m in appends.into_iter().filter(|m| m.to == follower as u64 + 1) {
            net.cores[follower].step(m).expect("step");
        }
        // The follower's persist of "one" is in flight; its acceptance is
        // held back with it.
        let in_flight = net.cores[follower].begin_ready().expect("a Ready");
        assert!(!in_flight.nothing_to_persist());
        assert!(net.cores[follower].take_sendable().is_empty());

        // Meanwhile another append arrives, and a client of the follower
        // proposes and reads.
        net.cores[leader].propose(b"two".to_vec()).expect("propose");
        ready_to(&mut net, leader, follower);
        net.cores[follower]
            .propose(b"three".to_vec())
            .expect("forwarded");
        net.cores[follower].request_read(9);
        let sent = net.cores[follower].take_sendable();
        assert_eq!(kinds(&sent), vec![MsgPropose, MsgReadIndex]);
        assert!(sent.iter().all(|m| m.to == leader as u64 + 1));
        // The acceptance of "two" still waits in raft's outbox for the
        // follower's next persist.
        assert_eq!(
            kinds(&net.cores[follower].node.raft.msgs),
            vec![MsgAppendResponse]
        );
        Core::persist(&net.cores[follower].store().clone(), &in_flight).expect("persist");
        let accepted = net.cores[follower].finish_ready(in_flight);
        assert_eq!(kinds(&accepted), vec![MsgAppendResponse]);
    }

    #[test]
    fn a_deposed_leader_answers_no_read() {
        let mut net = Net::new();
        net.tick_until("a leader elected", |n| n.leader().is_some());
        let old = net.leader().expect("leader");
        net.isolated.push(old as u64 + 1);
        net.cores[old].request_read(1);
        net.tick_until("another leader elected", |n| {
            n.leader().is_some_and(|l| l != old)
        });
        for _ in 0..50 {
            net.cores[old].request_read(1);
            for core in &mut net.cores {
                core.tick();
            }
            net.round();
        }
        assert!(
            net.reads[old].is_empty(),
            "isolated old leader answered {:?}",
            net.reads[old]
        );
        assert!(
            !net.cores[old].progress().is_leader,
            "check_quorum steps it down"
        );
    }
}
