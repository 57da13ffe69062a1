//! The KV scenarios: `put`, `range`, `txn-cas`, `mixed`, and the bulk load
//! the read scenarios, `load-100k` and `restart-1m` start with.
//!
//! Each is a [`Client`] for the closed-loop [`runner`](crate::runner): one
//! KV gRPC client per simulated client, on the connection the pool gives it.

use clap::{Args, ValueEnum};
use serde::Serialize;
use tonic::transport::Channel;

use crate::keys::{KeyGen, Rng};
use crate::runner::{drive, Client, Done, Load};
use crate::Report;
use cairn::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn::proto::etcdserverpb::kv_client::KvClient;
use cairn::proto::etcdserverpb::request_op::Request as Op;
use cairn::proto::etcdserverpb::response_op::Response as OpResponse;
use cairn::proto::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};

use crate::conn::Pool;

/// etcd's default `--max-txn-ops`: the most puts one load transaction carries.
pub const LOAD_BATCH: usize = 128;

/// Linearizable (through the leader's read index) or serializable (local).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize)]
pub enum Consistency {
    /// Linearizable.
    #[default]
    #[value(name = "l")]
    L,
    /// Serializable.
    #[value(name = "s")]
    S,
}

/// Options of `put`.
#[derive(Args, Clone, Debug, Serialize)]
pub struct PutOpts {
    /// Every key starts with this.
    #[arg(long, default_value = "bench/")]
    pub prefix: String,
    /// Key size in bytes (prefix included; the index is zero-padded to it).
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// Number of distinct keys written.
    #[arg(long, default_value_t = 100_000)]
    pub key_space: u64,
    /// Write keys 0, 1, 2, ... instead of random keys of the key space.
    #[arg(long)]
    pub sequential_keys: bool,
}

impl Default for PutOpts {
    fn default() -> Self {
        PutOpts {
            prefix: "bench/".into(),
            key_size: 16,
            val_size: 256,
            key_space: 100_000,
            sequential_keys: false,
        }
    }
}

/// Options of `range`.
#[derive(Args, Clone, Debug, Serialize)]
pub struct RangeOpts {
    #[arg(long, default_value = "bench/")]
    pub prefix: String,
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Keys loaded before the run (not timed); the reads pick among them.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Value size of the loaded keys.
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// l = linearizable, s = serializable.
    #[arg(long, value_enum, default_value_t = Consistency::L)]
    pub consistency: Consistency,
    /// 0: get one random key. N > 0: read a page of N keys of the prefix,
    /// starting at a random key (a paginated list).
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
}

impl Default for RangeOpts {
    fn default() -> Self {
        RangeOpts {
            prefix: "bench/".into(),
            key_size: 16,
            keys: 1000,
            val_size: 256,
            consistency: Consistency::L,
            limit: 0,
        }
    }
}

/// Options of `txn-cas`.
#[derive(Args, Clone, Debug, Serialize)]
pub struct CasOpts {
    #[arg(long, default_value = "bench/cas/")]
    pub prefix: String,
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// Keys the clients compete for; 0 = one key per client (no conflicts).
    #[arg(long, default_value_t = 0)]
    pub key_space: u64,
}

impl Default for CasOpts {
    fn default() -> Self {
        CasOpts {
            prefix: "bench/cas/".into(),
            val_size: 256,
            key_space: 0,
        }
    }
}

/// Options of `mixed`.
#[derive(Args, Clone, Debug, Serialize)]
pub struct MixedOpts {
    #[arg(long, default_value = "bench/")]
    pub prefix: String,
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Keys loaded before the run; reads and writes pick among them.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// Fraction of operations that are reads (0.0 to 1.0).
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// Consistency of the reads.
    #[arg(long, value_enum, default_value_t = Consistency::L)]
    pub consistency: Consistency,
}

impl Default for MixedOpts {
    fn default() -> Self {
        MixedOpts {
            prefix: "bench/".into(),
            key_size: 16,
            keys: 1000,
            val_size: 256,
            read_ratio: 0.9,
            consistency: Consistency::L,
        }
    }
}

fn status_unexpected(what: &str) -> tonic::Status {
    tonic::Status::internal(format!("unexpected response: {what}"))
}

/// A `put` client.
struct Putter {
    kv: KvClient<Channel>,
    keys: KeyGen,
    sequential: bool,
    rng: Rng,
    value: Vec<u8>,
}

