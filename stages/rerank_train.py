"""Stage rerank_train: train the cross-encoder reranker (hpo_embed.rerank.model) on
train-split concepts, best checkpoint by dev MRR@10 of the bi-encoder's top-k reranked.

``python -m stages.rerank_train --candidates data/rerank/candidates.parquet --init-model
models/finetuned --terms data/hpo/terms.parquet --concepts data/pairs/concepts.parquet
--out models/reranker/model --checkpoints models/checkpoints-rerank --metrics metrics/rerank_train.json``
"""
from __future__ import annotations

import os

from hpo_embed.common import run_stage
from hpo_embed.params import load_params
from hpo_embed.rerank.fit import run
from stages import parser


def main(argv=None) -> None:
    a = parser("rerank_train", __doc__, {
        "candidates": "candidates",
        "finetuned": "rerank.init = finetuned: this folder",
        "base": "rerank.init = base: this folder",
        "terms": "terms",
        "concepts": "concepts",
        "out": "CrossEncoder folder",
        "checkpoints": "checkpoints",
        "metrics": "metrics",
    }).parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run(load_params(a.params).rerank, a.candidates, a.finetuned, a.base, a.terms, a.concepts, a.out, a.checkpoints,
        a.metrics)


if __name__ == "__main__":
    run_stage(main)
