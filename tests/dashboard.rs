//! The dashboard (src/http/ui/) and the SSE watch in a real browser:
//! headless Chromium driven through chromedriver (WebDriver, fantoccini).
//! Chromium and chromedriver are the Debian packages `chromium` and
//! `chromium-driver` (tests/run.sh installs them); without them the test
//! fails, saying so.
//!
//! One server and one browser session serve every part, in order, to keep
//! the cost to a few seconds: the cluster view, the key browser (browse,
//! edit, delete behind the confirmation), the live watch panel, leases,
//! metrics, then an `EventSource` page across a restart of the member, then
//! the login form once auth is on. Each view's screenshot is saved under
//! `$CARGO_TARGET_TMPDIR/dashboard/` (docs/dashboard.md shows copies).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{etcdctl_ok, free_port, wait_until, Kind, Server};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long a page gets to show what a step waits for.
const UI_TIMEOUT: Duration = Duration::from_secs(10);
/// The watch panel must show a put within this.
const LIVE_WATCH: Duration = Duration::from_secs(1);

/// chromedriver, killed on drop (also while the test panics).
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn need(path: &str, package: &str) {
    assert!(
        Path::new(path).is_file(),
        "{path} not found: install the Debian packages chromium and chromium-driver \
         (tests/run.sh installs them as root): apt-get install -y {package}"
    );
}

/// Starts chromedriver and a headless Chromium session with its console
/// log kept.
async fn browser() -> (Driver, Client) {
    need(CHROMIUM, "chromium");
    need(CHROMEDRIVER, "chromium-driver");
    let port = free_port();
    let driver = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver(driver);
    assert!(
        wait_until(UI_TIMEOUT, || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "chromedriver did not listen on {port}"
    );
    let caps = json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1100,760",
                     "--no-first-run", "--disable-extensions"],
        },
        "goog:loggingPrefs": { "browser": "ALL" },
    });
    let Value::Object(caps) = caps else {
        panic!("capabilities are a JSON object")
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session with headless Chromium");
    (driver, client)
}

/// chromedriver's console log (entries since the last call).
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or("")))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

/// The console's errors since the last call.
async fn console_errors(client: &Client) -> Vec<String> {
    let log = client.issue_cmd(BrowserLog).await.expect("browser log");
    log.as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn shots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    std::fs::write(shots_dir().join(format!("{name}.png")), png).expect("save screenshot");
}

