"""Stage quantize: ONNX export + dynamic INT8 of a tiny in-process model."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages import quantize as Q
from stages.common import UserError
from stages.params import QuantizeParams, parse_params

from conftest import TINY_CORPUS

# block_size 16: the tiny model's MatMuls have K = 32/64 inputs (the default 128 pads)
PARAMS = dataclasses.replace(QuantizeParams(), measure_size=12, agreement_queries=10, repeats=1,
                             batch_size=4, threads=1, block_size=16, exclude_nodes=[],
                             optimization="O2")  # the fusion path: Attention fused, then quantized


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
    metrics = Q.run(PARAMS, src, out, metrics_path, terms_path=_terms(work / "terms.parquet"),
                    queries_path=work / "absent.parquet", translations=work / "absent")
    return src, out, metrics_path, metrics


def _st(path: Path, file_name: str | None = None):
    from sentence_transformers import SentenceTransformer

    if file_name is None:
        return SentenceTransformer(str(path), device="cpu")
    return SentenceTransformer(str(path), backend="onnx", device="cpu", model_kwargs={"file_name": file_name})


def test_int8_loads_with_the_onnx_backend_and_is_close_to_fp32(built):
    _, out, _, _ = built
    fp32, int8 = _st(out, "onnx/model.onnx"), _st(out, "onnx/model_int8.onnx")
    e32, e8 = fp32.encode(TINY_CORPUS), int8.encode(TINY_CORPUS)
    assert e8.shape == (len(TINY_CORPUS), 32)
    cos = (e32 * e8).sum(axis=1) / np.linalg.norm(e32, axis=1) / np.linalg.norm(e8, axis=1)
    assert cos.min() > 0.98
    assert not np.allclose(e32, e8, atol=1e-6)  # it really is a different (quantized) graph
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "onnx/model_int8.onnx")).graph.node}
    assert "MatMulNBits" in ops and "MatMul" not in ops, ops  # every weight MatMul is int8
    assert "DynamicQuantizeLinear" in ops, ops  # embeddings / fused attention: dynamic int8
    assert (out / "onnx/model_int8.onnx").stat().st_size < 0.5 * (out / "onnx/model.onnx").stat().st_size


def test_fp32_onnx_keeps_pooling_and_normalisation(built):
    src, out, _, _ = built
    e_pt = _st(src).encode(TINY_CORPUS)
    e_onnx = _st(out, "onnx/model.onnx").encode(TINY_CORPUS)
    np.testing.assert_allclose(e_onnx, e_pt, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(e_onnx, axis=1), 1.0, atol=1e-5)
    assert json.loads((out / "modules.json").read_text()) == json.loads((src / "modules.json").read_text())
    assert not list(out.glob("model.safetensors"))  # no PyTorch weights in the ONNX folder
    assert not list(out.parent.glob(".onnx.*"))  # no temporary folder left behind


def test_metrics_have_sane_values(built):
    _, out, metrics_path, metrics = built
    assert json.loads(metrics_path.read_text()) == metrics
    s, t, a, m = metrics["size"], metrics["throughput"], metrics["agreement"], metrics["memory"]
    assert 0 < s["onnx_int8_mb"] < s["onnx_fp32_mb"]
    assert s["int8_vs_fp32"] == pytest.approx(s["onnx_int8_mb"] / s["onnx_fp32_mb"], abs=1e-3)
    assert s["pytorch_mb"] > 0
    for k in ("pytorch_fp32", "onnx_fp32", "onnx_int8"):
        assert 0 < t[k]["sentences_per_s"] <= t[k]["sentences_per_s_best"]
        assert len(t[k]["seconds_all"]) == PARAMS.repeats
    assert t["threads"] == 1 and t["n_texts"] == PARAMS.measure_size and t["batch_size"] == 4
    assert 0.98 < a["cosine_min"] <= a["cosine_mean"] <= 1.0 + 1e-6
    assert 0.0 <= a["top1_agreement"] <= 1.0
    assert 0.0 <= a["fp32_margin_below_0.01_share"] <= 1.0
    assert 0.0 < a["mrr_fp32"] <= 1.0 and 0.0 < a["mrr_int8"] <= 1.0
    assert a["mrr_delta"] == pytest.approx(a["mrr_int8"] - a["mrr_fp32"], abs=2e-4)
    assert a["n_queries"] == PARAMS.agreement_queries and a["n_corpus"] == len(TINY_CORPUS)
    assert a["query_source"].startswith("fallback")
    assert a["onnx_fp32_vs_pytorch_max_abs"] < 1e-4
    assert 0 < m["int8_process_after_import_mb"] <= m["int8_process_after_load_mb"] <= m["int8_process_peak_rss_mb"]
    assert metrics["embedding_dim"] == 32
    assert metrics["optimization"] == "O2" and metrics["fused_operators"].get("Attention", 0) == 2


def test_missing_model_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no-such-model"):
        Q.run(PARAMS, tmp_path / "no-such-model", tmp_path / "onnx", tmp_path / "m.json",
              measure_metrics=False)


@pytest.mark.parametrize("broken", ["model.safetensors", "config.json"])
def test_corrupt_model_folder_is_a_user_error(tiny_model_dir, tmp_path, broken):
    src = tmp_path / "finetuned"
    shutil.copytree(tiny_model_dir, src)
    (src / broken).write_bytes(b"\x00 not a model \x00")
    with pytest.raises(UserError, match=str(src)):
        Q.run(PARAMS, src, tmp_path / "onnx", tmp_path / "m.json", measure_metrics=False)
    assert not (tmp_path / "onnx").exists() and not list(tmp_path.glob(".onnx.*"))


def test_excluded_nodes_stay_fp32_and_unmatched_pattern_is_an_error(built, tmp_path):
    _, out, _, _ = built
    folder = tmp_path / "onnx"
    shutil.copytree(out, folder)
    keep = "/encoder/layer.0/intermediate/dense/MatMul"
    p = dataclasses.replace(PARAMS, exclude_nodes=[keep])
    assert Q.quantize_onnx(folder, Q.FP32_FILE, "onnx/model_x.onnx", p) == [keep]
    import onnx

    nodes = {n.name: n.op_type for n in onnx.load(str(folder / "onnx/model_x.onnx")).graph.node}
    assert nodes[keep] == "MatMul"
    assert [n for n, op in nodes.items() if op == "MatMul"] == [keep]
    bad = dataclasses.replace(PARAMS, exclude_nodes=["/no/such/*"])
    with pytest.raises(UserError, match=r"quantize\.exclude_nodes\[0\]"):
        Q.quantize_onnx(folder, Q.FP32_FILE, "onnx/model_y.onnx", bad)


def test_dynamic_method_uses_integer_matmuls(built, tmp_path):
    _, out, _, _ = built
    folder = tmp_path / "onnx"
    shutil.copytree(out, folder)
    p = dataclasses.replace(PARAMS, method="dynamic")
    Q.quantize_onnx(folder, Q.FP32_FILE, "onnx/model_d.onnx", p)
    import onnx

    ops = [n.op_type for n in onnx.load(str(folder / "onnx/model_d.onnx")).graph.node]
    assert "MatMulInteger" in ops and "MatMulNBits" not in ops and "MatMul" not in ops
    e32 = _st(folder, "onnx/model.onnx").encode(TINY_CORPUS)
    e8 = _st(folder, "onnx/model_d.onnx").encode(TINY_CORPUS)
    assert Q.cosine_rows(e32, e8).min() > 0.95


def test_interrupted_run_keeps_the_previous_output(built, tmp_path, monkeypatch):
    src, out, _, _ = built
    dst = tmp_path / "onnx"
    shutil.copytree(out, dst)
    before = sorted(p.name for p in dst.rglob("*"))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Q, "quantize_onnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Q.run(PARAMS, src, dst, tmp_path / "m.json", measure_metrics=False)
    assert sorted(p.name for p in dst.rglob("*")) == before
    assert not list(tmp_path.glob(".onnx.*")) and not (tmp_path / "m.json").exists()


def test_params_are_validated():
    p = parse_params({"quantize": {"preset": "avx2", "per_channel": "false", "operators": "MatMul,Gather"}})
    assert p.quantize.preset == "avx2" and p.quantize.per_channel is False
    assert p.quantize.operators == ["MatMul", "Gather"]
    with pytest.raises(UserError, match="quantize.preset"):
        parse_params({"quantize": {"preset": "avx9000"}})
    with pytest.raises(UserError, match=r"quantize.operators"):
        parse_params({"quantize": {"operators": ["Softmax"]}})
