//! Micro-benchmarks of the MVCC apply and read paths (docs/performance.md):
//! `apply::apply_batch` of a batch of 1 or 100 puts on the in-memory backend,
//! on sled in a temp dir, and on sled behind the write buffer (the server's
//! setup; its committer thread's sled work runs outside the timed call), and
//! a Range over 10k keys (whole prefix and a page).
//!
//! `cargo bench --bench mvcc`; `cargo bench -- --test` runs each once.
//!
//! `cargo bench --bench mvcc -- apply_blocked` runs only a latency
//! measurement instead (not a criterion benchmark: what matters is the
//! tail, not the mean): how long 1-put apply batches take while (a) a Range
//! over 100k keys and (b) a compaction of 100k keys × 3 revisions run
//! alongside, on sled behind the write buffer. Figures in docs/performance.md.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::apply::apply_batch;
use cairn::mvcc::{Backend, BufferedBackend, MemBackend, SledBackend, Store};
use cairn::proto::cairnpb::internal_request::Request;
use cairn::proto::etcdserverpb::{CompactionRequest, PutRequest, RangeRequest};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};

/// Puts per applied batch (one raft Ready's worth under load).
const BATCH: u64 = 100;
/// Keys the puts cycle over, so the key index stays bounded.
const KEY_SPACE: u64 = 10_000;
/// Keys the range benchmark reads.
const RANGE_KEYS: u64 = 10_000;

fn key(i: u64) -> Vec<u8> {
    format!("bench/{:010}", i % KEY_SPACE).into_bytes()
}

fn put(i: u64) -> Request {
    Request::Put(PutRequest {
        key: key(i),
        value: vec![b'v'; 256],
        ..Default::default()
    })
}

/// A store and the raft index the next entry gets.
struct Applier {
    store: Arc<Store>,
    next: u64,
}

impl Applier {
    fn new(backend: Arc<dyn Backend>) -> Self {
        let store = Arc::new(Store::open(backend).expect("open store"));
        let next = store.applied_index() + 1;
        Applier { store, next }
    }

    /// Applies `n` puts as one batch.
    fn batch(&mut self, n: u64) {
        let entries = (0..n)
            .map(|_| {
                let i = self.next;
                self.next += 1;
                // Consecutive indexes cycle over the key space.
                (i, Some(put(i)))
            })
            .collect();
        black_box(apply_batch(&self.store, entries, 2).expect("apply"));
    }
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply_batch");
    let dirs = [
        tempfile::tempdir().expect("temp dir"),
        tempfile::tempdir().expect("temp dir"),
    ];
    let sled = SledBackend::open(dirs[0].path()).expect("open sled");
    let under_buffer = SledBackend::open(dirs[1].path()).expect("open sled");
    let buffered = BufferedBackend::new(Arc::new(under_buffer)).expect("buffered");
    let mut appliers = [
        ("mem", Applier::new(Arc::new(MemBackend::new()))),
        ("sled", Applier::new(Arc::new(sled))),
        ("buffered_sled", Applier::new(Arc::new(buffered))),
    ];
    // 1 put per batch is a single client's shape, 100 a loaded server's.
    for n in [1, BATCH] {
        g.throughput(Throughput::Elements(n));
        for (name, a) in appliers.iter_mut() {
            g.bench_function(BenchmarkId::new(*name, n), |b| b.iter(|| a.batch(n)));
        }
    }
    g.finish();
}

fn range(c: &mut Criterion) {
    let mut g = c.benchmark_group("range_10k");
    let dir = tempfile::tempdir().expect("temp dir");
    let backends: [(&str, Arc<dyn Backend>); 2] = [
        ("mem", Arc::new(MemBackend::new())),
        (
            "sled",
            Arc::new(SledBackend::open(dir.path()).expect("open sled")),
        ),
    ];
    for (name, backend) in backends {
        let mut a = Applier::new(backend);
        for _ in 0..RANGE_KEYS / BATCH {
            a.batch(BATCH);
        }
        let all = RangeRequest {
            key: b"bench/".to_vec(),
            range_end: b"bench0".to_vec(),
            ..Default::default()
        };
        let resp = a.store.range(&all).expect("range");
        assert_eq!(resp.kvs.len() as u64, RANGE_KEYS);
        g.throughput(Throughput::Elements(RANGE_KEYS));
        g.bench_function(BenchmarkId::new("all", name), |b| {
            b.iter(|| black_box(a.store.range(black_box(&all)).expect("range")))
        });
        let page = RangeRequest {
            limit: 100,
            ..all.clone()
        };
        g.throughput(Throughput::Elements(100));
        g.bench_function(BenchmarkId::new("page100", name), |b| {
            b.iter(|| black_box(a.store.range(black_box(&page)).expect("range")))
        });
    }
    g.finish();
}

/// Keys of the blocking measurement.
const BLOCKED_KEYS: u64 = 100_000;
/// Revisions written per key before the compaction.
const BLOCKED_REVISIONS: u64 = 3;
/// One 1-put batch per interval during the measurement (2,000 a second).
const PUT_INTERVAL: Duration = Duration::from_micros(500);

