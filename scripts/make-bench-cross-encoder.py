"""Writes a cross-encoder of the shape of cross-encoder/ms-marco-MiniLM-L-6-v2 (BERT, 384
wide, 6 layers of 12 heads, 512 tokens) with random weights, for timing reranking where no
model hub can be reached: `kb-worker bench retrieval --reranker DIR` measures latency,
which depends on the shape only (its scores mean nothing).

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/make-bench-cross-encoder.py OUT_DIR "$(scripts/model-dir.sh)"
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "embed", "tests", "data"))

from make_rerank import random_cross_encoder  # noqa: E402
from sentence_transformers import CrossEncoder  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402


def main() -> None:
    out_dir, tokenizer_dir = sys.argv[1], sys.argv[2]
    hf = os.path.join(out_dir, "hf")
    random_cross_encoder(hf, 7, 384, 6, 12, 1536)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(hf)
    CrossEncoder(hf, device="cpu", max_length=512).save(os.path.join(out_dir, "model"))
    print(os.path.join(out_dir, "model"))


if __name__ == "__main__":
    main()
