"""Stage train: fine-tune the base_model stage's model on the training pairs
(sentence-transformers trainer, dev evaluation, best checkpoint by dev MRR, resumable
checkpoints, dvclive curves). Runs unchanged under torchrun / accelerate launch (DDP)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from hpo_embed.common import run_stage
from hpo_embed.params import load_params
from hpo_embed.training.train import TrainPaths, run
from stages import parser

HELP = {
    "pairs": "the pairs stage's folder (train/queries/concepts.parquet)",
    "terms": "the parse_hpo stage's terms.parquet",
    "edges": "the parse_hpo stage's edges.parquet",
    "negatives": "the mine stage's folder (negatives.parquet; used when train.negatives is mined)",
    "hpo-metrics": "the parse_hpo stage's metrics (data_version)",
    "base": "the base_model stage's model folder",
    "out": "the fine-tuned model folder",
    "checkpoints": "resume state (persist)",
    "metrics": "headline figures (JSON)",
    "report": "every figure (JSON)",
    "live": "dvclive folder (curves)",
}


def parse(argv: list[str] | None) -> tuple[Path, TrainPaths]:
    """The params file and the run's paths from the command line."""
    a = parser("train", __doc__, HELP).parse_args(argv)
    return a.params, TrainPaths(**{f.name: getattr(a, f.name) for f in dataclasses.fields(TrainPaths)})


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    params, paths = parse(argv)
    run(load_params(params), paths)


if __name__ == "__main__":
    run_stage(main)
