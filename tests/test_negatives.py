"""Hard negatives (issue 15): the false-negative guard, rank ranges and margins on hand-made
score matrices, seeded determinism, ontology relatives on a small DAG, the n-tuple
training set and a train step with it, and resume of an interrupted iterative run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from hpo_embed.common import UserError
from hpo_embed.negatives.mining import (Corpus, guard_indices, known_texts, mine, mining_corpus, model_candidates, norm,
                                        relatives)
from hpo_embed.ontology.graph import IsAGraph
from hpo_embed.params import MineParams

REPO = Path(__file__).resolve().parent.parent


class FakeModel:
    """encode() from a fixed {text: vector} table (normalised), for exact expected scores."""

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table

    def encode(self, texts, **kw):
        v = np.stack([np.asarray(self.table[t], dtype=np.float32) for t in texts])
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def corpus_of(rows: list[tuple[str, str]]) -> Corpus:
    return Corpus([t for t, _ in rows], [c for _, c in rows], np.ones(len(rows), dtype=bool))


# --------------------------------------------------------------------------- guard

def test_guard_drops_own_synonyms_translations_and_identical_texts():
    # anchor "Fits" (concept A) -> positive "Seizure"; the corpus holds A's own label and
    # synonym, C's label identical to A's German translation, D's label identical to the
    # positive up to case/space. All four score above every real negative.
    corpus = Corpus(["Seizure", "Fits", "Krampfanfall", " SEIZURE ", "Tremor", "Fever", "Headache"],
                    ["A", "A", "C", "D", "E", "F", "G"], np.array([1, 0, 1, 1, 1, 1, 1], dtype=bool))
    texts = {"A": {norm("Seizure"), norm("Fits"), norm("Krampfanfall")}}
    g = guard_indices("Fits", "Seizure", "A", corpus, texts, None, family_allowed=False)
    assert sorted(g["same_concept"]) == [0, 1] and sorted(g["same_text"]) == [2, 3]
    scores = np.array([[0.99, 0.98, 0.97, 0.96, 0.5, 0.4, 0.3]])
    p = MineParams(range_max=3, relative_margin=None)
    idx, sc, counts = model_candidates(scores, np.array([0.9]), [g], p)
    assert idx[0].tolist() == [4, 5, 6] and sc[0] == pytest.approx([0.5, 0.4, 0.3])
    assert counts["guard_same_concept"] == 2 and counts["guard_same_text"] == 2 and counts["margin"] == 0
    # a guarded text below the range_max-th survivor is not counted as removed
    low = np.array([[0.99, 0.1, 0.97, 0.05, 0.5, 0.4, 0.3]])
    _, _, counts = model_candidates(low, np.array([0.9]), [g], MineParams(range_max=2, relative_margin=None))
    assert counts["guard_same_concept"] == 1 and counts["guard_same_text"] == 1


def test_guard_end_to_end_never_yields_a_text_of_the_anchors_concept():
    """Through mine(): translations (from the training pairs) and synonyms (from terms) of
    the anchor's concept are never its negatives, even when they are the nearest texts."""
    terms = pd.DataFrame([
        {"id": "A", "label": "Seizure", "synonyms": [{"text": "Fits", "scope": "EXACT"}]},
        {"id": "C", "label": "Krampfanfall", "synonyms": []},   # = A's German translation
        {"id": "D", "label": "seizure", "synonyms": []},         # = A's label, other case
        {"id": "E", "label": "Tremor", "synonyms": []},
        {"id": "F", "label": "Fever", "synonyms": []},
    ])
    pairs = pd.DataFrame({"anchor": ["Fits", "Krampfanfall"], "positive": ["Seizure", "Seizure"], "hpo_id": ["A", "A"]})
    corpus = mining_corpus(terms, {"A", "C", "D", "E", "F"}, "label_synonyms")
    assert corpus.texts == ["Seizure", "Fits", "Krampfanfall", "seizure", "Tremor", "Fever"]
    near = np.array([1.0, 0.0, 0.0])
    table = {"Seizure": near, "Fits": near + [0, 0.01, 0], "Krampfanfall": near + [0, 0.02, 0],
             "seizure": near, "Tremor": [0.6, 0.8, 0], "Fever": [0.5, 0, 0.86]}
    rows = pairs[["anchor", "positive", "hpo_id"]]
    df, rep = mine(rows, corpus, known_texts(terms, pairs), None,
                   MineParams(sources=["model"], num_negatives=2, relative_margin=None), model=FakeModel(table))
    for k in (1, 2):
        assert set(df[f"negative_{k}"]) <= {"Tremor", "Fever"}
        assert set(df[f"easy_{k}"]) <= {"Tremor", "Fever"}
    assert df["negative_1"].tolist() == ["Tremor", "Tremor"] and df["negative_2"].tolist() == ["Fever", "Fever"]
    # per anchor: 2 own texts (Seizure, Fits), Krampfanfall and 'seizure' identical to A's texts
    assert rep["guard_removed"] == {"same_concept": 4, "same_text": 4, "family": 0}
    assert rep["by_source"] == {"model": 4, "fill": 0}
    assert rep["encoded_texts"] == 6     # anchors and positives are corpus texts: encoded once


