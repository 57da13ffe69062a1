#!/bin/bash
# Large keyspaces (issue 12 §2; figures in docs/performance.md).
#
#   benches/large_keyspace.sh mem   KIND VALSIZE REVS [KEYS]
#       KEYS (default 1M) keys of VALSIZE bytes, then REVS-1 more puts per key;
#       RSS after each phase, `etcdctl snapshot save` time, restart time (spawn
#       to the first linearizable get), count after restart.
#   benches/large_keyspace.sh flood KIND [N] [extra server flags...]
#       100k keys of 1 KiB under r/, then N (default 50) concurrent Ranges of
#       the whole prefix (100 MB each) through curl; peak RSS, statuses.
#   benches/large_keyspace.sh catchup KIND VALSIZE KEYS
#       one member loaded with KEYS keys of VALSIZE bytes, then a second one
#       added (`etcdctl member add`, then started with the state `existing`):
#       time from its spawn until a serializable Range on it answers at the
#       first member's revision (the whole keyspace received from a snapshot;
#       the first member keeps its default --snapshot-count, so its log is
#       truncated long before); then every key counted on it. Needs twice the
#       keyspace on disk, not three times as a three-member cluster would.
#
# KIND is etcd (/usr/bin/etcd) or cairn (target/release/cairn). Needs
# target/release/cairn-bench, etcdctl, curl with HTTP/2. Data goes to
# $OUT (default /tmp/cairn-large) and is deleted at the end. Both servers
# run with --quota-backend-bytes $QUOTA (default 8 GiB, etcd's maximum;
# QUOTA=17179869184 gives cairn 16 GiB). SNAP_STREAM=1 reads the Snapshot
# stream to its end through curl instead of `etcdctl snapshot save`, for
# keyspaces whose second copy would not fit on the disk.
set -u
W=$(cd "$(dirname "$0")/.." && pwd)
CAIRN=${CAIRN:-$W/target/release/cairn}
BENCH=${BENCH:-$W/target/release/cairn-bench}
OUT=${OUT:-/tmp/cairn-large}
QUOTA=${QUOTA:-8589934592}
mkdir -p "$OUT"
export ETCDCTL_API=3

start() { # KIND DIR CLIENT_PORT PEER_PORT [flags...]; sets PID
  local kind=$1 dir=$2 cp=$3 pp=$4
  shift 4
  spawn "$kind" m "$dir" $cp $pp "m=http://127.0.0.1:$pp" "$@"
  ready $cp
}
spawn() { # KIND NAME DIR CLIENT_PORT PEER_PORT INITIAL_CLUSTER [flags...]; sets PID
  local kind=$1 name=$2 dir=$3 cp=$4 pp=$5 cluster=$6 bin=$CAIRN
  shift 6
  [ "$kind" = etcd ] && bin=/usr/bin/etcd
  "$bin" --name "$name" --data-dir "$dir" \
    --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
    --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
    --initial-cluster "$cluster" --quota-backend-bytes $QUOTA "$@" > "$dir.log" 2>&1 &
  PID=$!
}
ready() { # CLIENT_PORT
  local cp=$1
  for _ in $(seq 1 6000); do
    etcdctl --endpoints "127.0.0.1:$cp" --command-timeout=1s get x > /dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "server did not come up"
  return 1
}
rss() { grep -E "VmRSS|VmHWM|RssAnon|RssFile" "/proc/$1/status" | tr -s ' \t' ' ' | tr '\n' ' '; echo; }
stop() { kill -TERM "$1"; wait "$1" 2> /dev/null; }
secs() { echo "$2 - $1" | bc; }
# TOTAL puts of VALSIZE bytes over KEYS keys k/..., in key order, 64 clients:
# CLIENT_PORT VALSIZE KEYS TOTAL.
load() {
  "$BENCH" put --endpoints 127.0.0.1:$1 --prefix k/ --key-size 16 --val-size "$2" \
    --key-space "$3" --total "$4" --sequential-keys --clients 64 --conns 8 \
    --no-progress --duration 3000 | grep -E '^put '
}

