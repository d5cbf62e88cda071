#!/usr/bin/env bash
# GPU benchmarks of the worker's CUDA path, for a lent CUDA machine (the `device` tool) or
# any node with an NVIDIA GPU and torch 2.11.0 (CUDA build) in `python3`.
#
# Build here, carry the binary and the model, run there:
#   make build && mkdir -p .run/gpu && cp "$CARGO_TARGET_DIR/release/kb-worker" .run/gpu/ \
#     && cp -r "$(scripts/model-dir.sh)" .run/gpu/model
#   (device tool, carry [".run/gpu"]) scripts/bench-gpu.sh .run/gpu/kb-worker .run/gpu/model \
#     ../shared/data/corpus.jsonl "$OUT"
#
# Prints one JSON object per line (also appended to OUT_DIR/bench.jsonl): embedding
# throughput in fp16 (raw text -> normalised vectors, tokenization included), then exact
# top-10 search over 1M and 10M x 384 vectors for 1 and 1,024 queries. Every search run
# checks its hits against an f64 brute force (recall must be 1.0 or the command fails);
# each bench warms up first and reports medians.
set -euo pipefail

if [[ $# -lt 3 ]]; then
    echo "usage: $0 KB_WORKER_BIN MODEL_DIR CORPUS [OUT_DIR]" >&2
    exit 2
fi
bin=$1
model=$2
corpus=$3
out=${4:-.}
mkdir -p "$out"

# The binary's rpath points at the build machine's virtualenv; use this machine's torch.
torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt" >&2
"$bin" devices | tee -a "$out/bench.jsonl"

run() {
    echo "+ kb-worker $*" >&2
    "$bin" "$@" | tee -a "$out/bench.jsonl"
}

# Embedding: the corpus end to end, fp16, large token budgets, several requests in flight
# so tokenization overlaps the GPU.
run bench embed --model "$model" --corpus "$corpus" --device cuda --precision fp16 \
    --limit 100000 --batch-texts 4096 --concurrency 4 --max-batch-tokens 262144

# Exact search, vectors resident on the GPU (`cuda:0,0`: the sharded multi-GPU path with
# two shards on one GPU; on a multi-GPU node list the GPUs, e.g. `cuda:0,1`).
for spec in "1000000 1 200" "1000000 1024 50" "10000000 1024 20"; do
    read -r rows queries iterations <<<"$spec"
    for precision in fp16 fp32; do
        run bench search --device cuda --precision "$precision" --rows "$rows" --dim 384 \
            --queries "$queries" --top-k 10 --iterations "$iterations"
    done
done
run bench search --device cuda:0,0 --rows 1000000 --dim 384 --queries 1024 --top-k 10 --iterations 50
