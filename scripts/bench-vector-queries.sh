#!/usr/bin/env bash
# Served vector-query throughput: one worker (file WAL, cache off, CPU) holding CHUNKS
# random 384-dimensional vectors answers REQUESTS distinct random-vector queries from
# CLIENTS concurrent clients, once per `index.cpu_screen` setting (none, then bf16), each
# measured twice. One JSON line per measurement, tagged with the setting.
#
# Usage: scripts/bench-vector-queries.sh WORKER_BIN [CHUNKS] [CLIENTS] [REQUESTS]
set -euo pipefail

worker_bin=$(realpath "$1")
chunks=${2:-100000}
clients=${3:-16}
requests=${4:-1600}
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

for screen in none bf16; do
    port=$(free_port)
    printf 'cache:\n  enabled: false\nindex:\n  cpu_screen: %s\n' "$screen" >"$dir/$screen.yaml"
    "$worker_bin" serve --config "$dir/$screen.yaml" --data-dir "$dir/$screen" \
        --model "$model_dir" --device cpu --listen "127.0.0.1:$port" \
        --metrics-listen "127.0.0.1:$(free_port)" --open >"$dir/$screen.log" 2>&1 &
    pids+=($!)
    wait_ready "http://127.0.0.1:$port" "$dir/$screen.log"
    # Fills the collection (the writer is also the only reader).
    "$worker_bin" bench replication --writer "http://127.0.0.1:$port" \
        --readers "http://127.0.0.1:$port" --chunks "$chunks" --batch 500 --concurrency 2 >/dev/null
    for seed in 1 2; do
        echo "{\"cpu_screen\":\"$screen\"}"
        "$worker_bin" bench query --url "http://127.0.0.1:$port" --requests "$requests" \
            --distinct "$requests" --concurrency "$clients" --seed "$seed"
    done
    kill "${pids[-1]}"
done
