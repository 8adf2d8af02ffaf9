"""ONNX INT8 export of the reranker (sentence-transformers' ONNX backend + dynamic
quantization) and its agreement with the PyTorch model.

``export_int8(src, dst, preset)`` writes an ONNX CrossEncoder folder ``dst`` holding
``onnx/model_int8.onnx`` (INT8 weights, dynamic activations; the name the embedding
model's INT8 file has too); load it with
``CrossEncoder(dst, backend="onnx", model_kwargs={"file_name": "onnx/model_int8.onnx"})``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


INT8_FILE = "onnx/model_int8.onnx"


def int8_file(preset: str | None = None) -> str:
    return INT8_FILE


def session_options(threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return so


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
                                       "session_options": session_options(threads)})
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