mem() {
  local kind=$1 val=$2 revs=$3 keys=${4:-1000000}
  local dir=$OUT/mem-$kind cp=$((20000 + RANDOM % 20000))
  local pp=$((cp + 1)) t0 t1
  rm -rf "$dir"
  start "$kind" "$dir" $cp $pp || return 1
  sleep 2
  echo "$kind empty: $(rss $PID)"
  t0=$(date +%s.%N); load $cp "$val" "$keys" "$keys"; t1=$(date +%s.%N)
  echo "$kind load of $keys x $val B: $(secs $t0 $t1) s"
  sleep 5
  echo "$kind after 1 rev/key: $(rss $PID) du $(du -sm "$dir" | cut -f1) MB"
  if [ "$revs" -gt 1 ]; then
    t0=$(date +%s.%N); load $cp "$val" "$keys" $((keys * (revs - 1))); t1=$(date +%s.%N)
    echo "$kind $((revs - 1)) more revs/key: $(secs $t0 $t1) s"
    sleep 5
    echo "$kind after $revs revs/key: $(rss $PID) du $(du -sm "$dir" | cut -f1) MB"
  fi
  t0=$(date +%s.%N)
  if [ -n "${SNAP_STREAM:-}" ]; then
    # The Snapshot stream read to its end and thrown away (no second copy of
    # the data on disk): an empty SnapshotRequest, gRPC-framed.
    printf '\x00\x00\x00\x00\x00' > "$dir.req"
    local bytes
    bytes=$(curl -s --http2-prior-knowledge -H 'content-type: application/grpc' -H 'te: trailers' \
      --data-binary @"$dir.req" -o /dev/null -w '%{size_download}' \
      "http://127.0.0.1:$cp/etcdserverpb.Maintenance/Snapshot")
    t1=$(date +%s.%N)
    echo "$kind snapshot stream read to the end: $(secs $t0 $t1) s, $((bytes / 1000000)) MB"
    rm -f "$dir.req"
  else
    etcdctl --endpoints 127.0.0.1:$cp --command-timeout=600s snapshot save "$dir.snap" > /dev/null
    t1=$(date +%s.%N)
    echo "$kind snapshot save: $(secs $t0 $t1) s, $(du -sm "$dir.snap" | cut -f1) MB"
    rm -f "$dir.snap"
  fi
  stop $PID
  t0=$(date +%s.%N); start "$kind" "$dir" $cp $pp || return 1; t1=$(date +%s.%N)
  echo "$kind restart to first linearizable get: $(secs $t0 $t1) s; idle RSS: $(rss $PID)"
  # etcdctl 3.4 has no --count-only; a Range's count is the whole range's.
  echo "$kind count after restart: $(etcdctl --endpoints 127.0.0.1:$cp --command-timeout=300s \
    get k/ k0 --limit 1 -w fields | grep '"Count"')"
  stop $PID
  rm -rf "$dir"
}

