//! Durability under SIGKILL: concurrent gRPC writers put continuously while
//! the server is killed with SIGKILL at random moments and restarted on the
//! same data dir, several times. Afterwards:
//!
//! * every acknowledged put is present, with the acknowledged value or a
//!   later one by the same writer (a later put may land even if its ack was
//!   lost to the kill), and with a mod revision consistent with the ack;
//! * revisions never go backwards: each writer's acks have strictly
//!   increasing revisions (its puts are sequential), and after each restart
//!   a read's revision is at least every revision acknowledged before it.
//!
//! The random moments are random amounts of acknowledged progress, so the
//! test waits on conditions, never on sleeps. `CRASH_SEED=<n>` replays a run.

#[path = "../tests/common/mod.rs"]
mod common;

use cairn::proto::etcdserverpb::kv_client::KvClient;
use cairn::proto::etcdserverpb::{PutRequest, RangeRequest};
use cairn::proto::mvccpb::KeyValue;
use common::{grpc, wait_until, Kind, Server};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WRITERS: u64 = 4;
/// Keys per writer; puts cycle through them so later values overwrite.
const KEYS_PER_WRITER: u64 = 8;
const ROUNDS: u32 = 5;
/// How long a round may take to make its random amount of progress.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(15);

/// xorshift64*: enough randomness for kill moments, and replayable.
struct Rng(u64);

impl Rng {
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        lo + self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % (hi - lo)
    }
}

/// Shared between the writers and the test thread.
#[derive(Default)]
struct Progress {
    stop: AtomicBool,
    /// Acknowledged puts, all writers together.
    acked: AtomicU64,
    /// The highest revision any ack carried.
    max_acked_revision: AtomicI64,
}

/// One acknowledged put.
#[derive(Clone, Copy, Debug)]
struct Ack {
    seq: u64,
    revision: i64,
}

/// What one writer did.
#[derive(Debug, Default)]
struct WriterLog {
    id: u64,
    /// The highest sequence number it sent (acknowledged or not).
    max_sent: u64,
    /// The last ack per key index.
    last_ack: BTreeMap<u64, Ack>,
    /// Acks whose revision was not above the writer's previous ack.
    regressions: Vec<String>,
    errors: u64,
}

fn key(writer: u64, slot: u64) -> Vec<u8> {
    format!("w{writer}/k{slot}").into_bytes()
}