impl Client for Putter {
    async fn op(&mut self, seq: u64) -> Result<Done, tonic::Status> {
        let key = if self.sequential {
            self.keys.key(seq)
        } else {
            self.keys.random(&mut self.rng)
        };
        let req = PutRequest {
            key,
            value: self.value.clone(),
            ..Default::default()
        };
        self.kv.put(req).await?;
        Ok(Done::one("put"))
    }
}

pub async fn run_put(load: &Load, o: &PutOpts) -> Result<Report, crate::BenchError> {
    let pool = Pool::connect(&load.endpoints, load.conns).await?;
    let keys = KeyGen::new(&o.prefix, o.key_size, o.key_space);
    Ok(drive("put", load, |i| {
        let mut rng = Rng::new(i as u64 + 1);
        Putter {
            kv: kv(&pool, i),
            keys: keys.clone(),
            sequential: o.sequential_keys,
            value: rng.bytes(o.val_size),
            rng,
        }
    })
    .await)
}

fn kv(pool: &Pool, i: usize) -> KvClient<Channel> {
    KvClient::new(pool.channel(i)).max_decoding_message_size(64 << 20)
}

/// A reader of single keys or pages.
struct Reader {
    kv: KvClient<Channel>,
    keys: KeyGen,
    rng: Rng,
    serializable: bool,
    limit: i64,
}

impl Reader {
    async fn read(&mut self) -> Result<(), tonic::Status> {
        let key = self.keys.random(&mut self.rng);
        let req = if self.limit > 0 {
            RangeRequest {
                key,
                range_end: self.keys.range_end(),
                limit: self.limit,
                serializable: self.serializable,
                ..Default::default()
            }
        } else {
            RangeRequest {
                key,
                serializable: self.serializable,
                ..Default::default()
            }
        };
        let resp = self.kv.range(req).await?.into_inner();
        if resp.kvs.is_empty() {
            return Err(status_unexpected("a loaded key is missing"));
        }
        Ok(())
    }
}

impl Client for Reader {
    async fn op(&mut self, _seq: u64) -> Result<Done, tonic::Status> {
        self.read().await?;
        Ok(Done::one("range"))
    }
}

pub async fn run_range(load: &Load, o: &RangeOpts) -> Result<Report, crate::BenchError> {
    let pool = Pool::connect(&load.endpoints, load.conns).await?;
    let keys = KeyGen::new(&o.prefix, o.key_size, o.keys);
    preload(&pool, &keys, o.keys, o.val_size, load).await?;
    Ok(drive("range", load, |i| Reader {
        kv: kv(&pool, i),
        keys: keys.clone(),
        rng: Rng::new(i as u64 + 1),
        serializable: o.consistency == Consistency::S,
        limit: o.limit,
    })
    .await)
}

/// A compare-and-swap client: txn(mod_revision(k) == last seen) put, else get.
struct Casser {
    kv: KvClient<Channel>,
    keys: KeyGen,
    /// Own key index when there is no shared key space.
    own: Option<u64>,
    rng: Rng,
    value: Vec<u8>,
    /// Last mod_revision seen per key index (0 = key never seen: absent).
    seen: std::collections::HashMap<u64, i64>,
}

