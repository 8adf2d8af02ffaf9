"""The README tells the truth: the HPO counts (docs/stages.md) are what parse_hpo measures,
its two commands exist in the Makefile, CI runs the README's test command, the README is a
front page (<= 10 KB) and its links resolve."""
from __future__ import annotations

import re
from pathlib import Path

from script_loader import load_script

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
STAGES_DOC = (REPO / "docs" / "stages.md").read_text(encoding="utf-8")   # the HPO counts live there


def _count_table() -> dict[str, list[int]]:
    block = STAGES_DOC.split("<!-- hpo-counts:start -->")[1].split("<!-- hpo-counts:end -->")[0]
    rows = {}
    for line in block.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = [int(c.replace(",", "")) for c in cells[1:] if c]
    return rows


def test_readme_hpo_counts_match_a_fresh_parse(hpo_terms):
    _, _, m = hpo_terms
    rows = _count_table()
    assert STAGES_DOC.count(m["data_version"]) >= 1 and README.count(m["data_version"]) >= 1
    assert rows["terms"] == [m["terms"]["total"], m["terms"]["selected"]]
    assert rows["with a definition"] == [m["all"]["with_definition"], m["selected"]["with_definition"]]
    assert rows["synonyms"] == [m["all"]["synonyms"], m["selected"]["synonyms"]["total"]]
    assert rows["is_a edges"] == [m["edges"]["is_a"]]
    assert rows["obsolete terms (not selected)"] == [m["terms"]["obsolete"]]
    syn = m["selected"]["synonyms"]
    for scope in ("EXACT", "RELATED", "BROAD", "NARROW"):
        assert f"{scope} {syn[scope]:,}" in STAGES_DOC
    assert f"{syn['type_layperson']:,}" in STAGES_DOC


def test_readme_commands_exist_and_ci_runs_the_test_command():
    assert "make repro" in README and "make test" in README
    makefile = (REPO / "Makefile").read_text()
    for target in ("repro", "test", "profile-gpu", "profile-embedded"):
        assert re.search(rf"^{target}:", makefile, re.M), target
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def test_readme_is_a_front_page_whose_links_resolve():
    assert len(README.encode("utf-8")) <= 10 * 1024
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith("http"):
            assert (REPO / target).exists(), target


def test_readme_results_are_the_pipelines_own_numbers():
    """The results section is exactly what scripts/readme_results.py writes from the
    committed reports/benchmark.json and metrics/*.json (no hand-typed metric)."""
    mod = load_script("readme_results")
    report = mod.load(REPO / "reports" / "benchmark.json")
    assert report, "reports/benchmark.json is committed by the benchmark stage"
    want = mod.section(report, mod.load(REPO / "metrics" / "train.json"), mod.load(REPO / "metrics" / "quantize.json"),
                       mod.load(REPO / "metrics" / "base_model.json"))
    got = README.split("<!-- results:start -->\n")[1].split("<!-- results:end -->")[0]
    assert got == want
    assert "| held-out German |" in got and "phentrieve 70cases_o3_v1" in got
