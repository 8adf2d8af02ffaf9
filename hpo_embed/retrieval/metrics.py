"""The one retrieval-metrics module of the pipeline: ranks under a stated tie rule, MRR,
HR@k, NDCG@k, MaxOntSim@k on the HPO is_a graph, multi-vector (max over a concept's
vectors) scoring, bootstrap confidence intervals and a paired permutation test.

Used by the benchmark stage (every table), the train stage's dev evaluation
(``dev_retrieval``) and the quantize stage's fp32-vs-int8 MRR (``gold_ranks``): "MRR"
means the same quantity everywhere -- the mean reciprocal *full* rank (no cut-off at 10)
with ties broken pessimistically.

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

from hpo_embed.ontology.graph import IsAGraph

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


def gold_ranks(scores: torch.Tensor | np.ndarray, gold: Sequence[int] | np.ndarray) -> np.ndarray:
    """Full rank of one expected document per query (``gold[i]`` indexes the corpus; -1 =
    not in the corpus: rank 0, which callers count as a miss). Pessimistic ties: the rank
    is the number of documents scoring ``>=`` the gold score (the gold one included).
    Equal to ``expected_positions(scores, [[g] for g in gold])`` for in-corpus golds."""
    s = torch.as_tensor(scores)
    g = torch.as_tensor(np.asarray(gold), dtype=torch.long)
    if s.ndim != 2 or s.shape[0] != g.shape[0]:
        raise ValueError("scores must be [len(gold), corpus]")
    gs = s.gather(1, g.clamp(min=0).unsqueeze(1))
    rank = (s >= gs).sum(dim=1)
    return torch.where(g >= 0, rank, torch.zeros_like(rank)).numpy()


def rank_summary(ranks: Sequence[int] | np.ndarray, ks: Sequence[int] = (1, 10)) -> dict[str, float]:
    """``{mrr, hr@k...}`` of full ranks (0 = not retrievable: reciprocal rank 0, no hit)."""
    r = np.asarray(ranks, dtype=float)
    if r.size == 0:
        return {"mrr": math.nan, **{f"hr@{k}": math.nan for k in ks}}
    rr = np.where(r > 0, 1.0 / np.maximum(r, 1), 0.0)
    return {"mrr": float(rr.mean()), **{f"hr@{k}": float(((r > 0) & (r <= k)).mean()) for k in ks}}


def dev_retrieval(query_emb: torch.Tensor | np.ndarray, corpus_emb: torch.Tensor | np.ndarray,
                  gold: Sequence[int], batch: int = 512) -> dict[str, float]:
    """MRR (full rank, pessimistic ties), HR@1, HR@10 and NDCG@10 of single-gold queries
    (embeddings L2-normalised: cosine = dot product). The train stage's dev metric."""
    q, c = torch.as_tensor(query_emb, dtype=torch.float32), torch.as_tensor(corpus_emb, dtype=torch.float32)
    g = np.asarray(gold)
    ranks = np.concatenate([gold_ranks(q[i:i + batch] @ c.T, g[i:i + batch]) for i in range(0, len(g), batch)]) \
        if len(g) else np.zeros(0)
    out = rank_summary(ranks, (1, 10))
    out[f"ndcg@{NDCG_K}"] = float(np.mean([ndcg_at([int(r)], NDCG_K) if r > 0 else 0.0 for r in ranks])) \
        if len(ranks) else math.nan
    return out


def concept_max(scores: torch.Tensor, vec_concept: torch.Tensor, n_concepts: int) -> torch.Tensor:
    """Multi-vector retrieval: ``scores`` ``[queries, vectors]`` -> ``[queries, concepts]``,
    a concept's score being the maximum over its vectors (phentrieve's
    ``label_synonyms_max``). ``vec_concept[j]`` is vector j's concept index; every
    concept must own at least one vector."""
    out = torch.full((scores.shape[0], n_concepts), float("-inf"), dtype=scores.dtype)
    idx = vec_concept.to(torch.long).unsqueeze(0).expand_as(scores)
    return out.scatter_reduce(1, idx, scores, reduce="amax", include_self=True)