flood() {
  local kind=$1 n=${2:-50}
  shift 2 2> /dev/null || shift $#
  local dir=$OUT/flood-$kind cp=$((20000 + RANDOM % 20000))
  local pp=$((cp + 1)) t0 t1 peak=0 r pids=()
  rm -rf "$dir"
  start "$kind" "$dir" $cp $pp "$@" || return 1
  "$BENCH" put --endpoints 127.0.0.1:$cp --prefix r/ --key-size 16 --val-size 1024 \
    --key-space 100000 --total 100000 --sequential-keys --clients 32 --conns 4 \
    --no-progress --duration 600 | grep -E '^put '
  echo "$kind before: $(rss $PID)"
  # A Range of r/ .. r0, gRPC-framed (5-byte prefix, then the message).
  printf '\x00\x00\x00\x00\x08\x0a\x02r/\x12\x02r0' > "$dir.req"
  t0=$(date +%s.%N)
  for i in $(seq 1 "$n"); do
    curl -s --http2-prior-knowledge -H 'content-type: application/grpc' -H 'te: trailers' \
      --data-binary @"$dir.req" -D "$dir.h$i" -o /dev/null -w '%{size_download}\n' \
      "http://127.0.0.1:$cp/etcdserverpb.KV/Range" > "$dir.s$i" 2>&1 &
    pids+=($!)
  done
  running() { local p; for p in "${pids[@]}"; do kill -0 "$p" 2> /dev/null && return 0; done; return 1; }
  while running; do
    r=$(awk '/VmRSS/{print $2}' "/proc/$PID/status")
    [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.1
  done
  t1=$(date +%s.%N)
  echo "$kind flood of $n: $(secs $t0 $t1) s; peak sampled VmRSS $peak KiB; after: $(rss $PID)"
  echo "bytes received: $(cat "$dir".s* | sort | uniq -c | tr '\n' ' ')"
  echo "statuses: $(cat "$dir".h* | grep -ai '^grpc-status' | tr -d '\r' | sort | uniq -c | tr '\n' ' ')"
  echo "messages: $(cat "$dir".h* | grep -ai '^grpc-message' | tr -d '\r' | sort | uniq -c | tr '\n' ' ')"
  stop $PID
  rm -rf "$dir" "$dir".h* "$dir".s* "$dir.req"
}

# The revision in a Range's header, JSON from etcdctl: ENDPOINT [etcdctl flags].
revision() {
  local ep=$1
  shift
  etcdctl --endpoints "$ep" --command-timeout=2s get x "$@" -w json 2> /dev/null |
    grep -o '"revision":[0-9]*' | head -1 | cut -d: -f2
}

catchup() {
  local kind=$1 val=$2 keys=$3
  local dir=$OUT/cu-$kind cp=$((20000 + RANDOM % 20000))
  local pp=$((cp + 1)) cp2=$((cp + 2)) pp2=$((cp + 3)) t0 t1 rev r first
  rm -rf "$dir" "$dir-2"
  start "$kind" "$dir" $cp $pp || return 1
  first=$PID
  t0=$(date +%s.%N)
  load $cp "$val" "$keys" "$keys"
  t1=$(date +%s.%N)
  rev=$(revision 127.0.0.1:$cp)
  echo "$kind load of $keys x $val B: $(secs $t0 $t1) s; revision $rev; du $(du -sm "$dir" | cut -f1) MB"
  etcdctl --endpoints 127.0.0.1:$cp member add n --peer-urls "http://127.0.0.1:$pp2" > /dev/null || return 1
  t0=$(date +%s.%N)
  spawn "$kind" n "$dir-2" $cp2 $pp2 "m=http://127.0.0.1:$pp,n=http://127.0.0.1:$pp2" \
    --initial-cluster-state existing
  for _ in $(seq 1 60000); do
    r=$(revision 127.0.0.1:$cp2 --consistency=s)
    [ -n "$r" ] && [ "$r" -ge "$rev" ] && break
    sleep 0.05
  done
  t1=$(date +%s.%N)
  echo "$kind catch-up of the added member to revision $r: $(secs $t0 $t1) s; its du $(du -sm "$dir-2" | cut -f1) MB; its RSS: $(rss $PID)"
  echo "$kind count on the added member: $(etcdctl --endpoints 127.0.0.1:$cp2 --command-timeout=300s \
    get k/ k0 --limit 1 --consistency=s -w fields | grep '"Count"')"
  stop $PID
  stop $first
  rm -rf "$dir" "$dir-2"
}

case "${1:-}" in
  mem) shift; mem "$@" ;;
  catchup) shift; catchup "$@" ;;
  flood) shift; flood "$@" ;;
  *) sed -n '2,22p' "$0"; exit 2 ;;
esac