/// Latency summary of the 1-put batches applied during one window: the
/// percentiles, the worst, and the time spent in puts slower than 1 ms.
fn summary(what: &str, mut lat: Vec<Duration>, window: Duration) {
    lat.sort();
    let pick = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let stalled: Duration = lat.iter().filter(|d| ms(**d) > 1.0).sum();
    println!(
        "{what:<34} window {:>7.1} ms  puts {:>6}  p50 {:>7.3}  p99 {:>7.3}  p99.9 {:>8.3}  max {:>8.3}  in puts > 1 ms {:>7.1} (ms)",
        ms(window),
        lat.len(),
        ms(pick(0.5)),
        ms(pick(0.99)),
        ms(pick(0.999)),
        ms(lat.last().copied().unwrap_or_default()),
        ms(stalled),
    );
}

impl Applier {
    /// Applies one 1-put batch to a key outside the measured range; returns its latency.
    fn timed_put(&mut self) -> Duration {
        let i = self.next;
        self.next += 1;
        let req = Request::Put(PutRequest {
            key: format!("other/{}", i % 1000).into_bytes(),
            value: vec![b'v'; 256],
            ..Default::default()
        });
        let t = Instant::now();
        black_box(apply_batch(&self.store, vec![(i, Some(req))], 2).expect("apply"));
        t.elapsed()
    }

    /// Applies 1-put batches, one per [`PUT_INTERVAL`], until `busy`
    /// clears; returns their latencies. Paced, so that what is measured is
    /// how long the apply path is held up, not how the write buffer copes
    /// with an unbounded stream of writes.
    fn puts_while(&mut self, busy: &AtomicBool) -> Vec<Duration> {
        let mut lat = Vec::new();
        let mut next = Instant::now();
        while busy.load(Ordering::Acquire) {
            lat.push(self.timed_put());
            next += PUT_INTERVAL;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        lat
    }
}

/// How long the apply path stalls behind a big Range and behind a compaction.
fn apply_blocked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sled = SledBackend::open(dir.path()).expect("open sled");
    let buffered = BufferedBackend::new(Arc::new(sled)).expect("buffered");
    let mut a = Applier::new(Arc::new(buffered));
    let t = Instant::now();
    for round in 0..BLOCKED_REVISIONS {
        for chunk in 0..BLOCKED_KEYS / 1000 {
            let entries = (0..1000)
                .map(|j| {
                    let i = a.next;
                    a.next += 1;
                    let req = Request::Put(PutRequest {
                        key: format!("big/{:08}", chunk * 1000 + j).into_bytes(),
                        value: format!("value {round} {:0>240}", j).into_bytes(),
                        ..Default::default()
                    });
                    (i, Some(req))
                })
                .collect();
            apply_batch(&a.store, entries, 2).expect("load");
        }
    }
    println!(
        "loaded {BLOCKED_KEYS} keys x {BLOCKED_REVISIONS} revisions in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Reference: nothing else running.
    let busy = Arc::new(AtomicBool::new(true));
    let timer = {
        let busy = busy.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            busy.store(false, Ordering::Release);
        })
    };
    let t = Instant::now();
    let lat = a.puts_while(&busy);
    summary("idle (1 s)", lat, t.elapsed());
    timer.join().expect("timer");

    // (a) Three Ranges over every key, one after the other, on another thread.
    let all = RangeRequest {
        key: b"big/".to_vec(),
        range_end: b"big0".to_vec(),
        ..Default::default()
    };
    let busy = Arc::new(AtomicBool::new(true));
    let reader = {
        let (store, busy) = (a.store.clone(), busy.clone());
        std::thread::spawn(move || {
            let mut took = Vec::new();
            for _ in 0..3 {
                let t = Instant::now();
                let n = store.range(&all).expect("range").kvs.len() as u64;
                assert_eq!(n, BLOCKED_KEYS);
                took.push(t.elapsed());
            }
            busy.store(false, Ordering::Release);
            took
        })
    };
    let t = Instant::now();
    let lat = a.puts_while(&busy);
    let window = t.elapsed();
    let took = reader.join().expect("reader");
    summary("(a) during 3 Ranges of 100k keys", lat, window);
    println!("    each Range took {took:.1?}");

    // (b) Compaction to the current revision: removes all but the latest
    // revision of every key (200k records).
    let rev = a.store.current_revision();
    let i = a.next;
    a.next += 1;
    let compact = Request::Compaction(CompactionRequest {
        revision: rev,
        physical: false,
    });
    let t = Instant::now();
    apply_batch(&a.store, vec![(i, Some(compact))], 2).expect("compact");
    let applied = t.elapsed();
    let busy = Arc::new(AtomicBool::new(true));
    let waiter = {
        let (store, busy) = (a.store.clone(), busy.clone());
        std::thread::spawn(move || {
            wait_physical_compaction(&store, rev);
            busy.store(false, Ordering::Release);
        })
    };
    let mut lat = a.puts_while(&busy);
    waiter.join().expect("waiter");
    let window = t.elapsed();
    lat.push(applied);
    summary("(b) compaction entry + physical", lat, window);
    println!("    the compaction entry itself took {applied:.1?} to apply");
}

/// Returns once compaction to `rev` has removed the old records.
fn wait_physical_compaction(store: &Store, rev: i64) {
    store.wait_compacted(rev);
}

/// Runs [`apply_blocked`] when asked for by name, the criterion benchmarks otherwise.
fn main() {
    if std::env::args().any(|a| a == "apply_blocked") {
        apply_blocked();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

criterion_group!(benches, apply, range);
