#!/usr/bin/env python3
# Does the size of a bulk writer's fsync burst set the latency of a small
# fdatasync beside it?  Thread A: writes CHUNK bytes to a file, fsyncs, repeats
# (a compaction writing segments).  Thread B: appends 4 KiB + fdatasync every
# 5 ms (the raft log).  Prints B's latency percentiles and max.
# Usage: python3 benches/fsync_burst.py CHUNK_MIB [SECONDS] [DIR]   (docs/storage.md, Session 12)
import os, sys, threading, time
chunk = int(sys.argv[1]) << 20
secs = float(sys.argv[2]) if len(sys.argv) > 2 else 20
d = sys.argv[3] if len(sys.argv) > 3 else "/var/tmp/fsb"
os.makedirs(d, exist_ok=True)
stop = False
written = [0]
def bulk():
    buf = os.urandom(1 << 20)
    n = 0
    while not stop:
        p = f"{d}/seg{n % 8}"
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        left = chunk
        while left > 0 and not stop:
            os.write(fd, buf); left -= len(buf); written[0] += len(buf)
        os.fsync(fd); os.close(fd); n += 1
lat = []
def log():
    fd = os.open(f"{d}/log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    b = os.urandom(4096)
    while not stop:
        t = time.perf_counter(); os.write(fd, b); os.fdatasync(fd); lat.append(time.perf_counter() - t)
        time.sleep(0.005)
    os.close(fd)
ta = threading.Thread(target=bulk); tb = threading.Thread(target=log)
ta.start(); tb.start(); time.sleep(secs); stop = True; ta.join(); tb.join()
lat.sort(); n = len(lat)
print(f"chunk {chunk>>20} MiB: bulk {written[0]/secs/1e6:.0f} MB/s; log n={n} p50 {lat[n//2]*1e3:.1f} p99 {lat[int(n*.99)]*1e3:.1f} max {lat[-1]*1e3:.1f} ms; over 100 ms: {sum(1 for x in lat if x > .1)}")
for name in [f"seg{i}" for i in range(8)] + ["log"]:
    try:
        os.remove(f"{d}/{name}")
    except FileNotFoundError:
        pass
