"""Stage rerank_benchmark: bi-encoder vs bi-encoder + reranker on the held-out languages and
the phentrieve files (paired test), calibration and precision/coverage at the dev
thresholds on the held-out queries (hpo_embed.rerank.evaluate).

``python -m stages.rerank_benchmark --candidates data/rerank/candidates.parquet --model
models/reranker/model --calibration models/reranker/calibration.json --terms
data/hpo/terms.parquet --per-query data/rerank/per_query.parquet --report reports/rerank.md
--metrics metrics/rerank.json``
"""
from __future__ import annotations

from hpo_embed.common import run_stage
from hpo_embed.params import load_params
from hpo_embed.rerank.benchmark import run
from stages import parser


def main(argv=None) -> None:
    a = parser("rerank_benchmark", __doc__, {
        "candidates": "candidates",
        "model": "model",
        "calibration": "calibration",
        "terms": "terms",
        "per-query": "per-query",
        "report": "markdown; the JSON with every figure goes beside it",
        "metrics": "metrics",
    }).parse_args(argv)
    run(load_params(a.params).rerank, a.candidates, a.model, a.calibration, a.terms, a.per_query, a.report, a.metrics)


if __name__ == "__main__":
    run_stage(main)
