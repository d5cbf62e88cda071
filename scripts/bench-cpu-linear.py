#!/usr/bin/env python3
"""Time one of the encoder's linear layers on the CPU the three ways libtorch can run it:
fp32 (`F.linear`), bf16 with the weight in its plain layout (`F.linear`, which oneDNN
reorders at every call) and bf16 with the weight packed once
(`mkldnn::_reorder_linear_weight` + `mkldnn::_linear_pointwise`, what kb-worker's encoder
runs in bf16 on the CPU), plus the fp32 GFLOP/s of the product.

One line per row count: milliseconds for `[rows, 384] x [384, 1536]` + bias
(all-MiniLM-L6-v2's intermediate layer). `ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16` in the
environment shows a CPU without AMX.

Usage: [THREADS=1] python3 scripts/bench-cpu-linear.py
(with the project venv's torch: ~/.cache/knowledgebase-operator/venv/bin/python3)
"""
import os
import time

import torch

F = torch.nn.functional
torch.set_num_threads(int(os.environ.get("THREADS", "1")))
IN, OUT = 384, 1536


def millis(f):
    with torch.inference_mode():
        for _ in range(3):
            f()
        start, runs = time.perf_counter(), 0
        while time.perf_counter() - start < 0.3:
            f()
            runs += 1
        return (time.perf_counter() - start) / runs * 1e3


for rows in (64, 512, 2048):
    x, w, b = torch.randn(rows, IN), torch.randn(OUT, IN), torch.randn(OUT)
    xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
    packed = torch.ops.mkldnn._reorder_linear_weight(wb, None)
    fp32 = millis(lambda: F.linear(x, w, b))
    plain = millis(lambda: F.linear(xb, wb, bb))
    fused = millis(lambda: torch.ops.mkldnn._linear_pointwise(xb, packed, bb, "none", [], ""))
    gflops = 2 * rows * IN * OUT / fp32 / 1e6
    print(
        f"rows={rows} threads={torch.get_num_threads()} torch={torch.__version__}: "
        f"fp32 {fp32:.3f} ms ({gflops:.0f} GFLOP/s), bf16 plain {plain:.3f} ms, bf16 packed {fused:.3f} ms"
    )
