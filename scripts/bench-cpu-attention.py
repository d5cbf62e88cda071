#!/usr/bin/env python3
"""Time ATen's CPU scaled_dot_product_attention (the kernel kb-worker's encoder calls per
attention group) for a range of padded lengths, to see which grid lengths it runs fast.

One line per dtype: `length:milliseconds` for one layer's attention of ROWS rows, 12 heads
of 32 (all-MiniLM-L6-v2's shape), with the last row's second half masked as padding.

Usage: [ROWS=10] [THREADS=1] python3 scripts/bench-cpu-attention.py
(with the project venv's torch: ~/.cache/knowledgebase-operator/venv/bin/python3)
"""
import os
import time

import torch

F = torch.nn.functional
ROWS = int(os.environ.get("ROWS", "10"))
torch.set_num_threads(int(os.environ.get("THREADS", "1")))
HEADS, HEAD_DIM = 12, 32
LENGTHS = list(range(8, 72, 4)) + [96, 112, 128, 160, 192, 224, 256]


def millis(f, *args):
    with torch.inference_mode():
        for _ in range(3):
            f(*args)
        start, runs = time.perf_counter(), 0
        while time.perf_counter() - start < 0.3:
            f(*args)
            runs += 1
        return (time.perf_counter() - start) / runs * 1e3


for dtype in (torch.float32, torch.bfloat16):
    cells = []
    for length in LENGTHS:
        q, k, v = (torch.randn(ROWS, HEADS, length, HEAD_DIM, dtype=dtype) for _ in range(3))
        mask = torch.ones(ROWS, 1, 1, length, dtype=torch.bool)
        mask[-1, ..., length // 2 :] = False
        cells.append(f"{length}:{millis(F.scaled_dot_product_attention, q, k, v, mask):.2f}")
    print(f"{dtype} rows={ROWS} threads={torch.get_num_threads()} torch={torch.__version__}:", " ".join(cells))
