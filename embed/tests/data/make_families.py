"""Builds small random BERT sentence-transformers models of several families and writes
sentence-transformers' own fp32 CPU vectors for them.

kb-embed's `families` test runs this into a temporary directory, loads every model with
kb-embed and compares its vectors with these. Nothing is downloaded: the encoders are
random (fixed seeds) and share the bundled all-MiniLM-L6-v2 tokenizer.

    HF_HUB_OFFLINE=1 .venv/bin/python embed/tests/data/make_families.py OUT_DIR "$(scripts/model-dir.sh)"

Each model is a family kb-embed must serve exactly as sentence-transformers does:

- `cls_normalize`: CLS pooling + Normalize, e5-style prompts declared by the model
  (`query: ` / `passage: `), files in the 2.x-5.x spelling (`sentence_transformers.models.*`,
  `pooling_mode_*` booleans, `max_seq_length` in sentence_bert_config.json).
- `max_plain`: max pooling, no Normalize, 96 wide, 3 layers of 6 heads, in the spelling
  sentence-transformers 6 writes (`pooling_mode: "max"`, the length in tokenizer_config.json);
  the prefixes come from kb-embed's configuration instead.
- `mean_wide`: mean pooling + Normalize, 128 wide with 2 heads, 2.x-5.x spelling.
- `mean_sqrt_len`: mean_sqrt_len_tokens pooling, no Normalize, one layer of one head.

OUT_DIR/families.json lists, per model: its directory, what it declares, the prefixes the
test configures (null: the model's own), the texts, and sentence-transformers' vectors of
the texts as given (`encode`), as queries and as documents (the prefix prepended, which is
what `encode_query` / `encode_document` do with the model's prompts), and the untruncated
token count of each text as a query, prefix included.
"""

import json
import os
import shutil
import sys

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules.normalize import Normalize
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
from transformers import AutoTokenizer, BertConfig, BertModel

LONG = " ".join(
    f"Sentence {i}: the replication log is tailed by every replica, which applies records in order."
    for i in range(12)
)

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "A StatefulSet keeps a stable network identity and persistent storage for each pod.",
    "Café crème brûlée, naïve façade, Øresund, Straße.",
    "東京は日本の首都です。",
    "Short.",
    LONG,
]

FAMILIES = [
    # name, hidden, layers, heads, intermediate, pooling, normalize, max_seq_length, legacy
    ("cls_normalize", 64, 2, 4, 128, "cls", True, 128, True),
    ("max_plain", 96, 3, 6, 192, "max", False, 32, False),
    ("mean_wide", 128, 2, 2, 256, "mean", True, 64, True),
    ("mean_sqrt_len", 64, 1, 1, 64, "mean_sqrt_len_tokens", False, 48, False),
]

LEGACY_KEYS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
}

# The prompts `cls_normalize` declares; the prefixes the test configures for the others.
# (`document`, not `passage`: sentence-transformers 6 adds an empty `document` prompt to
# every model, which its `encode_document` then prefers to a declared `passage`.)
DECLARED = {"query": "query: ", "document": "passage: "}
CONFIGURED = {"query_prefix": "search_query: ", "document_prefix": "search_document: "}


def random_encoder(path, seed, hidden, layers, heads, intermediate):
    """A random BERT whose weights are large enough that attention is far from uniform and
    every pooling mode gives distinct vectors (HF's 0.02 init makes all texts alike)."""
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=512,
        initializer_range=0.2,
    )
    model = BertModel(cfg, add_pooling_layer=False)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm.weight" in name:
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif param.dim() == 1:
                param.copy_(0.1 * torch.randn_like(param))
    model.save_pretrained(path)


