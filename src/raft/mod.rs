//! Consensus: the RaftNode actor ([`node`]) around a raft-rs `RawNode`
//! ([`core`], testable without I/O), its raft-engine log ([`log_store`]),
//! and the interface to peers ([`transport`]).
pub mod core;
pub mod log_store;
pub mod node;
pub mod tick_clock;
pub mod transport;
