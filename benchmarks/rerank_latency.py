"""Latency of reranking k candidates for one query on a few CPU threads: the PyTorch
CrossEncoder vs its ONNX INT8 export (issue 18, deployment).

    .venv/bin/python benchmarks/rerank_latency.py [--model models/reranker/model]
        [--onnx models/reranker/onnx] [--preset avx512_vnni] [--candidates data/rerank/candidates.parquet]
        [--terms data/hpo/terms.parquet] [--k 20] [--threads 2] [--queries 50] [--warmup 5] [--out FILE.json]

Each timed call is one ``predict`` of the (query, candidate label) pairs of one real
held-out query's top-k list (one batch of k pairs), as a service would rerank one request.
Both models see the same queries in an interleaved order; p50 / p95 / mean milliseconds
are printed (and written as JSON with ``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("models/reranker/model"))
    ap.add_argument("--onnx", type=Path, default=Path("models/reranker/onnx"))
    ap.add_argument("--preset", default="avx512_vnni")
    ap.add_argument("--candidates", type=Path, default=Path("data/rerank/candidates.parquet"))
    ap.add_argument("--terms", type=Path, default=Path("data/hpo/terms.parquet"))
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    import numpy as np
    import pandas as pd
    import torch

    from hpo_embed.rerank.export import load_int8
    from hpo_embed.rerank.model import load_cross_encoder
    from hpo_embed.retrieval.corpus import build_corpus, load_terms

    torch.set_num_threads(a.threads)
    docs = build_corpus(load_terms(a.terms), "label")
    cands = pd.read_parquet(a.candidates)
    held = cands[cands["set"] == "heldout"].sample(n=a.queries + a.warmup, random_state=0)
    lists = [[(r.query, docs[c]) for c in list(r.cand_ids)[:a.k]] for r in held.itertuples(index=False)]
    models = {"pytorch_fp32": load_cross_encoder(str(a.model), a.max_length),
              "onnx_int8": load_int8(a.onnx, a.preset, a.threads, a.max_length)}
    times: dict[str, list[float]] = {m: [] for m in models}
    for i, pairs in enumerate(lists):
        for name, model in (models.items() if i % 2 else reversed(list(models.items()))):
            t = time.perf_counter()
            model.predict(pairs, batch_size=a.k, show_progress_bar=False)
            if i >= a.warmup:
                times[name].append((time.perf_counter() - t) * 1000)
    out = {"k": a.k, "threads": a.threads, "queries": a.queries, "max_length": a.max_length,
           "cpu": os.uname().machine, **{name: {"p50_ms": round(float(np.percentile(v, 50)), 1),
                                               "p95_ms": round(float(np.percentile(v, 95)), 1),
                                               "mean_ms": round(float(np.mean(v)), 1)} for name, v in times.items()}}
    print(json.dumps(out, indent=2))
    if a.out:
        a.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
