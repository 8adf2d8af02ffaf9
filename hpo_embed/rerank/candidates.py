"""The bi-encoder's candidate lists: every query's top-k concepts with their scores and the
full (pessimistic) rank of its best expected concept, the inputs of the reranker stages.

Retrieval is the benchmark's (hpo_embed.retrieval.metrics): ``single`` = one vector per
concept (its English label), ``multi`` = one vector per English label and EXACT synonym, a
concept's score the maximum over its vectors. In ``multi`` mode a query that is an indexed
text of its own expected concept would find itself; it is dropped (the benchmark's rule).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from hpo_embed.common import UserError, write_json, write_parquet
from hpo_embed.embedding import cache_file, encode, encode_cached, model_hash, prune
from hpo_embed.models.loader import load_sentence_transformer
from hpo_embed.pairs.external_sets import external_files, load_external_set
from hpo_embed.retrieval import metrics as rm
from hpo_embed.retrieval.corpus import load_terms
from hpo_embed.retrieval.index import Index, build_index, self_matches
from hpo_embed.schemas import read_table

log = logging.getLogger("hpo_embed.rerank")

QUERY_BATCH = 256
COLUMNS = ("set", "lang", "query", "expected", "branch", "gold_rank", "cand_ids", "cand_scores")


def retrieve(index: Index, corpus_emb: torch.Tensor, query_emb: torch.Tensor, expected: list[list[str]],
             k: int) -> tuple[list[int], list[list[str]], list[list[float]]]:
    """Per query: the full rank of its best expected concept (pessimistic ties), the top-k
    concept ids and their scores."""
    pos = {c: i for i, c in enumerate(index.corpus_ids)}
    ranks, ids, scores = [], [], []
    n = len(index.corpus_ids)
    for start in tqdm(range(0, len(expected), QUERY_BATCH), desc="retrieve", unit="batch", leave=False):
        q = query_emb[start:start + QUERY_BATCH]
        s = q @ corpus_emb.T
        if index.mode == "multi":
            s = rm.concept_max(s, index.vec_concept, n)
        exp = [[pos[h] for h in e] for e in expected[start:start + QUERY_BATCH]]
        ranks += [p[0] for p in rm.expected_positions(s, exp)]
        top_i, top_s = rm.top_k(s, k)
        ids += [[index.corpus_ids[j] for j in row] for row in top_i.tolist()]
        scores += [[round(float(x), 6) for x in row] for row in top_s.tolist()]
    return ranks, ids, scores


def candidate_table(index: Index, corpus_emb: torch.Tensor, query_emb: torch.Tensor, meta: pd.DataFrame,
                    k: int, branch_of: dict[str, str]) -> pd.DataFrame:
    """``meta`` (columns set, lang, query, expected) + branch (of the first expected concept),
    gold_rank, cand_ids, cand_scores."""
    expected = [list(e) for e in meta["expected"]]
    ranks, ids, scores = retrieve(index, corpus_emb, query_emb, expected, k)
    out = meta[["set", "lang", "query"]].reset_index(drop=True).copy()
    out["expected"] = expected
    out["branch"] = [branch_of.get(e[0], "") for e in expected]
    out["gold_rank"] = np.asarray(ranks, dtype=np.int64)
    out["cand_ids"] = ids
    out["cand_scores"] = scores
    return out[list(COLUMNS)]


def sample_rows(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    return df.sample(n=n, random_state=seed) if n is not None and len(df) > n else df


def sample_by_lang(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` rows, languages as balanced as they allow: each language gets up to ``n //
    languages`` rows, the rest is filled at random (German has far fewer translations than
    Spanish and would otherwise be a handful of queries)."""
    if len(df) <= n:
        return df.sample(frac=1.0, random_state=seed)
    langs = sorted(df["lang"].unique())
    share = n // len(langs)
    first = pd.concat([sample_rows(df[df["lang"] == lang], share, seed) for lang in langs])
    rest = df.drop(first.index)
    fill = rest.sample(n=n - len(first), random_state=seed) if n > len(first) else rest.iloc[:0]
    return pd.concat([first, fill]).sample(frac=1.0, random_state=seed)


