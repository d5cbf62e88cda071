#!/usr/bin/env bash
# Ingestion throughput over HTTP: kb-worker against a FastAPI + ChromaDB +
# sentence-transformers service (scripts/bench-peer/chroma_service.py), same model, same
# DOCS corpus passages, same client (scripts/bench-ingest-client.py: CLIENTS concurrent
# clients, BATCH documents per POST /v1/collections/{c}/documents), one after the other in
# the same run. Each service starts empty; the time runs from the first request to the
# last acknowledgement (kb-worker acknowledges once the documents are embedded and in its
# log; the peer once they are embedded and in Chroma). One JSON line per service.
#
# Usage: [DOCS=2000] [BATCH=64] [CLIENTS=4] scripts/bench-ingest-peer.sh WORKER_BIN [CORPUS]
set -euo pipefail

worker_bin=$(realpath "$1")
corpus=$(realpath "${2:-../shared/data/corpus.jsonl}")
docs=${DOCS:-2000}
batch=${BATCH:-64}
clients=${CLIENTS:-4}
cd "$(dirname "$0")/.."
root=$(pwd)
project_venv=${VIRTUAL_ENV:-$root/.venv}
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
venv=$(peer_venv "$project_venv")

ingest() {
    python3 scripts/bench-ingest-client.py --url "$1" --service "$2" --corpus "$corpus" \
        --docs "$docs" --batch "$batch" --clients "$clients"
}

# kb-worker (defaults: precision and executors measured at start)
port=$(free_port)
"$worker_bin" serve --data-dir "$dir/data" --model "$model_dir" --device cpu \
    --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$(free_port)" --open \
    >"$dir/worker.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$port" "$dir/worker.log"
ingest "http://127.0.0.1:$port" kb-worker
kill "${pids[-1]}"

# FastAPI + ChromaDB + sentence-transformers (DOCS=1: its start-up collection holds one passage)
peer=$(free_port)
(cd scripts/bench-peer && KB_MODEL_DIR="$model_dir" CORPUS="$corpus" DOCS=1 \
    "$venv/bin/uvicorn" chroma_service:app --host 127.0.0.1 --port "$peer" --log-level warning) \
    >"$dir/peer.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$peer" "$dir/peer.log"
ingest "http://127.0.0.1:$peer" fastapi+chromadb+sentence-transformers