/// Waits until the element's text satisfies `ok`; its last text otherwise.
async fn wait_text(
    client: &Client,
    css: &str,
    timeout: Duration,
    ok: impl Fn(&str) -> bool,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        if let Ok(el) = client.find(Locator::Css(css)).await {
            if let Ok(text) = el.text().await {
                if ok(&text) {
                    return Ok(text);
                }
                last = text;
            }
        }
        if Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn expect_text(client: &Client, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    match wait_text(client, css, UI_TIMEOUT, ok).await {
        Ok(text) => text,
        Err(last) => panic!("{what}: {css} shows {last:?}"),
    }
}

async fn click(client: &Client, css: &str) {
    client
        .wait()
        .at_most(UI_TIMEOUT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn type_into(client: &Client, css: &str, text: &str) {
    let el = client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    el.clear().await.expect("clear");
    el.send_keys(text).await.expect("type");
}

async fn goto(client: &Client, server: &Server, view: &str) {
    client
        .goto(&format!(
            "http://127.0.0.1:{}/ui/#{view}",
            server.client_port
        ))
        .await
        .expect("open the dashboard");
}

fn get(server: &Server, key: &str) -> String {
    etcdctl_ok(server, &["get", key, "--print-value-only"])
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_an_event_source_work_in_headless_chromium() {
    let mut server = Server::start_with(Kind::Cairn, &["--enable-ui", "--bcrypt-cost", "4"]);
    if server.is_etcd() {
        return;
    }
    let (_driver, client) = browser().await;
    let started = Instant::now();
    views(&client, &server).await;
    let views_took = started.elapsed();
    event_source_across_a_restart(&client, &mut server).await;
    login(&client, &server).await;
    client.close().await.expect("close the browser session");
    eprintln!(
        "browser test: views {views_took:?}, whole {:?}; screenshots in {}",
        started.elapsed(),
        shots_dir().display()
    );
}

/// Every view, as a user without auth sees it (the leases view revokes).
async fn views(client: &Client, server: &Server) {
    for (k, v) in [
        ("/app/config/color", "blue"),
        ("/app/config/size", "large"),
        ("/app/name", "v1"),
        ("/app/name", "v2"),
    ] {
        etcdctl_ok(server, &["put", k, v]);
    }

    // Cluster: the member, its role, raft term and index, health.
    goto(client, server, "cluster").await;
    let row = expect_text(client, "#members tbody tr", "the member list", |t| {
        t.contains("leader")
    })
    .await;
    assert!(row.contains(common::MEMBER_NAME), "{row}");
    expect_text(client, "#health", "health", |t| t == "healthy").await;
    screenshot(client, "cluster").await;

    // Keys: browse a prefix, open a key with its history, edit, delete.
    click(client, "#nav-keys").await;
    expect_text(client, "#key-list", "the top level", |t| {
        t.contains("/ (3)")
    })
    .await;
    type_into(client, "#prefix", "/app/").await;
    click(client, "#prefix-form button").await;
    expect_text(client, "#key-list", "the /app/ level", |t| {
        t.contains("config/ (2)") && t.contains("name")
    })
    .await;
    click(client, "#key-list button[data-key='/app/name']").await;
    expect_text(client, "#detail-value", "the value", |t| t == "v2").await;
    let history = expect_text(client, "#history tbody", "the history", |t| {
        t.lines().count() == 2
    })
    .await;
    assert!(history.contains("v1"), "{history}");
    screenshot(client, "keys").await;
    type_into(client, "#edit-value", "v3").await;
    click(client, "#save-key").await;
    click(client, "#confirm-ok").await;
    expect_text(client, "#detail-value", "the saved value", |t| t == "v3").await;
    assert_eq!(get(server, "/app/name"), "v3");
    click(client, "#delete-key").await;
    click(client, "#confirm-cancel").await;
    assert_eq!(get(server, "/app/name"), "v3", "cancel deletes nothing");
    click(client, "#delete-key").await;
    click(client, "#confirm-ok").await;
    expect_text(client, "#key-detail", "the deletion", |t| {
        t.contains("Deleted")
    })
    .await;
    assert_eq!(get(server, "/app/name"), "");

    // Watch: a put shows up within a second.
    click(client, "#nav-watch").await;
    type_into(client, "#watch-prefix", "/app/").await;
    click(client, "#watch-toggle").await;
    expect_text(client, "#watch-status", "the watch", |t| {
        t.starts_with("Watching")
    })
    .await;
    etcdctl_ok(server, &["put", "/app/live", "now"]);
    let put_at = Instant::now();
    let shown = wait_text(client, "#watch-log tbody", LIVE_WATCH, |t| {
        t.contains("/app/live")
    })
    .await;
    assert!(
        shown.is_ok(),
        "the watch panel did not show the put within {LIVE_WATCH:?}: {shown:?}"
    );
    eprintln!("watch panel showed a put after {:?}", put_at.elapsed());
    screenshot(client, "watch").await;

    // Leases: TTL and attached keys.
    let granted = etcdctl_ok(server, &["lease", "grant", "600"]);
    let id = granted
        .split_whitespace()
        .nth(1)
        .expect("lease <hex id> granted with TTL(600s)");
    etcdctl_ok(server, &["put", "/app/session", "s1", "--lease", id]);
    click(client, "#nav-leases").await;
    let row = expect_text(client, "#lease-table tbody", "the lease", |t| {
        t.contains(id)
    })
    .await;
    assert!(
        row.contains("/app/session") && row.contains("600 s"),
        "{row}"
    );
    screenshot(client, "leases").await;
    click(client, &format!("tr[data-lease='{id}'] button")).await;
    click(client, "#confirm-ok").await;
    expect_text(client, "#lease-table tbody", "the revoked lease", |t| {
        t.contains("no leases")
    })
    .await;
    assert_eq!(get(server, "/app/session"), "", "revoking deletes its keys");

    // Metrics: charts fill from /metrics.
    click(client, "#nav-metrics").await;
    expect_text(client, "#chart-rate strong", "the request rate", |t| {
        t != "…"
    })
    .await;
    screenshot(client, "metrics").await;

    // Accessible markup: every form field has a label, every button a
    // name, and the views are reachable from the keyboard (links).
    let unlabelled = client
        .execute(
            r#"return [...document.querySelectorAll("input, textarea, select")]
                 .filter((f) => !f.labels.length && !f.getAttribute("aria-label"))
                 .map((f) => f.id || f.outerHTML)
                 .concat([...document.querySelectorAll("button")]
                   .filter((b) => !b.textContent.trim() && !b.getAttribute("aria-label"))
                   .map((b) => b.outerHTML))
                 .concat([...document.querySelectorAll("header nav a")]
                   .filter((a) => a.tabIndex < 0 || !a.getAttribute("href"))
                   .map((a) => a.outerHTML));"#,
            vec![],
        )
        .await
        .expect("inspect the markup");
    assert_eq!(
        unlabelled,
        json!([]),
        "fields, buttons or links without a name"
    );

    let errors = console_errors(client).await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");
}

/// A feature-flag page's `EventSource` on a prefix sees every change
/// exactly once, across a restart of the member.
async fn event_source_across_a_restart(client: &Client, server: &mut Server) {
    client
        .goto(&format!("http://127.0.0.1:{}/version", server.client_port))
        .await
        .expect("open a page on the member's origin");
    client
        .execute(
            r#"window.seen = [];
               const es = new EventSource("/v3/watch/sse?key=%2Fflags%2F&prefix=true");
               es.addEventListener("open", () => { window.opened = (window.opened || 0) + 1; });
               es.addEventListener("change", (e) => {
                 for (const c of JSON.parse(e.data)) window.seen.push(`${c.type} ${c.key}=${c.value}`);
               });"#,
            vec![],
        )
        .await
        .expect("start an EventSource");
    let seen = |n: usize| async move {
        let deadline = Instant::now() + UI_TIMEOUT;
        loop {
            let got = client
                .execute("return window.seen;", vec![])
                .await
                .expect("read window.seen");
            let got: Vec<String> = serde_json::from_value(got).expect("strings");
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let opened = |n: i64| async move {
        let deadline = Instant::now() + UI_TIMEOUT;
        loop {
            let got = client
                .execute("return window.opened || 0;", vec![])
                .await
                .expect("read window.opened");
            if got.as_i64() >= Some(n) || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert_eq!(opened(1).await, 1, "the EventSource did not open");
    etcdctl_ok(server, &["put", "/flags/dark", "on"]);
    etcdctl_ok(server, &["put", "/other", "x"]);
    etcdctl_ok(server, &["put", "/flags/beta", "off"]);
    assert_eq!(seen(2).await, ["PUT /flags/dark=on", "PUT /flags/beta=off"]);

    // The member restarts; changes made before the browser reconnects
    // arrive once it does, after the last id it saw.
    server.kill();
    server.restart();
    etcdctl_ok(server, &["put", "/flags/dark", "off"]);
    etcdctl_ok(server, &["del", "/flags/beta"]);
    assert_eq!(opened(2).await, 2, "the EventSource did not reconnect");
    etcdctl_ok(server, &["put", "/flags/new", "1"]);
    let all = seen(5).await;
    assert_eq!(
        all,
        [
            "PUT /flags/dark=on",
            "PUT /flags/beta=off",
            "PUT /flags/dark=off",
            "DELETE /flags/beta=",
            "PUT /flags/new=1"
        ],
        "every change exactly once"
    );
    // The reconnection's refused connections were logged; start afresh.
    let _ = console_errors(client).await;
}

/// With auth on, the dashboard asks for a login, then works with the
/// token (the watch panel through the cookie).
async fn login(client: &Client, server: &Server) {
    etcdctl_ok(server, &["user", "add", "root:pw"]);
    etcdctl_ok(server, &["auth", "enable"]);
    goto(client, server, "cluster").await;
    client
        .wait()
        .at_most(UI_TIMEOUT)
        .for_element(Locator::Css("#login:not([hidden]) #login-name"))
        .await
        .expect("the login form");
    type_into(client, "#login-name", "root").await;
    type_into(client, "#login-password", "wrong").await;
    click(client, "#login-form button").await;
    expect_text(client, "#error", "a refused login", |t| {
        t.contains("authentication failed")
    })
    .await;
    type_into(client, "#login-password", "pw").await;
    screenshot(client, "login").await;
    click(client, "#login-form button").await;
    expect_text(
        client,
        "#members tbody tr",
        "the member list after login",
        |t| t.contains("leader"),
    )
    .await;
    expect_text(client, "#user", "the user", |t| t == "root").await;

    click(client, "#nav-watch").await;
    type_into(client, "#watch-prefix", "/secure/").await;
    click(client, "#watch-toggle").await;
    expect_text(client, "#watch-status", "the watch with a token", |t| {
        t.starts_with("Watching")
    })
    .await;
    etcdctl_ok(server, &["--user", "root:pw", "put", "/secure/k", "v"]);
    expect_text(client, "#watch-log tbody", "an event with auth on", |t| {
        t.contains("/secure/k")
    })
    .await;
    let errors: Vec<String> = console_errors(client)
        .await
        .into_iter()
        // The first, refused login is a 400 the console reports.
        .filter(|e| !e.contains("/v3/auth/authenticate"))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
}
