// cairn's dashboard: plain JavaScript over the member's own JSON gateway
// (/v3/...), /health, /metrics and the SSE watch (/v3/watch/sse).
// No build step, no library. docs/dashboard.md describes it.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const TOKEN = "cairn-token";
let token = sessionStorage.getItem(TOKEN) || "";
let authOn = false;

// ---- bytes <-> the gateway's base64 ----
const utf8 = new TextEncoder();
const text = new TextDecoder();
function b64Bytes(bytes) {
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}
const enc = (s) => b64Bytes(utf8.encode(s));
function dec(b64) {
  if (!b64) return "";
  const bin = atob(b64);
  return text.decode(Uint8Array.from(bin, (c) => c.charCodeAt(0)));
}
// etcd's prefix end ("\0" = every key, for the empty prefix).
function prefixEnd(prefix) {
  const bytes = Array.from(utf8.encode(prefix));
  while (bytes.length) {
    const last = bytes.pop();
    if (last < 0xff) {
      bytes.push(last + 1);
      return b64Bytes(bytes);
    }
  }
  return "AA==";
}

// ---- calls ----
class ApiError extends Error {
  constructor(message, code, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}
async function call(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = token;
  const resp = await fetch(path, { method: "POST", headers, body: JSON.stringify(body || {}) });
  const json = await resp.json().catch(() => ({}));
  if (!resp.ok || json.error) {
    const err = new ApiError(json.message || json.error || resp.statusText, json.code, resp.status);
    if (authOn && isAuthError(err)) needLogin();
    throw err;
  }
  return json;
}
// Unauthenticated (invalid or expired token), or no token at all.
const isAuthError = (e) => e.code === 16 || /user name is empty|invalid auth token/.test(e.message);

function showError(e) {
  const p = $("#error");
  p.textContent = e ? String(e.message || e) : "";
  p.hidden = !e;
}
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}
const cell = (...c) => el("td", {}, ...c);
function bytes(n) {
  n = Number(n || 0);
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
const hex = (id) => BigInt(id || 0).toString(16);
// Lease ids as etcdctl prints them (16 hex digits).
const leaseHex = (id) => hex(id).padStart(16, "0");

// Asks before a change; resolves to true when confirmed.
function confirmed(message) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = message;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    $("#confirm-cancel").focus();
  });
}

// ---- login ----
function needLogin() {
  token = "";
  sessionStorage.removeItem(TOKEN);
  document.cookie = `${TOKEN}=; path=/; max-age=0; SameSite=Strict`;
  stopWatch();
  for (const v of document.querySelectorAll(".view")) v.hidden = true;
  $("#whoami").hidden = true;
  $("#login").hidden = false;
  $("#login-name").focus();
}
function loggedIn(name) {
  sessionStorage.setItem(TOKEN, token);
  sessionStorage.setItem("cairn-user", name);
  // EventSource cannot send headers: the SSE watch reads this cookie.
  document.cookie = `${TOKEN}=${token}; path=/; SameSite=Strict`;
  $("#login").hidden = true;
  $("#user").textContent = name;
  $("#whoami").hidden = false;
  route();
}
$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const name = $("#login-name").value;
  try {
    token = "";
    const resp = await call("/v3/auth/authenticate", { name, password: $("#login-password").value });
    token = resp.token;
    $("#login-password").value = "";
    showError(null);
    loggedIn(name);
  } catch (e) {
    showError(e);
  }
});
$("#logout").addEventListener("click", needLogin);

