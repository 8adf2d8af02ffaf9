"""Stage quantize: ``models/finetuned`` -> ``models/onnx/`` (the published CPU model: the
INT8 variant that is fastest on this machine while passing a quality gate, as the folder's
only ONNX file) + ``models/onnx-build/`` (the ONNX fp32 export, every candidate, the
measurement state) + ``metrics/quantize.json`` (headline) + ``reports/quantize.md``/``.json``
(the candidate table).

Steps (all with the real libraries, no hand-rolled graph surgery):
1. export the SentenceTransformer to ONNX with the sentence-transformers ONNX backend
   (Optimum underneath) and save the whole SentenceTransformer folder (modules.json,
   pooling, normalisation, tokenizer), so pooling and normalisation stay identical;
2. ``quantize.method: auto`` (default) builds every ``quantize.candidates`` entry of
   ``CANDIDATES`` into ``onnx/candidates/<name>.onnx``: ORT transformer fusions (Optimum
   ``ORTOptimizer`` O2: attention, GELU, skip-LayerNorm) + dynamic per-channel MatMul INT8;
   the same with the embedding Gather kept fp32; the same with the MatMuls that a
   per-layer sensitivity pass (``matmul_sensitivity``) finds most hurt by INT8 kept fp32;
   static QDQ calibrated on HPO texts of every configured language; MatMulNBits 8-bit
   (blocks of 32, int8 compute). A fixed ``method`` (dynamic | matmul_nbits | static)
   builds just that one;
3. measures, interleaved and against PyTorch fp32 in the same run, the production shapes:
   sentences/s at ``batch_size`` (32) and ``index_batch_size`` (indexing) and batch-1
   latency p50/p95; and the quality gate's figures (hpo_embed/export/gate.py: multi-vector
   retrieval as the benchmark scores it, held-out queries and the clinical-phrase sets):
   full-rank MRR (pessimistic ties) and HR@1 minus ONNX fp32, with paired bootstrap CIs;
4. publishes the fastest candidate (batch-32 sentences/s) that passes the gate (held-out
   MRR delta >= ``gate_mrr_delta``, HR@1 delta >= ``gate_hr1_delta``, no significant MRR
   loss on a clinical set); if none passes, the ONNX fp32 export, flagged
   (``gate_passed: false``, a warning). The published folder is
   the SentenceTransformer folder (tokenizer, pooling, normalisation) with the chosen
   INT8 graph as ``onnx/model.onnx`` and no other ONNX file, so the plain
   ``SentenceTransformer("models/onnx", backend="onnx")`` loads the INT8 model (what the
   8 GB CPU server copies). The fp32 export and the candidates stay in the build folder.

``python -m stages.quantize --select`` re-measures the already built candidates on the
machine it runs on (e.g. the production server) and re-publishes its own choice.

Both folders are built in temporary siblings and renamed into place, so an interrupted
run never leaves a half-written one.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from hpo_embed.common import ROOT, UserError, atomic_write_text, log, publish_dir, temp_sibling, write_json
from hpo_embed.export.candidates import CANDIDATE_DIR, build_candidates, candidates_for
from hpo_embed.export.gate import FALLBACK, QUALITY_KEYS, gate_inputs, passes_gate, select
from hpo_embed.export.measure import (TEXTS_FILE, measure_all, measurement_texts,
                                      peak_rss, with_ratios)
from hpo_embed.export.onnx import FP32_FILE, PUBLISHED_FILE, check_model_folder, default_build_dir, export_fp32, write_release
from hpo_embed.export.report import headline, machine, report_markdown
from hpo_embed.hardware import peak_flops
from hpo_embed.params import QuantizeParams
from hpo_embed.retrieval.corpus import load_terms

STATE_FILE = "onnx/quantize_config.json"


QUALITY_SETTINGS = ("n_queries", "n_corpus", "n_vectors", "retrieval", "query_source", "clinical_sets")


def decide_and_write(folder: Path, rows: dict[str, dict[str, Any]], p: QuantizeParams, model_name: str,
                     settings: dict[str, Any], command: str, metrics_path: Path, reports: Path,
                     texts: list[str], release: Path) -> dict[str, Any]:
    """Gate, select, write the published folder ``release`` (the chosen candidate of the
    build ``folder`` as its ``onnx/model.onnx``), measure the peak memory of a process
    serving it, write the state file, reports and headline metrics."""
    cand = {n: r for n, r in rows.items() if "mrr_delta" in r and not r.get("reference")}
    baseline = "pytorch_fp32" if "pytorch_fp32" in rows else "onnx_fp32"
    with_ratios(rows, baseline)
    for r in cand.values():
        r["gate"] = passes_gate(r, p.gate_mrr_delta, p.gate_hr1_delta)
    chosen, passed, reason = select(cand, p.gate_mrr_delta, p.gate_hr1_delta)
    if chosen == FALLBACK:   # the reference itself: no loss by definition
        rows[FALLBACK].update(mrr_delta=0.0, hr1_delta=0.0, mrr_delta_ci=[0.0, 0.0], hr1_delta_ci=[0.0, 0.0])
    write_release(folder, FP32_FILE if chosen == FALLBACK else f"{CANDIDATE_DIR}/{chosen}.onnx", release)
    rows[chosen]["peak_rss_mb"] = peak_rss(release, PUBLISHED_FILE, texts, p.threads, p.batch_size)["peak_rss_mb"]
    rows[chosen]["folder_mb"] = round(sum(f.stat().st_size for f in release.rglob("*") if f.is_file()) / 1e6, 2)
    rep = {"model": model_name, "chosen": chosen, "gate_passed": passed, "reason": reason, "baseline": baseline,
           "machine": machine(), "settings": {**settings, "gate_mrr_delta": p.gate_mrr_delta,
                                              "gate_hr1_delta": p.gate_hr1_delta},
           "rows": rows, "command": command}
    if not passed:
        log.warning("quantize: %s", reason)
    state = {"chosen": chosen, "gate_passed": passed, "candidates": {
        n: {"file": f"{CANDIDATE_DIR}/{n}.onnx", **{k: r[k] for k in QUALITY_KEYS if k in r},
            **{k: r[k] for k in ("doc", "optimization", "method", "operators", "nodes_kept_fp32") if k in r}}
        for n, r in cand.items()}, "quality_settings": {k: settings[k] for k in QUALITY_SETTINGS if k in settings}}
    atomic_write_text(folder / STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")
    reports.mkdir(parents=True, exist_ok=True)
    write_json(reports / "quantize.json", rep)
    atomic_write_text(reports / "quantize.md", report_markdown(rep))
    write_json(metrics_path, headline(rep))
    return rep


def run(p: QuantizeParams, src: Path, out: Path, metrics_path: Path,
        terms_path: Path | None = None, measure_metrics: bool = True,
        queries_path: Path | None = None, translations: Path | None = None,
        reports: Path | None = None, build: Path | None = None, gate_sets: list[str] | None = None) -> dict[str, Any]:
    """Export, build the candidates (``method: auto``) or the one configured method into
    ``build`` (default ``<out>-build``), measure, select, publish ``out`` (the chosen INT8
    as its only ONNX file) and write metrics + reports (quantize.md, quantize.json in the
    ``reports`` folder). ``queries_path``/``translations`` absent or None: the fallback
    query and text samples; ``gate_sets``: the clinical-phrase files of the gate
    (``quantize.gate_sets`` resolved). Returns the report."""

    check_model_folder(src, f"quantize --model {src}")
    cands = candidates_for(p)
    needs_texts = measure_metrics or any(c.params.method == "static" or c.keep_sensitive for c in cands)
    if (needs_texts and terms_path is None) or (measure_metrics and reports is None):
        raise TypeError("quantize.run: measuring needs terms_path and reports")
    build = build if build is not None else default_build_dir(out)
    tmp, release = temp_sibling(build), temp_sibling(out)
    t_start = time.perf_counter()
    try:
        log.info("export %s -> ONNX; candidates: %s", src, ", ".join(c.name for c in cands))
        export_fp32(src, tmp)
        terms = load_terms(terms_path) if needs_texts else None
        # calibration / sensitivity texts: HPO labels + translated labels (every configured
        # language present in data/translations), a different sample from the timed set
        calib = measurement_texts(terms, p.calibration_size, p.seed + 1, translations) if terms is not None else []
        built = build_candidates(tmp, cands, calib, p.batch_size)
        if not measure_metrics:  # build only (tests of the build path): first candidate as int8
            write_release(tmp, built[cands[0].name]["file"], release)
            publish_dir(tmp, build)
            publish_dir(release, out)
            return {"rows": built}
        texts = measurement_texts(terms, p.measure_size, p.seed, translations)
        gate = gate_inputs(load_terms(terms_path, selected_only=False), p, queries_path, gate_sets or [])
        latency_texts = gate.sets[0].texts[:p.latency_queries]
        (tmp / TEXTS_FILE).write_text(json.dumps({"texts": texts, "latency_texts": latency_texts}) + "\n")
        load0 = os.getloadavg()[0]
        rows = measure_all(tmp, src, built, p, texts, latency_texts, gate=gate)
        settings = {"threads": p.threads, "batch_size": p.batch_size, "index_batch_size": p.index_batch_size,
                "fp32_peak_gflops": round(peak_flops("fp32", p.threads) / 1e9),
                    "n_texts": len(texts), "latency_calls": len(latency_texts) * p.repeats, "repeats": p.repeats,
                    "loadavg": [round(load0, 2), round(os.getloadavg()[0], 2)],
                    "n_queries": len(gate.sets[0].texts), "n_corpus": len(gate.index.corpus_ids),
                    "n_vectors": len(gate.index.texts), "retrieval": gate.index.mode, "query_source": gate.source,
                    "clinical_sets": {s.key: len(s.texts) for s in gate.sets[1:]}}
        model_name = str(src.relative_to(ROOT)) if src.is_relative_to(ROOT) else str(src)
        rep = decide_and_write(tmp, rows, p, model_name, settings, "python -m stages.quantize  # dvc repro quantize",
                               metrics_path, reports, texts, release)
        rep["settings"]["stage_s"] = round(time.perf_counter() - t_start, 1)
        write_json(reports / "quantize.json", rep)
        publish_dir(tmp, build)
        publish_dir(release, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(release, ignore_errors=True)
        raise
    return rep


def select_on_this_machine(p: QuantizeParams, src: Path | None, out: Path, metrics_path: Path,
                           reports: Path, build: Path | None = None) -> dict[str, Any]:
    """``--select``: re-measure the speed of the candidates already built in ``build``
    (default ``<out>-build``) on this machine (quality deltas are properties of the files
    and reused from the build run), re-select and re-publish ``out``. PyTorch fp32 is the
    baseline when ``src`` exists, ONNX fp32 otherwise (e.g. a production server without
    the PyTorch model)."""
    build = build if build is not None else default_build_dir(out)
    state_path = build / STATE_FILE
    if not state_path.is_file() or "candidates" not in json.loads(state_path.read_text()):
        raise UserError(f"{state_path}: no built candidates; run `python -m stages.quantize` (method auto) first")
    state = json.loads(state_path.read_text())
    cands = {n: {"file": c["file"], **{k: c[k] for k in ("doc", "optimization", "method", "operators",
                                                         "nodes_kept_fp32") if k in c}}
             for n, c in state["candidates"].items() if (build / c["file"]).is_file()}
    if not cands:
        raise UserError(f"{build / CANDIDATE_DIR}: candidate files missing; rebuild with `python -m stages.quantize`")
    qual = {n: {k: c[k] for k in QUALITY_KEYS if k in c} for n, c in state["candidates"].items()}
    t = json.loads((build / TEXTS_FILE).read_text())
    load0 = os.getloadavg()[0]
    rows = measure_all(build, src, cands, p, t["texts"], t["latency_texts"], qual=qual)
    settings = {"threads": p.threads, "batch_size": p.batch_size, "index_batch_size": p.index_batch_size,
                "fp32_peak_gflops": round(peak_flops("fp32", p.threads) / 1e9),
                "n_texts": len(t["texts"]), "latency_calls": len(t["latency_texts"]) * p.repeats,
                "repeats": p.repeats, "loadavg": [round(load0, 2), round(os.getloadavg()[0], 2)],
                **state.get("quality_settings", {"n_queries": "?", "n_corpus": "?", "query_source": "build run"})}
    release = temp_sibling(out)
    try:
        rep = decide_and_write(build, rows, p, str(src) if src else str(out), settings,
                               "python -m stages.quantize --select", metrics_path, reports, t["texts"], release)
        publish_dir(release, out)
    except BaseException:
        shutil.rmtree(release, ignore_errors=True)
        raise
    return rep
