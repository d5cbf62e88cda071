# Shared by the scripts/bench-*.sh benchmarks (sourced from the repository root): a temp
# folder `$dir` and the processes in `pids` are removed/killed on exit; `free_port` prints
# a free loopback port; `wait_ready URL LOG` waits for URL/readyz and fails, with the tail
# of LOG, when the last started process dies or 15 minutes pass.
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
