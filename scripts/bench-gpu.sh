#!/usr/bin/env bash
# GPU benchmarks of the worker's CUDA path with their peers, for a lent CUDA machine (the
# `device` tool) or any node with an NVIDIA GPU and torch 2.11.0 (CUDA build) plus
# sentence-transformers in `python3`.
#
# Pack here (the release binary, the corpus, the model with fp16 weights; under the 64 MiB
# carry limit), run there:
#   make build && scripts/pack-gpu-run.sh
#   scripts/bench-gpu-dry-run.sh      # the same steps on this CPU, small: checks the plumbing
#   (device tool, carry [".run/gpu"], timeout_s 540) scripts/bench-gpu.sh .run/gpu "$OUT"
#
# One run measures, on the same GPU: kb-worker's fp16 embedding of the corpus (raw text ->
# normalised vectors, tokenization included) against sentence-transformers fp16 batch 512;
# the cosine of a running worker's fp16 vectors against sentence-transformers fp32 (fails
# below 0.999); exact top-10 over 1M and 10M x 384 fp16 vectors for 1 and 1,024 queries
# against torch matmul+topk, and the time to read the 1M matrix at the copy bandwidth
# measured in the same run; the time to write and load a 1M-row snapshot on the GPU. kb-worker's searches check their hits against an f64 brute
# force (recall must be 1.0 or the command fails). Every record goes to OUT/bench.jsonl;
# the goal table (scripts/bench-gpu-peers.py table) is printed last and written to
# OUT/table.md, also when a step fails or the run is stopped at its time limit.
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 PACK_DIR [OUT_DIR]   (PACK_DIR from scripts/pack-gpu-run.sh)" >&2
    exit 2
fi
pack=$1
out=${2:-.}
mkdir -p "$out"
here="$(cd "$(dirname "$0")" && pwd)"
peers="$here/bench-gpu-peers.py"
work=$(mktemp -d)
server=""
cleanup() {
    [[ -n "$server" ]] && kill "$server" 2>/dev/null || true
    rm -rf "$work"
    # The table of whatever was measured, also when a step failed or the run was stopped
    # (a device command past its time limit still returns OUT).
    [[ -s "${jsonl:-}" ]] && python3 "$peers" table "$jsonl" > "$out/table.md" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 143' TERM INT
gunzip -c "$pack/kb-worker.gz" > "$work/kb-worker" && chmod +x "$work/kb-worker"
gunzip -c "$pack/corpus.jsonl.gz" > "$work/corpus.jsonl"
bin="$work/kb-worker"
model="$pack/model"
corpus="$work/corpus.jsonl"
jsonl="$out/bench.jsonl"
: > "$jsonl"

# The binary's rpath points at the build machine's virtualenv; use this machine's torch.
torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib:${LD_LIBRARY_PATH:-}"
# (failed() and its kin are defined below; these two only report.)
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv 2>&1 \
    | tee "$out/gpu.txt" >&2 || true
"$bin" devices | tee -a "$jsonl" || true

# The CUDA branches of kb-embed's unit tests: the caching allocator's figures, empty_cache.
gunzip -c "$pack/kb-embed-tests.gz" > "$work/kb-embed-tests" && chmod +x "$work/kb-embed-tests"
# A failure is recorded, not fatal: the benchmarks below still run in the same lease.
"$work/kb-embed-tests" cuda_alloc --nocapture > "$out/unit-tests.txt" 2>&1 \
    || echo "UNIT TESTS FAILED (see unit-tests.txt)" | tee -a "$out/unit-tests.txt" >&2
tail -3 "$out/unit-tests.txt" >&2

# A failed step (a recall or cosine check, a crash) is recorded in OUT/failures.txt and
# the run goes on, so one lease measures everything it can; the exit status says whether
# anything failed.
failures=0
failed() {
    echo "FAILED: $*" | tee -a "$out/failures.txt" >&2
    failures=$((failures + 1))
}
run() {
    echo "+ kb-worker $*" >&2
    "$bin" "$@" | tee -a "$jsonl" || failed "kb-worker $*"
}
peer() {
    echo "+ peer $*" >&2
    python3 "$peers" "$@" --out "$jsonl" || failed "peer $*"
}

# Embedding: the corpus end to end, fp16, large token budgets, several requests in flight
# so tokenization overlaps the GPU; then the peer over the same passages.
run bench embed --model "$model" --corpus "$corpus" --device cuda --precision fp16 \
    --limit 100000 --batch-texts 4096 --concurrency 4 --max-batch-tokens 262144
peer embed --model "$model" --corpus "$corpus" --device cuda --precision fp16 --batch 512 --limit 100000

# Correctness of what a client gets: a worker serving fp16 on the GPU against fp32.
cat > "$work/config.yaml" <<YAML
listen: 127.0.0.1:18080
metrics_listen: 127.0.0.1:19090
data_dir: $work/data
model: $model
embedding:
  device: cuda
  precision: fp16
YAML
"$bin" serve --config "$work/config.yaml" --open > "$out/serve.log" 2>&1 &
server=$!
ready=0
for _ in $(seq 1 120); do
    if python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:18080/readyz", timeout=2)' \
        2>/dev/null; then
        ready=1
        break
    fi
    kill -0 "$server" 2>/dev/null || break
    sleep 1
done
if [[ $ready -eq 1 ]]; then
    peer check --model "$model" --corpus "$corpus" --url http://127.0.0.1:18080 --device cuda --limit 1000
else
    tail -20 "$out/serve.log" >&2
    failed "the fp16 worker did not become ready (serve.log)"
fi
kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
server=""

# Exact search, vectors resident on the GPU, and the torch peer on the same shapes.
# Each shape in fp16 on one index with the grouped top-k (what the worker runs, groups of
# 32 scores), groups of 64 and 128, and libtorch's topk per tile (`plain`); the 1M shapes
# also in fp32.
for spec in "1000000 1 200" "1000000 1024 50" "10000000 1024 20"; do
    read -r rows queries iterations <<<"$spec"
    run bench search --device cuda --precision fp16 --selection grouped,plain,grouped:64,grouped:128 \
        --rows "$rows" --dim 384 --queries "$queries" --top-k 10 --iterations "$iterations"
    if [[ $rows == 1000000 ]]; then
        run bench search --device cuda --precision fp32 --rows "$rows" --dim 384 \
            --queries "$queries" --top-k 10 --iterations "$iterations"
    fi
    floor=()
    [[ $rows == 1000000 && $queries == 1 ]] && floor=(--floor)
    peer search --device cuda --precision fp16 --rows "$rows" --dim 384 --queries "$queries" \
        --top-k 10 --iterations "$iterations" "${floor[@]}"
done
# A restart's snapshot load straight into GPU tensors (and the write, copied off them a
# chunk at a time), 1M rows of 384.
run bench snapshot --device cuda --rows 1000000 --dim 384 --dir "$work"
# The sharded multi-GPU path with two shards on one GPU (on a multi-GPU node list the GPUs,
# e.g. `cuda:0,1`).
run bench search --device cuda:0,0 --rows 1000000 --dim 384 --queries 1024 --top-k 10 --iterations 50

python3 "$peers" table "$jsonl"
[[ $failures -eq 0 ]] || { echo "$failures step(s) failed: see $out/failures.txt" >&2; exit 1; }
