#!/bin/bash
# Put latency, second by second, around `compaction --physical` and the
# automatic rewrite that follows it (docs/storage.md, "Where the stalls came
# from"). One member on free loopback ports, in a temp dir removed at the end.
#   benches/compaction_latency.sh LABEL
# Env: BIN (dir with cairn and cairn-bench; default target/debug), TOTAL and
# KEYS (the fill: 60000 puts over 20000 keys), DUR (seconds of puts, 25).
set -u
BIN=${BIN:-$(dirname "$0")/../target/debug}
L=$1
D=$(mktemp -d /tmp/cairn-measure-XXXX)
CP=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
PP=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
$BIN/cairn --name m --data-dir $D/data --listen-client-urls http://127.0.0.1:$CP --advertise-client-urls http://127.0.0.1:$CP \
  --listen-peer-urls http://127.0.0.1:$PP --initial-advertise-peer-urls http://127.0.0.1:$PP --initial-cluster m=http://127.0.0.1:$PP > $D/log 2>&1 &
PID=$!
export ETCDCTL_API=3
E="--endpoints=127.0.0.1:$CP --command-timeout=600s"
for i in $(seq 100); do etcdctl $E endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
$BIN/cairn-bench put --endpoints 127.0.0.1:$CP --clients 16 --conns 4 --total ${TOTAL:-60000} --key-space ${KEYS:-20000} --sequential-keys --no-progress --json > $D/fill.json
etcdctl $E del bench/ --prefix > /dev/null
$BIN/cairn-bench put --endpoints 127.0.0.1:$CP --prefix other/ --key-space 20000 --clients 8 --duration 10 --no-progress --json > $D/alone.json
REV=$(etcdctl $E endpoint status -w json | python3 -c 'import json,sys;print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])')
du -sk $D/data/member/state* | tr '\n' ' '; echo
( for i in $(seq ${DUR:-25}); do echo "$(date +%T.%N | cut -c1-12) $($BIN/cairn-bench put --endpoints 127.0.0.1:$CP --prefix other/ --key-space 20000 --clients 8 --duration 1 --no-progress --json | python3 -c 'import json,sys;d=json.load(sys.stdin);l=d["latency_ms"];print(d["ops"],l["p99"],l["max"])')"; done > $D/series ) &
BP=$!
sleep 3
echo "compaction starts $(date +%T.%N)"; T0=$(date +%s.%N); etcdctl $E compaction --physical $REV; T1=$(date +%s.%N)
echo "compaction took $(python3 -c "print(round($T1-$T0,2))") s"
wait $BP
du -sk $D/data/member/state* | tr '\n' ' '; echo
cat $D/series
for f in alone; do echo "$L $f: $(python3 -c "
import json;d=json.load(open('$D/$f.json'));print({k:d[k] for k in d if k not in ('errors_by_kind',)})")"; done
grep -E "defragmented|compaction" $D/log | cut -c1-400
kill $PID; wait $PID 2>/dev/null
rm -rf $D