// ---- views ----
const views = {
  cluster: loadCluster,
  keys: () => browse($("#prefix").value),
  watch: () => {},
  leases: loadLeases,
  metrics: () => sample(),
};
let current = "";
function route() {
  if (authOn && !token) return needLogin();
  const name = (location.hash || "#cluster").slice(1);
  current = name in views ? name : "cluster";
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== current;
  for (const a of document.querySelectorAll("header nav a")) {
    if (a.id === `nav-${current}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  showError(null);
  Promise.resolve(views[current]()).catch(showError);
}
window.addEventListener("hashchange", route);

// Cluster: members, leader, raft term/index, health, DB size, alarms.
async function memberStatus(member, local) {
  if (member.ID === local.header.member_id) return local;
  for (const url of member.clientURLs || []) {
    try {
      const resp = await fetch(`${url}/v3/maintenance/status`, { method: "POST", body: "{}" });
      if (resp.ok) return await resp.json();
    } catch (_) { /* unreachable from this browser: try the next URL */ }
  }
  return null;
}
async function loadCluster() {
  const [health, status, members, alarms] = await Promise.all([
    fetch("/health").then((r) => r.json()).catch(() => ({ health: "false", reason: "no answer" })),
    call("/v3/maintenance/status"),
    call("/v3/cluster/member/list"),
    call("/v3/maintenance/alarm", { action: "GET" }),
  ]);
  const facts = $("#cluster-facts");
  facts.replaceChildren();
  const healthy = health.health === "true";
  const fact = (k, v) => facts.append(el("dt", {}, k), el("dd", {}, v));
  fact("Health", el("span", { class: healthy ? "ok" : "bad", id: "health" },
    healthy ? "healthy" : `unhealthy${health.reason ? ": " + health.reason : ""}`));
  fact("Version", status.version || "");
  fact("Revision", status.header.revision || "0");
  fact("Leader", status.leader && status.leader !== "0" ? hex(status.leader) : "none");
  const tbody = $("#members tbody");
  const rows = await Promise.all((members.members || []).map(async (m) => {
    const s = await memberStatus(m, status);
    const leader = s && s.leader === m.ID;
    return el("tr", {},
      cell(m.name || "(unstarted)"), cell(hex(m.ID)),
      cell(m.isLearner ? "learner" : leader ? "leader" : s ? "follower" : "no answer"),
      cell(s ? s.raftTerm : "—"), cell(s ? s.raftIndex : "—"),
      cell(s ? `${bytes(s.dbSize)} (${bytes(s.dbSizeInUse)} in use)` : "—"),
      cell((m.clientURLs || []).join(" ")), cell((m.peerURLs || []).join(" ")));
  }));
  tbody.replaceChildren(...rows);
  const list = (alarms.alarms || []).map((a) => `${a.alarm} on ${hex(a.memberID)}`);
  const p = $("#alarms");
  p.textContent = list.length ? list.join(", ") : "none";
  p.className = list.length ? "bad" : "";
}
$("#cluster-refresh").addEventListener("click", () => loadCluster().catch(showError));
setInterval(() => { if (current === "cluster" && !document.hidden) loadCluster().catch(() => {}); }, 5000);

// Keys: a prefix tree over one range, one level at a time.
async function browse(prefix) {
  $("#prefix").value = prefix;
  const resp = await call("/v3/kv/range", {
    key: prefix ? enc(prefix) : "AA==", range_end: prefixEnd(prefix), keys_only: true, limit: 1000,
  });
  const dirs = new Map();
  const leaves = [];
  for (const kv of resp.kvs || []) {
    const key = dec(kv.key);
    const rest = key.slice(prefix.length);
    const slash = rest.indexOf("/");
    if (slash >= 0 && slash < rest.length - 1) {
      const dir = prefix + rest.slice(0, slash + 1);
      dirs.set(dir, (dirs.get(dir) || 0) + 1);
    } else {
      leaves.push(key);
    }
  }
  const list = $("#key-list");
  list.replaceChildren(
    ...[...dirs].map(([dir, n]) => el("li", {}, el("button", {
      type: "button", class: "dir", "aria-label": `prefix ${dir}, ${n} keys`,
      onclick: () => browse(dir).catch(showError),
    }, `${dir.slice(prefix.length)} (${n})`))),
    ...leaves.map((key) => el("li", {}, el("button", {
      type: "button", class: "key", "data-key": key,
      onclick: (ev) => showKey(key, ev.currentTarget).catch(showError),
    }, key.slice(prefix.length) || key))),
  );
  if (!list.children.length) list.append(el("li", { class: "muted" }, "no keys"));
  if (resp.more) list.append(el("li", { class: "muted" }, "(first 1000 keys)"));
  // Breadcrumbs: every prefix up to this one.
  const crumbs = $("#crumbs");
  crumbs.replaceChildren(el("button", { type: "button", onclick: () => browse("").catch(showError) }, "(all)"));
  let at = 0;
  while (prefix && (at = prefix.indexOf("/", at) + 1) > 0) {
    const p = prefix.slice(0, at);
    crumbs.append(" ", el("button", { type: "button", onclick: () => browse(p).catch(showError) }, p));
  }
}
$("#prefix-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  browse($("#prefix").value).catch(showError);
});

// A key's value and metadata, its history, and put/delete.
async function history(key, kv) {
  const versions = [kv];
  let note = "";
  while (kv.version > 1 && versions.length < 20) {
    try {
      const resp = await call("/v3/kv/range", { key: enc(key), revision: Number(kv.mod_revision) - 1 });
      if (!resp.kvs || !resp.kvs.length) break;
      kv = resp.kvs[0];
      versions.push(kv);
    } catch (e) {
      note = /compacted/.test(e.message) ? "older revisions are compacted" : e.message;
      break;
    }
  }
  return { versions, note };
}
async function showKey(key, button) {
  for (const b of document.querySelectorAll("#key-list button")) b.removeAttribute("aria-current");
  if (button) button.setAttribute("aria-current", "true");
  const detail = $("#key-detail");
  const resp = await call("/v3/kv/range", { key: enc(key) });
  const kv = (resp.kvs || [])[0];
  if (!kv) {
    detail.replaceChildren(el("p", {}, `${key} does not exist (any more).`));
    return;
  }
  const value = dec(kv.value);
  const { versions, note } = await history(key, kv);
  const facts = el("dl", { class: "facts" });
  for (const [k, v] of [["Created at", kv.create_revision], ["Modified at", kv.mod_revision],
    ["Version", kv.version], ["Lease", kv.lease && kv.lease !== "0" ? leaseHex(kv.lease) : "none"]]) {
    facts.append(el("dt", {}, k), el("dd", {}, v || "0"));
  }
  const edit = el("textarea", { id: "edit-value", rows: "4" });
  edit.value = value;
  const hist = el("table", { id: "history" },
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Revision"), el("th", { scope: "col" }, "Version"), el("th", { scope: "col" }, "Value"))),
    el("tbody", {}, ...versions.map((v) => el("tr", {}, cell(v.mod_revision), cell(v.version), el("td", { class: "value" }, dec(v.value))))));
  detail.replaceChildren(
    el("h3", { id: "detail-key" }, key),
    el("pre", { id: "detail-value", "aria-label": "value" }, value),
    facts,
    el("form", { class: "stack", onsubmit: async (ev) => {
      ev.preventDefault();
      if (!(await confirmed(`Put ${key} = ${edit.value}?`))) return;
      await put(key, edit.value, kv.lease).catch(showError);
      await showKey(key, null).catch(showError);
    } }, el("label", { for: "edit-value" }, "New value"), edit,
    el("div", { class: "row" },
      el("button", { type: "submit", id: "save-key" }, "Save…"),
      el("button", { type: "button", class: "danger", id: "delete-key", onclick: async () => {
        if (!(await confirmed(`Delete ${key}?`))) return;
        try {
          await call("/v3/kv/deleterange", { key: enc(key) });
          await browse($("#prefix").value);
          detail.replaceChildren(el("p", {}, `Deleted ${key}.`));
        } catch (e) { showError(e); }
      } }, "Delete…"))),
    el("h3", {}, "History"), hist, note ? el("p", { class: "muted" }, note) : "",
  );
}
async function put(key, value, lease) {
  const body = { key: enc(key), value: enc(value) };
  if (lease && lease !== "0") body.lease = lease;
  return call("/v3/kv/put", body);
}
$("#new-key").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const key = $("#new-key-name").value;
  const value = $("#new-key-value").value;
  if (!(await confirmed(`Put ${key} = ${value}?`))) return;
  try {
    await put(key, value, $("#new-key-lease").value.trim());
    await browse($("#prefix").value);
    await showKey(key, null);
  } catch (e) { showError(e); }
});

// Watch: a prefix through the SSE endpoint (EventSource resumes by itself).
let source = null;
function stopWatch() {
  if (source) source.close();
  source = null;
  $("#watch-toggle").textContent = "Start";
  $("#watch-status").textContent = "Not watching.";
}
$("#watch-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (source) return stopWatch();
  const prefix = $("#watch-prefix").value;
  const query = prefix
    ? `key=${encodeURIComponent(prefix)}&prefix=true`
    : "key=%00&range_end=%00";
  source = new EventSource(`/v3/watch/sse?${query}`);
  $("#watch-toggle").textContent = "Stop";
  source.addEventListener("open", () => {
    $("#watch-status").textContent = `Watching ${prefix || "every key"}.`;
  });
  source.addEventListener("change", (e) => {
    const tbody = $("#watch-log tbody");
    const at = new Date().toLocaleTimeString();
    for (const c of JSON.parse(e.data)) {
      tbody.prepend(el("tr", {}, cell(at), cell(e.lastEventId), cell(c.type), cell(c.key),
        el("td", { class: "value" }, c.type === "PUT" ? c.value : "")));
    }
    while (tbody.children.length > 200) tbody.lastChild.remove();
  });
  source.addEventListener("compacted", (e) => {
    $("#watch-status").textContent = `Compacted at ${JSON.parse(e.data).compact_revision}: start again.`;
    stopWatch();
  });
  source.addEventListener("error", (e) => {
    if (e.data) {
      $("#watch-status").textContent = `Watch failed: ${JSON.parse(e.data).error}`;
      stopWatch();
    } else if (source) {
      $("#watch-status").textContent = "Reconnecting…";
    }
  });
});

// Leases: TTL left, granted TTL and attached keys.
async function loadLeases() {
  const resp = await call("/v3/lease/leases");
  const leases = (resp.leases || []).slice(0, 100);
  const rows = await Promise.all(leases.map(async (l) => {
    const t = await call("/v3/lease/timetolive", { ID: l.ID, keys: true });
    const id = leaseHex(l.ID);
    const revoke = el("button", { type: "button", class: "danger", "aria-label": `Revoke lease ${id}`,
      onclick: async () => {
        if (!(await confirmed(`Revoke lease ${id} and delete its keys?`))) return;
        try {
          await call("/v3/lease/revoke", { ID: l.ID });
          await loadLeases();
        } catch (e) { showError(e); }
      } }, "Revoke…");
    return el("tr", { "data-lease": id }, cell(id), cell(`${t.TTL} s`), cell(`${t.grantedTTL} s`),
      el("td", { class: "value" }, (t.keys || []).map(dec).join("\n") || "none"), cell(revoke));
  }));
  const tbody = $("#lease-table tbody");
  tbody.replaceChildren(...rows);
  if (!rows.length) tbody.append(el("tr", {}, el("td", { colspan: "5", class: "muted" }, "no leases")));
}
$("#leases-refresh").addEventListener("click", () => loadLeases().catch(showError));

// Metrics: rates and averages from /metrics, sampled every 2 seconds.
function parseMetrics(body) {
  const sums = new Map();
  for (const line of body.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m) sums.set(m[1], (sums.get(m[1]) || 0) + Number(m[3]));
  }
  return sums;
}
const charts = [
  { id: "rate", title: "Requests / s (gRPC and gateway)", rate: ["grpc_server_handled_total"] },
  { id: "latency", title: "Mean request latency (ms)", mean: ["grpc_server_handling_seconds_sum", "grpc_server_handling_seconds_count"] },
  { id: "puts", title: "Proposals committed / s", rate: ["etcd_server_proposals_committed_total"] },
  { id: "db", title: "DB size (KiB)", gauge: "etcd_mvcc_db_total_size_in_bytes", scale: 1 / 1024 },
];
const POINTS = 60;
let previous = null;
const svg = (tag, attrs) => {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
};
for (const c of charts) {
  c.points = [];
  c.line = svg("polyline", { "vector-effect": "non-scaling-stroke" });
  c.svg = svg("svg", { viewBox: `0 0 ${POINTS - 1} 40`, preserveAspectRatio: "none", width: "100%", height: "80", role: "img", "aria-label": c.title });
  c.svg.append(c.line);
  c.now = el("strong", {}, "…");
  $("#charts").append(el("figure", { id: `chart-${c.id}` }, el("figcaption", {}, c.title, " ", c.now), c.svg));
}
async function sample() {
  const body = await fetch("/metrics").then((r) => r.text());
  const now = { at: performance.now(), m: parseMetrics(body) };
  for (const c of charts) {
    let v = null;
    if (c.gauge) v = (now.m.get(c.gauge) || 0) * c.scale;
    else if (previous) {
      const d = (name) => (now.m.get(name) || 0) - (previous.m.get(name) || 0);
      if (c.rate) v = d(c.rate[0]) / ((now.at - previous.at) / 1000);
      else { const n = d(c.mean[1]); v = n > 0 ? (1000 * d(c.mean[0])) / n : 0; }
    }
    if (v === null || !Number.isFinite(v)) continue;
    c.points.push(v);
    if (c.points.length > POINTS) c.points.shift();
    const max = Math.max(...c.points, 1e-9);
    c.line.setAttribute("points", c.points.map((p, i) => `${i},${(40 - (38 * p) / max).toFixed(2)}`).join(" "));
    c.now.textContent = v.toFixed(v < 10 ? 2 : 0);
    c.svg.setAttribute("aria-label", `${c.title}: ${c.now.textContent} now, ${max.toFixed(2)} at most`);
  }
  previous = now;
}
setInterval(() => { if (!document.hidden) sample().catch(() => {}); }, 2000);

// ---- start ----
async function start() {
  try {
    const resp = await fetch("/v3/auth/status", { method: "POST", body: "{}" });
    authOn = resp.ok && (await resp.json()).enabled === true;
  } catch (_) { authOn = false; }
  if (authOn && token) {
    $("#user").textContent = sessionStorage.getItem("cairn-user") || "";
    $("#whoami").hidden = false;
  }
  route();
  sample().catch(() => {});
}
start();
