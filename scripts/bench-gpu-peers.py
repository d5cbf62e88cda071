#!/usr/bin/env python3
"""Peers and checks for scripts/bench-gpu.sh, measured in the same run on the same GPU.

  embed   sentence-transformers fp16 (batch 512) over the corpus: passages/s, the peer of
          `kb-worker bench embed`.
  check   cosine of a running kb-worker's /v1/embeddings vectors (fp16 on the GPU) against
          sentence-transformers fp32: the run fails below --min-cosine.
  search  torch matmul + topk over random unit vectors (fp16): median ms per call, the peer
          of `kb-worker bench search`; `floor` adds the time to read the matrix once at
          the device-to-device copy bandwidth measured in the same process.
  table   the ratios of the issue's goals from bench.jsonl.

Every command prints one JSON object per line. `--device cpu` runs the same code on the CPU
(small sizes) so the script can be smoke-tested without a GPU.
"""
import argparse
import json
import statistics
import sys
import time
import urllib.request


def emit(record, out):
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def corpus_texts(path, limit):
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)["text"])
            if len(texts) >= limit:
                break
    return texts


def sync(torch, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def cmd_embed(args):
    import torch
    from sentence_transformers import SentenceTransformer

    texts = corpus_texts(args.corpus, args.limit)
    # The packed model stores fp16 weights and recent transformers load a checkpoint in its
    # stored dtype: cast explicitly either way.
    model = SentenceTransformer(args.model, device=args.device)
    model = model.half() if args.precision == "fp16" else model.float()
    model.encode(texts[: args.batch], batch_size=args.batch, normalize_embeddings=True)
    sync(torch, args.device)
    start = time.perf_counter()
    model.encode(texts, batch_size=args.batch, normalize_embeddings=True)
    sync(torch, args.device)
    seconds = time.perf_counter() - start
    emit(
        {
            "bench": "peer-embed",
            "impl": "sentence-transformers",
            "device": args.device,
            "precision": args.precision,
            "batch_texts": args.batch,
            "passages": len(texts),
            "seconds": round(seconds, 3),
            "passages_per_s": round(len(texts) / seconds, 3),
        },
        args.out,
    )


def cmd_check(args):
    import numpy as np
    from sentence_transformers import SentenceTransformer

    texts = corpus_texts(args.corpus, args.limit)
    reference = SentenceTransformer(args.model, device=args.device).float().encode(
        texts, batch_size=64, normalize_embeddings=True
    )
    got = []
    for i in range(0, len(texts), 64):
        body = json.dumps({"input": texts[i : i + 64], "model": "kb"}).encode()
        req = urllib.request.Request(
            args.url.rstrip("/") + "/v1/embeddings",
            data=body,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            answer = json.load(resp)
        got.extend(item["embedding"] for item in answer["data"])
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    worst = float(cos.min())
    emit(
        {
            "bench": "embed-check",
            "against": "sentence-transformers fp32",
            "passages": len(texts),
            "min_cosine": round(worst, 6),
            "mean_cosine": round(float(cos.mean()), 6),
        },
        args.out,
    )
    if not worst >= args.min_cosine:
        sys.exit(f"worst cosine {worst} < {args.min_cosine}")


def timed_median_ms(torch, device, fn, iterations):
    for _ in range(3):
        fn()
    sync(torch, device)
    times = []
    for _ in range(iterations):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def unit(torch, n, dim, dtype, device, generator):
    x = torch.randn(n, dim, device=device, generator=generator, dtype=torch.float32)
    x = torch.nn.functional.normalize(x, dim=1)
    return x.to(dtype)


def cmd_search(args):
    import torch

    dtype = torch.float16 if args.precision == "fp16" else torch.float32
    gen = torch.Generator(device=args.device)
    gen.manual_seed(11)
    matrix = unit(torch, args.rows, args.dim, dtype, args.device, gen)
    queries = [unit(torch, args.queries, args.dim, dtype, args.device, gen) for _ in range(4)]
    # Correctness of the peer itself: its top-k scores equal an fp64 brute force (up to fp16
    # rounding of the inputs, which both share).
    q64, m64 = queries[0][:4].double(), matrix.double()
    want = torch.topk(q64 @ m64.T, args.top_k).values
    got = torch.topk((queries[0][:4] @ matrix.T).float(), args.top_k).values.double()
    err = float((got - want).abs().max())
    turn = [0]

    def once():
        q = queries[turn[0] % len(queries)]
        turn[0] += 1
        return torch.topk(q @ matrix.T, args.top_k)

    ms = timed_median_ms(torch, args.device, once, args.iterations)
    record = {
        "bench": "peer-search",
        "impl": "torch matmul+topk",
        "device": args.device,
        "precision": args.precision,
        "rows": args.rows,
        "dim": args.dim,
        "queries": args.queries,
        "top_k": args.top_k,
        "median_ms": round(ms, 4),
        "max_score_error": err,
    }
    if args.floor:
        # The bandwidth ceiling: a device-to-device copy of the matrix (bytes read + written).
        dst = torch.empty_like(matrix)
        copy_ms = timed_median_ms(torch, args.device, lambda: dst.copy_(matrix), args.iterations)
        nbytes = matrix.numel() * matrix.element_size()
        bandwidth = 2 * nbytes / (copy_ms / 1000)
        record["copy_gb_per_s"] = round(bandwidth / 1e9, 1)
        record["read_floor_ms"] = round(nbytes / bandwidth * 1000, 4)
    emit(record, args.out)
    if err > 1e-2:
        sys.exit(f"peer top-k differs from fp64 by {err}")


def cmd_table(args):
    rows = [json.loads(l) for l in open(args.jsonl, encoding="utf-8") if l.strip().startswith("{")]

    def find(bench, **kw):
        for r in rows:
            if r.get("bench") == bench and all(r.get(k) == v for k, v in kw.items()):
                return r
        return None

    lines = ["| measure | kb-worker | peer | ratio | goal |", "| --- | --- | --- | --- | --- |"]
    kb = find("embed", precision="fp16")
    st = find("peer-embed", precision="fp16")
    check = find("embed-check")
    if kb and st:
        ratio = kb["passages_per_s"] / st["passages_per_s"]
        cos = f"; min cosine vs fp32 {check['min_cosine']}" if check else ""
        lines.append(
            f"| embedding fp16, {kb['passages']} passages | {kb['passages_per_s']:.0f}/s | "
            f"{st['passages_per_s']:.0f}/s | {ratio:.2f}x{cos} | >= 10x, cosine >= 0.999 |"
        )
    for rows_n, q, goal in [(1000000, 1, "<= 0.8x time; <= 1.5x read floor"), (1000000, 1024, ">= 4x faster"), (10000000, 1024, ">= 6x faster")]:
        ours = find("search", rows=rows_n, queries=q, precision="fp16", device="cuda", selection="grouped")
        plain = find("search", rows=rows_n, queries=q, precision="fp16", device="cuda", selection="plain")
        peer = find("peer-search", rows=rows_n, queries=q, precision="fp16")
        if not (ours and peer):
            continue
        # kb-worker bench search reports per-call latency percentiles; p50 is the median.
        ratio = ours["p50_ms"] / peer["median_ms"]
        floor = f"; {ours['p50_ms'] / peer['read_floor_ms']:.2f}x read floor" if "read_floor_ms" in peer else ""
        lines.append(
            f"| exact top-10, {rows_n // 1000000}M x 384 fp16, Q={q} | {ours['p50_ms']:.3f} ms | "
            f"{peer['median_ms']:.3f} ms | {ratio:.2f}x time ({1 / ratio:.2f}x faster){floor} | {goal} |"
        )
        if plain:
            lines.append(
                f"| (kb-worker with libtorch's topk per tile, same shape) | {plain['p50_ms']:.3f} ms | "
                f"{peer['median_ms']:.3f} ms | {plain['p50_ms'] / peer['median_ms']:.2f}x time | - |"
            )
    snap = find("snapshot", device="cuda")
    if snap:
        lines.append(
            f"| snapshot of {snap['rows'] // 1000000}M x {snap['dim']} on the GPU ({snap['file_mb']:.0f} MB) | "
            f"write {snap['save_s']:.2f} s, load {snap['load_s']:.2f} s | - | - | - |"
        )
    print("\n".join(lines))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("embed")
    e.add_argument("--model", required=True)
    e.add_argument("--corpus", required=True)
    e.add_argument("--device", default="cuda")
    e.add_argument("--precision", default="fp16", choices=["fp16", "fp32"])
    e.add_argument("--batch", type=int, default=512)
    e.add_argument("--limit", type=int, default=100000)
    e.add_argument("--out")
    c = sub.add_parser("check")
    c.add_argument("--model", required=True)
    c.add_argument("--corpus", required=True)
    c.add_argument("--url", required=True)
    c.add_argument("--device", default="cuda")
    c.add_argument("--limit", type=int, default=1000)
    c.add_argument("--min-cosine", type=float, default=0.999)
    c.add_argument("--out")
    s = sub.add_parser("search")
    s.add_argument("--device", default="cuda")
    s.add_argument("--precision", default="fp16", choices=["fp16", "fp32"])
    s.add_argument("--rows", type=int, required=True)
    s.add_argument("--dim", type=int, default=384)
    s.add_argument("--queries", type=int, required=True)
    s.add_argument("--top-k", type=int, default=10)
    s.add_argument("--iterations", type=int, default=50)
    s.add_argument("--floor", action="store_true")
    s.add_argument("--out")
    t = sub.add_parser("table")
    t.add_argument("jsonl")
    args = p.parse_args()
    {"embed": cmd_embed, "check": cmd_check, "search": cmd_search, "table": cmd_table}[args.cmd](args)


if __name__ == "__main__":
    main()
