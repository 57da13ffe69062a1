#!/bin/bash
# Space and latency around `compaction --physical`, on cairn or etcd
# (docs/storage.md, "Session 7: compaction on fjall"). One member on free
# loopback ports, data in a temp dir removed at the end.
#
#   benches/compaction_space.sh cairn|etcd WORKLOAD [extra server flags...]
#
# WORKLOAD:
#   delete   300,000 puts of 256 B over 100,000 keys, delete every key,
#            compaction --physical; the state dir over the next minute.
#   history  KEYS keys (default 200000) × REVS revisions (default 5) of 1 KiB
#            values, then compaction of all but the last revision, with
#            puts and ranges running (4 clients each, --timeline: per-second
#            p99 / max on stderr) from 12 s before it until 60 s after it
#            returned and, on cairn, until 10 s after the engine's major
#            compaction that follows a large pass ended (the server logs
#            "state store compacted"; SETTLE_MAX seconds at most, default 600).
#            KEYS=1000000 is the issue's full workload (about 5 GB of values
#            written; etcd's WAL and bolt file need 12 GB or more).
#
# Env: BIN (dir with cairn and cairn-bench; default target/release), ETCD
# (default /usr/bin/etcd), OUT (dir to keep the logs and timelines in;
# default: printed and removed), FILL_CAP (seconds the fill may take at
# most; default 300).
set -u
KIND=$1
WORKLOAD=$2
shift 2
BIN=${BIN:-$(dirname "$0")/../target/release}
ETCD=${ETCD:-/usr/bin/etcd}
D=$(mktemp -d /tmp/cairn-space-XXXX)
OUT=${OUT:-$D/out}
mkdir -p "$OUT"
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
CP=$(port)
PP=$(port)
SERVER_BIN=$BIN/cairn
[ "$KIND" = etcd ] && SERVER_BIN=$ETCD
# STRACE=FILE: run the server under strace, logging its fsyncs, renames and
# unlinks with their durations (only those stop the process: seccomp-bpf).
TRACE=()
[ -n "${STRACE:-}" ] && TRACE=(strace -f --seccomp-bpf -T -tt -e trace=fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat -o "$STRACE")
"${TRACE[@]}" "$SERVER_BIN" --name m --data-dir "$D/data" --listen-client-urls "http://127.0.0.1:$CP" \
  --advertise-client-urls "http://127.0.0.1:$CP" --listen-peer-urls "http://127.0.0.1:$PP" \
  --initial-advertise-peer-urls "http://127.0.0.1:$PP" --initial-cluster "m=http://127.0.0.1:$PP" \
  --quota-backend-bytes 17179869184 "$@" > "$OUT/server.log" 2>&1 &
PID=$!
export ETCDCTL_API=3
E="--endpoints=127.0.0.1:$CP --command-timeout=600s"
for _ in $(seq 100); do etcdctl $E endpoint health > /dev/null 2>&1 && break; sleep 0.2; done
state() {
  if [ "$KIND" = etcd ]; then du -sk "$D/data/member/snap" | cut -f1; else du -skc "$D"/data/member/state* | tail -1 | cut -f1; fi
}
status() { etcdctl $E endpoint status -w json | python3 -c 'import json,sys;s=json.load(sys.stdin)[0]["Status"];print(s["header"]["revision"], s["dbSize"])'; }
now() { date +%s.%N | cut -c1-14; }
bench() { "$BIN/cairn-bench" "$@" --endpoints "127.0.0.1:$CP" --no-progress --json; }
summary() { python3 -c 'import json,sys;d=json.load(sys.stdin);l=d["latency_ms"];print("{} ops {:.0f}/s p50 {} p99 {} max {} errors {}".format(d["ops"],d["throughput"],l["p50"],l["p99"],l["max"],d["errors"]))'; }

