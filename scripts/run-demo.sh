#!/usr/bin/env bash
# The body of `make run`: start a local worker, ingest examples/docs, ask one question,
# print the answer and stop the worker again.
#
# Usage: scripts/run-demo.sh WORKER_BIN LISTEN RUN_DIR
#   WORKER_BIN  path to the kb-worker binary
#   LISTEN      loopback address for the API, e.g. 127.0.0.1:8080
#   RUN_DIR     scratch directory: data/ and worker.log go here
set -euo pipefail

if [[ $# -ne 3 ]]; then
    echo "usage: $0 WORKER_BIN LISTEN RUN_DIR" >&2
    exit 2
fi
worker_bin=$1
listen=$2
run_dir=$3
url="http://$listen"
ready_timeout_s=120

cd "$(dirname "$0")/.."
model_dir=$(scripts/model-dir.sh)
mkdir -p "$run_dir"
log="$run_dir/worker.log"

"$worker_bin" serve \
    --data-dir "$run_dir/data" \
    --model "$model_dir" \
    --listen "$listen" \
    --metrics-listen 127.0.0.1:9090 \
    --open >"$log" 2>&1 &
worker_pid=$!

stop_worker() {
    if kill -0 "$worker_pid" 2>/dev/null; then
        kill "$worker_pid"
        wait "$worker_pid" 2>/dev/null || true
    fi
}
trap stop_worker EXIT

echo "waiting for the worker on $url (log: $log)"
deadline=$((SECONDS + ready_timeout_s))
until curl -fs -o /dev/null "$url/readyz"; do
    if ! kill -0 "$worker_pid" 2>/dev/null; then
        echo "the worker exited; last lines of $log:" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
    if ((SECONDS >= deadline)); then
        echo "the worker was not ready after ${ready_timeout_s}s; last lines of $log:" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
    sleep 1
done

# The resume state lives with the data it describes, not in examples/ (a fresh RUN_DIR
# must ingest everything again).
"$worker_bin" ingest examples/docs --url "$url" --collection docs \
    --state "$run_dir/ingest-state.json"
echo
echo 'query: "how are documents chunked?"'
"$worker_bin" query "how are documents chunked?" --url "$url" --collection docs --top-k 3
echo
echo 'hybrid query (embeddings and BM25, fused): "max_tokens"'
"$worker_bin" query "max_tokens" --mode hybrid --url "$url" --collection docs --top-k 3
