"""The dev sample: the non-English dev queries of data/pairs/queries.parquet against the
dev concepts' English documents plus random distractors. The train stage evaluates on it;
the base_model stage chooses the prompt on a smaller cut of it."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from hpo_embed.common import UserError

log = logging.getLogger("hpo_embed.dev_set")



def dev_eval_set(queries: pd.DataFrame, corpus: dict[str, str], p, qpath: Path):
    """(queries, corpus, relevant, info) for InformationRetrievalEvaluator: non-English dev
    queries, or English synonyms when there are none (offline default without translations)."""
    dev = queries[queries["split"] == "dev"]
    dev = dev[dev["hpo_id"].isin(corpus.keys())]
    chosen = dev[dev["lang"] != "en"]
    fallback = chosen.empty
    if fallback:
        chosen = dev[dev["lang"] == "en"]
        log.warning("no non-English dev queries in %s: evaluating on English synonyms instead", qpath)
    if chosen.empty:
        raise UserError(f"{qpath}: no dev queries whose concept is in the corpus")
    chosen = chosen.drop_duplicates(["text", "hpo_id"])
    if p.dev_max_queries and len(chosen) > p.dev_max_queries:
        chosen = chosen.sample(n=p.dev_max_queries, random_state=p.seed)
    chosen = chosen.sort_values(["hpo_id", "text"]).reset_index(drop=True)
    q = {f"q{i}": t for i, t in enumerate(chosen["text"])}
    rel = {f"q{i}": {c} for i, c in enumerate(chosen["hpo_id"])}
    if p.dev_corpus_size and len(corpus) > p.dev_corpus_size:
        needed = set(chosen["hpo_id"])
        others = sorted(set(corpus) - needed)
        k = max(0, p.dev_corpus_size - len(needed))
        keep = needed | set(np.random.default_rng(p.seed).choice(others, size=min(k, len(others)), replace=False))
        corpus = {c: d for c, d in corpus.items() if c in keep}
    info = {"queries": len(q), "corpus": len(corpus), "concepts": int(chosen["hpo_id"].nunique()),
            "query_langs": sorted(chosen["lang"].unique().tolist()), "fallback_english": fallback}
    return q, corpus, rel, info
