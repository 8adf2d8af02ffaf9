"""The INT8 candidates of ``quantize.method: auto`` and building them (a per-layer
sensitivity pass picks the MatMuls kept fp32 for ``*_keep_sensitive``)."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from hpo_embed.common import UserError, log
from hpo_embed.export.onnx import (FP32_FILE, file_mb, infer_shapes, model_feeds, optimize_onnx, ort_session_options,
                                   quantize_onnx)
from hpo_embed.params import QuantizeParams

ALL_OPS = ["MatMul", "Attention", "Gather", "EmbedLayerNormalization"]


# name -> (graph optimisation, QuantizeParams overrides, keep the most sensitive MatMuls fp32, what it is)
CANDIDATES: dict[str, tuple[str, dict[str, Any], bool, str]] = {
    "nbits_b32": ("none", dict(method="matmul_nbits", block_size=32, operators=ALL_OPS), False,
                  "MatMulNBits 8-bit, blocks of 32 (int8 compute) + int8 embedding Gather"),
    "fused_nbits_b32": ("O2", dict(method="matmul_nbits", block_size=32, operators=["MatMul", "Gather"]), False,
                        "ORT fusions + MatMulNBits 8-bit blocks of 32 + int8 embedding Gather"),
    "plain_dynamic": ("none", dict(method="dynamic", operators=["MatMul", "Gather"]), False,
                      "dynamic INT8 MatMul (per-channel weights) + int8 embedding Gather, no fusions"),
    "fused_dynamic": ("O2", dict(method="dynamic", operators=["MatMul", "Gather"]), False,
                      "ORT fusions (attention, GELU, skip-LayerNorm) + dynamic per-channel MatMul + int8 Gather"),
    "fused_dynamic_qattention": ("O2", dict(method="dynamic", operators=["MatMul", "Attention", "Gather"]), False,
                                 "as fused_dynamic, the fused Attention's Q/K/V projection int8 too (QAttention)"),
    "fused_dynamic_fp32_embeddings": ("O2", dict(method="dynamic", operators=["MatMul"]), False,
                                      "as fused_dynamic, embedding Gather kept fp32"),
    "fused_dynamic_keep_sensitive": ("O2", dict(method="dynamic", operators=["MatMul", "Gather"]), True,
                                     "as fused_dynamic, the most sensitive MatMuls (sensitivity pass) kept fp32"),
    "fused_static_qdq": ("O2", dict(method="static", operators=["MatMul", "Gather"]), False,
                         "ORT fusions + static QDQ MatMul/Gather calibrated on HPO texts (all languages)"),
    "plain_static_qdq": ("none", dict(method="static", operators=["MatMul", "Gather"]), False,
                         "static QDQ MatMul/Gather calibrated on HPO texts, no fusions"),
}


CANDIDATE_DIR = "onnx/candidates"


FUSED_FP32_FILE = "onnx/model_fused.onnx"  # intermediate, not published


@dataclasses.dataclass(frozen=True)
class Candidate:
    name: str
    params: QuantizeParams  # optimization + method + operators + exclusions
    keep_sensitive: int
    doc: str


def candidates_for(p: QuantizeParams) -> list[Candidate]:
    """``method: auto``: the configured candidates; any other method: that one config."""
    if p.method != "auto":
        return [Candidate(p.method, p, 0, f"fixed: method {p.method}, optimization {p.optimization}")]
    out = []
    for name in p.candidates:
        level, over, sensitive, doc = CANDIDATES[name]
        out.append(Candidate(name, p.model_copy(update={"optimization": level, **over}),
                             p.sensitive_keep if sensitive else 0, doc))
    return out


def matmul_sensitivity(onnx_path: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Per-layer sensitivity pass: for every MatMul with a constant weight, the relative
    error ``|Q(X) Q(W) - X W| / |X W|`` of simulated dynamic INT8 on its real fp32 input
    activations ``X`` (captured on ``feeds``): X uint8 asymmetric per tensor (as
    DynamicQuantizeLinear), W int8 symmetric per output channel. Each node is measured in
    isolation, so errors do not accumulate along the graph. Sorted, largest first."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {i.name: i for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    outputs = {o.name for o in model.graph.output}
    for name in dict.fromkeys(n.input[0] for n in nodes):
        if name not in outputs:
            model.graph.output.append(onnx.ValueInfoProto(name=name))  # ORT infers the type
    sess = ort.InferenceSession(model.SerializeToString(), ort_session_options(2),
                                providers=["CPUExecutionProvider"])
    weights = {n.name: numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in nodes}
    qw = {}
    for name, w in weights.items():
        scale = np.maximum(np.abs(w).max(axis=0, keepdims=True), 1e-12) / 127.0
        qw[name] = (np.clip(np.round(w / scale), -127, 127) * scale).astype(np.float32)
    err = {n.name: 0.0 for n in nodes}
    ref = {n.name: 0.0 for n in nodes}
    names = [o.name for o in sess.get_outputs()]
    for feed in feeds:
        acts = dict(zip(names, sess.run(None, feed)))
        for n in nodes:
            x = acts[n.input[0]].astype(np.float32).reshape(-1, weights[n.name].shape[0])  # 2-D: BLAS
            lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
            scale = np.float32((hi - lo) / 255.0 or 1.0)
            zp = np.float32(np.clip(np.round(-lo / scale), 0, 255))
            xq = (np.clip(np.round(x / scale) + zp, 0, 255) - zp) * scale  # float32 throughout
            y = x @ weights[n.name]
            err[n.name] += float(np.square(xq @ qw[n.name] - y).sum())
            ref[n.name] += float(np.square(y).sum())
    rel = {k: (err[k] / ref[k]) ** 0.5 if ref[k] > 0 else 0.0 for k in err}
    return dict(sorted(rel.items(), key=lambda kv: -kv[1]))


def build_candidates(folder: Path, cands: list[Candidate], calibration_texts: list[str],
                     batch_size: int) -> dict[str, dict[str, Any]]:
    """Build every candidate into ``folder/onnx/candidates/<name>.onnx`` from the plain
    export ``folder/onnx/model.onnx`` (and its ORT-fused copy for the fused ones)."""
    info: dict[str, dict[str, Any]] = {}
    fused_ops: dict[str, int] = {}
    if any(c.params.optimization != "none" for c in cands):
        levels = {c.params.optimization for c in cands} - {"none"}
        if len(levels) > 1:
            raise UserError(f"quantize candidates mix optimisation levels {sorted(levels)}")
        fused_ops = optimize_onnx(folder, FP32_FILE, FUSED_FP32_FILE, levels.pop())
    feeds: dict[str, list] = {}
    sensitivity: dict[str, dict[str, float]] = {}
    typed: dict[str, Path] = {}
    for c in cands:
        t0 = time.perf_counter()
        base = FP32_FILE if c.params.optimization == "none" else FUSED_FP32_FILE
        calib = None
        if c.params.method == "static" or c.keep_sensitive:
            if base not in feeds:
                feeds[base] = model_feeds(folder, base, calibration_texts, batch_size)
            calib = feeds[base]
        keep: list[str] = []
        if c.keep_sensitive:
            if base not in sensitivity:
                sensitivity[base] = matmul_sensitivity(folder / base, calib)
            keep = list(sensitivity[base])[:c.keep_sensitive]
        dst = f"{CANDIDATE_DIR}/{c.name}.onnx"
        log.info("candidate %s: %s", c.name, c.doc)
        if base not in typed:  # symbolic shape inference once per base graph (slow on 100M+ params)
            typed[base] = folder / f"onnx/.typed_{Path(base).stem}.onnx"
            infer_shapes(folder / base, typed[base])
        kept = quantize_onnx(folder, base, dst, c.params, calibration=calib, keep_fp32=keep, typed=typed[base])
        info[c.name] = {"file": dst, "doc": c.doc, "optimization": c.params.optimization,
                        "method": c.params.method, "operators": list(c.params.operators),
                        "nodes_kept_fp32": kept, "build_s": round(time.perf_counter() - t0, 1),
                        "size_mb": file_mb(folder / dst),
                        **({"fused_operators": fused_ops} if c.params.optimization != "none" else {}),
                        **({"sensitivity_top": {k: round(v, 5) for k, v in list(sensitivity[base].items())[:8]}}
                           if c.keep_sensitive else {})}
    for path in [*typed.values(), folder / FUSED_FP32_FILE]:
        path.unlink(missing_ok=True)
    return info
