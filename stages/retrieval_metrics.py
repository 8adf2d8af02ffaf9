"""Retrieval metrics for the benchmark stage: ranks under a stated tie rule, MRR, HR@k,
NDCG@k, MaxOntSim@k on the HPO is_a graph, bootstrap confidence intervals and a paired
permutation test.

Ranking rule (exact search over the whole corpus):
- a query's *positions* are the 1-based positions of its expected documents when the
  corpus is sorted by descending cosine similarity;
- ties are broken **pessimistically**: a non-expected document whose score equals an
  expected document's score is placed before it. With the expected scores sorted
  descending ``s_1 >= s_2 >= ...``, the m-th expected document sits at
  ``m + #{non-expected d : score(d) >= s_m}``. A model that scores everything the same
  therefore gets the worst rank, never the best;
- the query's *rank* is the position of its best expected document (``positions[0]``).
Every expected document is in the corpus, so every query has a finite rank.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

ROOT_ID = "HP:0000001"
HR_KS = (1, 3, 5, 10)
NDCG_K = 10
ONTSIM_KS = (1, 5)
METRICS = ("mrr", *(f"hr@{k}" for k in HR_KS), f"ndcg@{NDCG_K}", *(f"maxontsim@{k}" for k in ONTSIM_KS))


# --------------------------------------------------------------------------- ranking

def expected_positions(scores: torch.Tensor, expected: Sequence[Sequence[int]]) -> list[list[int]]:
    """Positions (1-based, ascending) of each query's expected documents.

    ``scores``: ``[queries, corpus]`` similarities; ``expected[i]``: the corpus indices
    relevant to query ``i`` (non-empty, no duplicates). Pessimistic tie rule, see the
    module docstring.
    """
    if scores.ndim != 2 or scores.shape[0] != len(expected):
        raise ValueError("scores must be [len(expected), corpus]")
    out: list[list[int]] = []
    width = max((len(e) for e in expected), default=0)
    if width == 0:
        return [[] for _ in expected]
    idx = torch.zeros((len(expected), width), dtype=torch.long)
    valid = torch.zeros((len(expected), width), dtype=torch.bool)
    for i, e in enumerate(expected):
        if not e:
            raise ValueError(f"query {i} has no expected document")
        idx[i, :len(e)] = torch.as_tensor(list(e), dtype=torch.long)
        valid[i, :len(e)] = True
    exp_scores = scores.gather(1, idx).masked_fill(~valid, float("-inf"))
    exp_scores, _ = exp_scores.sort(dim=1, descending=True)
    # documents (expected ones included) scoring >= each expected score
    at_least = (scores.unsqueeze(1) >= exp_scores.unsqueeze(2)).sum(dim=2)        # [q, width]
    # expected documents scoring >= each expected score
    exp_at_least = (exp_scores.unsqueeze(1) >= exp_scores.unsqueeze(2)).sum(dim=2)  # [q, width]
    m = torch.arange(1, width + 1).expand(len(expected), width)
    pos = m + (at_least - exp_at_least)
    for i, e in enumerate(expected):
        out.append(pos[i, :len(e)].tolist())
    return out


def top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and scores of the ``k`` best documents per query (score desc, ties by
    lower corpus index)."""
    k = min(k, scores.shape[1])
    # stable sort on -score keeps the lower index first among equal scores
    order = torch.sort(-scores, dim=1, stable=True).indices[:, :k]
    return order, scores.gather(1, order)


# --------------------------------------------------------------------------- per-query metrics

def reciprocal_rank(rank: int) -> float:
    return 1.0 / rank


def hit_at(rank: int, k: int) -> float:
    return 1.0 if rank <= k else 0.0


def ndcg_at(positions: Sequence[int], k: int = NDCG_K) -> float:
    """Binary-relevance NDCG@k: ``DCG = sum_{p in positions, p <= k} 1/log2(p+1)``,
    ``IDCG = sum_{i=1}^{min(R,k)} 1/log2(i+1)`` with ``R`` = number of expected docs."""
    if not positions:
        raise ValueError("no expected document")
    dcg = sum(1.0 / math.log2(p + 1) for p in positions if p <= k)
    idcg = sum(1.0 / math.log2(i + 1) for i in range(1, min(len(positions), k) + 1))
    return dcg / idcg


# --------------------------------------------------------------------------- ontology similarity

