"""Real OpenAI-API clients against a running kb-worker: openai-python and LangChain's
OpenAIEmbeddings, unchanged, pointed at the worker's /v1. Exits non-zero on the first
difference. Run by worker/tests/openai_clients.rs with KB_URL, KB_KEY and KB_MODEL_DIR."""

import base64
import math
import os
import struct

import openai
from langchain_openai import OpenAIEmbeddings
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

URL = os.environ["KB_URL"] + "/v1"
KEY = os.environ["KB_KEY"]
MODEL_DIR = os.environ["KB_MODEL_DIR"]
MODEL = "all-MiniLM-L6-v2"
TEXTS = ["replicas apply the write-ahead log in order", "a snapshot bounds recovery time"]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def same(a, b, what, at_least=0.9999):
    assert len(a) == len(b), f"{what}: {len(a)} vs {len(b)} dimensions"
    c = cosine(a, b)
    assert c >= at_least, f"{what}: cosine {c}"


def expect_400(what, call, needle):
    try:
        call()
    except openai.BadRequestError as e:
        body = e.body if isinstance(e.body, dict) else {}
        message = str(body.get("message", "")) + str(e)
        assert needle in message, f"{what}: 400 without {needle!r}: {message}"
        return
    raise AssertionError(f"{what}: expected a 400")


client = openai.OpenAI(base_url=URL, api_key=KEY, max_retries=0)
reference = SentenceTransformer(MODEL_DIR, device="cpu").encode(TEXTS, normalize_embeddings=True)

# The client's default request (openai-python asks for base64 and decodes it itself).
default = client.embeddings.create(model=MODEL, input=TEXTS)
assert default.model == MODEL, default.model
assert [d.index for d in default.data] == [0, 1]
assert default.usage.prompt_tokens > 0
for d, ref in zip(default.data, reference):
    same(d.embedding, ref.tolist(), "default (base64) vs sentence-transformers", 0.999)

as_float = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
# Asked for explicitly, base64 comes back as the string: little-endian float32s.
explicit_b64 = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="base64")
for f, b, d in zip(as_float.data, explicit_b64.data, default.data):
    raw = base64.b64decode(b.embedding)
    decoded = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    same(f.embedding, d.embedding, "float vs base64")
    same(decoded, f.embedding, "explicit base64 vs float")

one = client.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float")
same(one.data[0].embedding, as_float.data[0].embedding, "a single string")

# Token ids of the served model's own tokenizer, one list or many.
tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
ids = [tokenizer.encode(t, add_special_tokens=False) for t in TEXTS]
from_ids = client.embeddings.create(model=MODEL, input=ids[0], encoding_format="float")
same(from_ids.data[0].embedding, as_float.data[0].embedding, "token ids")
from_lists = client.embeddings.create(model=MODEL, input=ids)
for got, want in zip(from_lists.data, as_float.data):
    same(got.embedding, want.embedding, "token-id lists")
expect_400("ids outside the vocabulary (tiktoken's)", lambda: client.embeddings.create(model=MODEL, input=[100257, 9906]), "vocabulary")

# dimensions: the model's own is accepted, a shorter one is refused with the reason.
native = client.embeddings.create(model=MODEL, input=TEXTS[0], dimensions=384, encoding_format="float")
same(native.data[0].embedding, as_float.data[0].embedding, "dimensions=384")
expect_400("dimensions=128", lambda: client.embeddings.create(model=MODEL, input=TEXTS[0], dimensions=128), "dimensions")
expect_400("encoding_format=int8", lambda: client.embeddings.create(model=MODEL, input="x", encoding_format="int8"), "encoding_format")

assert [m.id for m in client.models.list()] == [MODEL]

# LangChain, configured as its docs say for OpenAI-compatible providers (raw text).
lc = OpenAIEmbeddings(model=MODEL, base_url=URL, api_key=KEY, check_embedding_ctx_length=False, max_retries=0)
for got, want in zip(lc.embed_documents(TEXTS), as_float.data):
    same(got, want.embedding, "LangChain embed_documents")
same(lc.embed_query(TEXTS[0]), as_float.data[0].embedding, "LangChain embed_query")

# LangChain keeping its context-length chunking, with the served model's tokenizer.
chunked = OpenAIEmbeddings(model=MODEL_DIR, base_url=URL, api_key=KEY, tiktoken_enabled=False, max_retries=0)
for got, want in zip(chunked.embed_documents(TEXTS), as_float.data):
    same(got, want.embedding, "LangChain with the model's tokenizer", 0.999)

print("openai-python and LangChain: all checks passed")
