//! The HTTP admin side (src/http/) against real etcd 3.4.23: the same
//! curl-style requests to etcd's JSON gateway give the same JSON (after
//! normalising what legitimately differs: ids, terms, ports, sizes),
//! including errors and the streaming watch; `/health`, `/version`,
//! `/metrics` and `--listen-metrics-urls`.
//!
//! The HTTP/1.1 client is a few lines over a TcpStream (what curl sends:
//! one request, `Connection: close`), so the test needs no HTTP crate.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{etcd_path, free_port, wait_until, Kind, Server};
use serde_json::Value;

/// How long one HTTP exchange may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .expect("read timeout");
    stream
}

fn send(stream: &mut TcpStream, method: &str, path: &str, body: &str) {
    send_as(stream, None, method, path, body)
}

/// [`send`] with the `Authorization` header etcd's gateway takes a token in.
fn send_as(stream: &mut TcpStream, token: Option<&str>, method: &str, path: &str, body: &str) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: {t}\r\n"));
    send_with(stream, &auth, method, path, body)
}

/// [`send`] with extra header lines (each ending in CRLF).
fn send_with(stream: &mut TcpStream, extra: &str, method: &str, path: &str, body: &str) {
    let auth = extra;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n{auth}\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).expect("send request");
}

/// The status line and headers; the reader is left at the body.
fn head(reader: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header line");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    (status, headers)
}

/// One chunk of a chunked body (None at the last chunk).
fn chunk(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut size = String::new();
    reader.read_line(&mut size).expect("chunk size");
    let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
    if size == 0 {
        return None;
    }
    let mut data = vec![0u8; size + 2];
    reader.read_exact(&mut data).expect("chunk data");
    data.truncate(size);
    Some(data)
}

fn request(port: u16, method: &str, path: &str, body: &str) -> Response {
    request_as(port, None, method, path, body)
}

fn request_as(port: u16, token: Option<&str>, method: &str, path: &str, body: &str) -> Response {
    let auth = token.map_or(String::new(), |t| format!("Authorization: {t}\r\n"));
    request_with(port, &auth, method, path, body)
}

fn request_with(port: u16, extra: &str, method: &str, path: &str, body: &str) -> Response {
    let (status, headers, body) = request_bytes(port, extra, method, path, body, HTTP_TIMEOUT);
    Response {
        status,
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    }
}

/// [`request_with`] for a body that need not be text.
fn request_bytes(
    port: u16,
    extra: &str,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = connect(port);
    stream
        .set_read_timeout(Some(timeout))
        .expect("read timeout");
    send_with(&mut stream, extra, method, path, body);
    let mut reader = BufReader::new(stream);
    let (status, headers) = head(&mut reader);
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        while let Some(data) = chunk(&mut reader) {
            body.extend(data);
        }
    } else {
        reader.read_to_end(&mut body).expect("body");
    }
    (status, headers, body)
}

fn post(port: u16, path: &str, body: &str) -> Response {
    request(port, "POST", path, body)
}

