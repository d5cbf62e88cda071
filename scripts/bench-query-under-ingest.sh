#!/usr/bin/env bash
# Text-query latency while a bulk ingest runs, against the same queries on an idle worker
# (issue 10's benchmark). One worker (--open, cache off so every query is embedded),
# a query collection of QUERY_DOCS passages, then:
#   1. idle:       CLIENTS concurrent clients, REQUESTS text queries
#   2. under load: the same while `kb-worker ingest` sends PASSAGES other passages
# Prints one JSON object per line (bench query records, then the ingest's duration).
#
# Usage: scripts/bench-query-under-ingest.sh WORKER_BIN [CORPUS] [PASSAGES] [CLIENTS]
# (REQUESTS, QUERY_DOCS and BATCH_DOCS, the documents per ingest request, from the
# environment)
set -euo pipefail

worker_bin=$(realpath "$1")
corpus=$(realpath "${2:-../shared/data/corpus.jsonl}")
passages=${3:-20000}
clients=${4:-8}
requests=${REQUESTS:-400}
query_docs=${QUERY_DOCS:-1000}
batch_docs=${BATCH_DOCS:-64}
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

# Passages as .txt files (what `kb-worker ingest` reads), and query texts as JSONL.
python3 - "$corpus" "$dir" "$query_docs" "$passages" "$requests" <<'PY'
import json, os, sys
corpus, out, query_docs, passages, requests = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
lines = [json.loads(l) for l in open(corpus)]
assert len(lines) >= query_docs + passages + requests, "corpus too small"
for name, part in (("query-docs", lines[:query_docs]), ("bulk", lines[query_docs:query_docs + passages])):
    os.makedirs(f"{out}/{name}")
    for i, p in enumerate(part):
        with open(f"{out}/{name}/{i:06}.txt", "w") as f:
            f.write(p["text"])
with open(f"{out}/queries.jsonl", "w") as f:
    for p in lines[-requests:]:
        f.write(json.dumps({"text": p["text"]}) + "\n")
PY

port=$(free_port)
mport=$(free_port)
url="http://127.0.0.1:$port"
printf 'cache:\n  enabled: false\n' >"$dir/worker.yaml"
"$worker_bin" serve --config "$dir/worker.yaml" --data-dir "$dir/data" --model "$model_dir" \
    --device cpu --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" --open \
    >"$dir/worker.log" 2>&1 &
pids+=($!)
wait_ready "$url" "$dir/worker.log"

"$worker_bin" ingest "$dir/query-docs" --url "$url" --collection q >/dev/null
query() {
    "$worker_bin" bench query --url "$url" --collection q --texts "$dir/queries.jsonl" \
        --concurrency "$clients" --requests "$requests" --distinct "$requests"
}
echo "{\"phase\": \"idle\"}"
query

t0=$(date +%s.%N)
"$worker_bin" ingest "$dir/bulk" --url "$url" --collection bulk --batch-docs "$batch_docs" >"$dir/ingest.log" 2>&1 &
ingest=$!
pids+=($ingest)
# Let the ingest reach its steady state before measuring.
until [ "$(curl -fs "$url/v1/collections/bulk" | python3 -c 'import json,sys; print(json.load(sys.stdin)["documents"])' 2>/dev/null || echo 0)" -gt 200 ]; do
    sleep 0.5
done
echo "{\"phase\": \"during ingest\"}"
curl -fs "http://127.0.0.1:$mport/metrics" > "$dir/stages.before"
# Probe latency while the worker ingests and answers queries: /readyz and /metrics every
# 50 ms until the queries end.
python3 - "$url" "http://127.0.0.1:$mport" "$dir/probe.stop" <<'PY' &
import json, os, sys, time, urllib.request
api, metrics, stop = sys.argv[1:]
lat = {"readyz": [], "metrics": []}
while not os.path.exists(stop):
    for name, u in (("readyz", api + "/readyz"), ("metrics", metrics + "/metrics")):
        t = time.perf_counter()
        urllib.request.urlopen(u, timeout=10).read()
        lat[name].append((time.perf_counter() - t) * 1000)
    time.sleep(0.05)
for name, v in lat.items():
    v.sort()
    print(json.dumps({"bench": "probe", "route": name, "samples": len(v), "p50_ms": round(v[len(v) // 2], 3), "p99_ms": round(v[int(len(v) * 0.99) - 1], 3), "max_ms": round(v[-1], 3)}))
PY
prober=$!
query
touch "$dir/probe.stop"
wait "$prober"
docs_at_end=$(curl -fs "$url/v1/collections/bulk" | python3 -c 'import json,sys; print(json.load(sys.stdin)["documents"])')
wait "$ingest"
t1=$(date +%s.%N)
python3 -c "print('{\"bench\": \"ingest\", \"passages\": $passages, \"seconds\": %.1f, \"documents_when_queries_ended\": $docs_at_end, \"passages_per_s\": %.1f}' % ($t1 - $t0, $passages / ($t1 - $t0)))"
curl -fs "http://127.0.0.1:$mport/metrics" | grep -E '^kb_worker_(embed_rejected|http_requests_total\{.*status="(429|503)")' || true
# Where the time went during the ingest phase, per stage (kb_worker_stage_seconds, less
# what it held when the phase began; quantiles are bucket upper bounds).
stage_breakdown "http://127.0.0.1:$mport" "$dir/stages.before" "during ingest"
