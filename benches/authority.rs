//! The client listener's `:authority` repair (`grpc::authority`), per
//! request: 1,000 unary Puts as one client connection sends them (a HEADERS
//! block from a stateful HPACK encoder, then a DATA frame with a 256-byte
//! value) fed through a `Rewriter`, next to a plain copy of the same bytes
//! (what the connection costs without it). `pass`: authorities h2 accepts,
//! so the first block is decoded and the rest handed over unparsed;
//! `repair`: etcdctl's `http://…` authority, every block decoded and
//! re-encoded. The encoder here sends no Huffman-coded strings; loona-hpack
//! builds its Huffman table for each coded string it decodes (grpc-go and
//! h2 code most strings), which is why only a connection that needs a
//! repair has every block decoded.
//!
//! `cargo bench --bench authority`; `cargo bench -- --test` runs each once.

use std::hint::black_box;

use bytes::BytesMut;
use cairn::grpc::authority::Rewriter;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const REQUESTS: u32 = 1_000;

fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
}

/// The client's bytes: preface, SETTINGS, then REQUESTS Puts on streams
/// 1, 3, 5, …
fn connection(authority: &str) -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(0x4, 0, 0, &[], &mut out);
    let mut encoder = loona_hpack::Encoder::new();
    let body = [&[0u8, 0, 0, 1, 12][..], &[b'v'; 268][..]].concat();
    for i in 0..REQUESTS {
        let sid = 2 * i + 1;
        let headers: [(&[u8], &[u8]); 8] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/etcdserverpb.KV/Put"),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"user-agent", b"grpc-go/1.26.0"),
            (b"te", b"trailers"),
            (b"grpc-timeout", b"4999m"),
        ];
        let block = encoder.encode(headers);
        frame(0x1, 0x4, sid, &block, &mut out);
        frame(0x0, 0x1, sid, &body, &mut out);
    }
    out
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("authority");
    g.throughput(Throughput::Elements(REQUESTS as u64));
    let mut out = BytesMut::with_capacity(1 << 20);
    for (name, authority) in [
        ("pass", "127.0.0.1:2379"),
        ("repair", "http://127.0.0.1:2379"),
    ] {
        let input = connection(authority);
        g.bench_function(format!("copy/{name}"), |b| {
            b.iter(|| {
                out.clear();
                // h2's reads are 8 KiB at a time.
                for chunk in input.chunks(8192) {
                    out.extend_from_slice(black_box(chunk));
                }
                black_box(out.len())
            })
        });
        g.bench_function(format!("rewrite/{name}"), |b| {
            b.iter(|| {
                out.clear();
                let mut rewriter = Rewriter::new();
                for chunk in input.chunks(8192) {
                    rewriter.feed(black_box(chunk), &mut out);
                }
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