TRAIN_PAIR_TYPES = ("term_syn", "xl_term")   # short label/synonym texts (no definitions)


def train_queries(train_pairs: pd.DataFrame, split_of: dict[str, str], index: Index, n: int, seed: int) -> pd.DataFrame:
    """Training queries: label/synonym texts (every language) of TRAIN-split concepts from the
    pairs' anchors and positives, minus the concept's own English label/EXACT synonyms
    (trivial), deduplicated, ``n`` sampled (languages balanced, ``sample_by_lang``). Columns set='train', lang, query, expected."""
    df = train_pairs[train_pairs["pair_type"].isin(TRAIN_PAIR_TYPES)] if "pair_type" in train_pairs else train_pairs
    parts = [df[["anchor", "lang_anchor", "hpo_id"]].set_axis(["query", "lang", "hpo_id"], axis=1),
             df[["positive", "lang_positive", "hpo_id"]].set_axis(["query", "lang", "hpo_id"], axis=1)]
    q = pd.concat(parts, ignore_index=True).drop_duplicates(["query", "hpo_id"])
    q = q[q["hpo_id"].map(split_of) == "train"]
    q = q[q["hpo_id"].isin(set(index.corpus_ids))].sort_values(["hpo_id", "query"]).reset_index(drop=True)
    q["expected"] = [[h] for h in q["hpo_id"]]
    q = q[~self_matches(index, q["query"].tolist(), q["expected"].tolist(), always=True)]
    q = sample_by_lang(q, n, seed)
    return q.assign(set="train")[["set", "lang", "query", "expected"]].reset_index(drop=True)


def dev_queries(queries: pd.DataFrame, index: Index, n: int, seed: int) -> pd.DataFrame:
    """Two disjoint random samples of ``n`` dev-split queries (self-matches dropped; languages
    balanced, ``sample_by_lang``):
    ``dev_eval`` (checkpoint selection while training) and ``dev`` (calibration)."""
    d = queries[queries["split"] == "dev"].drop_duplicates(["text", "hpo_id"])
    d = d[d["hpo_id"].isin(set(index.corpus_ids))].sort_values(["hpo_id", "text"]).reset_index(drop=True)
    exp = [[h] for h in d["hpo_id"]]
    d = d.assign(expected=exp)[~self_matches(index, d["text"].tolist(), exp)]
    d = sample_by_lang(d, 2 * n, seed).reset_index(drop=True)
    d["set"] = ["dev_eval" if i % 2 else "dev" for i in range(len(d))]
    return d.rename(columns={"text": "query"})[["set", "lang", "query", "expected"]]


def heldout_queries(queries: pd.DataFrame, index: Index, n_per_lang: int | None, seed: int) -> pd.DataFrame:
    """Test-split queries per language (self-matches dropped), ``n_per_lang`` sampled each."""
    t = queries[queries["split"] == "test"]
    t = t[t["hpo_id"].isin(set(index.corpus_ids))].sort_values(["lang", "hpo_id", "text"]).reset_index(drop=True)
    exp = [[h] for h in t["hpo_id"]]
    t = t.assign(expected=exp)[~self_matches(index, t["text"].tolist(), exp)]
    parts = [sample_rows(g, n_per_lang, seed) for _, g in t.groupby("lang", sort=True)]
    out = pd.concat(parts, ignore_index=True) if parts else t.iloc[:0]
    return out.assign(set="heldout").rename(columns={"text": "query"})[["set", "lang", "query", "expected"]]


def external_queries(sets: list, index: Index, lang: str = "de") -> pd.DataFrame:
    """phentrieve-format sets (hpo_embed.pairs.external_sets.QuerySet; the pinned files are German:
    ``lang``), self-matches dropped; a set with the same cases as an earlier one is skipped."""
    rows, seen = [], set()
    for qs in sets:
        key = (tuple(qs.texts), tuple(map(tuple, qs.expected)))
        if key in seen:
            continue
        seen.add(key)
        keep = ~self_matches(index, qs.texts, qs.expected)
        rows += [{"set": qs.set, "lang": lang, "query": t, "expected": list(e)}
                 for t, e, k in zip(qs.texts, qs.expected, keep) if k]
    return pd.DataFrame(rows, columns=["set", "lang", "query", "expected"])


