"""The quality gate of the quantize stage: what it measures and the rule.

It measures what the benchmark stage reports, on a smaller corpus (CPU budget):
- the retrieval mode of ``quantize.retrieval`` (default ``multi``, the benchmark's
  headline: one vector per English label and EXACT synonym, a concept's score the max),
  queries equal to an indexed text of their own concept dropped as the benchmark drops them;
- ``quantize.agreement_queries`` held-out queries (data/pairs/queries.parquet split=test,
  every language) and, where present, every case of the clinical-phrase sets of
  ``quantize.gate_sets`` (null = ``benchmark.external_sets``);
- a corpus of every gold concept plus random distractor concepts up to ``gate_corpus``.
Without data/pairs/queries.parquet (the quantize stage run alone) the held-out queries are
English EXACT synonyms, which a multi-vector index holds: the gate is single-vector then.

The rule (``passes_gate``): on the held-out queries MRR Δ >= ``gate_mrr_delta`` and HR@1 Δ
>= ``gate_hr1_delta`` (point estimates, against ONNX fp32); on each clinical set the MRR
Δ's 95% CI reaches 0 (no significant loss). ``select`` publishes the fastest passing
candidate; when none passes, the ONNX fp32 export (``FALLBACK``), flagged.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hpo_embed.embedding import text_hash
from hpo_embed.pairs.external_sets import external_files, load_external_set
from hpo_embed.retrieval.index import Index, build_index, self_matches
from hpo_embed.retrieval.metrics import concept_max, expected_positions, paired_diff
from hpo_embed.schemas import read_table

QUALITY_KEYS = ("mrr", "hr1", "mrr_delta", "mrr_delta_ci", "hr1_delta", "hr1_delta_ci", "top1_agreement",
                "cosine_mean", "sets")


FALLBACK = "onnx_fp32"   # published when no INT8 candidate passes


HELDOUT = "heldout"


@dataclass
class GateSet:
    key: str
    texts: list[str]
    expected: list[list[int]]   # concept positions in the gate index


@dataclass
class GateInputs:
    index: Index
    sets: list[GateSet]
    source: str
    queries: list[str] = field(init=False)   # every query text once (encoded once per model)

    def __post_init__(self) -> None:
        self.queries = sorted({t for s in self.sets for t in s.texts})


def gate_queries(terms: pd.DataFrame, n: int, seed: int, queries_path: Path | None) -> tuple[list[str], list[str], str]:
    """``n`` held-out queries: data/pairs/queries.parquet split=test when present; else
    (before the pairs stage has run) one English EXACT synonym of each of a random sample of
    concepts. Returns the texts, their gold ids and a description of the source."""
    if queries_path is not None and queries_path.is_file():
        q = read_table(queries_path, "queries")
        test = q[q["split"] == "test"].dropna(subset=["text"]).drop_duplicates("text")
        pairs = sorted(zip(test["text"], test["hpo_id"]))
        if pairs:
            pick = random.Random(seed).sample(pairs, min(n, len(pairs)))
            return [t for t, _ in pick], [i for _, i in pick], f"{queries_path.name} split=test"
    pairs = []
    for row in terms.sort_values("id").to_dict("records"):
        cands = [s["text"] for s in (row["synonyms"] if row["synonyms"] is not None else [])
                 if s["scope"] == "EXACT" and s["text"] != row["label"]]
        if cands:
            pairs.append((cands[0], row["id"]))
    counts: dict[str, int] = {}
    for t, _ in pairs:
        counts[t] = counts.get(t, 0) + 1
    pairs = [(t, i) for t, i in pairs if counts[t] == 1]  # a text shared by two concepts is no query
    pick = random.Random(seed).sample(pairs, min(n, len(pairs)))
    return [t for t, _ in pick], [i for _, i in pick], "fallback: English EXACT synonyms"


def gate_inputs(all_terms: pd.DataFrame, p, queries_path: Path | None, set_entries: list[str]) -> GateInputs:
    """The gate's index and query sets (module docstring). ``all_terms``: terms.parquet with
    obsolete rows (replaced ids of the clinical sets are mapped as the benchmark maps them)."""
    terms = all_terms[all_terms["selected"]] if "selected" in all_terms else all_terms
    ids = set(terms["id"])
    replaced = {r["id"]: r["replaced_by"] for r in all_terms.to_dict("records") if r.get("replaced_by")}
    texts, gold, source = gate_queries(terms, p.agreement_queries, p.seed, queries_path)
    raw = [(HELDOUT, texts, [[g] for g in gold])]
    seen: set[str] = set()
    for _, path in external_files(set_entries):
        qs = load_external_set(path, ids, replaced)
        digest = text_hash(qs.texts, qs.expected)
        if digest not in seen:   # a file with the same cases as an earlier one counts once, as in the benchmark
            seen.add(digest)
            raw.append((qs.set, qs.texts, qs.expected))
    need = sorted({h for _, _, exp in raw for e in exp for h in e})
    rest = sorted(ids - set(need))
    extra = random.Random(p.seed).sample(rest, max(0, min(len(rest), p.gate_corpus - len(need)))) \
        if p.gate_corpus else rest
    # the fallback queries are English synonyms, which a multi-vector index holds: label corpus then
    mode = p.retrieval if queries_path is not None and queries_path.is_file() else "single"
    index = build_index(terms[terms["id"].isin(set(need) | set(extra))], mode, p.corpus_format)
    pos = {c: i for i, c in enumerate(index.corpus_ids)}
    sets = []
    for key, t, exp in raw:
        drop = self_matches(index, t, exp)
        sets.append(GateSet(key, [x for x, d in zip(t, drop) if not d],
                            [[pos[h] for h in e] for e, d in zip(exp, drop) if not d]))
    return GateInputs(index, sets, source)


def _ranks(q: np.ndarray, c: np.ndarray, gi: GateInputs, gs: GateSet, q_pos: dict[str, int]) -> np.ndarray:
    """Full-rank position of each query's best expected concept (cosine, concept score = max
    over its vectors in multi mode, pessimistic ties), as the benchmark ranks."""
    qn = torch.from_numpy(q / np.linalg.norm(q, axis=1, keepdims=True)).float()
    cn = torch.from_numpy(c / np.linalg.norm(c, axis=1, keepdims=True)).float()
    idx = torch.as_tensor([q_pos[t] for t in gs.texts], dtype=torch.long)
    ranks: list[int] = []
    for i in range(0, len(idx), 256):
        scores = qn[idx[i:i + 256]] @ cn.T
        if gi.index.mode == "multi":
            scores = concept_max(scores, gi.index.vec_concept, len(gi.index.corpus_ids))
        ranks += [p[0] for p in expected_positions(scores, gs.expected[i:i + 256])]
    return np.asarray(ranks)


def quality(ref: dict[str, np.ndarray], test: dict[str, np.ndarray], gi: GateInputs,
            resamples: int, seed: int) -> dict[str, Any]:
    """Deltas of ``test`` against ``ref`` (``{"queries", "corpus"}`` embeddings of
    ``gi.queries`` and ``gi.index.texts``): held-out MRR and HR@1 with paired bootstrap CIs,
    top-1 agreement and query cosine; per clinical set (``sets``) the MRR delta and its CI."""
    q_pos = {t: i for i, t in enumerate(gi.queries)}
    out: dict[str, Any] = {"sets": {}}
    for gs in gi.sets:
        if not gs.texts:
            continue
        r_ref, r_test = (_ranks(e["queries"], e["corpus"], gi, gs, q_pos) for e in (ref, test))
        metrics = (("mrr", 1 / r_test, 1 / r_ref), ("hr1", (r_test == 1) * 1.0, (r_ref == 1) * 1.0))
        row: dict[str, Any] = {"n_queries": len(gs.texts)}
        for name, a, b in metrics:
            d = paired_diff(a, b, resamples, seed)
            row[name] = round(float(a.mean()), 4)
            row[f"{name}_delta"] = round(d["diff"], 4)
            row[f"{name}_delta_ci"] = [round(d["diff_ci_low"], 4), round(d["diff_ci_high"], 4)]
        if gs.key == HELDOUT:
            out.update({k: v for k, v in row.items() if k != "n_queries"})
            q_idx = [q_pos[t] for t in gs.texts]
            top_ref, top_test = (np.argmax(e["queries"][q_idx] @ e["corpus"].T, axis=1) for e in (ref, test))
            out["top1_agreement"] = round(float((top_ref == top_test).mean()), 4)
            qa, qb = ref["queries"][q_idx], test["queries"][q_idx]
            cos = (qa * qb).sum(1) / (np.linalg.norm(qa, axis=1) * np.linalg.norm(qb, axis=1))
            out["cosine_mean"] = round(float(cos.mean()), 5)
        else:
            out["sets"][gs.key] = {k: row[k] for k in ("n_queries", "mrr_delta", "mrr_delta_ci")}
    return out


def passes_gate(row: dict[str, Any], mrr_min: float, hr1_min: float) -> bool:
    clinical_ok = all(s["mrr_delta_ci"][1] >= 0 for s in row.get("sets", {}).values())
    return row["mrr_delta"] >= mrr_min and row["hr1_delta"] >= hr1_min and clinical_ok


def select(rows: dict[str, dict[str, Any]], mrr_min: float, hr1_min: float) -> tuple[str, bool, str]:
    """The candidate to publish: the fastest (batch-32 sentences/s) of those that pass the
    quality gate; if none passes, ``FALLBACK`` (the ONNX fp32 export), flagged. Returns
    ``(name, gate_passed, reason)``."""
    if not rows:
        raise ValueError("no candidates to select from")
    passing = {n: r for n, r in rows.items() if passes_gate(r, mrr_min, hr1_min)}
    if passing:
        name = max(passing, key=lambda n: (passing[n]["sps_b32"], passing[n]["mrr_delta"]))
        r = rows[name]
        return name, True, (f"fastest of {len(passing)}/{len(rows)} candidates passing the gate "
                            f"(held-out MRR delta {r['mrr_delta']:+.4f} >= {mrr_min}, HR@1 delta "
                            f"{r['hr1_delta']:+.4f} >= {hr1_min}; no significant MRR loss on "
                            f"{len(r.get('sets', {}))} clinical sets): {r['sps_b32']} sentences/s at batch 32")
    return FALLBACK, False, (f"NO INT8 candidate passes the gate (held-out MRR delta >= {mrr_min}, HR@1 delta >= "
                             f"{hr1_min}, no significant MRR loss on a clinical set); published the ONNX fp32 "
                             f"export instead")
