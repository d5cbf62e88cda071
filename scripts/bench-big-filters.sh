#!/usr/bin/env bash
# Hostile filters next to ordinary traffic (issue 21, item 6): one client sends ordinary
# vector queries one after another while 64 concurrent clients send query batches whose
# filters carry the largest `$in` accepted (4,096 values) and others send a `$in` of a
# million values (refused with 400/413 before any work), and a writer keeps upserting.
# Prints the ordinary client's p50/p99 idle and under that load, what the hostile
# requests got, and the worker's stage breakdown under the load. The ordinary client is a
# process of its own (in the load's process it would wait for Python's GIL behind 65
# threads), and the hostile bodies are encoded once, so the clients' CPU goes to sending.
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

common=$(cat <<'PY'
import json, random, sys, time, urllib.request, urllib.error
dim = 384
rng = random.Random(7)

def send(url, path, data, timeout=60):
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

def ordinary(url, n, phase):
    lat = []
    for _ in range(n):
        status, ms = send(url, "/v1/collections/c/query", json.dumps({"vector": vector(), "top_k": 10}).encode())
        assert status == 200, status
        lat.append(ms)
    lat.sort()
    print(json.dumps({"bench": "big-filters", "phase": phase, "p50_ms": round(lat[len(lat) // 2], 2),
                      "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 2), "requests": n}), flush=True)
PY
)

python3 - "$url" "$documents" <<PY
$common
url, documents = sys.argv[1], int(sys.argv[2])
for start in range(0, documents, 200):
    docs = [{"id": f"d{i}", "text": f"document {i}", "vector": vector(), "metadata": {"team": f"t{i % 50}", "n": i}}
            for i in range(start, min(documents, start + 200))]
    assert send(url, "/v1/collections/c/documents", json.dumps({"documents": docs}).encode())[0] == 200
ordinary(url, 300, "idle")
PY

python3 - "$url" "$seconds" > "$dir/load.json" <<PY &
$common
import threading
url, seconds = sys.argv[1], float(sys.argv[2])
stop = time.time() + seconds
results = {"big_in": [], "million_in": [], "writes": []}
lock = threading.Lock()
big_in = {"team": {"\$in": [f"x{i}" for i in range(4095)] + ["t3"]}}
batches = [json.dumps({"queries": [{"vector": vector(), "top_k": 10, "filter": big_in} for _ in range(8)]}).encode()
           for _ in range(16)]
million = json.dumps({"queries": [{"vector": [0.0] * dim, "filter": {"team": {"\$in": list(range(1_000_000))}}}]}).encode()

def loop(name, path, bodies):
    i = 0
    while time.time() < stop:
        status, ms = send(url, path, bodies(i))
        with lock:
            results[name].append((status, ms))
        i += 1

def write(i):
    doc = {"id": f"w{i}", "text": "w", "vector": vector(), "metadata": {"team": "t1"}}
    return json.dumps({"documents": [doc]}).encode()

threads = [threading.Thread(target=loop, args=("big_in", "/v1/collections/c/query/batch", lambda i: batches[i % 16]))
           for _ in range(60)]
threads += [threading.Thread(target=loop, args=("million_in", "/v1/collections/c/query/batch", lambda i: million))
            for _ in range(4)]
threads += [threading.Thread(target=loop, args=("writes", "/v1/collections/c/documents", write))]
for t in threads:
    t.start()
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
load=$!
pids+=("$load")
sleep 3
curl -fs "http://127.0.0.1:$mport/metrics" > "$dir/stages.before"
python3 - "$url" <<PY
$common
ordinary(sys.argv[1], 300, "60 hostile batch clients + 4 million-value clients + writer")
PY
stage_breakdown "http://127.0.0.1:$mport" "$dir/stages.before" "under the hostile load"
wait "$load"
cat "$dir/load.json"