# --------------------------------------------------------------------------- ranges and margins

@pytest.mark.parametrize("kw, expected, margin_removed", [
    ({"range_min": 0, "range_max": 6}, [0, 1, 2, 3, 4, 5], 0),
    ({"range_min": 1, "range_max": 4}, [1, 2, 3], 0),
    # the margin masks before the top-k (TopK-PercPos): the top-k *below* 0.95 x 0.88 = 0.836
    ({"range_min": 0, "range_max": 6, "relative_margin": 0.05}, [2, 3, 4, 5], 2),
    ({"range_min": 0, "range_max": 6, "absolute_margin": 0.1}, [3, 4, 5], 3),       # > 0.78 masked
    ({"range_min": 1, "range_max": 4, "relative_margin": 0.05}, [3, 4, 5], 2),     # window over survivors
    ({"range_min": 0, "range_max": 2, "relative_margin": 0.05}, [2, 3], 2),
    ({"range_min": 0, "range_max": 3, "relative_margin": 0.05, "absolute_margin": 0.1}, [3, 4, 5], 3),
])
def test_rank_range_and_margins_on_a_hand_made_matrix(kw, expected, margin_removed):
    # columns in a shuffled order so that the result is by score, not by position
    order = np.array([3, 0, 5, 1, 4, 2])
    base = np.array([0.9, 0.85, 0.8, 0.7, 0.6, 0.5])
    scores = np.empty((1, 6))
    scores[0, order] = base          # column order[j] holds the j-th best score
    g = {"same_concept": np.zeros(0, np.int64), "same_text": np.zeros(0, np.int64), "family": np.zeros(0, np.int64)}
    p = MineParams(**({"relative_margin": None} | kw))
    idx, sc, counts = model_candidates(scores, np.array([0.88]), [g], p)
    assert idx[0].tolist() == order[expected].tolist()
    assert counts["margin"] == margin_removed


def test_params_are_validated():
    with pytest.raises(ValueError, match="range_min"):
        MineParams(range_min=5, range_max=5)
    with pytest.raises(ValueError):
        MineParams(sampling="hardest")
    assert MineParams.model_validate({"sources": "model", "absolute_margin": "null"}).sources == ["model"]
    from hpo_embed.params import parse_params
    with pytest.raises(UserError, match=r"mine\.num_negatives"):
        parse_params({"mine": {"num_negatives": 0}})
    with pytest.raises(UserError, match=r"mine\.bogus"):
        parse_params({"mine": {"bogus": 1}})


# --------------------------------------------------------------------------- determinism

