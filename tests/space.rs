//! Space after compaction: the state store gives back what a compaction
//! removed by itself, within a minute, while serving (etcd needs `etcdctl
//! defrag` for that); `etcdctl defrag` works too.

mod common;

use std::path::Path;
use std::time::Duration;

use cairn::proto::etcdserverpb::{request_op, PutRequest, RequestOp, TxnRequest};
use common::{etcdctl_json, etcdctl_ok, grpc, wait_until, Kind, Server};

/// Bytes of the state store's directories (`member/state*`; the raft log
/// in `member/wal` is not the state store).
fn state_bytes(data_dir: &Path) -> u64 {
    fn walk(path: &Path) -> u64 {
        match std::fs::read_dir(path) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| walk(&e.path()))
                .sum(),
            Err(_) => std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        }
    }
    std::fs::read_dir(data_dir.join("member"))
        .expect("member dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("state"))
        .map(|e| walk(&e.path()))
        .sum()
}

/// 32 transactions of 128 puts of 6 KiB each: 24 MiB of values.
fn fill(url: String) {
    grpc::block_on(async move {
        let mut kv = grpc::kv_client(&url).await.expect("connect");
        for t in 0..32 {
            let success = (0..128)
                .map(|i| RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: format!("space/{t:03}/{i:03}").into_bytes(),
                        value: vec![b'x'; 6 * 1024],
                        ..Default::default()
                    })),
                })
                .collect();
            kv.txn(TxnRequest {
                compare: vec![],
                success,
                failure: vec![],
            })
            .await
            .expect("txn");
        }
    });
}

fn revision(server: &Server) -> i64 {
    let status = etcdctl_json(server, &["endpoint", "status"]);
    status[0]["Status"]["header"]["revision"]
        .as_i64()
        .expect("revision")
}

#[test]
fn compaction_gives_the_space_back_without_a_defrag() {
    let server = Server::start(Kind::Cairn);
    if server.is_etcd() {
        eprintln!("etcd keeps its file size until a defrag; nothing to check");
        return;
    }
    fill(server.client_url());
    etcdctl_ok(&server, &["put", "kept", "yes"]);
    let full = state_bytes(&server.data_dir());
    assert!(full > 24 << 20, "the store holds the values: {full} bytes");
    etcdctl_ok(&server, &["del", "space/", "--prefix"]);
    let rev = revision(&server).to_string();
    etcdctl_ok(&server, &["compaction", "--physical", &rev]);
    let mut now = full;
    let reclaimed = wait_until(Duration::from_secs(60), || {
        now = state_bytes(&server.data_dir());
        now * 4 < full
    });
    assert!(
        reclaimed,
        "state store still {now} bytes (was {full}) a minute after compaction"
    );
    let got = etcdctl_ok(&server, &["get", "kept", "--print-value-only"]);
    assert_eq!(got.trim(), "yes");

    // An explicit defragment keeps serving and keeps the data.
    etcdctl_ok(&server, &["put", "after", "1"]);
    let out = etcdctl_ok(&server, &["defrag"]);
    assert!(out.contains("Finished defragmenting"), "{out}");
    let got = etcdctl_ok(&server, &["get", "after", "--print-value-only"]);
    assert_eq!(got.trim(), "1");
}

#[test]
fn a_kill_during_a_defragment_loses_no_acknowledged_write() {
    let mut server = Server::start(Kind::Cairn);
    if server.is_etcd() {
        eprintln!("cairn's defragment only");
        return;
    }
    fill(server.client_url());
    // Writes go on through the defragment and the kill; each acknowledged
    // key must be there after the restart.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (url, stop) = (server.client_url(), stop.clone());
        std::thread::spawn(move || {
            grpc::block_on(async move {
                let mut acked = Vec::new();
                let Ok(mut kv) = grpc::kv_client(&url).await else {
                    return acked;
                };
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let key = format!("during/{n:06}");
                    let put = PutRequest {
                        key: key.clone().into_bytes(),
                        value: b"v".to_vec(),
                        ..Default::default()
                    };
                    match kv.put(put).await {
                        Ok(_) => acked.push(key),
                        Err(_) => break,
                    }
                    n += 1;
                }
                acked
            })
        })
    };
    let member = server.data_dir().join("member");
    let defrag = {
        let endpoint = server.endpoint();
        std::thread::spawn(move || common::etcdctl_at(&endpoint, &["defrag"], None))
    };
    let copying = wait_until(Duration::from_secs(30), || member.join("state-1").exists());
    assert!(copying, "no defragment under way");
    server.kill();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked = writer.join().expect("writer");
    let _ = defrag.join();
    server.restart();
    let present = etcdctl_ok(&server, &["get", "during/", "--prefix", "--keys-only"]);
    let present: std::collections::HashSet<&str> =
        present.lines().filter(|l| !l.is_empty()).collect();
    for key in &acked {
        assert!(present.contains(key.as_str()), "acknowledged {key} lost");
    }
    let kept = etcdctl_ok(&server, &["get", "space/031/127", "--keys-only"]);
    assert_eq!(kept.trim(), "space/031/127");
}
