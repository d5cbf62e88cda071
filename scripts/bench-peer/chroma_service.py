"""The peer of the text-query benchmark: FastAPI + sentence-transformers + ChromaDB,
speaking kb-worker's query route so that `kb-worker bench query` drives both alike.

    KB_MODEL_DIR=... CORPUS=... DOCS=1000 uvicorn chroma_service:app --port 18500

Loads the model once, embeds the first DOCS passages of CORPUS into an in-memory Chroma
collection (cosine, exact search is not available in Chroma: HNSW), then answers
POST /v1/collections/{name}/query {"query", "top_k"} with {"hits": [...], "cache": "miss"},
and POST /v1/collections/{name}/documents {"documents": [{"id", "text"}]} by embedding the
texts (batch 32) and adding them to a collection of that name (for the ingestion
benchmark, scripts/bench-ingest-peer.sh). Sync endpoints run on FastAPI's thread pool, as
such services usually do.
"""

import json
import os

import chromadb
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer

model = SentenceTransformer(os.environ["KB_MODEL_DIR"], device="cpu")
client = chromadb.EphemeralClient()
collection = client.create_collection("bench", metadata={"hnsw:space": "cosine"})

with open(os.environ["CORPUS"]) as f:
    passages = [json.loads(line)["text"] for _, line in zip(range(int(os.environ.get("DOCS", "1000"))), f)]
vectors = model.encode(passages, batch_size=32, normalize_embeddings=True)
collection.add(ids=[str(i) for i in range(len(passages))], embeddings=vectors.tolist(), documents=passages)

app = FastAPI()


class Query(BaseModel):
    query: str
    top_k: int = 10
    include_text: bool = True


@app.post("/v1/collections/{name}/query")
def query(name: str, q: Query):
    vector = model.encode([q.query], normalize_embeddings=True)
    found = collection.query(query_embeddings=vector.tolist(), n_results=q.top_k)
    hits = [
        {"document_id": i, "score": 1.0 - d}
        for i, d in zip(found["ids"][0], found["distances"][0])
    ]
    return {"hits": hits, "cache": "miss"}


class Document(BaseModel):
    id: str
    text: str


class Documents(BaseModel):
    documents: list[Document]


@app.post("/v1/collections/{name}/documents")
def ingest(name: str, body: Documents):
    target = client.get_or_create_collection(name, metadata={"hnsw:space": "cosine"})
    texts = [d.text for d in body.documents]
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True)
    target.upsert(ids=[d.id for d in body.documents], embeddings=vectors.tolist(), documents=texts)
    return {"documents": len(texts)}


@app.get("/readyz")
def ready():
    return {"status": "ready"}
