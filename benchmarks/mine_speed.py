"""Speed of hard-negative mining on the real data (issue 15 target: every training anchor
against the full corpus in <= 2 minutes on 2 cores).

Runs ``hpo_embed.negatives.mining.mine`` with the params.yaml ``mine:`` section on the
train stage's rows (data/pairs, data/hpo, models/base must exist), torch pinned to
``--threads`` threads, and prints the breakdown: guard construction, encoding (corpus +
anchors + positives not in the corpus) and the search + selection, plus the search alone
repeated with exact torch matmul/topk (faiss is not installed here; see docs/negatives.md).

    .venv/bin/python benchmarks/mine_speed.py [--threads 2] [--sources model,ontology]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sources", default=None, help="override mine.sources, e.g. model or ontology,model")
    a = ap.parse_args()
    import numpy as np
    import pandas as pd
    import torch
    torch.set_num_threads(a.threads)
    from sentence_transformers import SentenceTransformer

    from hpo_embed.negatives.anchors import select_training_rows
    from hpo_embed.negatives.mining import embed, guard_indices, mine, model_candidates
    from hpo_embed.negatives.training import mining_inputs
    from stages.params import load_params

    params = load_params(ROOT / "params.yaml")
    m = params.mine.mining()
    if a.sources:
        m = m.model_copy(update={"sources": a.sources.split(",")})
    t = time.time()
    pairs = pd.read_parquet(ROOT / "data/pairs/train.parquet")
    rows, _ = select_training_rows(pairs, params.train.pair_types, params.train.max_train_pairs, params.train.seed)
    corpus, texts, onto = mining_inputs(pd.read_parquet(ROOT / "data/hpo/terms.parquet"),
                                        pd.read_parquet(ROOT / "data/hpo/edges.parquet"),
                                        pd.read_parquet(ROOT / "data/pairs/concepts.parquet"), pairs, m.corpus_format)
    load_s = time.time() - t
    model = SentenceTransformer(str(ROOT / "models/base"), device="cpu")
    model.max_seq_length = params.train.max_seq_length
    t = time.time()
    df, report = mine(rows[["anchor", "positive", "hpo_id"]], corpus, texts, onto, m, model=model, progress=True)
    total = time.time() - t
    # the exact search alone, on embeddings already computed
    c_emb = embed(model, corpus.texts[:1], 8)  # warm
    a_emb = np.random.default_rng(0).standard_normal((len(rows), c_emb.shape[1])).astype(np.float32)
    c_emb = np.random.default_rng(1).standard_normal((len(corpus), c_emb.shape[1])).astype(np.float32)
    guards = [guard_indices(x, y, z, corpus, texts, onto, m.ontology_family)
              for x, y, z in zip(rows["anchor"], rows["positive"], rows["hpo_id"])]
    at, ct = torch.from_numpy(a_emb), torch.from_numpy(c_emb)
    t = time.time()
    model_candidates(lambda s, e: at[s:e] @ ct.T, np.ones(len(rows)), guards, m)
    search_only = time.time() - t
    out = {"threads": a.threads, "anchors": len(rows), "corpus_texts": len(corpus), "sources": m.sources,
           "load_inputs_s": round(load_s, 1), "mine_total_s": round(total, 1), "breakdown_s": report["seconds"],
           "exact_search_only_s": round(search_only, 2), "by_source": report["by_source"],
           "guard_removed": report["guard_removed"], "margin_removed": report["margin_removed"]}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
