//! The command line of `cairn-bench`, modelled on etcd's `tools/benchmark`
//! (`--endpoints`, `--conns`, `--clients`, `--total`, `put --key-size
//! --val-size --key-space-size --sequential-keys`, `range --consistency`).
//!
//! Exit status: 0 when the run had no error, 1 when it counted errors (or a
//! server failed), 2 for bad usage (e.g. `compare --members 2`, or a cluster scenario
//! without `--members 3`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::compare::{self, CompareOpts, Summary};
use crate::kv::{CasOpts, MixedOpts, PutOpts, RangeOpts};
use crate::lease::LeaseOpts;
use crate::watch::WatchOpts;
use crate::{chart, run, BenchError, Load, Report, Scenario};

#[derive(Parser, Debug)]
#[command(
    name = "cairn-bench",
    version,
    about = "Load generator for the etcd v3 gRPC API (drives etcd and cairn alike), and an etcd/cairn comparison"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Options every load scenario takes.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// Server endpoints, comma-separated (`host:port` or `http://host:port`).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// HTTP/2 connections; client i uses connection i % conns.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Operations in all (default 10000, or unbounded with --duration).
    #[arg(long)]
    pub total: Option<u64>,
    /// Run for this many seconds (also a cap with --total; default cap 300).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Print the report as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Also print, on stderr, each second's operations and p99 / max
    /// latency (Unix time stamps), e.g. to see stalls during a compaction.
    #[arg(long)]
    pub timeline: bool,
}

impl Common {
    pub fn load(&self) -> Load {
        let total = match (self.total, self.duration) {
            (Some(t), _) => t,
            (None, Some(_)) => u64::MAX,
            (None, None) => 10_000,
        };
        Load {
            endpoints: self.endpoints.clone(),
            conns: self.conns.max(1),
            clients: self.clients.max(1),
            total,
            max_duration: Duration::from_secs(self.duration.unwrap_or(300)),
            progress: !self.no_progress && !self.json,
            timeline: self.timeline,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Put keys (random or sequential over a key space).
    Put {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        opts: PutOpts,
    },
    /// Range: single keys or pages, linearizable or serializable (loads --keys first).
    Range {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        opts: RangeOpts,
    },
    /// Txn compare-and-swap on mod_revision.
    TxnCas {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        opts: CasOpts,
    },
    /// Reads and writes mixed by --read-ratio (loads --keys first).
    Mixed {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        opts: MixedOpts,
    },
    /// Watchers on a prefix and one or more writers: delivery latency,
    /// deliveries/s, puts/s, and a check that no event is missing or out of
    /// order (--clients and --total do not apply: see --watchers, --streams,
    /// --writers, --puts).
    Watch {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        opts: WatchOpts,
    },
    /// Grant leases, then keep them alive over streams (--total keep-alives).
    Lease {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        opts: LeaseOpts,
    },
    /// Start etcd and cairn with the same flags, one at a time, alternating,
    /// run scenarios against each, and report median cairn/etcd ratios.
    Compare(CompareOpts),
    /// Render the put-clients chart (SVG) from a compare summary.json.
    Chart {
        /// A summary.json written by `compare --out`.
        #[arg(long)]
        summary: PathBuf,
        /// The SVG file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Entry point of the `cairn-bench` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e @ BenchError::Usage(_)) => {
            eprintln!("cairn-bench: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("cairn-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> Result<ExitCode, BenchError> {
    let (common, scenario) = match command {
        Command::Put { common, opts } => (common, Scenario::Put(opts)),
        Command::Range { common, opts } => (common, Scenario::Range(opts)),
        Command::TxnCas { common, opts } => (common, Scenario::TxnCas(opts)),
        Command::Mixed { common, opts } => (common, Scenario::Mixed(opts)),
        Command::Watch { common, opts } => (common, Scenario::Watch(opts)),
        Command::Lease { common, opts } => (common, Scenario::Lease(opts)),
        Command::Compare(opts) => {
            let summary = compare::compare(&opts).await?;
            print!("{}", compare::summary_table(&summary));
            return Ok(ExitCode::SUCCESS);
        }
        Command::Chart { summary, out } => {
            let text = std::fs::read_to_string(&summary)?;
            let s: Summary = serde_json::from_str(&text).map_err(|e| {
                BenchError::Usage(format!("{}: not a compare summary: {e}", summary.display()))
            })?;
            let pts = chart::sweep_points(&s).ok_or_else(|| {
                BenchError::Usage("the summary has no put-clients scenario".into())
            })?;
            std::fs::write(&out, chart::render_svg(&pts))?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let report = run(&common.load(), &scenario).await?;
    print_report(&report, common.json);
    Ok(if report.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(r: &Report, json: bool) {
    if json {
        match serde_json::to_string_pretty(r) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("cairn-bench: cannot serialise the report: {e}"),
        }
    } else {
        print!("{}", r.to_table());
    }
}
