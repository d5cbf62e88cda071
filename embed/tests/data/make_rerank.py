"""Builds small random BERT cross-encoders and writes sentence-transformers' own fp32 CPU
scores for them.

kb-embed's `rerank` test (and the worker's rerank tests) run this into a temporary
directory, load the model with kb-embed's `Reranker` and compare its scores with these.
Nothing is downloaded: the models are random (fixed seeds) and share the bundled
all-MiniLM-L6-v2 tokenizer.

    HF_HUB_OFFLINE=1 .venv/bin/python embed/tests/data/make_rerank.py OUT_DIR "$(scripts/model-dir.sh)"

Models (each saved with `CrossEncoder.save`, the layout the installed sentence-transformers
writes: `model.safetensors` with `bert.*`, `bert.pooler.dense.*` and `classifier.*`,
`config.json` of a `BertForSequenceClassification` with one label, the tokenizer files,
the maximum length in `tokenizer_config.json`, the activation in
`config_sentence_transformers.json`):

- `sigmoid`: 64 wide, 2 layers of 4 heads, 64 tokens at most, the default activation.
- `identity`: 32 wide, 1 layer of 2 heads, 32 tokens at most, `activation_fn` Identity.

OUT_DIR/rerank.json lists, per model: its directory, its maximum length, the query and
passages, `CrossEncoder.predict`'s scores, the raw logits (`activation_fn=Identity`) and
the untruncated token count of each pair.
"""

import json
import os
import shutil
import sys

import torch
from sentence_transformers import CrossEncoder
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

LONG = " ".join(
    f"Sentence {i}: the replication log is tailed by every replica, which applies records in order."
    for i in range(12)
)

QUERY = "how do replicas apply the replication log?"

PASSAGES = [
    "Replicas tail the replication log and apply every record in order.",
    "The quick brown fox jumps over the lazy dog.",
    "A StatefulSet keeps a stable network identity and persistent storage for each pod.",
    "Café crème brûlée, naïve façade, Øresund, Straße.",
    "東京は日本の首都です。",
    "Short.",
    LONG,
]

MODELS = [
    # name, hidden, layers, heads, intermediate, max_length, activation (None: default)
    ("sigmoid", 64, 2, 4, 128, 64, None),
    ("identity", 32, 1, 2, 64, 32, torch.nn.Identity()),
]


def random_cross_encoder(path, seed, hidden, layers, heads, intermediate):
    """A random BertForSequenceClassification with one label, weights large enough that
    the passages get clearly different scores (HF's 0.02 init makes them all alike)."""
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=512,
        initializer_range=0.2,
        num_labels=1,
    )
    model = BertForSequenceClassification(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm.weight" in name:
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif param.dim() == 1:
                param.copy_(0.1 * torch.randn_like(param))
    model.save_pretrained(path)


def main() -> None:
    out_dir = sys.argv[1]
    tokenizer_dir = sys.argv[2] if len(sys.argv) > 2 else os.environ["KB_MODEL_DIR"]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    rows = []
    for seed, (name, hidden, layers, heads, inter, max_length, act) in enumerate(MODELS):
        hf = os.path.join(out_dir, "hf", name)
        random_cross_encoder(hf, 100 + seed, hidden, layers, heads, inter)
        tokenizer.save_pretrained(hf)
        path = os.path.join(out_dir, name)
        CrossEncoder(hf, device="cpu", max_length=max_length, activation_fn=act).save(path)
        # The reference comes from the directory as saved, read back as any user would.
        model = CrossEncoder(path, device="cpu")
        assert model.max_seq_length == max_length, (name, model.max_seq_length)
        pairs = [(QUERY, p) for p in PASSAGES]
        scores = model.predict(pairs, batch_size=3, convert_to_numpy=True)
        logits = model.predict(
            pairs, batch_size=3, convert_to_numpy=True, activation_fn=torch.nn.Identity()
        )
        rows.append(
            {
                "name": name,
                "dir": path,
                "max_seq_length": max_length,
                "activation": type(model.activation_fn).__name__,
                "query": QUERY,
                "passages": PASSAGES,
                "scores": [float(s) for s in scores],
                "logits": [float(s) for s in logits],
                "tokens": [
                    len(model.tokenizer(QUERY, p, truncation=False)["input_ids"]) for p in PASSAGES
                ],
            }
        )
    shutil.rmtree(os.path.join(out_dir, "hf"))
    with open(os.path.join(out_dir, "rerank.json"), "w", encoding="utf-8") as f:
        json.dump({"models": rows}, f, ensure_ascii=False)
    print(f"wrote {len(rows)} cross-encoders to {out_dir}")


if __name__ == "__main__":
    main()
