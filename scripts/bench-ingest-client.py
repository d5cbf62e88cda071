#!/usr/bin/env python3
"""The client of scripts/bench-ingest-peer.sh: posts the first --docs passages of a JSONL
corpus to URL/v1/collections/ingest/documents as {"documents": [{"id", "text"}]} in
batches of --batch, from --clients threads at once (standard library only), and prints
one JSON line: documents, seconds from the first request to the last answer,
documents/s, requests/s and the p50/p99 of the requests' latency. Any answer other than
2xx stops it with an error."""

import argparse
import concurrent.futures
import json
import time
import urllib.request


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--service", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()
    passages = []
    with open(args.corpus) as f:
        for line in f:
            if len(passages) == args.docs:
                break
            if line.strip():
                passages.append(json.loads(line)["text"])
    batches = [
        [{"id": f"p{i + j}", "text": t} for j, t in enumerate(passages[i : i + args.batch])]
        for i in range(0, len(passages), args.batch)
    ]
    url = f"{args.url}/v1/collections/ingest/documents"

    def post(documents):
        body = json.dumps({"documents": documents}).encode()
        request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=600) as answer:
            answer.read()
        return time.perf_counter() - started

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
        latencies = sorted(pool.map(post, batches))
    seconds = time.perf_counter() - started
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    print(json.dumps({
        "bench": "ingest", "service": args.service, "documents": len(passages),
        "batch": args.batch, "clients": args.clients, "seconds": round(seconds, 3),
        "documents_per_s": round(len(passages) / seconds, 1),
        "requests_per_s": round(len(batches) / seconds, 2),
        "p50_ms": round(pick(0.50) * 1000, 1), "p99_ms": round(pick(0.99) * 1000, 1),
    }), flush=True)


if __name__ == "__main__":
    main()
