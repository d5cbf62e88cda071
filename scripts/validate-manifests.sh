#!/usr/bin/env bash
# Validates what the project ships to a cluster, offline:
#   - every examples/*.yaml rendered by `kb-operator render` passes kubernetes-validate;
#   - the chart passes `helm lint --strict`, and `helm template` passes kubernetes-validate.
# Usage: KB_OPERATOR=path/to/kb-operator scripts/validate-manifests.sh
# Tools come from PATH, or from the project's .venv/bin and .tools/bin (`make setup`).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$root/.venv/bin:$root/.tools/bin:$PATH"
kubernetes_validate=${KUBERNETES_VALIDATE:-kubernetes-validate}
helm=${HELM:-helm}
kb_operator=${KB_OPERATOR:-}
k8s_version=${K8S_VERSION:-1.33.0}

fail() {
    echo "validate-manifests: $*" >&2
    exit 1
}

command -v "$kubernetes_validate" >/dev/null ||
    fail "kubernetes-validate not found (looked in PATH and $root/.venv/bin); run \`make setup\`"
command -v "$helm" >/dev/null ||
    fail "helm not found (looked in PATH and $root/.tools/bin); run \`make setup\`"
[[ -n "$kb_operator" && -x "$kb_operator" ]] ||
    fail "set KB_OPERATOR to a built kb-operator binary (cargo build -p kb-operator)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

validate() {
    "$kubernetes_validate" --strict --quiet --kubernetes-version "$k8s_version" "$1" ||
        fail "$2 does not pass kubernetes-validate"
}

for example in "$root"/examples/*.yaml; do
    name=$(basename "$example" .yaml)
    "$kb_operator" render -f "$example" >"$work/$name.yaml" || fail "cannot render $example"
    [[ -s "$work/$name.yaml" ]] || fail "$example rendered nothing"
    validate "$work/$name.yaml" "rendered $example"
    echo "ok: examples/$name.yaml"
done

chart="$root/charts/knowledgebase-operator"
"$helm" lint --strict "$chart" >"$work/lint.log" 2>&1 || { cat "$work/lint.log" >&2; fail "helm lint failed"; }
for values in "" "--set replicaCount=1 --set leaderElection.enabled=false" \
    "--set watchNamespaces={team-a,team-b}"; do
    # shellcheck disable=SC2086 # word splitting of the value flags is intended
    "$helm" template kbo "$chart" --namespace kb-system --include-crds $values >"$work/chart.yaml" ||
        fail "helm template failed ($values)"
    validate "$work/chart.yaml" "the chart ($values)"
done
echo "ok: charts/knowledgebase-operator"
