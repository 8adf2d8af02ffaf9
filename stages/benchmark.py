"""Stage benchmark: score base (train.base_model), finetuned and int8 (+ benchmark.extra_models),
single- and multi-vector, on the held-out test concepts of queries.parquet (every language)
and on the phentrieve-format files of benchmark.external_sets; 95% bootstrap CIs, paired
permutation tests, HR@K curves, a markdown report.

``--fetch-phentrieve FOLDER`` downloads the pinned phentrieve German sets and exits."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from hpo_embed.benchmark.inputs import Paths, fetch_phentrieve
from hpo_embed.benchmark.run import run
from hpo_embed.common import run_stage
from hpo_embed.params import load_params
from stages import parser

HELP = {
    "terms": "the parse_hpo stage's terms.parquet", "edges": "the parse_hpo stage's edges.parquet",
    "queries": "the pairs stage's queries.parquet", "concepts": "the pairs stage's concepts.parquet",
    "base": "the base_model stage's model folder", "finetuned": "the train stage's model folder",
    "onnx": "the quantize stage's folder", "per-query": "per-query ranks and scores (Parquet)",
    "curves": "folder of HR@K files", "cache": "corpus embedding cache (not a DVC output)",
    "metrics": "headline figures (JSON)", "reports": "folder for benchmark.md and benchmark.json",
}
OPTIONAL = {"calibration": "the score calibration and thresholds (JSON; the release ships it)"}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--fetch-phentrieve"]:
        ap = argparse.ArgumentParser(prog="python -m stages.benchmark --fetch-phentrieve")
        ap.add_argument("--fetch-phentrieve", type=Path, required=True, metavar="FOLDER")
        for path in fetch_phentrieve(ap.parse_args(argv).fetch_phentrieve):
            print(path)
        return
    a = parser("benchmark", __doc__, HELP, OPTIONAL).parse_args(argv)
    params = load_params(a.params)
    run(params.benchmark, params.train.base_model,
        Paths(**{f.name: getattr(a, f.name) for f in dataclasses.fields(Paths)}))


if __name__ == "__main__":
    run_stage(main)
