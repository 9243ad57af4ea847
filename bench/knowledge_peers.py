#!/usr/bin/env python3
"""Peers of maasbox's knowledge index on the data `maasbox-bench knowledge` wrote to DIR:
faiss-cpu IndexFlatIP over the same vectors (exact inner product, like maasbox's vector search)
and bm25s (Lucene BM25, k1=1.5, b=0.75, the same English stop words) over the same texts.
Prints one table: latency p50/p95 beside maasbox's, maasbox's vector top-10 overlap with
faiss, and its keyword top-10 overlap with bm25s on the English queries.

    python bench/knowledge_peers.py DIR [THREADS]
"""

import json
import sys
import time
from pathlib import Path

import bm25s
import faiss
import numpy as np


def pct(v, p):
    v = sorted(v)
    i = max(1, int(np.ceil(p / 100 * len(v)))) - 1
    return v[min(i, len(v) - 1)]


def main() -> None:
    d = Path(sys.argv[1])
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    faiss.omp_set_num_threads(threads)
    ours = json.loads((d / "ours.json").read_text())
    texts = [json.loads(l) for l in (d / "texts.jsonl").read_text().splitlines()]
    vecs = np.fromfile(d / "vectors.f32", dtype="<f4").reshape(len(texts), -1)
    queries = [json.loads(l) for l in (d / "queries.jsonl").read_text().splitlines()]
    stop = json.loads((d / "stopwords.json").read_text())

    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    faiss_ms, overlap_vec = [], []
    for q in queries:
        qv = np.asarray([q["vector"]], dtype="float32")
        t = time.perf_counter()
        _, ids = index.search(qv, 10)
        faiss_ms.append((time.perf_counter() - t) * 1000)
        overlap_vec.append(len(set(ids[0].tolist()) & set(q["vector_top"])) / 10)

    t = time.perf_counter()
    corpus_tokens = bm25s.tokenize(texts, stopwords=stop, show_progress=False)
    retriever = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    retriever.index(corpus_tokens, show_progress=False)
    bm25_index_s = time.perf_counter() - t
    bm25_ms, overlap_kw = [], []
    for q in queries:
        if q["lang"] != "en":
            continue
        t = time.perf_counter()
        qt = bm25s.tokenize([q["text"]], stopwords=stop, show_progress=False)
        docs, scores = retriever.retrieve(qt, k=10, show_progress=False, n_threads=1)
        bm25_ms.append((time.perf_counter() - t) * 1000)
        theirs = set(int(x) for x, s in zip(docs[0], scores[0]) if s > 0)
        mine = set(q["keyword"])
        if theirs or mine:
            overlap_kw.append(len(theirs & mine) / max(len(theirs), len(mine)))

    lat = ours["latency_ms"]
    n = ours["chunks"]
    print(f"\n### Knowledge index, {n} chunks (70% English, 30% Chinese), {ours['threads']} threads\n")
    print(f"Ingest (embed with all-MiniLM-L6-v2 + index + sled commit): {ours['ingest_chunks_per_s']:.0f} chunks/s "
          f"({ours['tokens'] / ours['ingest_s']:.0f} tokens/s); bm25s indexing alone: {n / bm25_index_s:.0f} chunks/s\n")
    print("| search (top 10)                  | maasbox p50 | maasbox p95 | peer p50 | peer p95 | peer |")
    print("|----------------------------------|------------:|------------:|---------:|---------:|------|")
    rows = [
        ("keyword (BM25, jieba)", "keyword", bm25_ms, "bm25s (English queries)"),
        ("vector (exact inner product)", "vector", faiss_ms, "faiss IndexFlatIP"),
        ("hybrid (RRF of both)", "hybrid", None, ""),
        ("query embedding", "embed", None, ""),
        ("vector incl. query embedding", "vector+embed", None, ""),
        ("hybrid incl. query embedding", "hybrid+embed", None, ""),
    ]
    for label, key, peer, name in rows:
        p = f"{pct(peer, 50):8.2f} | {pct(peer, 95):8.2f}" if peer else "       – |        –"
        print(f"| {label:<32} | {lat[key]['p50']:11.2f} | {lat[key]['p95']:11.2f} | {p} | {name} |")
    print(f"\nvector top-10 overlap with faiss (recall@10 of exact search): {np.mean(overlap_vec):.3f}")
    print(f"keyword top-10 agreement with bm25s, English queries: {np.mean(overlap_kw):.3f} ({len(overlap_kw)} queries)")


if __name__ == "__main__":
    main()
