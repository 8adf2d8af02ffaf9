"""Stage quantize: export --model (the train stage's model) to ONNX, build the INT8
candidates into --build, measure them on this machine and publish the fastest that passes
the quality gate as --out: a SentenceTransformer folder whose only ONNX file,
onnx/model.onnx, is that INT8 model (``SentenceTransformer(out, backend="onnx")``).

``--select`` re-measures the candidates already built in --build on THIS machine and
re-publishes the fastest that passes the gate (e.g. on the production server);
``--select --rebuild`` rebuilds and re-measures everything, as the stage does."""
from __future__ import annotations

import logging

from hpo_embed.common import run_stage
from hpo_embed.export.quantize import run, select_on_this_machine
from hpo_embed.export.report import headline
from hpo_embed.params import load_params
from stages import parser


def main(argv: list[str] | None = None) -> None:
    ap = parser("quantize", __doc__, {
        "model": "the train stage's SentenceTransformer folder to export",
        "terms": "the parse_hpo stage's terms.parquet",
        "translations": "the translate stage's folder (translated labels in the measurement set)",
        "queries": "the pairs stage's queries.parquet (held-out queries, split=test, for the gate)",
        "out": "the published CPU model folder (the chosen INT8 as onnx/model.onnx, nothing else ONNX)",
        "build": "the build folder: ONNX fp32 export (onnx/model.onnx), candidates, measurement state",
        "metrics": "headline figures (JSON)",
        "reports": "folder for quantize.md (candidate table) and quantize.json",
    })
    ap.add_argument("--select", action="store_true", help="re-measure the built candidates on this machine")
    ap.add_argument("--rebuild", action="store_true", help="with --select: rebuild and re-measure everything")
    a = ap.parse_args(argv)
    logging.getLogger("onnxruntime").setLevel(logging.WARNING)  # one INFO line per graph node otherwise
    params = load_params(a.params)
    p = params.quantize
    gate_sets = params.benchmark.external_sets if p.gate_sets is None else p.gate_sets
    if a.select and not a.rebuild:
        src = a.model if (a.model / "modules.json").is_file() else None
        rep = select_on_this_machine(p, src, a.out, a.metrics, a.reports, build=a.build)
    else:
        rep = run(p, a.model, a.out, a.metrics, terms_path=a.terms,
                  queries_path=a.queries, translations=a.translations, reports=a.reports, build=a.build,
                  gate_sets=gate_sets)
    h = headline(rep)
    print(f"chosen {h['chosen']} (gate {'passed' if h['gate_passed'] else 'NOT passed'}): "
          f"{h['speed_ratio_b32']}x {h['baseline']} at batch 32, {h['speed_ratio_index']}x indexing, "
          f"batch-1 p50 {h['latency_b1_p50_ratio']}x; MRR delta {h['mrr_delta']:+.4f}, HR@1 delta "
          f"{h['hr1_delta']:+.4f}; {h['size_mb']} MB ({a.out}: {rep['rows'][h['chosen']]['folder_mb']} MB). Table: {a.reports / 'quantize.md'}")


if __name__ == "__main__":
    run_stage(main)
