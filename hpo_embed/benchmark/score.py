"""Scoring query sets against an index: per-query rows, summaries with CIs, paired
comparisons, headline figures, HR@K curves."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from hpo_embed.benchmark.inputs import PIPELINE_MODELS, RETRIEVALS
from hpo_embed.common import atomic_write_text, publish_dir, temp_sibling
from hpo_embed.pairs.external_sets import QuerySet
from hpo_embed.params import BenchmarkParams
from hpo_embed.retrieval import metrics as rm

HEADLINE_METRICS = ("mrr", "hr@1", "hr@10", "maxontsim@5")


HEADLINE_MRR_ONLY = ("int8",)       # int8 vs fp32 is detailed by the quantize stage


COMPARISON_METRICS = ("mrr", "hr@1")   # extra models (comparison rows): two figures in the headline


# what fine-tuning buys (difference and p), what INT8 costs (difference and its 95% CI)
HEADLINE_DIFFS = {"finetuned_vs_base": ("mrr_diff", "p_value"),
                  "int8_vs_finetuned": ("mrr_diff", "mrr_diff_ci_low", "mrr_diff_ci_high")}


TOP_N = 10          # retrieved ids kept per query (per_query.parquet)


CURVE_KS = tuple(range(1, 11))


QUERY_BATCH = 256   # queries scored against the whole corpus at once


COMPARISONS = (("finetuned", "base"), ("int8", "finetuned"))


def score_set(corpus_emb: torch.Tensor, query_emb: torch.Tensor, qs: QuerySet, id_index: dict[str, int],
              corpus_ids: list[str], ontsim: rm.OntologySimilarity, vec_concept: torch.Tensor | None = None,
              keep: list[int] | None = None) -> list[dict]:
    """Per-query rows: rank, positions, top-10 ids/scores and metric values. ``corpus_emb``
    holds one vector per concept, or several (``vec_concept``: each vector's concept
    index; a concept's score is the max over its vectors). ``keep``: the query indices
    scored (default: all)."""
    keep = list(range(len(qs.texts))) if keep is None else keep
    rows = []
    for start in range(0, len(keep), QUERY_BATCH):
        sel = keep[start:start + QUERY_BATCH]
        q = query_emb[torch.as_tensor(sel, dtype=torch.long)]
        exp_ids = [qs.expected[i] for i in sel]
        scores = q @ corpus_emb.T
        if vec_concept is not None:
            scores = rm.concept_max(scores, vec_concept, len(corpus_ids))
        positions = rm.expected_positions(scores, [[id_index[h] for h in e] for e in exp_ids])
        top_idx, top_scores = rm.top_k(scores, TOP_N)
        for j, (pos, e) in enumerate(zip(positions, exp_ids)):
            retrieved = [corpus_ids[i] for i in top_idx[j].tolist()]
            row = {"query": qs.texts[sel[j]], "expected": list(e), "retrieved": retrieved,
                   "scores": [round(float(s), 6) for s in top_scores[j].tolist()], "rank": int(pos[0])}
            row.update(rm.per_query_metrics(pos, e, retrieved, ontsim))
            rows.append(row)
    return rows


def hit_rate_curve(ranks: np.ndarray, ks=CURVE_KS) -> list[float]:
    return [float((ranks <= k).mean()) if ranks.size else math.nan for k in ks]


def _finite(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def set_rows(per_query: pd.DataFrame, mode: str, qs: QuerySet) -> pd.DataFrame:
    """The per-query rows of set ``qs`` in retrieval ``mode`` (every model)."""
    return per_query[(per_query["retrieval"] == mode) & (per_query["set"] == qs.set)
                     & (per_query["lang"].fillna("") == (qs.lang or ""))]


def comparisons(models: list[str]) -> list[tuple[str, str]]:
    pairs = [p for p in COMPARISONS if p[0] in models and p[1] in models]
    return pairs + [(m, "finetuned") for m in models if m not in PIPELINE_MODELS and "finetuned" in models]


def summarize(per_query: pd.DataFrame, sets: list[QuerySet], models: list[str], corpus_size: int,
              bp: BenchmarkParams, modes: list[str] | None = None) -> dict[str, Any]:
    """Every figure, flat keys (reports/benchmark.json): counts ``<set>.<count>``, metrics
    ``<retrieval>.<set>.<model>.<metric>[_ci_low|_ci_high]``, comparisons
    ``<retrieval>.<set>.<a>_vs_<b>.*`` and, for external sets with cases of training
    concepts, ``<retrieval>.<set>.{seen,unseen}.<model>.<metric>``."""
    modes = modes or sorted(set(per_query["retrieval"]), key=RETRIEVALS.index)
    out: dict[str, Any] = {"corpus.n_documents": corpus_size}
    for qs in sets:
        for k, v in qs.counts.items():
            out[f"{qs.key}.{k}"] = v
    for mode in modes:
        for qs in tqdm(sets, desc=f"bootstrap CIs ({mode})", unit="set", leave=False):
            sub = set_rows(per_query, mode, qs)
            by_model = {m: sub[sub["model"] == m] for m in models}
            subsets = [("", by_model)]
            seen = sub["seen"].dropna() if "seen" in sub else pd.Series(dtype=bool)
            if qs.lang is None and seen.any():
                for label, flag in (("seen", True), ("unseen", False)):
                    subsets.append((f".{label}", {m: df[df["seen"] == flag] for m, df in by_model.items()}))
            for suffix, frames in subsets:
                for m, df in frames.items():
                    if df.empty:
                        continue
                    values = {name: df[name].to_numpy() for name in rm.METRICS}
                    out[f"{mode}.{qs.key}{suffix}.{m}.n_queries"] = len(df)
                    for name, v in rm.summarize(values, bp.bootstrap_resamples, bp.seed).items():
                        out[f"{mode}.{qs.key}{suffix}.{m}.{name}"] = v
            for a, b in comparisons(models):
                da, db = by_model[a], by_model[b]
                if da.empty:
                    continue
                res = rm.paired_diff(da["mrr"].to_numpy(), db["mrr"].to_numpy(), bp.bootstrap_resamples, bp.seed)
                prefix = f"{mode}.{qs.key}.{a}_vs_{b}"
                out[f"{prefix}.mrr_diff"] = res["diff"]
                out[f"{prefix}.mrr_diff_ci_low"] = res["diff_ci_low"]
                out[f"{prefix}.mrr_diff_ci_high"] = res["diff_ci_high"]
                out[f"{prefix}.p_value"] = res["p_value"]
    return {k: _finite(v) for k, v in out.items()}


def branch_summary(per_query: pd.DataFrame, sets: list[QuerySet], models: list[str],
                   modes: list[str]) -> dict[str, Any]:
    """MRR per top-level HPO branch of the expected concept on the pooled held-out set
    (``<retrieval>.heldout.branch.<branch id>.<model>.{mrr,n_queries}``; no CIs)."""
    out: dict[str, Any] = {}
    for _, qs in headline_sets([s for s in sets if s.set == "heldout"]):
        for mode in modes:
            sub = set_rows(per_query, mode, qs).dropna(subset=["branch"])
            for (branch, m), df in sub.groupby(["branch", "model"]):
                out[f"{mode}.heldout.branch.{branch}.{m}.mrr"] = float(df["mrr"].mean())
                out[f"{mode}.heldout.branch.{branch}.{m}.n_queries"] = len(df)
    return out


def headline_sets(sets: list[QuerySet]) -> list[tuple[str, QuerySet]]:
    """(headline name, set): the held-out languages pooled (``heldout``; the one language
    when there is one) and each external set."""
    held = [s for s in sets if s.set == "heldout"]
    pooled = [s for s in held if s.lang == "all"] or held[:1]
    return [("heldout", s) for s in pooled] + [(s.key, s) for s in sets if s.set != "heldout"]


def headline(report: dict[str, Any], sets: list[QuerySet], models: list[str], mode: str) -> dict[str, Any]:
    """The few figures tracked as DVC metrics (module docstring); all come from ``report``."""
    out: dict[str, Any] = {}
    for name, qs in headline_sets(sets):
        for m in models:
            chosen = ("mrr",) if m in HEADLINE_MRR_ONLY else HEADLINE_METRICS if m in PIPELINE_MODELS \
                else COMPARISON_METRICS
            for metric in chosen:
                key = f"{mode}.{qs.key}.{m}.{metric}"
                if key in report:
                    out[f"{name}.{m}.{metric}"] = report[key]
        for comp, keys in HEADLINE_DIFFS.items():
            for k in keys:
                key = f"{mode}.{qs.key}.{comp}.{k}"
                if key in report:
                    out[f"{name}.{comp}.{k}"] = report[key]
        if qs.set != "heldout" and f"{qs.key}.cases_by_split.train" in report:
            out[f"{name}.n_cases_in_train"] = report[f"{qs.key}.cases_by_split.train"]
    return out


def write_curves(per_query: pd.DataFrame, sets: list[QuerySet], models: list[str], folder: Path,
                 mode: str) -> None:
    """One CSV per query set (``k,model,hit_rate``; retrieval ``mode``), drawn by dvc plots
    as HR@K per model. Written into a temporary sibling and published whole."""
    final, folder = folder, temp_sibling(folder)
    folder.mkdir(parents=True)
    for qs in sets:
        sub = set_rows(per_query, mode, qs)
        lines = ["k,model,hit_rate"]
        for m in models:
            ranks = sub.loc[sub["model"] == m, "rank"].to_numpy()
            if ranks.size:
                lines += [f"{k},{m},{hr:.6f}" for k, hr in zip(CURVE_KS, hit_rate_curve(ranks))]
        atomic_write_text(folder / f"{qs.key}.csv", "\n".join(lines) + "\n")
    publish_dir(folder, final)
