#!/usr/bin/env bash
# Runs scripts/bench-gpu.sh on this machine's CPU with small sizes, to check its plumbing
# (every command, flag and peer step, the table) before a lent GPU's minutes are spent on
# it. The figures mean nothing; a step that fails here would fail there.
#
#   make build && scripts/pack-gpu-run.sh && scripts/bench-gpu-dry-run.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d)}
dry=scripts/.bench-gpu-dry.sh
trap 'rm -f "$dry"' EXIT
# CUDA -> CPU (fp32: fp16 matmuls crawl on CPUs), 1M/10M rows -> 20k/40k, short runs.
sed -e 's/--device cuda:0,0/--device cpu,cpu/g; s/--device cuda/--device cpu/g' \
    -e 's/device: cuda/device: cpu/; s/precision: fp16/precision: fp32/; s/--precision fp16/--precision fp32/g' \
    -e 's/"1000000 1 200" "1000000 1024 50" "10000000 1024 20"/"20000 1 5" "20000 64 3" "40000 64 2"/' \
    -e 's/== 1000000/== 20000/g; s/--rows 1000000/--rows 20000/g; s/--iterations 50$/--iterations 3/' \
    -e 's/--limit 100000/--limit 64/g; s/--limit 1000/--limit 32/' \
    -e 's/--batch-texts 4096 --concurrency 4 --max-batch-tokens 262144/--batch-texts 32/' \
    scripts/bench-gpu.sh > "$dry"
if grep -n -- '--device cuda\|device: cuda' "$dry"; then
    echo "the dry run still names CUDA: update the substitutions above" >&2
    exit 1
fi
bash "$dry" .run/gpu "$out"
echo "dry run passed; records in $out/bench.jsonl" >&2
