"""Stage calibrate: Platt and isotonic calibration of the reranker's top-1 logit on the dev
split, ECE (15 bins) / Brier before and after, a reliability diagram (DVC plot) and the
per-branch thresholds for ``rerank.target_precision`` (hpo_embed.retrieval.calibration).

``python -m stages.calibrate --candidates data/rerank/candidates.parquet --model
models/reranker/model --terms data/hpo/terms.parquet --out models/reranker/calibration.json
--plots data/rerank/reliability --metrics metrics/calibrate.json``
"""
from __future__ import annotations

from hpo_embed.common import run_stage
from hpo_embed.params import load_params
from hpo_embed.rerank.calibrate import run
from stages import parser


def main(argv=None) -> None:
    a = parser("calibrate", __doc__, {
        "candidates": "candidates",
        "model": "the rerank_train stage's CrossEncoder folder",
        "terms": "terms",
        "out": "calibration.json (next to the model)",
        "plots": "folder of reliability-diagram CSVs",
        "metrics": "metrics",
    }).parse_args(argv)
    run(load_params(a.params).rerank, a.candidates, a.model, a.terms, a.out, a.plots, a.metrics)


if __name__ == "__main__":
    run_stage(main)