case $WORKLOAD in
delete)
  T=$(now)
  bench put --clients 32 --conns 4 --total 300000 --key-space 100000 --sequential-keys | summary
  echo "fill: $(python3 -c "print(round($(now)-$T,1))") s; state $(state) KiB; rev dbSize $(status)"
  etcdctl $E del bench/ --prefix > /dev/null
  read -r REV _ <<< "$(status)"
  echo "after delete: state $(state) KiB"
  ;;
history)
  KEYS=${KEYS:-200000}
  REVS=${REVS:-5}
  T=$(now)
  bench put --clients 32 --conns 4 --total $((KEYS * REVS)) --duration "${FILL_CAP:-300}" --key-space "$KEYS" --sequential-keys --val-size 1024 | summary
  echo "fill ($KEYS keys x $REVS revisions of 1 KiB): $(python3 -c "print(round($(now)-$T,1))") s; state $(state) KiB; rev dbSize $(status)"
  read -r REV _ <<< "$(status)"
  echo "live data: $((KEYS * (16 + 1024) / 1024)) KiB of keys and values"
  # The clients run in rounds of 20 s (cairn-bench prints its timeline at
  # the end) until $D/stop appears.
  : > "$OUT/put.timeline"
  : > "$OUT/range.timeline"
  (while [ ! -e "$D/stop" ]; do
    bench put --clients 4 --prefix other/ --key-space 10000 --duration 20 --timeline 2>> "$OUT/put.timeline" | summary >> "$OUT/put.summary"
  done) &
  P1=$!
  (while [ ! -e "$D/stop" ]; do
    bench range --clients 4 --keys 1000 --val-size 1024 --duration 20 --timeline 2>> "$OUT/range.timeline" | summary >> "$OUT/range.summary"
  done) &
  P2=$!
  # The raft log's fsync histogram (etcd's metric, which cairn exports too)
  # once a second: how many fsyncs took over 32, 64 and 128 ms in each phase.
  (while [ ! -e "$D/stop" ]; do
    echo "$(now) $(curl -s "http://127.0.0.1:$CP/metrics" | grep -E '^etcd_disk_wal_fsync_duration_seconds_(bucket\{le="(0.032|0.064|0.128)"\}|count)' | awk '{print $2}' | tr '\n' ' ')" >> "$OUT/fsync.timeline"
    sleep 1
  done) &
  P3=$!
  sleep 12
  ;;
*)
  echo "unknown workload $WORKLOAD" >&2
  exit 2
  ;;
esac

T0=$(now)
echo "compaction --physical $REV starts at $T0"
etcdctl $E compaction --physical "$REV"
T1=$(now)
echo "compaction returned after $(python3 -c "print(round($T1-$T0,2))") s (at $T1); state $(state) KiB"
for s in 5 10 20 30 45 60; do
  sleep $(python3 -c "print(max(0, $T1+$s-$(now)))")
  echo "  +${s}s: state $(state) KiB"
done
T2=$T1
if [ "$WORKLOAD" = history ]; then
  if [ "$KIND" = cairn ]; then
    # The engine's major compaction after a large pass: its end is logged.
    for _ in $(seq "${SETTLE_MAX:-600}"); do
      grep -q "state store compacted" "$OUT/server.log" && break
      sleep 1
    done
    # Its start and end from the log line (UTC timestamp and durations).
    read -r T2S T2 <<< "$(grep -m1 "state store compacted" "$OUT/server.log" | python3 -c '
import datetime, re, sys
l = sys.stdin.read()
m = re.search(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?)Z", l)
if not m:
    sys.exit()
end = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp()
ms = sum(int(x) for x in re.findall(r"(?:memtable|compaction|sync)_ms=(\d+)", l))
print(round(end - ms / 1000, 2), round(end, 2))')"
    T2=${T2:-$(now)}
    echo "major compaction from $(python3 -c "print(round(${T2S:-$T2}-$T1,1))") to $(python3 -c "print(round($T2-$T1,1))") s after the pass returned: state $(state) KiB"
    sleep $(python3 -c "print(max(0, $T2+10-$(now)))")
  fi
  touch "$D/stop"
  wait $P1 $P2 $P3
  echo "puts (other/, 4 clients, last round): $(tail -1 "$OUT/put.summary")"
  echo "ranges (bench/, 4 clients, last round): $(tail -1 "$OUT/range.summary")"
  python3 - "$OUT" "$T0" "$T1" "$T2" "${T2S:-$T2}" << 'EOF'
import sys
out, t0, t1, t2, t2s = (sys.argv[1], *map(float, sys.argv[2:6]))
for name in ("put", "range"):
    rows = [l.split() for l in open(f"{out}/{name}.timeline") if l.startswith("timeline ")]
    def agg(sel):
        sel = list(sel)
        if not sel:
            return "none"
        return (f"{len(sel)} s, ops/s median {sorted(int(r[3]) for r in sel)[len(sel)//2]}, "
                f"worst p99 {max(float(r[7]) for r in sel)} ms, max {max(float(r[9]) for r in sel)} ms, "
                f"seconds with max > 100 ms: {sum(float(r[9]) > 100 for r in sel)}, errors {sum(int(r[5]) for r in sel)}")
    print(f"{name} before compaction: {agg(r for r in rows if int(r[1]) < int(t0))}")
    print(f"{name} during compaction: {agg(r for r in rows if int(t0) <= int(r[1]) <= int(t1))}")
    print(f"{name} after, to the major compaction's end: {agg(r for r in rows if int(t1) < int(r[1]) <= int(t2))}")
    print(f"{name} after compaction:  {agg(r for r in rows if int(r[1]) > int(t2))}")
    print(f"{name} per second (t - compaction start, ops, p99, max):",
          " ".join(f"{int(r[1]) - int(t0)}:{r[3]}/{r[7]}/{r[9]}" for r in rows))
# Samples: time, cumulative count at or under 32, 64, 128 ms, total count.
samples = [[float(x) for x in l.split()] for l in open(f"{out}/fsync.timeline") if len(l.split()) == 5]
def at(t):
    before = [s for s in samples if s[0] <= t]
    return before[-1] if before else samples[0]
def fsyncs(a, b):
    x, y = at(a), at(b)
    over = lambda i: int((y[4] - y[i]) - (x[4] - x[i]))
    return f"{int(y[4] - x[4])} fsyncs, over 32 ms {over(1)}, over 64 ms {over(2)}, over 128 ms {over(3)}"
if samples:
    print(f"raft log fsyncs before compaction: {fsyncs(samples[0][0], t0)}")
    print(f"raft log fsyncs during compaction: {fsyncs(t0, t1)}")
    print(f"raft log fsyncs after, to the major compaction's end: {fsyncs(t1, t2)}")
    if t2s < t2:
        print(f"raft log fsyncs in the major compaction itself: {fsyncs(t2s, t2)}")
    print(f"raft log fsyncs after compaction: {fsyncs(t2, samples[-1][0])}")
EOF
fi
etcdctl $E endpoint status -w table
# The raft log's fsyncs (etcd's metric, which cairn exports too): put
# stalls on a busy disk show here.
curl -s "http://127.0.0.1:$CP/metrics" | grep -E '^etcd_disk_wal_fsync_duration_seconds_(bucket\{le="(0.008|0.032|0.128|0.512)"\}|count)' | tr '\n' ' '
echo
[ -n "${STRACE:-}" ] && kill "$(pgrep -P "$PID")"
kill "$PID"
wait "$PID" 2> /dev/null
grep -iE "compact|defrag" "$OUT/server.log" | tail -5 | cut -c1-300
rm -rf "$D/data" "$D/stop"
if [ "$OUT" = "$D/out" ]; then rm -rf "$D"; else rmdir "$D"; fi
