"""Stage pairs: split by concept without leakage, pair types, hygiene, caps, determinism,
stability of the split under adding a language, errors naming the per-ID file."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from hpo_embed.common import UserError
from hpo_embed.common import normalize
from hpo_embed.pairs.build import run
from hpo_embed.pairs.splits import assign_splits
from hpo_embed.params import PAIR_TYPES, PairsParams, parse_params
from hpo_embed.translation.schema import SCHEMA_VERSION, dumps, translation_path

OUTPUTS = ("train.parquet", "dev.parquet", "test.parquet", "concepts.parquet", "queries.parquet")


# --------------------------------------------------------------------------- builders

def _text(text: str, source: str = "official", **extra) -> dict:
    return {"text": text, "source": source, "status": "OFFICIAL" if source == "official" else "MACHINE",
            "translator": None, "source_text": None, **extra}


def write_doc(folder: Path, hpo_id: str, en: dict, languages: dict | None = None) -> Path:
    """One schema-v1 per-ID file. ``en``: label, definition, synonyms [(text, scope, type)];
    ``languages``: {lang: {label, definition, synonyms [(text, scope, type)], source}}."""
    langs = {}
    for lang, e in (languages or {}).items():
        src = e.get("source", "official")
        langs[lang] = {
            "label": _text(e["label"], src) if e.get("label") else None,
            "definition": _text(e["definition"], src) if e.get("definition") else None,
            "synonyms": [_text(t, src, scope=s, type=ty) for t, s, ty in e.get("synonyms", [])],
        }
    doc = {"schema_version": SCHEMA_VERSION, "id": hpo_id,
           "en": {"label": en["label"], "definition": en.get("definition"),
                  "synonyms": [{"text": t, "scope": s, "type": ty} for t, s, ty in en.get("synonyms", [])]},
           "languages": langs}
    path = translation_path(folder, hpo_id)
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(doc), encoding="utf-8")  # no fsync: 36k files in the real-data fixture
    return path


def write_terms(path: Path, rows: list[dict]) -> Path:
    """A minimal terms.parquet (the columns the pairs stage reads)."""
    df = pd.DataFrame([{"id": r["id"], "label": r["label"], "definition": r.get("definition"),
                        "synonyms": [{"text": t, "scope": s, "type": ty} for t, s, ty in r.get("synonyms", [])],
                        "branch": r.get("branch", "HP:0000152"), "selected": r.get("selected", True)}
                       for r in rows])
    df.to_parquet(path)
    return path


def read(out: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(out / name)


def run_to(tmp: Path, name: str, translations: Path, terms: Path, languages, params=None) -> tuple[Path, dict]:
    out = tmp / name
    m = run(params or PairsParams(), languages, translations_dir=translations, terms_path=terms,
            out_dir=out, metrics_path=out / "pairs.json", progress=False)
    return out, m


# --------------------------------------------------------------------------- small synthetic data

# three concepts in two languages besides English; "Krampf" is shared by two concepts
SMALL = [
    dict(id="HP:0000001", label="Arthritis", definition="Inflammation of a joint.",
         synonyms=[("Joint inflammation", "EXACT", "layperson"), ("Arthritides", "RELATED", None)],
         de=dict(label="Arthritis", definition="Entzündung eines Gelenks.",
                 synonyms=[("Gelenkentzündung", "EXACT", "layperson"),
                           ("joint  inflammation", "EXACT", None)]),  # untranslated English
         fr=dict(label="Arthrite", definition="Inflammation d'une articulation.", source="mt:deepl")),
    dict(id="HP:0000002", label="Seizure", definition="A sudden  burst of\tactivity.",
         synonyms=[("Fits", "EXACT", "layperson"), ("Krampf", "EXACT", None)],
         de=dict(label="Krampfanfall", definition=None, synonyms=[("Krampf", "EXACT", None)])),
    dict(id="HP:0000003", label="Tremor", definition=None, synonyms=[("Krampf", "EXACT", None)],
         de=dict(label="Tremor", definition="Zittern."), fr=dict(label="Tremblement")),
]


@pytest.fixture()
def small(tmp_path):
    tr = tmp_path / "translations"
    for r in SMALL:
        write_doc(tr, r["id"], r, {k: r[k] for k in ("de", "fr") if k in r})
    terms = write_terms(tmp_path / "terms.parquet", SMALL)
    return tr, terms


def all_pairs(out: Path) -> pd.DataFrame:
    return pd.concat([read(out, f"{s}.parquet") for s in ("train", "dev", "test")], ignore_index=True)


def test_pair_types_texts_languages_and_sources(tmp_path, small):
    tr, terms = small
    out, m = run_to(tmp_path, "out", tr, terms, ["de", "fr"],
                    PairsParams(dev_fraction=0.0, test_fraction=0.0, synonym_scopes=["EXACT"]))
    df = all_pairs(out)
    got = set(zip(df["hpo_id"], df["pair_type"], df["lang_anchor"], df["lang_positive"], df["anchor"], df["positive"]))
    a = "HP:0000001"
    assert (a, "term_def", "en", "en", "Arthritis", "Inflammation of a joint.") in got
    assert (a, "term_def", "de", "de", "Arthritis", "Entzündung eines Gelenks.") in got
    assert (a, "term_syn", "en", "en", "Arthritis", "Joint inflammation") in got
    assert (a, "term_syn", "de", "de", "Arthritis", "Gelenkentzündung") in got
    assert not any(p == "Arthritides" for *_, p in got)  # RELATED is not in synonym_scopes
    # translated synonyms equal to an English name of the concept are dropped
    assert not ((df["lang_positive"] == "de") & df["positive"].str.casefold().isin(["joint inflammation", "krampf"])).any()
    assert m["dropped"]["untranslated_synonym"] == 2
    assert (a, "xl_term", "en", "fr", "Arthritis", "Arthrite") in got
    assert not any(t[:4] == (a, "xl_term", "en", "de") for t in got)  # identical text dropped
    assert (a, "xl_def", "en", "de", "Inflammation of a joint.", "Entzündung eines Gelenks.") in got
    assert (a, "xl_term_def", "en", "fr", "Arthritis", "Inflammation d'une articulation.") in got
    assert (a, "xl_term_def", "fr", "en", "Arthrite", "Inflammation of a joint.") in got
    # en<->x: no de<->fr pairs
    assert not ((df["lang_anchor"].isin(["de", "fr"])) & (df["lang_positive"].isin(["de", "fr"]))
                & (df["lang_anchor"] != df["lang_positive"])).any()
    # whitespace normalised
    assert ("HP:0000002", "term_def", "en", "en", "Seizure", "A sudden burst of activity.") in got
    # layperson type kept, only for term_syn
    lay = df[(df["positive"] == "Joint inflammation")]
    assert lay["synonym_type"].tolist() == ["layperson"]
    assert df.loc[df["pair_type"] != "term_syn", "synonym_type"].isna().all()
    # sources: English-only pairs are original, mt wins over official, official over original
    src = {(r.pair_type, r.lang_anchor, r.lang_positive, r.hpo_id): r.source for r in df.itertuples()}
    assert src[("term_def", "en", "en", a)] == "original"
    assert src[("term_def", "de", "de", a)] == "official"
    assert src[("xl_term", "en", "fr", a)] == "mt"
    assert src[("xl_def", "en", "de", a)] == "official"
    assert set(df["branch"]) == {"HP:0000152"}
    assert m["pairs"]["train"]["total"] == len(df)
    assert m["dropped"]["identical"] >= 2  # Arthritis/Arthritis and Tremor/Tremor (en-de)
    assert list(pq.read_schema(out / "train.parquet").names) == [
        "anchor", "positive", "hpo_id", "pair_type", "lang_anchor", "lang_positive", "source", "branch",
        "synonym_type"]


def test_all_language_pairs_mode(tmp_path, small):
    tr, terms = small
    out, _ = run_to(tmp_path, "out", tr, terms, ["de", "fr"],
                    PairsParams(dev_fraction=0.0, test_fraction=0.0, language_pairs="all"))
    df = all_pairs(out)
    a = df[df["hpo_id"] == "HP:0000001"]
    xl = set(zip(a["pair_type"], a["lang_anchor"], a["lang_positive"]))
    assert ("xl_def", "de", "fr") in xl
    # xl_term de-fr (Arthritis, Arthrite) repeats the en-fr pair: dropped as a duplicate
    assert ("xl_term", "de", "fr") not in xl and ("xl_term", "en", "fr") in xl
    assert ("xl_term_def", "fr", "de") in xl  # (Arthrite, Entzündung eines Gelenks.)
    assert ("xl_term_def", "de", "fr") not in xl  # (Arthritis, ...) repeats the en-fr pair


def test_types_and_sources_params_select(tmp_path, small):
    tr, terms = small
    out, m = run_to(tmp_path, "out", tr, terms, ["de", "fr"],
                    PairsParams(types=["xl_term"], sources=["official"], dev_fraction=0.0, test_fraction=0.0))
    df = all_pairs(out)
    # Arthrite (mt) excluded; Arthritis/Arthritis and Tremor/Tremor are identical texts
    assert set(zip(df["anchor"], df["positive"], df["lang_positive"], df["source"])) == {
        ("Seizure", "Krampfanfall", "de", "official"), ("Tremor", "Tremblement", "fr", "official")}
    assert m["pairs"]["train"]["by_type"] == {"xl_term": len(df)}


def test_caps_per_concept_and_per_type(tmp_path):
    tr = tmp_path / "tr"
    rows = [dict(id=f"HP:{i:07d}", label=f"Term {i}", definition=f"Definition {i}.",
                 synonyms=[(f"Synonym {i} {k}", "EXACT", None) for k in range(30)]) for i in range(1, 21)]
    for r in rows:
        write_doc(tr, r["id"], r, {"de": dict(label=f"Begriff {r['id']}", definition=f"Definition de {r['id']}.",
                                              synonyms=[(f"Syn de {r['id']} {k}", "EXACT", None) for k in range(10)])})
    terms = write_terms(tmp_path / "terms.parquet", rows)
    p = PairsParams(dev_fraction=0.0, test_fraction=0.0, max_per_concept=12)
    out, m = run_to(tmp_path, "a", tr, terms, ["de"], p)
    df = all_pairs(out)
    per = df.groupby("hpo_id").size()
    assert per.max() == 12 and len(per) == 20
    # round robin over types: every concept keeps every type despite 40 synonyms
    assert (df.groupby("hpo_id")["pair_type"].nunique() == 5).all()
    raw_per_concept = 2 + 40 + 1 + 1 + 2  # term_def x2, term_syn, xl_term, xl_def, xl_term_def x2
    assert m["dropped"]["max_per_concept"] == 20 * (raw_per_concept - 12)
    out, m = run_to(tmp_path, "b", tr, terms, ["de"], p.model_copy(update=dict(type_caps={"term_syn": 25, "xl_term": 0})))
    df = all_pairs(out)
    counts = df["pair_type"].value_counts()
    assert counts["term_syn"] == 25 and "xl_term" not in counts
    # per concept after the round robin: term_def 2, term_syn 6, xl_term 1, xl_def 1, xl_term_def 2
    assert m["dropped"]["type_cap"] == (20 * 6 - 25) + 20 * 1
    assert m["pairs"]["train"]["total"] == 20 * 12 - m["dropped"]["type_cap"] == 125


def test_type_caps_param_errors():
    # cross-field rules live in the one validator (hpo_embed/params), checked before any stage runs
    with pytest.raises(UserError, match=r"^params.yaml: pairs\.type_caps\.bogus: unknown pair type"):
        parse_params({"pairs": {"type_caps": {"bogus": 3}}})
    with pytest.raises(UserError, match=r"^params.yaml: pairs\.type_caps\.xl_term: must be >= 0, got -1"):
        parse_params({"pairs": {"type_caps": {"xl_term": -1}}})
    with pytest.raises(UserError, match=r"^params.yaml: pairs\.dev_fraction: pairs.dev_fraction \+ pairs.test_fraction"):
        parse_params({"pairs": {"dev_fraction": 0.5, "test_fraction": 0.5}})
    with pytest.raises(UserError, match=r"^params.yaml: pairs\.types: empty"):
        parse_params({"pairs": {"types": []}})
    with pytest.raises(UserError, match=r"pairs\.language_pairs: 'some'"):
        parse_params({"pairs": {"language_pairs": "some"}})
    with pytest.raises(UserError, match=r"pairs\.types\[0\]|pairs\.types: 'x'"):
        parse_params({"pairs": {"types": ["x"]}})


def test_missing_translations_folder_is_a_user_error(tmp_path, small):
    _, terms = small
    with pytest.raises(UserError, match="translate stage"):
        run(PairsParams(), [], translations_dir=tmp_path / "nope", terms_path=terms, out_dir=tmp_path / "o",
            metrics_path=tmp_path / "o" / "m.json")


@pytest.mark.parametrize("content, message", [
    ("{not json", "corrupt JSON"),
    (json.dumps({"schema_version": 1, "id": "HP:0000003", "en": {"label": "X"}, "languages": {}}),
     "does not match the file name"),
    (json.dumps({"schema_version": 1, "id": "HP:0000002", "en": {"label": "X"},
                 "languages": {"de": {"label": {"text": "", "source": "official"}}}}), "languages.de.label"),
    (json.dumps({"schema_version": 1, "id": "HP:0000002", "en": {"label": "X"},
                 "languages": {"de": {"label": {"text": "Y", "source": "babelfish"}}}}), "neither 'official'"),
])
def test_malformed_per_id_file_names_the_file(tmp_path, small, content, message):
    tr, terms = small
    bad = translation_path(tr, "HP:0000002")
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(UserError) as exc:
        run(PairsParams(), ["de"], translations_dir=tr, terms_path=terms, out_dir=tmp_path / "o",
            metrics_path=tmp_path / "o" / "m.json", progress=False)
    assert str(bad) in str(exc.value) and message in str(exc.value)
    assert not (tmp_path / "o" / "train.parquet").exists()


def test_stage_prints_one_line_error(tmp_path, small):
    import subprocess
    import sys
    tr, terms = small
    translation_path(tr, "HP:0000003").write_text("[]", encoding="utf-8")
    code = ("import sys; from pathlib import Path; from hpo_embed.common import run_stage; from hpo_embed.pairs.build import run;"
            "from hpo_embed.params import PairsParams;"
            f"run_stage(lambda: run(PairsParams(), ['de'], Path({str(tr)!r}), Path({str(terms)!r}),"
            f" Path({str(tmp_path / 'o')!r}), Path({str(tmp_path / 'm.json')!r}), progress=False))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == f"error: {translation_path(tr, 'HP:0000003')}: not a JSON object"
    assert "Traceback" not in r.stderr


def test_shared_texts_are_reported_and_not_queries(tmp_path, small):
    tr, terms = small
    # every concept in test so that all of them have queries
    out, m = run_to(tmp_path, "out", tr, terms, ["de", "fr"],   # test_fraction beyond the params range on purpose
                    PairsParams.model_construct(dev_fraction=0.0, test_fraction=0.99))
    q = read(out, "queries.parquet")
    shared = read(out, "shared_texts.parquet")
    assert "Krampf" in set(shared["text"])
    row = shared[shared["text"] == "Krampf"].iloc[0]
    assert list(row["hpo_ids"]) == ["HP:0000002", "HP:0000003"]
    assert "Krampf" not in set(q["text"])
    # English labels are the corpus, not queries; English synonyms are queries
    assert not ((q["lang"] == "en") & (q["kind"] == "label")).any()
    assert {"Joint inflammation", "Fits"} <= set(q.loc[q["lang"] == "en", "text"])
    assert ("Arthrite", "fr", "label", "mt") in set(zip(q["text"], q["lang"], q["kind"], q["source"]))
    assert set(q.loc[q["text"] == "Joint inflammation", "synonym_type"]) == {"layperson"}
    assert set(q["split"]) == {"test"}
    assert m["dropped"]["query_shared_text"] == 2  # Krampf: en of HP:0000002 and of HP:0000003
    # de "Arthritis" and de "Tremor" are the English labels: not German queries
    assert set(q.loc[q["lang"] == "de", "text"]) == {"Krampfanfall", "Gelenkentzündung"}
    assert m["dropped"]["query_same_as_english"] == 2
    assert m["shared_texts"] == len(shared)


def test_concept_without_file_gets_english_pairs_from_terms(tmp_path, small):
    tr, terms = small
    translation_path(tr, "HP:0000002").unlink()
    (tr / "HP_0009999.json").write_text("{}", encoding="utf-8")  # not selected: ignored, not read
    out, m = run_to(tmp_path, "out", tr, terms, ["de"], PairsParams(dev_fraction=0.0, test_fraction=0.0))
    df = all_pairs(out)
    s = df[df["hpo_id"] == "HP:0000002"]
    assert set(s["lang_anchor"]) == {"en"} and "term_def" in set(s["pair_type"])
    assert m["concepts"]["without_translation_file"] == 1
    assert m["concepts"]["ignored_files_not_selected"] == 1


def test_split_is_stratified_by_branch_and_depends_only_on_id_and_seed():
    ids = [f"HP:{i:07d}" for i in range(1, 1001)]
    branches = ["A"] * 700 + ["B"] * 250 + ["C"] * 50
    df = pd.DataFrame({"hpo_id": ids, "branch": branches})
    s = assign_splits(df, 0.1, 0.2, seed=7)
    counts = s.groupby(["branch", "split"]).size().to_dict()
    assert counts[("A", "test")] == 140 and counts[("A", "dev")] == 70 and counts[("A", "train")] == 490
    assert counts[("B", "test")] == 50 and counts[("B", "dev")] == 25
    assert counts[("C", "test")] == 10 and counts[("C", "dev")] == 5
    # input order does not matter; the seed does
    s2 = assign_splits(df.sample(frac=1.0, random_state=1), 0.1, 0.2, seed=7)
    pd.testing.assert_frame_equal(s, s2)
    s3 = assign_splits(df, 0.1, 0.2, seed=8)
    assert (s3["split"] != s["split"]).sum() > 100


def test_normalize():
    assert normalize("  Cafe\u0301\u00a0 au\tlait \n") == "Caf\u00e9 au lait"
    assert normalize(None) == ""


# --------------------------------------------------------------------------- real shared data

def _babelon(path: Path, predicate: str) -> dict[str, str]:
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    df = df[(df["predicate_id"] == predicate) & ~df["translation_value"].isin(["", "NA"])]
    df = df[df["translation_status"] != "NOT_TRANSLATED"]
    return dict(zip(df["subject_id"], df["translation_value"].str.replace(r"^obsolete ", "", regex=True)))


@pytest.fixture(scope="module")
def real(hpo_terms, shared_translations, tmp_path_factory):
    """Per-ID files for every selected concept of the real HPO: English from the parsed
    HPO, plus the official German labels and French labels + definitions (Babelon TSVs).
    Two folders: English only (the offline default) and en+de+fr."""
    terms_path = hpo_terms[0]
    terms = pd.read_parquet(terms_path)
    terms = terms[terms["selected"]]
    de = _babelon(shared_translations / "hp-de.babelon.tsv", "rdfs:label")
    fr = _babelon(shared_translations / "hp-fr.babelon.tsv", "rdfs:label")
    fr_def = _babelon(shared_translations / "hp-fr.babelon.tsv", "IAO:0000115")
    root = tmp_path_factory.mktemp("pairs_real")
    en_only, both = root / "en", root / "defr"
    for r in terms.to_dict("records"):
        en = dict(label=r["label"], definition=r["definition"],
                  synonyms=[(s["text"], s["scope"], s["type"]) for s in r["synonyms"]])
        write_doc(en_only, r["id"], en)
        langs = {}
        if r["id"] in de:
            langs["de"] = dict(label=de[r["id"]])
        if r["id"] in fr or r["id"] in fr_def:
            langs["fr"] = dict(label=fr.get(r["id"]), definition=fr_def.get(r["id"]))
        write_doc(both, r["id"], en, langs)
    out_en, m_en = run_to(root, "out_en", en_only, terms_path, [])
    out_both, m_both = run_to(root, "out_both", both, terms_path, ["de", "fr"])
    return dict(terms=terms, terms_path=terms_path, both=both, out_en=out_en, m_en=m_en,
                out_both=out_both, m_both=m_both, root=root, n_de=len(set(de) & set(terms["id"])))


def test_real_no_leakage_between_splits(real):
    out, m = real["out_both"], real["m_both"]
    concepts = read(out, "concepts.parquet")
    assert len(concepts) == len(real["terms"]) and set(concepts["hpo_id"]) == set(real["terms"]["id"])
    split_of = dict(zip(concepts["hpo_id"], concepts["split"]))
    seen = {}
    for s in ("train", "dev", "test"):
        df = read(out, f"{s}.parquet")
        assert len(df) > 0
        assert set(df["hpo_id"].map(split_of)) == {s}, s  # no concept of another split, any language/type
        seen[s] = set(df["hpo_id"])
    assert not (seen["train"] & seen["dev"]) and not (seen["train"] & seen["test"]) and not (seen["dev"] & seen["test"])
    # the official languages are in every split
    for s in ("train", "dev", "test"):
        df = read(out, f"{s}.parquet")
        assert {"de", "fr"} <= set(df["lang_positive"]), s
    q = read(out, "queries.parquet")
    assert set(q["split"]) == {"dev", "test"}
    assert set(q["hpo_id"].map(split_of)) <= {"dev", "test"}
    assert (q["hpo_id"].map(split_of) == q["split"]).all()
    shared = set(read(out, "shared_texts.parquet")["text"].str.casefold())
    assert not set(q["text"].str.casefold()) & shared
    assert not ((q["lang"] == "en") & (q["kind"] == "label")).any()
    # fractions per branch (rounded per branch)
    for (branch, split), n in concepts.groupby(["branch", "split"]).size().items():
        total = (concepts["branch"] == branch).sum()
        if split != "train":
            assert abs(n - total * 0.1) <= 0.5 + 1e-9, (branch, split, n, total)
    assert m["concepts"]["dev"] + m["concepts"]["test"] + m["concepts"]["train"] == len(concepts)


def test_real_every_pair_type_with_right_languages(real):
    df = all_pairs(real["out_both"])
    langs = df.groupby("pair_type").apply(lambda g: set(zip(g["lang_anchor"], g["lang_positive"])),
                                          include_groups=False).to_dict()
    assert set(langs) == set(PAIR_TYPES)
    assert langs["term_def"] == {("en", "en"), ("fr", "fr")}  # no German definitions in the TSV
    assert langs["term_syn"] == {("en", "en")}  # no translated synonyms given
    assert langs["xl_term"] == {("en", "de"), ("en", "fr")}
    assert langs["xl_def"] == {("en", "fr")}
    assert langs["xl_term_def"] == {("en", "fr"), ("fr", "en"), ("de", "en")}
    syn = df[df["pair_type"] == "term_syn"]
    assert "layperson" in set(syn["synonym_type"].dropna())
    assert set(df["source"]) == {"original", "official"}
    assert df.groupby("hpo_id").size().max() <= PairsParams().max_per_concept
    assert not df.duplicated(["anchor", "positive"]).any()
    assert (df["anchor"].str.casefold() != df["positive"].str.casefold()).all()
    m = real["m_both"]
    assert m["concepts"]["with_label_by_language"]["de"] == real["n_de"]
    for s in ("train", "dev", "test"):
        assert sum(m["pairs"][s]["by_type"].values()) == m["pairs"][s]["total"] == len(read(real["out_both"], f"{s}.parquet"))


def test_real_english_only_and_split_stable_under_adding_languages(real):
    out_en = real["out_en"]
    df = all_pairs(out_en)
    assert set(df["lang_anchor"]) == {"en"} and set(df["lang_positive"]) == {"en"}
    assert set(df["pair_type"]) == {"term_def", "term_syn"}
    assert set(df["source"]) == {"original"}
    q = read(out_en, "queries.parquet")
    assert set(q["lang"]) == {"en"} and set(q["kind"]) == {"synonym"}
    # adding German and French does not move a single concept
    assert (out_en / "concepts.parquet").read_bytes() == (real["out_both"] / "concepts.parquet").read_bytes()
    # nor does adding French to German
    out_de, _ = run_to(real["root"], "out_de", real["both"], real["terms_path"], ["de"])
    assert (out_de / "concepts.parquet").read_bytes() == (real["out_both"] / "concepts.parquet").read_bytes()
    de = all_pairs(out_de)
    assert "fr" not in set(de["lang_positive"]) | set(de["lang_anchor"])
    # the English-only pairs are unchanged by adding languages (per-concept cap not reached)
    both = all_pairs(real["out_both"])
    en_both = both[(both["lang_anchor"] == "en") & (both["lang_positive"] == "en")]
    key = ["hpo_id", "pair_type", "anchor", "positive"]
    assert set(map(tuple, en_both[key].values)) == set(map(tuple, df[key].values))


def test_real_determinism_byte_identical(real):
    out2, m2 = run_to(real["root"], "out_both_again", real["both"], real["terms_path"], ["de", "fr"])
    for name in OUTPUTS + ("shared_texts.parquet", "pairs.json"):
        assert (out2 / name).read_bytes() == (real["out_both"] / name).read_bytes(), name
    assert m2 == real["m_both"]
