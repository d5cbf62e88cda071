#!/usr/bin/env python3
"""CPU embedding peers of `kb-worker bench embed`, on the same passages (the first --limit of
the corpus, as kb-worker reads them), so that one run gives a like-for-like table.

  st          sentence-transformers fp32, encode(batch_size=32, normalize_embeddings=True):
              the reference vectors.
  ort         ONNX Runtime fp32 (ORT_ENABLE_ALL) on the model's BERT exported to ONNX.
  ov          OpenVINO on the same ONNX file, compiled for "CPU" twice: INFERENCE_PRECISION_HINT
              f32 (line "ov") and the device's default hint (line "ov-default": bf16 on CPUs
              with AVX512_BF16/AMX).

ort and ov tokenize with the model's own tokenizer (truncation to max_seq_length from
sentence_bert_config.json), run length-sorted batches of --batch texts, then mean-pool with
the attention mask and L2-normalise, as the model's modules.json says sentence-transformers
does (checked at start). Only the embedding of all passages is timed, tokenisation
included, after one warm-up batch; loading and the one-off ONNX export (cached in
--cache-dir) are not. Every engine prints one JSON line, with the worst cosine of its
vectors to st's and the CPU's model name and flags.

The export and ort/ov need packages beyond the project's requirements.txt; they are kept out
of the project venv (see scripts/bench-peer/requirements-cpu-engines.txt):

  VENV=/root/.cache/knowledgebase-operator/venv
  $VENV/bin/pip install --no-deps --target /tmp/kb-peer-pkgs \\
      -r scripts/bench-peer/requirements-cpu-engines.txt
  PYTHONPATH=/tmp/kb-peer-pkgs $VENV/bin/python scripts/bench-cpu-peers.py \\
      --model "$(VENV=$VENV scripts/model-dir.sh)" --corpus ../shared/data/corpus.jsonl
"""
import argparse
import contextlib
import hashlib
import importlib.util
import json
import math
import os
import sys
import time

ENGINES = ("st", "ort", "ov")
INSTALL = (
    "install them outside the project venv with\n"
    "  /root/.cache/knowledgebase-operator/venv/bin/pip install --no-deps --target /tmp/kb-peer-pkgs"
    " -r scripts/bench-peer/requirements-cpu-engines.txt\n"
    "and run this script with PYTHONPATH=/tmp/kb-peer-pkgs on the project venv's python"
)
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# Bump when the export below changes, so that cached ONNX files of an older export are not used.
EXPORT_VERSION = "1"


def fail(message):
    sys.exit(f"bench-cpu-peers: {message}")


def log(message):
    print(f"bench-cpu-peers: {message}", file=sys.stderr, flush=True)


def corpus_texts(path, limit):
    """The `text` of the first `limit` non-blank lines, like kb-worker's read_corpus."""
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(texts) >= limit:
                break
            if line.strip():
                texts.append(json.loads(line)["text"])
    if not texts:
        fail(f"{path} holds no passages")
    return texts


def cpu_info():
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown":
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16") if f in flags]
    wanted += sorted(f for f in flags if f.startswith("amx"))
    return model, wanted


def usable_cpus():
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    count = len(os.sched_getaffinity(0))
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="utf-8") as f:
            quota, period = f.read().split()
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return count


def require(engines, onnx_path=None):
    """Exits, saying how to install them, if a requested engine's packages are missing: the
    project venv's, and those of ort and ov (with the exporter's while onnx_path, once known,
    is not cached yet)."""
    needs = {m: "the project venv (make setup)" for m in ("numpy", "torch", "transformers", "sentence_transformers")}
    if "ort" in engines or "ov" in engines:
        if onnx_path is not None and not os.path.exists(onnx_path):
            needs.update({m: "requirements-cpu-engines.txt" for m in ("onnx", "onnxscript", "onnx_ir")})
    if "ort" in engines:
        needs["onnxruntime"] = "requirements-cpu-engines.txt"
    if "ov" in engines:
        needs["openvino"] = "requirements-cpu-engines.txt"
    missing = {}
    for module, source in needs.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.setdefault(source, []).append(module)
    if not missing:
        return
    lines = []
    for source, modules in missing.items():
        if source == "requirements-cpu-engines.txt":
            lines.append(f"missing {', '.join(modules)} (engines {','.join(engines)}): {INSTALL}")
        else:
            lines.append(
                f"missing {', '.join(modules)}: run with the project venv's python "
                f"(/root/.cache/knowledgebase-operator/venv/bin/python, installed by make setup)"
            )
    fail("\n".join(lines))


