//! `etcdctl endpoint status|health|hashkv` with endpoints written as URLs
//! (`--endpoints=http://127.0.0.1:P`), and their `--cluster` forms, which
//! dial the client URLs the member advertises.
//!
//! For `status` and `hashkv` etcdctl 3.4 sends the endpoint as written as
//! the HTTP/2 `:authority`; cairn repairs it before h2 sees it
//! (`src/grpc/authority.rs`). `health` sends `host:port` and is here to
//! keep it so. The transcripts are compared with real etcd's
//! for the same session, normalised as in the differential test (ports, ids,
//! raft term and index, DB size, `took`), and the KV hash masked (cairn's
//! differs from etcd's by design).

mod common;

use common::{etcdctl_at, normalise, Identity, Kind, Server};

/// Which form of the server's address a step passes to `--endpoints`.
#[derive(Clone, Copy)]
enum Endpoints {
    /// `http://127.0.0.1:P`, the form operators write.
    Url,
    /// `127.0.0.1:P`, the form the other tests use.
    Addr,
    /// Both, as one comma-separated list.
    Both,
}

impl Endpoints {
    fn of(self, server: &Server) -> String {
        match self {
            Endpoints::Url => server.client_url(),
            Endpoints::Addr => server.endpoint(),
            Endpoints::Both => format!("{},{}", server.client_url(), server.endpoint()),
        }
    }
}

struct Step {
    endpoints: Endpoints,
    args: &'static [&'static str],
}

const fn step(endpoints: Endpoints, args: &'static [&'static str]) -> Step {
    Step { endpoints, args }
}

fn session() -> Vec<Step> {
    use Endpoints::*;
    vec![
        // Ordinary KV requests with the URL form (these go through
        // clientv3's balancer, which sends host:port).
        step(Url, &["put", "k", "v1"]),
        step(Url, &["put", "k", "v2"]),
        step(Url, &["get", "k", "-w", "json"]),
        step(Url, &["endpoint", "status"]),
        step(Url, &["endpoint", "status", "-w", "json"]),
        step(Both, &["endpoint", "status"]),
        step(Url, &["endpoint", "health"]),
        step(Url, &["endpoint", "health", "-w", "json"]),
        step(Url, &["endpoint", "hashkv"]),
        step(Url, &["endpoint", "hashkv", "-w", "json"]),
        step(Url, &["endpoint", "status", "--cluster"]),
        step(Addr, &["endpoint", "status", "--cluster", "-w", "json"]),
        step(Url, &["endpoint", "health", "--cluster"]),
        step(Addr, &["endpoint", "health", "--cluster", "-w", "json"]),
        step(Url, &["endpoint", "hashkv", "--cluster"]),
        step(Addr, &["endpoint", "hashkv", "--cluster", "-w", "json"]),
        step(Url, &["del", "k"]),
        step(Url, &["endpoint", "hashkv", "-w", "json"]),
    ]
}

/// Masks the KV hash in `endpoint hashkv` output: the last column of the
/// simple form, the `hash` field of the JSON form.
fn mask_hash(transcript: &str) -> String {
    transcript
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with("\"hash\": ") {
                let indent = &line[..line.len() - trimmed.len()];
                format!("{indent}\"hash\": \"<HASH>\",\n")
            } else if line.starts_with("http://") || line.starts_with("127.0.0.1:") {
                match line.rsplit_once(", ") {
                    Some((endpoint, hash)) if hash.parse::<u32>().is_ok() => {
                        format!("{endpoint}, <HASH>\n")
                    }
                    _ => format!("{line}\n"),
                }
            } else {
                format!("{line}\n")
            }
        })
        .collect()
}

/// Runs the session against `server`; one normalised text per step.
fn transcript(server: &Server) -> Vec<String> {
    let id = Identity::of(server);
    session()
        .iter()
        .map(|step| {
            let out = etcdctl_at(&step.endpoints.of(server), step.args, None);
            let text = normalise(&id, step.args, &out);
            if step.args.contains(&"hashkv") {
                mask_hash(&text)
            } else {
                text
            }
        })
        .collect()
}

#[test]
fn url_endpoints_and_cluster_forms_match_etcd() {
    let etcd = Server::start(Kind::Etcd);
    let want = transcript(&etcd);
    drop(etcd);
    let cairn = Server::start(Kind::Cairn);
    let got = transcript(&cairn);

    for text in &want {
        assert!(text.ends_with("[exit 0]\n"), "etcd failed a step:\n{text}");
    }
    common::assert_same_transcripts(&want, &got, cairn.kind);
    // The steps really reported on the URL endpoint and masked real hashes.
    let all = got.concat();
    for expected in [
        "http://127.0.0.1:<CLIENT_PORT>, <MEMBER_ID>, 3.4.23, <DB_SIZE>, true, false,",
        "http://127.0.0.1:<CLIENT_PORT> is healthy: successfully committed proposal",
        "http://127.0.0.1:<CLIENT_PORT>, <HASH>",
        "\"hash\": \"<HASH>\"",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
}

/// The same commands against cairn alone, with the values checked: the URL
/// form reports the same member, revision and hash as the plain form.
#[test]
fn url_endpoint_reports_what_the_plain_endpoint_does() {
    let server = Server::start(Kind::Cairn);
    let url = server.client_url();
    let json = |endpoints: &str, args: &[&str]| -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-w", "json"]);
        let out = etcdctl_at(endpoints, &all, None);
        assert!(
            out.status.success(),
            "etcdctl --endpoints={endpoints} {all:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("etcdctl prints JSON")
    };
    assert!(etcdctl_at(&url, &["put", "a", "1"], None).status.success());

    let plain = json(&server.endpoint(), &["endpoint", "status"]);
    for (endpoints, args) in [
        (url.as_str(), &["endpoint", "status"][..]),
        (
            server.endpoint().as_str(),
            &["endpoint", "status", "--cluster"][..],
        ),
    ] {
        let status = json(endpoints, args);
        assert_eq!(status[0]["Endpoint"], url.as_str(), "{status}");
        assert_eq!(
            status[0]["Status"]["header"], plain[0]["Status"]["header"],
            "{status}"
        );
        assert_eq!(
            status[0]["Status"]["leader"], plain[0]["Status"]["leader"],
            "{status}"
        );
    }

    let plain_hash = json(&server.endpoint(), &["endpoint", "hashkv"]);
    let hash = json(&url, &["endpoint", "hashkv"]);
    assert_eq!(hash[0]["Endpoint"], url.as_str(), "{hash}");
    assert_eq!(
        hash[0]["HashKV"]["hash"], plain_hash[0]["HashKV"]["hash"],
        "{hash}"
    );
    assert_eq!(hash[0]["HashKV"]["header"]["revision"], 2, "{hash}");

    let health = json(&server.endpoint(), &["endpoint", "health", "--cluster"]);
    assert_eq!(health[0]["endpoint"], url.as_str(), "{health}");
    assert_eq!(health[0]["health"], true, "{health}");

    let get = etcdctl_at(&url, &["get", "a", "--print-value-only"], None);
    assert_eq!(String::from_utf8_lossy(&get.stdout), "1\n");
}
