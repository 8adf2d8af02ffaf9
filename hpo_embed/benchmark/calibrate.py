"""What a top-1 cosine means: score distributions and a calibration of the bi-encoders.

A user of the model sees one number per hit, the cosine of the top-1 concept (in the
headline retrieval mode: multi-vector, the max over a concept's vectors). This module
reports, per model:
- the distribution of that score for correct and for wrong top-1 hits on every headline
  set (quartiles, and the share of correct hits below phentrieve's default chunk
  threshold 0.7);
- a calibration fitted on dev queries (split=dev, every language, a random sample of
  ``benchmark.calibration_queries``): Platt and isotonic maps from the top-1 cosine to
  P(the top-1 is correct) (hpo_embed/retrieval/calibration.py, the reranker's maths), and
  the cosine thresholds whose dev precision reaches 0.9 and 0.95 (largest coverage), with
  their precision and coverage on the held-out and clinical sets.

The calibration file (``format: hpo-embed-score-calibration/1``) holds every pipeline
model; the release ships the fine-tuned and INT8 entries.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hpo_embed.benchmark.inputs import PIPELINE_MODELS
from hpo_embed.benchmark.score import set_rows
from hpo_embed.common import log
from hpo_embed.pairs.external_sets import QuerySet
from hpo_embed.retrieval import calibration as K

FORMAT = "hpo-embed-score-calibration/1"


TARGETS = (0.9, 0.95)


CHUNK_THRESHOLD = 0.7   # phentrieve's default text-processing chunk threshold


MIN_DEV = 50            # fewer dev queries: no calibration (a warning)


DEV_SET = "dev"


def top1(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The top-1 cosine and whether that top-1 is a correct concept, per query row."""
    s = np.asarray([float(x[0]) for x in df["scores"]], dtype=float)
    return s, (df["rank"].to_numpy() == 1).astype(float)


def _rows(per_query: pd.DataFrame, mode: str, qs: QuerySet, model: str) -> pd.DataFrame:
    rows = set_rows(per_query, mode, qs)
    return rows[rows["model"] == model]


def distributions(per_query: pd.DataFrame, sets: list[tuple[str, QuerySet]], models: list[str],
                  mode: str) -> dict[str, Any]:
    """``<mode>.<set>.<model>.top1_cos.{correct,wrong}.{n,p25,median,p75}`` and
    ``...correct_below_0.7`` (share of correct top-1 hits a 0.7 threshold would drop)."""
    out: dict[str, Any] = {}
    for _, qs in sets:
        for m in models:
            s, y = top1(_rows(per_query, mode, qs, m))
            prefix = f"{mode}.{qs.key}.{m}.top1_cos"
            for label, sel in (("correct", y == 1), ("wrong", y == 0)):
                x = s[sel]
                out[f"{prefix}.{label}.n"] = int(x.size)
                for q, name in ((25, "p25"), (50, "median"), (75, "p75")):
                    out[f"{prefix}.{label}.{name}"] = float(np.percentile(x, q)) if x.size else None
            ok = s[y == 1]
            out[f"{prefix}.correct_below_{CHUNK_THRESHOLD}"] = float((ok < CHUNK_THRESHOLD).mean()) if ok.size else None
    return out


def calibrate(per_query: pd.DataFrame, sets: list[tuple[str, QuerySet]], models: list[str],
              mode: str) -> dict[str, Any]:
    """The calibration file's content (module docstring); models without enough dev queries
    (or whose every dev top-1 is right or wrong) are left out with a warning."""
    out: dict[str, Any] = {"format": FORMAT, "retrieval": mode, "targets": list(TARGETS), "ece_bins": K.ECE_BINS,
                           "score": f"cosine of the top-1 concept ({mode}-vector retrieval: a concept scores the max "
                                    "over its label and EXACT synonym vectors), as SentenceTransformer.encode + "
                                    "cosine gives it", "models": {}}
    for m in [m for m in models if m in PIPELINE_MODELS]:
        s, y = top1(_rows(per_query, mode, QuerySet(DEV_SET, None, [], []), m))
        try:
            cals = K.fit_all(s, y, minimum=MIN_DEV, where=f"benchmark calibration ({m}, dev)")
        except ValueError as exc:
            log.warning("%s", exc)
            continue
        entry: dict[str, Any] = {"n_dev": int(len(s)), "dev_hr1": float(y.mean()), "chosen": "isotonic",
                                 "calibrators": {k: {"method": c.method, **c.to_json()} for k, c in cals.items()
                                                 if k != "none"},
                                 "thresholds": {f"{t}": K.best_threshold(s, y, t) for t in TARGETS}, "sets": {}}
        for name, qs in sets:
            st, yt = top1(_rows(per_query, mode, qs, m))
            if not len(st):
                continue
            entry["sets"][name] = {
                "n": int(len(st)), **{f"ece_{k}": K.ece(cals[k].predict(st), yt) for k in ("platt", "isotonic")},
                **{f"at_{t}": K.apply_threshold(st, yt, entry["thresholds"][f"{t}"]["threshold"]) for t in TARGETS}}
        out["models"][m] = entry
    return out


