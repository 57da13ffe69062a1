//! Micro-benchmarks of the MVCC apply and read paths (docs/performance.md):
//! `apply::apply_batch` of a batch of 1 or 100 puts on the in-memory backend,
//! on sled in a temp dir, and on sled behind the write buffer (the server's
//! setup; its committer thread's sled work runs outside the timed call), and
//! a Range over 10k keys (whole prefix and a page).
//!
//! `cargo bench --bench mvcc`; `cargo bench -- --test` runs each once.

use std::hint::black_box;
use std::sync::Arc;

use cairn::apply::apply_batch;
use cairn::mvcc::{Backend, BufferedBackend, MemBackend, SledBackend, Store};
use cairn::proto::cairnpb::internal_request::Request;
use cairn::proto::etcdserverpb::{PutRequest, RangeRequest};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

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
    store: Store,
    next: u64,
}

impl Applier {
    fn new(backend: Arc<dyn Backend>) -> Self {
        let store = Store::open(backend).expect("open store");
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
        black_box(apply_batch(&self.store, entries, 0, 1, 2).expect("apply"));
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

criterion_group!(benches, apply, range);
criterion_main!(benches);