/// Replaces what differs between two servers for the same history.
fn normalise(v: &mut Value) {
    const VARYING: &[&str] = &[
        "cluster_id",
        "member_id",
        "raft_term",
        "leader",
        "dbSize",
        "dbSizeInUse",
        "raftIndex",
        "raftTerm",
        "raftAppliedIndex",
        "peerURLs",
        "clientURLs",
        // Hash covers etcd's bolt file, cairn's own records.
        "hash",
        // A simple token's random part.
        "token",
    ];
    match v {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if VARYING.contains(&k.as_str()) {
                    *v = Value::String("<n>".into());
                } else if k == "ID" && v.as_str().is_some_and(|id| id.len() > 12) {
                    // Member ids (lease ids are chosen by the test).
                    *v = Value::String("<id>".into());
                } else if k == "TTL" && v.as_str().is_some_and(|t| t == "59") {
                    // A second may have passed since the grant.
                    *v = Value::String("60".into());
                } else {
                    normalise(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise),
        _ => {}
    }
}

/// One step of a session: what both servers are sent.
struct Step {
    method: &'static str,
    path: &'static str,
    body: &'static str,
    /// Compare only the status and the error code (the message is the JSON
    /// parser's own words).
    code_only: bool,
}

const fn post_step(path: &'static str, body: &'static str) -> Step {
    Step {
        method: "POST",
        path,
        body,
        code_only: false,
    }
}

/// "foo" = Zm9v, "bar" = YmFy, "fop" = Zm9w, "baz" = YmF6, "foo1" = Zm9vMQ==.
const SESSION: &[Step] = &[
    post_step("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
    post_step(
        "/v3/kv/put",
        r#"{"key":"Zm9vMQ==","value":"YmF6","prev_kv":true}"#,
    ),
    post_step(
        "/v3/kv/put",
        r#"{"key":"Zm9vMQ==","value":"YmFy","prev_kv":true}"#,
    ),
    post_step("/v3/kv/range", r#"{"key":"Zm9v"}"#),
    post_step(
        "/v3/kv/range",
        r#"{"key":"Zm9v","range_end":"Zm9w","sort_order":"DESCEND","limit":"1"}"#,
    ),
    post_step(
        "/v3/kv/range",
        r#"{"key":"Zm9v","range_end":"Zm9w","count_only":true}"#,
    ),
    post_step(
        "/v3/kv/range",
        r#"{"key":"Zm9v","range_end":"Zm9w","keys_only":true,"serializable":true}"#,
    ),
    post_step("/v3/kv/range", r#"{"key":"bm9uZQ=="}"#),
    post_step("/v3/kv/range", r#"{"key":""}"#),
    post_step("/v3/kv/range", r#"{"key":"Zm9v","revision":"100"}"#),
    Step {
        method: "POST",
        path: "/v3/kv/range",
        body: "{bad",
        code_only: true,
    },
    post_step(
        "/v3/kv/put",
        r#"{"key":"Zm9v","value":"YmFy","ignore_value":true,"ignore_lease":true,"lease":"1"}"#,
    ),
    post_step(
        "/v3/kv/txn",
        r#"{"compare":[{"key":"Zm9v","target":"VALUE","result":"EQUAL","value":"YmFy"}],"success":[{"request_put":{"key":"Zm9v","value":"YmF6"}},{"request_range":{"key":"Zm9v"}}],"failure":[{"request_range":{"key":"Zm9v"}}]}"#,
    ),
    post_step(
        "/v3/kv/txn",
        r#"{"compare":[{"key":"Zm9v","target":"VERSION","result":"LESS","version":"1"}],"success":[],"failure":[{"request_delete_range":{"key":"Zm9vMQ==","prev_kv":true}}]}"#,
    ),
    post_step(
        "/v3/kv/txn",
        r#"{"success":[{"request_put":{"key":"eA=="}},{"request_put":{"key":"eA=="}}]}"#,
    ),
    post_step("/v3/kv/deleterange", r#"{"key":"Zm9v","prev_kv":true}"#),
    post_step("/v3/kv/deleterange", r#"{"key":"Zm9v"}"#),
    post_step("/v3/lease/grant", r#"{"TTL":"60","ID":"4660"}"#),
    post_step("/v3/lease/grant", r#"{"TTL":"60","ID":"4660"}"#),
    post_step(
        "/v3/kv/put",
        r#"{"key":"bGVhc2Vk","value":"eQ==","lease":"4660"}"#,
    ),
    post_step("/v3/lease/timetolive", r#"{"ID":"4660","keys":true}"#),
    post_step("/v3/kv/lease/timetolive", r#"{"ID":"4660"}"#),
    post_step("/v3/lease/timetolive", r#"{"ID":"999"}"#),
    post_step("/v3/lease/leases", "{}"),
    post_step("/v3/lease/keepalive", r#"{"ID":"4660"}"#),
    post_step("/v3/lease/revoke", r#"{"ID":"4660"}"#),
    post_step("/v3/kv/lease/revoke", r#"{"ID":"4660"}"#),
    post_step("/v3/kv/range", r#"{"key":"bGVhc2Vk"}"#),
    post_step("/v3/kv/compaction", r#"{"revision":"1000"}"#),
    post_step("/v3/kv/compaction", r#"{"revision":"3"}"#),
    post_step("/v3/kv/range", r#"{"key":"Zm9v","revision":"2"}"#),
    post_step("/v3/kv/compaction", r#"{"revision":"2"}"#),
    post_step("/v3beta/kv/range", r#"{"key":"Zm9vMQ=="}"#),
    post_step("/v3/cluster/member/list", "{}"),
    post_step("/v3/maintenance/hash", "{}"),
    post_step("/v3/maintenance/defragment", "{}"),
    post_step("/v3/maintenance/transfer-leadership", r#"{"targetID":"1"}"#),
    post_step("/v3/lease/grant", r#"{"TTL":"60","ID":"4661"}"#),
    post_step("/v3/lock/lock", r#"{"name":"bG9jaw==","lease":"4661"}"#),
    post_step("/v3/lock/unlock", r#"{"key":"bG9jay8xMjM1"}"#),
    post_step("/v3/election/leader", r#"{"name":"ZWxlY3Rpb24="}"#),
    post_step(
        "/v3/election/campaign",
        r#"{"name":"ZWxlY3Rpb24=","lease":"4661","value":"djE="}"#,
    ),
    post_step("/v3/election/leader", r#"{"name":"ZWxlY3Rpb24="}"#),
    post_step("/v3/nothing", "{}"),
    post_step("/v3/maintenance/status", "{}"),
    Step {
        method: "GET",
        path: "/v3/kv/range",
        body: "",
        code_only: true,
    },
    Step {
        method: "GET",
        path: "/no/such/path",
        body: "",
        code_only: false,
    },
    Step {
        method: "GET",
        path: "/version",
        body: "",
        code_only: false,
    },
];

/// What a step's answer is compared by.
fn comparable(step: &Step, resp: &Response) -> String {
    if step.code_only {
        let code = serde_json::from_str::<Value>(&resp.body)
            .ok()
            .and_then(|v| v.get("code").cloned());
        return format!("{} code={code:?}", resp.status);
    }
    match serde_json::from_str::<Value>(&resp.body) {
        Ok(mut v) => {
            normalise(&mut v);
            format!("{} {v}", resp.status)
        }
        Err(_) => format!("{} {}", resp.status, resp.body.trim()),
    }
}

fn need_etcd() {
    let _ = etcd_path();
}

#[test]
fn the_gateway_answers_as_etcd_does() {
    need_etcd();
    let etcd = Server::start(Kind::Etcd);
    let cairn = Server::start(Kind::Cairn);
    let mut differences = Vec::new();
    for step in SESSION {
        let want = request(etcd.client_port, step.method, step.path, step.body);
        let got = request(cairn.client_port, step.method, step.path, step.body);
        let (want, got) = (comparable(step, &want), comparable(step, &got));
        if want != got {
            differences.push(format!(
                "{} {} {}\n  etcd:  {want}\n  cairn: {got}",
                step.method, step.path, step.body
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} gateway answers differ from etcd 3.4.23's:\n{}",
        differences.len(),
        SESSION.len(),
        differences.join("\n")
    );
}

/// An auth session over the gateway: (path, body, send the last token?).
/// "root" = cm9vdA==, "reader" = cmVhZGVy, "alice" = YWxpY2U=.
const AUTH_SESSION: &[(&str, &str, bool)] = &[
    (
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"pw"}"#,
        false,
    ),
    ("/v3/auth/enable", "{}", false),
    (
        "/v3/auth/user/add",
        r#"{"name":"root","password":"pw"}"#,
        false,
    ),
    (
        "/v3/auth/user/add",
        r#"{"name":"root","password":"pw"}"#,
        false,
    ),
    ("/v3/auth/user/add", r#"{"name":"","password":"pw"}"#, false),
    ("/v3/auth/enable", "{}", false),
    ("/v3/auth/role/add", r#"{"name":"root"}"#, false),
    (
        "/v3/auth/user/grant",
        r#"{"user":"root","role":"root"}"#,
        false,
    ),
    ("/v3/auth/role/add", r#"{"name":"reader"}"#, false),
    (
        "/v3/auth/role/grant",
        r#"{"name":"reader","perm":{"permType":"READ","key":"Zm9v","range_end":"Zm9w"}}"#,
        false,
    ),
    ("/v3/auth/role/get", r#"{"role":"reader"}"#, false),
    ("/v3/auth/role/list", "{}", false),
    (
        "/v3/auth/user/add",
        r#"{"name":"alice","password":"a"}"#,
        false,
    ),
    (
        "/v3/auth/user/grant",
        r#"{"user":"alice","role":"reader"}"#,
        false,
    ),
    (
        "/v3/auth/user/grant",
        r#"{"user":"alice","role":"nope"}"#,
        false,
    ),
    ("/v3/auth/user/get", r#"{"name":"alice"}"#, false),
    ("/v3/auth/user/list", "{}", false),
    ("/v3/auth/enable", "{}", false),
    ("/v3/kv/range", r#"{"key":"Zm9v"}"#, false),
    ("/v3/auth/user/list", "{}", false),
    (
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"bad"}"#,
        false,
    ),
    (
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"pw"}"#,
        false,
    ),
    ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#, true),
    ("/v3/kv/range", r#"{"key":"Zm9v"}"#, true),
    ("/v3/auth/user/list", "{}", true),
    ("/v3beta/auth/role/list", "{}", true),
    // The probe carries no token: still healthy.
    ("GET /health", "", false),
    ("/v3/kv/range", r#"{"key":"Zm9v"}"#, false),
    (
        "/v3/auth/user/changepw",
        r#"{"name":"alice","password":"b"}"#,
        true,
    ),
    (
        "/v3/auth/user/revoke",
        r#"{"name":"alice","role":"reader"}"#,
        true,
    ),
    (
        "/v3/auth/role/revoke",
        r#"{"role":"reader","key":"Zm9v","range_end":"Zm9w"}"#,
        true,
    ),
    ("/v3/auth/role/delete", r#"{"role":"reader"}"#, true),
    ("/v3/auth/user/delete", r#"{"name":"alice"}"#, true),
    ("/v3/auth/user/delete", r#"{"name":"alice"}"#, true),
    ("/v3/auth/disable", "{}", false),
    ("/v3/auth/disable", "{}", true),
    ("/v3/kv/range", r#"{"key":"Zm9v"}"#, false),
];

/// Runs [`AUTH_SESSION`]; each answer as [`comparable`] gives it.
fn auth_session(port: u16) -> Vec<String> {
    let mut token: Option<String> = None;
    let mut answers = Vec::new();
    for &(path, body, with_token) in AUTH_SESSION {
        let sent = if with_token { token.as_deref() } else { None };
        if let Some(path) = path.strip_prefix("GET ") {
            // etcd 3.4.23 has no "reason" field: compare the verdict.
            let resp = request_as(port, sent, "GET", path, body);
            answers.push(format!(
                "GET {path}\n  {} {}",
                resp.status,
                resp.json()["health"]
            ));
            continue;
        }
        let resp = request_as(port, sent, "POST", path, body);
        if let Some(t) = serde_json::from_str::<Value>(&resp.body)
            .ok()
            .and_then(|v| v["token"].as_str().map(str::to_string))
        {
            token = Some(t);
        }
        let step = post_step(path, body);
        answers.push(format!("{path} {body}\n  {}", comparable(&step, &resp)));
    }
    answers
}

#[test]
fn the_auth_gateway_answers_as_etcd_does() {
    need_etcd();
    const FAST_BCRYPT: [&str; 2] = ["--bcrypt-cost", "4"];
    let etcd = Server::start_with(Kind::Etcd, &FAST_BCRYPT);
    let cairn = Server::start_with(Kind::Cairn, &FAST_BCRYPT);
    let want = auth_session(etcd.client_port);
    let got = auth_session(cairn.client_port);
    let differences: Vec<String> = want
        .iter()
        .zip(&got)
        .filter(|(w, g)| w != g)
        .map(|(w, g)| format!("etcd:  {w}\ncairn: {g}"))
        .collect();
    assert!(
        differences.is_empty(),
        "{} of {} auth gateway answers differ from etcd 3.4.23's:\n{}",
        differences.len(),
        AUTH_SESSION.len(),
        differences.join("\n")
    );
    assert!(
        got.iter()
            .any(|a| a.contains(r#"200 {"header":"#) && a.contains(r#""token":"<n>""#)),
        "no token was issued: {got:#?}"
    );
}

/// What `--cors` makes of requests from browsers: (status, the CORS
/// headers) for a listed origin, another, a preflight, and no origin.
fn cors_session(port: u16) -> Vec<String> {
    let cases = [
        ("Origin: http://a.example:8080\r\n", "POST", "/v3/kv/range"),
        ("Origin: http://b.example:8080\r\n", "POST", "/v3/kv/range"),
        (
            "Origin: http://a.example:8080\r\nAccess-Control-Request-Method: POST\r\n",
            "OPTIONS",
            "/v3/kv/put",
        ),
        ("", "GET", "/health"),
    ];
    cases
        .iter()
        .map(|(extra, method, path)| {
            let resp = request_with(port, extra, method, path, r#"{"key":"YQ=="}"#);
            let cors: Vec<String> = [
                "Access-Control-Allow-Origin",
                "Access-Control-Allow-Methods",
                "Access-Control-Allow-Headers",
            ]
            .iter()
            .map(|h| format!("{h}={:?}", resp.header(h)))
            .collect();
            format!(
                "{method} {path} {extra:?}: {} {}",
                resp.status,
                cors.join(" ")
            )
        })
        .collect()
}

#[test]
fn cors_allows_the_origins_etcd_allows() {
    need_etcd();
    for origins in ["http://a.example:8080", "*"] {
        let args = ["--cors", origins];
        let etcd = Server::start_with(Kind::Etcd, &args);
        let cairn = Server::start_with(Kind::Cairn, &args);
        let (want, got) = (
            cors_session(etcd.client_port),
            cors_session(cairn.client_port),
        );
        assert_eq!(
            got, want,
            "--cors {origins}: cairn's CORS answers differ from etcd's"
        );
        assert!(
            got[0].contains(r#"Allow-Origin=Some("#),
            "an allowed origin gets CORS headers: {got:?}"
        );
    }
}

/// Opens a gateway watch; returns the reader positioned at its first line.
fn open_watch(port: u16, body: &str) -> BufReader<TcpStream> {
    let mut stream = connect(port);
    send(&mut stream, "POST", "/v3/watch", body);
    let mut reader = BufReader::new(stream);
    let (status, headers) = head(&mut reader);
    assert_eq!(status, 200, "watch status");
    assert!(
        headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v == "chunked"),
        "a watch streams a chunked response: {headers:?}"
    );
    reader
}

/// The next newline-delimited JSON line of a streamed answer (lines may
/// span chunks, and a chunk may hold several).
fn next_line(reader: &mut BufReader<TcpStream>, pending: &mut String) -> Value {
    loop {
        if let Some(at) = pending.find('\n') {
            let line: String = pending.drain(..=at).collect();
            return serde_json::from_str(line.trim()).expect("a JSON line");
        }
        let data = chunk(reader).expect("the stream goes on");
        pending.push_str(std::str::from_utf8(&data).expect("UTF-8"));
    }
}

fn watch_session(server: &Server) -> Vec<Value> {
    let port = server.client_port;
    let mut reader = open_watch(
        port,
        r#"{"create_request":{"key":"dw==","range_end":"eA==","prev_kv":true}}"#,
    );
    let mut pending = String::new();
    let mut lines = vec![next_line(&mut reader, &mut pending)];
    assert_eq!(
        post(port, "/v3/kv/put", r#"{"key":"dzE=","value":"MQ=="}"#).status,
        200
    );
    assert_eq!(
        post(port, "/v3/kv/put", r#"{"key":"dzE=","value":"Mg=="}"#).status,
        200
    );
    assert_eq!(
        post(port, "/v3/kv/deleterange", r#"{"key":"dzE="}"#).status,
        200
    );
    for _ in 0..3 {
        lines.push(next_line(&mut reader, &mut pending));
    }
    lines.iter_mut().for_each(normalise);
    lines
}

#[test]
fn a_gateway_watch_streams_what_etcd_streams() {
    need_etcd();
    let etcd = Server::start(Kind::Etcd);
    let cairn = Server::start(Kind::Cairn);
    let (want, got) = (watch_session(&etcd), watch_session(&cairn));
    assert_eq!(got, want, "watch lines differ from etcd's");
    assert_eq!(
        got[1]["result"]["events"][0]["kv"]["value"], "MQ==",
        "{got:?}"
    );
}

#[test]
fn a_client_that_goes_away_ends_its_gateway_watch() {
    let server = Server::start_with_env(Kind::Cairn, &[], &[("RUST_LOG", "cairn::http=debug")]);
    if server.is_etcd() {
        return;
    }
    let mut reader = open_watch(server.client_port, r#"{"create_request":{"key":"YQ=="}}"#);
    let mut pending = String::new();
    let created = next_line(&mut reader, &mut pending);
    assert_eq!(created["result"]["created"], true, "{created}");
    drop(reader);
    assert!(
        wait_until(Duration::from_secs(10), || server
            .logs()
            .contains("gateway stream closed")),
        "the watch stream did not end after its client closed the connection"
    );
    // The member still serves.
    assert_eq!(
        post(
            server.client_port,
            "/v3/kv/put",
            r#"{"key":"YQ==","value":"Yg=="}"#
        )
        .status,
        200
    );
}

/// The metric names cairn exports, as etcd names them.
const METRICS: &[&str] = &[
    "etcd_server_has_leader",
    "etcd_server_is_leader",
    "etcd_server_leader_changes_seen_total",
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_server_proposals_pending",
    "etcd_server_proposals_failed_total",
    "etcd_server_quota_backend_bytes",
    "etcd_server_health_success",
    "etcd_server_health_failures",
    "etcd_server_version",
    "etcd_server_id",
    "etcd_cluster_version",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_mvcc_db_total_size_in_use_in_bytes",
    "etcd_debugging_mvcc_current_revision",
    "etcd_debugging_mvcc_compact_revision",
    "etcd_debugging_mvcc_keys_total",
    "etcd_mvcc_range_total",
    "etcd_mvcc_put_total",
    "etcd_mvcc_delete_total",
    "etcd_mvcc_txn_total",
    "etcd_debugging_mvcc_txn_total",
    "etcd_debugging_lease_granted_total",
    "etcd_debugging_lease_revoked_total",
    "etcd_debugging_lease_renewed_total",
    "etcd_debugging_lease_ttl_total_count",
    "etcd_debugging_mvcc_watcher_total",
    "etcd_debugging_mvcc_slow_watcher_total",
    "etcd_debugging_mvcc_watch_stream_total",
    "etcd_server_slow_apply_total",
    "etcd_disk_wal_fsync_duration_seconds_count",
    "etcd_disk_backend_commit_duration_seconds_count",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_start_time_seconds",
];

/// `name value` samples of a Prometheus text exposition, with every name
/// having its `# TYPE` line.
fn samples(text: &str) -> Vec<(String, f64)> {
    let mut typed = Vec::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.push(
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a `series value` sample");
        let name = series.split('{').next().unwrap_or_default().to_string();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        assert!(
            typed.iter().any(|t| t == &name || t == base),
            "{name} has no # TYPE line"
        );
        out.push((name, value.parse().expect("a number")));
    }
    out
}

fn metric(port: u16, name: &str) -> f64 {
    let resp = request(port, "GET", "/metrics", "");
    assert_eq!(resp.status, 200);
    samples(&resp.body)
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .1
}

#[test]
fn metrics_carry_etcd_names_and_move() {
    need_etcd();
    let etcd = Server::start(Kind::Etcd);
    let etcd_names: Vec<String> = samples(&request(etcd.client_port, "GET", "/metrics", "").body)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let metrics_port = free_port();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}");
    let cairn = Server::start_with(
        Kind::Cairn,
        &[
            "--listen-metrics-urls",
            &metrics_url,
            "--metrics",
            "extensive",
        ],
    );
    let resp = request(cairn.client_port, "GET", "/metrics", "");
    assert_eq!(resp.status, 200);
    assert!(
        resp.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        resp.headers
    );
    let names: Vec<String> = samples(&resp.body).into_iter().map(|(n, _)| n).collect();
    for name in METRICS {
        assert!(names.iter().any(|n| n == name), "cairn has no {name}");
        assert!(
            etcd_names.iter().any(|n| n == name),
            "etcd 3.4.23 has no {name}: not etcd's name"
        );
    }
    assert_eq!(metric(cairn.client_port, "etcd_server_has_leader"), 1.0);
    assert_eq!(
        metric(cairn.client_port, "etcd_server_leader_changes_seen_total"),
        1.0
    );
    let applied = metric(cairn.client_port, "etcd_server_proposals_applied_total");
    let revision = metric(cairn.client_port, "etcd_debugging_mvcc_current_revision");
    let healthy = metric(cairn.client_port, "etcd_server_health_success");
    let puts = metric(cairn.client_port, "etcd_mvcc_put_total");
    let ranges = metric(cairn.client_port, "etcd_mvcc_range_total");
    assert_eq!(
        post(
            cairn.client_port,
            "/v3/kv/put",
            r#"{"key":"YQ==","value":"Yg=="}"#
        )
        .status,
        200
    );
    assert_eq!(request(cairn.client_port, "GET", "/health", "").status, 200);
    assert!(metric(cairn.client_port, "etcd_server_proposals_applied_total") > applied);
    assert!(
        metric(
            cairn.client_port,
            "etcd_disk_wal_fsync_duration_seconds_count"
        ) > 0.0
    );
    assert!(
        wait_until(Duration::from_secs(10), || metric(
            cairn.client_port,
            "etcd_disk_backend_commit_duration_seconds_count"
        ) > 0.0),
        "no state store flush timed"
    );
    assert_eq!(
        metric(cairn.client_port, "etcd_debugging_mvcc_current_revision"),
        revision + 1.0
    );
    assert_eq!(
        metric(cairn.client_port, "etcd_server_health_success"),
        healthy + 1.0
    );
    // The put above, and the /health check's read; the scrapes themselves
    // read no range.
    assert_eq!(metric(cairn.client_port, "etcd_mvcc_put_total"), puts + 1.0);
    assert_eq!(
        metric(cairn.client_port, "etcd_mvcc_range_total"),
        ranges + 1.0
    );

    // gRPC calls are counted with grpc-go-prometheus's names and labels;
    // the gateway's under the RPC it calls (etcd's gateway is a gRPC
    // client of its own server): the Put above, and etcdctl's.
    assert_eq!(common::etcdctl_ok(&cairn, &["put", "k", "v"]).trim(), "OK");
    let failed = common::etcdctl(&cairn, &["get", "k", "--rev", "100"], None);
    assert!(!failed.status.success(), "a future revision fails");
    let text = request(cairn.client_port, "GET", "/metrics", "").body;
    for series in [
        r#"grpc_server_started_total{grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"} 2"#,
        r#"grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"} 2"#,
        r#"grpc_server_handling_seconds_count{grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"} 2"#,
        r#"grpc_server_handled_total{grpc_code="OutOfRange",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 1"#,
    ] {
        assert!(text.contains(series), "no `{series}` in /metrics:\n{text}");
    }
    assert_eq!(
        metric(cairn.client_port, "etcd_debugging_mvcc_keys_total"),
        2.0
    );
    let etcd_text = request(etcd.client_port, "GET", "/metrics", "").body;
    for name in ["grpc_server_started_total", "grpc_server_handled_total"] {
        assert!(
            etcd_text.contains(&format!("# TYPE {name} counter")),
            "etcd has no {name}"
        );
    }

    // A txn of two puts, a lease's grant, keep-alive and revoke, and a
    // watch move their metrics. (etcd counts a txn per mvcc transaction of
    // more than one op: a Txn of one put is not one.)
    let moved = |name: &str, work: &dyn Fn()| {
        let before = metric(cairn.client_port, name);
        work();
        assert!(
            wait_until(Duration::from_secs(10), || metric(cairn.client_port, name)
                > before),
            "{name} did not move"
        );
    };
    let ok = |path: &str, body: &str| {
        let resp = post(cairn.client_port, path, body);
        assert_eq!(resp.status, 200, "{path}: {}", resp.body);
    };
    for name in ["etcd_mvcc_txn_total", "etcd_debugging_mvcc_txn_total"] {
        moved(name, &|| {
            ok(
                "/v3/kv/txn",
                r#"{"success":[{"request_put":{"key":"dA==","value":"dg=="}},{"request_put":{"key":"dQ==","value":"dg=="}}]}"#,
            )
        });
    }
    let txns = metric(cairn.client_port, "etcd_mvcc_txn_total");
    ok(
        "/v3/kv/txn",
        r#"{"success":[{"request_put":{"key":"dA==","value":"dw=="}}]}"#,
    );
    assert_eq!(metric(cairn.client_port, "etcd_mvcc_txn_total"), txns);
    moved("etcd_debugging_lease_granted_total", &|| {
        ok("/v3/lease/grant", r#"{"TTL":"60","ID":"4660"}"#)
    });
    assert!(metric(cairn.client_port, "etcd_debugging_lease_ttl_total_count") >= 1.0);
    assert!(metric(cairn.client_port, "etcd_debugging_lease_ttl_total_sum") >= 60.0);
    moved("etcd_debugging_lease_renewed_total", &|| {
        ok("/v3/lease/keepalive", r#"{"ID":"4660"}"#)
    });
    moved("etcd_debugging_lease_revoked_total", &|| {
        ok("/v3/lease/revoke", r#"{"ID":"4660"}"#)
    });
    let watchers = metric(cairn.client_port, "etcd_debugging_mvcc_watcher_total");
    let streams = metric(cairn.client_port, "etcd_debugging_mvcc_watch_stream_total");
    let mut watch = open_watch(cairn.client_port, r#"{"create_request":{"key":"dw=="}}"#);
    let created = next_line(&mut watch, &mut String::new());
    assert_eq!(created["result"]["created"], true, "{created}");
    assert!(
        wait_until(Duration::from_secs(10), || metric(
            cairn.client_port,
            "etcd_debugging_mvcc_watcher_total"
        ) == watchers + 1.0
            && metric(
                cairn.client_port,
                "etcd_debugging_mvcc_watch_stream_total"
            ) == streams + 1.0),
        "the watch and its stream are not counted"
    );
    drop(watch);
    assert!(
        wait_until(Duration::from_secs(10), || metric(
            cairn.client_port,
            "etcd_debugging_mvcc_watcher_total"
        ) == watchers
            && metric(
                cairn.client_port,
                "etcd_debugging_mvcc_watch_stream_total"
            ) == streams),
        "the closed watch is still counted"
    );
    assert_eq!(
        metric(cairn.client_port, "etcd_debugging_mvcc_slow_watcher_total"),
        0.0
    );

    // The metrics URL serves the probes and /metrics, nothing else.
    assert_eq!(metric(metrics_port, "etcd_server_has_leader"), 1.0);
    assert_eq!(
        request(metrics_port, "GET", "/health", "").json()["health"],
        "true"
    );
    assert_eq!(request(metrics_port, "GET", "/readyz", "").status, 200);
    assert_eq!(
        post(metrics_port, "/v3/kv/range", r#"{"key":"YQ=="}"#).status,
        404
    );
    assert_eq!(request(metrics_port, "GET", "/version", "").status, 404);
}

fn health(port: u16) -> (u16, Value) {
    let resp = request(port, "GET", "/health", "");
    (resp.status, resp.json())
}

/// Raises or clears a NOSPACE alarm through the gateway.
fn alarm(port: u16, action: &str) {
    let status = post(port, "/v3/maintenance/status", "{}").json();
    let member = status["header"]["member_id"]
        .as_str()
        .expect("member id")
        .to_string();
    let body = format!(r#"{{"action":"{action}","memberID":"{member}","alarm":"NOSPACE"}}"#);
    let resp = post(port, "/v3/maintenance/alarm", &body);
    assert_eq!(resp.status, 200, "{}", resp.body);
}

#[test]
fn health_is_false_with_an_alarm_as_in_etcd() {
    need_etcd();
    for kind in [Kind::Etcd, Kind::Cairn] {
        let server = Server::start(kind);
        let port = server.client_port;
        let (status, body) = health(port);
        assert_eq!(
            (status, &body["health"]),
            (200, &Value::from("true")),
            "{kind:?} {body}"
        );
        alarm(port, "ACTIVATE");
        let (status, body) = health(port);
        assert_eq!(
            (status, &body["health"]),
            (503, &Value::from("false")),
            "{kind:?} {body}"
        );
        if kind == Kind::Cairn && !server.is_etcd() {
            assert_eq!(body["reason"], "ALARM NOSPACE");
            let ready = request(port, "GET", "/readyz?verbose", "");
            assert_eq!(
                ready.status, 200,
                "NOSPACE is no corruption: {}",
                ready.body
            );
        }
        alarm(port, "DEACTIVATE");
        let (status, body) = health(port);
        assert_eq!(
            (status, &body["health"]),
            (200, &Value::from("true")),
            "{kind:?} {body}"
        );
    }
}

#[test]
fn probes_answer_with_etcd_3_6_semantics() {
    let server = Server::start(Kind::Cairn);
    if server.is_etcd() {
        return;
    }
    let port = server.client_port;
    let (status, body) = health(port);
    assert_eq!(
        (status, body),
        (200, serde_json::json!({"health": "true", "reason": ""}))
    );
    for probe in ["/livez", "/readyz"] {
        let resp = request(port, "GET", probe, "");
        assert_eq!((resp.status, resp.body.as_str()), (200, "ok"), "{probe}");
    }
    let verbose = request(port, "GET", "/readyz?verbose&exclude=serializable_read", "");
    assert_eq!(
        verbose.body,
        "[+]data_corruption ok\n[+]serializable_read excluded: ok\n[+]linearizable_read ok\nreadyz check passed\n"
    );
    let deadline = Instant::now() + HTTP_TIMEOUT;
    let live = request(port, "GET", "/livez?verbose", "");
    assert!(Instant::now() < deadline);
    assert_eq!(
        live.body,
        "[+]serializable_read ok\n[+]data_corruption ok\nlivez check passed\n"
    );
}

#[test]
fn grpc_and_http_share_the_client_port() {
    let server = Server::start(Kind::Cairn);
    // gRPC (etcdctl) and HTTP/1.1 on the same port, interleaved.
    let out = common::etcdctl_ok(&server, &["put", "shared", "port"]);
    assert_eq!(out.trim(), "OK");
    let resp = post(server.client_port, "/v3/kv/range", r#"{"key":"c2hhcmVk"}"#).json();
    assert_eq!(resp["kvs"][0]["value"], "cG9ydA==", "{resp}");
    assert_eq!(
        common::etcdctl_ok(&server, &["get", "shared", "--print-value-only"]).trim(),
        "port"
    );
    if !server.is_etcd() {
        // The dashboard is off without --enable-ui.
        assert_eq!(request(server.client_port, "GET", "/ui/", "").status, 404);
    }
}

/// Reads SSE events (id, event name, data) until `n` change events or a
/// terminal event arrived.
fn sse_events(reader: &mut BufReader<TcpStream>, n: usize) -> Vec<(String, String, String)> {
    let mut pending = String::new();
    let mut out = Vec::new();
    let mut changes = 0;
    while changes < n {
        while let Some(at) = pending.find("\n\n") {
            let block: String = pending.drain(..at + 2).collect();
            let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.to_string();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = v.to_string();
                }
            }
            if event.is_empty() {
                continue;
            }
            let terminal = event != "change";
            changes += 1;
            out.push((id, event, data));
            if terminal || changes == n {
                return out;
            }
        }
        let data = chunk(reader).expect("the event stream goes on");
        pending.push_str(std::str::from_utf8(&data).expect("UTF-8"));
    }
    out
}

fn open_sse(port: u16, query: &str, last_event_id: Option<&str>) -> BufReader<TcpStream> {
    let mut stream = connect(port);
    let last = last_event_id
        .map(|id| format!("Last-Event-ID: {id}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET /v3/watch/sse?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n{last}\r\n"
    );
    stream.write_all(req.as_bytes()).expect("send");
    let mut reader = BufReader::new(stream);
    let (status, headers) = head(&mut reader);
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v == "text/event-stream"),
        "{headers:?}"
    );
    reader
}

fn put(port: u16, key: &str, value: &str) {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let body = format!(r#"{{"key":"{}","value":"{}"}}"#, b64(key), b64(value));
    assert_eq!(post(port, "/v3/kv/put", &body).status, 200);
}

#[test]
fn an_sse_watch_resumes_after_a_restart_exactly_once() {
    let mut server = Server::start(Kind::Cairn);
    if server.is_etcd() {
        return;
    }
    let port = server.client_port;
    let query = "key=%2Fflags%2F&prefix=true";
    let mut reader = open_sse(port, query, None);
    put(port, "/flags/a", "on");
    put(port, "/other", "x");
    put(port, "/flags/b", "off");
    let seen = sse_events(&mut reader, 2);
    let ids: Vec<&str> = seen.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids, ["2", "4"], "{seen:?}");
    let data: Value = serde_json::from_str(&seen[0].2).expect("JSON data");
    assert_eq!(data[0]["key"], "/flags/a");
    assert_eq!(data[0]["value"], "on");
    drop(reader);

    // The browser reconnects with the last id it saw, even after a restart.
    server.kill();
    server.restart();
    put(port, "/flags/a", "off");
    let mut reader = open_sse(port, query, Some("2"));
    let resumed = sse_events(&mut reader, 2);
    let ids: Vec<&str> = resumed.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids, ["4", "5"], "no gap, no duplicate: {resumed:?}");

    // A compacted start revision says so, and the stream ends.
    assert_eq!(
        post(
            port,
            "/v3/kv/compaction",
            r#"{"revision":"5","physical":true}"#
        )
        .status,
        200
    );
    let mut reader = open_sse(port, "key=%2Fflags%2F&prefix=true&start_revision=2", None);
    let compacted = sse_events(&mut reader, 1);
    assert_eq!(compacted[0].1, "compacted", "{compacted:?}");
    assert_eq!(compacted[0].2, r#"{"compact_revision":5}"#);
}

#[test]
fn etcdctl_check_datascale_reads_cairns_metrics() {
    let server = Server::start(Kind::Cairn);
    let out = common::etcdctl_ok(&server, &["check", "datascale", "--load", "s"]);
    assert!(
        out.contains("PASS: Approximate system memory used"),
        "check datascale did not pass:\n{out}"
    );
}

/// Kills the child on drop (also while the test panics).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn health_is_false_without_a_leader() {
    // Member n1 of a two-member cluster whose n2 never starts: no quorum,
    // no leader. cairn serves clients after at most a request timeout.
    let dir = tempfile::tempdir().expect("temp dir");
    let (client, peer, other) = (free_port(), free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let cluster = format!("n1={peer_url},n2=http://127.0.0.1:{other}");
    let child = std::process::Command::new(common::cairn_path())
        .args(["--name", "n1", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &cluster])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn cairn");
    let _child = Child(child);
    let answered = wait_until(Duration::from_secs(30), || {
        TcpStream::connect(("127.0.0.1", client)).is_ok()
            && request(client, "GET", "/livez", "").status == 200
    });
    assert!(answered, "cairn did not answer /livez without a leader");
    let (status, body) = health(client);
    assert_eq!(
        (status, body),
        (
            503,
            serde_json::json!({"health": "false", "reason": "RAFT NO LEADER"})
        )
    );
    let ready = request(client, "GET", "/readyz?verbose", "");
    assert_eq!(ready.status, 503);
    assert!(
        ready
            .body
            .contains("[-]linearizable_read failed: reason withheld\n")
            && ready.body.ends_with("readyz check failed\n"),
        "{}",
        ready.body
    );
    assert_eq!(metric(client, "etcd_server_has_leader"), 0.0);
}

/// A browser's SSE watch counts in grpc-go-prometheus's metrics as the Watch
/// call it is (etcd's dashboard subtracts handled from started Watch
/// streams to show the open ones): started when it opens, handled
/// `Canceled` when the browser goes away.
#[test]
fn sse_watches_count_as_grpc_watch_calls() {
    let server = Server::start(Kind::Cairn);
    if server.is_etcd() {
        return;
    }
    let port = server.client_port;
    let started = r#"grpc_server_started_total{grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"} 1"#;
    let canceled = r#"grpc_server_handled_total{grpc_code="Canceled",grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"} 1"#;
    let mut reader = open_sse(port, "key=%2Fflags%2F&prefix=true", None);
    put(port, "/flags/a", "on");
    assert_eq!(sse_events(&mut reader, 1).len(), 1);
    let text = request(port, "GET", "/metrics", "").body;
    assert!(text.contains(started), "no `{started}` in:\n{text}");
    assert!(
        !text.contains("grpc_server_handled_total{grpc_code=\"Canceled\",grpc_method=\"Watch\""),
        "the open watch is not handled yet:\n{text}"
    );
    drop(reader);
    assert!(
        wait_until(Duration::from_secs(10), || request(
            port, "GET", "/metrics", ""
        )
        .body
        .contains(canceled)),
        "the closed SSE watch was never counted handled (Canceled)"
    );
}

/// `--enable-pprof` serves a CPU profile in pprof's protobuf format at Go's
/// path on the client and metrics URLs; without the flag, 404.
#[test]
#[cfg(target_os = "linux")]
fn pprof_serves_cpu_profiles_only_when_enabled() {
    use pprof::protos::Message as _;
    let metrics_port = free_port();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}");
    let server = Server::start_with(
        Kind::Cairn,
        &["--enable-pprof", "--listen-metrics-urls", &metrics_url],
    );
    if server.is_etcd() {
        return;
    }
    let port = server.client_port;
    // Work for the sampler to see while the profile runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                put(port, &format!("load/{}", i % 50), "x");
                i += 1;
            }
        })
    };
    // Symbolizing a debug build's samples takes a while.
    let (status, headers, body) = request_bytes(
        port,
        "",
        "GET",
        "/debug/pprof/profile?seconds=2",
        "",
        Duration::from_secs(120),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().expect("load thread");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v == "application/octet-stream"),
        "{headers:?}"
    );
    let profile = pprof::protos::Profile::decode(body.as_slice()).expect("a pprof protobuf");
    let types: Vec<&str> = profile
        .sample_type
        .iter()
        .filter_map(|t| profile.string_table.get(t.ty as usize))
        .map(String::as_str)
        .collect();
    assert!(types.contains(&"cpu"), "sample types {types:?}");
    assert!(!profile.sample.is_empty(), "no samples in 2 s of puts");
    assert!(
        profile.string_table.iter().any(|f| f.contains("cairn")),
        "no cairn function in the profile"
    );

    let cmdline = request_bytes(
        metrics_port,
        "",
        "GET",
        "/debug/pprof/cmdline",
        "",
        HTTP_TIMEOUT,
    );
    assert_eq!(cmdline.0, 200);
    let args = String::from_utf8(cmdline.2).expect("UTF-8");
    assert!(args.split('\0').any(|a| a == "--enable-pprof"), "{args:?}");
    // Go's other profiles have no equivalent: 404.
    assert_eq!(request(port, "GET", "/debug/pprof/heap", "").status, 404);
    drop(server);

    let plain = Server::start(Kind::Cairn);
    for path in ["/debug/pprof/profile?seconds=1", "/debug/pprof/"] {
        assert_eq!(
            request(plain.client_port, "GET", path, "").status,
            404,
            "{path}"
        );
    }
}
