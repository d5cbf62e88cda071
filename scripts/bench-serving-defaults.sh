#!/usr/bin/env bash
# Whether the CPU settings a worker measures at start (the executor layout and the bulk
# batch budget, `embedding.cpu_executors` and `embedding.bulk_batch_tokens` unset) are the
# fastest for what it serves: an HTTP ingest of DOCS corpus passages (`kb-worker ingest`,
# 64 documents a request), first with the measured settings (fresh data directory), then
# with every layout that uses all the cores (at most 4 executors) and every candidate
# budget forced, ROUNDS ingests each. Prints one JSON object per setting, then
# a summary: the measured setting's median against the best forced median.
#
# Usage: scripts/bench-serving-defaults.sh WORKER_BIN [CORPUS] [DOCS] [ROUNDS]
set -euo pipefail

worker_bin=$(realpath "$1")
corpus=$(realpath "${2:-../shared/data/corpus.jsonl}")
docs=${3:-2000}
rounds=${4:-2}
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

python3 - "$corpus" "$dir/docs" "$docs" <<'PY'
import json, os, sys
corpus, out, docs = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = [json.loads(l) for l in open(corpus)][:docs]
assert len(lines) == docs, "corpus too small"
os.makedirs(out)
for i, p in enumerate(lines):
    with open(f"{out}/{i:06}.txt", "w") as f:
        f.write(p["text"])
PY

cores=$(nproc)
port=$(free_port)
mport=$(free_port)
url="http://127.0.0.1:$port"
runs=0

# serve NAME [CPU_EXECUTORS BULK_BATCH_TOKENS]: a worker on $dir/data with those settings
# (unset: measured), ROUNDS timed ingests of the passages, one JSON line.
serve() {
    local name=$1 cfg="$dir/$1.yaml" rates=() t0 t1
    printf 'cache:\n  enabled: false\nembedding:\n  precision: auto\n' >"$cfg"
    if [ $# -ge 3 ]; then
        printf '  cpu_executors: %s\n  bulk_batch_tokens: %s\n' "$2" "$3" >>"$cfg"
    fi
    "$worker_bin" serve --config "$cfg" --data-dir "$dir/data" --model "$model_dir" \
        --device cpu --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" --open \
        >"$dir/$name.log" 2>&1 &
    pids+=($!)
    wait_ready "$url" "$dir/$name.log"
    for _ in $(seq "$rounds"); do
        runs=$((runs + 1))
        t0=$(date +%s.%N)
        "$worker_bin" ingest "$dir/docs" --url "$url" --collection "c$runs" \
            --state "$dir/state-$runs.json" >/dev/null
        t1=$(date +%s.%N)
        rates+=("$(python3 -c "print(round($docs / ($t1 - $t0), 1))")")
    done
    curl -fs "http://127.0.0.1:$mport/metrics" | python3 -c '
import json, re, statistics, sys
name, rates = sys.argv[1], [float(r) for r in sys.argv[2:]]
text = sys.stdin.read()
def chosen(metric, label):
    m = re.search(metric + r"\{" + label + r"=\"([^\"]+)\",chosen=\"true\"\}", text)
    return m and m.group(1)
print(json.dumps({"bench": "serving_defaults", "setting": name,
    "layout": chosen("kb_worker_embed_layout_texts_per_second", "layout"),
    "bulk_budget": chosen("kb_worker_embed_bulk_budget_tokens_per_second", "tokens"),
    "documents_per_s": rates, "median": round(statistics.median(rates), 1)}))
' "$name" "${rates[@]}" | tee -a "$dir/results.jsonl"
    kill "${pids[-1]}"
    wait "${pids[-1]}" 2>/dev/null || true
}

# Measured first, on a fresh data directory; the forced runs reuse its precision cache.
serve measured
for executors in 1 2 3 4; do
    if ((executors > cores || cores % executors != 0)); then
        continue
    fi
    for budget in 512 1024 2048; do
        serve "${executors}x$((cores / executors))-$budget" "$executors" "$budget"
    done
done

python3 - "$dir/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
measured, forced = rows[0], rows[1:]
best = max(forced, key=lambda r: r["median"])
print(json.dumps({"bench": "serving_defaults_summary",
    "measured": f'{measured["layout"]}-{measured["bulk_budget"]}', "measured_median": measured["median"],
    "best_forced": best["setting"], "best_median": best["median"],
    "measured_share_of_best": round(measured["median"] / best["median"], 3)}))
PY
