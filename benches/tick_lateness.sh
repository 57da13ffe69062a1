#!/usr/bin/env bash
# Raft tick lateness under big reads and compaction (issue 8, section 1):
# does anything block a member's raft thread? Starts a 3-member release
# cluster on loopback, loads 300,000 puts over 100,000 keys, then for
# $WINDOW seconds runs 100k-key Ranges back to back on every member while a
# physical compaction of 200,000 revisions runs, and prints each member's
# tick-lateness summaries (p50/p99/max over 10 s windows, logged by
# RaftNode at debug level), any late-tick warnings and leader changes.
# Results: docs/performance.md, "Raft thread under load".
#
#   cargo build --release --workspace && bash benches/tick_lateness.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CAIRN_BIN:-target/release/cairn}
BENCH=${CAIRN_BENCH_BIN:-target/release/cairn-bench}
WINDOW=${WINDOW:-25}
ETCDCTL=${ETCDCTL:-/usr/bin/etcdctl}
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

base=$((20000 + RANDOM % 20000))
cluster=""
for i in 1 2 3; do cluster+="m$i=http://127.0.0.1:$((base + 10 * i + 1)),"; done
cluster=${cluster%,}
endpoints=""
for i in 1 2 3; do
  c=$((base + 10 * i)); p=$((c + 1)); endpoints+="127.0.0.1:$c,"
  RUST_LOG=info,cairn::raft=debug "$BIN" --name "m$i" --data-dir "$tmp/m$i" \
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster "$cluster" --initial-cluster-token tick-lateness \
    2> "$tmp/m$i.log" &
  pids+=($!)
done
endpoints=${endpoints%,}
export ETCDCTL_API=3
for _ in $(seq 100); do "$ETCDCTL" --endpoints="$endpoints" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done

echo "== loading 300,000 puts over 100,000 keys"
"$BENCH" put --endpoints "$endpoints" --clients 64 --conns 8 --total 300000 --key-space 100000 \
  --sequential-keys --no-progress >/dev/null
rev=$("$ETCDCTL" --endpoints="${endpoints%%,*}" get bench/ --prefix --limit 1 -w json | sed 's/.*"revision":\([0-9]*\).*/\1/')
mark=$(date -u +%Y-%m-%dT%H:%M:%S)
echo "== $WINDOW s of 100k-key Ranges on every member + physical compaction to $((rev - 100000)) (from $mark)"
end=$((SECONDS + WINDOW))
load=()
for ep in ${endpoints//,/ }; do
  ( while (( SECONDS < end )); do "$ETCDCTL" --endpoints="$ep" get bench/ --prefix -w json >/dev/null; done ) &
  load+=($!)
done
( "$ETCDCTL" --endpoints="${endpoints%%,*}" --command-timeout=60s compaction --physical $((rev - 100000)) ) &
load+=($!)
wait "${load[@]}" || true
sleep 11   # let every member log the summary window that covers the end of the load

for i in 1 2 3; do
  echo "-- m$i"
  awk -v mark="$mark" '$1 >= mark' "$tmp/m$i.log" | grep -E "raft tick lateness|raft tick fired late|raft leader changed" \
    | sed -E 's/^([^ ]+) +[A-Z]+ +[^ ]+ */\1 /' || echo "(nothing logged)"
done
