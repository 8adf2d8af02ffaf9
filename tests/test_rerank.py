"""Reranker (issue 18): calibration, thresholds, training examples, a tiny CrossEncoder,
calibration.json, params. Tiny in-process models only."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from hpo_embed.retrieval import calibration as K
from hpo_embed.rerank import candidates as C
from hpo_embed.retrieval.index import build_index
from hpo_embed.rerank import model as M
from hpo_embed.checkpoints import last_complete_checkpoint
from hpo_embed.checkpoints import prepare as prepare_checkpoints
from hpo_embed.params import RerankParams, parse_params
from hpo_embed.common import UserError

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- calibration

def _bernoulli(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, n)
    return p, (rng.uniform(0, 1, n) < p).astype(float)


def test_ece_of_a_perfectly_calibrated_model_is_about_zero():
    p, y = _bernoulli(200_000)
    assert K.ece(p, y) < 0.006
    # a hand-made case: bin 1 (p=0.1) has accuracy 0.5, bin 13 (p=0.9) accuracy 1.0
    assert K.ece([0.1, 0.1, 0.9, 0.9], [0, 1, 1, 1]) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)


def test_brier_against_a_hand_value():
    assert K.brier([0.9, 0.2, 0.6], [1, 0, 0]) == pytest.approx((0.01 + 0.04 + 0.36) / 3)


def test_platt_and_isotonic_repair_an_overconfident_model():
    p, y = _bernoulli(20_000, seed=1)
    logit = 4.0 * np.log(p / (1 - p))           # sigmoid(logit) is far too confident
    raw = K.ece(K.sigmoid(logit), y)
    assert raw > 0.1
    cals = K.fit_all(logit, y)
    q = K.calibration_report(cals, logit, y)
    assert q["none"]["ece"] == pytest.approx(raw)
    assert q["platt"]["ece"] < 0.02 and q["isotonic"]["ece"] < 0.02
    assert q["platt"]["brier"] < q["none"]["brier"]
    assert cals["platt"].a == pytest.approx(0.25, abs=0.02)   # undoes the factor 4


def test_threshold_search_on_a_hand_made_example():
    s = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    y = np.array([1, 1, 0, 1, 0])
    got = K.best_threshold(s, y, 0.75)
    assert got == {"threshold": 2.0, "precision": 0.75, "coverage": 0.8, "accepted": 4, "n": 5}
    assert K.best_threshold(s, y, 0.9)["threshold"] == 4.0
    # tied scores are accepted together: 3,3 has precision 0.5 and nothing reaches 0.9
    assert K.best_threshold(np.array([3.0, 3.0, 1.0]), np.array([1, 0, 1]), 0.9)["threshold"] is None


def test_branch_thresholds_fall_back_to_the_global_one_for_a_small_branch():
    s = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 4.5, 0.5])
    y = np.array([1, 1, 0, 1, 0, 0, 1])
    br = ["A"] * 5 + ["B"] * 2
    th = K.branch_thresholds(s, y, br, target=0.75, min_examples=3)
    assert th["branches"]["A"]["source"] == "branch" and th["branches"]["A"]["threshold"] == 2.0
    # global: 5, 4.5, 4, 3, 2 -> precision 3/5 at 2; best with >= 0.75 is s >= 4 (2 of 3 -> 0.667 no) -> s >= 5
    assert th["global"]["threshold"] == 5.0 and th["global"]["coverage"] == pytest.approx(1 / 7)
    b = th["branches"]["B"]
    assert b["source"] == "global" and b["threshold"] == 5.0 and b["accepted"] == 0 and b["coverage"] == 0.0
    cal = {"thresholds": th}
    test = K.evaluate_thresholds(cal, np.array([6.0, 2.5, 1.0]), np.array([1, 1, 0]), ["A", "A", "C"])
    assert test["overall"]["accepted"] == 2 and test["overall"]["precision"] == 1.0
    assert test["branches"]["C"]["coverage"] == 0.0   # unknown branch: the global threshold (5.0)


def test_too_small_dev_set_is_a_clear_error():
    with pytest.raises(ValueError, match=r"only 12 dev queries for calibration, need at least 100 "):
        K.check_size(12, 100, "data/rerank/candidates.parquet")


def test_calibrate_stage_stops_with_one_line_on_a_small_dev_set(tmp_path):
    from stages.calibrate import main
    rows = [{"set": "dev", "lang": "de", "query": f"q{i}", "expected": ["HP:0000001"], "branch": "",
             "gold_rank": 1, "cand_ids": ["HP:0000001"], "cand_scores": [1.0]} for i in range(5)]
    pd.DataFrame(rows).to_parquet(tmp_path / "c.parquet")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["rerank"]["enabled"] = True
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError) as exc:
        main(["--params", str(tmp_path / "params.yaml"), "--candidates", str(tmp_path / "c.parquet"), "--model",
              str(tmp_path / "m"), "--terms", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "cal.json"),
              "--plots", str(tmp_path / "plots"), "--metrics", str(tmp_path / "m.json")])
    assert "only 5 dev queries for calibration, need at least 100" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_calibration_json_round_trips(tmp_path):
    p, y = _bernoulli(2000, seed=3)
    logit = 2.0 * np.log(p / (1 - p))
    cals = K.fit_all(logit, y)
    th = K.branch_thresholds(logit, y, ["A"] * 1000 + ["B"] * 1000, 0.9, 30)
    K.save(tmp_path / "calibration.json", K.to_json(cals, "isotonic", th, {"dev_queries": 2000}))
    text = (tmp_path / "calibration.json").read_text()
    assert "format" in json.loads(text)
    obj, back = K.load(tmp_path / "calibration.json")
    s = np.linspace(-8, 8, 101)
    for m in ("none", "platt", "isotonic"):
        np.testing.assert_allclose(back[m].predict(s), cals[m].predict(s), rtol=0, atol=1e-12)
    assert K.threshold_for(obj, "A") == th["branches"]["A"]["threshold"]
    (tmp_path / "bad.json").write_text('{"format": "x"}')
    with pytest.raises(ValueError, match="not a hpo-embed-rerank-calibration/1 file"):
        K.load(tmp_path / "bad.json")


# --------------------------------------------------------------------------- examples

def _terms():
    rows = [("HP:0000001", "Seizure", [{"text": "Epileptic seizure", "scope": "EXACT"}]),
            ("HP:0000002", "Fever", []), ("HP:0000003", "Tremor", []), ("HP:0000004", "Headache", []),
            ("HP:0000005", "Microcephaly", []), ("HP:0000006", "Short stature", [])]
    return pd.DataFrame([{"id": i, "label": lab, "synonyms": syn} for i, lab, syn in rows])


def test_training_queries_come_from_train_concepts_only_and_skip_self_matches():
    index = build_index(_terms(), "multi")
    pairs = pd.DataFrame([
        ("Seizure", "Krampfanfall", "HP:0000001", "xl_term", "en", "de"),
        ("epileptic seizure", "Crise épileptique", "HP:0000001", "term_syn", "en", "fr"),
        ("Fever", "Fieber", "HP:0000002", "xl_term", "en", "de"),          # dev concept
        ("Tremor", "Zittern", "HP:0000003", "term_def", "en", "de"),      # definition pairs not used
    ], columns=["anchor", "positive", "hpo_id", "pair_type", "lang_anchor", "lang_positive"])
    split_of = {"HP:0000001": "train", "HP:0000002": "dev", "HP:0000003": "train"}
    q = C.train_queries(pairs, split_of, index, n=100, seed=0)
    assert sorted(q["query"]) == ["Crise épileptique", "Krampfanfall"]   # own label / EXACT synonym dropped
    assert set(q["set"]) == {"train"} and all(e == ["HP:0000001"] for e in q["expected"])


def test_build_examples_labels_positives_and_refuses_non_train_concepts():
    docs = dict(zip(_terms()["id"], _terms()["label"]))
    cands = pd.DataFrame([
        {"set": "train", "query": "Krampfanfall", "expected": ["HP:0000001"],
         "cand_ids": ["HP:0000003", "HP:0000001", "HP:0000002", "HP:0000004"]},
        {"set": "dev", "query": "Fieber", "expected": ["HP:0000002"], "cand_ids": ["HP:0000002"]},
    ])
    ex = M.reranker_examples(cands, docs, hard=2, rand=1, max_examples=None, seed=0,
                          split_of={"HP:0000001": "train", "HP:0000002": "dev"})
    assert len(ex) == 4 and set(ex["query"]) == {"Krampfanfall"}      # the dev row is never used
    pos = ex[ex["label"] == 1.0]
    assert pos["document"].tolist() == ["Seizure"] and pos["candidate"].tolist() == ["HP:0000001"]
    neg = ex[ex["label"] == 0.0]
    assert {"Tremor", "Fever"} <= set(neg["document"]) and "Seizure" not in set(neg["document"])
    assert len(neg) == 3 and neg["candidate"].nunique() == 3
    bad = cands.assign(set="train")
    with pytest.raises(ValueError, match="non-train concept HP:0000002"):
        M.reranker_examples(bad, docs, 2, 1, None, 0, {"HP:0000001": "train", "HP:0000002": "dev"})


def test_rerank_keeps_the_biencoder_rank_when_gold_is_not_among_the_candidates():
    cands = pd.DataFrame([{"query": "a", "expected": ["X"], "gold_rank": 3, "cand_ids": ["A", "B", "X"]},
                          {"query": "b", "expected": ["Y"], "gold_rank": 57, "cand_ids": ["A", "B", "C"]}])
    rr = M.rerank(cands, [np.array([0.1, -1.0, 2.0]), np.array([1.0, 3.0, 2.0])])
    assert rr["rr_rank"].tolist() == [1, 57]
    assert rr["rr_ids"][1] == ["B", "C", "A"] and rr["top_logit"].tolist() == [2.0, 3.0]



def _fusion_lists():
    # query a: the bi-encoder is right (gold first, large cosine gap), the logits slightly wrong;
    # query b: the bi-encoder is narrowly wrong (gap 0.01), the logits clearly right;
    # query c: both wrong, gold ("Z") not among the candidates -> its bi-encoder rank stays
    cands = pd.DataFrame([
        {"query": "a", "expected": ["X"], "gold_rank": 1, "cand_ids": ["X", "B"], "cand_scores": [0.90, 0.80]},
        {"query": "b", "expected": ["Y"], "gold_rank": 2, "cand_ids": ["A", "Y"], "cand_scores": [0.86, 0.85]},
        {"query": "c", "expected": ["Z"], "gold_rank": 40, "cand_ids": ["A", "B"], "cand_scores": [0.70, 0.60]}])
    logits = [np.array([1.0, 2.0]), np.array([-1.0, 3.0]), np.array([0.0, 0.0])]
    return cands, logits


def test_fused_scores_are_cosine_plus_weight_times_logit():
    cands, logits = _fusion_lists()
    fz = M.fused_scores(cands, logits, 0.05)
    np.testing.assert_allclose(fz[0], [0.90 + 0.05, 0.80 + 0.10])
    np.testing.assert_allclose(fz[1], [0.86 - 0.05, 0.85 + 0.15])
    assert M.rerank(cands, fz)["rr_rank"].tolist() == [1, 1, 40]   # a: 0.95 > 0.90; b: 1.00 > 0.81


def test_fusion_weight_on_dev_beats_both_the_biencoder_and_the_logits_alone():
    cands, logits = _fusion_lists()
    w, mrr = M.choose_fusion_weight(cands, logits, (0.0, 0.005, 0.05, 10.0))
    # w 0: bi-encoder order (ranks 1, 2, 40); w 0.005: b flips only above w = 0.0025 -> 1, 1;
    # 10: the logits decide (a falls to rank 2)
    assert mrr == {"0": round((1 + 0.5 + 1 / 40) / 3, 6), "0.005": round((1 + 1 + 1 / 40) / 3, 6),
                   "0.05": round((1 + 1 + 1 / 40) / 3, 6), "10": round((0.5 + 1 + 1 / 40) / 3, 6)}
    assert w == 0.005   # a tie goes to the smaller weight
    assert M.choose_fusion_weight(cands.iloc[:1], logits[:1], (0.0, 10.0))[0] == 0.0


def test_the_rerank_report_has_a_fusion_section_with_the_chosen_weight():
    from hpo_embed.rerank import evaluate as E
    cands, logits = _fusion_lists()
    cands = cands.assign(set="heldout", lang="de")
    rr = M.rerank(cands, logits)
    fz = M.rerank(cands, M.fused_scores(cands, logits, 0.05))
    cmp, fused = E.compare(rr, 50, 0), E.compare(fz, 50, 0)
    assert fused["heldout.de"]["reranked"]["mrr"] > cmp["heldout.de"]["reranked"]["mrr"]
    assert fused["heldout.de"]["wins"] == 1 and fused["heldout.de"]["losses"] == 0
    fusion = {"weight": 0.05, "chosen_on": "dev MRR over 3 queries", "dev_mrr": {"0": 0.5, "0.05": 0.675}}
    text = "\n".join(E.fusion_section(fused, fusion))
    assert "w = 0.05" in text and "0.05: 0.6750" in text and "| heldout.de | 3 |" in text

# --------------------------------------------------------------------------- tiny CrossEncoder

def test_tiny_cross_encoder_trains_and_reorders_a_candidate_list(tiny_model_dir, tmp_path):
    # an easy signal a 2-layer model learns in a few steps: Seizure / Fever are always the
    # relevant documents, Tremor / Headache / Microcephaly never
    model = M.load_cross_encoder(str(tiny_model_dir), max_length=32, seed=0)
    docs = {"A": "Tremor", "B": "Fever", "C": "Seizure", "D": "Headache", "E": "Microcephaly"}
    rows = []
    for q in ("Krampfanfall", "Fieber", "Anfall", "hohes Fieber", "Epilepsie"):
        rows += [(q, "Seizure", 1.0), (q, "Fever", 1.0)] + [(q, docs[o], 0.0) for o in "ADE"]
    ex = pd.DataFrame(rows * 4, columns=["query", "document", "label"])
    dev = [{"query": "Anfall", "positive": ["Seizure"], "documents": ["Tremor", "Headache", "Seizure"]}]
    trainer = M.train(model, ex, dev, tmp_path / "ckpt", lr=3e-3, epochs=2.0, batch_size=16, warmup_ratio=0.0,
                      eval_steps=8, save_total_limit=1, pos_weight=1.5, seed=0, resume_from=None)
    assert trainer.state.global_step == 2 * -(-len(ex) // 16)
    assert any(trainer.best_metric_name in e for e in trainer.state.log_history)
    cands = pd.DataFrame([{"query": "Krampf", "expected": ["C"], "gold_rank": 3, "cand_ids": ["A", "D", "C"]},
                          {"query": "Fieber", "expected": ["B"], "gold_rank": 2, "cand_ids": ["E", "B", "A"]}])
    logits = M.score_candidates(trainer.model, cands, docs)
    rr = M.rerank(cands, logits)
    assert rr["rr_rank"].tolist() == [1, 1]
    assert rr["rr_ids"][0][0] == "C" and rr["rr_ids"][1][0] == "B"
    assert last_complete_checkpoint(tmp_path / "ckpt", clean=False) is not None


def test_prepare_checkpoints_drops_another_runs_checkpoints(tmp_path):
    ck = tmp_path / "ck"
    (ck / "checkpoint-10").mkdir(parents=True)
    (ck / "checkpoint-10" / "trainer_state.json").write_text("{}")
    (ck / "checkpoint-20").mkdir()          # killed while saving: no trainer_state.json
    (ck / "run.json").write_text('{"fingerprint": "fp1"}')
    assert prepare_checkpoints(ck, "fp1", True, "rerank.resume").name == "checkpoint-10"
    assert not (ck / "checkpoint-20").exists()
    assert prepare_checkpoints(ck, "fp1", True, "rerank.resume").name == "checkpoint-10"
    assert prepare_checkpoints(ck, "fp2", True, "rerank.resume") is None       # params or inputs changed
    assert not list(ck.glob("checkpoint-*"))


# --------------------------------------------------------------------------- params

def test_rerank_params_are_validated_with_one_line_errors():
    assert parse_params({}).rerank == RerankParams()
    p = parse_params({"rerank": {"k": "30", "lr": "1e-05", "max_train_examples": "null"}}).rerank
    assert p.k == 30 and p.lr == 1e-5 and p.max_train_examples is None
    for raw, msg in [({"kk": 1}, "params.yaml: rerank.kk: unknown parameter"),
                     ({"k": 1}, "params.yaml: rerank.k: must be >= 2"),
                     ({"target_precision": 1.5}, "params.yaml: rerank.target_precision: must be < 1"),
                     ({"hard_negatives": 30}, "params.yaml: rerank: hard_negatives (30) must be < k (20)")]:
        with pytest.raises(UserError) as exc:
            parse_params({"rerank": raw})
        assert str(exc.value).startswith(msg) and "\n" not in str(exc.value)


def test_params_yaml_has_a_valid_rerank_section():
    from hpo_embed.params import load_params, parse_params
    p = load_params(REPO / "params.yaml")
    assert p.rerank.k == 20 and p.rerank.target_precision == 0.9
    with pytest.raises(UserError, match=r"params.yaml: rerank.k: must be >= 2"):
        parse_params({"rerank": {"k": 0}})


def test_onnx_int8_export_scores_like_pytorch(tiny_model_dir, tmp_path):
    from hpo_embed.rerank import export as X
    src = tmp_path / "ce"
    M.load_cross_encoder(str(tiny_model_dir), max_length=32, seed=0).save(str(src))
    out = X.export_int8(src, tmp_path / "onnx", "avx2")
    assert (out / X.int8_file("avx2")).is_file() and not (out / "onnx" / "model.onnx").exists()
    docs = {"A": "Tremor", "B": "Fever", "C": "Seizure", "D": "Headache"}
    cands = pd.DataFrame([{"query": q, "cand_ids": list("ABCD")} for q in ("Fieber", "Krampfanfall", "Zittern")])
    fp32 = M.score_candidates(M.load_cross_encoder(str(src), 32), cands, docs)
    int8 = M.score_candidates(X.load_int8(out, "avx2", 1, 32), cands, docs)
    agree = X.agreement(fp32, int8)
    assert agree["pairs"] == 12 and agree["mean_abs_diff"] < 0.05


def test_disabled_stages_write_disabled_outputs_quickly(tmp_path):
    import yaml

    from stages import calibrate, rerank_benchmark, rerank_candidates, rerank_export, rerank_train
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["rerank"]["enabled"] = False
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    t, P = tmp_path, ["--params", str(params)]
    rerank_candidates.main(P + ["--model", str(t / "none"), "--pairs", str(t), "--terms", str(t / "t.parquet"),
                                "--out", str(t / "c.parquet"), "--info", str(t / "info.json")])
    rerank_train.main(P + ["--candidates", str(t / "c.parquet"), "--finetuned", str(t), "--base", str(t), "--terms",
                           str(t), "--concepts", str(t), "--out", str(t / "model"), "--checkpoints", str(t / "ck"),
                           "--metrics", str(t / "train.json")])
    calibrate.main(P + ["--candidates", str(t / "c.parquet"), "--model", str(t / "model"), "--terms", str(t),
                        "--out", str(t / "cal.json"), "--plots", str(t / "plots"), "--metrics", str(t / "cal_m.json")])
    rerank_benchmark.main(P + ["--candidates", str(t / "c.parquet"), "--model", str(t / "model"), "--calibration",
                               str(t / "cal.json"), "--terms", str(t), "--per-query", str(t / "pq.parquet"),
                               "--report", str(t / "rerank.md"), "--metrics", str(t / "rerank.json")])
    rerank_export.main(P + ["--model", str(t / "model"), "--candidates", str(t / "c.parquet"), "--terms", str(t),
                            "--out", str(t / "onnx"), "--metrics", str(t / "export.json")])
    assert pd.read_parquet(t / "c.parquet").empty and pd.read_parquet(t / "pq.parquet").empty
    assert (t / "model" / "DISABLED.txt").is_file() and (t / "onnx" / "DISABLED.txt").is_file()
    for f in ("info.json", "train.json", "cal_m.json", "rerank.json", "export.json"):
        assert json.loads((t / f).read_text())["enabled"] is False, f
    assert "rerank.enabled=true" in (t / "rerank.md").read_text()
    assert (t / "plots" / "ideal.csv").is_file()
    assert (t / "ck").is_dir()   # every declared output exists, or dvc repro fails after the stage


def test_calibrate_chooses_a_fusion_weight_and_the_benchmark_reports_it(tmp_path, monkeypatch):
    # the stages' wiring with a stand-in scorer: the bi-encoder ranks a wrong concept narrowly
    # first; the "cross-encoder" scores the gold highest in 3 of 4 queries (else a third concept)
    from hpo_embed.rerank import benchmark as B, calibrate as CAL
    terms = pd.DataFrame([{"id": f"HP:{i:07d}", "label": f"term {i}", "synonyms": [], "branch": "HP:0000118",
                           "selected": True} for i in range(6)])
    terms.to_parquet(tmp_path / "terms.parquet")
    rows = []
    for i, (split, lang) in enumerate([("dev", "de")] * 120 + [("heldout", "de")] * 40 + [("heldout", "fr")] * 40
                                      + [("70cases_x", "de")] * 20):
        gold, wrong, other = f"HP:{i % 6:07d}", f"HP:{(i + 1) % 6:07d}", f"HP:{(i + 2) % 6:07d}"
        rows.append({"set": split, "lang": lang, "query": f"q{i}", "expected": [gold], "branch": "HP:0000118",
                     "gold_rank": 2, "cand_ids": [wrong, gold, other], "cand_scores": [0.86, 0.85, 0.60]})
    pd.DataFrame(rows).to_parquet(tmp_path / "c.parquet")

    def fake_scores(model, cands, docs, batch_size=64):
        return [np.array([0.0, 2.0, 1.0]) if int(r.query[1:]) % 4 else np.array([0.0, 1.0, 2.0])
                for r in cands.itertuples(index=False)]
    for mod in (CAL, B):
        monkeypatch.setattr(mod, "score_candidates", fake_scores)
        monkeypatch.setattr(mod, "load_cross_encoder", lambda *a, **k: None)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    p = RerankParams(enabled=True, test_queries=None, bootstrap_resamples=200)
    CAL.run(p, tmp_path / "c.parquet", tmp_path / "model", tmp_path / "terms.parquet", tmp_path / "cal.json",
            tmp_path / "plots", tmp_path / "calm.json")
    fusion = json.loads((tmp_path / "cal.json").read_text())["fusion"]
    # w = 0: MRR 0.5; the reranker's order alone: 3/4 x 1 + 1/4 x 1/2 = 0.875; fusion with a small w
    # keeps the bi-encoder's 0.85 ahead of the third concept (0.60): gold first in every query
    assert fusion["dev_mrr"]["0"] == 0.5 and fusion["dev_mrr"]["10"] == 0.875
    assert fusion["weight"] == 0.02 and fusion["dev_mrr"]["0.02"] == 1.0
    B.run(p, tmp_path / "c.parquet", tmp_path / "model", tmp_path / "cal.json", tmp_path / "terms.parquet",
          tmp_path / "pq.parquet", tmp_path / "rerank.md", tmp_path / "rm.json")
    m = json.loads((tmp_path / "rm.json").read_text())
    assert m["fusion_weight"] == 0.02 and m["heldout.all.mrr_fused"] == 1.0 and m["heldout.all.mrr_rr"] == 0.875
    assert m["heldout.all.mrr_bi"] == 0.5 and m["fusion_better"] and m["70cases_x.mrr_fused"] == 1.0
    assert "## Score fusion: bi-encoder cosine + w × cross-encoder logit (w = 0.02)" in (tmp_path / "rerank.md").read_text()
    assert pd.read_parquet(tmp_path / "pq.parquet")["fused_rank"].tolist() == [1] * 100