def write_table(df: pd.DataFrame, path: Path) -> None:
    write_parquet(path, pa.Table.from_pandas(df, preserve_index=False))


def query_table(params, index: Index, pairs: Path, all_terms: pd.DataFrame) -> pd.DataFrame:
    """Every query the reranker stages use: train, dev (two samples), held-out, external."""
    p = params.rerank
    replaced_by = {r["id"]: r["replaced_by"] for r in all_terms[["id", "replaced_by"]].to_dict("records")
                   if r["replaced_by"]}
    queries = read_table(pairs / "queries.parquet", "queries")
    concepts = read_table(pairs / "concepts.parquet", "concepts")
    split_of = dict(zip(concepts["hpo_id"], concepts["split"]))
    ext = [load_external_set(path, set(index.corpus_ids), replaced_by)
           for _, path in external_files(params.benchmark.external_sets)]
    meta = pd.concat([train_queries(read_table(pairs / "train.parquet", "pairs"), split_of, index, p.train_queries,
                                    p.seed),
                      dev_queries(queries, index, p.dev_queries, p.seed),
                      heldout_queries(queries, index, p.test_queries, p.seed),
                      external_queries(ext, index)], ignore_index=True)
    if (meta["set"] == "train").sum() == 0:
        raise UserError(f"{pairs / 'train.parquet'}: no label/synonym texts of train-split concepts")
    log.info("queries: %s", meta.groupby(["set", "lang"]).size().to_dict())
    return meta


def run(params, model_dir: Path, pairs: Path, terms_path: Path, out: Path, info: Path) -> None:
    """The rerank_candidates stage: an empty table when ``rerank.enabled`` is false."""
    p = params.rerank
    if not p.enabled:
        write_table(pd.DataFrame(columns=list(COLUMNS)), out)
        write_json(info, {"enabled": False, "note": "rerank.enabled is false; set it to true and dvc repro"})
        log.info("rerank.enabled is false: wrote an empty %s", out)
        return
    t0 = time.time()
    all_terms = load_terms(terms_path, selected_only=False)
    terms = all_terms[all_terms["selected"]].reset_index(drop=True)
    index = build_index(terms, p.retrieval)
    meta = query_table(params, index, pairs, all_terms)
    if not (model_dir / "modules.json").is_file():
        raise UserError(f"{model_dir}: no SentenceTransformer model; run the train stage first (dvc repro train)")
    model = load_sentence_transformer(model_dir, str(model_dir), device="cpu", local_files_only=True)
    model.max_seq_length = params.benchmark.max_seq_length or model.max_seq_length
    bs, t1 = params.benchmark.batch_size, time.time()
    c_file = cache_file(out.parent / "cache", model_hash(model_dir, model.max_seq_length), index.texts, "corpus")
    corpus_emb = torch.from_numpy(encode_cached(model, index.texts, c_file, bs, "corpus"))
    prune(c_file.parent, {c_file.name})
    t2 = time.time()
    query_emb = torch.from_numpy(encode(model, meta["query"].tolist(), bs, progress=len(meta) > bs))
    t3 = time.time()
    table = candidate_table(index, corpus_emb, query_emb, meta, p.k, dict(zip(terms["id"], terms["branch"])))
    write_table(table, out)
    counts = {f"{s}.{lang}": int(n) for (s, lang), n in table.groupby(["set", "lang"]).size().items()}
    write_json(info, {"enabled": True, "retrieval": p.retrieval, "k": p.k, "vectors": len(index.texts),
                      "queries": counts, "gold_in_top_k": {s: round(float((g["gold_rank"] <= p.k).mean()), 4)
                                                           for s, g in table.groupby("set")},
                      "encode_corpus_s": round(t2 - t1, 1), "encode_queries_s": round(t3 - t2, 1),
                      "wall_s": round(time.time() - t0, 1)})
    log.info("%d queries x top-%d -> %s (corpus %d vectors encoded in %.0fs)", len(table), p.k, out,
             len(index.texts), t2 - t1)
