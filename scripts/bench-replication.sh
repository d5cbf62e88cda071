#!/usr/bin/env bash
# Replicated-mode benchmarks on one machine: a real redis-server (AOF, fsync always, as the
# operator's managed Redis) and real kb-worker processes on loopback. Prints one JSON object
# per line:
#   1. replication delay and lag while one worker takes CHUNKS documents with vectors
#   2. bootstrap of a new replica with an empty volume from a peer holding CHUNKS chunks
#   3. query throughput through 1 worker and round-robin through 3 (same machine, same CPU)
#   4. cache latency: misses and L1 hits on one worker, L2 hits on another
#
# Usage: scripts/bench-replication.sh WORKER_BIN [CHUNKS] [CORPUS]
set -euo pipefail

worker_bin=$(realpath "$1")
chunks=${2:-100000}
corpus=$(realpath "${3:-../shared/data/corpus.jsonl}")
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

redis_port=$(free_port)
mkdir -p "$dir/redis"
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir/redis" \
    --appendonly yes --appendfsync always --save "" >/dev/null &
pids+=($!)

# start_worker NAME EXTRA_CONFIG: starts a worker, waits until ready, prints its URL.
start_worker() {
    local name=$1 extra=${2:-} port mport
    port=$(free_port)
    mport=$(free_port)
    printf 'redis:\n  url: redis://127.0.0.1:%s\n  key_prefix: kb:bench\nreplication:\n  max_ready_lag: 0\n  wait_timeout_ms: 60000\n%s' \
        "$redis_port" "$extra" >"$dir/$name.yaml"
    "$worker_bin" serve --config "$dir/$name.yaml" --data-dir "$dir/$name" --model "$model_dir" \
        --device cpu --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" --open \
        >"$dir/$name.log" 2>&1 &
    pids+=($!)
    local deadline=$((SECONDS + 600))
    until curl -fs -o /dev/null "http://127.0.0.1:$port/readyz"; do
        if ((SECONDS >= deadline)); then
            echo "worker $name not ready; log:" >&2
            tail -n 20 "$dir/$name.log" >&2
            exit 1
        fi
        sleep 0.05
    done
    echo "http://127.0.0.1:$port"
}

seconds_since() { python3 -c "import sys; print(round($(date +%s.%N) - $1, 3))"; }
t0=$(date +%s.%N)
a=$(start_worker a)
echo "{\"bench\":\"startup_empty\",\"seconds_to_ready\":$(seconds_since "$t0")}"
b=$(start_worker b)
c=$(start_worker c)

# 1. Sustained ingestion through a; b and c tail the stream.
"$worker_bin" bench replication --writer "$a" --readers "$a,$b,$c" --chunks "$chunks" \
    --batch 100 --concurrency 2

# 2. A fourth replica with an empty volume bootstraps from a peer's snapshot.
t0=$(date +%s.%N)
# (extra lines land inside the `replication:` block of the config)
d=$(start_worker d "  peers: [\"$b\"]")
echo "{\"bench\":\"bootstrap\",\"chunks\":$chunks,\"seconds_to_ready\":$(seconds_since "$t0")}"
applied() { curl -fs "$1/readyz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["applied_sequence"])'; }
echo "{\"bench\":\"bootstrap_check\",\"applied_d\":$(applied "$d"),\"applied_b\":$(applied "$b")}"

# 3. Query capacity: random vectors (all cache misses), 1 worker vs 3 round-robin.
"$worker_bin" bench query --url "$a" --requests 400 --distinct 400 --concurrency 16 --seed 1
"$worker_bin" bench query --url "$a,$b,$c" --requests 400 --distinct 400 --concurrency 16 --seed 2

# 4. Cache: text queries on a twice (misses, then L1 hits); the same texts on b (L2 hits).
"$worker_bin" bench query --url "$a" --texts "$corpus" --distinct 50 --requests 50 --concurrency 1 --collection bench
"$worker_bin" bench query --url "$a" --texts "$corpus" --distinct 50 --requests 500 --concurrency 1 --collection bench
"$worker_bin" bench query --url "$b" --texts "$corpus" --distinct 50 --requests 50 --concurrency 1 --collection bench
