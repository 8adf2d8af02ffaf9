"""Stage quantize: ONNX export + dynamic INT8 of a tiny in-process model."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpo_embed.export import candidates as QC, gate as QG, measure as QM, onnx as QO, quantize as Q, report as QR
from hpo_embed.common import UserError
from hpo_embed.params import QuantizeParams, parse_params

from conftest import TINY_CORPUS

# the auto path on four candidates (fused = ORT O2 fusions); block_size 16 for the fixed-method
# tests: the tiny model's MatMuls have K = 32/64 inputs
CANDS = ["nbits_b32", "fused_dynamic", "fused_dynamic_keep_sensitive", "fused_static_qdq"]


def _replace(p: QuantizeParams, **changes) -> QuantizeParams:
    """A validated copy with ``changes`` (params models are frozen)."""
    return QuantizeParams.model_validate({**p.model_dump(), **changes})


PARAMS = _replace(QuantizeParams(), method="auto", candidates=CANDS, sensitive_keep=1,
                             measure_size=12, agreement_queries=10, repeats=1, batch_size=4, index_batch_size=8,
                             latency_queries=2, calibration_size=16, gate_corpus=0, bootstrap_resamples=100,
                             threads=1, block_size=16, exclude_nodes=[],
                             # a random tiny model's INT8 deltas on 10 queries are noise: every candidate
                             # passes here so the published file is an INT8 one (the rule: test_select_*)
                             gate_mrr_delta=-1.0, gate_hr1_delta=-1.0)
FIXED = _replace(PARAMS, method="matmul_nbits", optimization="O2")
BUILD_ONLY = _replace(PARAMS, candidates=["nbits_b32", "fused_dynamic"])  # no calibration texts needed


def _terms(path: Path) -> Path:
    """A small terms.parquet in the parse_hpo schema (the columns the stage reads)."""
    rows = []
    for i, label in enumerate(TINY_CORPUS):
        syn = [{"text": f"{label} syndrome", "scope": "EXACT", "type": None}] if i % 2 == 0 else []
        rows.append({"id": f"HP:{i:07d}", "label": label, "definition": None, "synonyms": syn,
                     "selected": True})
    pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def built(tiny_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("quantize")
    src = work / "finetuned"
    shutil.copytree(tiny_model_dir, src)
    out, metrics_path = work / "models" / "onnx", work / "quantize.json"
    report = Q.run(PARAMS, src, out, metrics_path, terms_path=_terms(work / "terms.parquet"),
                   queries_path=work / "absent.parquet", translations=work / "absent", reports=work / "reports")
    return src, out, metrics_path, report


def _st(path: Path, file_name: str | None = None):
    from sentence_transformers import SentenceTransformer

    if file_name is None:
        return SentenceTransformer(str(path), device="cpu")
    return SentenceTransformer(str(path), backend="onnx", device="cpu", model_kwargs={"file_name": file_name})


def _ops(path: Path) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_auto_builds_every_candidate_and_publishes_the_selected_one(built):
    _, out, metrics_path, rep = built
    build = QO.default_build_dir(out)
    for name in CANDS:
        assert (build / f"onnx/candidates/{name}.onnx").is_file(), name
        assert name in rep["rows"]
    # + PyTorch fp32 and ONNX fp32, + PyTorch bf16 (a reference row, never published) where bf16 is native
    from hpo_embed.hardware import native_bf16
    assert (QM.BF16_ROW in rep["rows"]) == native_bf16()
    assert len(rep["rows"]) == len(CANDS) + 2 + native_bf16()
    if native_bf16():
        ref = rep["rows"][QM.BF16_ROW]
        assert ref["reference"] and "gate" not in ref and rep["chosen"] != QM.BF16_ROW
        assert ref["mrr_delta_ci"][0] <= ref["mrr_delta"] <= ref["mrr_delta_ci"][1] and ref["sps_b32"] > 0
    for r in rep["rows"].values():   # the share of the CPU's fp32 peak, from the padded tokens of a pass
        assert 0 < r["peak_share_b32"] < 1 and r["gflops_b32"] > 0
    chosen = rep["chosen"]
    # the published folder: the chosen INT8 as its one and only ONNX file
    assert [p.relative_to(out).as_posix() for p in out.rglob("*.onnx")] == ["onnx/model.onnx"]
    assert (out / "onnx/model.onnx").read_bytes() == (build / f"onnx/candidates/{chosen}.onnx").read_bytes()
    assert rep["rows"][chosen]["folder_mb"] == pytest.approx(
        sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6, abs=0.01)
    assert not (build / QC.FUSED_FP32_FILE).exists()  # the intermediate fused fp32 graph is not kept
    # the selection is the rule applied to the measured rows
    cands = {n: r for n, r in rep["rows"].items() if n in CANDS}
    assert (chosen, rep["gate_passed"]) == QG.select(cands, PARAMS.gate_mrr_delta, PARAMS.gate_hr1_delta)[:2]
    assert [n for n, r in cands.items() if r["gate"]] == [
        n for n, r in cands.items() if r["mrr_delta"] >= PARAMS.gate_mrr_delta and r["hr1_delta"] >= PARAMS.gate_hr1_delta]
    assert rep["gate_passed"] and chosen in CANDS
    # each candidate really is the graph it claims
    assert "MatMulNBits" in _ops(build / "onnx/candidates/nbits_b32.onnx")
    fused = _ops(build / "onnx/candidates/fused_dynamic.onnx")
    assert "Attention" in fused and "SkipLayerNormalization" in fused and "MatMul" not in fused
    assert "DynamicQuantizeMatMul" in fused or "MatMulInteger" in fused
    static = _ops(build / "onnx/candidates/fused_static_qdq.onnx")
    assert "QuantizeLinear" in static and "DequantizeLinear" in static
    kept = rep["rows"]["fused_dynamic_keep_sensitive"]["nodes_kept_fp32"]
    assert len(kept) == 1 and _ops(build / "onnx/candidates/fused_dynamic_keep_sensitive.onnx").count("MatMul") == 1


def test_metrics_are_headline_only_and_the_report_has_the_table(built):
    _, out, metrics_path, rep = built
    m = json.loads(metrics_path.read_text())
    assert m == QR.headline(rep) and len(m) <= 12
    assert m["reason"] == rep["reason"] and (m["reason"].startswith("fastest of") == m["gate_passed"])
    r = rep["rows"][m["chosen"]]
    assert m["speed_ratio_b32"] == pytest.approx(r["sps_b32"] / rep["rows"]["pytorch_fp32"]["sps_b32"], rel=1e-2)
    assert m["latency_b1_p50_ratio"] == pytest.approx(
        r["b1_p50_ms"] / rep["rows"]["pytorch_fp32"]["b1_p50_ms"], rel=1e-2)
    assert m["baseline"] == "pytorch_fp32" and m["size_mb"] == r["size_mb"] > 0
    assert m["peak_rss_mb"] > 100  # a fresh process serving the chosen model (python + onnxruntime)
    for name in CANDS:
        row = rep["rows"][name]
        assert row["mrr_delta_ci"][0] <= row["mrr_delta"] <= row["mrr_delta_ci"][1]
        assert row["hr1_delta_ci"][0] <= row["hr1_delta"] <= row["hr1_delta_ci"][1]
        assert 0 < row["sps_b32"] and 0 < row["b1_p50_ms"] <= row["b1_p95_ms"]
        assert 0.9 < row["cosine_mean"] <= 1.0 + 1e-6 and 0 <= row["top1_agreement"] <= 1
        assert row["size_mb"] < rep["rows"]["onnx_fp32"]["size_mb"]
    md = (out.parent.parent / "reports" / "quantize.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rep["rows"])  # header + one row per model
    assert f"**{rep['chosen']}**" in md and "python -m stages.quantize" in md
    assert json.loads((out.parent.parent / "reports" / "quantize.json").read_text())["chosen"] == rep["chosen"]
    s = rep["settings"]
    assert s["n_queries"] == PARAMS.agreement_queries and s["n_corpus"] == len(TINY_CORPUS)
    assert s["query_source"].startswith("fallback")


def test_int8_loads_with_the_onnx_backend_and_is_close_to_fp32(built, caplog):
    """Issue #26 (5): the plain ``backend="onnx"`` load (no file name, as on the CPU
    server) gets the published INT8 model, without the "Multiple ONNX files" warning."""
    from sentence_transformers import SentenceTransformer
    _, out, _, rep = built
    fp32 = _st(QO.default_build_dir(out), "onnx/model.onnx")
    with caplog.at_level(logging.WARNING):
        int8 = SentenceTransformer(str(out), backend="onnx", device="cpu")
    assert not [r for r in caplog.records if "Multiple ONNX files" in r.getMessage()]
    chosen = _st(QO.default_build_dir(out), f"onnx/candidates/{rep['chosen']}.onnx")
    np.testing.assert_array_equal(int8.encode(TINY_CORPUS), chosen.encode(TINY_CORPUS))
    e32, e8 = fp32.encode(TINY_CORPUS), int8.encode(TINY_CORPUS)
    assert e8.shape == (len(TINY_CORPUS), 32)
    assert QM.cosine_rows(e32, e8).min() > 0.95
    assert not np.allclose(e32, e8, atol=1e-6)  # it really is a different (quantized) graph


def test_fp32_onnx_keeps_pooling_and_normalisation(built):
    src, out, _, _ = built
    out = QO.default_build_dir(out)
    e_pt = _st(src).encode(TINY_CORPUS)
    e_onnx = _st(out, "onnx/model.onnx").encode(TINY_CORPUS)
    np.testing.assert_allclose(e_onnx, e_pt, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(e_onnx, axis=1), 1.0, atol=1e-5)
    assert json.loads((out / "modules.json").read_text()) == json.loads((src / "modules.json").read_text())
    assert not list(out.glob("model.safetensors"))  # no PyTorch weights in the ONNX folder
    assert not list(out.parent.glob(".onnx.*"))  # no temporary folder left behind


def _row(sps: float, mrr: float, hr1: float) -> dict:
    return {"sps_b32": sps, "mrr_delta": mrr, "hr1_delta": hr1}


def test_select_fastest_passing_candidate_wins():
    rows = {"fast_bad": _row(900, -0.02, -0.03), "fast_ok": _row(700, -0.004, -0.005),
            "slow_best": _row(400, 0.0, 0.0), "hr1_bad": _row(800, 0.0, -0.011)}
    name, passed, reason = QG.select(rows, -0.005, -0.01)
    assert (name, passed) == ("fast_ok", True)
    assert "2/4" in reason
    # exactly at the thresholds passes
    assert QG.select({"edge": _row(1, -0.005, -0.01), "x": _row(0.5, 0, 0)}, -0.005, -0.01)[:2] == ("edge", True)


def test_select_none_passing_falls_back_to_onnx_fp32_flagged():
    rows = {"fast": _row(900, -0.02, -0.001), "best_mrr": _row(300, -0.006, -0.02), "mid": _row(500, -0.01, 0.0)}
    name, passed, reason = QG.select(rows, -0.005, -0.01)
    assert (name, passed) == (QG.FALLBACK, False) == ("onnx_fp32", False)
    assert reason.startswith("NO INT8 candidate passes") and "ONNX fp32" in reason
    with pytest.raises(ValueError):
        QG.select({}, -0.005, -0.01)


def test_a_significant_loss_on_a_clinical_set_fails_the_gate():
    ok = {**_row(900, -0.001, 0.0), "sets": {"phentrieve.a": {"mrr_delta": -0.01, "mrr_delta_ci": [-0.04, 0.01]}}}
    lost = {**_row(950, -0.001, 0.0), "sets": {"phentrieve.a": {"mrr_delta": -0.03, "mrr_delta_ci": [-0.06, -0.002]}}}
    assert QG.passes_gate(ok, -0.005, -0.01) and not QG.passes_gate(lost, -0.005, -0.01)
    assert QG.select({"ok": ok, "lost": lost}, -0.005, -0.01)[:2] == ("ok", True)   # the faster one fails


def test_gate_inputs_score_multi_vector_with_held_out_and_clinical_sets(tmp_path):
    terms = pd.read_parquet(_terms(tmp_path / "terms.parquet"))
    ids = sorted(terms["id"])
    label = dict(zip(terms["id"], terms["label"]))
    queries = pd.DataFrame([{"text": f"{label[h]} (de)", "hpo_id": h, "split": "test", "lang": "de",
                             "field": "label", "source": "official"} for h in ids[:4]]
                           + [{"text": f"{label[ids[0]]} syndrome", "hpo_id": ids[0], "split": "test", "lang": "en",
                               "field": "synonym", "source": "hpo"}])
    qpath = tmp_path / "queries.parquet"
    queries.to_parquet(qpath)
    ext = tmp_path / "clinical.json"
    ext.write_text(json.dumps([{"text": "a clinical phrase", "expected_hpo_ids": [ids[1], ids[2]]}]))
    (tmp_path / "same_cases.json").write_text(ext.read_text())   # counted once, as in the benchmark
    p = _replace(PARAMS, agreement_queries=100, gate_corpus=4)
    gi = QG.gate_inputs(terms, p, qpath, [str(ext), str(tmp_path / "same_cases.json")])
    assert gi.index.mode == "multi" and len(gi.index.corpus_ids) == 4   # gold concepts + distractors up to 4
    assert len(gi.index.texts) > len(gi.index.corpus_ids)              # labels and EXACT synonyms
    held, clinical = gi.sets
    # the English synonym query is an indexed text of its own concept: dropped, as the benchmark drops it
    assert held.key == "heldout" and len(held.texts) == 4 and f"{label[ids[0]]} syndrome" not in held.texts
    assert clinical.key == "phentrieve.clinical" and len(clinical.expected[0]) == 2
    emb = {t: np.eye(16)[i % 16] for i, t in enumerate(sorted(set(gi.queries) | set(gi.index.texts)))}
    ref = {"queries": np.stack([emb[t] for t in gi.queries]), "corpus": np.stack([emb[t] for t in gi.index.texts])}
    q = QG.quality(ref, ref, gi, 100, 0)
    assert q["mrr_delta"] == q["hr1_delta"] == 0 and q["top1_agreement"] == 1.0
    assert q["sets"]["phentrieve.clinical"] == {"n_queries": 1, "mrr_delta": 0.0, "mrr_delta_ci": [0.0, 0.0]}


def test_no_passing_candidate_publishes_the_fp32_export(built, tmp_path):
    _, out, _, _ = built
    build = tmp_path / "onnx-build"
    shutil.copytree(QO.default_build_dir(out), build)
    state_file = build / Q.STATE_FILE
    state = json.loads(state_file.read_text())
    for c in state["candidates"].values():   # every candidate lost significantly on a clinical set
        c["sets"] = {"phentrieve.x": {"n_queries": 70, "mrr_delta": -0.05, "mrr_delta_ci": [-0.09, -0.01]}}
    state_file.write_text(json.dumps(state))
    p = _replace(PARAMS, gate_mrr_delta=-1.0, gate_hr1_delta=-1.0)
    rep = Q.select_on_this_machine(p, None, tmp_path / "onnx", tmp_path / "m.json", tmp_path / "reports", build=build)
    assert rep["chosen"] == "onnx_fp32" and not rep["gate_passed"]
    assert (tmp_path / "onnx/onnx/model.onnx").read_bytes() == (build / QO.FP32_FILE).read_bytes()
    assert json.loads((tmp_path / "m.json").read_text())["mrr_delta"] == 0.0


def test_sensitivity_pass_ranks_every_weight_matmul(built):
    _, out, _, _ = built
    out = QO.default_build_dir(out)
    texts = list(TINY_CORPUS)
    feeds = QO.model_feeds(out, QO.FP32_FILE, texts, 8)
    sens = QC.matmul_sensitivity(out / QO.FP32_FILE, feeds)
    import onnx

    model = onnx.load(str(out / QO.FP32_FILE))
    inits = {i.name for i in model.graph.initializer}
    weight_matmuls = {n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits}
    assert set(sens) == weight_matmuls and len(sens) == 2 * 6  # 2 layers x (Q, K, V, out, FFN in, FFN out)
    values = list(sens.values())
    assert values == sorted(values, reverse=True) and 0 < values[-1] and values[0] < 0.2


def test_select_on_this_machine_remeasures_speed_and_reuses_quality(built, tmp_path):
    _, out, _, rep = built
    build = tmp_path / "onnx-build"
    shutil.copytree(QO.default_build_dir(out), build)
    folder = tmp_path / "onnx"
    p = _replace(PARAMS, gate_mrr_delta=-1.0, gate_hr1_delta=-1.0)  # everything passes
    again = Q.select_on_this_machine(p, None, folder, tmp_path / "m.json", tmp_path / "reports", build=build)
    assert again["baseline"] == "onnx_fp32" and "pytorch_fp32" not in again["rows"]
    for name in CANDS:
        assert again["rows"][name]["mrr_delta"] == rep["rows"][name]["mrr_delta"]  # reused
    fastest = max(CANDS, key=lambda n: again["rows"][n]["sps_b32"])
    assert again["chosen"] == fastest and again["gate_passed"]
    assert (folder / "onnx/model.onnx").read_bytes() == (build / f"onnx/candidates/{fastest}.onnx").read_bytes()
    assert [p.relative_to(folder).as_posix() for p in folder.rglob("*.onnx")] == ["onnx/model.onnx"]
    assert json.loads((tmp_path / "m.json").read_text())["chosen"] == fastest
    with pytest.raises(UserError, match="no built candidates"):
        Q.select_on_this_machine(p, None, tmp_path / "nothing", tmp_path / "m2.json", tmp_path / "r2")


def test_missing_model_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no-such-model"):
        Q.run(BUILD_ONLY, tmp_path / "no-such-model", tmp_path / "onnx", tmp_path / "m.json",
              measure_metrics=False)


@pytest.mark.parametrize("broken", ["model.safetensors", "config.json"])
def test_corrupt_model_folder_is_a_user_error(tiny_model_dir, tmp_path, broken):
    src = tmp_path / "finetuned"
    shutil.copytree(tiny_model_dir, src)
    (src / broken).write_bytes(b"\x00 not a model \x00")
    with pytest.raises(UserError, match=str(src)):
        Q.run(BUILD_ONLY, src, tmp_path / "onnx", tmp_path / "m.json", measure_metrics=False)
    assert not (tmp_path / "onnx").exists() and not list(tmp_path.glob(".onnx.*"))


def test_excluded_nodes_stay_fp32_and_unmatched_pattern_is_an_error(built, tmp_path):
    _, out, _, _ = built
    folder = tmp_path / "onnx"
    shutil.copytree(QO.default_build_dir(out), folder)   # the fp32 export
    keep = "/encoder/layer.0/intermediate/dense/MatMul"
    p = _replace(FIXED, optimization="none", exclude_nodes=[keep])
    assert QO.quantize_onnx(folder, QO.FP32_FILE, "onnx/model_x.onnx", p) == [keep]
    import onnx

    graph = onnx.load(str(folder / "onnx/model_x.onnx")).graph
    inits = {i.name for i in graph.initializer}
    nodes = {n.name: n.op_type for n in graph.node}
    assert nodes[keep] == "MatMul"
    # the only MatMul left with a constant weight (the others multiply activations: Q x K, P x V)
    assert [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits] == [keep]
    bad = _replace(FIXED, exclude_nodes=["/no/such/*"])
    with pytest.raises(UserError, match=r"quantize\.exclude_nodes\[0\]"):
        QO.quantize_onnx(folder, QO.FP32_FILE, "onnx/model_y.onnx", bad)


def test_dynamic_method_uses_integer_matmuls(built, tmp_path):
    _, out, _, _ = built
    folder = tmp_path / "onnx"
    shutil.copytree(QO.default_build_dir(out), folder)   # the fp32 export
    p = _replace(FIXED, method="dynamic", optimization="none", operators=["MatMul", "Gather"])
    QO.quantize_onnx(folder, QO.FP32_FILE, "onnx/model_d.onnx", p)
    import onnx

    ops = [n.op_type for n in onnx.load(str(folder / "onnx/model_d.onnx")).graph.node]
    assert "MatMulInteger" in ops and "MatMulNBits" not in ops and "MatMul" not in ops
    e32 = _st(folder, "onnx/model.onnx").encode(TINY_CORPUS)
    e8 = _st(folder, "onnx/model_d.onnx").encode(TINY_CORPUS)
    assert QM.cosine_rows(e32, e8).min() > 0.95


def test_interrupted_run_keeps_the_previous_output(built, tmp_path, monkeypatch):
    src, out, _, _ = built
    dst = tmp_path / "onnx"
    shutil.copytree(out, dst)
    shutil.copytree(QO.default_build_dir(out), QO.default_build_dir(dst))
    before = sorted(p.name for p in tmp_path.rglob("*"))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(QC, "quantize_onnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Q.run(BUILD_ONLY, src, dst, tmp_path / "m.json", measure_metrics=False)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert not list(tmp_path.glob(".onnx*.tmp*")) and not (tmp_path / "m.json").exists()


def test_params_are_validated():
    p = parse_params({"quantize": {"preset": "avx2", "per_channel": "false", "operators": "MatMul,Gather"}})
    assert p.quantize.preset == "avx2" and p.quantize.per_channel is False
    assert p.quantize.operators == ["MatMul", "Gather"]
    with pytest.raises(UserError, match="quantize.preset"):
        parse_params({"quantize": {"preset": "avx9000"}})
    with pytest.raises(UserError, match=r"quantize.operators"):
        parse_params({"quantize": {"operators": ["Softmax"]}})


def test_auto_params_are_validated():
    p = parse_params({"quantize": {"method": "auto", "candidates": "fused_dynamic,nbits_b32"}})
    assert p.quantize.candidates == ["fused_dynamic", "nbits_b32"]
    assert [c.name for c in QC.candidates_for(p.quantize)] == ["fused_dynamic", "nbits_b32"]
    assert [c.params.optimization for c in QC.candidates_for(p.quantize)] == ["O2", "none"]
    with pytest.raises(UserError, match="quantize.candidates"):
        parse_params({"quantize": {"candidates": ["fastest_possible"]}})
    with pytest.raises(UserError, match="quantize.gate_mrr_delta"):
        parse_params({"quantize": {"gate_mrr_delta": 0.01}})


def test_fixed_method_builds_that_one_variant(tiny_model_dir, tmp_path):
    out = tmp_path / "onnx"
    Q.run(FIXED, tiny_model_dir, out, tmp_path / "m.json", measure_metrics=False)
    build = QO.default_build_dir(out)
    assert sorted(p.name for p in (build / "onnx/candidates").glob("*.onnx")) == ["matmul_nbits.onnx"]
    assert (out / "onnx/model.onnx").read_bytes() == (build / "onnx/candidates/matmul_nbits.onnx").read_bytes()
    ops = _ops(out / "onnx/model.onnx")
    assert "MatMulNBits" in ops and "QAttention" in ops  # O2-fused graph: MatMuls blockwise 8-bit, Attention int8
