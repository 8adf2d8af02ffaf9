"""Stage rerank_export: the reranker as ONNX INT8 (hpo_embed.rerank.export), checked
against the PyTorch model on the dev candidate lists (score correlation, top-1 agreement).

``python -m stages.rerank_export --model models/reranker/model --candidates
data/rerank/candidates.parquet --terms data/hpo/terms.parquet --out models/reranker/onnx
--metrics metrics/rerank_export.json``
"""
from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

from hpo_embed.common import UserError, run_stage, write_json
from stages import parser

log = logging.getLogger("hpo_embed.rerank")


def parse_args(argv=None) -> argparse.Namespace:
    return parser("rerank_export", __doc__, {
        "model": "model",
        "candidates": "candidates",
        "terms": "terms",
        "out": "out",
        "metrics": "metrics",
    }).parse_args(argv)


def main(argv=None) -> None:
    a = parse_args(argv)
    from hpo_embed.params import load_params
    params = load_params(a.params)
    p = params.rerank
    if not p.enabled:
        shutil.rmtree(a.out, ignore_errors=True)
        a.out.mkdir(parents=True)
        (a.out / "DISABLED.txt").write_text("rerank.enabled is false: nothing exported\n", encoding="utf-8")
        write_json(a.metrics, {"enabled": False})
        return
    if not (a.model / "config.json").is_file():
        raise UserError(f"{a.model}: no reranker; run the rerank_train stage first (dvc repro rerank_train)")
    t0 = time.time()
    import torch

    from hpo_embed.rerank import export as X
    from hpo_embed.rerank.model import load_cross_encoder, score_candidates
    from hpo_embed.retrieval.corpus import build_corpus, load_terms
    from hpo_embed.schemas import read_table

    preset = params.quantize.preset
    X.export_int8(a.model, a.out, preset)
    size_mb = (a.out / X.int8_file(preset)).stat().st_size / 1e6
    cands = read_table(a.candidates, "candidates")
    dev = cands[cands["set"] == "dev"].head(100)
    docs = build_corpus(load_terms(a.terms), p.document)
    torch.set_num_threads(2)
    fp32 = load_cross_encoder(str(a.model), p.max_length)
    int8 = X.load_int8(a.out, preset, 2, p.max_length)
    agree = X.agreement(score_candidates(fp32, dev, docs, p.batch_size_predict),
                        score_candidates(int8, dev, docs, p.batch_size_predict))
    metrics = {"enabled": True, "file": X.int8_file(preset), "size_mb": round(size_mb, 1), "dev_queries": len(dev),
               **{k: round(v, 4) if isinstance(v, float) else v for k, v in agree.items()},
               "wall_time_s": round(time.time() - t0, 1)}
    write_json(a.metrics, metrics)
    log.info("INT8 reranker %s (%.0f MB): Spearman %.4f, top-1 agreement %.3f vs PyTorch", a.out / X.int8_file(preset),
             size_mb, agree["spearman"], agree["top1_agreement"])


if __name__ == "__main__":
    run_stage(main)
