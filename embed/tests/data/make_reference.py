"""Writes reference.json: sentence-transformers' own fp32 CPU embeddings of fixed passages.

kb-embed's reference test compares its vectors with these, so the Rust encoder, pooling and
normalisation are checked against the implementation they must match. Run with the project
virtualenv (the model is the bundled all-MiniLM-L6-v2):

    HF_HUB_OFFLINE=1 .venv/bin/python embed/tests/data/make_reference.py "$(scripts/model-dir.sh)"
"""

import json
import os
import sys

from sentence_transformers import SentenceTransformer

LONG = " ".join(
    f"Paragraph {i}: the replication log is tailed by every replica, which applies records in "
    "order and acknowledges writes only after they are durable."
    for i in range(20)
)

PASSAGES = [
    "Hello world",
    "Kubernetes",
    "The quick brown fox jumps over the lazy dog.",
    "A StatefulSet keeps a stable network identity and persistent storage for each pod.",
    "Vector search finds the passages whose embeddings are closest to the query embedding.",
    "Redis Streams give an append-only log with consumer groups and trimming by id.",
    "Mean pooling averages the token embeddings, ignoring padding, before L2 normalisation.",
    "Café crème brûlée, naïve façade, jalapeño, Øresund, Straße.",
    "東京は日本の首都であり、世界最大の都市圏の一つです。",
    "Москва — столица России, крупнейший по численности населения город страны.",
    "Emoji in text: 🚀 launch, 🔥 hot path, ✅ done, 🤖 robots 😀.",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "SELECT id, text FROM passages WHERE collection = 'docs' ORDER BY id LIMIT 10;",
    "kubectl get knowledgebases -n prod -o jsonpath='{.items[*].status.conditions}'",
    "   leading and trailing whitespace   ",
    "UPPER CASE TEXT SHOULD BE LOWERCASED BY THE UNCASED TOKENIZER",
    "Numbers: 3.14159, 2.71828, 1e-12, 0x7fffffff, 1,000,000 and 42%.",
    "An operator reconciles the desired state in a custom resource with the objects that "
    "exist in the cluster, creating, updating and deleting children until they match, and "
    "reports what it observed in the status subresource with conditions and a generation.",
    "Snapshots are written to a temporary file, fsynced, then renamed, so a crash never "
    "leaves a half-written snapshot in place; each one records the last applied sequence.",
    "Short.",
    "Ünïcödé ständärd wörds mixed with ASCII words and some ℕ ∑ ∫ math symbols.",
    "GPU out of memory: split the batch in half and retry instead of failing the request.",
    LONG,
]


def main() -> None:
    model_dir = sys.argv[1] if len(sys.argv) > 1 else os.environ["KB_MODEL_DIR"]
    model = SentenceTransformer(model_dir, device="cpu")
    vectors = model.encode(PASSAGES, batch_size=8, convert_to_numpy=True, normalize_embeddings=False)
    tokenizer = model.tokenizer
    max_len = model.max_seq_length
    rows = []
    for text, vector in zip(PASSAGES, vectors):
        n_tokens = len(tokenizer(text, truncation=False)["input_ids"])
        rows.append(
            {
                "text": text,
                "tokens": min(n_tokens, max_len),
                "truncated": n_tokens > max_len,
                "vector": [float(x) for x in vector],
            }
        )
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"max_seq_length": max_len, "passages": rows}, f, ensure_ascii=False, indent=1)
    print(f"wrote {len(rows)} passages to {out}")


if __name__ == "__main__":
    main()
