"""Stage mine: hard negatives for the train stage's rows (ontology relatives and the base
model's nearest texts behind the false-negative guard; docs/negatives.md). A stub in
seconds unless train.negatives is mined."""
from __future__ import annotations

import os

from hpo_embed.common import run_stage
from hpo_embed.negatives.run import run
from hpo_embed.params import load_params
from stages import parser


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    a = parser("mine", __doc__, {
        "pairs": "the pairs stage's folder (train.parquet, concepts.parquet)",
        "terms": "the parse_hpo stage's terms.parquet",
        "edges": "the parse_hpo stage's edges.parquet",
        "model": "the base_model stage's model folder",
        "out": "output folder (negatives.parquet)",
        "metrics": "headline figures (JSON)",
        "report": "every count (JSON)",
    }, optional={"cache": "embedding cache folder (not a DVC output; keyed by model files + texts)"}).parse_args(argv)
    run(load_params(a.params), a.pairs, a.terms, a.edges, a.model, a.out, a.metrics, a.report, a.cache)


if __name__ == "__main__":
    run_stage(main)
