"""Calibration of a top-1 score and acceptance thresholds: shared by the reranker (its raw
logit) and the benchmark stage (the bi-encoder's top-1 cosine, hpo_embed/benchmark/calibrate.py).

The calibrated quantity is P(the top-1 concept is a correct answer | its score s; for the
reranker the raw logit). Calibrators (fitted on the dev split, one example per query):
- ``platt``: ``p = 1 / (1 + exp(-(a * s + b)))`` (sklearn LogisticRegression on s);
- ``isotonic``: a non-decreasing piecewise-linear map through breakpoints ``(x_i, y_i)``
  (sklearn IsotonicRegression, ``out_of_bounds='clip'``): ``p = interp(s, x, y)``;
- ``none``: ``p = sigmoid(s)``, the CrossEncoder's own activation.

ECE (``bins`` equal-width bins of the predicted probability on [0, 1]):
``sum_b |B_b| / n * |mean(y in B_b) - mean(p in B_b)|``; Brier: ``mean((p - y)^2)``.

Thresholds are on the raw logit: a top-1 hit is accepted when ``s >= threshold``. For each
top-level HPO branch (of the predicted top-1 concept) the threshold is the one with the
largest coverage (accepted / queries of the branch) whose precision (correct / accepted)
is at least the target; a branch with fewer than ``min_examples`` dev queries uses the
global threshold (fitted on every dev query). A target that no threshold reaches gives
``threshold: null`` (never accept).

calibration.json (plain JSON, ``format: hpo-embed-rerank-calibration/1``): see
``to_json``; docs/reranker.md documents every key.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpo_embed.common import write_json

FORMAT = "hpo-embed-rerank-calibration/1"
ECE_BINS = 15


def sigmoid(s: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(s, dtype=float)))


def ece(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error with ``bins`` equal-width bins (the last one closed)."""
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    if p.size == 0:
        return math.nan
    b = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for i in range(bins):
        m = b == i
        if m.any():
            total += m.sum() / p.size * abs(y[m].mean() - p[m].mean())
    return float(total)


def brier(p: np.ndarray, y: np.ndarray) -> float:
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    return float(np.mean((p - y) ** 2)) if p.size else math.nan


