"""ONNX INT8 export of the reranker (sentence-transformers' ONNX backend + dynamic
quantization) and its agreement with the PyTorch model.

``export_int8(src, dst, preset)`` writes an ONNX CrossEncoder folder ``dst`` holding
``onnx/model_int8.onnx`` (INT8 weights, dynamic activations; the name the embedding
model's INT8 file has too); load it with
``CrossEncoder(dst, backend="onnx", model_kwargs={"file_name": "onnx/model_int8.onnx"})``.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from hpo_embed.common import UserError, write_json
from hpo_embed.export.onnx import ort_session_options
from hpo_embed.rerank.model import load_cross_encoder, score_candidates
from hpo_embed.retrieval.corpus import build_corpus, load_terms
from hpo_embed.schemas import read_table

log = logging.getLogger("hpo_embed.rerank")


INT8_FILE = "onnx/model_int8.onnx"


def int8_file(preset: str | None = None) -> str:
    return INT8_FILE


def export_int8(src: Path, dst: Path, preset: str = "avx512_vnni") -> Path:
    """Export the CrossEncoder folder ``src`` to ONNX, quantize it dynamically to INT8 and
    publish the folder ``dst`` (written beside it, then renamed). Returns ``dst``."""
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model
    from sentence_transformers.cross_encoder import CrossEncoder

    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = CrossEncoder(str(src), backend="onnx", device="cpu", local_files_only=True,
                         model_kwargs={"export": True, "provider": "CPUExecutionProvider"})
    model.save_pretrained(str(tmp))
    export_dynamic_quantized_onnx_model(model, preset, str(tmp))
    made = sorted((tmp / "onnx").glob(f"model_*int8_{preset}.onnx"))   # qint8 (VNNI) or quint8 (avx2)
    if len(made) != 1:
        raise RuntimeError(f"expected one quantized file in {tmp / 'onnx'}, found {[m.name for m in made]}")
    made[0].rename(tmp / INT8_FILE)
    fp32 = tmp / "onnx" / "model.onnx"
    if fp32.is_file():   # only the INT8 file ships
        fp32.unlink()
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    tmp.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
    return dst


def load_int8(folder: Path, preset: str, threads: int, max_length: int):
    from sentence_transformers.cross_encoder import CrossEncoder

    model = CrossEncoder(str(folder), backend="onnx", device="cpu", local_files_only=True, max_length=max_length,
                         model_kwargs={"file_name": int8_file(preset), "provider": "CPUExecutionProvider",
                                       "session_options": ort_session_options(threads)})
    model.prompts = {}
    model.default_prompt_name = None
    return model


def agreement(a: list[np.ndarray], b: list[np.ndarray]) -> dict[str, float]:
    """Per-query score lists of two models: Spearman correlation of all scores, top-1
    agreement (same best candidate), mean |difference|."""
    from scipy.stats import spearmanr

    fa, fb = np.concatenate(a), np.concatenate(b)
    top = np.mean([int(np.argmax(x) == np.argmax(y)) for x, y in zip(a, b)]) if a else float("nan")
    return {"spearman": float(spearmanr(fa, fb).statistic), "top1_agreement": float(top),
            "mean_abs_diff": float(np.mean(np.abs(fa - fb))), "pairs": int(fa.size)}


def run(params, model_dir: Path, candidates: Path, terms: Path, out: Path, metrics: Path) -> None:
    """The rerank_export stage: ``out`` holds the INT8 reranker, ``metrics`` its agreement
    with the PyTorch model on 100 dev candidate lists."""
    p, preset = params.rerank, params.quantize.preset
    if not p.enabled:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        (out / "DISABLED.txt").write_text("rerank.enabled is false: nothing exported\n", encoding="utf-8")
        write_json(metrics, {"enabled": False})
        return
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: no reranker; run the rerank_train stage first (dvc repro rerank_train)")
    t0 = time.time()
    export_int8(model_dir, out, preset)
    size_mb = (out / int8_file(preset)).stat().st_size / 1e6
    dev = read_table(candidates, "candidates").query("set == 'dev'").head(100)
    docs = build_corpus(load_terms(terms), p.document)
    torch.set_num_threads(2)
    fp32 = load_cross_encoder(str(model_dir), p.max_length)
    int8 = load_int8(out, preset, 2, p.max_length)
    agree = agreement(score_candidates(fp32, dev, docs, p.batch_size_predict),
                      score_candidates(int8, dev, docs, p.batch_size_predict))
    write_json(metrics, {"enabled": True, "file": int8_file(preset), "size_mb": round(size_mb, 1),
                         "dev_queries": len(dev), **{k: round(v, 4) if isinstance(v, float) else v
                                                     for k, v in agree.items()},
                         "wall_time_s": round(time.time() - t0, 1)})
    log.info("INT8 reranker %s (%.0f MB): Spearman %.4f, top-1 agreement %.3f vs PyTorch", out / int8_file(preset),
             size_mb, agree["spearman"], agree["top1_agreement"])
