"""Stage rerank_export: the reranker as ONNX INT8 (hpo_embed.rerank.export), checked
against the PyTorch model on the dev candidate lists (score correlation, top-1 agreement).

``python -m stages.rerank_export --model models/reranker/model --candidates
data/rerank/candidates.parquet --terms data/hpo/terms.parquet --out models/reranker/onnx
--metrics metrics/rerank_export.json``
"""
from __future__ import annotations

from hpo_embed.common import run_stage
from hpo_embed.params import load_params
from hpo_embed.rerank.export import run
from stages import parser


def main(argv=None) -> None:
    a = parser("rerank_export", __doc__, {
        "model": "model",
        "candidates": "candidates",
        "terms": "terms",
        "out": "out",
        "metrics": "metrics",
    }).parse_args(argv)
    run(load_params(a.params), a.model, a.candidates, a.terms, a.out, a.metrics)


if __name__ == "__main__":
    run_stage(main)