def reliability(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Reliability-diagram rows: per non-empty bin, mean confidence, accuracy and count."""
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    b = np.minimum((p * bins).astype(int), bins - 1)
    return [{"bin": i, "confidence": float(p[b == i].mean()), "accuracy": float(y[b == i].mean()),
             "count": int((b == i).sum())} for i in range(bins) if (b == i).any()]


@dataclass
class Calibrator:
    """A fitted map from raw logit to probability (plain numbers only)."""
    method: str                          # none | platt | isotonic
    a: float = 1.0                       # platt slope
    b: float = 0.0                       # platt intercept
    x: list[float] = field(default_factory=list)   # isotonic breakpoints (logits, ascending)
    y: list[float] = field(default_factory=list)   # isotonic probabilities at x

    def predict(self, s) -> np.ndarray:
        s = np.asarray(s, dtype=float)
        if self.method == "none":
            return sigmoid(s)
        if self.method == "platt":
            return sigmoid(self.a * s + self.b)
        if self.method == "isotonic":
            return np.interp(s, self.x, self.y)
        raise ValueError(f"unknown calibration method {self.method!r}")

    def to_json(self) -> dict[str, Any]:
        if self.method == "platt":
            return {"a": self.a, "b": self.b}
        if self.method == "isotonic":
            return {"x": self.x, "y": self.y}
        return {}


def fit_platt(s: np.ndarray, y: np.ndarray) -> Calibrator:
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e6, max_iter=1000).fit(np.asarray(s, dtype=float).reshape(-1, 1), np.asarray(y, int))
    return Calibrator("platt", a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))


def fit_isotonic(s: np.ndarray, y: np.ndarray) -> Calibrator:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(np.asarray(s, dtype=float), np.asarray(y, dtype=float))
    return Calibrator("isotonic", x=[float(v) for v in iso.X_thresholds_], y=[float(v) for v in iso.y_thresholds_])


def check_size(n: int, minimum: int, where: str) -> None:
    """A one-line ValueError when fewer than ``minimum`` calibration examples (the stage
    raises it as a UserError)."""
    if n < minimum:
        raise ValueError(f"{where}: only {n} dev queries for calibration, need at least {minimum} "
                         "(params.yaml: rerank.min_dev_examples / rerank.dev_queries)")


def fit_all(s: np.ndarray, y: np.ndarray, minimum: int = 2, where: str = "dev") -> dict[str, Calibrator]:
    s, y = np.asarray(s, dtype=float), np.asarray(y, dtype=float)
    check_size(len(s), minimum, where)
    if y.min() == y.max():
        raise ValueError(f"{where}: every dev top-1 is {'right' if y[0] else 'wrong'}: nothing to calibrate")
    return {"none": Calibrator("none"), "platt": fit_platt(s, y), "isotonic": fit_isotonic(s, y)}


def best_threshold(s: np.ndarray, y: np.ndarray, target: float) -> dict[str, Any]:
    """The logit threshold with the largest coverage whose precision >= ``target`` (ties of
    s are accepted together). ``{threshold, precision, coverage, accepted, n}``; threshold
    None when no threshold reaches the target."""
    s, y = np.asarray(s, dtype=float), np.asarray(y, dtype=float)
    n = len(s)
    out = {"threshold": None, "precision": None, "coverage": 0.0, "accepted": 0, "n": n}
    if n == 0:
        return out
    order = np.argsort(-s, kind="stable")
    ss, yy = s[order], y[order]
    correct = np.cumsum(yy)
    # candidate cut after position i (accept ss[:i+1]) only where the next score differs
    last_of_tie = np.r_[ss[1:] != ss[:-1], True]
    idx = np.flatnonzero(last_of_tie)
    prec = correct[idx] / (idx + 1)
    ok = idx[prec >= target - 1e-12]
    if ok.size == 0:
        return out
    i = int(ok.max())
    return {"threshold": float(ss[i]), "precision": float(correct[i] / (i + 1)), "coverage": float((i + 1) / n),
            "accepted": i + 1, "n": n}


def branch_thresholds(s: np.ndarray, y: np.ndarray, branches: list[str], target: float,
                      min_examples: int) -> dict[str, Any]:
    """``{"global": {...}, "branches": {branch: {..., "source": "branch"|"global"}}}``; a
    branch with fewer than ``min_examples`` queries gets the global threshold, with its own
    precision/coverage at that threshold."""
    s, y = np.asarray(s, dtype=float), np.asarray(y, dtype=float)
    br = np.asarray(branches, dtype=object)
    glob = best_threshold(s, y, target)
    out: dict[str, Any] = {"global": glob, "branches": {}}
    for b in sorted(set(branches)):
        m = br == b
        if m.sum() >= min_examples:
            out["branches"][b] = {**best_threshold(s[m], y[m], target), "source": "branch"}
        else:
            out["branches"][b] = {**apply_threshold(s[m], y[m], glob["threshold"]), "source": "global"}
    return out


def apply_threshold(s: np.ndarray, y: np.ndarray, threshold: float | None) -> dict[str, Any]:
    """Precision and coverage of accepting ``s >= threshold`` (None: accept nothing)."""
    s, y = np.asarray(s, dtype=float), np.asarray(y, dtype=float)
    acc = s >= threshold if threshold is not None else np.zeros(len(s), dtype=bool)
    return {"threshold": threshold, "precision": float(y[acc].mean()) if acc.any() else None,
            "coverage": float(acc.mean()) if len(s) else 0.0, "accepted": int(acc.sum()), "n": int(len(s))}


def threshold_for(cal: dict[str, Any], branch: str) -> float | None:
    """The threshold a deployment applies to a top-1 of ``branch`` (global if unknown)."""
    entry = cal["thresholds"]["branches"].get(branch)
    return (entry if entry is not None else cal["thresholds"]["global"])["threshold"]


def evaluate_thresholds(cal: dict[str, Any], s: np.ndarray, y: np.ndarray, branches: list[str]) -> dict[str, Any]:
    """Precision/coverage on another split (test) at the dev thresholds: overall (each
    query judged by its branch's threshold) and per branch."""
    s, y = np.asarray(s, dtype=float), np.asarray(y, dtype=float)
    th = np.asarray([threshold_for(cal, b) if threshold_for(cal, b) is not None else np.inf for b in branches])
    acc = s >= th
    out = {"overall": {"precision": float(y[acc].mean()) if acc.any() else None,
                       "coverage": float(acc.mean()) if len(s) else 0.0, "accepted": int(acc.sum()), "n": len(s)},
           "branches": {}}
    br = np.asarray(branches, dtype=object)
    for b in sorted(set(branches)):
        m = br == b
        out["branches"][b] = {"precision": float(y[m & acc].mean()) if (m & acc).any() else None,
                              "coverage": float(acc[m].mean()), "accepted": int((m & acc).sum()), "n": int(m.sum())}
    return out


def calibration_report(cals: dict[str, Calibrator], s: np.ndarray, y: np.ndarray) -> dict[str, dict[str, float]]:
    """ECE and Brier of every calibrator on (s, y)."""
    return {m: {"ece": ece(c.predict(s), y), "brier": brier(c.predict(s), y)} for m, c in cals.items()}


RERANK_SCORE = "raw logit of the reranked top-1 (CrossEncoder.predict with an identity activation)"


def to_json(cals: dict[str, Calibrator], chosen: str, thresholds: dict[str, Any], info: dict[str, Any],
            fmt: str = FORMAT, score: str = RERANK_SCORE) -> dict:
    return {"format": fmt, "score": score, "chosen": chosen, "ece_bins": ECE_BINS,
            "calibrators": {m: {"method": c.method, **c.to_json()} for m, c in cals.items()},
            "thresholds": thresholds, **info}


def save(path: Path, obj: dict) -> None:
    write_json(path, obj)


def load(path: Path) -> tuple[dict[str, Any], dict[str, Calibrator]]:
    """calibration.json -> (the whole mapping, {method: Calibrator})."""
    obj = json.loads(Path(path).read_text(encoding="utf-8"))
    if obj.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file (format: {obj.get('format')!r})")
    cals = {m: Calibrator(c["method"], a=c.get("a", 1.0), b=c.get("b", 0.0), x=c.get("x", []), y=c.get("y", []))
            for m, c in obj["calibrators"].items()}
    return obj, cals