impl Client for Casser {
    async fn op(&mut self, _seq: u64) -> Result<Done, tonic::Status> {
        let idx = self.own.unwrap_or_else(|| self.rng.below(self.keys.space));
        let key = self.keys.key(idx);
        let seen = self.seen.get(&idx).copied().unwrap_or(0);
        let req = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: key.clone(),
                target_union: Some(TargetUnion::ModRevision(seen)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(Op::RequestPut(PutRequest {
                    key: key.clone(),
                    value: self.value.clone(),
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(Op::RequestRange(RangeRequest {
                    key,
                    ..Default::default()
                })),
            }],
        };
        let resp = self.kv.txn(req).await?.into_inner();
        if resp.succeeded {
            let rev = resp.header.map(|h| h.revision).unwrap_or(0);
            self.seen.insert(idx, rev);
            Ok(Done::one("cas-ok"))
        } else {
            let current = resp
                .responses
                .into_iter()
                .find_map(|r| match r.response {
                    Some(OpResponse::ResponseRange(rr)) => Some(rr),
                    _ => None,
                })
                .ok_or_else(|| status_unexpected("failed txn without its range"))?;
            let rev = current.kvs.first().map_or(0, |kv| kv.mod_revision);
            self.seen.insert(idx, rev);
            Ok(Done::one("cas-conflict"))
        }
    }
}

pub async fn run_txn_cas(load: &Load, o: &CasOpts) -> Result<Report, crate::BenchError> {
    let pool = Pool::connect(&load.endpoints, load.conns).await?;
    let shared = o.key_space > 0;
    let space = if shared {
        o.key_space
    } else {
        load.clients.max(1) as u64
    };
    let keys = KeyGen::new(&o.prefix, o.prefix.len() + 8, space);
    Ok(drive("txn-cas", load, |i| {
        let mut rng = Rng::new(i as u64 + 1);
        Casser {
            kv: kv(&pool, i),
            keys: keys.clone(),
            own: (!shared).then_some(i as u64),
            value: rng.bytes(o.val_size),
            rng,
            seen: Default::default(),
        }
    })
    .await)
}

/// A client that reads or writes by a coin toss.
struct Mixer {
    reader: Reader,
    value: Vec<u8>,
    read_ratio: f64,
}

impl Client for Mixer {
    async fn op(&mut self, _seq: u64) -> Result<Done, tonic::Status> {
        if self.reader.rng.unit() < self.read_ratio {
            self.reader.read().await?;
            Ok(Done::one("read"))
        } else {
            let key = self.reader.keys.random(&mut self.reader.rng);
            let req = PutRequest {
                key,
                value: self.value.clone(),
                ..Default::default()
            };
            self.reader.kv.put(req).await?;
            Ok(Done::one("write"))
        }
    }
}

pub async fn run_mixed(load: &Load, o: &MixedOpts) -> Result<Report, crate::BenchError> {
    if !(0.0..=1.0).contains(&o.read_ratio) {
        return Err(crate::BenchError::Usage(format!(
            "--read-ratio {} is not between 0 and 1",
            o.read_ratio
        )));
    }
    let pool = Pool::connect(&load.endpoints, load.conns).await?;
    let keys = KeyGen::new(&o.prefix, o.key_size, o.keys);
    preload(&pool, &keys, o.keys, o.val_size, load).await?;
    Ok(drive("mixed", load, |i| {
        let mut rng = Rng::new(i as u64 + 1);
        Mixer {
            value: rng.bytes(o.val_size),
            reader: Reader {
                kv: kv(&pool, i),
                keys: keys.clone(),
                rng,
                serializable: o.consistency == Consistency::S,
                limit: 0,
            },
            read_ratio: o.read_ratio,
        }
    })
    .await)
}

/// A loader: operation `seq` writes keys `seq*LOAD_BATCH ..` in one txn.
struct Loader {
    kv: KvClient<Channel>,
    keys: KeyGen,
    n: u64,
    value: Vec<u8>,
}

impl Client for Loader {
    async fn op(&mut self, seq: u64) -> Result<Done, tonic::Status> {
        let first = seq * LOAD_BATCH as u64;
        let last = (first + LOAD_BATCH as u64).min(self.n);
        let success = (first..last)
            .map(|i| RequestOp {
                request: Some(Op::RequestPut(PutRequest {
                    key: self.keys.key(i),
                    value: self.value.clone(),
                    ..Default::default()
                })),
            })
            .collect();
        let req = TxnRequest {
            success,
            ..Default::default()
        };
        self.kv.txn(req).await?;
        Ok(Done {
            tag: "keys",
            items: last - first,
        })
    }
}

/// Writes keys `0..n` of `keys` with `val_size`-byte values, in txns of
/// [`LOAD_BATCH`] puts, from `load.clients` clients (at least 8), within
/// `load.max_duration`. The report counts keys.
pub async fn load_keys(
    pool: &Pool,
    keys: &KeyGen,
    n: u64,
    val_size: usize,
    load: &Load,
    name: &str,
) -> Report {
    let batches = n.div_ceil(LOAD_BATCH as u64);
    let spec = Load {
        total: batches,
        clients: load.clients.max(8),
        ..load.clone()
    };
    let value = Rng::new(42).bytes(val_size);
    drive(name, &spec, |i| Loader {
        kv: kv(pool, i),
        keys: keys.clone(),
        n,
        value: value.clone(),
    })
    .await
}

/// [`load_keys`] before a read scenario: untimed, and any error aborts the run.
async fn preload(
    pool: &Pool,
    keys: &KeyGen,
    n: u64,
    val_size: usize,
    load: &Load,
) -> Result<(), crate::BenchError> {
    let spec = Load {
        progress: false,
        timeline: false,
        ..load.clone()
    };
    let r = load_keys(pool, keys, n, val_size, &spec, "preload").await;
    if r.errors > 0 || r.ops < n {
        return Err(crate::BenchError::Setup(format!(
            "loading {n} keys: {} loaded, {} errors: {:?}",
            r.ops, r.errors, r.error_samples
        )));
    }
    Ok(())
}
