"""Stage rerank_candidates: the fine-tuned bi-encoder's top-k candidates for the reranker's
train / dev / held-out queries and the phentrieve files (hpo_embed.rerank.candidates).

``python -m stages.rerank_candidates --model models/finetuned --pairs data/pairs
--terms data/hpo/terms.parquet --out data/rerank/candidates.parquet``
"""
from __future__ import annotations

from hpo_embed.common import run_stage
from hpo_embed.params import load_params
from hpo_embed.rerank.candidates import run
from stages import parser


def main(argv=None) -> None:
    a = parser("rerank_candidates", __doc__, {
        "model": "SentenceTransformer folder (models/finetuned)",
        "pairs": "folder with train/queries/concepts.parquet",
        "terms": "terms",
        "out": "candidates parquet",
        "info": "counts and timings (JSON)",
    }).parse_args(argv)
    run(load_params(a.params), a.model, a.pairs, a.terms, a.out, a.info)


if __name__ == "__main__":
    run_stage(main)
