"""Measuring the quantize candidates against PyTorch fp32 in one run: sentences/s at the
production batch sizes, batch-1 latency, peak memory, and retrieval quality (full-rank MRR
and HR@1 on held-out queries, multi-vector as the benchmark scores)."""
from __future__ import annotations

import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from hpo_embed.common import ROOT, UserError, log
from hpo_embed.export.gate import GateInputs, quality
from hpo_embed.export.onnx import FP32_FILE, WEIGHT_FILES, file_mb, load_onnx, load_torch
from hpo_embed.hardware import encoder_flops, native_bf16, peak_flops
from hpo_embed.params import QuantizeParams
from hpo_embed.translation.schema import load as load_translation

BF16_ROW = "pytorch_bf16"   # measured beside the candidates where the CPU has native bf16; never published


TEXTS_FILE = "onnx/candidates/measure_texts.json"


def measurement_texts(terms, n: int, seed: int, translations: Path | None) -> list[str]:
    """A fixed set of ``n`` real texts: HPO labels and, when ``data/translations`` exists,
    translated labels (up to half). Deterministic for a given seed and data."""

    rng = random.Random(seed)
    labels = sorted(set(terms["label"].dropna()))
    translated: list[str] = []
    files = sorted(translations.glob("HP_*.json")) if translations is not None and translations.is_dir() else []
    if files:
        for f in rng.sample(files, min(len(files), n)):
            doc = load_translation(f)
            for entry in doc["languages"].values():
                if isinstance(entry, dict) and entry.get("label"):
                    translated.append(entry["label"]["text"])
            if len(translated) >= n // 2:
                break
        translated = translated[: n // 2]
    english = rng.sample(labels, min(len(labels), n - len(translated)))
    texts = english + translated
    rng.shuffle(texts)
    return texts


def raw_encode(model, texts: list[str], batch_size: int) -> np.ndarray:
    return model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                        normalize_embeddings=False, show_progress_bar=False)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def peak_rss(folder: Path, file_name: str, texts: list[str], threads: int, batch_size: int) -> dict[str, float]:
    """Peak resident memory (MiB) of a fresh process that loads ``folder/file_name`` with the
    ONNX backend and encodes ``texts``."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(texts, fh)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", "import sys; from hpo_embed.export.measure import _probe_rss; "
             "_probe_rss(*sys.argv[1:6])", str(folder), file_name, fh.name, str(threads), str(batch_size)],
            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    finally:
        os.unlink(fh.name)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _probe_rss(folder: str, file_name: str, texts_json: str, threads: str, batch_size: str) -> None:
    def rss_mb() -> float:
        # VmHWM: this process's own peak RSS. (getrusage's ru_maxrss survives exec on Linux,
        # so it would report the parent's peak.)
        status = Path("/proc/self/status")
        if status.is_file():
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    texts = json.loads(Path(texts_json).read_text())

    after_import = rss_mb()
    model = load_onnx(Path(folder), file_name, int(threads))
    after_load = rss_mb()
    raw_encode(model, texts, int(batch_size))
    print(json.dumps({"peak_rss_mb": round(rss_mb(), 1), "after_import_mb": round(after_import, 1),
                      "after_load_mb": round(after_load, 1)}))


def torch_weights_mb(src: Path) -> float:
    files = [f for f in src.rglob("*") if f.name in WEIGHT_FILES]
    if not files:
        raise UserError(f"{src}: no model weights ({' or '.join(WEIGHT_FILES)})")
    return round(sum(f.stat().st_size for f in files) / 2**20, 2)


def speed(models: dict[str, Any], texts: list[str], latency_texts: list[str], batch_size: int,
          index_batch_size: int, repeats: int) -> dict[str, dict[str, float]]:
    """Interleaved timing in the production shapes: sentences/s at ``batch_size`` (32) and at
    ``index_batch_size`` (indexing), and batch-1 latency (one text per call, tokenisation
    included). One warm-up pass per model is excluded; each round times every model once,
    in an order rotated by one each round; throughput is the median over rounds, latency
    p50/p95 over every call."""

    names = list(models)
    for n in tqdm(names, desc="warm-up", unit="model"):
        raw_encode(models[n], texts, batch_size)
        for t in latency_texts[:8]:
            raw_encode(models[n], [t], 1)
    t32: dict[str, list[float]] = {n: [] for n in names}
    tix: dict[str, list[float]] = {n: [] for n in names}
    lat: dict[str, list[float]] = {n: [] for n in names}
    with tqdm(total=repeats * len(names), desc="speed", unit="model") as bar:
        for r in range(repeats):
            for n in names[r % len(names):] + names[:r % len(names)]:
                m = models[n]
                t0 = time.perf_counter()
                raw_encode(m, texts, batch_size)
                t32[n].append(time.perf_counter() - t0)
                if index_batch_size != batch_size:
                    t0 = time.perf_counter()
                    raw_encode(m, texts, index_batch_size)
                    tix[n].append(time.perf_counter() - t0)
                for t in latency_texts:
                    t0 = time.perf_counter()
                    raw_encode(m, [t], 1)
                    lat[n].append(time.perf_counter() - t0)
                bar.update()
    out = {}
    for n in names:
        out[n] = {"sps_b32": round(len(texts) / statistics.median(t32[n]), 1),
                  "sps_index": round(len(texts) / statistics.median(tix[n] or t32[n]), 1),
                  "b1_p50_ms": round(1000 * float(np.percentile(lat[n], 50)), 2),
                  "b1_p95_ms": round(1000 * float(np.percentile(lat[n], 95)), 2)}
    return out


def with_ratios(rows: dict[str, dict[str, Any]], baseline: str) -> None:
    """Add speed ratios against ``baseline`` (PyTorch fp32) to every row, in place."""
    b = rows[baseline]
    for r in rows.values():
        r["ratio_b32"] = round(r["sps_b32"] / b["sps_b32"], 3)
        r["ratio_index"] = round(r["sps_index"] / b["sps_index"], 3)
        r["b1_p50_ratio"] = round(r["b1_p50_ms"] / b["b1_p50_ms"], 3)  # < 1: faster than the baseline


def measure_all(folder: Path, src: Path | None, cands: dict[str, dict[str, Any]], p: QuantizeParams,
                texts: list[str], latency_texts: list[str], qual: dict[str, dict] | None = None,
                gate: GateInputs | None = None) -> dict[str, dict[str, Any]]:
    """Rows for PyTorch fp32 (when ``src``), ONNX fp32 and every candidate: speed, size and
    (given the ``gate`` inputs) quality deltas against ONNX fp32 (hpo_embed/export/gate.py);
    ``qual`` reuses quality measured earlier (``--select``)."""
    models: dict[str, Any] = {}
    rows: dict[str, dict[str, Any]] = {}
    if src is not None:
        models["pytorch_fp32"] = load_torch(src, p.threads)
        rows["pytorch_fp32"] = {"size_mb": torch_weights_mb(src)}
        if native_bf16():   # a reference row (never published): what bf16 PyTorch gives on this CPU
            import torch
            models[BF16_ROW] = load_torch(src, p.threads).to(torch.bfloat16)
            rows[BF16_ROW] = {"size_mb": round(torch_weights_mb(src) / 2, 2), "reference": True,
                              "doc": "reference, not a candidate: the PyTorch model with bf16 weights "
                                     "(native bf16 on this CPU)"}
    models["onnx_fp32"] = load_onnx(folder, FP32_FILE, p.threads)
    rows["onnx_fp32"] = {"size_mb": file_mb(folder / FP32_FILE)}
    ref = None

    def gate_embeddings(m) -> dict[str, np.ndarray]:
        return {"queries": raw_encode(m, gate.queries, p.index_batch_size),
                "corpus": raw_encode(m, gate.index.texts, p.index_batch_size)}

    if gate is not None:
        log.info("quality: %s against %d concepts (%d vectors, %s)",
                 ", ".join(f"{len(s.texts)} {s.key} queries" for s in gate.sets), len(gate.index.corpus_ids),
                 len(gate.index.texts), gate.index.mode)
        ref = gate_embeddings(models["onnx_fp32"])
        if BF16_ROW in models:
            rows[BF16_ROW].update(quality(ref, gate_embeddings(models[BF16_ROW]), gate, p.bootstrap_resamples,
                                          p.seed))
    for name, info in cands.items():
        m = load_onnx(folder, info["file"], p.threads)
        models[name] = m
        rows[name] = {**{k: v for k, v in info.items() if k != "file"}, "size_mb": file_mb(folder / info["file"])}
        if ref is not None:
            rows[name].update(quality(ref, gate_embeddings(m), gate, p.bootstrap_resamples, p.seed))
            log.info("%s: %s", name, {k: rows[name][k] for k in ("mrr_delta", "hr1_delta", "top1_agreement")})
        elif qual and name in qual:
            rows[name].update(qual[name])
    log.info("speed: %d models, %d texts, batch %d/%d, %d batch-1 calls, %d rounds", len(models), len(texts),
             p.batch_size, p.index_batch_size, len(latency_texts), p.repeats)
    sp = speed(models, texts, latency_texts, p.batch_size, p.index_batch_size, p.repeats)
    flops = pass_flops(models["onnx_fp32"], folder, texts, p.batch_size)
    peak = peak_flops("fp32", p.threads)
    for n in rows:
        rows[n].update(sp[n])
        if flops:   # matrix-multiply FLOP/s of a batch-32 pass over the CPU's fp32 peak
            rows[n]["gflops_b32"] = round(flops * sp[n]["sps_b32"] / len(texts) / 1e9, 1)
            rows[n]["peak_share_b32"] = round(flops * sp[n]["sps_b32"] / len(texts) / peak, 4)
    return rows


def pass_flops(model, folder: Path, texts: list[str], batch_size: int) -> float | None:
    """Matrix-multiply FLOPs of encoding ``texts`` at ``batch_size`` as sentence-transformers
    does (longest first, each batch padded to its longest text): ``hardware.encoder_flops``
    over the padded tokens; None without a BERT-style config."""
    from transformers import AutoConfig
    try:
        cfg = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError):
        return None
    if not hasattr(cfg, "intermediate_size"):
        return None
    lengths = sorted((len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)
                      ["input_ids"]), reverse=True)
    padded = sum(max(lengths[i:i + batch_size]) * len(lengths[i:i + batch_size])
                 for i in range(0, len(lengths), batch_size))
    return encoder_flops(cfg, padded, padded / max(1, len(lengths)), train=False)