class ModelLayout:
    """What modules.json, 1_Pooling/config.json and sentence_bert_config.json say."""

    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "modules.json"), encoding="utf-8") as f:
            modules = json.load(f)
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
            fail(f"{model_dir}: modules {kinds}: only Transformer, Pooling[, Normalize] is supported")
        self.transformer_dir = os.path.join(model_dir, modules[0].get("path", ""))
        self.normalize = kinds[2:] == ["Normalize"]
        with open(os.path.join(model_dir, modules[1]["path"], "config.json"), encoding="utf-8") as f:
            pooling = json.load(f)
        modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v is True)
        if modes != ["pooling_mode_mean_tokens"]:
            fail(f"{model_dir}: pooling {modes}: only mean pooling is supported")
        self.max_seq_length = 512
        config = os.path.join(self.transformer_dir, "sentence_bert_config.json")
        if os.path.exists(config):
            with open(config, encoding="utf-8") as f:
                self.max_seq_length = json.load(f).get("max_seq_length") or 512


def onnx_cache_path(layout, cache_dir):
    """The ONNX file of this model's weights, named by a hash of them (and of the export)."""
    import torch

    digest = hashlib.sha256(f"{EXPORT_VERSION} torch {torch.__version__}".encode())
    for name in sorted(os.listdir(layout.transformer_dir)):
        if name == "config.json" or name.endswith((".safetensors", ".bin")):
            with open(os.path.join(layout.transformer_dir, name), "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    return os.path.join(cache_dir, f"minilm-{digest.hexdigest()[:16]}", "model.onnx")


def export_onnx(layout, tokenizer, path):
    """The BERT of the sentence-transformers dir, fp32, to ONNX with dynamic batch and sequence
    axes (torch.export-based exporter: the TorchScript one, given transformers 5's attention
    mask code, traces a graph that is wrong for other shapes)."""
    import torch
    from transformers import AutoModel

    class LastHiddenState(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    log(f"exporting {layout.transformer_dir} to {path}")
    model = AutoModel.from_pretrained(layout.transformer_dir, attn_implementation="eager")
    model = model.float().eval()
    # Two examples of different lengths, so the example itself has padding.
    enc = tokenizer(
        ["an example passage for the export", "short"], padding=True, return_tensors="pt"
    )
    args = tuple(enc[n] if n in enc else torch.zeros_like(enc["input_ids"]) for n in INPUT_NAMES)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=512)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    # The exporter prints its progress on stdout, which carries only JSON lines here.
    with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
        torch.onnx.export(
            LastHiddenState(model).eval(),
            args,
            tmp,
            input_names=list(INPUT_NAMES),
            output_names=["last_hidden_state"],
            dynamic_shapes={n: {0: batch, 1: sequence} for n in INPUT_NAMES},
            dynamo=True,
            external_data=False,
        )
    os.replace(tmp, path)


class Peer:
    """Tokenize, run the ONNX graph, mean-pool and normalise, over length-sorted batches."""

    def __init__(self, tokenizer, layout, batch, infer):
        self.tokenizer, self.layout, self.batch, self.infer = tokenizer, layout, batch, infer

    def embed(self, texts):
        import numpy as np

        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = None
        for start in range(0, len(order), self.batch):
            idx = order[start : start + self.batch]
            enc = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.layout.max_seq_length,
                return_tensors="np",
            )
            ids = enc["input_ids"].astype(np.int64)
            mask = enc["attention_mask"].astype(np.int64)
            types = enc["token_type_ids"].astype(np.int64) if "token_type_ids" in enc else np.zeros_like(ids)
            hidden = self.infer(ids, mask, types)
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(1) / np.clip(weights.sum(1), 1e-9, None)
            if self.layout.normalize:
                pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            if out is None:
                out = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
            out[idx] = pooled
        return out


def ort_peer(onnx_path, threads, tokenizer, layout, batch):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    wanted = [i.name for i in session.get_inputs()]

    def infer(ids, mask, types):
        feed = dict(zip(INPUT_NAMES, (ids, mask, types)))
        return session.run(None, {n: feed[n] for n in wanted})[0]

    return Peer(tokenizer, layout, batch, infer), ort.__version__


