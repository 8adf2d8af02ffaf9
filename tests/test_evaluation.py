"""Honest evaluation (issue: held-out benchmark concepts, one MRR definition, multi-vector
retrieval): the shared metric functions against hand-computed values, and the pairs
stage's hold-out of external benchmark concepts and texts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stages import retrieval_metrics as rm


# --------------------------------------------------------------------------- one MRR definition

def test_gold_ranks_full_rank_pessimistic_ties():
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.1],     # gold 1 ties with 0 and 2 -> rank 3
                           [0.9, 0.1, 0.2, 0.3],     # gold 0 best -> 1
                           [0.2, 0.2, 0.2, 0.2],     # all equal -> the worst rank, 4
                           [0.9, 0.8, 0.7, 0.6]])    # gold 3 last -> 4 (no cut-off at 10)
    ranks = rm.gold_ranks(scores, [1, 0, 2, 3])
    assert ranks.tolist() == [3, 1, 4, 4]
    # the same numbers as the benchmark's positions
    assert ranks.tolist() == [p[0] for p in rm.expected_positions(scores, [[1], [0], [2], [3]])]
    s = rm.rank_summary(ranks)
    assert s["mrr"] == pytest.approx((1 / 3 + 1 + 1 / 4 + 1 / 4) / 4)
    assert (s["hr@1"], s["hr@10"]) == (0.25, 1.0)
    # a gold outside the corpus (-1) is a miss, not an error
    assert rm.gold_ranks(scores[:1], [-1]).tolist() == [0]
    assert rm.rank_summary([0, 2]) == {"mrr": 0.25, "hr@1": 0.0, "hr@10": 0.5}


def test_dev_retrieval_is_the_benchmark_quantity():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(40, 8)).astype(np.float32)
    c = rng.normal(size=(300, 8)).astype(np.float32)
    c[::7] = c[1::7][: len(c[::7])]                    # duplicated documents: exact ties
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    gold = rng.integers(0, 300, 40)
    got = rm.dev_retrieval(q, c, gold, batch=7)
    pos = rm.expected_positions(torch.from_numpy(q @ c.T), [[int(g)] for g in gold])
    per = [rm.per_query_metrics(p, ["x"], [], None) for p in pos]
    for name in ("mrr", "hr@1", "hr@10", "ndcg@10"):
        assert got[name] == pytest.approx(np.mean([r[name] for r in per]))
    assert any(p[0] > 10 for p in pos)                 # the full rank matters (no MRR@10)


# --------------------------------------------------------------------------- multi-vector

def test_multi_vector_max_aggregation_hand_example():
    # concepts: 0 = label + 2 synonyms, 1 = label only, 2 = label + 1 synonym
    vec_concept = torch.tensor([0, 0, 0, 1, 2, 2])
    scores = torch.tensor([[0.1, 0.7, 0.3, 0.5, 0.2, 0.6],
                           [0.9, 0.1, 0.1, 0.8, -0.4, -0.2]])
    got = rm.concept_max(scores, vec_concept, 3)
    assert torch.allclose(got, torch.tensor([[0.7, 0.5, 0.6], [0.9, 0.8, -0.2]]))
    # query 0: single-vector (labels only: 0.1, 0.5, 0.2) ranks concept 0 last;
    # multi-vector ranks it first thanks to its synonym
    assert rm.gold_ranks(scores[:, [0, 3, 4]], [0, 0]).tolist() == [3, 1]
    assert rm.gold_ranks(got, [0, 0]).tolist() == [1, 1]
