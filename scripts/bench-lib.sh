# Shared by the scripts/bench-*.sh benchmarks (sourced from the repository root): a temp
# folder `$dir` and the processes in `pids` are removed/killed on exit; `free_port` prints
# a free loopback port; `wait_ready URL LOG` waits for URL/readyz and fails, with the tail
# of LOG, when the last started process dies or 15 minutes pass; `stage_breakdown
# METRICS_URL BEFORE PHASE` prints, per stage, what kb_worker_stage_seconds gained since
# the metrics saved in file BEFORE; `embed_batches METRICS_URL BEFORE PHASE` prints the
# embedding batches, texts and real/padded tokens since BEFORE; `peer_venv PROJECT_VENV` prints the venv of the
# FastAPI + ChromaDB + sentence-transformers peer (scripts/bench-peer/), made on first use.
model_dir=$(scripts/model-dir.sh)
dir=$(mktemp -d /tmp/kb-bench-XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_ready() {
    local deadline=$((SECONDS + 900))
    until curl -fs -o /dev/null "$1/readyz"; do
        if ((SECONDS >= deadline)) || ! kill -0 "${pids[-1]}" 2>/dev/null; then
            echo "$1 not ready; log:" >&2
            tail -n 20 "$2" >&2
            exit 1
        fi
        sleep 0.05
    done
}

stage_breakdown() {
    curl -fs "$1/metrics" | python3 -c '
import json, re, sys
def parse(lines):
    series = {}
    for line in lines:
        m = re.match(r"kb_worker_stage_seconds_(bucket|sum|count)\{([^}]*)\} (\S+)", line)
        if m:
            kind, labels, value = m.groups()
            stage = re.search(r"stage=\"(\w+)\"", labels).group(1)
            le = (re.search(r"le=\"([^\"]+)\"", labels) or [None, None])[1]
            series[(kind, stage, le)] = float(value)
    return series
now, before = parse(sys.stdin), parse(open(sys.argv[1]))
delta = {k: v - before.get(k, 0.0) for k, v in now.items()}
for stage in sorted({s for (_, s, _) in delta}):
    count = delta.get(("count", stage, None), 0)
    if count <= 0:
        continue
    buckets = sorted((float(le), n) for (kind, s, le), n in delta.items() if kind == "bucket" and s == stage)
    quantile = lambda q: next(le for le, n in buckets if n >= q * count)
    print(json.dumps({"bench": "stage", "phase": sys.argv[2], "stage": stage, "count": int(count),
        "mean_ms": round(1000 * delta[("sum", stage, None)] / count, 3),
        "p50_ms_at_most": round(1000 * quantile(0.5), 3), "p99_ms_at_most": round(1000 * quantile(0.99), 3)}))
' "$2" "$3"
}

embed_batches() {
    curl -fs "$1/metrics" | python3 -c '
import json, re, sys
def parse(lines):
    return {m.group(1): float(m.group(2)) for m in
            (re.match(r"kb_worker_embed_(batches|rows|tokens|padded_tokens) (\S+)", l) for l in lines) if m}
now, before = parse(sys.stdin), parse(open(sys.argv[1]))
d = {k: now[k] - before.get(k, 0.0) for k in now}
batches = max(d.get("batches", 0), 1)
print(json.dumps({"bench": "embed_batches", "phase": sys.argv[2], "batches": int(d.get("batches", 0)),
    "texts": int(d.get("rows", 0)), "texts_per_batch": round(d.get("rows", 0) / batches, 2),
    "tokens": int(d.get("tokens", 0)), "padded_tokens": int(d.get("padded_tokens", 0))}))
' "$2" "$3"
}

# The peer's packages live in a venv of their own (chromadb pins versions that would break
# the test tools), which sees the project venv's torch and sentence-transformers through a
# .pth file: its own packages come first on sys.path.
peer_venv() {
    local venv=${BENCH_PEER_VENV:-$HOME/.cache/knowledgebase-operator/bench-peer-venv} site
    if [ ! -x "$venv/bin/uvicorn" ]; then
        "$1/bin/python" -m venv "$venv"
        site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' >"$site/project-venv.pth"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/bench-peer/requirements.txt >&2
    fi
    echo "$venv"
}
