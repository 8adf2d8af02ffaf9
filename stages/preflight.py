"""Stage preflight: the models of the active params resolve offline, train.device: cuda has
a usable GPU, and the memory / time / disk estimate (printed) fits the card. Writes a stamp
with constant content, so passing again never reruns translate."""
from __future__ import annotations

import logging

from hpo_embed.common import run_stage, write_json
from hpo_embed.gpu.estimate import count_pairs
from hpo_embed.gpu.preflight import run
from hpo_embed.params import load_params
from stages import parser

log = logging.getLogger("hpo_embed.preflight")


def main(argv: list[str] | None = None) -> None:
    a = parser("preflight", __doc__, {"stamp": "written when every check passes (constant content)"}, {
        "train-pairs": "the pairs stage's train.parquet when it exists (only sizes the estimate; not a dep: "
                       "pairs runs after preflight)",
    }).parse_args(argv)
    params = load_params(a.params)
    info = run(params, count_pairs(params, a.train_pairs) if a.train_pairs else None)
    log.info("preflight passed: %s", info)
    write_json(a.stamp, {"preflight": "passed"})


if __name__ == "__main__":
    run_stage(main)
