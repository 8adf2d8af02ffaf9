"""Stage rerank_candidates: the fine-tuned bi-encoder's top-k candidates for the reranker's
train / dev / held-out queries and the phentrieve files (hpo_embed.rerank.candidates).

``python -m stages.rerank_candidates --model models/finetuned --pairs data/pairs
--terms data/hpo/terms.parquet --out data/rerank/candidates.parquet``
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pandas as pd

from hpo_embed.common import UserError, atomic_write_bytes, run_stage, write_json
from hpo_embed.models.loader import load_sentence_transformer
from stages import parser

log = logging.getLogger("hpo_embed.rerank")


def parse_args(argv=None) -> argparse.Namespace:
    return parser("rerank_candidates", __doc__, {
        "model": "SentenceTransformer folder (models/finetuned)",
        "pairs": "folder with train/queries/concepts.parquet",
        "terms": "terms",
        "out": "candidates parquet",
        "info": "counts and timings (JSON)",
    }).parse_args(argv)


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    import io
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def main(argv=None) -> None:
    a = parse_args(argv)
    from hpo_embed.params import load_params
    params = load_params(a.params)
    p = params.rerank
    from hpo_embed.rerank import candidates as C
    if not p.enabled:
        write_parquet(pd.DataFrame(columns=list(C.COLUMNS)), a.out)
        write_json(a.info, {"enabled": False, "note": "rerank.enabled is false; set it to true and dvc repro"})
        log.info("rerank.enabled is false: wrote an empty %s", a.out)
        return
    t0 = time.time()
    from hpo_embed.retrieval.corpus import load_terms
    from hpo_embed.schemas import read_table
    from hpo_embed.pairs.external_sets import external_files, load_external_set

    all_terms = load_terms(a.terms, selected_only=False)
    terms = all_terms[all_terms["selected"]].reset_index(drop=True)
    index = C.build_index(terms, p.retrieval)
    ids = set(index.corpus_ids)
    replaced_by = {r["id"]: r["replaced_by"] for r in all_terms[["id", "replaced_by"]].to_dict("records")
                   if r["replaced_by"]}
    queries = read_table(a.pairs / "queries.parquet", "queries")
    train_pairs = read_table(a.pairs / "train.parquet", "pairs")
    concepts = read_table(a.pairs / "concepts.parquet", "concepts")
    split_of = dict(zip(concepts["hpo_id"], concepts["split"]))
    ext = [load_external_set(path, ids, replaced_by) for _, path in external_files(params.benchmark.external_sets)]
    meta = pd.concat([C.train_queries(train_pairs, split_of, index, p.train_queries, p.seed),
                      C.dev_queries(queries, index, p.dev_queries, p.seed),
                      C.heldout_queries(queries, index, p.test_queries, p.seed),
                      C.external_queries(ext, index)], ignore_index=True)
    if (meta["set"] == "train").sum() == 0:
        raise UserError(f"{a.pairs / 'train.parquet'}: no label/synonym texts of train-split concepts")
    log.info("queries: %s", meta.groupby(["set", "lang"]).size().to_dict())
    if not (a.model / "modules.json").is_file():
        raise UserError(f"{a.model}: no SentenceTransformer model; run the train stage first (dvc repro train)")
    model = load_sentence_transformer(a.model, str(a.model), device="cpu", local_files_only=True)
    model.max_seq_length = params.benchmark.max_seq_length or model.max_seq_length
    t1 = time.time()
    files = [f for f in a.model.rglob("*") if f.is_file() and f.suffix in (".json", ".safetensors")]
    corpus_emb = C.cached_encode(model, index.texts, a.out.parent / "cache", files, params.benchmark.batch_size,
                                 "corpus")
    t2 = time.time()
    query_emb = C.encode(model, meta["query"].tolist(), params.benchmark.batch_size, "queries")
    t3 = time.time()
    branch_of = dict(zip(terms["id"], terms["branch"]))
    table = C.candidate_table(index, corpus_emb, query_emb, meta, p.k, branch_of)
    write_parquet(table, a.out)
    counts = {f"{s}.{lang}": int(n) for (s, lang), n in table.groupby(["set", "lang"]).size().items()}
    write_json(a.info, {"enabled": True, "retrieval": p.retrieval, "k": p.k, "vectors": len(index.texts),
                        "queries": counts, "gold_in_top_k": {s: round(float((g["gold_rank"] <= p.k).mean()), 4)
                                                             for s, g in table.groupby("set")},
                        "encode_corpus_s": round(t2 - t1, 1), "encode_queries_s": round(t3 - t2, 1),
                        "wall_s": round(time.time() - t0, 1)})
    log.info("%d queries x top-%d -> %s (corpus %d vectors encoded in %.0fs)", len(table), p.k, a.out,
             len(index.texts), t2 - t1)


if __name__ == "__main__":
    run_stage(main)
