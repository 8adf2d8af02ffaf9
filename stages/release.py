"""Stage release: the fine-tuned model as a folder phentrieve and sentence-transformers 4.1
to 5.7 load as it is -- classic layout, the base model's token limit, the INT8 ONNX file,
the score calibration, a model card written from the run, a checksum list -- named after
what it is (hpo_embed/export/release.py)."""
from __future__ import annotations

import dataclasses

from hpo_embed.common import run_stage
from hpo_embed.export.release import ReleasePaths, run
from hpo_embed.params import load_params
from stages import parser

HELP = {
    "finetuned": "the train stage's model folder", "base": "the base_model stage's folder (token limit, record)",
    "onnx": "the quantize stage's published folder (onnx/model.onnx)",
    "calibration": "the benchmark stage's calibration.json", "benchmark-metrics": "metrics/benchmark.json",
    "benchmark-report": "reports/benchmark.json (CIs)", "train-report": "reports/train.json (what was trained)",
    "hpo-metrics": "metrics/hpo.json (HPO release)", "quantize-metrics": "metrics/quantize.json (INT8 choice)",
    "terms": "the parse_hpo stage's terms.parquet (texts of the agreement check)",
    "out": "the release folder (holds release/<name>/ only)", "metrics": "name, size, agreement checks (JSON)",
}


def main(argv: list[str] | None = None) -> None:
    a = parser("release", __doc__, HELP).parse_args(argv)
    params = load_params(a.params)
    run(params, ReleasePaths(**{f.name: getattr(a, f.name) for f in dataclasses.fields(ReleasePaths)}))


if __name__ == "__main__":
    run_stage(main)
