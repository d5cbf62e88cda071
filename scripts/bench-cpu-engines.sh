#!/usr/bin/env bash
# CPU embedding throughput, like for like: `kb-worker bench embed` (with --precision fp32,
# then with its default, auto: the faster of fp32 and bf16) and its CPU peers from
# scripts/bench-cpu-peers.py (sentence-transformers fp32, ONNX Runtime fp32, OpenVINO f32
# and OpenVINO with its default precision hint), one after the other on the same machine,
# same model, same first LIMIT passages of the corpus. One JSON line per measurement:
# kb-worker's lines get "engine": "kb-worker" and the --precision they ran with; the
# peers' lines carry the worst cosine of their vectors to sentence-transformers', the CPU
# model and its avx2/avx512f/avx512_bf16/amx flags.
#
# Usage: [KB_WORKER=BIN] [LIMIT=2000] [THREADS=N] scripts/bench-cpu-engines.sh [CORPUS]
#   KB_WORKER  default $CARGO_TARGET_DIR/release/kb-worker, else target/release/kb-worker
#   THREADS    the peers' thread count [default: the CPUs the process may use]
#   VENV       the project venv (torch, transformers, sentence-transformers, the model)
#              [default: $VIRTUAL_ENV, else ~/.cache/knowledgebase-operator/venv]
#   PEER_PKGS  where scripts/bench-peer/requirements-cpu-engines.txt is installed, outside
#              the project venv, and put on PYTHONPATH [default: /tmp/kb-peer-pkgs]
set -euo pipefail

# CORPUS and KB_WORKER are taken relative to the caller's folder, the defaults to the repository root.
corpus=${1:+$(realpath -m "$1")}
worker_bin=${KB_WORKER:+$(realpath -m "$KB_WORKER")}
cd "$(dirname "$0")/.."
corpus=${corpus:-$(realpath -m ../shared/data/corpus.jsonl)}
worker_bin=${worker_bin:-$(realpath -m "${CARGO_TARGET_DIR:-target}/release/kb-worker")}
limit=${LIMIT:-2000}
venv=${VENV:-${VIRTUAL_ENV:-$HOME/.cache/knowledgebase-operator/venv}}
peer_pkgs=${PEER_PKGS:-/tmp/kb-peer-pkgs}
requirements=scripts/bench-peer/requirements-cpu-engines.txt
if [ ! -f "$corpus" ]; then
    echo "no corpus at $corpus" >&2
    exit 1
fi
if [ ! -x "$worker_bin" ]; then
    echo "no kb-worker at $worker_bin: build it (cargo build --release) or set KB_WORKER" >&2
    exit 1
fi
model_dir=$(VENV="$venv" scripts/model-dir.sh)

# The peers' packages: --no-deps, so that numpy, sympy... stay the venv's (see the
# requirements file); (re)installed when the requirements change.
if ! cmp -s "$requirements" "$peer_pkgs/.requirements-cpu-engines.txt"; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --upgrade \
        --target "$peer_pkgs" -r "$requirements"
    cp "$requirements" "$peer_pkgs/.requirements-cpu-engines.txt"
fi

tag() {
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        record = json.loads(line)
    except ValueError:
        print(line, end="")
        continue
    print(json.dumps({"engine": "kb-worker", "precision_flag": sys.argv[1], **record}), flush=True)
' "$1"
}

# --precision fp32, then kb-worker's default (auto: the faster of fp32 and bf16 on this CPU).
for precision in fp32 default; do
    flags=()
    [ "$precision" = default ] || flags=(--precision "$precision")
    "$worker_bin" bench embed --model "$model_dir" --corpus "$corpus" --limit "$limit" \
        "${flags[@]}" | tag "$precision"
done

PYTHONPATH="$peer_pkgs${PYTHONPATH:+:$PYTHONPATH}" "$venv/bin/python" scripts/bench-cpu-peers.py \
    --model "$model_dir" --corpus "$corpus" --limit "$limit" ${THREADS:+--threads "$THREADS"}