def headline(cal: dict[str, Any]) -> dict[str, Any]:
    """The fine-tuned model's thresholds for metrics/benchmark.json (every figure: the
    calibration file and reports/benchmark.md)."""
    e = cal["models"].get("finetuned")
    return {f"calibration.finetuned.threshold@{t}": e["thresholds"][f"{t}"]["threshold"] for t in TARGETS} if e else {}


def markdown(dist: dict[str, Any], cal: dict[str, Any], sets: list[tuple[str, QuerySet]], models: list[str],
             mode: str) -> list[str]:
    """The score section of reports/benchmark.md."""
    out = ["", f"## What a score means ({mode}-vector top-1 cosine)", "",
           "Top-1 cosine of correct and of wrong top-1 hits (median [p25–p75], n), and the share of correct hits "
           f"below {CHUNK_THRESHOLD} (phentrieve's default chunk threshold drops them).", "",
           "| model | set | correct | wrong | correct < 0.7 |", "|---|---|---|---|---|"]
    for m in models:
        for name, qs in sets:
            p = f"{mode}.{qs.key}.{m}.top1_cos"
            if dist.get(f"{p}.correct.n") is None:
                continue

            def cell(label: str) -> str:
                if not dist[f"{p}.{label}.n"]:
                    return "–"
                return (f"{dist[f'{p}.{label}.median']:.3f} [{dist[f'{p}.{label}.p25']:.3f}–"
                        f"{dist[f'{p}.{label}.p75']:.3f}], {dist[f'{p}.{label}.n']}")
            below = dist.get(f"{p}.correct_below_{CHUNK_THRESHOLD}")
            out.append(f"| {m} | {name} | {cell('correct')} | {cell('wrong')} | "
                       f"{'–' if below is None else f'{below:.0%}'} |")
    if cal["models"]:
        out += ["", "Calibrated thresholds (fitted on dev queries; accept a top-1 hit when its cosine ≥ threshold): "
                "dev precision target, threshold, and precision / coverage on each set at that threshold. "
                "The calibration maps (Platt, isotonic) are in `data/benchmark/calibration.json`; ECE is the "
                "isotonic map's on each set.", "",
                "| model | target | threshold | " + " | ".join(n for n, _ in sets) + " |",
                "|---|---|---|" + "---|" * len(sets)]
        for m, e in cal["models"].items():
            for t in TARGETS:
                th = e["thresholds"][f"{t}"]["threshold"]
                cells = []
                for name, _ in sets:
                    a = e["sets"].get(name, {}).get(f"at_{t}")
                    cells.append("–" if not a else (f"{a['precision']:.3f} / {a['coverage']:.0%}"
                                                    if a["precision"] is not None else f"– / {a['coverage']:.0%}"))
                out.append(f"| {m} | {t} | {'none reaches it' if th is None else f'{th:.4f}'} | " + " | ".join(cells) + " |")
        ece = "; ".join(f"{m} {name} {e['sets'][name]['ece_isotonic']:.3f}" for m, e in cal["models"].items()
                        for name, _ in sets[:1] if name in e["sets"])
        n_dev = ", ".join(f"{m} {e['n_dev']}" for m, e in cal["models"].items())
        out += ["", f"Dev queries per model: {n_dev}; isotonic ECE on held-out: {ece}."]
    return out
