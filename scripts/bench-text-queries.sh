#!/usr/bin/env bash
# Text-query throughput and latency at CLIENTS concurrent clients: kb-worker (cache off, so
# every query is embedded and searched) against a FastAPI + ChromaDB + sentence-transformers
# service (scripts/bench-peer/chroma_service.py), same model, same DOCS passages, same
# queries, same client (`kb-worker bench query`), one after the other in the same run.
# For kb-worker it also prints the stage breakdown and the embedding batches the queries
# made (texts per batch, real and padded tokens). SKIP_PEER=1 leaves the peer's queries
# out (to compare two kb-worker builds run after one another).
#
# Usage: scripts/bench-text-queries.sh WORKER_BIN [CORPUS] [CLIENTS] [REQUESTS]
set -euo pipefail

worker_bin=$(realpath "$1")
corpus=$(realpath "${2:-../shared/data/corpus.jsonl}")
clients=${3:-16}
requests=${4:-1000}
docs=${DOCS:-1000}
cd "$(dirname "$0")/.."
root=$(pwd)
project_venv=${VIRTUAL_ENV:-$root/.venv}
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
venv=$(peer_venv "$project_venv")

python3 - "$corpus" "$dir" "$docs" "$requests" <<'PY'
import json, os, sys
corpus, out, docs, requests = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
lines = [json.loads(l) for l in open(corpus)]
os.makedirs(f"{out}/docs")
for i, p in enumerate(lines[:docs]):
    with open(f"{out}/docs/{i:06}.txt", "w") as f:
        f.write(p["text"])
with open(f"{out}/queries.jsonl", "w") as f:
    for p in lines[-requests:]:
        f.write(json.dumps({"text": p["text"]}) + "\n")
PY

query() {
    "$worker_bin" bench query --url "$1" --collection q --texts "$dir/queries.jsonl" \
        --concurrency "$clients" --requests "$requests" --distinct "$requests"
}

# kb-worker
port=$(free_port)
mport=$(free_port)
printf 'cache:\n  enabled: false\n' >"$dir/worker.yaml"
"$worker_bin" serve --config "$dir/worker.yaml" --data-dir "$dir/data" --model "$model_dir" \
    --device cpu --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" --open \
    >"$dir/worker.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$port" "$dir/worker.log"
"$worker_bin" ingest "$dir/docs" --url "http://127.0.0.1:$port" --collection q >/dev/null
echo '{"service": "kb-worker"}'
curl -fs "http://127.0.0.1:$mport/metrics" >"$dir/stages.before"
query "http://127.0.0.1:$port"
stage_breakdown "http://127.0.0.1:$mport" "$dir/stages.before" "queries"
embed_batches "http://127.0.0.1:$mport" "$dir/stages.before" "queries"
kill "${pids[-1]}"

if [ -n "${SKIP_PEER:-}" ]; then
    exit 0
fi

# FastAPI + ChromaDB + sentence-transformers
peer=$(free_port)
(cd scripts/bench-peer && KB_MODEL_DIR="$model_dir" CORPUS="$corpus" DOCS="$docs" \
    "$venv/bin/uvicorn" chroma_service:app --host 127.0.0.1 --port "$peer" --log-level warning) \
    >"$dir/peer.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$peer" "$dir/peer.log"
echo '{"service": "fastapi+chromadb+sentence-transformers"}'
query "http://127.0.0.1:$peer"