def top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and scores of the ``k`` best documents per query (score desc, ties by
    lower corpus index). A partial selection (``torch.topk`` of 4k candidates, then a
    stable sort of the candidates in index order); rows whose ties reach past the
    candidates fall back to a full stable sort."""
    n = scores.shape[1]
    k = min(k, n)
    if k == 0:
        return scores.new_zeros((scores.shape[0], 0), dtype=torch.long), scores[:, :0]
    wide = min(n, 4 * k)
    cand = torch.topk(scores, wide, dim=1).indices.sort(dim=1).values      # candidates in index order
    cs = scores.gather(1, cand)
    order = torch.sort(-cs, dim=1, stable=True).indices[:, :k]
    idx = cand.gather(1, order)
    if wide < n:
        # exact unless a document outside the candidates ties with the k-th best
        kth = scores.gather(1, idx[:, -1:])
        unsure = (scores >= kth).sum(dim=1) > (cs >= kth).sum(dim=1)
        if unsure.any():
            rows = unsure.nonzero().squeeze(1)
            idx[rows] = torch.sort(-scores[rows], dim=1, stable=True).indices[:, :k]
    return idx, scores.gather(1, idx)


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

ONTSIM_FORMULAS = ("hybrid", "lin")


class OntologySimilarity:
    """Ontology similarity of two HPO terms on the is_a DAG (MaxOntSim's building block).

    ``formula="hybrid"`` (default) follows phentrieve's definition
    (``phentrieve/evaluation/metrics.py``, HYBRID formula):

    - ``sim(a, a) = 1`` (also for terms missing from the graph); a term missing from the
      graph scores 0 against any other term;
    - ``depth(t)`` = length of the **shortest** is_a path from the root (breadth-first,
      as in phentrieve's precomputed depths); ``D`` = the largest depth in the graph;
    - the LCA is the deepest common ancestor (each term is its own ancestor), depth ``l``;
    - ``p = (depth(a) - l) + (depth(b) - l)``; ``p <= 0`` gives 1.0 (phentrieve's rule; it
      also happens for an ancestor whose shortest depth equals its descendant's), else
      ``sim = 0.7 * l / D + 0.3 * (1 - p / (depth(a) + depth(b)))``, clipped to [0, 1].
      Two terms whose only common ancestor is the root score ``0.3 * (1 - 1) = 0`` by the
      distance term and 0 by the depth term.

    ``formula="lin"``: ``2 * l / (depth(a) + depth(b))`` with **longest**-path depths
    (the pipeline's earlier definition; 0 when only the root is shared).
    """

    def __init__(self, graph: IsAGraph | Iterable[tuple[str, str]], root: str = ROOT_ID,
                 formula: str = "hybrid"):
        if formula not in ONTSIM_FORMULAS:
            raise ValueError(f"formula must be one of {ONTSIM_FORMULAS}")
        self.graph = graph if isinstance(graph, IsAGraph) else IsAGraph(graph)
        self.parents = self.graph.parents
        self.known = set(self.graph.parents) | set(self.graph.children) | {root}
        self.root = root
        self.formula = formula
        self._anc: dict[str, frozenset[str]] = {}
        self._depth: dict[str, int] = {}
        self._bfs = self.graph.breadth_first_depths(root)   # shortest-path depths (unreached terms: 0)
        self.max_depth = max(self._bfs.values()) or 1
        self.sim = functools.lru_cache(maxsize=500_000)(self._sim)

    def ancestors(self, term: str) -> frozenset[str]:
        """``term`` and everything above it (memoised)."""
        if term not in self._anc:
            self._anc[term] = self.graph.ancestors(term) | {term}
        return self._anc[term]

    def shortest_depth(self, term: str) -> int:
        """Shortest is_a path length from the root (0 for terms that do not reach it)."""
        return self._bfs.get(term, 0)

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

    def _sim(self, a: str, b: str) -> float:
        if a == b:
            return 1.0
        if a not in self.known or b not in self.known:
            return 0.0
        common = self.ancestors(a) & self.ancestors(b)
        if not common:
            return 0.0
        if self.formula == "lin":
            lca_depth = max(self.depth(c) for c in common)
            total = self.depth(a) + self.depth(b)
            return 2.0 * lca_depth / total if total else 0.0
        d = self.shortest_depth
        lca = max(d(c) for c in common)
        da, db = d(a), d(b)
        path = (da - lca) + (db - lca)
        if path <= 0:
            return 1.0
        sim = 0.7 * lca / self.max_depth + 0.3 * (1.0 - path / (da + db))
        return max(0.0, min(1.0, sim))

    def max_sim(self, expected: Iterable[str], retrieved: Iterable[str]) -> float:
        """MaxOntSim: the best ``sim(e, r)`` over expected ``e`` and retrieved ``r``
        (phentrieve's ``calculate_test_case_max_ont_sim``; 0 when nothing is retrieved)."""
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
    if d.size == 1:   # one pair: no test possible
        return {"diff": float(d[0]), "diff_ci_low": float(d[0]), "diff_ci_high": float(d[0]), "p_value": math.nan}
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