/// Puts `seq` = 1, 2, 3, ... to key slot `seq % KEYS_PER_WRITER`, with value
/// `seq`, one at a time, retrying through outages until told to stop.
async fn writer(id: u64, url: String, progress: Arc<Progress>) -> WriterLog {
    let channel = tonic::transport::Endpoint::from_shared(url)
        .expect("url")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(3))
        .connect_lazy();
    let mut kv = KvClient::new(channel);
    let mut log = WriterLog {
        id,
        ..Default::default()
    };
    let mut last_revision = 0;
    while !progress.stop.load(Ordering::SeqCst) {
        let seq = log.max_sent + 1;
        log.max_sent = seq;
        let req = PutRequest {
            key: key(id, seq % KEYS_PER_WRITER),
            value: seq.to_string().into_bytes(),
            ..Default::default()
        };
        match kv.put(req).await {
            Ok(resp) => {
                let revision = resp.into_inner().header.map_or(0, |h| h.revision);
                if revision <= last_revision {
                    log.regressions.push(format!(
                        "writer {id}: put #{seq} acked at revision {revision} after an ack at {last_revision}"
                    ));
                }
                last_revision = revision;
                log.last_ack
                    .insert(seq % KEYS_PER_WRITER, Ack { seq, revision });
                progress
                    .max_acked_revision
                    .fetch_max(revision, Ordering::SeqCst);
                progress.acked.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => {
                // The server is down or restarting: back off a little rather
                // than spin (a retry pace, not a synchronisation).
                log.errors += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    log
}

/// A linearizable read's header revision, and the kvs under `prefix`.
fn read_prefix(url: &str, prefix: &[u8]) -> (i64, Vec<KeyValue>) {
    let (url, prefix) = (url.to_string(), prefix.to_vec());
    grpc::block_on(async move {
        let mut kv: KvClient<_> = grpc::kv_client(&url).await.expect("connect after restart");
        let mut end = prefix.clone();
        *end.last_mut().expect("non-empty prefix") += 1;
        let resp = kv
            .range(RangeRequest {
                key: prefix,
                range_end: end,
                ..Default::default()
            })
            .await
            .expect("range after restart")
            .into_inner();
        (resp.header.map_or(0, |h| h.revision), resp.kvs)
    })
}

#[test]
fn acknowledged_puts_survive_sigkill() {
    let started = Instant::now();
    let seed = common::seed_from_env("CRASH_SEED");
    eprintln!("crash test seed: CRASH_SEED={seed}");
    let mut rng = Rng(seed);

    let mut server = Server::start(Kind::Cairn);
    let url = server.client_url();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let progress = Arc::new(Progress::default());
    let writers: Vec<_> = (0..WRITERS)
        .map(|id| rt.spawn(writer(id, url.clone(), progress.clone())))
        .collect();

    for round in 1..=ROUNDS {
        let target = progress.acked.load(Ordering::SeqCst) + rng.range(20, 400);
        let progressed = wait_until(PROGRESS_TIMEOUT, || {
            progress.acked.load(Ordering::SeqCst) >= target
        });
        if !progressed {
            progress.stop.store(true, Ordering::SeqCst);
            panic!(
                "round {round}: writers did not reach {target} acks within {PROGRESS_TIMEOUT:?} (at {})",
                progress.acked.load(Ordering::SeqCst)
            );
        }
        server.kill();
        server.restart();
        // Every ack recorded before this read started was for a write that
        // completed before it, so the read must see at least its revision.
        let floor = progress.max_acked_revision.load(Ordering::SeqCst);
        let (revision, _) = read_prefix(&url, b"w");
        assert!(
            revision >= floor,
            "round {round}: revision went backwards across the restart: read at {revision}, acked {floor} before"
        );
        eprintln!("round {round}: killed after {target} acks; revision {revision} after restart");
    }
    // Let the writers prove the last incarnation accepts writes, then stop.
    let target = progress.acked.load(Ordering::SeqCst) + 50;
    let progressed = wait_until(PROGRESS_TIMEOUT, || {
        progress.acked.load(Ordering::SeqCst) >= target
    });
    progress.stop.store(true, Ordering::SeqCst);
    assert!(
        progressed,
        "writers made no progress after the last restart"
    );
    let logs: Vec<WriterLog> = rt.block_on(async {
        let mut logs = Vec::new();
        for w in writers {
            logs.push(w.await.expect("writer task"));
        }
        logs
    });

    // One more crash with no writer running, then check everything.
    server.kill();
    server.restart();
    let floor = progress.max_acked_revision.load(Ordering::SeqCst);
    let mut problems = Vec::new();
    for log in &logs {
        problems.extend(log.regressions.iter().cloned());
        let (revision, kvs) = read_prefix(&url, format!("w{}/", log.id).as_bytes());
        if revision < floor {
            problems.push(format!("final read at {revision} < acked revision {floor}"));
        }
        let stored: BTreeMap<Vec<u8>, (u64, i64)> = kvs
            .into_iter()
            .map(|kv| {
                let seq = String::from_utf8_lossy(&kv.value)
                    .parse()
                    .unwrap_or(u64::MAX);
                (kv.key, (seq, kv.mod_revision))
            })
            .collect();
        for (slot, ack) in &log.last_ack {
            let k = key(log.id, *slot);
            let name = String::from_utf8_lossy(&k).into_owned();
            match stored.get(&k) {
                None => problems.push(format!(
                    "{name}: acked put #{} at revision {} is lost",
                    ack.seq, ack.revision
                )),
                Some(&(seq, mod_rev)) => {
                    let ok = if seq == ack.seq {
                        mod_rev == ack.revision
                    } else {
                        // A later put of this writer to this slot, acked or not.
                        seq > ack.seq
                            && seq <= log.max_sent
                            && seq % KEYS_PER_WRITER == *slot
                            && mod_rev > ack.revision
                    };
                    if !ok {
                        problems.push(format!(
                            "{name}: acked put #{} at revision {}, found value {seq} at mod revision {mod_rev}",
                            ack.seq, ack.revision
                        ));
                    }
                }
            }
        }
        for (k, (seq, _)) in &stored {
            if *seq > log.max_sent {
                problems.push(format!(
                    "{}: value {seq} was never written",
                    String::from_utf8_lossy(k)
                ));
            }
        }
    }
    let acked = progress.acked.load(Ordering::SeqCst);
    let errors: u64 = logs.iter().map(|l| l.errors).sum();
    eprintln!(
        "{acked} puts acknowledged, {errors} failed, {ROUNDS} kills, {:?}",
        started.elapsed()
    );
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(
        logs.iter().all(|l| !l.last_ack.is_empty()),
        "a writer never got an ack"
    );
}