def ov_peer(onnx_path, threads, tokenizer, layout, batch, precision_hint):
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads}
    if precision_hint:
        config["INFERENCE_PRECISION_HINT"] = precision_hint
    compiled = core.compile_model(core.read_model(onnx_path), "CPU", config)
    precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    precision = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}.get(precision, precision)
    request = compiled.create_infer_request()
    wanted = [p.get_any_name() for p in compiled.inputs]
    output = compiled.output(0)

    def infer(ids, mask, types):
        feed = dict(zip(INPUT_NAMES, (ids, mask, types)))
        return request.infer({n: feed[n] for n in wanted})[output]

    return Peer(tokenizer, layout, batch, infer), ov.__version__, precision


def timed(embed, texts, batch):
    embed(texts[:batch])  # warm-up: lazy initialisation, first kernels, allocator growth
    start = time.perf_counter()
    vectors = embed(texts)
    return vectors, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model directory (sentence-transformers layout)")
    parser.add_argument("--corpus", required=True, help='JSONL corpus, {"id": ..., "text": ...} per line')
    parser.add_argument("--limit", type=int, default=2000, help="passages: the first N of the corpus")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated, of st, ort, ov")
    parser.add_argument("--batch", type=int, default=32, help="texts per batch")
    parser.add_argument("--threads", type=int, default=None, help="threads [the CPUs this process may use]")
    parser.add_argument("--cache-dir", default="/tmp/kb-bench-peers", help="where the ONNX export is kept")
    args = parser.parse_args()

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        fail(f"unknown engines {unknown}: use a comma-separated list of {', '.join(ENGINES)}")
    if args.limit < 1 or args.batch < 1 or (args.threads is not None and args.threads < 1):
        fail("--limit, --batch and --threads must be at least 1")
    threads = args.threads or usable_cpus()
    layout = ModelLayout(args.model)
    require(engines)  # before hashing the weights with torch's version
    onnx_path = onnx_cache_path(layout, args.cache_dir)
    require(engines, onnx_path)

    import numpy as np
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    torch.set_num_threads(threads)
    texts = corpus_texts(args.corpus, args.limit)
    tokenizer = AutoTokenizer.from_pretrained(layout.transformer_dir)
    tokens = sum(
        len(ids)
        for ids in tokenizer(texts, truncation=True, max_length=layout.max_seq_length)["input_ids"]
    )
    cpu_model, cpu_flags = cpu_info()

    def emit(engine, version, precision, vectors, seconds):
        cos = (vectors.astype(np.float64) * reference.astype(np.float64)).sum(1)
        cos /= np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1)
        record = {
            "bench": "peer-embed",
            "engine": engine,
            "version": version,
            "precision": precision,
            "passages": len(texts),
            "seconds": round(seconds, 3),
            "passages_per_s": round(len(texts) / seconds, 3),
            "tokens_per_s": round(tokens / seconds, 3),
            "batch": args.batch,
            "threads": threads,
            "min_cosine_to_st": 1.0 if engine == "st" else round(float(cos.min()), 6),
            "cpu": cpu_model,
            "cpu_flags": cpu_flags,
        }
        print(json.dumps(record), flush=True)

    # sentence-transformers: the reference, timed only when asked for. The cast: recent
    # transformers load a checkpoint in its stored dtype.
    st = SentenceTransformer(args.model, device="cpu").float()

    def st_embed(batch_texts):
        return st.encode(
            batch_texts,
            batch_size=args.batch,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    if "st" in engines:
        reference, seconds = timed(st_embed, texts, args.batch)
        emit("st", sentence_transformers.__version__, "fp32", reference, seconds)
    else:
        reference = st_embed(texts)
    del st

    if "ort" in engines or "ov" in engines:
        if not os.path.exists(onnx_path):
            export_onnx(layout, tokenizer, onnx_path)
        else:
            log(f"using the cached export {onnx_path}")
    if "ort" in engines:
        peer, version = ort_peer(onnx_path, threads, tokenizer, layout, args.batch)
        vectors, seconds = timed(peer.embed, texts, args.batch)
        emit("ort", version, "fp32", vectors, seconds)
        del peer
    if "ov" in engines:
        for engine, hint in (("ov", "f32"), ("ov-default", None)):
            peer, version, precision = ov_peer(onnx_path, threads, tokenizer, layout, args.batch, hint)
            vectors, seconds = timed(peer.embed, texts, args.batch)
            emit(engine, version, precision, vectors, seconds)
            del peer


if __name__ == "__main__":
    main()
