//! History checkers for cairn's robustness tests (docs/robustness.md).
//!
//! A robustness run drives real cairn members with real etcd clients while a
//! nemesis kills, pauses and partitions them, and records everything the
//! clients saw as a [`history::History`]: every KV operation with its
//! invocation and completion time and its response (or the fact that it
//! ended in an error or a timeout, so it may or may not have happened), and
//! every watch with the responses it received. Then two checkers judge it:
//!
//! * [`linearizability::check`]: is there one order of the operations,
//!   consistent with real time, in which a model of etcd's KV store (keys,
//!   values, revisions, versions, compare-and-swap transactions) gives every
//!   response the clients saw? A Wing–Gong search (as porcupine's), made
//!   fast by the revisions etcd returns.
//! * [`watch::check`]: etcd's watch guarantees (ordered, unique, atomic,
//!   reliable, resumable, progress notifications that tell the truth),
//!   judged against the writes the whole history proves happened.
//! * [`lease_end::check`]: after the run, every lease ended within its TTL
//!   (and etcd's allowances), and took its keys with it.
//!
//! Nothing here talks to a server: the checkers are plain functions over
//! recorded data, unit-tested with hand-made good and bad histories.

pub mod history;
pub mod lease_end;
pub mod linearizability;
pub mod watch;
