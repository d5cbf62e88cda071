#!/usr/bin/env bash
# Hostile filters next to ordinary traffic (issue 21, item 6): one client sends ordinary
# vector queries one after another while 64 concurrent clients send query batches whose
# filters carry the largest `$in` accepted (4,096 values) and others send a `$in` of a
# million values (refused with 400/413 before any work), and a writer keeps upserting.
# Prints the ordinary client's p50/p99 idle and under that load, and what the hostile
# requests got.
# Usage: scripts/bench-big-filters.sh WORKER_BIN [DOCUMENTS] [SECONDS]
set -euo pipefail

worker_bin=$(realpath "$1")
documents=${2:-2000}
seconds=${3:-20}
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

port=$(free_port)
mport=$(free_port)
url="http://127.0.0.1:$port"
"$worker_bin" serve --open --data-dir "$dir/data" --model "$model_dir" --device cpu \
    --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" > "$dir/worker.log" 2>&1 &
pids+=($!)
wait_ready "$url" "$dir/worker.log"

python3 - "$url" "$documents" "$seconds" <<'PY'
import json, random, sys, threading, time, urllib.request, urllib.error
url, documents, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
dim = 384
rng = random.Random(7)

def post(path, body, timeout=60):
    data = json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"content-type": "application/json"})
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    return status, (time.perf_counter() - t) * 1000

def vector():
    v = [rng.uniform(-1, 1) for _ in range(dim)]
    n = sum(x * x for x in v) ** 0.5
    return [x / n for x in v]

for start in range(0, documents, 200):
    docs = [{"id": f"d{i}", "text": f"document {i}", "vector": vector(), "metadata": {"team": f"t{i % 50}", "n": i}}
            for i in range(start, min(documents, start + 200))]
    assert post("/v1/collections/c/documents", {"documents": docs})[0] == 200

def ordinary(n):
    lat = []
    for _ in range(n):
        status, ms = post("/v1/collections/c/query", {"vector": vector(), "top_k": 10})
        assert status == 200, status
        lat.append(ms)
    lat.sort()
    return {"p50_ms": round(lat[len(lat) // 2], 2), "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 2), "requests": n}

print(json.dumps({"bench": "big-filters", "phase": "idle", **ordinary(300)}))

stop = time.time() + seconds
results = {"big_in": [], "million_in": [], "writes": []}
lock = threading.Lock()
big_in = {"team": {"$in": [f"x{i}" for i in range(4095)] + ["t3"]}}
million = json.dumps({"queries": [{"vector": [0.0] * dim, "filter": {"team": {"$in": list(range(1_000_000))}}}]})

def hostile():
    while time.time() < stop:
        status, ms = post("/v1/collections/c/query/batch", {"queries": [{"vector": vector(), "top_k": 10, "filter": big_in} for _ in range(8)]})
        with lock:
            results["big_in"].append((status, ms))

def huge():
    while time.time() < stop:
        req = urllib.request.Request(url + "/v1/collections/c/query/batch", data=million.encode(), headers={"content-type": "application/json"})
        t = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status = r.status
        except urllib.error.HTTPError as e:
            status = e.code
        with lock:
            results["million_in"].append((status, (time.perf_counter() - t) * 1000))

def writer():
    i = 0
    while time.time() < stop:
        status, ms = post("/v1/collections/c/documents", {"documents": [{"id": f"w{i}", "text": "w", "vector": vector(), "metadata": {"team": "t1"}}]})
        with lock:
            results["writes"].append((status, ms))
        i += 1

threads = [threading.Thread(target=hostile) for _ in range(60)]
threads += [threading.Thread(target=huge) for _ in range(4)]
threads += [threading.Thread(target=writer)]
for t in threads:
    t.start()
time.sleep(1)
loaded = ordinary(300)
print(json.dumps({"bench": "big-filters", "phase": "64 hostile clients + writer", **loaded}))
for t in threads:
    t.join()
for name, rs in results.items():
    statuses = {}
    for s, _ in rs:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    lat = sorted(ms for _, ms in rs)
    print(json.dumps({"bench": "big-filters", "requests": name, "count": len(rs), "statuses": statuses,
                      "p50_ms": round(lat[len(lat) // 2], 2) if lat else None,
                      "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 2) if lat else None}))
PY