class OntologySimilarity:
    """Depth-based Lin-like similarity on the is_a DAG.

    ``depth(t)`` is the length of the **longest** is_a path from the root to ``t``
    (so every proper ancestor is strictly shallower than its descendants);
    ``sim(a, b) = 2 * depth(c) / (depth(a) + depth(b))`` where ``c`` is the deepest
    common ancestor of ``a`` and ``b`` (each term is its own ancestor). ``sim(a, a) = 1``
    (the root included), terms whose only common ancestor is the root score 0, and a
    term missing from the graph scores 0 against anything but itself. Range [0, 1].
    """

    def __init__(self, edges: Iterable[tuple[str, str]], root: str = ROOT_ID):
        parents: dict[str, set[str]] = {}
        for child, parent in edges:
            parents.setdefault(child, set()).add(parent)
            parents.setdefault(parent, set())
        parents.setdefault(root, set())
        self.parents = parents
        self.root = root
        self._anc: dict[str, frozenset[str]] = {}
        self._depth: dict[str, int] = {}

    def ancestors(self, term: str) -> frozenset[str]:
        """``term`` and everything above it (iterative, memoised)."""
        if term in self._anc:
            return self._anc[term]
        stack = [term]
        while stack:
            t = stack[-1]
            if t in self._anc:
                stack.pop()
                continue
            todo = [p for p in self.parents.get(t, ()) if p not in self._anc]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            anc = {t}
            for p in self.parents.get(t, ()):
                anc |= self._anc[p]
            self._anc[t] = frozenset(anc)
        return self._anc[term]

    def depth(self, term: str) -> int:
        """Longest is_a path length from the root (0 for the root and for terms that do
        not reach it)."""
        if term in self._depth:
            return self._depth[term]
        stack = [term]
        while stack:
            t = stack[-1]
            if t in self._depth:
                stack.pop()
                continue
            ps = self.parents.get(t, ())
            todo = [p for p in ps if p not in self._depth]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            self._depth[t] = 0 if t == self.root or not ps else 1 + max(self._depth[p] for p in ps)
        return self._depth[term]

    @functools.lru_cache(maxsize=500_000)
    def sim(self, a: str, b: str) -> float:
        if a == b:
            return 1.0
        if a not in self.parents or b not in self.parents:
            return 0.0
        common = self.ancestors(a) & self.ancestors(b)
        if not common:
            return 0.0
        lca_depth = max(self.depth(c) for c in common)
        total = self.depth(a) + self.depth(b)
        return 2.0 * lca_depth / total if total else 0.0

    def max_sim(self, expected: Iterable[str], retrieved: Iterable[str]) -> float:
        """MaxOntSim: the best ``sim(e, r)`` over expected ``e`` and retrieved ``r``."""
        retrieved = list(retrieved)
        return max((self.sim(e, r) for e in expected for r in retrieved), default=0.0)


# --------------------------------------------------------------------------- statistics

def _batch(n: int) -> int:
    """Resamples per vectorised step: bounds memory to ~8M values however large the set."""
    return max(1, 8_000_000 // max(n, 1))


def bootstrap_ci(values: Sequence[float], n_resamples: int, seed: int,
                 confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (scipy.stats.bootstrap). A single value or
    constant values give a zero-width interval at that value."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (math.nan, math.nan)
    if x.size == 1 or np.all(x == x[0]):
        return (float(x[0]), float(x[0]))
    res = stats.bootstrap((x,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                          method="percentile", vectorized=True, batch=_batch(x.size),
                          rng=np.random.default_rng(seed))
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def paired_diff(a: Sequence[float], b: Sequence[float], n_resamples: int, seed: int,
                confidence: float = 0.95) -> dict[str, float]:
    """Mean of ``a - b`` over paired queries, its percentile bootstrap CI, and a two-sided
    paired permutation p-value (scipy.stats.permutation_test, ``permutation_type=
    'samples'``: each query's two values are swapped at random under the null). With fewer
    than two pairs the p-value is NaN: not computed (n < 2)."""
    from scipy import stats

    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError("paired samples differ in length")
    d = a - b
    if d.size == 0:
        return {"diff": math.nan, "diff_ci_low": math.nan, "diff_ci_high": math.nan, "p_value": math.nan}
    if d.size < 2:   # permutation_test needs two observations per sample: p not computed (n < 2)
        return {"diff": float(d[0]), "diff_ci_low": float(d[0]), "diff_ci_high": float(d[0]), "p_value": math.nan}
    if np.all(d == 0):
        return {"diff": 0.0, "diff_ci_low": 0.0, "diff_ci_high": 0.0, "p_value": 1.0}
    low, high = bootstrap_ci(d, n_resamples, seed, confidence)

    def stat(x, y, axis=-1):
        return np.mean(x - y, axis=axis)

    res = stats.permutation_test((a, b), stat, permutation_type="samples", vectorized=True,
                                 n_resamples=n_resamples, batch=_batch(a.size), alternative="two-sided",
                                 rng=np.random.default_rng(seed))
    return {"diff": float(d.mean()), "diff_ci_low": low, "diff_ci_high": high,
            "p_value": float(min(1.0, res.pvalue))}


def per_query_metrics(positions: Sequence[int], expected_ids: Sequence[str],
                      top_ids: Sequence[str], ontsim: OntologySimilarity | None) -> dict[str, float]:
    """All per-query metric values (the dataset metric is their mean)."""
    rank = positions[0]
    row = {"mrr": reciprocal_rank(rank)}
    for k in HR_KS:
        row[f"hr@{k}"] = hit_at(rank, k)
    row[f"ndcg@{NDCG_K}"] = ndcg_at(positions, NDCG_K)
    for k in ONTSIM_KS:
        row[f"maxontsim@{k}"] = ontsim.max_sim(expected_ids, top_ids[:k]) if ontsim else math.nan
    return row


def summarize(rows: Mapping[str, Sequence[float]], n_resamples: int, seed: int) -> dict[str, float]:
    """``{metric: mean, metric_ci_low: .., metric_ci_high: ..}`` for per-query values."""
    out: dict[str, float] = {}
    for name, values in rows.items():
        x = np.asarray(values, dtype=float)
        out[name] = float(x.mean()) if x.size else math.nan
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = bootstrap_ci(x, n_resamples, seed)
    return out
