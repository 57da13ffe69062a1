//! The measuring instruments: a load generator that speaks the etcd v3 gRPC
//! API, so it drives etcd and cairn identically, and a comparison that runs
//! both servers with the same flags and reports cairn/etcd ratios (the
//! `cairn-bench` binary; docs/performance.md says how the figures are made).
//!
//! * [`runner`]: the closed-loop driver — `--clients` tasks over `--conns`
//!   HTTP/2 connections ([`conn`]), bounded in count and time, latencies in
//!   HDR histograms ([`report`]).
//! * [`kv`]: `put`, `range`, `txn-cas`, `mixed` and the bulk loader;
//!   [`watch`] (delivery latency, and a check that no event is missing or out
//!   of order); [`lease`] (grant + keep-alive streams).
//! * [`server`]: starts etcd or cairn on free ports and a fresh data dir,
//!   reads peak RSS, restarts; [`compare`] runs the scenarios against both,
//!   alternating, and summarises medians and ratios; [`chart`] draws
//!   throughput and p99 against client count as SVG.
//! * [`cli`]: the command line of `cairn-bench`.
//!
//! This crate is a client of the server, never part of it: it sits in its
//! own workspace package so that the `cairn` package's dependencies are only
//! what the server runs. From `cairn` it takes the generated etcd v3 client
//! stubs ([`cairn::proto`]) and nothing else; the server it measures is the
//! `cairn` binary, started as a process (`--cairn-bin`).

pub mod chart;
pub mod cli;
pub mod compare;
pub mod conn;
pub mod keys;
pub mod kv;
pub mod lease;
pub mod report;
pub mod runner;
pub mod server;
pub mod watch;

pub use report::Report;
pub use runner::Load;

/// Why a benchmark could not run (as opposed to errors counted in a report).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad options.
    #[error("usage: {0}")]
    Usage(String),
    /// The server could not be reached.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The server does not implement what the scenario needs (gRPC
    /// UNIMPLEMENTED), e.g. Watch or Lease on a cairn that has not got them.
    #[error("not implemented by the server: {0}")]
    Unimplemented(String),
    /// Preparing the run failed (e.g. loading the keys a read scenario needs).
    #[error("setup failed: {0}")]
    Setup(String),
    /// Starting, stopping or restarting a server process failed.
    #[error("server process: {0}")]
    Server(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// One load scenario with its options.
#[derive(Clone, Debug)]
pub enum Scenario {
    Put(kv::PutOpts),
    Range(kv::RangeOpts),
    TxnCas(kv::CasOpts),
    Mixed(kv::MixedOpts),
    Watch(watch::WatchOpts),
    Lease(lease::LeaseOpts),
}

/// Runs one scenario against `load.endpoints`.
pub async fn run(load: &Load, scenario: &Scenario) -> Result<Report, BenchError> {
    match scenario {
        Scenario::Put(o) => kv::run_put(load, o).await,
        Scenario::Range(o) => kv::run_range(load, o).await,
        Scenario::TxnCas(o) => kv::run_txn_cas(load, o).await,
        Scenario::Mixed(o) => kv::run_mixed(load, o).await,
        Scenario::Watch(o) => watch::run_watch(load, o).await,
        Scenario::Lease(o) => lease::run_lease(load, o).await,
    }
}