def random_world(n_concepts: int = 40, dim: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = [f"HP:{i:07d}" for i in range(n_concepts)]
    terms = pd.DataFrame({"id": ids, "label": [f"label {i}" for i in range(n_concepts)],
                          "synonyms": [[] for _ in ids]})
    table = {f"label {i}": rng.standard_normal(dim) for i in range(n_concepts)}
    rows = pd.DataFrame({"anchor": [f"syn {i}" for i in range(n_concepts)],
                         "positive": [f"label {i}" for i in range(n_concepts)], "hpo_id": ids})
    for i in range(n_concepts):
        table[f"syn {i}"] = table[f"label {i}"] + 0.3 * rng.standard_normal(dim)
    edges = pd.DataFrame({"child": ids, "parent": [f"P{i % 5}" for i in range(n_concepts)]})
    return terms, rows, FakeModel(table), IsAGraph.from_table(edges)


def test_mining_is_deterministic_under_a_seed():
    terms, rows, model, onto = random_world()
    corpus = mining_corpus(terms, set(terms["id"]))
    texts = known_texts(terms, rows)

    def run(**kw):
        p = MineParams(**({"num_negatives": 3, "range_max": 20, "relative_margin": None} | kw))
        return mine(rows, corpus, texts, onto, p, model=model)[0]

    a, b = run(sampling="random", seed=1), run(sampling="random", seed=1)
    pd.testing.assert_frame_equal(a, b)
    c = run(sampling="random", seed=2)
    neg = [f"negative_{k}" for k in (1, 2, 3)]
    assert not a[neg].equals(c[neg]) and not a[["easy_1"]].equals(c[["easy_1"]])
    # top sampling does not depend on the seed except for the easy negatives
    t1, t2 = run(sampling="top", seed=1), run(sampling="top", seed=2)
    assert t1[neg].equals(t2[neg])
    # with both sources the anchors alternate: row i starts with source i mod 2
    both = run(sources=["ontology", "model"], num_negatives=1)
    assert both["negative_1_source"].tolist()[:4] == ["ontology", "model", "ontology", "model"]
    # ontology picks are relatives (same parent P{i % 5}) and never the anchor's concept
    onto_rows = both[both["negative_1_source"] == "ontology"]
    for cid, nid in zip(onto_rows["hpo_id"], onto_rows["negative_1_id"]):
        assert nid != cid and int(nid[3:]) % 5 == int(cid[3:]) % 5


# --------------------------------------------------------------------------- ontology

def test_ontology_siblings_cousins_and_family_flag():
    #            R
    #        P1      P2
    #     A   B  D    C        D is a child of P1 and of A (a DAG)
    #     A1      |    C1
    edges = pd.DataFrame([("P1", "R"), ("P2", "R"), ("A", "P1"), ("B", "P1"), ("D", "P1"), ("D", "A"),
                          ("C", "P2"), ("A1", "A"), ("C1", "C")], columns=["child", "parent"])
    o = IsAGraph.from_table(edges)
    assert o.siblings("A") == {"B", "D"} and o.cousins("A") == {"C"}
    assert o.lineage("A") == {"P1", "R", "A1", "D"}
    assert relatives(o, "A", ["siblings", "cousins"], family=False) == {"B": "sibling", "C": "cousin"}
    assert relatives(o, "A", ["siblings"], family=False) == {"B": "sibling"}
    fam = relatives(o, "A", ["siblings", "cousins"], family=True)
    assert fam == {"P1": "parent", "A1": "child", "D": "child", "B": "sibling", "C": "cousin"}
    # the family flag also governs the model source: ancestors/descendants are guarded
    corpus = corpus_of([("a", "A"), ("p1", "P1"), ("a1", "A1"), ("b", "B"), ("c", "C")])
    g = guard_indices("x", "a", "A", corpus, {}, o, family_allowed=False)
    assert sorted(g["family"]) == [1, 2]
    assert len(guard_indices("x", "a", "A", corpus, {}, o, family_allowed=True)["family"]) == 0


# --------------------------------------------------------------------------- training

def mined_params(tmp: Path, model: Path, mine_kw: dict, **train) -> Path:
    t = {"base_model": str(model), "max_train_pairs": None, "batch_size": 8, "epochs": 1, "eval_steps": 4,
         "save_steps": 4, "logging_steps": 1, "max_seq_length": 16, "negatives": "mined",
         "dev_corpus_size": 20, **train}
    path = tmp / "p.yaml"
    path.write_text(yaml.safe_dump({"lr": 5e-4, "train": t, "mine": {"range_max": 10, **mine_kw}}))
    return path


def run_mine(tmp: Path, inputs: dict, params: Path, model: Path) -> dict:
    from hpo_embed.negatives.run import run
    from hpo_embed.params import load_params
    return run(load_params(params), inputs["pairs"], inputs["terms"], inputs["edges"], model, tmp / "negatives",
               tmp / "mine.json", tmp / "mine.report.json", None)


def run_train(tmp: Path, inputs: dict, params: Path) -> dict:
    from test_train import cli

    from hpo_embed.params import load_params
    from hpo_embed.training.train import run
    from stages.train import parse
    params_file, paths = parse(cli(tmp, inputs, params)[3:])
    return run(load_params(params_file), paths)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from conftest import make_tiny_model
    from test_train import all_texts
    return make_tiny_model(tmp_path_factory.mktemp("neg_model") / "model", all_texts())


def test_train_with_mined_negatives_builds_n_tuples_and_trains(tiny, tmp_path):
    from test_train import write_inputs

    from hpo_embed.negatives.dataset import load_negatives, mined_examples
    inputs = write_inputs(tmp_path)
    params = mined_params(tmp_path, tiny, {"num_negatives": 2, "easy_fraction": 0.25,
                                           "hardness_mode": "hard_negatives", "hardness_strength": 5.0},
                          max_train_pairs=40)
    rep = run_mine(tmp_path, inputs, params, tiny)
    assert rep["anchors"] == 40 and rep["negatives"] == 80 and sum(rep["by_source"].values()) == 80
    metrics = json.loads((tmp_path / "mine.json").read_text())
    assert set(metrics) == {"negatives_per_anchor", "from_ontology", "from_model", "guard_removed", "mining_s"}
    assert metrics["from_ontology"] + metrics["from_model"] + rep["by_source"]["fill"] == 80
    assert metrics["guard_removed"] == sum(rep["guard_removed"].values())
    negs = pd.read_parquet(tmp_path / "negatives" / "negatives.parquet")
    assert negs["hpo_id"].ne(negs["negative_1_id"]).all() and negs["hpo_id"].ne(negs["negative_2_id"]).all()
    # only train-split concepts are negatives (the fixture's dev/test concepts never appear)
    split = pd.read_parquet(inputs["pairs"] / "concepts.parquet").set_index("hpo_id")["split"]
    assert set(split[negs["negative_1_id"]]) == {"train"} and set(split[negs["easy_2_id"]]) == {"train"}
    from hpo_embed.params import load_params
    p = load_params(params)
    ds, keys, info = mined_examples(negs, p.train, p.mine)
    assert ds.column_names == ["anchor", "positive", "negative_1", "negative_2"] and len(ds) == 40
    assert info["easy_rows"] == 10 and info["hard_rows"] == 30
    assert len(keys[0]) == 3 + 4          # own + 2 negative concepts, 4 texts
    m = run_train(tmp_path, inputs, params)
    assert m["negatives"] == "mined" and m["negatives_per_row"] == 2 and m["pairs"] == 40 and m["steps"] >= 5
    # the triplet loss takes one 'negative' column; two negatives are a one-line error
    with pytest.raises(UserError, match="mine.num_negatives"):
        mined_examples(negs, p.train.__class__(**{**p.train.__dict__, "loss": "triplet"}), p.mine)
    # negatives mined for other rows are refused
    with pytest.raises(UserError, match="dvc repro mine"):
        load_negatives(tmp_path / "negatives", negs.iloc[:10])


def test_interrupted_iterative_run_resumes_without_redoing_round_one(tiny, tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from test_train import write_inputs

    import hpo_embed.training.iterative as hn
    real_train, real_mine = SentenceTransformerTrainer.train, hn.mine
    calls: list[str] = []

    def spy(self, *a, **k):
        calls.append("round1" if "round1" in self.args.output_dir else "round2")
        if crash["on"] and calls[-1] == "round2":
            raise RuntimeError("simulated crash in round 2")
        return real_train(self, *a, **k)

    mines: list[int] = []
    monkeypatch.setattr(SentenceTransformerTrainer, "train", spy)
    monkeypatch.setattr(hn, "mine", lambda *a, **k: (mines.append(1), real_mine(*a, **k))[1])
    crash = {"on": True}
    runs = {}
    for name in ("interrupted", "clean"):
        d = tmp_path / name
        d.mkdir()
        inputs = write_inputs(d)
        params = mined_params(d, tiny, {"rounds": 2, "sources": ["model"], "easy_fraction": 0.34},
                              max_train_pairs=48)
        run_mine(d, inputs, params, tiny)
        runs[name] = (d, inputs, params)
    d, inputs, params = runs["interrupted"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_train(d, inputs, params)
    assert calls == ["round1", "round2"] and len(mines) == 1
    r1 = d / "checkpoints" / "round1"
    assert (r1 / "done.json").is_file() and (r1 / "negatives_round2.parquet").is_file()
    assert not (d / "finetuned").exists()
    crash["on"] = False
    calls.clear()
    m = run_train(d, inputs, params)
    assert calls == ["round2"] and len(mines) == 1           # round 1 neither trained nor mined again
    it = m["iterative"]
    assert it["round1_resumed"] == "skipped (done)" and it["round2_mining"] == "reused"
    assert it["round1_rows"] == 24 and it["round2_rows"] == 24
    # the headline figures are the whole run's: both rounds' rows, steps and training time
    assert m["pairs"] == 48 and m["round1_steps"] == it["round1_steps"] >= 1
    assert m["train_time_s"] >= it["round1_train_s"] > 0
    assert f"48 pairs, {it['round1_steps']} + {m['steps']} steps" in (d / "finetuned" / "README.md").read_text()
    # an uninterrupted run gives the same model
    calls.clear()
    d2, inputs2, params2 = runs["clean"]
    m2 = run_train(d2, inputs2, params2)
    assert calls == ["round1", "round2"] and m2["steps"] == m["steps"]
    e1 = SentenceTransformer(str(d / "finetuned"), device="cpu").encode(["Herz vergrößert", "Abnormal heart"])
    e2 = SentenceTransformer(str(d2 / "finetuned"), device="cpu").encode(["Herz vergrößert", "Abnormal heart"])
    assert np.abs(e1 - e2).max() < 1e-5


def test_anchors_without_candidates_are_filled_with_easy_negatives_and_counted():
    terms, rows, model, _ = random_world(n_concepts=12)
    lonely = IsAGraph.from_table(pd.DataFrame({"child": terms["id"], "parent": [f"P{i}" for i in range(12)]}))  # no siblings
    corpus = mining_corpus(terms, set(terms["id"]))
    df, rep = mine(rows, corpus, known_texts(terms, rows), lonely,
                   MineParams(sources=["ontology"], num_negatives=2, relative_margin=None), model=model)
    assert rep["by_source"] == {"ontology": 0, "fill": 24}
    assert rep["per_source_counts"]["ontology"]["no_relative"] == 12
    assert (df["negative_1"] != df["negative_2"]).all() and (df["negative_1_id"] != df["hpo_id"]).all()
    assert set(df["negative_1_source"]) == {"fill"}


def test_embedding_cache_hits_only_for_the_same_model_and_texts(tmp_path):
    from hpo_embed.embedding import cache_file, encode_cached

    def embed_cached(model, texts, batch_size, folder, key):
        return encode_cached(model, texts, cache_file(folder, key, texts, "t"), batch_size)
    calls = []

    class Counting(FakeModel):
        def encode(self, texts, **kw):
            calls.append(len(texts))
            return super().encode(texts, **kw)

    m = Counting({"a": [1.0, 0.0], "b": [0.0, 1.0]})
    e1 = embed_cached(m, ["a", "b"], 8, tmp_path, "model-1")
    e2 = embed_cached(m, ["a", "b"], 8, tmp_path, "model-1")
    assert calls == [2] and np.array_equal(e1, e2)
    embed_cached(m, ["a", "b"], 8, tmp_path, "model-2")      # other weights
    embed_cached(m, ["b", "a"], 8, tmp_path, "model-1")      # other texts
    embed_cached(m, ["a", "b"], 8, None, "model-1")          # no cache
    assert calls == [2, 2, 2, 2] and len(list(tmp_path.glob("*.npy"))) == 3


def test_easy_negatives_of_a_near_root_concept_come_from_the_few_labels_it_does_not_guard():
    # a concept near the root guards its descendants: almost every label. Random draws miss
    # the free ones; the rest is searched. The root guards every label: the scaling study's
    # 25.6k-row mining stopped there (anchor 10034), now its family guard is relaxed, counted.
    from hpo_embed.negatives.mining import easy_negatives
    n = 5000
    corpus = corpus_of([(f"term {i}", f"HP:{i:07d}") for i in range(n)])
    free = 4321
    guard = {"same_concept": np.array([0]), "same_text": np.zeros(0, dtype=np.int64),
             "family": np.array([i for i in range(1, n) if i != free])}
    relaxed = []
    got = easy_negatives([guard], corpus, 2, np.random.default_rng(0), minimum=1, relaxed=relaxed)
    assert got == [[free]] and relaxed == []
    # the root: its family is every other label; only its own texts stay guarded (as in-batch)
    root = {**guard, "family": np.arange(1, n)}
    got = easy_negatives([guard, root], corpus, 2, np.random.default_rng(0), minimum=1, relaxed=relaxed)
    assert got[0] == [free] and len(got[1]) == 2 and 0 not in got[1] and relaxed == [1]
    own_texts_only = {"same_concept": np.array([0]), "same_text": np.arange(1, n), "family": np.zeros(0, dtype=np.int64)}
    with pytest.raises(ValueError, match="too few easy negatives for anchor 0"):
        easy_negatives([own_texts_only], corpus, 2, np.random.default_rng(0), minimum=1)
