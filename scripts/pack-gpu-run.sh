#!/usr/bin/env bash
# Packs what scripts/bench-gpu.sh needs on a lent GPU machine into .run/gpu, within the
# device tool's 64 MiB carry limit: the release kb-worker and the benchmark corpus
# (../shared/data/corpus.jsonl, which does not travel with the tree) and kb-embed's unit
# tests, gzipped, and the bundled model
# with its weights stored in fp16 (44 MiB instead of 87; the worker converts them to the
# precision it runs in, and the run's fp32 reference reads the same file).
#
#   scripts/pack-gpu-run.sh        # after `make build`
#   (device tool, carry [".run/gpu"]) scripts/bench-gpu.sh .run/gpu "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
venv="${VENV:-${VIRTUAL_ENV:-.venv}}"
bin="$target/release/kb-worker"
[[ -x "$bin" ]] || { echo "no $bin: run \`make build\` first" >&2; exit 2; }
model="$(scripts/model-dir.sh)"
out=.run/gpu
rm -rf "$out" && mkdir -p "$out/model"
gzip -9 -c "$bin" > "$out/kb-worker.gz"
gzip -9 -c ../shared/data/corpus.jsonl > "$out/corpus.jsonl.gz"
for f in "$model"/*; do
    case "$(basename "$f")" in
        model.safetensors | README.md) ;;
        *) cp -r "$f" "$out/model/" ;;
    esac
done
"$venv/bin/python" - "$model/model.safetensors" "$out/model/model.safetensors" <<'PY'
import sys
from safetensors.torch import load_file, save_file
tensors = load_file(sys.argv[1])
save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()},
          sys.argv[2], metadata={"format": "pt"})
PY
# kb-embed's unit tests (stripped): their CUDA branches (the caching allocator's figures
# and empty_cache) run first on the GPU machine.
tests=$(cargo test -q -p kb-embed --lib --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "kb_embed":
        print(m["executable"])' | tail -1)
[[ -x "$tests" ]] || { echo "kb-embed's test binary was not built" >&2; exit 1; }
strip -o "$out/kb-embed-tests" "$tests" && gzip -9 "$out/kb-embed-tests"
size=$(du -sb "$out" | cut -f1)
echo "packed $out: $((size / 1048576)) MiB" >&2
if (( size > 64 * 1048576 )); then
    echo "$out is over the 64 MiB carry limit" >&2
    exit 1
fi
