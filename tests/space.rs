//! Space after compaction: the state store gives back what a compaction
//! removed by itself, within a minute, while serving (etcd needs `etcdctl
//! defrag` for that); `etcdctl defrag` works too. Each check runs on both
//! state engines (`--backend-engine sled|fjall`).

mod common;

use std::path::Path;
use std::time::Duration;

use cairn::proto::etcdserverpb::{request_op, PutRequest, RequestOp, TxnRequest};
use common::{etcdctl_json, etcdctl_ok, grpc, wait_until, Kind, Server};

/// Bytes of the state store's directories (`member/state*`; the raft log
/// in `member/wal` is not the state store), as `du` counts them: the disk
/// blocks held (fjall preallocates its journal as a sparse file).
fn state_bytes(data_dir: &Path) -> u64 {
    fn walk(path: &Path) -> u64 {
        match std::fs::read_dir(path) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| walk(&e.path()))
                .sum(),
            Err(_) => std::fs::metadata(path)
                .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
                .unwrap_or(0),
        }
    }
    std::fs::read_dir(data_dir.join("member"))
        .expect("member dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("state"))
        .map(|e| walk(&e.path()))
        .sum()
}

/// 6 KiB that do not compress (fjall compresses its tables with LZ4).
fn noise(seed: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (seed as u64 + 1);
    (0..6 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
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
                        value: noise(t * 128 + i),
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
    space_back(SLED);
}

#[test]
fn compaction_gives_the_space_back_without_a_defrag_on_fjall() {
    space_back(FJALL);
}

const SLED: &[&str] = &["--backend-engine", "sled"];
const FJALL: &[&str] = &["--backend-engine", "fjall"];

fn space_back(engine: &[&str]) {
    let server = Server::start_with(Kind::Cairn, common::cairn_flags(engine));
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
    kill_during_defragment(SLED);
}

/// The crash test on fjall: kill -9 under writes, during or right after
/// its major compaction (which has no directory to wait for).
#[test]
fn a_kill_during_a_defragment_loses_no_acknowledged_write_on_fjall() {
    kill_during_defragment(FJALL);
}

fn kill_during_defragment(engine: &[&str]) {
    let mut server = Server::start_with(Kind::Cairn, common::cairn_flags(engine));
    if server.is_etcd() {
        eprintln!("cairn's defragment only");
        return;
    }
    fill(server.client_url());
    // Writes go on through the defragment and the kill; each acknowledged
    // key must be there after the restart.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (url, stop, acks) = (server.client_url(), stop.clone(), acks.clone());
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
                        Ok(_) => {
                            acked.push(key);
                            acks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
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
    if engine == SLED {
        let copying = wait_until(Duration::from_secs(30), || member.join("state-1").exists());
        assert!(copying, "no defragment under way");
    } else {
        // fjall compacts in place: kill once writes are flowing with the
        // defragment asked for (it may be running or just done).
        let start = acks.load(std::sync::atomic::Ordering::SeqCst);
        let writing = wait_until(Duration::from_secs(30), || {
            acks.load(std::sync::atomic::Ordering::SeqCst) >= start + 200
        });
        assert!(writing, "no writes acknowledged during the defragment");
        assert!(member.join("state-fjall").exists(), "not a fjall data dir");
    }
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
