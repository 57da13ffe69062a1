//! Range admission control (`--max-range-bytes-in-flight`, src/grpc/budget.rs):
//! while one large Range response is held by a client that does not read
//! it, a second large Range waits, then gets etcd's `etcdserver: too many
//! requests` (ResourceExhausted), small requests keep being served, and
//! once the holder goes the large range is served again.

mod common;

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use cairn::proto::etcdserverpb::kv_client::KvClient;
use cairn::proto::etcdserverpb::{PutRequest, RangeRequest};
use common::{grpc, Kind, Server};
use prost::Message;

const BUDGET: usize = 4 << 20;
const VALUE: usize = 1 << 20;
const KEYS: usize = 6;

fn big_range() -> RangeRequest {
    RangeRequest {
        key: b"big/".to_vec(),
        range_end: b"big0".to_vec(),
        ..Default::default()
    }
}

/// Opens an HTTP/2 connection with a 64 KiB window, sends a Range for the
/// large keys and never reads the answer's body: the server's response
/// (and its share of the budget) stays in flight while this lives.
async fn hold_a_large_response(port: u16) -> (h2::RecvStream, h2::client::SendRequest<Bytes>) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (mut client, conn) = h2::client::Builder::new()
        .initial_window_size(65_535)
        .initial_connection_window_size(65_535)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{port}/etcdserverpb.KV/Range"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let msg = big_range().encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + msg.len());
    frame.put_u8(0);
    frame.put_u32(msg.len() as u32);
    frame.put_slice(&msg);
    let (resp, mut send) = client.send_request(req, false).expect("send request");
    send.send_data(frame.freeze(), true).expect("send message");
    let resp = resp.await.expect("response headers");
    assert_eq!(resp.status(), 200);
    (resp.into_body(), client)
}

#[test]
fn a_large_range_past_the_budget_gets_too_many_requests_and_the_member_keeps_serving() {
    let server = Server::start_with(
        Kind::Cairn,
        &["--max-range-bytes-in-flight", &BUDGET.to_string()],
    );
    let url = server.client_url();
    let port = server.client_port;
    grpc::block_on(async move {
        let mut kv =
            KvClient::new(grpc::patient_channel(&url).await).max_decoding_message_size(usize::MAX);
        for i in 0..KEYS {
            kv.put(PutRequest {
                key: format!("big/{i}").into_bytes(),
                value: vec![b'x'; VALUE],
                ..Default::default()
            })
            .await
            .expect("put a large value");
        }
        kv.put(PutRequest {
            key: b"small".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .expect("put a small value");

        // Alone, a response larger than the whole budget is served.
        let alone = kv.range(big_range()).await.expect("served alone");
        assert_eq!(alone.get_ref().kvs.len(), KEYS);

        let holder = hold_a_large_response(port).await;

        let started = Instant::now();
        let refused = kv
            .range(big_range())
            .await
            .map(|_| "served")
            .expect_err("no room next to the held response");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(refused.message(), "etcdserver: too many requests");
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "waited for room first ({:?})",
            started.elapsed()
        );

        // Small requests do not count against the budget.
        let small = kv
            .range(RangeRequest {
                key: b"small".to_vec(),
                ..Default::default()
            })
            .await
            .expect("a small range is served meanwhile");
        assert_eq!(small.get_ref().kvs[0].value, b"v");
        kv.put(PutRequest {
            key: b"small".to_vec(),
            value: b"w".to_vec(),
            ..Default::default()
        })
        .await
        .expect("writes go on meanwhile");

        // Once the holder has gone, its bytes come back.
        drop(holder);
        let again = kv
            .range(big_range())
            .await
            .expect("served once room is back");
        assert_eq!(again.get_ref().kvs.len(), KEYS);
        assert!(again.get_ref().kvs.iter().all(|kv| kv.value.len() == VALUE));
    });
}