def to_legacy(out, pooling, max_seq_length):
    """Rewrites a saved model in the file spelling of sentence-transformers 2.x-5.x."""
    modules = json.load(open(os.path.join(out, "modules.json")))
    legacy_types = {
        "Transformer": "sentence_transformers.models.Transformer",
        "Pooling": "sentence_transformers.models.Pooling",
        "Normalize": "sentence_transformers.models.Normalize",
    }
    for module in modules:
        module["type"] = legacy_types[module["type"].rsplit(".", 1)[1]]
    json.dump(modules, open(os.path.join(out, "modules.json"), "w"), indent=2)
    pooling_cfg = json.load(open(os.path.join(out, "1_Pooling", "config.json")))
    legacy = {"word_embedding_dimension": pooling_cfg["embedding_dimension"]}
    legacy.update({key: mode == pooling for mode, key in LEGACY_KEYS.items()})
    json.dump(legacy, open(os.path.join(out, "1_Pooling", "config.json"), "w"), indent=2)
    json.dump(
        {"max_seq_length": max_seq_length, "do_lower_case": False},
        open(os.path.join(out, "sentence_bert_config.json"), "w"),
    )
    # Old Normalize modules saved no files.
    shutil.rmtree(os.path.join(out, "2_Normalize"), ignore_errors=True)
    st_config = {"prompts": DECLARED, "default_prompt_name": None}
    json.dump(st_config, open(os.path.join(out, "config_sentence_transformers.json"), "w"))


def vectors(model, texts, prompt=""):
    out = model.encode(
        [prompt + t for t in texts],
        batch_size=4,
        convert_to_numpy=True,
        normalize_embeddings=False,
    )
    return [[float(x) for x in v] for v in out]


def main() -> None:
    out_dir = sys.argv[1]
    tokenizer_dir = sys.argv[2] if len(sys.argv) > 2 else os.environ["KB_MODEL_DIR"]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    rows = []
    for seed, (name, hidden, layers, heads, inter, pooling, normalize, max_len, legacy) in enumerate(
        FAMILIES
    ):
        hf = os.path.join(out_dir, "hf", name)
        random_encoder(hf, seed, hidden, layers, heads, inter)
        tokenizer.save_pretrained(hf)
        modules = [Transformer(hf, max_seq_length=max_len), Pooling(hidden, pooling_mode=pooling)]
        if normalize:
            modules.append(Normalize())
        path = os.path.join(out_dir, name)
        SentenceTransformer(modules=modules, device="cpu").save(path)
        if legacy:
            to_legacy(path, pooling, max_len)
        # The reference comes from the directory as saved, read back as any user would.
        model = SentenceTransformer(path, device="cpu")
        assert model.max_seq_length == max_len, (name, model.max_seq_length)
        assert isinstance(model[-1], Normalize) == normalize, name
        if legacy:
            query = model.encode_query(TEXTS, convert_to_numpy=True, normalize_embeddings=False)
            document = model.encode_document(TEXTS, convert_to_numpy=True, normalize_embeddings=False)
            assert (query == model.encode([DECLARED["query"] + t for t in TEXTS])).all(), name
            assert (document == model.encode([DECLARED["document"] + t for t in TEXTS])).all(), name
            prefixes = {"query_prefix": DECLARED["query"], "document_prefix": DECLARED["document"]}
            configured = None
        else:
            prefixes = dict(CONFIGURED)
            configured = dict(CONFIGURED)
        rows.append(
            {
                "name": name,
                "dir": path,
                "dim": hidden,
                "pooling": pooling,
                "normalize": normalize,
                "max_seq_length": model.max_seq_length,
                "configured": configured,
                "texts": TEXTS,
                "raw": vectors(model, TEXTS),
                "query": vectors(model, TEXTS, prefixes["query_prefix"]),
                "query_tokens": [
                    len(model.tokenizer(prefixes["query_prefix"] + t, truncation=False)["input_ids"])
                    for t in TEXTS
                ],
                "document": vectors(model, TEXTS, prefixes["document_prefix"]),
            }
        )
    shutil.rmtree(os.path.join(out_dir, "hf"))
    with open(os.path.join(out_dir, "families.json"), "w", encoding="utf-8") as f:
        json.dump({"models": rows}, f, ensure_ascii=False)
    print(f"wrote {len(rows)} models to {out_dir}")


if __name__ == "__main__":
    main()
